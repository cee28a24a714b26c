"""EVA-X and medical MAE checkpoints on timm's classes (``cxr.models.vit_checkpoints``): parity with the authors'
forward, strict key checks, weights by name, Grad-CAM on the tokens, ONNX export, one fine-tuning step.

The publisher files (random weights in the publishers' formats and key names) and the references (plain-torch
renderings of the authors' fine-tuning forwards, reading those files by the publishers' names) are in
``tests/vit_publishers.py``; EVA-X ViT-S is also checked against the authors' ``eva_x.py`` path, timm's ``Eva``
loaded through timm's own ``checkpoint_filter_fn``. Features are compared to 1e-4 on a real NIH image at 224 px.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr.errors import CxrError
from cxr.imaging.decode import load
from cxr.models import vit_checkpoints, weights
from cxr.models.factory import create_model
from cxr.models.vit_registry import XRAY_VITS
from vit_publishers import eva_reference, eva_x_state, mae_reference, mae_state, publisher_file

IMAGE = Path(__file__).parents[1] / "fixtures" / "nih-sample" / "images" / "00000001_000.png"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two xdist workers share two cores
    yield
    torch.set_num_threads(threads)


# --- helpers -------------------------------------------------------------------------------------------------------

# The authors' fine-tuning normalisation, read from their code (not from the registry): EVA-X
# classification/utils/datasets.py, medical_mae util/datasets.py.
AUTHORS_STATS = {"eva-x": (0.49185243, 0.28509309), "mae-vit": (0.5056, 0.252)}


def nih_image(size: int = 224) -> torch.Tensor:
    """A real NIH radiograph resized to ``size`` px, as cxr feeds models: ``(1, 1, S, S)`` in [0, 1]."""
    return torch.from_numpy(load(IMAGE, size).astype(np.float32) / 255.0)[None, None]


def features(model, x: torch.Tensor) -> torch.Tensor:
    """What cxr's head receives when the whole ``CxrNet`` runs (its channel repeat and normalisation included)."""
    seen = {}
    handle = model.head.register_forward_hook(lambda module, inputs, output: seen.setdefault("x", inputs[0]))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return seen["x"]


# --- parity --------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
@pytest.mark.parametrize("name", list(XRAY_VITS))
def test_a_publisher_checkpoint_gives_the_authors_features_on_a_real_radiograph(name, tmp_path):
    family, size = name.rsplit("-", 1)
    state = eva_x_state(size) if family == "eva-x" else mae_state(size)
    path = publisher_file(tmp_path / "publisher.pth", name, state)
    model = create_model(name, 14, head="gap", pretrained=str(path), input_size=224)
    x = nih_image()
    mean, std = AUTHORS_STATS[family]
    authors_input = (x.expand(-1, 3, -1, -1) - mean) / std
    ours = features(model, x)
    with torch.no_grad():
        reference = (eva_reference if family == "eva-x" else mae_reference)(state, authors_input, size)
        torch.testing.assert_close(ours, reference, atol=1e-4, rtol=0)
        assert reference.abs().max() > 0.1  # features of a size where 1e-4 is a real test
        if name == "eva-x-small":  # the authors' eva_x.py: timm's Eva through timm's own checkpoint filter
            from timm.models.eva import Eva, checkpoint_filter_fn

            eva = Eva(img_size=224, num_classes=0, **XRAY_VITS[name].kwargs).eval()
            eva.load_state_dict(checkpoint_filter_fn(torch.load(path, weights_only=False), eva), strict=True)
            torch.testing.assert_close(ours, eva(authors_input), atol=1e-4, rtol=0)


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_every_weight_is_accounted_for_and_a_stray_key_is_named(tmp_path):
    state = eva_x_state("small")
    del state["blocks.3.mlp.w3.bias"]
    state["blocks.0.attn.inner_attn_ln.weight"] = torch.ones(384)  # a sub-LN layout this entry does not have
    path = publisher_file(tmp_path / "odd.pt", "eva-x-small", state)
    with pytest.raises(CxrError) as error:
        create_model("eva-x-small", 2, head="gap", pretrained=str(path), input_size=64)
    message = str(error.value)
    assert "1 weights missing ['blocks.3.mlp.fc2.bias']" in message
    assert "1 unexpected ['blocks.0.attn.inner_attn_ln.weight']" in message and str(path) in message
    state = eva_x_state("small")
    state["cls_token"] = torch.zeros(1, 1, 768)  # a ViT-B's
    path = publisher_file(tmp_path / "wide.pt", "eva-x-small", state)
    with pytest.raises(CxrError, match=r"of another shape \['cls_token \(1, 1, 768\) for cls_token \(1, 1, 384\)"):
        create_model("eva-x-small", 2, head="gap", pretrained=str(path), input_size=64)
    wrong = mae_state("small")
    wrong["fc_norm.weight"] = torch.ones(384)  # a fine-tuned file's pooled norm (and head) load, the head dropped
    wrong |= {"fc_norm.bias": torch.zeros(384), "head.weight": torch.zeros(14, 384), "head.bias": torch.zeros(14)}
    path = publisher_file(tmp_path / "finetuned.pth", "mae-vit-small", wrong)
    create_model("mae-vit-small", 2, head="gap", pretrained=str(path), input_size=64)


