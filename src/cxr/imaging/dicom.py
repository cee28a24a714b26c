"""DICOM → 8-bit grayscale, the way a radiology viewer would display the image.

NIH ChestX-ray14 ships PNGs, but a deployed model meets DICOM, as a PACS exports it. The display pipeline of DICOM
PS3.3 C.11 is applied in order: decode the first frame, Modality LUT / rescale (C.11.1), VOI LUT or window
center/width (C.11.2), then MONOCHROME1 is inverted so that, as in NIH's PNGs, air is dark and bone is bright. The
VOI output is mapped to 0-255 by its nominal range; an image without any VOI is mapped by its own value range
("16-bit → 8-bit by range", as ``prepare`` does for 16-bit PNGs), except 8-bit data, which is already
display-ready and kept as is. Colour images (RGB, YBR, PALETTE COLOR: screenshots, secondary captures, ultrasound)
become luminance through :func:`cxr.imaging.pixels.color_to_gray`, the conversion PNG/JPEG colour images go through.

Decoding is pydicom's: native (little/big endian, deflated) and RLE by pydicom itself, JPEG baseline by Pillow, the
other compressed transfer syntaxes (PS3.5 A.4) by the codec packages the install carries: pylibjpeg-libjpeg (JPEG
extended and lossless, JPEG-LS) and pylibjpeg-openjpeg (JPEG 2000, HTJ2K); pylibjpeg-rle, faster for RLE, is used
if present. A file that cannot become an image is refused with a :class:`DicomError` whose message is one line
naming the file and the reason (no pixel data, truncated pixel data, a codec that is not installed, a corrupt
codestream, a broken header). ``benchmarks/dicom_corpus.py`` counts how many real-world files get through.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np

from cxr.errors import ImageDecodeError, ImageTooLargeError
from cxr.imaging.pixels import color_to_gray

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# What pydicom hands back as RGB (PS3.3 C.7.6.3.1.2): YBR_FULL(_422) it converts itself, YBR_RCT/YBR_ICT are
# undone by the JPEG 2000 codec (the multiple component transform of ISO 15444-1 Annex G).
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT")
JPEG_CODEC = "pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg)"
J2K_CODEC = "pylibjpeg-openjpeg (pip install pylibjpeg pylibjpeg-openjpeg)"
CODECS = {
    "1.2.840.10008.1.2.4.50": JPEG_CODEC,  # JPEG Baseline (Pillow also decodes it)
    "1.2.840.10008.1.2.4.51": JPEG_CODEC,  # JPEG Extended, 12-bit: Pillow cannot
    "1.2.840.10008.1.2.4.57": JPEG_CODEC,  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": JPEG_CODEC,  # JPEG Lossless, first-order prediction (SV1)
    "1.2.840.10008.1.2.4.80": JPEG_CODEC,  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": JPEG_CODEC,  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": J2K_CODEC,  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": J2K_CODEC,  # JPEG 2000
    "1.2.840.10008.1.2.4.201": J2K_CODEC,  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": J2K_CODEC,  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": J2K_CODEC,  # HTJ2K
}
"""The codec package to install for each compressed transfer syntax, named in refusals."""


class DicomError(ImageDecodeError):
    """A DICOM file that cannot be turned into a grayscale radiograph (corrupt, no pixels, unsupported)."""


class DicomTooLargeError(DicomError, ImageTooLargeError):
    """A DICOM image over Pillow's decompression-bomb limit, refused before its pixels are decoded."""


def read_dicom(source: str | Path | bytes, name: str | None = None) -> np.ndarray:
    """Decode a DICOM file (path or bytes) into a display-ready ``uint8`` array ``(H, W)``.

    Multi-frame images give their first frame (a radiograph has one; for a series or cine loop the first frame is
    as good as any and decoding only it keeps memory bounded); colour images are converted to luminance. Raises
    :class:`DicomError` with a one-line message naming the file (``name``, default the path) for anything that is
    not a decodable image, and :class:`DicomTooLargeError` for images larger than Pillow's decompression-bomb limit
    (``PIL.Image.MAX_IMAGE_PIXELS``).
    """
    name = name or ("<bytes>" if isinstance(source, bytes | bytearray) else str(source))
    with warnings.catch_warnings():
        # pydicom warns about each oddity it reads past (padding, a VR other than the header says, an invalid
        # value); the file still ends up decoded or refused with its one-line reason, so on a user's terminal the
        # two-line warnings would only bury that line.
        warnings.simplefilter("ignore")
        dataset = _read_dataset(source, name)
        try:
            return dataset_to_gray(dataset, name)
        except DicomError:
            raise
        except Exception as error:  # a malformed attribute that pydicom only notices when it is used
            raise DicomError(f"{name}: malformed DICOM ({type(error).__name__}: {_one_line(error)})") from error


