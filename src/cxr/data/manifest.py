"""A store's ``manifest.json`` as typed records: what ``cxr prepare`` was asked for, what it counted, what decoded.

The file on disk is unchanged (``docs/architecture.md``, "The store"): one JSON object, written last as the seal of a
finished store, with its keys in the order :meth:`StoreManifest.to_dict` gives. Older stores read too: a key they
lack takes the value it had before the key existed (``dataset`` was always NIH then; ``seed`` and ``uncertainty``
are absent for a dataset whose store never depended on them). Like timm's ``PretrainedCfg``, one record is written
and read by the same code, so a reader never guesses a key by string.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from cxr.errors import CxrError

FORMAT, FORMAT_VERSION = "cxr-store", 1


@dataclass(frozen=True)
class StoreParams:
    """The arguments a store was prepared with: a rerun with equal params resumes or does nothing; other params are
    an error unless forced. ``seed`` is None for a dataset with an official split (it never re-splits), and
    ``uncertainty`` None for a dataset without uncertain labels."""

    size: int
    crop: float
    source: str
    dataset: str = "nih"
    seed: int | None = None
    uncertainty: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The params as ``manifest.json`` and the prepare state hold them (an absent option is no key)."""
        return {key: value for key, value in asdict(self).items() if value is not None or key == "dataset"}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreParams:
        try:
            return cls(int(data["size"]), float(data["crop"]), str(data["source"]), str(data.get("dataset", "nih")),
                       data.get("seed"), data.get("uncertainty"))  # fmt: skip
        except (KeyError, TypeError, ValueError) as error:
            raise CxrError(f"manifest.json lacks or garbles {error}") from None

    def differences(self, other: StoreParams) -> list[str]:
        """``"name old, not new"`` for each param that differs from ``other`` (the new run's)."""
        return [
            f"{field.name} {getattr(self, field.name)!r}, not {getattr(other, field.name)!r}"
            for field in fields(self)
            if getattr(self, field.name) != getattr(other, field.name)
        ]


@dataclass(frozen=True)
class StoreCounts:
    """How many images the metadata listed, got a row, are usable, were rejected (missing or undecodable), per
    split, blacklisted, and how many boxes the store holds."""

    listed: int
    rows: int
    images: int
    rejected: int
    missing: int
    undecodable: int
    train_val: int
    test: int
    blacklisted: int
    boxes: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class StoreManifest:
    """``manifest.json`` of a finished store."""

    params: StoreParams
    metadata: str | None
    """File name of the metadata table the store was made from."""
    boxes_source: str | None
    boxes: str | None
    """``boxes.parquet`` when the store has boxes, else None."""
    counts: StoreCounts
    package_version: str | None = None
    decoder: str | None = None
    interpolation: str | None = None
    environment: dict[str, Any] | None = None
    """:func:`cxr.provenance.environment` of the prepare (without a time: a resumed run writes the same bytes)."""
    complete: bool = True
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    @property
    def size(self) -> int:
        return self.params.size

    @property
    def crop(self) -> float:
        return self.params.crop

    @property
    def dataset(self) -> str:
        return self.params.dataset

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``manifest.json``, keys in the order stores have always had them."""
        params = self.params.to_dict()
        head = {"format": self.format, "format_version": self.format_version, "complete": self.complete}
        head |= {key: params.pop(key) for key in ("size", "crop", "source")}
        files = {"metadata": self.metadata, "boxes_source": self.boxes_source, "boxes": self.boxes}
        tail = {"package_version": self.package_version, "decoder": self.decoder,
                "interpolation": self.interpolation, "environment": self.environment}  # fmt: skip
        tail = {key: value for key, value in tail.items() if value is not None}
        return head | files | {"counts": self.counts.to_dict()} | params | tail

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreManifest:
        """Read a manifest; :class:`CxrError` for one that is not a store's or lacks what every store had (size, crop,
        source). Keys added over time (counts, metadata, versions) may be absent from an old or hand-made one."""
        if data.get("format") != FORMAT:
            raise CxrError(f"manifest.json has format {data.get('format')!r}, not {FORMAT!r}")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise CxrError(f"written by a newer cxr (store format {data['format_version']})")
        try:
            recorded = data.get("counts", {})
            counts = StoreCounts(**{field.name: int(recorded.get(field.name, 0)) for field in fields(StoreCounts)})
            return cls(
                StoreParams.from_dict(data), data.get("metadata"), data.get("boxes_source"), data.get("boxes"),
                counts, data.get("package_version"), data.get("decoder"), data.get("interpolation"),
                data.get("environment"), bool(data.get("complete")), FORMAT, int(data.get("format_version", 0)),
            )  # fmt: skip
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise CxrError(f"manifest.json lacks or garbles {error}") from None