def test_other_input_sizes_resample_the_position_embeddings(tmp_path):
    from timm.layers import resample_abs_pos_embed

    state = eva_x_state("small")
    model = create_model(
        "eva-x-small",
        2,
        head="gap",
        pretrained=str(publisher_file(tmp_path / "s.pt", "eva-x-small", state)),
        input_size=96,
    )
    expected = resample_abs_pos_embed(state["pos_embed"], new_size=(6, 6), num_prefix_tokens=1, antialias=True)
    torch.testing.assert_close(model.backbone.pos_embed.detach(), expected)
    assert model.backbone.patch_embed.grid_size == (6, 6)
    with pytest.raises(CxrError, match="multiples of its 16 px patches"):
        create_model("eva-x-small", 2, head="gap", input_size=100, pretrained="none")
    with pytest.raises(CxrError, match="use model.head=gap"):
        create_model("mae-vit-small", 2, head="seed", input_size=64, pretrained="none")


# --- weights by name -----------------------------------------------------------------------------------------------


def test_published_weights_come_through_the_weights_module(tmp_path, monkeypatch):
    calls = []
    eva_file = publisher_file(tmp_path / "eva.pt", "eva-x-small")

    def hf_file(repo_id, filename, revision=None, *, command=""):
        calls.append((repo_id, filename, revision))
        return eva_file

    monkeypatch.setattr(weights, "hf_file", hf_file)
    create_model("eva-x-small", 2, head="gap", pretrained="imagenet", input_size=64)
    assert calls == [
        ("MapleF/eva_x", "eva_x_small_patch16_merged520k_mim.pt", XRAY_VITS["eva-x-small"].weights.revision)
    ]

    cache = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(cache))
    served = {"body": publisher_file(tmp_path / "mae.pth", "mae-vit-small").read_bytes()}

    def url_file(url, cache_dir, sha256=None, *, command=""):
        assert url.startswith("https://drive.usercontent.google.com/download?id=1Yok1RemqP27iKJ5BUuoHhLRBB1GycITx")
        target = Path(cache_dir) / "download"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(served["body"])
        return target

    monkeypatch.setattr(weights, "url_file", url_file)
    create_model("mae-vit-small", 2, head="gap", pretrained="imagenet", input_size=64)
    served["body"] = b"<!DOCTYPE html><html>Google Drive can't scan this file for viruses</html>"
    with pytest.raises(CxrError, match=r"did not give a PyTorch checkpoint.*vit-s_CXR_0.3M_mae.pth"):
        create_model("mae-vit-small", 2, head="gap", pretrained="imagenet", input_size=64)
    assert not list(cache.rglob("download"))  # the page is not kept as if it were the weights