def _read_dataset(source: str | Path | bytes, name: str):
    import pydicom
    from pydicom.errors import InvalidDicomError

    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    try:
        return pydicom.dcmread(stream)
    except InvalidDicomError:
        # Files written without the 128-byte preamble (PS3.10 7.1) are still common (old PACS exports); accept them
        # only if forcing the read finds an image in them.
        if isinstance(stream, io.BytesIO):
            stream.seek(0)
        try:
            return pydicom.dcmread(stream, force=True)
        except Exception as error:  # pydicom raises many types for garbage input
            raise DicomError(f"{name}: not a DICOM file ({_one_line(error)})") from error
    except Exception as error:  # a header cut short or corrupt: EOFError, OSError, ValueError, struct.error ...
        raise DicomError(f"{name}: cannot read DICOM header ({_one_line(error)})") from error


def dataset_to_gray(dataset, name: str = "<dataset>") -> np.ndarray:
    """Apply the DICOM display pipeline (PS3.3 C.11) to a pydicom ``Dataset``; return ``uint8 (H, W)``."""
    if not any(keyword in dataset for keyword in PIXEL_KEYWORDS):
        raise DicomError(f"{name}: DICOM file has no pixel data (is it an image?)")
    _check_size(dataset, name)
    pixels, photometric = _decode_first_frame(dataset, name)
    if photometric == "PALETTE COLOR":
        return _palette_to_gray(pixels, dataset, name)
    if photometric in COLOUR:
        return _colour_to_gray(pixels, photometric, name)
    if photometric not in MONOCHROME:
        raise DicomError(f"{name}: unsupported photometric interpretation {photometric!r}")
    if pixels.ndim != 2:
        raise DicomError(f"{name}: expected one grayscale frame, got pixel array of shape {pixels.shape}")
    return _monochrome_to_gray(pixels, dataset, photometric, name)


def _monochrome_to_gray(pixels: np.ndarray, dataset, photometric: str, name: str) -> np.ndarray:
    """Modality LUT (C.11.1), VOI LUT or window (C.11.2), then MONOCHROME1 inverted (C.7.6.3.1.2)."""
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
    except (ValueError, KeyError, IndexError, NotImplementedError, AttributeError, TypeError) as error:
        raise DicomError(f"{name}: invalid Modality/VOI LUT or window ({_one_line(error)})") from error

    gray = _to_uint8(np.asarray(values, dtype=np.float64), low, high)
    if photometric == "MONOCHROME1":
        # MONOCHROME1: the minimum value is displayed white; NIH's PNGs and our models expect air dark.
        gray = 255 - gray
    return gray


def _image_int(dataset, keyword: str, name: str, default: int | None = None) -> int:
    """An integer attribute of the Image Pixel module (PS3.3 C.7.6.3), refused cleanly when missing or invalid."""
    try:
        value = dataset.get(keyword, default)
    except Exception as error:  # pydicom in strict validation mode raises on the invalid value itself
        raise DicomError(f"{name}: invalid {keyword} ({_one_line(error)})") from error
    if value is None or value == "":
        if default is None:
            raise DicomError(f"{name}: DICOM image has no {keyword} (0028 group incomplete)")
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DicomError(f"{name}: invalid {keyword} value {str(value)!r}") from None


def _check_size(dataset, name: str) -> None:
    """Refuse decompression bombs before decoding: the same pixel budget Pillow enforces for PNG/JPEG."""
    from PIL import Image

    rows, columns = _image_int(dataset, "Rows", name, 0), _image_int(dataset, "Columns", name, 0)
    if rows <= 0 or columns <= 0:
        raise DicomError(f"{name}: DICOM image has no Rows/Columns (pixel data without an image size)")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and rows * columns > limit:
        raise DicomTooLargeError(
            f"{name}: image of {columns}x{rows} pixels exceeds the decompression-bomb limit ({limit})"
        )


def _decode_first_frame(dataset, name: str) -> tuple[np.ndarray, str]:
    """Frame 0 as pydicom decodes it (``raw=False``: YBR_FULL/YBR_FULL_422 become RGB), and its photometric
    interpretation after decoding, which is what the array holds."""
    syntax = _transfer_syntax(dataset, name)
    decoder = _decoder(syntax, name)
    source = _with_decodable_frame_count(dataset, syntax, name)
    try:
        pixels, properties = decoder.as_array(source, index=0)
    except Exception as error:  # codecs raise anything from RuntimeError to their own types
        hint = ""
        if syntax in CODECS and "pylibjpeg" not in decoder.available_plugins:
            hint = f"; {CODECS[syntax].split(' (')[0]} is not installed and may decode it"
        raise DicomError(f"{name}: cannot decode {syntax.name} pixel data ({_one_line(error)}){hint}") from error
    except BaseException as error:
        # Codecs written in Rust (pylibjpeg-rle 2.2) panic on corrupt data, and pyo3 raises the panic as a
        # BaseException, which neither pydicom's plugin fallback nor `except Exception` catches.
        if type(error).__name__ != "PanicException":
            raise
        raise DicomError(f"{name}: corrupt {syntax.name} pixel data (the codec crashed: {_one_line(error)})") from None
    default = "MONOCHROME2" if pixels.ndim == 2 else "RGB"
    photometric = str(properties.get("photometric_interpretation") or default).upper()
    return pixels, photometric


