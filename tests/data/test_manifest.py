"""The store manifest as typed records: manifests written by main before the change (commit f0dd7f6, an NIH store and a
CheXpert one with an uncertainty policy and a split seed) read and write back byte for byte, an older manifest
without a ``dataset`` key reads as NIH, and a garbled one is a clear error naming the store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cxr.data.manifest import StoreManifest, StoreParams
from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.files import to_json

MANIFESTS = Path(__file__).resolve().parents[1] / "fixtures" / "store-manifests"


@pytest.mark.parametrize("name", ["nih-f0dd7f6.json", "chexpert-f0dd7f6.json"])
def test_manifests_written_before_read_and_write_back_byte_for_byte(name):
    text = (MANIFESTS / name).read_text()
    manifest = StoreManifest.from_dict(json.loads(text))
    assert to_json(manifest.to_dict()) == text  # same keys, same order, same values
    assert StoreManifest.from_dict(manifest.to_dict()) == manifest


def test_typed_fields_of_old_manifests():
    nih = StoreManifest.from_dict(json.loads((MANIFESTS / "nih-f0dd7f6.json").read_text()))
    chexpert = StoreManifest.from_dict(json.loads((MANIFESTS / "chexpert-f0dd7f6.json").read_text()))
    assert (nih.dataset, nih.params.seed, nih.params.uncertainty, nih.boxes) == ("nih", None, None, "boxes.parquet")
    assert (nih.counts.images, nih.counts.missing) == (11, 1989) and nih.size == 32
    assert (chexpert.dataset, chexpert.params.seed, chexpert.params.uncertainty) == ("chexpert", 0, "ones")
    # A rerun is compared on params: the same ones resume, another policy is named in the refusal.
    assert chexpert.params == StoreParams(32, 0.75, chexpert.params.source, "chexpert", 0, "ones")
    other = StoreParams(32, 0.75, chexpert.params.source, "chexpert", 0, "zeros")
    assert chexpert.params.differences(other) == ["uncertainty 'ones', not 'zeros'"]


def test_a_store_from_before_the_dataset_key_opens_as_nih(tmp_path):
    data = json.loads((MANIFESTS / "nih-f0dd7f6.json").read_text())
    del data["dataset"], data["environment"], data["decoder"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    np.save(tmp_path / "images.npy", np.zeros((11, 32, 32), np.uint8))
    (tmp_path / "index.parquet").write_bytes(b"")
    store = Store(tmp_path)
    assert store.manifest.dataset == "nih" and store.manifest.decoder is None and (store.size, store.crop) == (32, 0.75)
    assert "dataset" in store.manifest.to_dict() and "decoder" not in store.manifest.to_dict()


def test_a_garbled_manifest_names_the_store(tmp_path):
    data = json.loads((MANIFESTS / "nih-f0dd7f6.json").read_text())
    del data["size"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(CxrError, match=rf"{tmp_path} is damaged: .*'size'.*--force"):
        Store(tmp_path)
