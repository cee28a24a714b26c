"""Stage *data*: a dataset on disk → a prepared store → batches.

The dataset readers, one self-registering module per dataset, on one label vocabulary (``datasets``: NIH ChestX-ray14,
CheXpert, MIMIC-CXR-JPG, PadChest, VinDr-CXR, RSNA, SIIM-ACR, Google's NIH expert labels), patient attributes
harmonised across them (``attributes``: sex, age, view), patient-wise splits (``splits``), tasks as data (``tasks``),
writing and reading the store (``prepare``, ``store``, its typed ``manifest``), the store → model view and augmentation
(``transforms``, ``device_augment``), and the datasets, sampler and DataModule that feed training and prediction
(``loaders``).
"""
