"""Device-side augmentation (data.augment_on=device) against the CPU path, run on the CPU device.

The two paths share their draws (TrainView.draw), so they are compared image by image, for known parameters at the
ends of every range, and through the real loaders; the eval view must be bit-identical.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cxr.config import load_config
from cxr.data.device_augment import augment_batch
from cxr.data.loaders import EpochSampler, StoreImages
from cxr.data.store import Store
from cxr.data.transforms import DRAWS, DeferredTrainView, TrainView
from cxr.imaging.preprocessing import Preprocessing, to_unit
from cxr.training.module import CxrModule

LAST = 1 - 2**-24  # the largest value torch.rand returns in float32


@pytest.fixture(scope="module")
def radiograph() -> np.ndarray:
    """80 px: smooth texture (interpolation is tested where it matters) and a bright block (sharp edges)."""
    noise = (np.random.default_rng(0).random((80, 80)) * 255).astype(np.uint8)
    image = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2), None, 0, 255, cv2.NORM_MINMAX)
    image[20:40, 10:30] = 255
    image[60:70, 50:75] = 0
    return image


def _draws(n: int, seed: int) -> list[tuple[float, ...]]:
    """Random draws plus both ends of every range (angle, shifts and crop at -max and +max, flip on and off)."""
    random = [tuple(np.random.default_rng(seed).random((n, DRAWS)).tolist()[i]) for i in range(n)]
    return [
        *random,
        (0.0,) * DRAWS,
        (LAST,) * DRAWS,
        (0.0, LAST, 0.0, LAST, 0.0, 0.0),
        (LAST, 0.0, LAST, 0.0, LAST, LAST),
    ]


def _both(view: TrainView, image: np.ndarray, draws: list[tuple[float, ...]]) -> tuple[np.ndarray, np.ndarray]:
    base = view.base(image)
    cpu = np.stack([view.apply(base, d) for d in draws])
    pixels = torch.from_numpy(np.stack([base] * len(draws)))[:, None]
    device = augment_batch(pixels, torch.tensor(draws, dtype=torch.float64), view)
    assert device.dtype == torch.uint8 and device.shape == (len(draws), 1, view.input_size, view.input_size)
    return cpu, device[:, 0].numpy()


VIEWS = {
    "keras jitter, resize": TrainView(80, rotation=15, shift=0.15, hflip=True),
    "keras jitter, resize 80 -> 56": TrainView(56, rotation=15, shift=0.15, hflip=True),
    "keras jitter, center crop": TrainView(64, "center_crop", rotation=15, shift=0.15, hflip=True),
    "chexnet random crop + flip": TrainView(64, random_crop=True, hflip=True),
    "random crop after jitter": TrainView(64, random_crop=True, rotation=10, shift=0.1),
    "rotation only": TrainView(80, rotation=30),
    "shift only": TrainView(80, shift=0.2),
}


@pytest.mark.parametrize("name", list(VIEWS))
def test_device_view_equals_the_cpu_view_for_the_same_draws(name, radiograph):
    cpu, device = _both(VIEWS[name], radiograph, _draws(40, seed=len(name)))
    difference = np.abs(cpu.astype(int) - device)
    # OpenCV's fixed-point interpolation (1/32 px) against float32: a grey level, rarely (module docstring).
    assert difference.max() <= 1, np.argwhere(difference > 1)[:5]
    assert (difference > 0).mean() < 1e-3
    assert len({image.tobytes() for image in device}) > 30  # the draws did change the view


def test_a_wrong_geometry_would_be_seen(radiograph):
    """The comparison above can fail: the opposite rotation, or a shift of one pixel, is far off."""
    view = TrainView(80, rotation=15, shift=0.15)
    draws = [(0.9, 0.5, 0.5, 0.0, 0.0, 1.0)]
    cpu, _ = _both(view, radiograph, draws)
    mirrored, _ = _both(view, radiograph, [(0.1, 0.5, 0.5, 0.0, 0.0, 1.0)])
    shifted, _ = _both(view, radiograph, [(0.9, 0.5 + 1 / 24, 0.5, 0.0, 0.0, 1.0)])  # 1 px at 80 px, shift 0.15
    for other in (mirrored, shifted):
        assert np.abs(cpu.astype(int) - other).max() > 20


@pytest.mark.parametrize("eval_transform", ["resize", "center_crop"])
def test_without_augmentation_the_device_path_gives_the_eval_view_bit_for_bit(eval_transform, radiograph):
    preprocessing = Preprocessing(store_size=80, crop=1.0, input_size=64, eval_view=eval_transform)
    view = TrainView(64, eval_transform)
    _, device = _both(view, radiograph, _draws(8, seed=1))
    expected = preprocessing.view(radiograph)
    assert all(np.array_equal(image, expected) for image in device)
    assert torch.equal(to_unit(torch.from_numpy(device[0])), torch.from_numpy(preprocessing.model_input(radiograph)[0]))


def test_mean_image_over_many_draws_matches(radiograph):
    """The distribution the model sees: mean and spread over 300 draws of one image, from per-image generators."""
    view = TrainView(64, "center_crop", rotation=15, shift=0.15, hflip=True)
    draws = [view.draw(torch.Generator().manual_seed(seed)) for seed in range(300)]
    cpu, device = _both(view, radiograph, draws)
    assert np.abs(cpu.mean(axis=0) - device.mean(axis=0)).max() < 0.01
    assert np.abs(cpu.std(axis=0) - device.std(axis=0)).max() < 0.01
    angles = [(2 * d[0] - 1) * 15 for d in draws]
    assert min(angles) < -14 and max(angles) > 14  # the whole range is drawn, as Keras' rotation_range


@pytest.fixture(scope="module")
def store(synth_store) -> Store:
    return Store(synth_store)


@pytest.mark.parametrize("data", [dict(rotation=15, shift=0.1, hflip=True), dict(random_crop=True, hflip=True)])
def test_loader_batches_augmented_on_the_device_match_the_cpu_loader(store, data):
    """Through the real datasets: same seed, epoch and order; the device batch equals the CPU batch."""
    size = 56 if data.get("random_crop") else 64
    view = TrainView(size, **data)
    cpu_set = StoreImages(store, np.arange(32), None, view, seed=5)
    device_set = StoreImages(store, np.arange(32), None, DeferredTrainView(view), seed=5)

    def batches(dataset: StoreImages) -> list:
        sampler = EpochSampler(len(dataset), shuffle=True, seed=5)
        sampler.set_epoch(3)
        return list(DataLoader(dataset, batch_size=16, sampler=sampler))

    for (cpu, _), (base, _, draws) in zip(batches(cpu_set), batches(device_set), strict=True):
        assert base.dtype == torch.uint8 and base.shape[-1] == 64  # the loader sends the base image, uint8
        device = augment_batch(base, draws, view)
        assert (device.int() - cpu.int()).abs().max() <= 1


def test_module_augments_training_batches_and_passes_validation_batches(store):
    config = load_config(None, ["model.name=resnet18", "model.pretrained=none", "data.input_size=64"])
    config.data.store_size = 64
    module = CxrModule(config, ["Effusion"], Preprocessing.from_config(config.data))
    pixels = torch.from_numpy(np.stack([store.images[i] for i in range(4)]))[:, None]
    target = torch.zeros(4, 1)
    assert module.on_after_batch_transfer((pixels, target), 0)[0] is pixels  # validation: untouched
    draws = torch.tensor([module.train_view.draw(torch.Generator().manual_seed(i)) for i in range(4)])
    augmented, same_target = module.on_after_batch_transfer((pixels, target, draws), 0)
    assert same_target is target and augmented.dtype == torch.uint8 and not torch.equal(augmented, pixels)
    expected = [module.train_view(store.images[i], torch.Generator().manual_seed(i)) for i in range(4)]
    assert (augmented[:, 0].int() - torch.from_numpy(np.stack(expected)).int()).abs().max() <= 1


def test_bad_batches_are_refused():
    view = TrainView(8)
    with pytest.raises(ValueError, match="uint8"):
        augment_batch(torch.zeros(2, 1, 8, 8), torch.zeros(2, DRAWS), view)
    with pytest.raises(ValueError, match="draws"):
        augment_batch(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.zeros(2, 5), view)


def test_the_device_path_is_chosen_by_config():
    from cxr.training.fit import augment_on_device

    assert augment_on_device(load_config(None, []), on_gpu=True)
    assert not augment_on_device(load_config(None, []), on_gpu=False)
    assert augment_on_device(load_config(None, ["data.augment_on=device"]), on_gpu=False)
    assert not augment_on_device(load_config(None, ["data.augment_on=cpu"]), on_gpu=True)
