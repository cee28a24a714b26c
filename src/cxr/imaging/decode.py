"""The one decode and preprocessing path, shared by ``cxr prepare`` and by inference (``predict``, ``serve``).

A radiograph becomes 8-bit grayscale (RGB/RGBA -> L by ITU-R 601-2 luma, 16-bit -> 8-bit by the image's own range),
is center-cropped to a square of ``crop`` times its shorter side, and area-resized to ``size`` x ``size``. Training
and inference must see the same pixels, so nothing else in the package decodes or resizes an image.

NIH ChestX-ray14 PNGs are 1024x1024 8-bit grayscale (one of the sample's, ``00000100_000.png``, is RGBA). The
decoder (OpenCV for PNG/JPEG pixels, Pillow for headers and other formats) and the resizer (OpenCV's ``INTER_AREA``)
were chosen by ``benchmarks/prepare.py``; see ``docs/benchmarks.md``.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.errors import CxrError

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


class ImageDecodeError(CxrError):
    """An image that cannot be decoded: empty, truncated, corrupt, unsupported, or too large."""


class ImageTooLargeError(ImageDecodeError):
    """An image over Pillow's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``)."""


def is_dicom(data: bytes, name: str = "") -> bool:
    """DICOM by suffix (``.dcm``, ``.dicom``) or by the ``DICM`` magic at offset 128 (PS3.10 file preamble)."""
    return Path(name).suffix.lower() in DICOM_SUFFIXES or data[128:132] == b"DICM"


def _to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Map a deeper image to 8 bits by its own range (min -> 0, max -> 255); a flat image becomes all zeros."""
    if pixels.dtype == np.uint8:
        return pixels
    low, high = float(pixels.min()), float(pixels.max())
    if high <= low:
        return np.zeros(pixels.shape, dtype=np.uint8)
    scaled = (pixels.astype(np.float32) - low) * np.float32(255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def color_to_gray(pixels: np.ndarray, rgb: bool = False) -> np.ndarray:
    """Colour ``(H, W, C)`` -> 8-bit grey: ITU-R 601-2 luma (Pillow's ``L`` weights, in OpenCV's fixed point), then
    deeper images by their own range, as :func:`_to_uint8` maps grey ones. The package's one colour conversion.

    Channels are BGR(A), as OpenCV decodes, or RGB(A) with ``rgb`` (DICOM RGB, YBR and PALETTE COLOR). Depths that
    ``cv2.cvtColor`` does not take (32-bit integers, float64) go through float32, plenty for an 8-bit result.
    """
    if pixels.dtype not in (np.uint8, np.uint16, np.float32):
        pixels = pixels.astype(np.float32)
    codes = {3: cv2.COLOR_RGB2GRAY, 4: cv2.COLOR_RGBA2GRAY} if rgb else {3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}
    code = codes.get(pixels.shape[2])
    return _to_uint8(cv2.cvtColor(pixels, code) if code is not None else pixels[..., 0])


def _open_checked(data: bytes, name: str) -> Image.Image:
    """Open an image lazily (header only) and refuse it before decoding if it exceeds the decompression-bomb limit."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, with a clear error
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(f"{name}: too large to decode safely ({error})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{name}: not an image Pillow can read (unknown or corrupt format)") from None
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        raise ImageTooLargeError(f"{name}: {image.width}x{image.height} pixels exceeds the limit of {limit}")
    return image


def _pixels_pillow(image: Image.Image) -> np.ndarray:
    image.load()
    if image.mode in ("L", "I;16", "I;16B", "I;16L", "I", "F"):
        return _to_uint8(np.asarray(image))
    if image.mode in ("1", "P", "PA", "LA", "La"):
        # Palette and bilevel images first become L; with alpha, the alpha is dropped.
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB").convert("L"))  # RGB, RGBA, CMYK, YCbCr ...


def _decode_pillow(data: bytes, name: str) -> np.ndarray:
    return _pixels_pillow(_open_checked(data, name))


def _decode_opencv(data: bytes, name: str) -> np.ndarray:
    """PNG and JPEG pixels by OpenCV; the header, the bomb check and any other format by Pillow."""
    image = _open_checked(data, name)
    if image.format not in ("PNG", "JPEG"):
        return _pixels_pillow(image)
    pixels = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if pixels is None:
        raise ImageDecodeError(f"{name}: truncated or corrupt image")
    return color_to_gray(pixels) if pixels.ndim == 3 else _to_uint8(pixels)  # BGR(A), 8 or 16 bits


