"""Stage *data*: NIH ChestX-ray14 on disk → a prepared store → batches.

Reading NIH's metadata, lists and boxes (``nih``), patient-wise splits (``splits``), tasks as data (``tasks``),
writing and reading the store (``prepare``, ``store``), the store → model view and augmentation
(``transforms``), and the datasets, sampler and DataModule that feed training and prediction (``loaders``).
"""
