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
import threading
import time
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from cxr.errors import CxrError, ImageDecodeError, ImageTooLargeError
from cxr.imaging.geometry import crop_square
from cxr.imaging.pixels import color_to_gray, to_uint8

DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


def is_dicom(data: bytes, name: str = "") -> bool:
    """DICOM by suffix (``.dcm``, ``.dicom``) or by the ``DICM`` magic at offset 128 (PS3.10 file preamble)."""
    return Path(name).suffix.lower() in DICOM_SUFFIXES or data[128:132] == b"DICM"


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
        return to_uint8(np.asarray(image))
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
    return color_to_gray(pixels) if pixels.ndim == 3 else to_uint8(pixels)  # BGR(A), 8 or 16 bits


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
        # Local: DICOM support loads only when a DICOM file comes (and tests swap the module in sys.modules).
        from cxr.imaging.dicom import read_dicom

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


def preprocess(gray: np.ndarray, size: int, crop: float = 1.0) -> np.ndarray:
    """Center-crop ``crop`` of the shorter side, then area-resize to ``size`` x ``size`` (uint8).

    Area interpolation averages every source pixel into the output, unlike the original project's nearest-neighbour
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


def load(source: str | Path | bytes, size: int, crop: float = 1.0, name: str | None = None) -> np.ndarray:
    """Decode and preprocess in one call: what a store row holds for this image."""
    return preprocess(decode_grayscale(source, name=name), size, crop)


def init_decode_worker(parent: int | None = None) -> None:
    """Initializer of a process that decodes images for ``parent`` (``cxr prepare``'s and ``cxr predict``'s pools):
    one OpenCV thread (its own threads would only compete with the other workers), OpenCV's warnings off (a corrupt
    file is reported by the caller), and an exit when ``parent`` is gone, so a worker blocked on its queue does not
    outlive a killed command."""
    cv2.setNumThreads(1)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    while True:
        time.sleep(0.5)
        try:
            os.kill(parent, 0)
        except (ProcessLookupError, PermissionError):  # gone (or its pid reused by another user's process)
            os._exit(1)
