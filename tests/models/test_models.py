"""Models, store→model views and the model artifact (weights + labels + preprocessing in one checkpoint)."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch

from cxr.data.transforms import TrainView
from cxr.errors import CxrError
from cxr.imaging.preprocessing import eval_view
from cxr.labels import FINDINGS
from cxr.models.artifact import (
    load_artifact,
    make_preprocessing,
    read_checkpoint,
    set_thresholds,
    write_artifact,
)
from cxr.models.factory import ARCHITECTURES, HEADS, create_model

# torchxrayvision's layouts are these nets but for the stem: test_torchxrayvision_layout_... covers them, in less time;
# Keras' (keras-*) are DenseNets with another epsilon and no final ReLU: tests/models/test_keras_import.py covers them.
TORCHVISION = [name for name in ARCHITECTURES if not name.startswith(("xrv-", "keras-"))]


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("name", TORCHVISION)
def test_forward_backward_reaches_every_parameter(name, head):
    torch.manual_seed(0)
    model = create_model(name, num_outputs=3, head=head, dropout=0.1, input_size=64)
    images = torch.rand(2, 1, 64, 64)
    logits = model(images)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    no_gradient = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_gradient == []
    # Below 224 px the Grad-CAM target is the last stride-16 block (a 4x4 map at 64 px, not 2x2).
    assert model.feature_layer is model.backbone.get_submodule("layer3" if name.startswith("resnet") else "denseblock3")
    assert _feature_map_side(model, 64) == 4


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
@pytest.mark.parametrize("name", ["densenet121", "resnet18"])
def test_from_224_px_the_cam_target_is_the_rectified_map_the_head_sees(name):
    model = create_model(name, num_outputs=2, head="gap", input_size=224).eval()
    assert model.feature_layer is model.backbone[-1]
    maps = []
    handle = model.feature_layer.register_forward_hook(lambda module, args, out: maps.append(out))
    with torch.no_grad():
        model(torch.rand(1, 1, 224, 224))
    handle.remove()
    assert maps[0].shape[-2:] == (7, 7) and (maps[0] >= 0).all()


def _feature_map_side(model, size: int) -> int:
    """Side of the feature layer's output map at ``size`` px."""
    sides = []
    handle = model.feature_layer.register_forward_hook(lambda module, args, out: sides.append(out.shape[-1]))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, size, size))
    handle.remove()
    return sides[0]


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_seed_head_flattens_the_feature_map_of_its_input_size():
    # docs/experiments.md: at 300 px DenseNet169 flattens 9x9x1664 = 134,784 features.
    model = create_model("densenet169", 14, head="seed", dropout=0.2, input_size=300)
    assert model.head[2].in_features == 9 * 9 * 1664
    assert model.input_size == 300 and model.architecture.source == "torchvision"
    assert model.architecture.mean == (0.485, 0.456, 0.406) and model.architecture.std == (0.229, 0.224, 0.225)


