"""Torch datasets and the Lightning DataModule over a store; batch prediction over store images.

Training reads the uint8 memmap of a store (``cxr prepare``: decoded once, nanoGPT-style), takes a view per item
(``cxr.data.transforms``) and hands uint8 tensors to the loader; conversion to float happens on the device. With
``data.augment_on=device`` the training items carry the view's draws instead of the augmented pixels
(``cxr.data.device_augment`` applies them batched). The memmap is opened lazily in each worker process
(``cxr.data.store.Store`` pickles without its pixels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from cxr.config import DataConfig
from cxr.data.store import Store
from cxr.data.tasks import TaskSplit, targets
from cxr.data.transforms import DeferredTrainView, TrainView
from cxr.errors import CxrError
from cxr.imaging.preprocessing import Preprocessing, to_unit


class StoreImages(Dataset):
    """Items ``(uint8 (1, S, S), float32 (K,))`` of store rows ``rows`` seen through ``view``; a view that returns
    ``(image, draws)`` (:class:`DeferredTrainView`) gives items ``(uint8 (1, R, R), float32 (K,), float64 (6,))``.

    With ``seed`` the view is random (training) and its draws come from a generator seeded by (seed, epoch, store
    row): items are then keyed ``(epoch, i)`` (:class:`EpochSampler`), so an image's augmentation in an epoch does not
    depend on the number of loader workers, on which worker drew it, or on whether the run was resumed.
    """

    def __init__(
        self, store: Store, rows: np.ndarray, labels: np.ndarray | None, view: Callable, seed: int | None = None
    ):
        self.store, self.rows, self.view, self.seed = store, np.asarray(rows, dtype=np.int64), view, seed
        self.labels = labels if labels is not None else np.zeros((len(self.rows), 0), np.float32)
        if len(self.labels) != len(self.rows):
            raise ValueError(f"{len(self.labels)} label rows for {len(self.rows)} images")

    def __len__(self) -> int:
        return len(self.rows)

    def _pixels(self, item: int) -> np.ndarray:
        return self.store.images[self.rows[item]]

    def _draw_key(self, item: int) -> int:
        """The number that, with seed and epoch, seeds the item's augmentation: its store row."""
        return int(self.rows[item])

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, ...]:
        epoch, item = key if isinstance(key, tuple) else (0, key)
        pixels = self._pixels(item)
        if self.seed is None:
            image = self.view(pixels)
        else:
            image = self.view(pixels, generator=item_generator(self.seed, epoch, self._draw_key(item)))
        draws = None
        if isinstance(image, tuple):
            image, draws = image
        # A copy (the memmap is read-only); np copy + from_numpy is ~100x faster than torch.tensor(ndarray).
        item_pixels, labels = torch.from_numpy(image.copy())[None], torch.from_numpy(self.labels[item])
        if draws is None:
            return item_pixels, labels
        return item_pixels, labels, torch.tensor(draws, dtype=torch.float64)


class MultiStoreImages(StoreImages):
    """:class:`StoreImages` over several stores: item ``i`` is row ``rows[i]`` of store ``stores[store_of[i]]``.

    Augmentation draws are keyed by (seed, epoch, store, row), so two stores' images with the same row number get
    different draws.
    """

    def __init__(self, stores: Sequence[Store], store_of: np.ndarray, rows: np.ndarray, labels: np.ndarray | None,
                 view: Callable, seed: int | None = None):  # fmt: skip
        super().__init__(stores[0], rows, labels, view, seed)
        self.stores, self.store_of = list(stores), np.asarray(store_of, dtype=np.int64)

    def _pixels(self, item: int) -> np.ndarray:
        return self.stores[self.store_of[item]].images[self.rows[item]]

    def _draw_key(self, item: int) -> int:
        return int(self.rows[item]) + (int(self.store_of[item]) << 40)


