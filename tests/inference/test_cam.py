"""Grad-CAM and ``cxr localize``: map geometry, the scoring rules, and maps that point inside synthetic boxes."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cxr.evaluation.localize import box_mask, peak, pointing_hit, thresholded_iou
from cxr.imaging.preprocessing import Preprocessing
from cxr.inference.cam import grad_cam, heatmap_rgba, map_to_source, overlay, unique_stems
from cxr.labels import FINDINGS

CENTER_CROP = Preprocessing(store_size=72, crop=0.5, input_size=64, eval_view="center_crop")
RESIZE = Preprocessing(store_size=72, crop=0.5, input_size=64, eval_view="resize")


def test_input_region_follows_crop_and_eval_view():
    # 1000 x 800 source, crop 0.5 of the shorter side: a 400 px square at (300, 200).
    assert RESIZE.input_region(1000, 800) == (300.0, 200.0, 400.0)
    left, top, side = CENTER_CROP.input_region(1000, 800)
    scale = 400 / 72  # source pixels per store pixel; the center crop drops 4 store pixels each side
    assert (left, top, side) == pytest.approx((300 + 4 * scale, 200 + 4 * scale, 64 * scale))


@pytest.mark.parametrize("preprocessing", [RESIZE, CENTER_CROP, dataclasses.replace(RESIZE, crop=1.0, store_size=64)])
def test_map_to_source_inverts_the_preprocessing(preprocessing):
    """A smooth image through the real preprocessing (model_input) and back lands where it came from."""
    height, width = 300, 420
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    gray = np.uint8(np.clip(128 + 100 * np.sin(xx / 37) * np.cos(yy / 29), 0, 255))
    back = map_to_source(preprocessing.model_input(gray)[0], width, height, preprocessing)
    left, top, side = preprocessing.input_region(width, height)
    inside = np.zeros_like(back, dtype=bool)
    inside[round(top) : round(top + side), round(left) : round(left + side)] = True
    assert np.all(back[~inside] == 0)
    error = np.abs(back[inside] - gray[inside] / 255.0)
    assert error.mean() < 0.03  # resampling blur only; a shifted or flipped map would be off by ~0.4


def test_grad_cam_maps_and_drawings():
    import torch

    from cxr.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", 3, input_size=64).eval()
    image = np.random.default_rng(0).random((1, 64, 64), dtype=np.float32)
    maps = grad_cam(model, image, [0, 1, 2, 0])
    assert maps.shape == (4, 64, 64) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_allclose(maps[0], maps[3], atol=1e-5)  # same finding, same map
    assert grad_cam(model, image, []).shape == (0, 64, 64)
    gray = np.full((80, 100), 90, np.uint8)
    source = map_to_source(maps[0], 100, 80, RESIZE)
    assert overlay(gray, source).shape == (80, 100, 3)
    rgba = heatmap_rgba(source)
    assert rgba.shape == (80, 100, 4) and rgba[..., 3][source == 0].max() == 0


def test_batched_grad_cam_gives_pytorch_grad_cam_s_maps():
    """``grad_cam_batch`` (one forward per image, partial backward per label, images batched) against the package's
    ``GradCAM`` run per image on copies of it, as ``grad_cam`` used to; the model's weights keep ``requires_grad``."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxr.inference.cam import grad_cam_batch
    from cxr.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", 5, input_size=64).eval()
    images = np.random.default_rng(1).random((5, 1, 64, 64), dtype=np.float32)
    wanted = [[0, 3], [4], [], [1, 2, 0], [2, 2]]
    maps = grad_cam_batch(model, images, wanted, chunk=2, method="gradcam")  # a chunk boundary inside the batch
    assert [m.shape for m in maps] == [(len(w), 64, 64) for w in wanted]
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # restored, and left untouched
    for image, indices, batched in zip(images, wanted, maps, strict=True):
        if not indices:
            continue
        copies = torch.from_numpy(image[None]).expand(len(indices), -1, -1, -1).contiguous()
        with GradCAM(model=model, target_layers=[model.feature_layer]) as cam:
            expected = cam(input_tensor=copies, targets=[ClassifierOutputTarget(i) for i in indices])
        np.testing.assert_allclose(batched, expected, atol=1e-4)
        assert [peak(m) for m in batched] == [peak(m) for m in expected]  # the pointing game's points


