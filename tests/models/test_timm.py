"""timm backbones in the model registry: names, normalisation, weights from files and the offline cache, Grad-CAM
per family, activation checkpointing, ONNX parity, and `cxr train` / `cxr predict` with ConvNeXt and EfficientNet.

Everything is random-init and tiny (64 px); pretrained weights are random weights saved in the real file formats.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from safetensors.torch import save_file
from sklearn.metrics import roc_auc_score

from cxr.errors import CxrError
from cxr.inference.cam import grad_cam_batch
from cxr.labels import FINDINGS
from cxr.models.artifact import load_artifact, make_preprocessing, write_artifact
from cxr.models.factory import create_model

VIT = "vit_tiny_patch16_224"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two xdist workers share two cores
    yield
    torch.set_num_threads(threads)


def _checkpoint(path: Path, name: str, size: int = 64, labels=("Mass", "Effusion", "Hernia"), head="gap") -> Path:
    torch.manual_seed(11)
    model = create_model(name, len(labels), head=head, input_size=size, labels=list(labels))
    return write_artifact(path, model, list(labels), make_preprocessing(model, size, 1.0))


# --- registry ------------------------------------------------------------------------------------------------------


def test_unknown_names_list_close_matches():
    with pytest.raises(CxrError, match=r"unknown model 'convnext_atoo'.*close matches: .*convnext_atto"):
        create_model("convnext_atoo", 2, input_size=64)


def test_the_four_torchvision_names_keep_their_implementation():
    import torchvision

    model = create_model("resnet18", 2, input_size=64)
    assert isinstance(model.backbone.layer4[0], torchvision.models.resnet.BasicBlock)
    assert model.architecture.source == "torchvision" and model.architecture.img_size is None


def test_timm_models_normalise_with_their_weights_statistics_and_record_them(tmp_path):
    vit = create_model(VIT, 3, input_size=64)
    assert vit.architecture.mean == (0.5, 0.5, 0.5) and vit.architecture.std == (0.5, 0.5, 0.5)
    assert vit.backbone.patch_embed.grid_size == (4, 4)  # built for the run's input size
    checkpoint = _checkpoint(tmp_path / "vit.ckpt", VIT)
    artifact = load_artifact(checkpoint)
    recorded = artifact.spec.architecture
    assert recorded.source == "timm" and recorded.img_size == 64
    assert recorded.mean == (0.5, 0.5, 0.5) and recorded.std == (0.5, 0.5, 0.5)
    assert artifact.model.mean.flatten().tolist() == [0.5, 0.5, 0.5]
    x = torch.rand(2, 1, 64, 64)
    torch.manual_seed(11)
    rebuilt = create_model(VIT, 3, input_size=64).eval()
    with torch.no_grad():
        torch.testing.assert_close(artifact.model(x), rebuilt(x))

    convnext = create_model("convnext_atto", 3, input_size=64)
    assert convnext.architecture.mean == tuple(timm.data.IMAGENET_DEFAULT_MEAN)
    assert convnext.architecture.img_size is None  # CNNs take any size


def test_an_artifact_with_other_statistics_is_refused(tmp_path):
    checkpoint = torch.load(_checkpoint(tmp_path / "c.ckpt", "convnext_atto"), weights_only=True)
    checkpoint["cxr"]["architecture"]["mean"] = [0.5, 0.5, 0.5]
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(CxrError, match="normalises with mean"):
        load_artifact(tmp_path / "other.ckpt")


def test_gap_is_timms_pooling_and_seed_flattens_the_cnn_map():
    gap = create_model("convnext_atto", 2, head="gap", input_size=64)
    assert gap.head[-1].in_features == gap.backbone.num_features  # pooled features, ConvNeXt's head norm included
    seed = create_model("convnext_atto", 2, head="seed", input_size=64)
    assert seed.head[2].in_features == 320 * 2 * 2  # 64 px → 2x2 map of 320 channels
    assert seed(torch.rand(1, 1, 64, 64)).shape == (1, 2)
    with pytest.raises(CxrError, match="transformer: use model.head=gap"):
        create_model(VIT, 2, head="seed", input_size=64)


# --- weights -------------------------------------------------------------------------------------------------------


def _random_timm_state(name: str, seed: int, **kwargs) -> dict[str, torch.Tensor]:
    """A state dict in timm's layout with an ImageNet-sized classifier, as the published files have."""
    torch.manual_seed(seed)
    model = timm.create_model(name, num_classes=1000, **kwargs)
    return {k: v.contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_weights_file_loads_without_its_classifier(tmp_path, suffix):
    state = _random_timm_state("convnext_atto", seed=5)
    path = tmp_path / f"weights{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save({"state_dict": state, "epoch": 3}, path)
    model = create_model("convnext_atto", 2, pretrained=path, input_size=64)
    loaded = model.backbone.state_dict()
    assert set(state) - set(loaded) == {"head.fc.weight", "head.fc.bias"}
    for key, value in loaded.items():
        torch.testing.assert_close(value, state[key], msg=key)


def test_a_vit_weights_file_is_resampled_to_the_input_size(tmp_path):
    state = _random_timm_state(VIT, seed=6)  # 224 px: 14x14 position embeddings
    save_file(state, tmp_path / "vit.safetensors")
    model = create_model(VIT, 2, pretrained=tmp_path / "vit.safetensors", input_size=64)
    assert model.backbone.pos_embed.shape == (1, 1 + 4 * 4, 192)
    torch.testing.assert_close(model.backbone.blocks[3].attn.qkv.weight, state["blocks.3.attn.qkv.weight"])


def test_weights_that_do_not_fit_name_the_keys(tmp_path):
    state = _random_timm_state("convnext_atto", seed=5)
    del state["stages.3.blocks.1.mlp.fc2.weight"]
    state["extra.weight"] = torch.zeros(3)
    save_file(state, tmp_path / "broken.safetensors")
    with pytest.raises(CxrError, match=r"missing 1 keys \['stages.3.blocks.1.mlp.fc2.weight'\].*unexpected 1 keys"):
        create_model("convnext_atto", 2, pretrained=tmp_path / "broken.safetensors", input_size=64)
    save_file(_random_timm_state("efficientnet_b0", seed=1), tmp_path / "other.safetensors")
    with pytest.raises(CxrError, match="weights do not fit convnext_atto"):
        create_model("convnext_atto", 2, pretrained=tmp_path / "other.safetensors", input_size=64)
    with pytest.raises(CxrError, match="not found"):
        create_model("convnext_atto", 2, pretrained=tmp_path / "absent.safetensors", input_size=64)


def _hub_cache(root: Path, repo_id: str, state: dict) -> None:
    """The Hugging Face hub cache layout `huggingface-cli download` leaves (refs/main → snapshot folder)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, repo / "snapshots" / commit / "model.safetensors")


def test_imagenet_weights_offline_come_from_the_local_hub_cache(tmp_path, monkeypatch):
    """Offline, the layout `hf download` leaves is read; downloading is tests/models/test_weights.py's (loopback)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo_id = timm.models.get_pretrained_cfg("convnext_atto").hf_hub_id
    with pytest.raises(CxrError, match=rf"not in {tmp_path / 'hub'} .*HF_HUB_OFFLINE=1.*hf download {repo_id}"):
        create_model("convnext_atto", 2, pretrained="imagenet", input_size=64)
    state = _random_timm_state("convnext_atto", seed=8)
    _hub_cache(tmp_path / "hub", repo_id, state)
    model = create_model("convnext_atto", 2, pretrained="imagenet", input_size=64)
    torch.testing.assert_close(model.backbone.stem[0].weight, state["stem.0.weight"])


def test_a_cxr_checkpoint_of_a_timm_model_initialises_another_run(tmp_path):
    checkpoint = _checkpoint(tmp_path / "c.ckpt", "efficientnet_b0")
    start = create_model("efficientnet_b0", 3, pretrained=checkpoint, input_size=64)
    saved = load_artifact(checkpoint).model.state_dict()
    for key, value in start.state_dict().items():
        torch.testing.assert_close(value, saved[key], msg=key)


# --- Grad-CAM ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layer", "cells"),
    [("convnext_atto", "stages.2", 4), (VIT, "blocks.11.norm1", 4), ("swin_tiny_patch4_window7_224", "layers.2", 4)],
)
def test_grad_cam_targets_per_family(name, layer, cells):
    torch.manual_seed(0)
    model = create_model(name, 3, input_size=64).eval()
    assert model.architecture.cam_layer == layer
    x = torch.rand(3, 1, 64, 64)
    maps = grad_cam_batch(model, x.numpy(), [[0, 1], [2], [0, 1, 2]])
    assert [m.shape for m in maps] == [(2, 64, 64), (1, 64, 64), (3, 64, 64)]
    for stack in maps:
        assert np.isfinite(stack).all() and stack.min() >= 0 and stack.max() <= 1
        assert all(m.std() > 0 for m in stack)  # not constant
    activations = {}
    model.feature_layer.register_forward_hook(lambda m, a, out: activations.setdefault("x", out))
    model(x)
    reshape = model.cam_reshape or (lambda t: t)
    assert reshape(activations["x"]).shape[-2:] == (cells, cells)  # (B, C, h, w) at stride 16


