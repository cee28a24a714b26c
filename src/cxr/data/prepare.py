"""``cxr prepare``: decode every image of a dataset once into a store (see ``docs/architecture.md``, "The store").

How it stays fast, small and safe:

* **Parallel, constant memory.** Rows are cut into fixed chunks; worker processes decode a chunk and write it straight
  into the preallocated ``images.npy`` through a memory map of just that chunk, then unmap it. The parent only
  schedules chunks and records each image's source size or reject reason, so no process holds more than a chunk.
* **Resumable.** Every couple of seconds the parent makes the finished chunks durable: it fdatasyncs images.npy,
  then appends the chunks' results to a journal (``.prepare-journal.jsonl``) and fsyncs it, so a journal line only
  ever vouches for rows already on disk (workers never wait on the disk). A run killed at any moment, even by a
  power cut, loses at most the chunks of the last seconds; rerun with the same arguments, it redoes exactly those
  (decoding is deterministic), so the finished store is byte-identical to an uninterrupted run. Nothing written
  depends on timing, worker count or completion order.
* **Honest about bad input.** A missing, empty, truncated or corrupt image goes to ``rejects.csv`` with the reason;
  the run goes on. A rejected image's row in ``images.npy`` stays zero and is absent from ``index.parquet``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from cxr.data.datasets import READERS, ReadOptions, read_dataset
from cxr.data.journal import ChunkResult, Journal, read_journal
from cxr.data.manifest import StoreManifest, StoreParams
from cxr.data.store import IN_PROGRESS as STATE
from cxr.data.store import JOURNAL, StoreSource, allocate_images, write_tables
from cxr.errors import CxrError
from cxr.files import write_json
from cxr.imaging import decode  # decode.DECODER is read when a store is written: it may be switched at run time
from cxr.imaging.decode import decode_grayscale, init_decode_worker, preprocess
from cxr.imaging.geometry import crop_square

STORE_FILES = ("images.npy", "index.parquet", "rejects.csv", "boxes.parquet", "manifest.json")
LOCK = ".prepare.lock"
COMMIT_SECONDS = 2.0
"""How often finished chunks are made durable and journaled (a kill redoes at most this much work)."""
CHUNK_SIZE = 64
"""Most images per chunk: big enough to amortise a flush, small enough that a kill loses little work."""


def chunk_size_for(images: int, workers: int) -> int:
    """Images per chunk: at most :data:`CHUNK_SIZE`, and small enough to give every worker ~8 chunks, so that a
    small dataset still keeps all workers busy to the end."""
    return max(1, min(CHUNK_SIZE, -(-images // (8 * workers))))


def _write_chunk(
    images_path: str, offset: int, size: int, crop: float, first_row: int, files: list[str]
) -> ChunkResult:
    """Worker: decode ``files`` into rows ``first_row...`` of images.npy; return source sizes and reject reasons."""
    rows = np.memmap(images_path, dtype=np.uint8, mode="r+", offset=offset + first_row * size * size,
                     shape=(len(files), size, size))  # fmt: skip
    sizes, rejects = [], {}
    for i, path in enumerate(files):
        name = os.path.basename(path)
        try:
            gray = decode_grayscale(path, name=name)
            rows[i] = preprocess(gray, size, crop)
            sizes.append([gray.shape[1], gray.shape[0]])
        except Exception as error:  # one bad image must not stop a 112k-image run: it is recorded, not raised
            reason = str(error).removeprefix(f"{name}: ")
            rejects[str(i)] = reason if isinstance(error, CxrError) else f"{type(error).__name__}: {reason}"
            rows[i] = 0  # rewritten on resume too, so the bytes never depend on history
            sizes.append(None)
    del rows  # unmap: written pages must not accumulate in this worker's resident memory (the parent syncs them)
    return ChunkResult(sizes, rejects)


def _ours(name: str) -> bool:
    """A file prepare writes (temporary ``*.tmp`` ones included)."""
    return name.removesuffix(".tmp") in (*STORE_FILES, STATE, JOURNAL, LOCK)


def _clear(out: Path) -> None:
    for path in out.iterdir():
        if _ours(path.name) and path.name != LOCK:
            path.unlink()


def _check_existing(out: Path, params: StoreParams, force: bool, log) -> StoreManifest | None:
    """The finished manifest if ``out`` already holds this store, else None (after clearing it if forced)."""
    manifest_path, state_path = out / "manifest.json", out / STATE
    previous = None
    if manifest_path.exists():
        recorded = json.loads(manifest_path.read_text())
        previous = StoreParams.from_dict(recorded)
        if recorded.get("complete") and previous == params:
            return StoreManifest.from_dict(recorded)
    elif state_path.exists():
        previous = StoreParams.from_dict(json.loads(state_path.read_text())["params"])
        if previous == params:
            return None  # an interrupted run with the same arguments: resume it
    elif not all(_ours(p.name) for p in out.iterdir()):
        raise CxrError(f"{out} is not empty and not a cxr store: choose an empty or new --out folder")
    # (Only our own files and no state: a run killed before it recorded its state. Start afresh.)
    if previous is not None and not force:
        differ = "; ".join(previous.differences(params))
        raise CxrError(f"{out} holds a store prepared with other arguments ({differ}): "
                       "use --force to overwrite it, or another --out")  # fmt: skip
    if previous is not None:
        log(f"--force: overwriting the store in {out}")
    _clear(out)
    return None


def _source(data_dir: str | Path, dataset: str | None, options: ReadOptions, seed: int) -> StoreSource:
    """Read the folder with its reader (recognised from its files, or named) and shape it for the store writer."""
    read = read_dataset(data_dir, dataset, options)
    return READERS[read.name].store(read, seed)


def prepare_store(
    data_dir: str | Path,
    out_dir: str | Path,
    size: int = 300,
    crop: float = 0.75,
    workers: int | None = None,
    progress: bool = True,
    force: bool = False,
    chunk_size: int | None = None,
    dataset: str | None = None,
    seed: int = 0,
    uncertainty: str = "ignore",
) -> StoreManifest:
    """Decode a dataset folder into a store at ``out_dir`` and return its manifest (see ``docs/architecture.md``).

    Each image: 8-bit grayscale, centered square crop of ``crop`` x the shorter side, area-resized to ``size``
    (:mod:`cxr.imaging.decode`). ``workers`` processes (default: all cores; 1 runs in this process). An interrupted run
    is resumed by calling again with the same arguments; a finished store is returned untouched; a store made with
    other arguments is an error unless ``force``. Workers start by ``forkserver``: a script that calls this with
    ``workers > 1`` needs the usual ``if __name__ == "__main__":`` guard.

    Any dataset :mod:`cxr.data.datasets` reads can be the source (recognised from its files, or ``dataset``), shaped
    by its reader's ``store``: by default the common vocabulary's labels, NaN where the dataset cannot provide them,
    and the official split or a patient-wise split seeded with ``seed`` (:mod:`cxr.data.datasets.source`); NIH keeps
    its own labels and official lists. CheXpert's and MIMIC's uncertain labels follow ``uncertainty`` (``ones``,
    ``zeros``, ``ignore`` = NaN).
    """
    crop_square(1, 1, crop)  # validates crop
    if int(size) != size or size < 8:
        raise CxrError(f"--size must be a whole number of pixels >= 8, got {size}")
    if workers is not None and workers < 1:
        raise CxrError(f"--workers must be at least 1, got {workers}")
    workers = workers or os.cpu_count() or 1
    options = ReadOptions(uncertainty=uncertainty)  # validates the policy
    source = _source(data_dir, dataset, options, seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    console = _console() if progress else None
    log = (lambda message: console.print(message, soft_wrap=True, highlight=False)) if console else (lambda _: None)
    params = StoreParams(
        int(size), float(crop), str(source.root.resolve()), source.name, seed if source.seeded else None,
        options.uncertainty.value if READERS[source.name].uncertainty else None,
    )  # fmt: skip

    with _writing(out):
        finished = _check_existing(out, params, force, log)
        if finished is not None:
            for name in (STATE, JOURNAL):  # left over if a run was killed right after sealing the store
                (out / name).unlink(missing_ok=True)
            log(f"{out} is already a complete store (size {size}, crop {crop}): nothing to do")
            return finished
        table = source.metadata
        present = table["image"].isin(source.images.keys()).to_numpy()
        names = table["image"].to_numpy()[present]
        files = [str(source.images[name]) for name in names]
        # What the rows mean: the listed images and which of them are on disk. A resume needs both unchanged.
        fingerprint = hashlib.sha256("\n".join([*table["image"], "", *names]).encode()).hexdigest()
        images_path = out / "images.npy"
        state_path = out / STATE
        if state_path.exists() and json.loads(state_path.read_text())["fingerprint"] != fingerprint:
            if not force:
                raise CxrError(f"the images of {source.root} (listed or on disk) changed since {out} was started: "
                               "use --force to start over")  # fmt: skip
            log(f"--force: the source changed since {out} was started; starting over")
            _clear(out)
        if state_path.exists() and images_path.exists():
            chunk_size = json.loads(state_path.read_text())["chunk_size"]
        else:
            (out / JOURNAL).unlink(missing_ok=True)
            allocate_images(images_path, (len(files), size, size))
            chunk_size = chunk_size or chunk_size_for(len(files), workers)
            state = {"params": params.to_dict(), "fingerprint": fingerprint, "rows": len(files)}
            state["chunk_size"] = chunk_size
            write_json(state_path, state)
        offset = np.load(images_path, mmap_mode="r").offset
        chunks = range(0, len(files), chunk_size)
        done = read_journal(out / JOURNAL, ChunkResult.from_dict)
        if done:
            log(f"resuming: {len(done)} of {len(chunks)} chunks already done")
        tasks = {c: (str(images_path), offset, size, crop, start, files[start : start + chunk_size])
                 for c, start in enumerate(chunks) if c not in done}  # fmt: skip
        journal = Journal(out / JOURNAL, images_path, done, COMMIT_SECONDS)
        try:
            _run(tasks, journal.add, min(workers, max(1, len(tasks))), console, len(files),
                 sum(len(d.sizes) for d in done.values()))  # fmt: skip
        finally:
            journal.close()
        sizes = [size for c in range(len(chunks)) for size in done[c].sizes]
        reasons = {c * chunk_size + int(i): reason for c in done for i, reason in done[c].rejects.items()}
        manifest = write_tables(out, source, present, sizes, reasons, params, decode.DECODER)
        for name in (STATE, JOURNAL):
            (out / name).unlink(missing_ok=True)
        log(f"store written to {out}: {manifest.counts.images} images, {manifest.counts.rejected} rejected")
        return manifest


@contextmanager
def _writing(out: Path):
    """Hold ``out``'s lock file while a prepare writes it: a second prepare of the same folder is refused at once."""
    lock = open(out / LOCK, "a+b")  # noqa: SIM115  held until the end; the kernel drops it if this process dies
    try:
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The holder unlinks the lock file when it ends: a lock won on that orphaned inode is no lock at all.
        if os.fstat(lock.fileno()).st_ino != os.stat(out / LOCK).st_ino:
            raise OSError("lock file replaced")
    except OSError:
        lock.close()
        raise CxrError(f"another cxr prepare is writing {out}; wait for it or choose another --out") from None
    try:
        yield
    finally:
        lock.close()
        (out / LOCK).unlink(missing_ok=True)


