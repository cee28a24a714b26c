"""The LightningModule (model, loss, metrics, optimizer — nothing else) and the per-epoch metrics.csv writer.

Lightning owns the loop (AMP, checkpoints, early stopping, DDP); this module stays thin: no data handling here.
Loss: binary cross-entropy on logits, optionally weighted per output by negatives/positives (CheXNet's weighted BCE),
over the provided targets only (NaN = the dataset does not give that label; ``cxr.training.losses``), or the
AUC-margin loss (``train.loss=auc_margin``).
Validation: loss, and per-output + macro AUROC (torchmetrics, exact, synchronised across DDP ranks) over the rows that
provide the output; an output with one class (or none) among them gets NaN and is left out of the macro mean.
Optimizer and schedules: ``cxr.training.optim``.
A non-finite training loss stops the run, checked on the host only every ``train.check_finite_every`` batches and at
each epoch's end (:class:`FiniteLossCheck`): a check each step would wait for the GPU each step.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

from cxr.config import Config, to_dict
from cxr.data.device_augment import augment_batch
from cxr.data.loaders import train_view_of
from cxr.files import replacing
from cxr.imaging.preprocessing import Preprocessing, to_unit
from cxr.models.artifact import artifact_block, model_spec
from cxr.models.factory import create_model, set_cam_layer
from cxr.models.spec import TrainingData
from cxr.training.losses import auc_margin, masked_bce
from cxr.training.optim import build_optimizer, cosine_schedule

MISSING = -1
"""A target the dataset does not provide, as the integer class :class:`MaskedAUROC` skips."""


class MaskedAUROC(Metric):
    """Exact AUROC per output over the rows that provide it (target not :data:`MISSING`); NaN for an output with one
    class, or none, among them. The probabilities and targets are kept (and gathered across DDP ranks) and scored at
    the end, as torchmetrics' exact AUROC does; torchmetrics' own ``ignore_index`` fails on an output with no row left.
    """

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("probabilities", default=[], dist_reduce_fx="cat")
        self.add_state("classes", default=[], dist_reduce_fx="cat")

    def update(self, probabilities: torch.Tensor, classes: torch.Tensor) -> None:
        self.probabilities.append(probabilities)
        self.classes.append(classes)

    def compute(self) -> torch.Tensor:
        probabilities, classes = dim_zero_cat(self.probabilities), dim_zero_cat(self.classes)
        values = []
        for k in range(classes.shape[1]):
            kept = classes[:, k] != MISSING
            target = classes[kept, k]
            defined = bool((target == 1).any() and (target == 0).any())
            values.append(binary_auroc(probabilities[kept, k], target) if defined else torch.tensor(float("nan")))
        return torch.stack([value.float().to(probabilities.device) for value in values])


def keras_time_decay(step: int, decay: float) -> float:
    """Keras' legacy ``decay`` argument: lr_t = lr / (1 + decay · t), t counting optimizer steps (the original SGD)."""
    return 1.0 / (1.0 + decay * step)