def test_offline_the_weights_module_names_the_command_and_the_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_OFFLINE", "1")
    with pytest.raises(CxrError, match=rf"needs vit.pth, which is not in {tmp_path} .*CXR_OFFLINE=1.*file's path"):
        weights.url_file("https://example.org/w/vit.pth", tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(
        CxrError, match=r"hf download MapleF/eva_x eva_x_small_patch16_merged520k_mim.pt --revision 2552ff7"
    ):
        weights.hf_file("MapleF/eva_x", "eva_x_small_patch16_merged520k_mim.pt", "2552ff7", command="cxr train")


# --- Grad-CAM, ONNX, fine-tuning -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["eva-x-small", "mae-vit-small"])
def test_grad_cam_on_the_patch_tokens_gives_a_map(name, tmp_path):
    from cxr.inference.cam import grad_cam_batch

    model = create_model(
        name,
        3,
        head="gap",
        pretrained=str(publisher_file(tmp_path / "m.pth", name)),
        input_size=224,
    ).eval()
    assert model.architecture.cam_layer == "blocks.11.norm1"
    tokens = {}
    model.feature_layer.register_forward_hook(lambda module, inputs, output: tokens.setdefault("x", output))
    maps = grad_cam_batch(model, nih_image().numpy(), [[0, 2]])
    assert model.cam_reshape(tokens["x"]).shape == (1, 384, 14, 14)  # the class token left out
    assert maps[0].shape == (2, 224, 224) and np.isfinite(maps[0]).all()
    assert all(m.std() > 0 for m in maps[0]) and maps[0].max() <= 1 and maps[0].min() >= 0


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_onnx_export_of_eva_x_keeps_parity(tmp_path):
    from cxr.inference.eager import TorchPredictor
    from cxr.inference.export import export_onnx
    from cxr.inference.onnx import OnnxPredictor
    from cxr.models.artifact import make_preprocessing, write_artifact

    labels = ["Effusion", "Mass", "Pneumothorax"]
    path = publisher_file(tmp_path / "eva.pt", "eva-x-small")
    # 64 px keeps the export short; the rotary tables and resampled positions go into the graph as at 224 px.
    model = create_model("eva-x-small", 3, head="gap", pretrained=str(path), input_size=64, labels=labels)
    checkpoint = write_artifact(tmp_path / "eva.ckpt", model, labels, make_preprocessing(model, 64, 1.0))
    result = export_onnx(checkpoint, tmp_path / "eva.onnx")
    assert result["max_abs_diff"] <= 1e-4
    x = nih_image(64).numpy()
    expected = TorchPredictor.from_path(checkpoint).probabilities(x)
    np.testing.assert_allclose(OnnxPredictor(tmp_path / "eva.onnx").probabilities(x), expected, atol=1e-4)


def test_one_fine_tuning_step_with_the_authors_layer_decay(tmp_path):
    from cxr.config import load_config
    from cxr.training.optim import build_optimizer

    config = load_config("finetune-eva-x-small")
    path = publisher_file(tmp_path / "eva.pt", "eva-x-small")
    torch.manual_seed(0)
    model = create_model("eva-x-small", 2, head="gap", pretrained=str(path), input_size=224,
                         drop_path=config.model.drop_path).train()  # fmt: skip
    assert model.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(config.model.drop_path)
    # The preset's lr is reached after 5 warm-up epochs; one step from a random head takes a warm-up-sized one.
    optimizer = build_optimizer(model, dataclasses.replace(config.optim, lr=1e-4))
    scales = {round(group["lr_scale"], 12) for group in optimizer.param_groups}
    assert {round(0.55**13, 12), round(0.55, 12), 1.0} <= scales  # embeddings, the last block, the head
    x, target = torch.cat([nih_image(), nih_image().flip(-1)]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    with torch.no_grad():
        before_step = F.binary_cross_entropy_with_logits(model.eval()(x), target).item()
    F.binary_cross_entropy_with_logits(model.train()(x), target).backward()
    without_gradient = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.isfinite().all()]
    assert not without_gradient
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer.step()
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "backbone.patch_embed.proj.weight" in changed and "head.0.weight" in changed
    with torch.no_grad():
        assert F.binary_cross_entropy_with_logits(model.eval()(x), target).item() < before_step


def test_drop_path_reaches_any_timm_model_and_is_refused_for_torchvision_ones():
    vit = create_model("vit_tiny_patch16_224", 2, head="gap", input_size=32, pretrained="none", drop_path=0.1)
    assert vit.backbone.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    with pytest.raises(CxrError, match=r"model.drop_path=0.1: .* 0 for resnet18"):
        create_model("resnet18", 2, head="gap", input_size=32, pretrained="none", drop_path=0.1)


# --- docs ----------------------------------------------------------------------------------------------------------


def test_the_readme_table_lists_every_registered_model():
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    for name, entry in XRAY_VITS.items():
        row = next((line for line in readme.splitlines() if line.startswith(f"| `{name}` |")), None)
        assert row is not None, name
        for fact in (entry.licence, entry.published.split(" ")[0], f"{entry.mean[0]:g}", f"{entry.std[0]:g}"):
            assert fact in row, (name, fact)
        assert re.search(r"published", row), name
    assert math.isclose(XRAY_VITS["eva-x-small"].kwargs["mlp_ratio"], 8 / 3)
    assert vit_checkpoints.PUBLISHED == "imagenet"  # the default means the published weights, as for foundation models


@pytest.mark.slow
def test_cxr_train_runs_the_preset_from_the_publishers_file_and_predicts(synth_store, synth_data, tmp_path):
    """`cxr train --experiment finetune-eva-x-small` (AdamW, layer decay 0.55, drop path 0.2) at 64 px for one epoch,
    from a publisher-format file, then `cxr predict`: the path, not learning. A ViT-S from random weights did not learn
    the synthetic findings in CPU budget (3-4 epochs, three recipes: validation macro AUROC 0.54-0.58); ViTs
    need pretraining or far more steps. What EVA-X's real weights give is not measured here."""
    import json

    from conftest import cli, train_cli
    from cxr.labels import FINDINGS
    from cxr.models.artifact import load_artifact

    weights_file = publisher_file(tmp_path / "eva_x_small_patch16_merged520k_mim.pt", "eva-x-small")
    run = tmp_path / "run"
    train_cli("--experiment", "finetune-eva-x-small", "--store", str(synth_store), "--out", str(run),
              "--image-size", "64", "--epochs", "1", "--batch-size", "32", "--no-progress",
              f"model.pretrained={weights_file}", "data.store_size=64", "data.crop=1.0", "data.num_workers=0",
              "task.val_fraction=0.2", "train.accumulate=1", "optim.warmup_epochs=0.5")  # fmt: skip
    checkpoint = run / "checkpoints" / "best.ckpt"
    artifact = load_artifact(checkpoint)
    assert artifact.spec.architecture.name == "eva-x-small" and artifact.config["model"]["drop_path"] == 0.2
    assert artifact.model.mean.flatten().tolist() == pytest.approx([0.49185243] * 3)
    image = sorted(synth_data.rglob("*.png"))[0]
    record = json.loads(cli("predict", str(checkpoint), str(image), "--json"))
    assert list(record["probabilities"]) == list(FINDINGS)
    assert all(0 < p < 1 for p in record["probabilities"].values())
