"""The train/predict contract: how a source radiograph becomes the model's input, in one frozen type.

A model is trained on, and must be fed, exactly one view of a radiograph (``docs/architecture.md``, "Model input"):

1. the store step, shared with ``cxr prepare``: the centered square of ``crop`` times the shorter side, area-resized
   to ``store_size`` (:func:`cxr.imaging.decode.preprocess`);
2. the eval view: ``resize`` to ``input_size`` or ``center_crop`` it (CheXNet's 256 → 224);
3. uint8 → float32 in ``[0, 1]`` (:data:`PIXEL_SCALE`); the channel repeat and the mean/std normalisation that match
   the weights live inside the model (``cxr.models``), so an ONNX export carries them too.

:class:`Preprocessing` owns all three, the geometry that follows from them (which square of the source the input
shows, where a box lands in the input) and the check that a store was made for it. It is built from a config when
training, written into the checkpoint and the ONNX metadata as a plain dict, and read back from them by every
consumer: training and validation, ``evaluate``, ``predict`` (torch or onnxruntime), Grad-CAM, ``localize`` and
``serve``. The role timm's ``PretrainedCfg`` / ``resolve_data_config`` and open_clip's ``PreprocessCfg`` play there.

NumPy and OpenCV only: the ONNX deployment path imports this module without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from cxr.config import DataConfig, EvalView
from cxr.errors import CxrError
from cxr.imaging.decode import preprocess
from cxr.imaging.geometry import crop_square

PIXEL_SCALE = 255.0
"""Model inputs are uint8 pixels divided by this: float32 in ``[0, 1]``."""

LEGACY_KEYS = frozenset({"mean", "std"})
"""Written by cxr before the normalisation was known to live only inside the model; read and ignored."""


def to_unit(pixels):
    """uint8 pixels → float32 in ``[0, 1]``: a NumPy array, or a torch tensor (on its device, without a copy back)."""
    if isinstance(pixels, np.ndarray):
        return pixels.astype(np.float32) / np.float32(PIXEL_SCALE)
    return pixels.float().div_(PIXEL_SCALE)  # torch: the uint8 batch travelled to the device, 4x less to copy


def square_side(image: np.ndarray) -> int:
    """The side of a square uint8 image (a store image); ``ValueError`` for anything else."""
    if image.ndim != 2 or image.shape[0] != image.shape[1] or image.dtype != np.uint8:
        raise ValueError(f"expected a square uint8 image, got {image.dtype} {image.shape}")
    return image.shape[0]


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """A square uint8 image at ``size``: area interpolation when shrinking (no aliasing), bilinear when enlarging."""
    if image.shape[0] == size:
        return image
    interpolation = cv2.INTER_AREA if size < image.shape[0] else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` square of a square image (300 → 224 keeps (38, 38, 262, 262))."""
    side = image.shape[0]
    if side < size:
        raise CxrError(f"cannot center-crop {size} px from a {side} px store image; prepare a larger store")
    offset = (side - size) // 2
    return image[offset : offset + size, offset : offset + size]


def eval_view(store_image: np.ndarray, input_size: int, mode: EvalView | str = EvalView.RESIZE) -> np.ndarray:
    """The deterministic store → model step (uint8 ``input_size`` square): ``resize`` or ``center_crop``."""
    square_side(store_image)
    mode = _eval_view(mode)
    view = resize_square(store_image, input_size) if mode is EvalView.RESIZE else center_crop(store_image, input_size)
    return np.ascontiguousarray(view)


def _eval_view(mode) -> EvalView:
    try:
        return EvalView(mode)
    except ValueError:
        raise CxrError(f"unknown eval transform {mode!r}; choose one of: {', '.join(EvalView)}") from None