def test_normalisation_is_inside_the_model():
    model = create_model("resnet18", 2, input_size=64).eval()
    seen = []
    model.backbone.conv1.register_forward_hook(lambda module, args, out: seen.append(args[0]))
    gray = torch.full((1, 1, 64, 64), 0.5)
    model(gray)
    expected = (0.5 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    assert seen[0].shape == (1, 3, 64, 64)
    assert torch.allclose(seen[0][0, :, 10, 10], expected)
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        model(torch.rand(1, 3, 64, 64))


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
@pytest.mark.parametrize(("name", "first_conv"), [("xrv-densenet121", "conv0"), ("xrv-resnet50", "conv1")])
def test_torchxrayvision_layout_takes_one_channel_scaled_to_its_range(name, first_conv):
    """torchxrayvision's nets: no repeat to 3 channels, and [0, 1] becomes its [-1024, 1024] inside the model; the
    gradient reaches every parameter."""
    model = create_model(name, 2, head="gap", input_size=64, grad_checkpointing=True).eval()
    if "densenet" in name:  # activation checkpointing as for torchvision's DenseNet
        assert all(m.memory_efficient for m in model.backbone.modules() if hasattr(m, "memory_efficient"))
    seen = []
    model.backbone.get_submodule(first_conv).register_forward_hook(lambda module, args, out: seen.append(args[0]))
    gray = torch.tensor([0.0, 0.25, 0.5, 1.0]).repeat(64, 16)[None, None]
    model(gray).sum().backward()
    assert seen[0].shape == (1, 1, 64, 64)
    assert seen[0][0, 0, 0, :4].tolist() == [-1024.0, -512.0, 0.0, 1024.0]
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []
    assert model.feature_layer is model.backbone.get_submodule("layer3" if "resnet" in name else "denseblock3")
    with pytest.raises(CxrError, match="no ImageNet weights.*model.init_from"):
        create_model(name, 2, pretrained="imagenet")


def test_bad_factory_arguments_are_user_errors():
    with pytest.raises(CxrError, match="unknown model 'densenet122'.*close matches: densenet121"):
        create_model("densenet122", 2)  # vgg16, the former example, is a timm architecture now
    with pytest.raises(CxrError, match="unknown head"):
        create_model("resnet18", 2, head="attention")
    with pytest.raises(CxrError, match="not found"):
        create_model("resnet18", 2, pretrained="/nonexistent/weights.pth")


def test_imagenet_weights_unavailable_says_how_to_get_them(monkeypatch, tmp_path):
    import torchvision.models._api as tv_api

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    with pytest.raises(CxrError) as error:
        create_model("resnet18", 2, pretrained="imagenet")
    message = str(error.value)
    assert "resnet18-f37072fd.pth" in message and "checkpoints" in message and "model.pretrained" in message


def test_torchvision_state_dict_as_pretrained(tmp_path):
    import torchvision

    torch.manual_seed(1)
    source = torchvision.models.densenet121(weights=None, num_classes=14)  # a CheXNet-like 14-class classifier
    source.features.denseblock1.denselayer1.norm1.running_var.uniform_(0.5, 2.0)  # not the default ones
    state = {f"module.{k}": v for k, v in source.state_dict().items()}  # DataParallel-era prefix
    # the old torchvision naming ("norm.1") of DenseNet checkpoints
    state = {k.replace("denselayer1.norm1.", "denselayer1.norm.1."): v for k, v in state.items() if "tracked" not in k}
    torch.save(state, tmp_path / "tv.pth")
    model = create_model("densenet121", 3, pretrained=tmp_path / "tv.pth", input_size=64)
    assert torch.equal(model.backbone.conv0.weight, source.features.conv0.weight)
    assert torch.equal(
        model.backbone.denseblock1.denselayer1.norm1.weight, source.features.denseblock1.denselayer1.norm1.weight
    )
    with pytest.raises(CxrError, match="do not fit resnet18"):
        create_model("resnet18", 3, pretrained=tmp_path / "tv.pth")


def test_our_checkpoint_as_init_reuses_the_head_only_when_it_fits(tmp_path):
    torch.manual_seed(2)
    source = create_model("resnet18", 14, head="seed", dropout=0.2, input_size=64)
    path = write_artifact(tmp_path / "adam.ckpt", source, list(FINDINGS), make_preprocessing(source, 64, 1.0))
    same_task = create_model("resnet18", 14, head="seed", dropout=0.1, input_size=64, pretrained=path)
    for key, value in source.state_dict().items():
        assert torch.equal(same_task.state_dict()[key], value), key
    binary = create_model("resnet18", 1, head="seed", dropout=0.1, input_size=64, pretrained=path)
    assert torch.equal(binary.backbone.conv1.weight, source.backbone.conv1.weight)
    assert binary.head[-1].out_features == 1


def test_artifact_round_trip(tmp_path):
    torch.manual_seed(3)
    model = create_model("resnet18", 2, head="gap", input_size=56).eval()
    preprocessing = make_preprocessing(model, store_size=64, crop=0.8, eval_view="center_crop")
    path = write_artifact(tmp_path / "m.ckpt", model, ["Fibrosis", "Mass"], preprocessing, config={"seed": 1})
    artifact = load_artifact(path)
    assert artifact.labels == ["Fibrosis", "Mass"]
    assert artifact.thresholds == {"Fibrosis": 0.5, "Mass": 0.5}
    assert artifact.preprocessing == preprocessing and artifact.config == {"seed": 1}
    assert artifact.spec.architecture.name == "resnet18" and not artifact.model.training
    images = torch.rand(3, 1, 56, 56)
    with torch.no_grad():
        assert torch.allclose(artifact.model(images), model(images))

    set_thresholds(path, {"Fibrosis": 0.2, "Mass": 0.7})
    assert load_artifact(path).thresholds == {"Fibrosis": 0.2, "Mass": 0.7}
    with pytest.raises(CxrError, match="missing"):
        set_thresholds(path, {"Fibrosis": 0.2})
    with pytest.raises(CxrError, match=r"\[0, 1\]"):
        set_thresholds(path, {"Fibrosis": 0.2, "Mass": 1.5})
    assert [p.name for p in tmp_path.iterdir()] == ["m.ckpt"]  # no temporary files left behind


def test_foreign_files_are_refused(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a checkpoint")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "plain.pth")
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2.4.0"}, tmp_path / "lightning.ckpt")
    model = create_model("resnet18", 1, input_size=32)
    path = write_artifact(tmp_path / "future.ckpt", model, ["Fibrosis"], make_preprocessing(model, 32, 1.0))
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["cxr"]["format_version"] = 99
    torch.save(checkpoint, path)
    with pytest.raises(CxrError, match="not a PyTorch checkpoint"):
        load_artifact(tmp_path / "image.png")
    with pytest.raises(CxrError, match="no state_dict"):
        load_artifact(tmp_path / "plain.pth")
    with pytest.raises(CxrError, match="Lightning checkpoint without the 'cxr' block"):
        load_artifact(tmp_path / "lightning.ckpt")
    with pytest.raises(CxrError, match="format_version 99"):
        read_checkpoint(path)
    with pytest.raises(CxrError, match="not found"):
        load_artifact(tmp_path / "missing.ckpt")


def test_eval_view_resize_and_center_crop():
    store_image = np.arange(300 * 300, dtype=np.uint32).reshape(300, 300).astype(np.uint8)
    assert np.array_equal(eval_view(store_image, 300, "resize"), store_image)
    crop = eval_view(store_image, 224, "center_crop")
    assert np.array_equal(crop, store_image[38:262, 38:262])  # the seed's Fibrosis box (38, 38, 262, 262)
    flat = np.full((64, 64), 77, np.uint8)
    assert eval_view(flat, 32, "resize").shape == (32, 32) and (eval_view(flat, 32, "resize") == 77).all()
    with pytest.raises(CxrError, match="cannot center-crop"):
        eval_view(flat, 100, "center_crop")
    with pytest.raises(CxrError, match="unknown eval transform"):
        eval_view(flat, 32, "letterbox")


def test_train_view_is_random_but_seeded():
    rng = np.random.default_rng(0)
    store_image = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    jitter = TrainView(64, rotation=15, shift=0.15, hflip=True)
    first = jitter(store_image, torch.Generator().manual_seed(5))
    assert first.shape == (64, 64) and first.dtype == np.uint8
    assert np.array_equal(first, jitter(store_image, torch.Generator().manual_seed(5)))
    assert not np.array_equal(first, jitter(store_image, torch.Generator().manual_seed(6)))
    flips = [TrainView(64, hflip=True)(store_image, torch.Generator().manual_seed(s)) for s in range(8)]
    assert all(np.array_equal(f, store_image) or np.array_equal(f, store_image[:, ::-1]) for f in flips)
    assert any(np.array_equal(f, store_image[:, ::-1]) for f in flips)
    crops = [TrainView(48, random_crop=True)(store_image, torch.Generator().manual_seed(s)) for s in range(4)]
    windows = {
        (y, x)
        for y in range(17)
        for x in range(17)
        for c in crops
        if np.array_equal(c, store_image[y : y + 48, x : x + 48])
    }
    assert len(windows) >= 2  # random positions, each a real window of the store image


def test_model_input_is_the_store_path(sample_dir):
    from cxr.imaging.decode import decode_grayscale, preprocess

    gray = decode_grayscale(sample_dir / "images" / "00000100_000.png")  # the RGBA one
    model = create_model("resnet18", 1, input_size=224)
    preprocessing = make_preprocessing(model, store_size=256, crop=0.75, eval_view="center_crop")
    tensor = preprocessing.model_input(gray)
    assert tensor.shape == (1, 224, 224) and tensor.dtype == np.float32
    expected = preprocess(gray, 256, 0.75)[16:240, 16:240] / 255.0
    assert np.allclose(tensor[0], expected)


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
@pytest.mark.parametrize("name", ["densenet121", "resnet18"])
def test_feature_layer_drives_pytorch_grad_cam(name):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = create_model(name, 3, head="gap", input_size=64).eval()
    with GradCAM(model=model, target_layers=[model.feature_layer]) as cam:
        heatmap = cam(input_tensor=torch.rand(2, 1, 64, 64), targets=[ClassifierOutputTarget(1)] * 2)
    assert heatmap.shape == (2, 64, 64) and np.isfinite(heatmap).all() and heatmap.max() > 0


def test_densenet169_with_the_seed_head_has_the_seeds_parameter_count():
    from cxr.models.factory import count_parameters

    # docs/experiments.md: 47.2 M parameters at 300 px. Keras' total counts BatchNorm's moving statistics too.
    model = create_model("densenet169", 14, head="seed", dropout=0.2, input_size=300)
    statistics = sum(b.numel() for name, b in model.named_buffers() if "running_" in name)
    assert round((count_parameters(model) + statistics) / 1e6, 1) == 47.2