def test_from_224_px_a_cnns_target_is_its_last_stage():
    assert create_model("convnext_atto", 2, input_size=224).architecture.cam_layer == "stages.3"
    assert create_model("efficientnet_b0", 2, input_size=224).architecture.cam_layer == "blocks.6"
    assert create_model("resnet18d", 2, input_size=128).architecture.cam_layer == "layer3"  # stride 16 below 224


def test_vit_maps_equal_the_grad_cam_package_with_its_reshape_transform():
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(1)
    model = create_model(VIT, 3, input_size=64).eval()
    x = torch.rand(2, 1, 64, 64)
    ours = grad_cam_batch(model, x.numpy(), [[1], [2]], method="gradcam")
    with GradCAM(model, target_layers=[model.feature_layer], reshape_transform=model.cam_reshape) as cam:
        theirs = [cam(x[i : i + 1], targets=[ClassifierOutputTarget(k)])[0] for i, k in enumerate((1, 2))]
    for mine, package in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(mine[0], package, atol=1e-5)


# --- activation checkpointing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "size"), [("resnet18", 32), ("densenet121", 32), ("convnext_atto", 32), (VIT, 32)])
def test_grad_checkpointing_gives_the_same_gradients(name, size):
    x, target = torch.rand(2, 1, size, size), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    gradients = []
    for checkpointing in (False, True):
        torch.manual_seed(4)
        model = create_model(name, 2, input_size=size, grad_checkpointing=checkpointing).train()
        torch.nn.functional.binary_cross_entropy_with_logits(model(x), target).backward()
        gradients.append({k: p.grad.clone() for k, p in model.named_parameters()})
    plain, checkpointed = gradients
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], msg=key)


