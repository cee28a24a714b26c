"""The reader protocol, parametrised over the registry: every registered reader has a fixture folder of real metadata
excerpts that it (and only it) detects and reads into the one ``LabelledDataset`` shape, that ``cxr inspect``
summarises and that ``cxr prepare`` turns into a store; a module that defines ``READER`` registers itself; the
tables of ``docs/datasets.md`` are the ones the registry generates; the typed options are validated."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import cxr.data.datasets as datasets
from cxr.data.datasets import READERS, Reader, ReadOptions, detect_dataset, read_dataset, summarize
from cxr.data.datasets.tables import BEGIN, END, generated_markdown, rewrite
from cxr.data.prepare import prepare_store
from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.labels import COMMON_LABELS
from source_images import write_source_image

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
WRITTEN = 6
"""Source images written per dataset for the prepare test (the rest of each excerpt's list stays missing)."""


def fixture_of(reader: Reader) -> Path:
    folder = FIXTURES / reader.fixture
    assert folder.is_dir() and any(folder.iterdir()), (
        f"reader {reader.name!r} has no fixture folder {folder.relative_to(REPO)}: add an excerpt of its real "
        "metadata files there (docs/datasets.md, 'Adding a dataset')"
    )
    return folder


@pytest.fixture(params=list(READERS.values()), ids=list(READERS))
def reader(request) -> Reader:
    return request.param


def test_registry_is_every_reader_module():
    assert {"nih", "chexpert", "mimic", "padchest", "vindr", "rsna", "siim", "google2019"} <= set(READERS)
    assert len({reader.fixture for reader in READERS.values()}) == len(READERS)  # one fixture folder each


def test_reader_detects_and_reads_its_fixture(reader):
    folder = fixture_of(reader)
    assert reader.detect(folder) and detect_dataset(folder) == reader.name
    dataset = read_dataset(folder)
    assert dataset.name == reader.name and dataset.mapping == reader.mapping and len(dataset.images) > 0
    assert list(dataset.images.columns[:4]) == ["image", "patient_id", "view", "split"]
    assert list(dataset.harmonised.columns) == list(COMMON_LABELS)
    assert len(dataset.labels) == len(dataset.harmonised) == len(dataset.images)
    summary = summarize(dataset).to_dict()
    assert json.loads(json.dumps(summary)) == summary  # plain JSON types only
    assert summary["dataset"] == reader.name and summary["usable"] == len(dataset.images)
    assert set(summary["harmonised"]) == set(COMMON_LABELS)


def test_no_primary_reader_claims_another_readers_fixture(reader):
    for other in READERS.values():
        if other is not reader and not other.secondary:
            assert not other.detect(fixture_of(reader)), f"{other.name} claims {reader.fixture}"


def _image_path(folder: Path, image: str, found_by_name: bool) -> Path:
    """Where a listed image goes: below the folder by its relative path, or (a dataset whose metadata names bare
    file names, found anywhere below the folder) in ``images/``."""
    return folder / "images" / Path(image).name if found_by_name else folder / image


def test_prepare_reads_every_readers_fixture(reader, tmp_path):
    folder = tmp_path / reader.fixture
    shutil.copytree(fixture_of(reader), folder)
    dataset = read_dataset(folder)
    by_name = dataset.found is not None
    for k, image in enumerate(dataset.images["image"].iloc[:WRITTEN]):
        if not _image_path(folder, image, by_name).exists():
            write_source_image(_image_path(folder, image, by_name), seed=k)
    listed = dataset.images["image"]
    present = int(sum(_image_path(folder, image, by_name).is_file() for image in listed))
    if reader.secondary:  # a label set for another dataset's images has none of its own to store
        with pytest.raises(CxrError, match="prepare the"):
            prepare_store(folder, tmp_path / "store", size=16, crop=1.0, workers=1, progress=False)
        return
    manifest = prepare_store(folder, tmp_path / "store", size=16, crop=1.0, workers=1, progress=False)
    store = Store(tmp_path / "store")
    assert store.manifest == manifest and manifest.dataset == reader.name
    assert (manifest.counts.listed, manifest.counts.images) == (len(listed), present) and present >= WRITTEN
    assert (manifest.counts.missing, manifest.counts.undecodable) == (len(listed) - present, 0)
    assert (manifest.params.uncertainty is not None) == reader.uncertainty
    assert len(store.index) == present and set(store.index["split"]) <= {"train_val", "test", ""}
    assert np.asarray(store.images[store.index["row"].to_numpy()]).std(axis=(1, 2)).min() > 0  # decoded, not zero


def test_a_module_with_a_reader_registers_itself(tmp_path, monkeypatch):
    """Adding a dataset is one module: dropped into the package, it is collected; a name taken twice is an error."""
    module = tmp_path / "toyset.py"
    module.write_text(
        "from cxr.data.datasets.reader import Reader\n"
        "READER = Reader('toyset', 'Toy set', lambda root: False, lambda root, options: None, {}, fixture='toyset')\n"
    )
    monkeypatch.setattr(datasets, "__path__", [*datasets.__path__, str(tmp_path)])
    try:
        found = datasets._collect()
        assert "toyset" in found and set(READERS) < set(found)
        module.write_text(module.read_text().replace("'toyset', 'Toy set'", "'nih', 'Toy set'"))
        sys.modules.pop("cxr.data.datasets.toyset", None)
        with pytest.raises(CxrError, match="two dataset modules register the same name"):
            datasets._collect()
    finally:
        sys.modules.pop("cxr.data.datasets.toyset", None)


def test_docs_tables_are_generated_from_the_registry():
    """docs/datasets.md shows the readers and mappings the code uses; `python -m cxr.data.datasets --write
    docs/datasets.md` rewrites the block after a reader changes."""
    page = (REPO / "docs" / "datasets.md").read_text()
    assert generated_markdown(READERS) in page
    assert rewrite(page, READERS) == page
    for reader in READERS.values():
        assert f"`tests/fixtures/{reader.fixture}/`" in page and reader.title in page
    drifted = page.replace("| `Cardiomegaly` |", "| `Heart` |", 1)
    assert rewrite(drifted, READERS) == page  # a hand edit inside the block is overwritten
    with pytest.raises(CxrError, match="exactly one generated block"):
        rewrite(page.replace(BEGIN, ""), READERS)
    assert page.count(END) == 1


def test_read_options_are_typed_and_reach_the_readers(sample_dir):
    with pytest.raises(CxrError, match="--uncertainty must be ones, zeros or ignore, not 'half'"):
        ReadOptions(uncertainty="half")
    assert ReadOptions(uncertainty="ones").uncertainty.value == "ones"
    strict = read_dataset(sample_dir, "nih", ReadOptions(age_max=40)).images
    default = read_dataset(sample_dir, "nih").images
    assert not default["age_outlier"].any() and strict["age_outlier"].sum() == (default["age"] > 40).sum() > 0
    assert strict["age"].max() <= 40
