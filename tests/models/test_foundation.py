"""RAD-DINO and BiomedCLIP as cxr backbones: random weights in the publishers' layouts load with strict key checks,
cxr's features equal ``transformers``' / ``open_clip``'s own forward on a real NIH radiograph, Grad-CAM on their
tokens, ONNX export with parity, the artifact rebuilds offline, one fine-tuning step learns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr.errors import CxrError
from cxr.imaging.decode import decode_grayscale
from cxr.imaging.preprocessing import Preprocessing
from cxr.models.factory import create_model
from foundation_layouts import biomedclip_folders, rad_dino_folder, serve_text_config

SIZE = 224
LABELS = ["Atelectasis", "Cardiomegaly", "Effusion"]


@pytest.fixture(scope="module")
def nih_input(sample_dir) -> torch.Tensor:
    """A real NIH radiograph as cxr feeds it: 224 px, (1, 1, S, S) in [0, 1]."""
    gray = decode_grayscale(sample_dir / "images" / "00000001_000.png")
    return torch.from_numpy(Preprocessing(SIZE, 1.0, SIZE).model_input(gray))[None]


@pytest.fixture(scope="module")
def rad_dino(tmp_path_factory):
    return rad_dino_folder(tmp_path_factory.mktemp("rad-dino") / "rad-dino")


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return biomedclip_folders(tmp_path_factory.mktemp("biomedclip"))


def features(model, x: torch.Tensor) -> torch.Tensor:
    """What the backbone of a cxr model gives for cxr's input (the model's own normalisation)."""
    with torch.no_grad():
        return model.backbone((x.expand(-1, 3, -1, -1) - model.mean) / model.std)


def test_rad_dino_equals_transformers(rad_dino, nih_input):
    from transformers import AutoImageProcessor, Dinov2Model

    model = create_model("rad-dino", len(LABELS), head="gap", pretrained=str(rad_dino), input_size=SIZE).eval()
    reference = Dinov2Model.from_pretrained(rad_dino).eval()
    processor = AutoImageProcessor.from_pretrained(rad_dino)
    pixels = (nih_input[0, 0].numpy() * 255).round().astype(np.uint8)
    rgb = np.repeat(pixels[:, :, None], 3, axis=2)  # a store image is already the 224 px square: no resize or crop
    batch = processor(images=rgb, do_resize=False, do_center_crop=False, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        output = reference(pixel_values=batch)
    ours = features(model, nih_input)
    assert ours.shape == (1, 32)
    torch.testing.assert_close(ours, output.pooler_output, atol=1e-4, rtol=0)
    with torch.no_grad():  # the logits are the head on those features
        torch.testing.assert_close(model(nih_input), model.head(output.pooler_output), atol=1e-4, rtol=0)
    both = create_model("rad-dino-cls-mean", 2, head="gap", pretrained=str(rad_dino), input_size=SIZE).eval()
    tokens = output.last_hidden_state
    expected = torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=-1)
    torch.testing.assert_close(features(both, nih_input), expected, atol=1e-4, rtol=0)
    assert model.architecture.mean == pytest.approx([0.5307] * 3)  # read from preprocessor_config.json


def test_biomedclip_image_tower_equals_open_clip(clip, nih_input):
    import open_clip

    publisher, reference_dir, _ = clip
    model = create_model("biomedclip", len(LABELS), head="gap", pretrained=str(publisher), input_size=SIZE).eval()
    reference = open_clip.create_model(f"local-dir:{reference_dir}", pretrained_text=False).eval()
    mean, std = reference.visual.preprocess_cfg["mean"], reference.visual.preprocess_cfg["std"]
    image = (nih_input.expand(-1, 3, -1, -1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference.encode_image(image, normalize=True)
    torch.testing.assert_close(features(model, nih_input), expected, atol=1e-4, rtol=0)


def test_biomedclip_text_tower_equals_open_clip(clip, monkeypatch):
    import open_clip

    from cxr.models.clip_text import load_clip_text

    publisher, reference_dir, text_config = clip
    asked = serve_text_config(monkeypatch, text_config)
    text = load_clip_text(str(publisher))
    assert asked  # the text model's config came through the weights module (the hub cache), not the network
    reference = open_clip.create_model(f"local-dir:{reference_dir}", pretrained_text=False).eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{reference_dir}")
    prompts = ["atelectasis", "no atelectasis", "chest x-ray showing pleural effusion"]
    with torch.no_grad():
        expected = reference.encode_text(tokenizer(prompts), normalize=True)
    torch.testing.assert_close(text.encode(prompts), expected, atol=1e-4, rtol=0)
    assert text.scale == pytest.approx(float(reference.logit_scale.detach().exp()))


def test_publisher_weights_load_strictly(rad_dino, clip, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = shutil.copytree(rad_dino, tmp_path / "rad-dino")
    state = load_file(broken / "model.safetensors")
    state["embeddings.extra_token"] = torch.zeros(1)
    del state["layernorm.weight"]
    save_file(state, broken / "model.safetensors")
    with pytest.raises(
        CxrError, match=r"missing keys 1 \['layernorm.weight'\], unexpected keys 1 \['embeddings.extra_token'\]"
    ):
        create_model("rad-dino", 2, head="gap", pretrained=str(broken), input_size=SIZE)
    clip_copy = shutil.copytree(clip[0], tmp_path / "clip")
    state = torch.load(clip_copy / "open_clip_pytorch_model.bin", weights_only=True)
    del state["visual.head.proj.weight"]
    torch.save(state, clip_copy / "open_clip_pytorch_model.bin")
    with pytest.raises(CxrError, match=r"open_clip_pytorch_model.bin: weights do not fit .*head.proj.weight"):
        create_model("biomedclip", 2, head="gap", pretrained=str(clip_copy), input_size=SIZE)
    (clip_copy / "open_clip_config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CxrError, match="open_clip_config.json: not a JSON file"):
        create_model("biomedclip", 2, head="gap", pretrained=str(clip_copy), input_size=SIZE)
    with pytest.raises(CxrError, match="use model.head=gap"):
        create_model("rad-dino", 2, head="seed", pretrained="none", input_size=SIZE)


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
@pytest.mark.parametrize("name", ["rad-dino", "biomedclip"])
def test_artifact_rebuilds_offline_and_exports_to_onnx(name, rad_dino, clip, nih_input, tmp_path, monkeypatch):
    """The artifact records the backbone's config: loading it needs no folder and no network; ONNX parity."""
    from cxr.inference.export import export_onnx
    from cxr.inference.predict import load_predictor
    from cxr.models.artifact import load_artifact, make_preprocessing, write_artifact

    folder = rad_dino if name == "rad-dino" else clip[0]
    model = create_model(name, len(LABELS), head="gap", pretrained=str(folder), input_size=SIZE, labels=LABELS).eval()
    path = write_artifact(tmp_path / "model.ckpt", model, LABELS, make_preprocessing(model, SIZE, 1.0))
    from cxr.models import weights

    monkeypatch.setattr(weights, "hf_snapshot", lambda *a, **k: pytest.fail("the artifact must not fetch weights"))
    artifact = load_artifact(path)
    assert artifact.spec.architecture.source == "foundation"
    assert "/" not in json.dumps(artifact.spec.architecture.backbone_config)  # no paths leave the run
    with torch.no_grad():
        torch.testing.assert_close(artifact.model(nih_input), model(nih_input), atol=1e-6, rtol=0)
    again = create_model(name, 2, head="gap", pretrained=str(path), input_size=SIZE).eval()  # model.init_from=ckpt
    torch.testing.assert_close(features(again, nih_input), features(model, nih_input), atol=1e-6, rtol=0)
    result = export_onnx(path, tmp_path / "model.onnx")
    assert result["max_abs_diff"] <= 1e-4
    onnx = load_predictor(tmp_path / "model.onnx")
    assert onnx.backend == "onnxruntime" and onnx.labels == LABELS
    with torch.no_grad():
        expected = torch.sigmoid(model(nih_input)).numpy()
    np.testing.assert_allclose(onnx.probabilities(nih_input.numpy()), expected, atol=1e-4)