@pytest.mark.parametrize("method", ["gradcam++", "hirescam", "layercam"])
def test_every_cam_method_gives_the_packages_maps(method):
    """Each :class:`CamMethod` against the ``grad-cam`` package's class of that method, on the model's own target
    layer and on an earlier stage (``layer=``), per image as the package computes them."""
    import torch
    from pytorch_grad_cam import GradCAMPlusPlus, HiResCAM, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxr.inference.cam import grad_cam_batch
    from cxr.models.factory import create_model

    package = {"gradcam++": GradCAMPlusPlus, "hirescam": HiResCAM, "layercam": LayerCAM}[method]
    torch.manual_seed(0)
    model = create_model("resnet18", 4, input_size=64).eval()
    images = np.random.default_rng(3).random((2, 1, 64, 64), dtype=np.float32)
    wanted = [[0, 3], [2]]
    for layer in (None, "layer2"):
        maps = grad_cam_batch(model, images, wanted, method=method, layer=layer)
        target = model.backbone.get_submodule(layer) if layer else model.feature_layer
        for image, indices, ours in zip(images, wanted, maps, strict=True):
            copies = torch.from_numpy(image[None]).expand(len(indices), -1, -1, -1).contiguous()
            with package(model=model, target_layers=[target]) as cam:
                expected = cam(input_tensor=copies, targets=[ClassifierOutputTarget(i) for i in indices])
            np.testing.assert_allclose(ours, expected, atol=1e-4)


def test_a_gated_map_is_the_product_of_the_packages_two_maps():
    """``gate=``: LayerCAM on an early stage times Grad-CAM on a later one, each as the ``grad-cam`` package computes
    it, min-max scaled again; both from one backward pass, the same whichever order the layers are named in. The
    model's recorded gate is the default, and ``gate=None`` switches it off."""
    import dataclasses

    import torch
    from pytorch_grad_cam import GradCAM, LayerCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxr.inference.cam import grad_cam_batch
    from cxr.models.factory import create_model

    torch.manual_seed(0)
    model = create_model("resnet18", 4, input_size=64).eval()
    images = np.random.default_rng(5).random((4, 1, 64, 64), dtype=np.float32)
    wanted = [[0, 3], [2], [], [1, 2, 3]]  # an image with no finding asked for gets no map

    def package(cls, layer, image, indices):
        copies = torch.from_numpy(image[None]).expand(len(indices), -1, -1, -1).contiguous()
        with cls(model=model, target_layers=[model.backbone.get_submodule(layer)]) as cam:
            return cam(input_tensor=copies, targets=[ClassifierOutputTarget(i) for i in indices])

    gated = grad_cam_batch(model, images, wanted, chunk=2, method="layercam", layer="layer1", gate="layer3")
    reversed_order = grad_cam_batch(model, images, wanted, method="gradcam", layer="layer3", gate="layer1")
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # restored, and left untouched
    for image, indices, ours, other in zip(images, wanted, gated, reversed_order, strict=True):
        if not indices:
            assert ours.shape == other.shape == (0, 64, 64)
            continue
        fine, coarse = package(LayerCAM, "layer1", image, indices), package(GradCAM, "layer3", image, indices)
        product = fine * coarse
        expected = (product - product.min(axis=(1, 2), keepdims=True)) / (
            1e-7 + np.ptp(product, axis=(1, 2), keepdims=True)
        )
        np.testing.assert_allclose(ours, expected, atol=1e-4)
        assert not np.allclose(ours, fine, atol=1e-2)  # the gate changed the map
        swapped = package(GradCAM, "layer3", image, indices) * package(GradCAM, "layer1", image, indices)
        swapped = (swapped - swapped.min(axis=(1, 2), keepdims=True)) / (
            1e-7 + np.ptp(swapped, axis=(1, 2), keepdims=True)
        )
        np.testing.assert_allclose(other, swapped, atol=1e-4)
    model.architecture = dataclasses.replace(model.architecture, cam_layer="layer1", cam_gate="layer3")
    own = grad_cam_batch(model, images, wanted, chunk=2, method="layercam")
    for ours, recorded in zip(gated, own, strict=True):
        np.testing.assert_allclose(ours, recorded, atol=1e-6)
    ungated = grad_cam_batch(model, images, wanted, method="layercam", gate=None)
    np.testing.assert_allclose(ungated[0], package(LayerCAM, "layer1", images[0], wanted[0]), atol=1e-4)


def test_unique_stems():
    assert unique_stems(["a/x.png", "b/x.png", "y.dcm", "c/x.png"]) == ["x", "x-2", "y", "x-3"]