@dataclass(frozen=True)
class Preprocessing:
    """Source radiograph → model input: the store's crop and size, the eval view, the input size."""

    store_size: int
    crop: float
    input_size: int
    eval_view: EvalView = EvalView.RESIZE

    def __post_init__(self) -> None:
        object.__setattr__(self, "eval_view", _eval_view(self.eval_view))
        for name in ("store_size", "input_size"):
            if int(getattr(self, name)) < 1:
                raise CxrError(f"preprocessing {name} must be a positive number of pixels, got {getattr(self, name)}")
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "crop", float(self.crop))
        if not 0 < self.crop <= 1:
            raise CxrError(f"preprocessing crop must be in (0, 1], got {self.crop}")
        if self.eval_view is EvalView.CENTER_CROP and self.store_size < self.input_size:
            raise CxrError(
                f"preprocessing: center_crop needs store_size >= input_size, got {self.store_size} < {self.input_size}"
            )

    @classmethod
    def from_config(cls, data: DataConfig) -> Preprocessing:
        """What a training config feeds its model (the store's size and crop come from the store it trains on)."""
        return cls(data.store_size, data.crop, data.input_size, data.eval_transform)

    @classmethod
    def from_dict(cls, block: dict, where: str = "preprocessing") -> Preprocessing:
        """Read the block of a checkpoint or an ONNX export; an unknown or missing key is an error naming it."""
        if not isinstance(block, dict):
            raise CxrError(f"{where}: expected a mapping, got {type(block).__name__}")
        keys = {"store_size", "crop", "input_size", "eval_transform"}
        missing, unknown = sorted(keys - set(block)), sorted(set(block) - keys - LEGACY_KEYS)
        if missing or unknown:
            raise CxrError(f"{where}: missing {missing}, unknown {unknown}")
        return cls(block["store_size"], block["crop"], block["input_size"], block["eval_transform"])

    def to_dict(self) -> dict:
        """Plain types only (a checkpoint loads with ``weights_only=True``; JSON in the ONNX metadata)."""
        return {
            "store_size": self.store_size,
            "crop": self.crop,
            "input_size": self.input_size,
            "eval_transform": self.eval_view.value,
        }

    # The pixels.

    def store_image(self, gray: np.ndarray) -> np.ndarray:
        """A decoded source image (uint8 H×W) → what a store row made for this model holds (uint8, store size)."""
        return preprocess(gray, self.store_size, self.crop)

    def view(self, store_image: np.ndarray) -> np.ndarray:
        """A store image → the model's view of it (uint8 ``input_size`` square)."""
        return eval_view(store_image, self.input_size, self.eval_view)

    def model_input(self, gray: np.ndarray) -> np.ndarray:
        """A decoded source image (uint8 H×W, any size) → model input float32 ``(1, S, S)`` in ``[0, 1]``."""
        return to_unit(self.view(self.store_image(gray)))[None]

    # The geometry.

    def input_region(self, width: int, height: int) -> tuple[float, float, float]:
        """The square of a ``width`` × ``height`` source that the model input shows: ``(left, top, side)``."""
        left, top, side = (float(v) for v in crop_square(width, height, self.crop))
        if self.eval_view is EvalView.CENTER_CROP:
            scale = side / self.store_size
            offset = (self.store_size - self.input_size) // 2
            return left + offset * scale, top + offset * scale, self.input_size * scale
        return left, top, side

    def store_box_to_input(self, x: float, y: float, w: float, h: float) -> tuple[float, float, float, float]:
        """A box in store pixels → model-input pixels: ``resize`` scales it, ``center_crop`` shifts and clips it."""
        if self.eval_view is EvalView.CENTER_CROP:
            offset = (self.store_size - self.input_size) // 2
            x0, y0 = np.clip([x - offset, y - offset], 0, self.input_size)
            x1, y1 = np.clip([x + w - offset, y + h - offset], 0, self.input_size)
        else:
            scale = self.input_size / self.store_size
            x0, y0, x1, y1 = x * scale, y * scale, (x + w) * scale, (y + h) * scale
        return float(x0), float(y0), float(x1 - x0), float(y1 - y0)

    # The store.

    def check_store(self, store) -> None:
        """A model reads only stores made for it (``store.size`` and ``.crop``), never silently another one."""
        if store.size != self.store_size or abs(store.crop - self.crop) > 1e-6:
            raise CxrError(
                f"store {store.path} was prepared at {store.size} px, crop {store.crop}; the model expects "
                f"{self.store_size} px, crop "
                f"{self.crop} (cxr prepare ... --size {self.store_size} --crop {self.crop})"
            )