DECODERS = {"pillow": _decode_pillow, "opencv": _decode_opencv}
DECODER = "opencv"
"""The decoder in use, chosen by ``benchmarks/prepare.py``: OpenCV decodes NIH's PNGs ~8% faster than Pillow on a
16-core machine (``docs/benchmarks.md``). Colour images may differ from Pillow's luma by 1 (rounding)."""


def decode_grayscale(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Decode a PNG, JPEG (anything Pillow reads) or DICOM file into an 8-bit grayscale ``(H, W)`` array.

    ``source`` is a path or the file's bytes; ``name`` labels error messages (default: the path). DICOM is
    recognised by suffix or magic and delegated to :func:`cxr.imaging.dicom.read_dicom`. Raises
    :class:`ImageDecodeError` (with the name and the reason) for an empty, truncated or corrupt file, and
    :class:`ImageTooLargeError` above Pillow's decompression-bomb limit, which a server lowers to bound memory.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, name = bytes(source), name or "<bytes>"
    else:
        name = name or os.fspath(source)
        try:
            data = Path(source).read_bytes()
        except OSError as error:
            raise ImageDecodeError(f"{name}: cannot read ({error.strerror or error})") from None
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    if is_dicom(data, name):
        from cxr.imaging.dicom import read_dicom  # lazy: pydicom is only needed for DICOM

        try:
            pixels = read_dicom(source, name=name)
        except CxrError:
            raise
        except Exception as error:  # pydicom raises many types for malformed files
            raise ImageDecodeError(f"{name}: unreadable DICOM ({error})") from None
    else:
        try:
            pixels = DECODERS[DECODER](data, name)
        except ImageDecodeError:
            raise
        except (OSError, ValueError, SyntaxError, EOFError) as error:  # Pillow's ways of saying "truncated/corrupt"
            raise ImageDecodeError(f"{name}: truncated or corrupt image ({error})") from None
    if pixels.ndim != 2 or pixels.dtype != np.uint8 or 0 in pixels.shape:
        raise ImageDecodeError(f"{name}: decoded to an unusable array {pixels.dtype}{pixels.shape}")
    return pixels


def crop_square(width, height, crop: float):
    """The centered square kept by ``crop`` (fraction of the shorter side): ``(left, top, side)`` in pixels.

    Works on scalars or arrays of sizes (one per image); rounding is half-to-even, as Python's ``round``.
    """
    if not 0 < crop <= 1:
        raise CxrError(f"crop must be a fraction in (0, 1], got {crop}")
    width, height = np.asarray(width, dtype=np.int64), np.asarray(height, dtype=np.int64)
    side = np.maximum(1, np.rint(crop * np.minimum(width, height))).astype(np.int64)
    return (width - side) // 2, (height - side) // 2, side


def preprocess(gray: np.ndarray, size: int, crop: float = 1.0) -> np.ndarray:
    """Center-crop ``crop`` of the shorter side, then area-resize to ``size`` x ``size`` (uint8).

    Area interpolation averages every source pixel into the output, unlike the seed project's nearest-neighbour
    resize, which drops most of them and aliases fine structure (nodules, interstitial texture).
    """
    if size < 1:
        raise CxrError(f"size must be a positive number of pixels, got {size}")
    height, width = gray.shape
    left, top, side = (int(v) for v in crop_square(width, height, crop))
    square = gray[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)


def box_to_store(x, y, w, h, source_width, source_height, crop: float, size: int):
    """Map a box from source pixels (NIH ``BBox_List_2017.csv``: x, y, w, h in the PNG's pixels) to store pixels.

    Works on scalars or NumPy arrays (sizes per box too). The box is clipped to the stored square, so a box partly
    outside the crop shrinks, and one wholly outside it gets zero width or height. Returns floats ``(x, y, w, h)``.
    """
    left, top, side = crop_square(source_width, source_height, crop)
    scale = size / side
    x, y, w, h = (np.asarray(v, dtype=np.float64) for v in (x, y, w, h))
    x0, x1 = (np.clip((v - left) * scale, 0, size) for v in (x, x + w))
    y0, y1 = (np.clip((v - top) * scale, 0, size) for v in (y, y + h))
    result = (x0, y0, x1 - x0, y1 - y0)
    return tuple(float(v) for v in result) if np.ndim(x0) == 0 else result


def load(source: str | Path | bytes, size: int, crop: float = 1.0, name: str | None = None) -> np.ndarray:
    """Decode and preprocess in one call: what a store row holds for this image."""
    return preprocess(decode_grayscale(source, name=name), size, crop)
