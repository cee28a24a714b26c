"""Stage *training*: a config and a store → a run directory, on PyTorch Lightning.

``fit`` (Trainer, run directory, resume, DDP), the LightningModule (``module``), atomic and resumable checkpoints
(``checkpointing``) and the choice of ``train.precision=auto`` (``precision``).
"""