class FiniteLossCheck:
    """Remembers, on the device, the first step whose loss was not finite; :meth:`raise_if_seen` reads it back.

    ``torch.isfinite(loss)`` in an ``if`` copies a boolean to the host and so waits for the step to finish, every
    step; here each step only updates two device scalars, and the host looks at them when it chooses. The error
    names the first bad step and its loss, as the per-step check did, and the step the check ran at.
    """

    def __init__(self):
        self.first_step: torch.Tensor | None = None  # -1 while every loss was finite
        self.first_loss: torch.Tensor | None = None

    def update(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().float()
        if self.first_step is None or self.first_step.device != loss.device:
            self.first_step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self.first_loss = torch.zeros((), device=loss.device)
        first = ~torch.isfinite(loss) & (self.first_step < 0)
        self.first_step = torch.where(first, torch.full_like(self.first_step, step), self.first_step)
        self.first_loss = torch.where(first, loss, self.first_loss)

    def raise_if_seen(self, checked_at: int) -> None:
        """``FloatingPointError`` if a loss since the start was not finite; ``checked_at`` is the current step."""
        if self.first_step is None:
            return
        step = int(self.first_step)  # the one host sync
        if step >= 0:
            raise FloatingPointError(
                f"training loss is {float(self.first_loss)} at step {step} (seen after step {checked_at}: the host "
                f"checks every train.check_finite_every batches and at the epoch's end): lower optim.lr"
            )


class CxrModule(L.LightningModule):
    """A :class:`cxr.models.factory.CxrNet` (attribute ``model``: the checkpoint's ``model.*`` weights) and its
    training."""

    def __init__(
        self,
        config: Config,
        outputs: list[str],
        preprocessing: Preprocessing,
        pos_weight: list[float] | None = None,
        resume: bool = False,
        training_data: tuple[TrainingData, ...] = (),
    ):
        super().__init__()
        self.config, self.outputs, self.preprocessing = config, list(outputs), preprocessing
        self.training_data = tuple(training_data)  # the model card names the stores by dataset, count and hash
        spec = config.model
        # On --resume every weight comes from last.ckpt: loading ImageNet or model.init_from first would only make
        # a resume fail on a node without the torch hub cache or after the earlier run was moved.
        self.model = create_model(
            spec.name,
            len(outputs),
            head=spec.head,
            dropout=spec.dropout,
            pretrained="none" if resume else (spec.init_from or spec.pretrained),
            input_size=config.data.input_size,
            labels=outputs,
            grad_checkpointing=spec.grad_checkpointing,
            drop_path=spec.drop_path,
        )
        if spec.cam_layer or spec.cam_gate:
            set_cam_layer(self.model, spec.cam_layer or self.model.architecture.cam_layer, spec.cam_gate)
        weight = torch.tensor(pos_weight, dtype=torch.float32) if pos_weight is not None else None
        self.register_buffer("pos_weight", weight, persistent=False)
        self.val_auroc = MaskedAUROC()
        self.train_view = train_view_of(config.data)
        self.finite_loss = FiniteLossCheck()

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """A training batch with draws (``data.augment_on=device``) is augmented here, on the device, batched."""
        if len(batch) == 3:
            pixels, target, draws = batch
            return augment_batch(pixels, draws, self.train_view), target
        return batch

    def _images(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 batch → float in [0, 1] (the artifact's :class:`Preprocessing` scaling), NHWC with
        ``train.channels_last`` as the weights (GPU and CPU; see ``benchmarks/cpu_precision.py`` for the CPU)."""
        images = to_unit(pixels)
        if self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def _loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.config.train.loss == "auc_margin":
            return auc_margin(logits, target, self.config.train.auc_margin)
        return masked_bce(logits, target, self.pos_weight)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        pixels, target = batch
        loss = self._loss(self.model(self._images(pixels)), target)
        self.finite_loss.update(loss, self.global_step)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(target))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Counted in batches, not optimizer steps: with gradient accumulation global_step stands still.
        if (batch_idx + 1) % self.config.train.check_finite_every == 0 or self.trainer.is_last_batch:
            self.finite_loss.raise_if_seen(self.global_step)

    def validation_step(self, batch, batch_idx: int) -> None:
        pixels, target = batch
        logits = self.model(self._images(pixels))
        # Weighted by the provided targets: the epoch's val_loss is then the mean over all of them, as one batch.
        provided = max(1, int((~torch.isnan(target)).sum()))
        self.log("val_loss", self._loss(logits, target), on_epoch=True, sync_dist=True, batch_size=provided)
        probabilities = torch.sigmoid(logits.float())
        self.val_auroc.update(probabilities, torch.where(torch.isnan(target), MISSING, target).long())

    def on_validation_epoch_end(self) -> None:
        auroc = self.val_auroc.compute().reshape(-1)  # torchmetrics squeezes a one-output (binary task) result to 0-d
        defined = ~torch.isnan(auroc)
        # torchmetrics already gathered all ranks: the values agree, sync_dist only tells Lightning so.
        for label, value in zip(self.outputs, auroc, strict=True):
            self.log(f"val_auroc_{label}", value, sync_dist=True)
        macro = auroc.nanmean() if defined.any() else auroc.new_tensor(float("nan"))
        self.log("val_macro_auroc", macro, sync_dist=True)
        self.val_auroc.reset()

    def configure_optimizers(self):
        spec = self.config.optim
        optimizer = build_optimizer(self.model, spec)
        schedulers = []
        if spec.decay > 0:
            decay = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(keras_time_decay, decay=spec.decay))
            schedulers.append({"scheduler": decay, "interval": "step"})
        if spec.scheduler == "plateau":
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=spec.plateau_factor, patience=spec.plateau_patience
            )
            schedulers.append({"scheduler": plateau, "interval": "epoch", "monitor": "val_loss"})
        if spec.scheduler == "cosine":
            total = int(self.trainer.estimated_stepping_batches)  # all epochs' optimizer steps, accumulation counted
            cosine = cosine_schedule(optimizer, spec, total, self.trainer.max_epochs)
            schedulers.append({"scheduler": cosine, "interval": "step"})
        return [optimizer], schedulers

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # The checkpoint is the model artifact: labels, preprocessing and config travel with the weights.
        spec = model_spec(
            self.model, self.outputs, self.preprocessing, config=to_dict(self.config), training_data=self.training_data
        )
        checkpoint["cxr"] = artifact_block(spec)


class WeightEMA(WeightAveraging):
    """``train.ema``: an exponential moving average of the weights (and BN statistics), updated after every optimizer
    step, ``ema ← decay · ema + (1 − decay) · w`` (the first update copies ``w``).

    Lightning's :class:`WeightAveraging` does the rest: validation runs on the EMA weights, and every checkpoint's
    ``state_dict`` holds them (so ``best.ckpt`` — the artifact predict, evaluate, export and serve read — is the EMA
    model), with the raw weights and the EMA's step count beside them for ``--resume``. What this subclass adds: the
    foreach update (one kernel per dtype instead of one per tensor) and the average kept on the training device
    (Lightning's default takes the module's device at ``setup``, before the module moves to the GPU, which would
    copy every weight to the CPU at every step).
    """

    def __init__(self, decay: float):
        super().__init__(use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.decay = decay

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._device is None:
            self._device = trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)


class EpochMetricsCSV(L.Callback):
    """``RUN/metrics.csv``: one row per epoch (epoch, train_loss, val_loss, val_macro_auroc, val_auroc_<label>...).

    Written whole after every epoch (atomically), so a killed run leaves a valid file and a resumed one continues it.
    """

    def __init__(self, path: Path, outputs: list[str]):
        self.path = Path(path)
        self.columns = ["epoch", "train_loss", "val_loss", "val_macro_auroc", *(f"val_auroc_{o}" for o in outputs)]

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch}
        for column in self.columns[1:]:
            row[column] = float(metrics[column]) if column in metrics else math.nan
        table = pd.DataFrame([row], columns=self.columns)
        if self.path.exists():
            previous = pd.read_csv(self.path)
            previous = previous[previous["epoch"] < trainer.current_epoch]  # an epoch redone after --resume
            table = pd.concat([previous, table], ignore_index=True) if len(previous) else table
        with replacing(self.path) as tmp:
            table.to_csv(tmp, index=False)
