"""``cxr embed MODEL STORE --out EMB``: one feature vector per store image, resumable after a kill.

The folder EMB (``docs/architecture.md``, "Embeddings"):

- ``embeddings.npy``: float32 ``(N, D)``, row ``i`` = row ``i`` of the store's ``index.parquet`` (not images.npy's
  ``row``: rejected images have no embedding);
- ``encoder.ckpt``: the frozen encoder as a model artifact, so ``cxr probe`` rebuilds the model it puts its linear
  head on from EMB alone (a backbone built by name carries an untrained head that the probe replaces);
- ``manifest.json``, written last: model (name, weights' SHA-256 or source), dims, pooling, precision, the store's
  id (SHA-256 of its ``index.parquet``), size and crop; file names only, never a path of this machine.

Like ``cxr prepare`` (:mod:`cxr.data.prepare`) the run is resumable: ``embeddings.npy`` is preallocated, images are
embedded in fixed chunks of ``--batch-size`` rows, and every couple of seconds the finished chunks are made durable
(fdatasync of the array, then a journal line per chunk, fsynced; :class:`cxr.data.journal.Journal`). A killed run,
rerun with the same arguments, redoes only unjournaled chunks, each with the same rows as before, so the finished
array equals an uninterrupted run's byte for byte on the same machine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cxr.data.journal import Journal, read_journal
from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.files import file_sha256, write_json
from cxr.imaging.preprocessing import to_unit
from cxr.models.artifact import load_artifact, write_artifact
from cxr.probe.encoder import Embedder, embedding_dims, load_encoder, pooling, use_bf16
from cxr.probe.manifest import EMBEDDINGS, ENCODER, MANIFEST, EmbeddedStore, EmbeddingsManifest

STATE, JOURNAL = ".embed-state.json", ".embed-journal.jsonl"
COMMIT_SECONDS = 2.0
"""How often finished chunks are made durable (a kill redoes at most this much work)."""
OURS = (EMBEDDINGS, ENCODER, MANIFEST, STATE, JOURNAL)


@dataclass(frozen=True)
class EmbeddedChunk:
    """What the journal records of an embedded chunk: how many rows it wrote."""

    rows: int

    def to_dict(self) -> dict[str, int]:
        return {"rows": self.rows}

    @classmethod
    def from_dict(cls, data: dict[str, int]) -> EmbeddedChunk:
        return cls(int(data["rows"]))


def store_id(store: Store) -> str:
    """The identity of a store's images and labels: SHA-256 of its ``index.parquet`` and of the manifest's pixel
    settings (size, crop, decoder, interpolation: the index alone is the same for every crop)."""
    pixels = {key: store.manifest.to_dict().get(key) for key in ("size", "crop", "decoder", "interpolation")}
    digest = hashlib.sha256((store.path / "index.parquet").read_bytes())
    digest.update(json.dumps(pixels, sort_keys=True).encode())
    return digest.hexdigest()


class ChunkImages(Dataset):
    """Item ``k``: the uint8 ``(b, 1, S, S)`` model views of chunk ``chunks[k]``'s store rows (whole batches, so a
    loader worker reads a contiguous slice of the memory map and the parent only runs the model)."""

    def __init__(self, store: Store, rows: np.ndarray, chunks: list[int], batch_size: int, preprocessing):
        self.store, self.rows, self.chunks, self.batch_size = store, rows, chunks, batch_size
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, item: int) -> tuple[int, torch.Tensor]:
        chunk = self.chunks[item]
        pixels = self.store.images[self.rows[chunk * self.batch_size : (chunk + 1) * self.batch_size]]
        views = np.stack([self.preprocessing.view(image) for image in pixels])
        return chunk, torch.from_numpy(views)[:, None]


def _check_out(out: Path, params: dict, force: bool) -> EmbeddingsManifest | None:
    """The finished manifest when EMB already holds these embeddings; None to (re)start or resume."""
    manifest, state = out / MANIFEST, out / STATE
    previous = None
    if manifest.exists():
        done = json.loads(manifest.read_text())
        if done.get("params") == params:
            return EmbeddingsManifest.from_dict(done, str(manifest))
        previous = done.get("params")
    elif state.exists():
        previous = json.loads(state.read_text())["params"]
        if previous == params:
            return None
    elif out.exists() and any(path.name.removesuffix(".tmp") not in OURS for path in out.iterdir()):
        raise CxrError(f"{out} is not empty and not an embeddings folder: choose an empty or new --out")
    if previous is not None and not force:
        differ = sorted(key for key in params if previous.get(key) != params[key])
        raise CxrError(f"{out} holds embeddings made with other arguments ({', '.join(differ)} differ): use --force "
                       "to overwrite them, or another --out")  # fmt: skip
    for name in OURS:
        (out / name).unlink(missing_ok=True)
    return None


def embed_store(
    model: str | Path,
    store_path: str | Path,
    out: str | Path,
    pretrained: str = "imagenet",
    input_size: int | None = None,
    batch_size: int = 64,
    workers: int = 0,
    precision: str = "auto",
    device: str | None = None,
    progress: bool = True,
    force: bool = False,
) -> EmbeddingsManifest:
    """Embed every image of a store with a frozen ``model`` into ``out``; return the manifest (see the module doc).

    ``workers`` loader processes read and resize while the model runs; ``precision`` ``auto`` uses bf16 autocast
    only where the hardware computes it natively (:func:`cxr.probe.encoder.use_bf16`)."""
    if batch_size < 1 or workers < 0:
        raise CxrError(f"--batch-size must be >= 1 and --workers >= 0, got {batch_size} and {workers}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    store, out = Store(store_path), Path(out)
    encoder = load_encoder(model, store, pretrained, input_size, device)
    bf16 = use_bf16(precision, device)
    params = {
        "model": encoder.description,
        "store_id": store_id(store),
        "preprocessing": encoder.preprocessing.to_dict(),
        "batch_size": int(batch_size),
        "precision": "bf16" if bf16 else "fp32",
    }
    finished = _check_out(out, params, force)
    if finished is not None:
        return finished
    out.mkdir(parents=True, exist_ok=True)
    if (out / STATE).exists():  # resuming: the very weights embedded so far (a random init is not rebuilt alike)
        encoder.model = load_artifact(out / ENCODER, device=device).model.eval()
    embedder = Embedder(encoder.model, bf16)
    rows = store.index["row"].to_numpy(np.int64)
    if not (out / STATE).exists():
        _start(out, encoder, embedding_dims(embedder, encoder.preprocessing.input_size), len(rows), params)
    array = np.load(out / EMBEDDINGS, mmap_mode="r+")
    n_chunks = -(-len(rows) // batch_size)
    done = read_journal(out / JOURNAL, EmbeddedChunk.from_dict)
    pending = [chunk for chunk in range(n_chunks) if chunk not in done]
    journal = Journal(out / JOURNAL, out / EMBEDDINGS, done, COMMIT_SECONDS)
    try:
        _run(embedder, ChunkImages(store, rows, pending, batch_size, encoder.preprocessing), array, journal, workers,
             batch_size, progress, len(rows), (n_chunks - len(pending)) * batch_size)  # fmt: skip
    finally:
        journal.close()
    array.flush()
    del array
    manifest = _manifest(params, encoder, store, len(rows), json.loads((out / STATE).read_text())["dims"], out)
    write_json(out / MANIFEST, manifest.to_dict())
    for name in (STATE, JOURNAL):
        (out / name).unlink(missing_ok=True)
    return manifest


def _start(out: Path, encoder, dims: int, images: int, params: dict) -> None:
    """A fresh run: the encoder file, the zeroed ``(images, dims)`` array, then the state that marks a run begun."""
    write_artifact(out / ENCODER, encoder.model, encoder.labels, encoder.preprocessing,
                   config={"role": "frozen encoder of cxr embed", "encoder": encoder.description})  # fmt: skip
    np.lib.format.open_memmap(out / EMBEDDINGS, mode="w+", dtype=np.float32, shape=(images, dims)).flush()
    (out / JOURNAL).unlink(missing_ok=True)
    write_json(out / STATE, {"params": params, "dims": dims})


def _run(embedder: Embedder, dataset: ChunkImages, array: np.ndarray, journal: Journal[EmbeddedChunk], workers: int,
         batch_size: int, progress: bool, total: int, completed: int) -> None:  # fmt: skip
    """Embed the pending chunks in order, each written into its rows and journaled."""
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, prefetch_factor=4 if workers else None,
                        pin_memory=embedder.device.type == "cuda")  # fmt: skip
    bar = _progress_bar(total, min(completed, total)) if progress else None
    try:
        for chunk, pixels in loader:
            features = embedder(to_unit(pixels.to(embedder.device, non_blocking=True)))
            start = chunk * batch_size
            array[start : start + len(features)] = features.cpu().numpy()
            journal.add(chunk, EmbeddedChunk(len(features)))
            bar and bar.advance(0, len(features))
    finally:
        if bar:
            bar.stop()


def _manifest(params: dict, encoder, store: Store, images: int, dims: int, out: Path) -> EmbeddingsManifest:
    embedded = EmbeddedStore(params["store_id"], store.manifest_sha256, store.path.name, store.size, store.crop,
                             store.manifest.dataset)  # fmt: skip
    return EmbeddingsManifest(
        model=encoder.description,
        dims=dims,
        images=images,
        pooling=pooling(encoder.model),
        precision=params["precision"],
        preprocessing=encoder.preprocessing,
        store=embedded,
        encoder_sha256=file_sha256(out / ENCODER),
        params=params,
    )


def _progress_bar(total: int, completed: int):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    bar = Progress("embed", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=Console(stderr=True))
    bar.add_task("embed", total=total, completed=completed)
    bar.start()
    return bar


class Embeddings:
    """A finished EMB folder, read-only: ``vectors`` (memory-mapped ``(N, D)``), the manifest, the encoder file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            state = " (cxr embed was interrupted: rerun it to finish)" if (self.path / STATE).exists() else ""
            raise CxrError(f"{self.path} is not a finished embeddings folder: no {MANIFEST}{state}")
        self.manifest = EmbeddingsManifest.from_dict(json.loads(manifest.read_text()), f"{self.path}: {MANIFEST}")
        self.vectors = np.load(self.path / EMBEDDINGS, mmap_mode="r")
        if self.vectors.shape != (self.manifest.images, self.manifest.dims):
            raise CxrError(f"{self.path}: {EMBEDDINGS} is {self.vectors.shape}, the manifest says "
                           f"({self.manifest.images}, {self.manifest.dims})")  # fmt: skip

    @property
    def encoder_file(self) -> Path:
        return self.path / ENCODER

    def check_store(self, store: Store) -> None:
        """The probe's labels and split come from ``store``: it must be the store these rows were embedded from."""
        if store_id(store) != self.manifest.store.id:
            raise CxrError(f"{store.path} is not the store {self.path} was embedded from (its index.parquet differs; "
                           f"embedded: {self.manifest.store.name})")  # fmt: skip
        self.manifest.preprocessing.check_store(store)