def test_box_geometry_and_scores():
    scale = 64 / 72
    assert RESIZE.store_box_to_input(10, 20, 30, 40) == pytest.approx((10 * scale, 20 * scale, 30 * scale, 40 * scale))
    assert CENTER_CROP.store_box_to_input(2, 20, 30, 60) == pytest.approx((0, 16, 28, 48))  # x 2..32 → -2..28, clipped
    mask = box_mask([(1, 1, 2, 2)], 5)  # pixel centres 1.5 and 2.5 are inside [1, 3]
    assert mask.sum() == 4 and mask[1:3, 1:3].all()
    grown = box_mask([(1, 1, 2, 2)], 5, tolerance=0.6)  # + centres 0.5 px away; diagonal ones are 0.71 away
    assert grown.sum() == 4 + 8 and not grown[0, 0] and grown[0, 1] and not grown[4, 1]
    cam_map = np.zeros((5, 5), np.float32)
    cam_map[2, 2], cam_map[4, 4] = 1.0, 0.6
    assert peak(cam_map) == (2, 2) and pointing_hit(cam_map, mask)
    cam_map[4, 4] = 1.5
    assert not pointing_hit(cam_map, mask)
    assert peak(np.zeros((5, 5))) is None and not pointing_hit(np.zeros((5, 5)), mask)
    plateau = np.zeros((6, 6), np.float32)
    plateau[0:2, 2:6] = 1.0  # an upsampled border cell: flat up to the edge
    assert peak(plateau) == (0, 3)  # its centre, not its first pixel (0, 2)
    # Thresholded at half the peak: {(2,2), (4,4)} vs 4 box pixels → intersection 1, union 5.
    cam_map[4, 4] = 0.6
    assert thresholded_iou(cam_map, mask, 0.5) == pytest.approx(1 / 5)
    assert thresholded_iou(np.zeros((5, 5)), mask) == 0.0


