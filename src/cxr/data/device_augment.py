"""The training view's random part, batched on the device: rotation, shift, crop and flip in one ``grid_sample``.

With ``data.augment_on=device`` the loader sends uint8 :meth:`TrainView.base` images and the view's draws
(:class:`cxr.data.transforms.DeferredTrainView`); this module turns them into the same uint8 input the CPU path
(:meth:`TrainView.apply`) makes, on whatever device the batch is on. It frees the loader workers of the per-image
``cv2.warpAffine`` and keeps host→device traffic at one byte a pixel.

Same distributions, same geometry: the draws are the CPU path's (same generator, same numbers per image and
epoch), the affine is OpenCV's ``getRotationMatrix2D`` about the pixel centre ``(side/2 - 0.5, side/2 - 0.5)`` plus
the shift, sampled bilinearly with the border repeated (``padding_mode="border"`` is ``BORDER_REPLICATE``), then
the random or centre crop and the flip. Crop and flip are folded into the sampling grid, so each output pixel is
interpolated once, as on the CPU. The one difference: OpenCV's ``warpAffine`` rounds source coordinates to 1/32
pixel and its weights to 15 bits, ``grid_sample`` computes them in float32; after rounding to uint8 (as OpenCV
does), outputs differ by at most one grey level in a few pixels in ten thousand (``tests/data/test_device_augment.py``
bounds it). The [0, 1] scaling stays :func:`cxr.imaging.preprocessing.to_unit`'s, in the LightningModule.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from cxr.data.transforms import DRAWS, TrainView


def augment_batch(pixels: torch.Tensor, draws: torch.Tensor, view: TrainView) -> torch.Tensor:
    """uint8 ``(N, 1, R, R)`` base images and ``(N, DRAWS)`` draws → uint8 ``(N, 1, S, S)`` training inputs.

    ``R`` is the base side (the store's, or ``S`` in ``resize`` mode), ``S`` is ``view.input_size``.
    """
    n, channels, side, width = pixels.shape
    if pixels.dtype != torch.uint8 or channels != 1 or side != width or draws.shape != (n, DRAWS):
        raise ValueError(f"expected uint8 (N, 1, R, R) pixels and (N, {DRAWS}) draws, got {pixels.dtype} "
                         f"{tuple(pixels.shape)} and {tuple(draws.shape)}")  # fmt: skip
    grid = sampling_grid(draws.to(pixels.device, torch.float64), view, side)
    images = F.grid_sample(pixels.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return images.round_().clamp_(0, 255).to(torch.uint8)


def sampling_grid(draws: torch.Tensor, view: TrainView, side: int) -> torch.Tensor:
    """``(N, S, S, 2)`` source positions (``grid_sample``'s normalised x, y) of every output pixel.

    Per image (float64, N numbers each): crop offset, flip, angle, shift; then one float32 grid. Output pixel
    ``(i, j)`` is pixel ``(y0 + i, x0 + j')`` of the jittered base image (``j' = S - 1 - j`` when flipped), which
    OpenCV's forward matrix ``M = [[a, b], [-b, a]]`` (``a, b = cos, sin`` of the angle) about the centre ``c``
    plus shift ``t`` brings from ``M⁻¹ (p - c - t) + c`` of the base image.
    """
    size = view.input_size
    n = draws.shape[0]
    crop_y, crop_x = _crop_offsets(draws, view, side)
    flip = (draws[:, 5] < 0.5) if view.hflip else torch.zeros(n, dtype=torch.bool, device=draws.device)
    steps = torch.arange(size, dtype=torch.float64, device=draws.device)
    cols = torch.where(flip[:, None], size - 1 - steps, steps) + crop_x[:, None]  # (N, S)
    rows = steps[None, :] + crop_y[:, None]  # (N, S)

    centre = side / 2 - 0.5
    angle = (2 * draws[:, 0] - 1) * view.rotation * (math.pi / 180)
    shift_x = (2 * draws[:, 1] - 1) * view.shift * side
    shift_y = (2 * draws[:, 2] - 1) * view.shift * side
    if view.rotation == 0:
        angle = torch.zeros_like(angle)
    if view.shift == 0:
        shift_x, shift_y = torch.zeros_like(shift_x), torch.zeros_like(shift_y)
    cos, sin = (v.float()[:, None, None] for v in (torch.cos(angle), torch.sin(angle)))
    dx = (cols - centre - shift_x[:, None]).float()[:, None, :]  # (N, 1, S): varies along the row
    dy = (rows - centre - shift_y[:, None]).float()[:, :, None]  # (N, S, 1): varies along the column
    source_x = cos * dx - sin * dy + centre
    source_y = sin * dx + cos * dy + centre
    # Pixel centre p ↔ normalised (2p + 1) / side - 1 (align_corners=False).
    return torch.stack(((2 * source_x + 1) / side - 1, (2 * source_y + 1) / side - 1), dim=-1)


def _crop_offsets(draws: torch.Tensor, view: TrainView, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corner of the ``S`` square in the jittered base image: random, central, or (resize) none."""
    size = view.input_size
    if view.random_crop:  # TrainView.apply: int(u * (R - S + 1)), in float64 as there
        span = side - size + 1
        return torch.floor(draws[:, 3] * span), torch.floor(draws[:, 4] * span)
    offset = float((side - size) // 2)  # centre crop; 0 in resize mode, where the base already has the model's size
    zeros = torch.zeros(draws.shape[0], dtype=torch.float64, device=draws.device)
    return zeros + offset, zeros + offset
