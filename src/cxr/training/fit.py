"""``cxr train``: a config + a store → a run directory, on PyTorch Lightning.

Lightning is the engine: AMP (bf16 where the GPU has it, else fp16), checkpoints best (by
validation loss) and last, early stopping, TensorBoard, a rich progress bar, resume, and DDP over GPUs and nodes
(``--devices``, ``--num-nodes``, ``--strategy ddp``; under torchrun or SLURM Lightning reads the ranks from the
environment). The run directory follows ``docs/architecture.md``: config.yaml, split.parquet, checkpoints/,
metrics.csv, tensorboard/, val_predictions.parquet.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from cxr.config import AugmentOn, Compile, Config, config_from_dict, save_config, to_dict
from cxr.data.loaders import StoreDataModule, predict_store
from cxr.data.store import Store
from cxr.data.tasks import TaskSplit, build_multi_split, build_split, targets
from cxr.errors import CxrError
from cxr.files import write_json
from cxr.imaging.preprocessing import Preprocessing
from cxr.models.artifact import load_artifact, strip_training_state
from cxr.models.spec import TrainingData
from cxr.provenance import environment
from cxr.training.checkpointing import AtomicCheckpointIO, LastCheckpoint
from cxr.training.module import CxrModule, EpochMetricsCSV, WeightEMA
from cxr.training.optim import check_recipe, layer_depths
from cxr.training.precision import auto_precision


@dataclass
class FitResult:
    run_dir: Path
    trainer: object  # lightning.Trainer
    module: object  # cxr.training.module.CxrModule


def fit_store(config: Config, store: Store, image_size: int | None = None) -> Config:
    """The config adjusted to the store: a store of another size or crop is accepted only with ``image_size``.

    With ``image_size`` the run records the store's real size and crop (so inference repeats them) and trains at
    ``image_size`` px; without, a mismatch is an error that says how to prepare a matching store.
    """
    config = copy.deepcopy(config)
    data = config.data
    fits = store.size == data.store_size and abs(store.crop - data.crop) < 1e-6
    if not fits and image_size is None:
        raise CxrError(
            f"store {store.path} was prepared at {store.size} px, crop {store.crop}; experiment {config.experiment} "
            f"expects {data.store_size} px, crop {data.crop}. Prepare a matching store (cxr prepare DATA --out STORE "
            f"--size {data.store_size} --crop {data.crop}) or pass --image-size PX to train at PX px from this one"
        )
    data.store_size, data.crop = store.size, store.crop
    config.store = str(Path(store.path).resolve())
    if image_size is not None:
        data.input_size = int(image_size)
    if (data.eval_transform == "center_crop" or data.random_crop) and data.input_size > store.size:
        raise CxrError(f"cannot crop {data.input_size} px inputs from a {store.size} px store; lower --image-size")
    Preprocessing.from_config(data).check_store(store)  # what the artifact will promise predict, checked once
    return config


RUN_SETTINGS = (
    "store",
    "data.stores",
    "data.num_workers",
    "data.prefetch_factor",
    "data.augment_on",
    "train.compile",
    "train.check_finite_every",
)
"""Config keys that say where and how a run is executed, not what it learns: they may change on --resume (a moved
store, another machine). Results do not depend on them (cxr.data.loaders.EpochSampler: not even on the number of
workers), up to rounding: ``data.augment_on=device`` interpolates within a grey level of the CPU path
(cxr.data.device_augment), a compiled model sums in another order."""


def _changed_keys(previous: dict, current: dict) -> list[str]:
    changed = []
    for section, value in current.items():
        if isinstance(value, dict):
            changed += [f"{section}.{key}" for key in value if previous[section][key] != value[key]]
        elif previous[section] != value:
            changed.append(section)
    return [key for key in changed if key not in RUN_SETTINGS]


def _prepare_run_dir(run_dir: Path, config: Config, split: TaskSplit, resume: bool) -> None:
    saved = run_dir / "config.yaml"
    if resume:
        if not (run_dir / "checkpoints" / "last.ckpt").is_file():
            raise CxrError(f"nothing to resume in {run_dir}: no checkpoints/last.ckpt (start it without --resume)")
        previous = to_dict(config_from_dict(yaml.safe_load(saved.read_text()), str(saved)))
        changed = _changed_keys(previous, to_dict(config))
        if changed:
            raise CxrError(f"--resume with another config than {saved}: {', '.join(changed)} differ")
        # The store may have moved: what must not change is the data it gives this task.
        before, now = pd.read_parquet(run_dir / "split.parquet"), split.split_table()
        if before.astype(str).values.tolist() != now.astype(str).values.tolist():  # dtypes differ after parquet
            raise CxrError(f"--resume: store {config.store} gives another split than {run_dir / 'split.parquet'} "
                           "(other images or parts); resume with the store the run started from")  # fmt: skip
        save_config(config, saved)  # the run settings of this start (where the store is now: cxr evaluate RUN)
        return
    if saved.exists():
        raise CxrError(f"{run_dir} already holds a run; continue it with --resume or choose another --out")
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    save_config(config, saved)
    split.split_table().to_parquet(run_dir / "split.parquet", index=False)


def _record_environment(run_dir: Path) -> None:
    """``RUN/environment.json``: one entry per start (the first, then each --resume), as a resume may move machines."""
    path = run_dir / "environment.json"
    starts = json.loads(path.read_text()) if path.exists() else []
    write_json(path, [*starts, environment().to_dict()])


def _precision(config: Config, on_gpu: bool) -> str:
    """``train.precision``; ``auto`` is AMP on a GPU, and on a CPU bf16 only where it is native
    (cxr.training.precision)."""
    if config.train.precision != "auto":
        return config.train.precision
    return auto_precision(on_gpu)


def _gpu_count(devices: int | str) -> int:
    """GPUs per node that Lightning will use for ``--devices`` (a count, "0,1", -1 or "auto")."""
    import torch

    if isinstance(devices, int):
        return torch.cuda.device_count() if devices == -1 else devices
    if devices in ("auto", "-1"):
        return torch.cuda.device_count()
    return len([d for d in str(devices).split(",") if d.strip()])


def augment_on_device(config: Config, on_gpu: bool) -> bool:
    """``data.augment_on``: ``auto`` augments on the device when training on a GPU, where the loader workers are
    the bottleneck and the GPU has time to spare; on a CPU the "device" is the same cores, so the workers do it."""
    mode = config.data.augment_on
    return mode == AugmentOn.DEVICE or (mode == AugmentOn.AUTO and on_gpu)


def compile_model(model: torch.nn.Module, mode: Compile | str) -> None:
    """``train.compile``: compile the model's forward in place (``nn.Module.compile``), so its parameters keep
    their names: checkpoints hold ``model.*`` keys, not ``torch.compile``'s wrapper's ``model._orig_mod.*``."""
    if Compile(mode) != Compile.NONE:
        model.compile(mode=Compile(mode).value)


def _check_loop_settings(config: Config) -> None:
    for key, value in (("train.check_finite_every", config.train.check_finite_every),
                       ("data.prefetch_factor", config.data.prefetch_factor)):  # fmt: skip
        if value < 1:
            raise CxrError(f"{key} must be at least 1, got {value}")


def _pos_weight(split: TaskSplit) -> list[float]:
    """Negatives / positives per output, counted over the training rows that provide the output (NaN = missing)."""
    y = targets(split.table.loc[split.train], split.outputs)
    positives = np.maximum(np.nansum(y, axis=0), 1.0)
    return ((np.sum(~np.isnan(y), axis=0) - positives) / positives).tolist()


def build_trainer(
    config: Config,
    run_dir: Path,
    outputs: list[str],
    on_gpu: bool,
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: bool = True,
) -> L.Trainer:
    """The Lightning Trainer of a run: best/last checkpoints, early stopping and ``metrics.csv`` on the validation
    loss, precision (:func:`_precision`), atomic checkpoint writes, TensorBoard in ``run_dir``."""
    best = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,  # always best.ckpt, also after --resume
    )
    callbacks = [
        best,
        LastCheckpoint(run_dir / "checkpoints" / "last.ckpt"),  # what --resume reads (cxr.training.checkpointing: why)
        EarlyStopping(monitor="val_loss", mode="min", patience=config.train.early_stopping_patience),
        EpochMetricsCSV(run_dir / "metrics.csv", outputs),
    ]
    if config.train.ema > 0:
        # After LastCheckpoint: at the end of training that one saves the raw weights before this one copies the
        # EMA into the model (a finished run resumed again then still has both).
        callbacks.append(WeightEMA(config.train.ema))
    if progress:
        callbacks.append(RichProgressBar())
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=config.train.epochs,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=_precision(config, on_gpu),
        accumulate_grad_batches=config.train.accumulate,  # Lightning divides each batch's loss by it
        benchmark=on_gpu,  # cuDNN autotuning: the input size is fixed for a whole run
        sync_batchnorm=on_gpu and num_nodes * _gpu_count(devices) > 1,  # one BN statistic over all ranks
        use_distributed_sampler=False,  # cxr.data.loaders.EpochSampler shards the data itself (and seeds augmentation)
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=TensorBoardLogger(run_dir, name="tensorboard", version=""),
        num_sanity_val_steps=0,
        log_every_n_steps=1,  # only epoch-level metrics are logged; silences the short-epoch warning
        enable_progress_bar=progress,
        enable_model_summary=progress,
    )


def store_paths(config: Config, store_path: str | Path | list) -> list[Path]:
    """The stores to train on: ``--store`` (one or several), else the config's ``data.stores``."""
    paths = [store_path] if isinstance(store_path, str | Path) else list(store_path or [])
    paths = paths or list(config.data.stores)
    if not paths:
        raise CxrError("no store to train on: pass --store STORE (repeat it for several) or set data.stores")
    resolved = [Path(p).resolve() for p in paths]
    if len(set(resolved)) != len(resolved):
        raise CxrError(f"the same store is given twice: {', '.join(map(str, paths))}")
    return [Path(p) for p in paths]


