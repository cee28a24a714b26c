"""``RUN/checkpoints/last.ckpt``: the state a killed run resumes from, written at the start of every epoch.

Why not Lightning's ``ModelCheckpoint(save_last=True)``: in Lightning 2.6 it rewrites ``last.ckpt`` only when a
top-k checkpoint was saved at the same step, so after an epoch that did not improve the monitored loss ``last.ckpt``
stays at the older epoch and a resume redoes epochs; and it saves during validation, before the epoch's learning-rate
schedulers step, so a run resumed from it skips one ``ReduceLROnPlateau`` update (Lightning does not step plateau
schedulers while restarting). Saved at ``on_train_epoch_start`` instead, the checkpoint holds a finished epoch
whole: its schedulers stepped, early stopping updated, the epoch counted, and nothing of the next one begun, so the
resumed run starts that epoch from its first batch (Lightning's "restarted on epoch start").

torch's global random state (dropout) travels in the checkpoint too, and the
training data's order and augmentation depend only on (seed, epoch, image) (:class:`cxr.data.loaders.EpochSampler`): a
resumed run ends with the weights of the uninterrupted run, wherever it was killed (same machine and versions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cxr.files import replacing


class LastCheckpoint(L.Callback):
    """Writes ``path`` at the start of every epoch and at the end of training; carries the random state."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._saving = False

    def _save(self, trainer: L.Trainer) -> None:
        # Every rank calls it (the strategy writes on rank 0 only). A resumed run rewrites the state it started from.
        self._saving = True
        try:
            trainer.save_checkpoint(self.path)
        finally:
            self._saving = False

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._save(trainer)  # a finished run resumed again has nothing left to do

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        if self._saving:
            start_of_epoch(checkpoint["loops"])

    def state_dict(self) -> dict:
        # torch's generators only: dropout draws on them; nothing in training draws on numpy's or Python's.
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file and renamed: a run killed while saving keeps its previous last.ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with replacing(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def start_of_epoch(loops: dict) -> None:
    """Batch counters as Lightning's loops reset them when an epoch begins (``reset_on_run``).

    At ``on_train_epoch_start`` the training and validation batch counters still describe the epoch before; left so,
    a resumed run takes the new epoch for finished (no batch trained, validation skipped). ``loops`` stays a plain
    ``dict``: it is a checkpoint's ``"loops"`` entry, a tree whose layout Lightning owns and changes between releases.
    """
    fit = loops["fit_loop"]
    for key in ("epoch_loop.batch_progress", "epoch_loop.val_loop.batch_progress"):
        fit[key]["current"] = dict.fromkeys(fit[key]["current"], 0)
        fit[key]["is_last_batch"] = False