def _run(tasks: dict, record, workers: int, console, total: int, completed: int) -> None:
    """Run chunk tasks (in this process when ``workers == 1``), recording each as it finishes; keep 2 per worker
    in flight so the parent never queues the whole dataset."""
    progress = _progress_bar(console, total, completed) if console else None
    try:
        if workers == 1:
            for chunk, task in tasks.items():
                record(chunk, _write_chunk(*task))
                progress and progress.advance(0, len(task[-1]))
            return
        import multiprocessing

        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["cxr.imaging.decode"])
        pending = iter(tasks.items())
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=init_decode_worker, initargs=(os.getpid(),))
        with pool:
            running = {}
            while True:
                while len(running) < 2 * workers and (item := next(pending, None)) is not None:
                    running[pool.submit(_write_chunk, *item[1])] = item
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    chunk, task = running.pop(future)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        raise CxrError("a prepare worker died (out of memory? killed?): rerun the same command to "
                                       "resume where it stopped") from None  # fmt: skip
                    record(chunk, result)
                    progress and progress.advance(0, len(task[-1]))
    finally:
        if progress:
            progress.stop()


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _progress_bar(console, total: int, completed: int):
    """A started rich progress bar (task 0) showing images/s."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TimeRemainingColumn
    from rich.text import Text

    class ImagesPerSecond(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:,.0f} images/s" if task.speed else "- images/s", style="cyan")

    progress = Progress("prepare", BarColumn(), MofNCompleteColumn(), ImagesPerSecond(), TimeRemainingColumn(),
                        console=console)  # fmt: skip
    progress.add_task("prepare", total=total, completed=completed)
    progress.start()
    return progress