def test_grad_checkpointing_is_switched_on():
    vit = create_model(VIT, 2, input_size=32, grad_checkpointing=True)
    assert vit.backbone.grad_checkpointing
    dense = create_model("densenet121", 2, input_size=32, grad_checkpointing=True)
    assert all(m.memory_efficient for m in dense.backbone.modules() if hasattr(m, "memory_efficient"))
    resnet = create_model("resnet18", 2, input_size=32, grad_checkpointing=True)
    assert "forward" in vars(resnet.backbone.layer2[1])  # the per-block checkpointed forward
    assert set(resnet.state_dict()) == set(create_model("resnet18", 2, input_size=32).state_dict())


# --- ONNX ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
@pytest.mark.parametrize("name", ["convnext_atto", VIT])  # EfficientNet: its training test exports the trained run
def test_onnx_export_matches_torch(name, tmp_path):
    from cxr.inference.eager import TorchPredictor
    from cxr.inference.export import export_onnx
    from cxr.inference.onnx import OnnxPredictor

    checkpoint = _checkpoint(tmp_path / "m.ckpt", name)
    result = export_onnx(checkpoint, tmp_path / "m.onnx")
    assert result["max_abs_diff"] <= 1e-4
    inputs = np.random.default_rng(2).random((3, 1, 64, 64), dtype=np.float32)
    expected = TorchPredictor.from_path(checkpoint).probabilities(inputs)
    onnx_side = OnnxPredictor(tmp_path / "m.onnx")
    np.testing.assert_allclose(onnx_side.probabilities(inputs), expected, atol=1e-4)
    assert onnx_side.architecture.source == "timm"
    if name == VIT:  # the Grad-CAM twin rebuilt from the graph, with its token reshape
        maps = grad_cam_batch(onnx_side.model, inputs[:1], [[0]])
        np.testing.assert_allclose(
            maps[0], grad_cam_batch(TorchPredictor.from_path(checkpoint).model, inputs[:1], [[0]])[0], atol=1e-4
        )