def fit_stores(config: Config, stores: list[Store], image_size: int | None) -> tuple[Config, TaskSplit]:
    """The config fitted to the stores (:func:`fit_store`: all must share size and crop) and the task's split; with
    several stores the union (:func:`cxr.data.tasks.build_multi_split`), recorded in ``data.stores``."""
    config = fit_store(config, stores[0], image_size)
    if len(stores) == 1:
        if config.data.store_weights:
            raise CxrError("data.store_weights needs several stores (--store A --store B)")
        return config, build_split(stores[0].index, config.task)
    for other in stores[1:]:
        if other.size != stores[0].size or abs(other.crop - stores[0].crop) > 1e-6:
            raise CxrError(f"stores to train on together must share size and crop: {stores[0].path} is "
                           f"{stores[0].size} px crop {stores[0].crop}, {other.path} is {other.size} px crop "
                           f"{other.crop} (prepare them with the same --size and --crop)")  # fmt: skip
    config.data.stores = [str(Path(store.path).resolve()) for store in stores]
    names = [store.manifest.dataset for store in stores]
    return config, build_multi_split([store.index for store in stores], names, config.task, config.data.store_weights)


def fit(
    config: Config,
    store_path: str | Path | list,
    run_dir: str | Path,
    *,
    image_size: int | None = None,
    resume: bool = False,
    accelerator: str = "auto",
    devices: int | str = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    progress: bool = True,
) -> FitResult:
    """Train ``config`` on a store (or several: a list, or ``data.stores``) into ``run_dir``; ``resume`` continues
    from ``checkpoints/last.ckpt``."""
    stores, run_dir = [Store(path) for path in store_paths(config, store_path)], Path(run_dir)
    config, split = fit_stores(config, stores, image_size)
    store = stores[0] if len(stores) == 1 else stores
    for part in ("train", "val"):
        if not len(split.rows(part)):
            raise CxrError(f"the {part} part is empty for this store and task; a larger store is needed")
    check_recipe(config)
    _check_loop_settings(config)

    L.seed_everything(config.train.seed, workers=True)
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    preprocessing = Preprocessing.from_config(config.data)
    pos_weight = _pos_weight(split) if config.train.pos_weight else None
    # Built before the run folder exists: a model that cannot be built (ImageNet weights offline, a wrong
    # model.init_from) must not leave a folder that can be neither restarted nor resumed.
    training_data = tuple(TrainingData(s.manifest.dataset, len(s.index), s.manifest_sha256) for s in stores)
    module = CxrModule(config, split.outputs, preprocessing, pos_weight, resume=resume, training_data=training_data)
    if config.optim.layer_decay != 1.0:
        layer_depths(module.model)  # a model without ViT blocks is refused here, not after the run folder exists
    if rank_zero_only.rank == 0:  # other DDP ranks start after rank 0 wrote these (or read them under torchrun)
        _prepare_run_dir(run_dir, config, split, resume)
        _record_environment(run_dir)

    trainer = build_trainer(
        config, run_dir, split.outputs, on_gpu, accelerator, devices, num_nodes, strategy, progress=progress
    )
    if config.train.channels_last:  # GPU or CPU: NHWC pays with bf16 on AMX CPUs (benchmarks/cpu_precision.py)
        module.model.to(memory_format=torch.channels_last)
    compile_model(module.model, config.train.compile)
    datamodule = StoreDataModule(
        store,
        split,
        config.data,
        config.train.batch_size,
        pin_memory=on_gpu,
        seed=config.train.seed,
        augment_on_device=augment_on_device(config, on_gpu),
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    try:
        with warnings.catch_warnings():  # the DataModule's hook is Lightning's no-op; the module's augments (by design)
            warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer`.*")
            trainer.fit(module, datamodule=datamodule, ckpt_path=last if resume else None)
    except SIGTERMException:  # a SystemExit with code None: without this, a terminated run would exit 0
        raise CxrError(
            f"training stopped by SIGTERM in epoch {trainer.current_epoch}; `cxr train ... --resume` continues it "
            f"from {last}"
        ) from None
    if trainer.is_global_zero:
        # best.ckpt is the model artifact: only last.ckpt needs the optimizer state (--resume), which for Adam is
        # twice the weights' size; every reader of the artifact (predict, export, serve, evaluate) pays for it.
        strip_training_state(run_dir / "checkpoints" / "best.ckpt")
        write_val_predictions(run_dir, stores, split, device="cuda" if on_gpu else "cpu")
    return FitResult(run_dir=run_dir, trainer=trainer, module=module)


def write_val_predictions(run_dir: Path, store: Store | list[Store], split: TaskSplit, device: str = "cpu") -> Path:
    """``RUN/val_predictions.parquet`` of the best checkpoint: ``Image Index``, ``Patient ID``, then per output
    ``<label>`` (0/1 target; float with NaN where a store does not give it) and ``prob_<label>``; ``cxr evaluate``
    chooses thresholds on it. Several stores add a ``dataset`` column."""
    artifact = load_artifact(run_dir / "checkpoints" / "best.ckpt", device=device)
    stores = [store] if isinstance(store, Store) else list(store)
    val = split.table[split.table["part"] == "val"]
    probabilities = np.zeros((len(val), len(split.outputs)), dtype=np.float32)
    for k, one in enumerate(stores):
        mine = (val["store"] == k).to_numpy() if "store" in val else np.ones(len(val), dtype=bool)
        if mine.any():
            probabilities[mine] = predict_store(artifact, one, val.loc[mine, "image"].tolist(), batch_size=64)
    table = pd.DataFrame({"Image Index": val["image"].to_numpy(), "Patient ID": val["patient_id"].to_numpy()})
    if "dataset" in val:
        table["dataset"] = val["dataset"].to_numpy()
    y = targets(val, split.outputs)
    missing = np.isnan(y).any()
    for k, label in enumerate(split.outputs):
        table[label] = y[:, k] if missing else y[:, k].astype(np.uint8)
        table[f"prob_{label}"] = probabilities[:, k]
    path = run_dir / "val_predictions.parquet"
    table.to_parquet(path, index=False)
    return path
