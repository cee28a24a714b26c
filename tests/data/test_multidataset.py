"""Training on two stores of different layouts (NIH and CheXpert, synthetic) with labels one store lacks: the union,
the per-store sampling ratio, the masked loss on a real batch, learning on held-out rows of each store, external
validation on a third store (outputs it lacks reported "not available") and scoring against Google-format expert
labels. One run, trained once for the module."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from conftest import cli
from cxr.config import load_config
from cxr.data.store import Store
from cxr.data.tasks import build_multi_split
from cxr.errors import CxrError
from cxr.labels import FINDINGS

pytestmark = pytest.mark.slow  # whole pipelines: every test here trains or runs one

SIZE = 64
CHEXPERT_ONLY = ("Lung Opacity", "Lung Lesion")  # the CheXpert store gives these, the NIH store cannot
NIH_ONLY = ("Mass", "Nodule", "Infiltration", "Emphysema", "Fibrosis", "Hernia", "Pleural_Thickening")
RECIPE = [
    "--model", "resnet18", "--no-progress", "--image-size", str(SIZE), "--epochs", "2", "model.pretrained=none",
    "data.num_workers=0", "model.head=gap", "optim.lr=3e-4", "data.rotation=0", "data.shift=0",
    "task.val_fraction=0.2", "task.target=common",
]  # fmt: skip


def _prepare(data: Path, out: Path) -> Path:
    from cxr.data.prepare import prepare_store

    prepare_store(data, out, size=SIZE, crop=1.0, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory, synth_store) -> dict[str, Path]:
    """The session's NIH-layout store, a CheXpert-layout store, and a third NIH-layout store (another seed: the
    external dataset)."""
    from cxr.synth import generate

    root = tmp_path_factory.mktemp("multi")
    chexpert = generate(root / "CheXpert-v1.0-small", images=240, size=SIZE, seed=21, prevalence="flat", workers=1,
                        layout="chexpert")  # fmt: skip
    other = generate(root / "other-nih", images=120, size=SIZE, seed=33, prevalence="flat", workers=1)
    return {"nih": synth_store, "chexpert": _prepare(chexpert, root / "chexpert-store"),
            "other": _prepare(other, root / "other-store")}  # fmt: skip


@pytest.fixture(scope="module")
def run(stores, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("multirun") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cli("train", "--experiment", "multilabel-adam", "--store", str(stores["nih"]), "--store",
             str(stores["chexpert"]), "--out", str(out), *RECIPE)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    return out


def test_union_of_labels_missing_ones_are_nan(stores):
    nih, chexpert = Store(stores["nih"]), Store(stores["chexpert"])
    task = load_config("multilabel-adam", ["task.target=common"]).task
    split = build_multi_split([nih.index, chexpert.index], ["nih", "chexpert"], task)
    assert set(FINDINGS) <= set(split.outputs) and set(CHEXPERT_ONLY) <= set(split.outputs)
    from cxr.data.tasks import targets

    y = pd.DataFrame(targets(split.table, split.outputs), columns=split.outputs, index=split.table.index)
    of_nih, of_chexpert = split.table["dataset"] == "nih", split.table["dataset"] == "chexpert"
    assert y.loc[of_nih, list(CHEXPERT_ONLY)].isna().all().all()  # NIH cannot give them: missing, not 0
    assert y.loc[of_chexpert, list(NIH_ONLY)].isna().all().all()
    assert y.loc[of_nih, list(NIH_ONLY)].notna().all().all() and (y.loc[of_chexpert, "Lung Opacity"] == 1).any()
    # every part is the union of each store's own patient-wise part; patients never cross stores or parts
    for k, store in enumerate((nih, chexpert)):
        assert (split.table["store"] == k).sum() == len(build_multi_split([store.index], ["x"], task).table)
    by_part = split.table.groupby("patient_id")["part"].nunique()
    assert (by_part == 1).all()
    assert sorted(split.train) == sorted(split.table.index[split.table["part"] == "train"])  # default: each once


def test_store_weights_set_the_sampling_ratio(stores):
    nih, chexpert = Store(stores["nih"]), Store(stores["chexpert"])
    task = load_config("multilabel-adam", ["task.target=common"]).task
    split = build_multi_split([nih.index, chexpert.index], ["nih", "chexpert"], task, weights=[1.0, 3.0])
    drawn = split.table.loc[split.train, "store"].to_numpy()
    n_train = int((split.table["part"] == "train").sum())
    assert len(drawn) == n_train
    assert abs((drawn == 1).mean() - 0.75) < 0.01  # the given ratio, although CheXpert is the smaller store
    assert len(np.unique(split.train[drawn == 0])) == (drawn == 0).sum()  # a subsample: no repeats
    again = build_multi_split([nih.index, chexpert.index], ["nih", "chexpert"], task, weights=[1.0, 3.0])
    np.testing.assert_array_equal(again.train, split.train)  # seeded
    with pytest.raises(CxrError, match="one per store"):
        build_multi_split([nih.index, chexpert.index], ["nih", "chexpert"], task, weights=[1.0])


def test_the_run_records_both_stores_and_learns_each(run, stores):
    config = load_config(run / "config.yaml")
    assert config.data.stores == [str(stores["nih"].resolve()), str(stores["chexpert"].resolve())]
    split = pd.read_parquet(run / "split.parquet")
    assert set(split["dataset"]) == {"nih", "chexpert"}
    val = pd.read_parquet(run / "val_predictions.parquet")
    assert set(val["dataset"]) == {"nih", "chexpert"}
    assert val.loc[val["dataset"] == "nih", "Lung Opacity"].isna().all()  # not scored as negatives
    # held-out validation patients of each store, on the labels that store alone provides
    for dataset, labels in (("nih", NIH_ONLY), ("chexpert", CHEXPERT_ONLY)):
        rows = val[val["dataset"] == dataset]
        aurocs = []
        for label in labels:
            known = rows[rows[label].notna()]  # CheXpert's blank cells stay unknown
            if known[label].nunique() == 2:
                aurocs.append(roc_auc_score(known[label], known[f"prob_{label}"]))
        assert aurocs and np.mean(aurocs) > 0.65, (dataset, aurocs)


def test_masked_loss_ignores_labels_a_store_lacks(run, stores):
    """On a real training batch of CheXpert rows, the loss the module trains with is the BCE over the provided
    entries only, and the logits of the labels the store lacks get exactly zero gradient."""
    from cxr.data.loaders import part_dataset
    from cxr.data.tasks import build_multi_split
    from cxr.imaging.preprocessing import Preprocessing
    from cxr.training.module import CxrModule

    config = load_config(run / "config.yaml")
    split = build_multi_split([Store(stores["nih"]).index, Store(stores["chexpert"]).index], ["nih", "chexpert"],
                              config.task)  # fmt: skip
    dataset = part_dataset([Store(stores["nih"]), Store(stores["chexpert"])], split, "train", config.data, seed=0)
    chexpert_items = np.flatnonzero(split.table.loc[split.train, "dataset"].to_numpy() == "chexpert")[:16]
    pixels, target = (torch.stack(t) for t in zip(*(dataset[(0, int(i))] for i in chexpert_items), strict=True))
    lacking = [split.outputs.index(label) for label in NIH_ONLY]
    assert torch.isnan(target[:, lacking]).all() and (~torch.isnan(target)).sum() > len(target)
    module = CxrModule(config, split.outputs, Preprocessing.from_config(config.data))
    logits = module.model(module._images(pixels)).detach().requires_grad_(True)
    loss = module._loss(logits, target)
    loss.backward()
    provided = ~torch.isnan(target)
    expected = F.binary_cross_entropy_with_logits(logits.detach()[provided], target[provided])
    torch.testing.assert_close(loss.detach(), expected)
    assert (logits.grad[:, lacking] == 0).all() and (logits.grad[provided] != 0).all()


def _expert_csv(store: Store, path: Path) -> Path:
    """Google's expert-label layout for a synthetic NIH store's test images, from its own labels (as if the
    radiologists agreed with them): Fracture NO throughout (no synthetic fractures)."""
    test = store.index[store.index["split"] == "test"]

    def yes(*labels: str) -> list[str]:
        return np.where(test[list(labels)].max(axis=1) == 1, "YES", "NO").tolist()

    table = pd.DataFrame({"Image Index": test["image"], "Patient ID": test["patient_id"], "View Position": "PA",
                          "Fracture": "NO", "Pneumothorax": yes("Pneumothorax"),
                          "Airspace opacity": yes("Consolidation", "Pneumonia", "Infiltration"),
                          "Nodule or mass": yes("Nodule", "Mass"), "Set Id": "test"})  # fmt: skip
    table.to_csv(path, index=False)
    return path


def test_external_validation_and_expert_labels(run, stores, tmp_path):
    cli("evaluate", str(run), "--store", str(stores["other"]), "--resamples", "200")
    folder = run / "eval" / "test-nih"
    metrics = json.loads((folder / "metrics.json").read_text())
    other = Store(stores["other"])
    test_images = set(other.index.loc[other.index["split"] == "test", "image"])
    assert set(pd.read_csv(folder / "predictions.csv")["Image Index"]) == test_images
    assert metrics["n_images"] == len(test_images) and metrics["store_scored"]["external"]
    assert set(metrics["findings"]) == set(FINDINGS)  # the labels both have: the other store is NIH-like
    assert set(CHEXPERT_ONLY) <= set(metrics["not_available"])  # outputs it cannot give, listed and not scored
    assert not set(metrics["not_available"]) & set(metrics["findings"])
    assert metrics["macro_auroc"] > 0.65  # another synthetic "hospital": patients the run never saw
    low, high = metrics["macro_auroc_ci"]
    assert low <= metrics["macro_auroc"] <= high and metrics["bootstrap"]["unit"] == "patient"
    assert "Not available: " in (folder / "report.md").read_text()

    expert = _expert_csv(other, tmp_path / "google2019_nih-chest-xray-labels.csv")
    out = tmp_path / "expert"
    cli("evaluate", "--predictions", str(folder / "predictions.csv"), "--labels", str(expert), "--out", str(out),
         "--resamples", "200")  # fmt: skip
    scored = json.loads((out / "metrics.json").read_text())
    assert scored["n_images"] == len(test_images) and scored["label_set"] == "google2019"
    assert set(scored["findings"]) == {"Pneumothorax", "Nodule or mass", "Airspace opacity"}
    assert "Fracture" in scored["not_available"]
    assert scored["macro_auroc"] > 0.6


def test_internal_scores_per_store_and_errors(run, stores):
    with pytest.raises(CxrError, match="several stores"):
        cli("evaluate", str(run))
    cli("evaluate", str(run), "--store", str(stores["chexpert"]), "--resamples", "100")
    metrics = json.loads((run / "eval" / "test-chexpert" / "metrics.json").read_text())
    assert not metrics["store_scored"]["external"]
    assert set(NIH_ONLY) <= set(metrics["not_available"]) and "Lung Opacity" in metrics["findings"]
    # CheXpert's blank cells are unknown: each label is scored on the images that give it, never as negatives
    split = pd.read_parquet(run / "split.parquet")
    test = (
        Store(stores["chexpert"])
        .index.set_index("image")
        .loc[split.loc[(split["dataset"] == "chexpert") & (split["part"] == "test"), "image"]]
    )
    assert "per_label" in metrics
    for label in ("Lung Opacity", "Effusion"):
        finding = metrics["findings"][label]
        assert finding["n"] == test[label].notna().sum() < len(test)
        assert finding["n_pos"] == (test[label] == 1).sum()


def test_compare_puts_internal_and_external_side_by_side(run, stores, tmp_path):
    for store, folder in ((stores["chexpert"], "test-chexpert"), (stores["other"], "test-nih")):
        if not (run / "eval" / folder / "metrics.json").is_file():
            cli("evaluate", str(run), "--store", str(store), "--resamples", "100")
    out = tmp_path / "side"
    cli("compare", str(run), "--external", "--out", str(out))
    result = json.loads((out / "comparison.json").read_text())
    assert result["sets"] == ["run:test-chexpert", "run:test-nih"]
    assert result["kind"] == {"run:test-chexpert": "internal (chexpert)", "run:test-nih": "external (nih)"}
    external = json.loads((run / "eval" / "test-nih" / "metrics.json").read_text())
    assert result["auroc"]["run:test-nih"]["Mass"]["auroc"] == external["findings"]["Mass"]["auroc"]
    assert result["auroc"]["run:test-chexpert"]["Mass"] is None  # CheXpert gives no Mass: not scored
    assert "| Mass | not available |" in (out / "comparison.md").read_text()


def test_config_lists_of_stores_and_weights():
    config = load_config("multilabel-adam", ["data.stores=[a, b]", "data.store_weights=[1, 2.5]"])
    assert config.data.stores == ["a", "b"] and config.data.store_weights == [1.0, 2.5]
    with pytest.raises(CxrError, match="data.store_weights must be a list"):
        load_config("multilabel-adam", ["data.store_weights=3"])
    with pytest.raises(CxrError, match="data.store_weights must be a number"):
        load_config("multilabel-adam", ["data.store_weights=[x]"])
    with pytest.raises(CxrError, match="no store to train on"):
        from cxr.training.fit import store_paths

        store_paths(config.__class__(), [])