def _transfer_syntax(dataset, name: str):
    """The transfer syntax of the file meta (PS3.10 7.1), or, for a bare dataset without one, the encoding
    pydicom found while parsing it: that can only be a native one, so compressed data without a syntax is refused.
    """
    from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    syntax = getattr(dataset, "file_meta", {}).get("TransferSyntaxUID")
    if syntax:
        return UID(syntax)
    keyword = next(k for k in PIXEL_KEYWORDS if k in dataset)
    if dataset[keyword].is_undefined_length:
        raise DicomError(f"{name}: compressed (encapsulated) pixel data but no Transfer Syntax UID to decode it")
    implicit, little = getattr(dataset, "original_encoding", (True, True))
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little is not False else ExplicitVRBigEndian


def _decoder(syntax, name: str):
    """pydicom's decoder for ``syntax``; refuses a syntax nothing decodes, or whose codec is not installed."""
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise DicomError(f"{name}: transfer syntax {syntax.name} ({syntax}) is not supported (no decoder)") from None
    if not decoder.is_available:
        needed = CODECS.get(syntax) or "; ".join(decoder.missing_dependencies)
        raise DicomError(f"{name}: transfer syntax {syntax.name} needs a codec that is not installed: {needed}")
    return decoder


def _with_decodable_frame_count(dataset, syntax, name: str):
    """The dataset, or a shallow copy whose Number of Frames matches the native pixel data actually there.

    Native pixel data is the frames end to end (PS3.5 8.1.1), so the first frame needs only its own bytes. When
    those are missing the file is truncated and refused; when they are there but Number of Frames (0028,0008) is
    not a number, or promises more frames than the data holds (a multi-frame file cut short), the first frame is
    still intact and is decoded. Encapsulated data is left to the codec (its fragments say where frames end).
    """
    if syntax.is_encapsulated:
        _image_int(dataset, "NumberOfFrames", name, 1)  # refuses a broken count: fragments cannot settle it
        return dataset
    try:
        declared = max(_image_int(dataset, "NumberOfFrames", name, 1), 1)
    except DicomError:
        declared = None  # a broken value: the data says how many frames there are
    present = _native_frames_present(dataset, name)
    if declared is not None and declared <= present:
        return dataset
    from pydicom.dataset import Dataset

    copy = Dataset()
    copy.update(dataset)  # a new element dict: the caller's dataset is left as it was
    copy.file_meta = getattr(dataset, "file_meta", Dataset())
    copy.NumberOfFrames = present
    return copy


def _native_frames_present(dataset, name: str) -> int:
    """How many whole frames the native pixel data holds; refuses data too short for even one (truncated)."""
    keyword = next(k for k in PIXEL_KEYWORDS if k in dataset)
    samples = _image_int(dataset, "SamplesPerPixel", name, 1)
    if str(dataset.get("PhotometricInterpretation", "")).upper() == "YBR_FULL_422":
        samples = 2  # two chroma samples per two luma samples (PS3.3 C.7.6.3.1.2)
    bits = {"FloatPixelData": 32, "DoubleFloatPixelData": 64}.get(keyword) or _image_int(dataset, "BitsAllocated", name)
    frame_bits = _image_int(dataset, "Rows", name) * _image_int(dataset, "Columns", name) * samples * bits
    available = len(dataset[keyword].value or b"") * 8
    if available < frame_bits:
        raise DicomError(
            f"{name}: truncated pixel data ({available // 8} of the {-(-frame_bits // 8)} bytes of one frame)"
        )
    return available // frame_bits


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
    """RGB (pydicom or the codec has already turned YBR into RGB) → luminance, as PNG/JPEG colour images."""
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise DicomError(f"{name}: unsupported photometric interpretation {photometric!r} (shape {pixels.shape})")
    return color_to_gray(np.ascontiguousarray(pixels), rgb=True)


def _palette_to_gray(pixels: np.ndarray, dataset, name: str) -> np.ndarray:
    """PALETTE COLOR: each stored value indexes the red, green and blue Palette Color LUTs (PS3.3 C.7.6.3.1.5,
    C.7.9; segmented LUTs too, C.7.9.2); the RGB they give becomes luminance like any colour image. A 16-bit LUT
    is mapped by its range, so tables declared 16-bit but filled with 8-bit values still show."""
    from pydicom.pixels import apply_color_lut

    if pixels.ndim != 2:
        raise DicomError(f"{name}: PALETTE COLOR needs one sample per pixel, got pixel array of shape {pixels.shape}")
    try:
        rgb = apply_color_lut(pixels, dataset)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as error:
        raise DicomError(f"{name}: invalid Palette Color Lookup Table ({_one_line(error)})") from error
    return color_to_gray(np.ascontiguousarray(rgb), rgb=True)


def _one_line(error: BaseException | str) -> str:
    """An exception's message on one line: codecs and pydicom list their reasons over several."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines).replace(":;", ":") or type(error).__name__