@pytest.mark.parametrize("name", ["rad-dino", "biomedclip"])
def test_grad_cam_on_tokens_equals_the_grad_cam_package(name, rad_dino, clip, nih_input):
    """The last block's tokens, prefix dropped, as a (C, h, w) map: cxr's maps equal the ``grad-cam`` package's with
    the model's reshape transform, and are maps (not constant) at the input size."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxr.inference.cam import grad_cam_batch

    folder = rad_dino if name == "rad-dino" else clip[0]
    torch.manual_seed(0)  # the random head decides whether a map survives the ReLU: fixed, so the test is too
    model = create_model(name, len(LABELS), head="gap", pretrained=str(folder), input_size=SIZE).eval()
    with torch.no_grad():  # a random head on unit-norm features gives maps near grad-cam's 1e-7 floor: scale it up
        model.head[-1].weight.mul_(1000)
    maps = grad_cam_batch(model, nih_input.numpy(), [[0, 1, 2]], method="gradcam")[0]
    assert maps.shape == (3, SIZE, SIZE) and np.isfinite(maps).all()
    assert maps.reshape(3, -1).std(axis=1).max() > 0  # random weights: some label's map may be all zero after ReLU
    with GradCAM(model, target_layers=[model.feature_layer], reshape_transform=model.cam_reshape) as cam:
        for k in range(3):
            np.testing.assert_allclose(maps[k], cam(nih_input, targets=[ClassifierOutputTarget(k)])[0], atol=1e-5)


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
@pytest.mark.parametrize("name", ["rad-dino", "biomedclip"])
def test_one_fine_tuning_step_lowers_the_loss(name, rad_dino, clip):
    """Backbone and head both get gradients; repeated steps on one batch fit it (the loss falls)."""
    folder = rad_dino if name == "rad-dino" else clip[0]
    torch.manual_seed(0)
    size = 64  # 4x4 patches for both
    model = create_model(name, 2, head="gap", pretrained=str(folder), input_size=size, grad_checkpointing=True)
    model.train()
    x, y = torch.rand(4, 1, size, size), torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
            # DINOv2's mask token is only used for masked pre-training
            assert [n for n in no_grad if "mask_token" not in n] == []
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_registry_documents_every_entry():
    from cxr.models.foundation import FOUNDATION_MODELS, model_table

    assert {"rad-dino", "rad-dino-cls-mean", "biomedclip"} <= set(FOUNDATION_MODELS)
    for entry in FOUNDATION_MODELS.values():
        assert entry.source and entry.licence and entry.normalisation and entry.pooling and entry.paper
        assert "published" in entry.published
    table = model_table()
    assert all(f"`{name}`" in table for name in FOUNDATION_MODELS)
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    assert table in readme  # the README's table is this registry's, regenerated when an entry changes


@pytest.mark.slow
def test_cxr_train_fine_tunes_rad_dino_and_evaluate_scores_it(rad_dino, synth_store, tmp_path):
    """The whole pipeline with a foundation backbone: train (weights from the publisher's folder, position grid
    interpolated to 64 px), validation predictions from the rebuilt artifact, evaluate."""
    from conftest import cli

    run = tmp_path / "run"
    cli("train", "--experiment", "multilabel-adam", "--store", str(synth_store), "--out", str(run),
        "--model", "rad-dino", "--image-size", "64", "--epochs", "1", "--no-progress", f"model.pretrained={rad_dino}",
        "model.head=gap", "model.dropout=0", "data.num_workers=0", "task.val_fraction=0.2")  # fmt: skip
    cli("evaluate", str(run))
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["n_images"] > 50 and np.isfinite(metrics["macro_auroc"])


@pytest.mark.parametrize("name", ["rad-dino", "biomedclip"])
def test_pretrained_imagenet_means_the_published_weights_from_the_hub(name, rad_dino, clip, monkeypatch):
    """``model.pretrained=imagenet`` asks :mod:`cxr.models.weights` for the publisher's repository and files (here
    answered by the local folder, as a filled cache would) and loads them."""
    from cxr.models import biomedclip as biomedclip_module
    from cxr.models import rad_dino as rad_dino_module
    from cxr.models import weights

    module = rad_dino_module if name == "rad-dino" else biomedclip_module
    folder = rad_dino if name == "rad-dino" else clip[0]
    asked = []

    def snapshot(repo_id, allow_patterns=None, revision=None, *, command=""):
        asked.append((repo_id, allow_patterns))
        return folder

    monkeypatch.setattr(weights, "hf_snapshot", snapshot)
    hub = create_model(name, 2, head="gap", pretrained="imagenet", input_size=SIZE).eval()
    local = create_model(name, 2, head="gap", pretrained=str(folder), input_size=SIZE).eval()
    assert asked and asked[0][0] == module.REPO_ID
    x = torch.rand(1, 1, SIZE, SIZE)
    torch.testing.assert_close(features(hub, x), features(local, x))


@pytest.mark.slow  # two 86 M-parameter random inits: ~25 s on the shared 2-core machine
def test_none_builds_the_published_architectures():
    """``model.pretrained=none``: the published ViT-B/14 at 518 px (RAD-DINO) and ViT-B/16 + 512-d projection
    (BiomedCLIP) with random weights, their published normalisation."""
    dino = create_model("rad-dino", 1, head="gap", pretrained="none", input_size=SIZE)
    inner = dino.backbone.dino
    assert (inner.config.hidden_size, inner.config.num_hidden_layers, inner.config.patch_size) == (768, 12, 14)
    assert inner.embeddings.position_embeddings.shape == (1, 1 + 37 * 37, 768)
    assert dino.architecture.mean == pytest.approx((0.5307,) * 3) and dino.architecture.img_size is None
    clip_model = create_model("biomedclip", 1, head="gap", pretrained="none", input_size=SIZE)
    trunk = clip_model.backbone.visual.trunk
    assert (trunk.embed_dim, len(trunk.blocks), tuple(trunk.patch_embed.grid_size)) == (768, 12, (14, 14))
    assert clip_model.head[-1].in_features == 512 and clip_model.architecture.img_size == SIZE