def disc_images(rng, count: int, size: int = 48):
    """Noise with a bright disc in half of them: the finding, and its box, wherever the disc is."""
    images = rng.normal(0.45, 0.08, (count, 1, size, size)).astype(np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    labels, boxes = rng.random(count) < 0.5, []
    for image, present in zip(images, labels, strict=True):
        cx, cy, r = rng.integers(8, size - 8), rng.integers(8, size - 8), rng.integers(4, 7)
        boxes.append((float(cx - r), float(cy - r), float(2 * r), float(2 * r)))
        if present:
            image[0][(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] += 0.35
    return np.clip(images, 0, 1), labels.astype(np.float32), boxes


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_grad_cam_points_at_what_a_trained_model_detects():
    """A small CNN (stride 4: 12x12 maps) learns to detect a disc anywhere; Grad-CAM must point inside its box.

    Scored by this module's own rules (box_mask, pointing_hit, thresholded_iou); the same maps against the boxes
    of other images (a shuffled control) must miss, so the test can fail.
    """
    import torch
    from torch import nn

    from cxr.models.factory import IMAGENET_MEAN, IMAGENET_STD, CxrNet
    from cxr.models.spec import ArchitectureSpec

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    backbone = nn.Sequential(
        nn.Conv2d(3, 16, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
    )  # fmt: skip
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 1))
    architecture = ArchitectureSpec("tiny", 1, mean=IMAGENET_MEAN, std=IMAGENET_STD, cam_layer="5")
    model = CxrNet(backbone, head, architecture, input_size=48, labels=["Mass"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        images, labels, _ = disc_images(rng, 32)
        loss = nn.functional.binary_cross_entropy_with_logits(
            model(torch.from_numpy(images))[:, 0], torch.from_numpy(labels)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    images, labels, boxes = disc_images(rng, 80)
    with torch.no_grad():
        accuracy = ((model(torch.from_numpy(images))[:, 0] > 0).numpy() == (labels > 0.5)).mean()
    assert accuracy > 0.9  # it learned the finding
    positives = np.flatnonzero(labels)
    maps = {i: grad_cam(model, images[i], [0])[0] for i in positives}
    hits = [pointing_hit(maps[i], box_mask([boxes[i]], 48)) for i in positives]
    shuffled = [
        pointing_hit(maps[i], box_mask([boxes[j]], 48)) for i, j in zip(positives, np.roll(positives, 7), strict=True)
    ]
    ious = [thresholded_iou(maps[i], box_mask([boxes[i]], 48)) for i in positives]
    assert np.mean(hits) >= 0.8 and np.mean(shuffled) <= 0.3
    assert np.mean(ious) > 0.2


# --- against synthetic boxes, with a model trained on synthetic data ----------------------------------------------


@pytest.mark.slow
def test_localize_scores_a_trained_run_against_synthetic_boxes(trained_run_copy, synth_store):
    """``cxr localize`` end to end on a run trained on synthetic data: every box scored, reports written.

    How well such a short training localizes is a measurement (docs/benchmarks.md), not asserted here; that the
    scoring points correctly is proven by ``test_grad_cam_points_at_what_a_trained_model_detects``.
    """
    import pandas as pd
    from typer.testing import CliRunner

    from cxr.cli import app
    from cxr.data.store import Store

    result = CliRunner().invoke(app, ["localize", str(trained_run_copy), "--store", str(synth_store)])
    assert result.exit_code == 0, result.output
    out = trained_run_copy / "localize"
    document = json.loads((out / "localize.json").read_text())
    store, parts = Store(synth_store), pd.read_parquet(trained_run_copy / "split.parquet")
    test_images = set(parts.loc[parts["part"] == "test", "image"])
    boxes = store.boxes()
    expected = boxes[boxes["image"].isin(test_images)].groupby(["image", "finding"]).ngroups
    overall = document["overall"]
    assert overall["cases"] == expected == len(pd.read_csv(out / "cases.csv")) > 50
    assert set(document["findings"]) <= set(FINDINGS)
    for item in [overall, *document["findings"].values()]:
        assert 0 <= item["pointing_game_strict"] <= item["pointing_game"] <= 1  # tolerance only adds hits
        assert 0 <= item["mean_iou"] <= 1 and 0 < item["random_baseline"] < 1
    report = (out / "report.md").read_text()
    assert "| finding | cases | pointing game |" in report and "Zhang et al." in report
    examples = list((out / "examples").glob("*.png"))
    assert examples and all(f"examples/{p.name}" in report for p in examples)
    assert document["method"]["gate"] is None  # the test run's model records no gate
    base = ["localize", str(trained_run_copy), "--store", str(synth_store)]
    gated = CliRunner().invoke(app, [*base, "--gate", "layer3"])
    assert gated.exit_code == 0, gated.output
    document = json.loads((out / "localize.json").read_text())
    assert document["method"]["gate"] == "layer3" and "times the Grad-CAM map of layer3" in document["method"]["what"]
    assert document["overall"]["cases"] == expected
    refused = CliRunner().invoke(app, [*base, "--gate", "x9"])
    assert refused.exit_code != 0 and "has no layer 'x9'" in str(refused.exception)


def test_the_heatmap_layer_is_a_config_key_recorded_in_the_artifact(tmp_path):
    """``model.cam_layer`` (the demo's recipe sets layer2) reaches the model, its artifact and the rebuilt model; a
    layer the backbone lacks is refused with its name."""
    from cxr.config import load_config
    from cxr.errors import CxrError
    from cxr.imaging.preprocessing import Preprocessing
    from cxr.models.artifact import load_artifact, write_artifact
    from cxr.training.module import CxrModule

    base = ["model.name=resnet18", "model.pretrained=none", "model.head=gap", "data.input_size=64"]
    module = CxrModule(load_config(None, [*base, "model.cam_layer=layer2"]), ["Mass"], Preprocessing(64, 1.0, 64))
    assert module.model.feature_layer is module.model.backbone.layer2
    path = write_artifact(tmp_path / "m.ckpt", module.model, ["Mass"], Preprocessing(64, 1.0, 64))
    assert load_artifact(path).model.architecture.cam_layer == "layer2"
    with pytest.raises(CxrError, match="no layer 'layer9'"):
        CxrModule(load_config(None, [*base, "model.cam_layer=layer9"]), ["Mass"], Preprocessing(64, 1.0, 64))
    assert "cam_gate" not in load_artifact(path).model.architecture.to_dict()  # ungated artifacts keep their keys


def test_the_heatmap_gate_is_a_config_key_recorded_in_the_artifact(tmp_path):
    """``model.cam_gate`` (the demo's recipe: layer1 gated by layer3) reaches the artifact and the rebuilt model,
    whose heatmaps it then gates; a gate the backbone lacks is refused with its name."""
    from cxr.config import load_config
    from cxr.errors import CxrError
    from cxr.imaging.preprocessing import Preprocessing
    from cxr.inference.cam import grad_cam_batch
    from cxr.models.artifact import load_artifact, write_artifact
    from cxr.training.module import CxrModule

    base = ["model.name=resnet18", "model.pretrained=none", "model.head=gap", "data.input_size=64"]
    overrides = [*base, "model.cam_layer=layer1", "model.cam_gate=layer3"]
    module = CxrModule(load_config(None, overrides), ["Mass"], Preprocessing(64, 1.0, 64))
    path = write_artifact(tmp_path / "m.ckpt", module.model, ["Mass"], Preprocessing(64, 1.0, 64))
    rebuilt = load_artifact(path).model.eval()
    assert (rebuilt.architecture.cam_layer, rebuilt.architecture.cam_gate) == ("layer1", "layer3")
    image = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)
    gated = grad_cam_batch(rebuilt, image, [[0]])[0]
    explicit = grad_cam_batch(rebuilt, image, [[0]], layer="layer1", gate="layer3")[0]
    np.testing.assert_allclose(gated, explicit, atol=1e-6)
    assert not np.allclose(gated, grad_cam_batch(rebuilt, image, [[0]], gate=None)[0], atol=1e-2)
    with pytest.raises(CxrError, match="no layer 'layer7'"):
        CxrModule(load_config(None, [*base, "model.cam_gate=layer7"]), ["Mass"], Preprocessing(64, 1.0, 64))