def item_generator(seed: int, epoch: int, row: int) -> torch.Generator:
    """A torch generator for one image in one epoch; SeedSequence mixes the three numbers into unrelated streams."""
    state = np.random.SeedSequence([seed, epoch, row]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class EpochSampler(Sampler):
    """Keys ``(epoch, i)`` of a dataset of ``n`` items: a permutation drawn from (seed, epoch) alone, or the identity.

    Lightning calls ``set_epoch`` before every epoch (a resumed run at the epoch it resumes), so the order is the
    same in an uninterrupted and a resumed run. Under DDP each of ``world`` ranks takes every ``world``-th key of the
    same permutation, padded by wrapping around so that all ranks step equally often (as ``DistributedSampler``).
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int = 0, rank: int = 0, world: int = 1):
        self.n, self.shuffle, self.seed, self.rank, self.world, self.epoch = n, shuffle, seed, rank, world, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.n // self.world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=generator).tolist()
        else:
            order = list(range(self.n))
        padded = order + order[: len(self) * self.world - self.n]
        return ((self.epoch, i) for i in padded[self.rank :: self.world])


def train_view_of(data: DataConfig) -> TrainView:
    return TrainView(
        input_size=data.input_size,
        eval_transform=data.eval_transform,
        rotation=data.rotation,
        shift=data.shift,
        hflip=data.hflip,
        random_crop=data.random_crop,
    )


def part_dataset(
    store: Store | Sequence[Store],
    split: TaskSplit,
    part: str,
    data: DataConfig,
    seed: int = 0,
    augment_on_device: bool = False,
) -> StoreImages:
    """The dataset of one part of a task split; the training part gets the random view, seeded by ``seed`` (with
    ``augment_on_device`` only its deterministic part and its draws: :class:`DeferredTrainView`).

    With several stores (``split`` from :func:`cxr.data.tasks.build_multi_split`) the items come from each row's
    store (its ``store`` column)."""
    labels = split.rows(part)
    table = split.table.loc[labels]
    training = part == "train"
    if training:
        view = DeferredTrainView(train_view_of(data)) if augment_on_device else train_view_of(data)
    else:
        view = Preprocessing.from_config(data).view
    y, item_seed = targets(table, split.outputs), seed if training else None
    if isinstance(store, Store):
        return StoreImages(store, table["row"].to_numpy(), y, view, item_seed)
    return MultiStoreImages(store, table["store"].to_numpy(), table["row"].to_numpy(), y, view, item_seed)


class StoreDataModule(L.LightningDataModule):
    """Train and validation loaders of a task split, sharded over DDP ranks by :class:`EpochSampler`.

    The Trainer must run with ``use_distributed_sampler=False``: Lightning's replacement sampler would not pass the
    epoch on to the augmentation. ``pin_memory`` (on a GPU) lets Lightning's ``non_blocking`` copy overlap the step;
    with ``augment_on_device`` the training batches carry draws for :func:`cxr.data.device_augment.augment_batch`.
    """

    def __init__(
        self,
        store: Store | Sequence[Store],
        split: TaskSplit,
        data: DataConfig,
        batch_size: int,
        pin_memory: bool,
        seed: int = 0,
        augment_on_device: bool = False,
    ):
        super().__init__()
        self.store, self.split, self.data, self.batch_size, self.pin_memory = store, split, data, batch_size, pin_memory
        self.seed, self.augment_on_device = seed, augment_on_device

    def _loader(self, part: str, shuffle: bool) -> DataLoader:
        workers = self.data.num_workers
        dataset = part_dataset(self.store, self.split, part, self.data, self.seed, self.augment_on_device)
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochSampler(len(dataset), shuffle=shuffle, seed=self.seed, rank=rank, world=world),
            num_workers=workers,
            pin_memory=self.pin_memory,
            persistent_workers=workers > 0,  # workers keep their memmap and warm page cache between epochs
            prefetch_factor=self.data.prefetch_factor if workers > 0 else None,  # batches ready per worker
            drop_last=False,
            # The loader's own generator seeds its workers; kept apart from the global one that dropout draws on.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)


def store_rows(store: Store, images: Sequence[str]) -> np.ndarray:
    """images.npy rows of image names; a clear error lists a few names the store lacks."""
    row_of = dict(zip(store.index["image"], store.index["row"], strict=True))
    missing = [name for name in images if name not in row_of]
    if missing:
        raise CxrError(f"{len(missing)} images are not in store {store.path}, e.g. {missing[:3]}")
    return np.array([row_of[name] for name in images], dtype=np.int64)


def predict_store(
    artifact,
    store_path: str | Path | Store,
    images: Sequence[str],
    batch_size: int = 64,
    tta: bool = False,
    num_workers: int = 0,
) -> np.ndarray:
    """Probabilities ``(n, K)`` of a model artifact for store images, in ``images`` order.

    ``tta``: the mean of the probabilities of the image and its horizontal mirror (test-time augmentation).
    """
    store = store_path if isinstance(store_path, Store) else Store(store_path)
    preprocessing = artifact.preprocessing
    preprocessing.check_store(store)
    loader = DataLoader(
        StoreImages(store, store_rows(store, images), None, preprocessing.view),
        batch_size=batch_size,
        num_workers=num_workers,
    )
    model = artifact.model.eval()
    device = next(model.parameters()).device
    chunks = []
    with torch.inference_mode():
        for pixels, _ in loader:
            batch = to_unit(pixels.to(device))
            probabilities = torch.sigmoid(model(batch))
            if tta:
                probabilities = (probabilities + torch.sigmoid(model(batch.flip(-1)))) / 2
            chunks.append(probabilities.float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, len(artifact.labels)), np.float32)
