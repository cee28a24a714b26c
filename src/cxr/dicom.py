"""DICOM → 8-bit grayscale, the way a radiology viewer would display the image.

NIH ChestX-ray14 ships PNGs, but a deployed model meets DICOM. The display pipeline of DICOM PS3.3 C.11
is applied in order: decode (any transfer syntax pydicom can decode with its own RLE codec, Pillow or
pylibjpeg), Modality LUT / rescale (C.11.1), VOI LUT or window center/width (C.11.2), then MONOCHROME1
is inverted so that, as in NIH's PNGs, air is dark and bone is bright. The VOI output is mapped to 0-255 by
its nominal range; an image without any VOI is mapped by its own value range ("16-bit → 8-bit by range", as
``prepare`` does for 16-bit PNGs), except 8-bit data, which is already display-ready and kept as is.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cxr.imaging import ImageDecodeError, ImageTooLargeError


class DicomError(ImageDecodeError):
    """A DICOM file that cannot be turned into a grayscale radiograph (corrupt, no pixels, unsupported)."""


class DicomTooLargeError(DicomError, ImageTooLargeError):
    """A DICOM image over Pillow's decompression-bomb limit, refused before its pixels are decoded."""


def read_dicom(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Decode a DICOM file (path or bytes) into a display-ready ``uint8`` array ``(H, W)``.

    Multi-frame images give their first frame; colour images (rare for radiographs) are converted to
    luminance. Raises :class:`DicomError` naming the file (``name``, default the path) for anything that is not
    a decodable image, and :class:`DicomTooLargeError` for images larger than Pillow's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    name = name or ("<bytes>" if isinstance(source, bytes | bytearray) else str(source))
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        dataset = pydicom.dcmread(stream)
    except InvalidDicomError:
        # Files written without the 128-byte preamble are still common (old PACS exports); accept them only
        # if forcing the read finds an image in them.
        if isinstance(stream, io.BytesIO):
            stream.seek(0)
        try:
            dataset = pydicom.dcmread(stream, force=True)
        except Exception as error:  # pydicom raises many types for garbage input
            raise DicomError(f"{name}: not a DICOM file ({error})") from error
    except (OSError, EOFError, ValueError, TypeError, KeyError) as error:
        raise DicomError(f"{name}: cannot read DICOM ({error})") from error
    return dataset_to_gray(dataset, name)


def dataset_to_gray(dataset, name: str = "<dataset>") -> np.ndarray:
    """Apply the DICOM display pipeline (PS3.3 C.11) to a pydicom ``Dataset``; return ``uint8 (H, W)``."""
    if "PixelData" not in dataset and "FloatPixelData" not in dataset:
        raise DicomError(f"{name}: DICOM file has no pixel data (is it an image?)")
    _check_size(dataset, name)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    pixels = _decode_first_frame(dataset, name)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return _colour_to_gray(pixels, photometric, name)
    if pixels.ndim != 2:
        raise DicomError(f"{name}: expected one grayscale frame, got pixel array of shape {pixels.shape}")

    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        values = apply_modality_lut(pixels, dataset)
        has_voi = bool(dataset.get("VOILUTSequence")) or ("WindowCenter" in dataset and "WindowWidth" in dataset)
        if has_voi:
            low, high = _voi_output_range(dataset)
            values = apply_voi_lut(values, dataset, index=0, prefer_lut=True)
        elif _is_display_ready(dataset):
            low, high = 0.0, 255.0
        else:
            low, high = float(np.min(values)), float(np.max(values))
    except (ValueError, KeyError, IndexError, NotImplementedError, AttributeError) as error:
        raise DicomError(f"{name}: invalid Modality/VOI LUT or window ({error})") from error

    gray = _to_uint8(np.asarray(values, dtype=np.float64), low, high)
    if photometric == "MONOCHROME1":
        # MONOCHROME1: the minimum value is displayed white; NIH's PNGs and our models expect air dark.
        gray = 255 - gray
    return gray


def _check_size(dataset, name: str) -> None:
    """Refuse decompression bombs before decoding: the same pixel budget Pillow enforces for PNG/JPEG."""
    from PIL import Image

    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows <= 0 or columns <= 0:
        raise DicomError(f"{name}: DICOM image has no Rows/Columns")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and rows * columns > limit:
        raise DicomTooLargeError(
            f"{name}: image of {columns}x{rows} pixels exceeds the decompression-bomb limit ({limit})"
        )


def _decode_first_frame(dataset, name: str) -> np.ndarray:
    from pydicom.pixels import pixel_array

    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    try:
        # Decoding only frame 0 keeps memory bounded for multi-frame files.
        return pixel_array(dataset, index=0) if frames > 1 else dataset.pixel_array
    except Exception as error:  # codecs raise anything from RuntimeError to their own types
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        what = f"transfer syntax {syntax.name if syntax is not None else 'unknown'}"
        raise DicomError(f"{name}: cannot decode pixel data ({what}): {error}") from error


def _voi_output_range(dataset) -> tuple[float, float]:
    """The output range of the VOI transform, as PS3.3 C.11.2 defines it (and pydicom implements it).

    A VOI LUT's range is read from its data (many files declare 16 bits per entry but use 12); a window's
    range is the stored-value range, carried through the rescale when one applies.
    """
    sequence = dataset.get("VOILUTSequence")
    if sequence:
        item = sequence[0]
        from pydicom.pixels import apply_voi

        descriptor = list(item.LUTDescriptor)
        entries = descriptor[0] or 2**16
        lut = apply_voi(np.arange(descriptor[1], descriptor[1] + entries, dtype=np.int64), dataset)
        return float(lut.min()), float(lut.max())
    bits = int(dataset.get("BitsStored", 8))
    if dataset.get("ModalityLUTSequence"):
        low, high = 0.0, float(2 ** int(dataset.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(dataset.get("PixelRepresentation", 0)) == 0:
        low, high = 0.0, float(2**bits - 1)
    else:
        low, high = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    if slope is not None and intercept is not None and not dataset.get("ModalityLUTSequence"):
        low, high = sorted((low * float(slope) + float(intercept), high * float(slope) + float(intercept)))
    return low, high


def _is_display_ready(dataset) -> bool:
    """8-bit unsigned pixels without a rescale are display values already: keep them as they are."""
    rescaled = float(dataset.get("RescaleSlope", 1) or 1) != 1 or float(dataset.get("RescaleIntercept", 0) or 0) != 0
    return (
        int(dataset.get("BitsStored", 8)) <= 8
        and int(dataset.get("PixelRepresentation", 0)) == 0
        and not rescaled
        and not dataset.get("ModalityLUTSequence")
    )


def _to_uint8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if not np.isfinite(values).all():
        values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    if high <= low:
        # A constant image: nothing to stretch; show it black rather than dividing by zero.
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _colour_to_gray(pixels: np.ndarray, photometric: str, name: str) -> np.ndarray:
    """RGB / YBR (pydicom converts YBR to RGB when decoding) → ITU-R 601 luminance, as Pillow's ``L``."""
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise DicomError(f"{name}: unsupported photometric interpretation {photometric!r} (shape {pixels.shape})")
    rgb = pixels.astype(np.float64)
    if pixels.dtype != np.uint8:
        rgb = (rgb - rgb.min()) * (255.0 / max(float(rgb.max() - rgb.min()), 1.0))
    luminance = rgb @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.rint(luminance), 0, 255).astype(np.uint8)
