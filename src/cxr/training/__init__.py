"""Stage *training*: a config and a store → a run directory, on PyTorch Lightning.

``fit`` (Trainer, run directory, resume, DDP), the LightningModule (``module``), the optimizer and schedule
(``optim``), the masked loss (``losses``), atomic and resumable checkpoints (``checkpointing``), the choice of
``train.precision=auto`` (``precision``), and the zero-shot run of a CLIP-style model (``zeroshot``).
"""