# --- training ------------------------------------------------------------------------------------------------------

RECIPE = [
    "--no-progress", "--image-size", "64", "model.pretrained=none", "data.num_workers=0", "model.head=gap",
    "data.rotation=0", "data.shift=0", "task.val_fraction=0.2",
]  # fmt: skip


def _train(store: Path, out: Path, name: str, epochs: int, *extra: str, experiment: str = "multilabel-adam") -> Path:
    from conftest import train_cli

    train_cli("--experiment", experiment, "--store", str(store), "--out", str(out), "--model", name,
              "--epochs", str(epochs), *RECIPE, *extra)  # fmt: skip
    return out


def test_convnext_atto_learns_the_synthetic_findings_and_predicts(synth_store, synth_data, tmp_path):
    import json

    from typer.testing import CliRunner

    from cxr.cli import app

    run = _train(synth_store, tmp_path / "run", "convnext_atto", 2, "optim.lr=1e-3")
    predictions = pd.read_parquet(run / "val_predictions.parquet")
    aurocs = [
        roc_auc_score(predictions[f], predictions[f"prob_{f}"]) for f in FINDINGS if predictions[f].nunique() == 2
    ]
    assert np.mean(aurocs) > 0.6, aurocs  # chance is 0.5; val macro AUROC 0.677 on the development machine
    image = sorted(synth_data.rglob("*.png"))[0]
    result = CliRunner().invoke(app, ["predict", str(run / "checkpoints" / "best.ckpt"), str(image), "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert list(record["probabilities"]) == list(FINDINGS)
    assert all(0 < p < 1 for p in record["probabilities"].values())


def test_efficientnet_b0_trains_exports_with_parity_and_predicts(synth_store, synth_data, tmp_path):
    from cxr.inference.export import export_onnx
    from cxr.inference.predict import predict_images

    # Fibrosis vs rest on a balanced sample: a small training set keeps this test short (it shows the path, not
    # learning; the ConvNeXt test above does that). Its export is EfficientNet's ONNX parity test.
    run = _train(synth_store, tmp_path / "run", "efficientnet_b0", 1, experiment="binary-fibrosis")
    checkpoint = run / "checkpoints" / "best.ckpt"
    artifact = load_artifact(checkpoint)
    assert artifact.spec.architecture.name == "efficientnet_b0" and artifact.labels == ["Fibrosis"]
    result = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert result["max_abs_diff"] <= 1e-4
    images = sorted(synth_data.rglob("*.png"))[:3]
    via_onnx = predict_images(tmp_path / "model.onnx", images)
    via_torch = predict_images(checkpoint, images)
    for a, b in zip(via_onnx, via_torch, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)
