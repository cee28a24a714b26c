"""``cxr zeroshot``: a random-weight BiomedCLIP layout and a small test tokenizer, end to end on the synthetic store;
its probabilities equal open_clip's pairwise softmax, and ``cxr evaluate`` scores the run like any other."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import cli
from cxr.data.store import Store
from cxr.errors import CxrError
from cxr.imaging.preprocessing import Preprocessing, to_unit
from cxr.training.zeroshot import load_prompts
from foundation_layouts import biomedclip_folders, serve_text_config

SIZE = 64  # 4x4 patches of 16 px: the position grid is resampled from the layout's, as at any size but 224


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return biomedclip_folders(tmp_path_factory.mktemp("zeroshot-clip"))


def reference_probabilities(reference_dir, store: Store, images: list[str], prompts) -> np.ndarray:
    """open_clip's own CLIP: softmax over (positive, negative) of exp(logit_scale) * cosine similarities."""
    import open_clip

    model = open_clip.create_model(f"local-dir:{reference_dir}", pretrained_text=False).eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{reference_dir}")
    rows = store.index.set_index("image").loc[images, "row"].to_numpy()
    view = Preprocessing(store.size, store.crop, SIZE)
    x = torch.from_numpy(np.stack([to_unit(view.view(store.images[r])) for r in rows]))[:, None]
    mean = torch.tensor(model.visual.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.preprocess_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        image = model.encode_image((x.expand(-1, 3, -1, -1) - mean) / std, normalize=True)
        positive = model.encode_text(tokenizer([pair.positive for pair in prompts]), normalize=True)
        negative = model.encode_text(tokenizer([pair.negative for pair in prompts]), normalize=True)
        scale = model.logit_scale.exp()
        logits = torch.stack([scale * image @ positive.T, scale * image @ negative.T], dim=-1)
    return torch.softmax(logits, dim=-1)[..., 0].numpy()


def test_zeroshot_run_end_to_end_and_evaluate(clip, synth_store, tmp_path, monkeypatch):
    publisher, reference_dir, text_config = clip
    serve_text_config(monkeypatch, text_config)
    prompts_file = tmp_path / "prompts.yaml"
    prompts_file.write_text("Effusion: {positive: pleural effusion seen, negative: no pleural effusion seen}\n")
    run = tmp_path / "run"
    cli("zeroshot", str(publisher), str(synth_store), "--out", str(run), "--image-size", str(SIZE),
        "--prompts", str(prompts_file), "task.val_fraction=0.2")  # fmt: skip
    for name in ("config.yaml", "split.parquet", "checkpoints/best.ckpt", "val_predictions.parquet", "zeroshot.json"):
        assert (run / name).is_file(), name
    record = json.loads((run / "zeroshot.json").read_text())
    assert record["prompts"]["Effusion"] == {
        "positive": "pleural effusion seen",
        "negative": "no pleural effusion seen",
    }
    assert record["prompts"]["Mass"] == {"positive": "lung mass", "negative": "no lung mass"}  # default kept

    # The run's probabilities are open_clip's pairwise softmax, image by image.
    val = pd.read_parquet(run / "val_predictions.parquet")
    labels = list(record["prompts"])
    store, images = Store(synth_store), val["Image Index"].astype(str).tolist()[:12]
    pairs = load_prompts(prompts_file)
    expected = reference_probabilities(reference_dir, store, images, [pairs[label] for label in labels])
    ours = val[[f"prob_{label}" for label in labels]].to_numpy()[:12]
    np.testing.assert_allclose(ours, expected, atol=1e-4)

    cli("evaluate", str(run))
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["labels"] == labels and metrics["n_images"] > 50
    assert 0.2 < metrics["macro_auroc"] < 0.8  # random weights: near chance, but scored
    assert metrics["thresholds_chosen_on"] == "validation"
    assert (run / "eval" / "test" / "predictions.csv").is_file()


def test_prompts_files_are_checked(tmp_path):
    bad_label = tmp_path / "a.yaml"
    bad_label.write_text("Tumour: {positive: tumour, negative: no tumour}\n")
    with pytest.raises(CxrError, match=r"a.yaml: unknown finding 'Tumour'"):
        load_prompts(bad_label)
    missing = tmp_path / "b.yaml"
    missing.write_text("Mass: {positive: lung mass}\n")
    with pytest.raises(CxrError, match=r"b.yaml: Mass: expected exactly the keys positive and negative"):
        load_prompts(missing)
    defaults = load_prompts()
    from cxr.labels import COMMON_LABELS

    assert set(defaults.labels) == set(COMMON_LABELS)  # every label of the common vocabulary has a documented default


def test_zeroshot_refuses_a_model_without_a_text_tower(synth_store, tmp_path):
    with pytest.raises(CxrError, match="not a CLIP model"):
        cli("zeroshot", "rad-dino", str(synth_store), "--out", str(tmp_path / "run"))
