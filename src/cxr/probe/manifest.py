"""The ``manifest.json`` of an embeddings folder (``cxr embed``), typed: written last, read by ``cxr probe``.

It says which encoder made the vectors (a description without paths), their shape, pooling and precision, the
preprocessing, and which store they belong to (:class:`EmbeddedStore`: its id, the SHA-256 of ``index.parquet`` and
its pixel settings, so a probe refuses another store). ``params`` are the arguments of the run: ``cxr embed`` rerun
with others refuses to overwrite it. :meth:`EmbeddingsManifest.to_dict` is the file, key for key as before it was
typed; :meth:`EmbeddingsManifest.from_dict` reads it back and refuses anything but a complete manifest.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr import __version__
from cxr.errors import CxrError
from cxr.imaging.preprocessing import Preprocessing

FORMAT, FORMAT_VERSION = "cxr-embeddings", 1
EMBEDDINGS, ENCODER, MANIFEST = "embeddings.npy", "encoder.ckpt", "manifest.json"


@dataclass(frozen=True)
class EmbeddedStore:
    """The store whose images were embedded, by identity and name (its folder's name only, never the path)."""

    id: str  # SHA-256 of index.parquet and the pixel settings (cxr.probe.embed.store_id)
    manifest_sha256: str | None
    name: str
    size: int
    crop: float
    dataset: str

    def to_dict(self) -> dict[str, str | int | float | None]:
        return {"id": self.id, "manifest_sha256": self.manifest_sha256, "name": self.name, "size": self.size,
                "crop": self.crop, "dataset": self.dataset}  # fmt: skip

    @classmethod
    def from_dict(cls, block: dict) -> EmbeddedStore:
        return cls(block["id"], block.get("manifest_sha256"), block["name"], block["size"], block["crop"],
                   block.get("dataset", "nih"))  # fmt: skip


@dataclass(frozen=True)
class EmbeddingsManifest:
    """A finished embeddings folder: ``images`` x ``dims`` float32 vectors of ``store`` by ``model``."""

    model: dict[str, object]  # the encoder's description (cxr.probe.encoder.Encoder): kind, name, weights; no paths
    dims: int
    images: int
    pooling: str
    precision: str  # fp32 or bf16
    preprocessing: Preprocessing
    store: EmbeddedStore
    encoder_sha256: str
    params: dict[str, object]  # the run's arguments (model, store id, preprocessing, batch size, precision)
    package_version: str = __version__

    def to_dict(self) -> dict[str, object]:
        """``manifest.json``."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "complete": True,
            "model": self.model,
            "dims": self.dims,
            "images": self.images,
            "pooling": self.pooling,
            "precision": self.precision,
            "preprocessing": self.preprocessing.to_dict(),
            "store": self.store.to_dict(),
            "files": {"embeddings": EMBEDDINGS, "encoder": ENCODER, "encoder_sha256": self.encoder_sha256},
            "package_version": self.package_version,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, document: dict, where: str = MANIFEST) -> EmbeddingsManifest:
        """A complete manifest, or a :class:`CxrError` naming ``where`` (a run still under way writes none)."""
        if not isinstance(document, dict) or document.get("format") != FORMAT or not document.get("complete"):
            raise CxrError(f"{where} is not a complete cxr-embeddings manifest")
        try:
            return cls(
                model=document["model"],
                dims=int(document["dims"]),
                images=int(document["images"]),
                pooling=document["pooling"],
                precision=document["precision"],
                preprocessing=Preprocessing.from_dict(document["preprocessing"], f"{where}: preprocessing"),
                store=EmbeddedStore.from_dict(document["store"]),
                encoder_sha256=document["files"]["encoder_sha256"],
                params=document["params"],
                package_version=document.get("package_version", "unknown"),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise CxrError(f"{where}: not a cxr-embeddings manifest ({type(error).__name__}: {error})") from None


__all__ = ["ENCODER", "EMBEDDINGS", "FORMAT", "FORMAT_VERSION", "MANIFEST", "EmbeddedStore", "EmbeddingsManifest"]
