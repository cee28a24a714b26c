"""DICOM decoding: real NIH radiographs written as DICOM in every common flavour decode back to the PNG's pixels.

The display pipeline (Modality LUT → VOI LUT / window → MONOCHROME1 inversion) is checked against the
formula of DICOM PS3.3 C.11.2.1.2 written out independently here. The end-to-end check (same probabilities
as the PNG) lives in ``test_predict.py``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cxr.errors import ImageDecodeError
from cxr.imaging.decode import decode_grayscale, is_dicom
from cxr.imaging.dicom import DicomError, DicomTooLargeError, read_dicom

SAMPLE_IMAGE = "00000001_000.png"  # uses the full 0..255 range, so "by range" mapping is the identity


def new_dataset():
    """A minimal Secondary Capture dataset (file meta included) to hang pixel data on."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID = SecondaryCaptureImageStorage
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    return dataset


def to_bytes(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dicom_variants(gray: np.ndarray) -> dict[str, bytes]:
    """The flavours the issue names, each encoding ``gray`` (uint8) so a correct reader recovers it exactly."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEG2000Lossless, RLELossless

    pixels = gray.astype(np.uint16)
    out = {}
    ds = new_dataset()
    ds.set_pixel_data(gray, "MONOCHROME2", 8)
    out["monochrome2-8bit"] = to_bytes(ds)

    ds = new_dataset()
    ds.set_pixel_data(255 - gray, "MONOCHROME1", 8)  # MONOCHROME1: low values are white
    out["monochrome1-8bit"] = to_bytes(ds)

    ds = new_dataset()
    ds.set_pixel_data(pixels * 257, "MONOCHROME2", 16)  # full 16-bit range, no window: mapped by range
    out["monochrome2-16bit"] = to_bytes(ds)

    # 12-bit with a LINEAR window over the stored range 0..4080: ((x - (c - .5)) / (w - 1) + .5) * 255 = x / 16
    ds = new_dataset()
    ds.set_pixel_data(pixels * 16, "MONOCHROME2", 12)
    ds.WindowCenter, ds.WindowWidth = 2040.5, 4081
    out["monochrome2-12bit-window"] = to_bytes(ds)

    ds = new_dataset()
    ds.set_pixel_data((255 - pixels) * 16, "MONOCHROME1", 12)
    ds.WindowCenter, ds.WindowWidth = 2040.5, 4081
    out["monochrome1-12bit-window"] = to_bytes(ds)

    # Rescale (Modality LUT) then window in rescaled units: value = 2 * stored - 1000 = 16 * gray, and a
    # LINEAR_EXACT window ((v - c) / w + .5) with c = 2040, w = 4080 gives v / 4080 = gray / 255.
    ds = new_dataset()
    ds.set_pixel_data(pixels * 8 + 500, "MONOCHROME2", 12)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.VOILUTFunction = "LINEAR_EXACT"
    ds.WindowCenter, ds.WindowWidth = 2040, 4080
    out["rescale-window"] = to_bytes(ds)

    # VOI LUT sequence: a 12-bit → 16-bit table equivalent to x // 16 in 8 bits.
    from pydicom.dataset import Dataset

    ds = new_dataset()
    ds.set_pixel_data(pixels * 16, "MONOCHROME2", 12)
    item = Dataset()
    item.add_new("LUTDescriptor", "US", [4096, 0, 16])  # ambiguous VRs (US/SS, US/OW): say which
    item.add_new("LUTData", "US", [(value // 16) * 257 for value in range(4096)])
    ds.VOILUTSequence = [item]
    out["voi-lut-sequence"] = to_bytes(ds)

    ds = new_dataset()
    ds.set_pixel_data(gray, "MONOCHROME2", 8)
    ds.compress(RLELossless)
    out["rle-lossless"] = to_bytes(ds)

    ds = new_dataset()
    ds.set_pixel_data(pixels * 16, "MONOCHROME2", 12)
    ds.compress(RLELossless)
    ds.WindowCenter, ds.WindowWidth = 2040.5, 4081
    out["rle-lossless-12bit-window"] = to_bytes(ds)

    # JPEG 2000 lossless: Pillow (OpenJPEG) writes the codestream, pydicom encapsulates it.
    codestream = io.BytesIO()
    Image.fromarray(gray).save(codestream, format="JPEG2000", irreversible=False, no_jp2=True)
    ds = new_dataset()
    ds.set_pixel_data(gray, "MONOCHROME2", 8)
    ds.PixelData = encapsulate([codestream.getvalue()])
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    out["jpeg2000-lossless"] = to_bytes(ds)
    return out


@pytest.fixture(scope="module")
def sample_gray(sample_dir: Path) -> np.ndarray:
    return np.asarray(Image.open(sample_dir / "images" / SAMPLE_IMAGE).convert("L"))


@pytest.fixture(scope="module")
def variants(sample_gray) -> dict[str, bytes]:
    return dicom_variants(sample_gray)


@pytest.mark.parametrize(
    "flavour",
    [
        "monochrome2-8bit",
        "monochrome1-8bit",
        "monochrome2-16bit",
        "monochrome2-12bit-window",
        "monochrome1-12bit-window",
        "rescale-window",
        "voi-lut-sequence",
        "rle-lossless",
        "rle-lossless-12bit-window",
        "jpeg2000-lossless",
    ],
)
def test_dicom_flavours_decode_to_the_png_pixels(variants, sample_gray, flavour, tmp_path):
    data = variants[flavour]
    assert is_dicom(data)
    np.testing.assert_array_equal(read_dicom(data), sample_gray)
    path = tmp_path / f"{flavour}.dcm"
    path.write_bytes(data)
    np.testing.assert_array_equal(read_dicom(path), sample_gray)
    # The shared decoder (used by prepare, predict and serve) hands DICOM to the same reader, with or without suffix.
    np.testing.assert_array_equal(decode_grayscale(data, name="upload"), sample_gray)


def test_jpeg_baseline_dicom_decodes_like_the_jpeg(sample_gray):
    """A lossy JPEG inside DICOM gives the pixels a JPEG decoder gives for the same bytes (±1 for IDCT rounding)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    jpeg = io.BytesIO()
    Image.fromarray(sample_gray).save(jpeg, format="JPEG", quality=90)
    ds = new_dataset()
    ds.set_pixel_data(sample_gray, "MONOCHROME2", 8)
    ds.PixelData = encapsulate([jpeg.getvalue()])
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    decoded = read_dicom(to_bytes(ds)).astype(int)
    expected = np.asarray(Image.open(jpeg).convert("L")).astype(int)
    assert np.abs(decoded - expected).max() <= 1
    assert np.abs(decoded - sample_gray.astype(int)).mean() > 0  # it really went through the lossy codec


@settings(max_examples=40, deadline=None)
@given(
    stored=st.lists(st.integers(0, 4095), min_size=4, max_size=64),
    center=st.floats(1, 4095),
    width=st.floats(2, 5000),
    inverted=st.booleans(),
)
def test_window_matches_the_dicom_formula(stored, center, width, inverted):
    """PS3.3 C.11.2.1.2.1 (LINEAR): y = ((x - (c - .5)) / (w - 1) + .5), clipped to [0, 1], shown on 0..255."""
    x = np.array(stored, dtype=np.uint16).reshape(1, -1)
    ds = new_dataset()
    ds.set_pixel_data(x, "MONOCHROME1" if inverted else "MONOCHROME2", 12)
    ds.WindowCenter, ds.WindowWidth = center, width
    # DS values are stored as decimal strings: use what the file holds.
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255
    expected = np.rint(expected)
    if inverted:
        expected = 255 - expected
    decoded = read_dicom(to_bytes(ds)).astype(float)
    # One grey level of slack: at the exact clip boundary pydicom and the formula may round differently.
    assert np.abs(decoded - expected).max() <= 1


def test_multiframe_gives_the_first_frame():
    frames = np.stack([np.full((8, 8), 40, np.uint8), np.full((8, 8), 200, np.uint8)])
    ds = new_dataset()
    ds.set_pixel_data(frames, "MONOCHROME2", 8)
    np.testing.assert_array_equal(read_dicom(to_bytes(ds)), frames[0])


def test_image_without_voi_is_mapped_by_its_range():
    x = np.array([[1000, 1500], [2000, 3000]], dtype=np.uint16)
    ds = new_dataset()
    ds.set_pixel_data(x, "MONOCHROME2", 12)
    np.testing.assert_array_equal(read_dicom(to_bytes(ds)), [[0, 64], [128, 255]])


def test_not_a_dicom_is_refused_with_the_file_name(tmp_path, sample_dir):
    png = tmp_path / "actually.dcm"
    png.write_bytes((sample_dir / "images" / SAMPLE_IMAGE).read_bytes())
    assert not is_dicom(png.read_bytes())
    with pytest.raises(DicomError, match="actually.dcm"):
        read_dicom(png)


def test_truncated_dicom_is_refused(variants, tmp_path):
    path = tmp_path / "truncated.dcm"
    path.write_bytes(variants["monochrome2-8bit"][:5000])
    with pytest.raises(DicomError, match="truncated.dcm"):
        read_dicom(path)
    with pytest.raises(ImageDecodeError, match="truncated.dcm"):
        decode_grayscale(path)


def test_dicom_without_pixels_is_refused():
    ds = new_dataset()
    ds.PatientID = "123"
    with pytest.raises(DicomError, match="no pixel data"):
        read_dicom(to_bytes(ds))


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)
    ds = new_dataset()
    ds.set_pixel_data(np.zeros((20, 20), np.uint8), "MONOCHROME2", 8)
    with pytest.raises(DicomTooLargeError, match="decompression-bomb"):
        read_dicom(to_bytes(ds))


def test_dicom_flavours_predict_like_the_png(variants, sample_dir, tmp_path):
    """End to end (decode → shared preprocessing → model): every DICOM flavour within 1e-4 of the PNG."""
    import torch

    from cxr.inference.predict import predict_images
    from cxr.labels import FINDINGS
    from cxr.models.artifact import make_preprocessing, write_artifact
    from cxr.models.factory import create_model

    torch.manual_seed(1)
    model = create_model("resnet18", len(FINDINGS), input_size=64, labels=list(FINDINGS))
    checkpoint = write_artifact(tmp_path / "m.ckpt", model, list(FINDINGS), make_preprocessing(model, 64, 0.9))
    for flavour, data in variants.items():
        (tmp_path / f"{flavour}.dcm").write_bytes(data)
    png = sample_dir / "images" / SAMPLE_IMAGE
    records = {Path(r["image"]).stem: r for r in predict_images(checkpoint, [png, tmp_path])}
    assert set(records) == {Path(SAMPLE_IMAGE).stem, *variants}
    reference = np.array(list(records.pop(Path(SAMPLE_IMAGE).stem)["probabilities"].values()))
    for flavour, record in records.items():
        difference = np.abs(np.array(list(record["probabilities"].values())) - reference).max()
        assert difference <= 1e-4, flavour


# Real-world files: pydicom's wheel ships them in pydicom/data/test_files (CT, MR, RT, secondary captures, every
# codec). Only what is in the installed wheel is used: ``download=False``, and a missing file skips its test.


def bundled(name: str) -> str:
    """The path of ``name`` in pydicom's bundled test files; skips the test if this pydicom wheel lacks it."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not in the installed pydicom wheel (pydicom/data/test_files)")
    return path


def refusal(source, name: str) -> str:
    """The message of the DicomError ``read_dicom`` raises, checked to be one line that starts with the file name."""
    with pytest.raises(DicomError) as info:
        read_dicom(source, name=name)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{name}: "), message
    return message.removeprefix(f"{name}: ")


def luma(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma (PS3.3 C.7.6.3.1.2 YBR_FULL's Y), written out here, by range to 0..255 like the pipeline."""
    y = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.rint((y - y.min()) * (255.0 / (y.max() - y.min())))


# The same image twice: compressed (or encoded differently) and a lossless reference.
LOSSLESS_TWINS = [
    ("rle", "MR_small_RLE.dcm", "MR_small.dcm"),
    ("rle-32bit-rgb", "SC_rgb_rle_32bit.dcm", "SC_rgb_rle.dcm"),
    ("jpeg-lossless-sv1", "SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm"),
    ("jpeg-ls-lossless", "MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("jpeg2000-lossless", "MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("big-endian", "MR_small_bigendian.dcm", "MR_small.dcm"),
    ("big-endian-rgb-odd-size", "SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),
    ("implicit-vr", "MR_small_implicit.dcm", "MR_small.dcm"),
    ("multi-frame-first-frame", "SC_rgb_rle_2frame.dcm", "SC_rgb_rle.dcm"),
]
# Lossy twins: within a grey level on average. A YBR image taken for RGB (or converted twice) is tens of levels off.
LOSSY_TWINS = [
    ("jpeg-baseline-rgb", "SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_rle.dcm"),
    ("jpeg-baseline-ybr-full", "SC_rgb_dcmtk_+eb+cy+n2.dcm", "SC_rgb_rle.dcm"),
    ("jpeg-baseline-ybr-full-422", "SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_rle.dcm"),
    ("jpeg-ls-near-lossless-rgb", "SC_rgb_jls_lossy_line.dcm", "SC_rgb_rle.dcm"),
    ("uncompressed-ybr-full-422", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_rle.dcm"),
]


@pytest.mark.parametrize(("family", "encoded", "reference"), LOSSLESS_TWINS, ids=[t[0] for t in LOSSLESS_TWINS])
def test_real_files_decode_like_their_lossless_twin(family, encoded, reference):
    np.testing.assert_array_equal(read_dicom(bundled(encoded)), read_dicom(bundled(reference)))


@pytest.mark.parametrize(("family", "encoded", "reference"), LOSSY_TWINS, ids=[t[0] for t in LOSSY_TWINS])
def test_real_lossy_files_decode_close_to_their_lossless_twin(family, encoded, reference):
    difference = np.abs(read_dicom(bundled(encoded)).astype(int) - read_dicom(bundled(reference)).astype(int))
    assert difference.mean() <= 1.0, (family, difference.mean())


@pytest.mark.parametrize(
    ("family", "name", "shape"),
    [
        ("jpeg-extended-12bit", "JPGExtended.dcm", (1024, 256)),  # Pillow cannot: needs pylibjpeg-libjpeg
        ("jpeg2000-ybr-rct-jp2-header", "GDCMJ2K_TextGBR.dcm", (400, 400)),  # Pillow cannot: needs pylibjpeg-openjpeg
        ("jpeg2000-lossy", "JPEG2000.dcm", (1024, 256)),
        ("jpeg-ls-near-lossless-16bit", "JPEGLSNearLossless_16.dcm", None),
        ("deflated", "image_dfl.dcm", None),
    ],
)
def test_real_files_of_every_codec_decode(family, name, shape):
    gray = read_dicom(bundled(name))
    assert gray.dtype == np.uint8 and gray.ndim == 2 and gray.std() > 0
    assert shape is None or gray.shape == shape


def test_real_rgb_becomes_its_luma():
    import pydicom

    path = bundled("SC_rgb_rle.dcm")
    expected = luma(pydicom.dcmread(path).pixel_array)
    assert np.abs(read_dicom(path).astype(int) - expected).max() <= 1


def test_real_signed_window_matches_the_dicom_formula():
    """MR_small: signed 16-bit with a window, PS3.3 C.11.2.1.2.1 (LINEAR) written out as in the synthetic test."""
    import pydicom

    path = bundled("MR_small.dcm")
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.rint(np.clip((ds.pixel_array - (c - 0.5)) / (w - 1) + 0.5, 0, 1) * 255)
    assert int(ds.PixelRepresentation) == 1
    assert np.abs(read_dicom(path).astype(float) - expected).max() <= 1


def test_palette_colour_is_the_luma_of_its_lut():
    """examples_palette.dcm (16-bit LUTs): each index looked up in the red/green/blue tables by hand (C.7.9)."""
    import pydicom

    path = bundled("examples_palette.dcm")
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "PALETTE COLOR"
    first = int(ds.RedPaletteColorLookupTableDescriptor[1])
    tables = [
        np.frombuffer(ds[f"{colour}PaletteColorLookupTableData"].value, dtype="<u2")
        for colour in ("Red", "Green", "Blue")
    ]
    index = np.clip(ds.pixel_array.astype(int) - first, 0, len(tables[0]) - 1)
    rgb = np.stack([table[index] for table in tables], axis=-1)
    assert np.abs(read_dicom(path).astype(int) - luma(rgb)).max() <= 1


def test_palette_colour_synthetic():
    """Black, red, green, blue, white through a 16-bit palette → 0, 76, 150, 29, 255 (601-2 luma)."""
    ds = new_dataset()
    ds.set_pixel_data(np.array([[0, 1, 2], [3, 4, 4]], np.uint8), "PALETTE COLOR", 8)
    top = 65535
    lut = {"Red": [0, top, 0, 0, top], "Green": [0, 0, top, 0, top], "Blue": [0, 0, 0, top, top]}
    for colour, values in lut.items():
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [5, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", np.array(values, "<u2").tobytes())
    gray = read_dicom(to_bytes(ds)).astype(int)
    assert np.abs(gray - [[0, 76, 150], [29, 255, 255]]).max() <= 1


def test_invalid_number_of_frames_still_gives_the_first_frame():
    """badVR.dcm: Number of Frames is '1A'. Native data is the frames end to end (PS3.5 8.1.1), so frame 0 is the
    first Rows x Columns values whatever the count says."""
    import pydicom

    path = bundled("badVR.dcm")
    ds = pydicom.dcmread(path)
    first = np.frombuffer(ds.PixelData, dtype="<u4")[: ds.Rows * ds.Columns].reshape(ds.Rows, ds.Columns)
    first = first.astype(float)
    expected = np.rint((first - first.min()) * (255.0 / (first.max() - first.min())))
    np.testing.assert_array_equal(read_dicom(path), expected)


def test_multiframe_cut_short_gives_its_intact_first_frame():
    frames = np.stack([np.full((8, 8), v, np.uint8) for v in (40, 200, 90)])
    ds = new_dataset()
    ds.set_pixel_data(frames, "MONOCHROME2", 8)
    ds.PixelData = ds.PixelData[: 64 + 10]  # frame 0 whole, frame 1 cut, frame 2 gone
    np.testing.assert_array_equal(read_dicom(to_bytes(ds)), frames[0])
    ds.PixelData = ds.PixelData[:50]
    assert refusal(to_bytes(ds), "cut.dcm") == "truncated pixel data (50 of the 64 bytes of one frame)"


def test_dataset_without_file_meta_decodes():
    """No File Meta Information (PS3.10 7.1), hence no Transfer Syntax UID: the encoding pydicom parsed is used."""
    from pydicom.dataset import Dataset

    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    ds = Dataset()
    ds.Modality = "CR"
    ds.set_pixel_data(gray, "MONOCHROME2", 8)
    del ds.file_meta
    buffer = io.BytesIO()
    ds.save_as(buffer, implicit_vr=True, little_endian=True)
    np.testing.assert_array_equal(read_dicom(buffer.getvalue()), gray)


def test_real_truncated_file_is_refused_in_one_line(tmp_path):
    path = bundled("MR_truncated.dcm")
    assert refusal(path, "MR_truncated.dcm") == "truncated pixel data (8130 of the 8192 bytes of one frame)"
    with pytest.raises(ImageDecodeError, match=r"^MR_truncated\.dcm: truncated pixel data"):
        decode_grayscale(path, name="MR_truncated.dcm")


def test_real_files_without_an_image_are_refused_in_one_line():
    assert refusal(bundled("rtplan.dcm"), "rtplan.dcm") == "DICOM file has no pixel data (is it an image?)"
    assert "no Rows/Columns" in refusal(bundled("meta_missing_tsyntax.dcm"), "meta_missing_tsyntax.dcm")


def test_a_missing_codec_is_named(monkeypatch):
    import pydicom.pixels

    class Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: Unavailable())
    assert refusal(bundled("MR_small_jpeg_ls_lossless.dcm"), "ls.dcm") == (
        "transfer syntax JPEG-LS Lossless Image Compression needs a codec that is not installed: "
        "pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg)"
    )


def test_a_codec_panic_is_a_refusal(monkeypatch):
    """pylibjpeg-rle (Rust) panics on corrupt RLE; pyo3 raises that as a BaseException named PanicException."""
    from pydicom.pixels.decoders.base import Decoder

    class PanicException(BaseException):
        pass

    def panic(self, *args, **kwargs):
        raise PanicException("index out of bounds: the len is 400 but the index is 401")

    monkeypatch.setattr(Decoder, "as_array", panic)
    message = refusal(bundled("MR_small_RLE.dcm"), "rle.dcm")
    assert message.startswith("corrupt RLE Lossless pixel data (the codec crashed: index out of bounds")


# The files of pydicom's wheel that no reader should turn into an image, and why (pydicom's test_files/README.txt).
UNREADABLE = {
    "JPEG-lossy.dcm": "cannot decode JPEG Extended",  # invalid SOS parameters; JPGExtended.dcm is its fixed twin
    "JPEG2000-embedded-sequence-delimiter.dcm": "cannot decode JPEG 2000",  # codestream bytes overwritten on purpose
    "MR_truncated.dcm": "truncated pixel data",
    "meta_missing_tsyntax.dcm": "no Rows/Columns",  # two bytes of "pixel data", no Image Pixel module
    "nested_priv_SQ.dcm": "no Rows/Columns",
}


def test_every_bundled_file_decodes_or_is_refused_in_one_line():
    """The corpus of ``benchmarks/dicom_corpus.py`` as a test: any refusal beyond the files above (or files that
    hold no image at all) means a codec or a photometric interpretation went missing."""
    import pydicom

    folder = Path(pydicom.__file__).parent / "data" / "test_files"
    decoded = 0
    for path in sorted(folder.glob("*.dcm")):
        try:
            gray = read_dicom(path, name=path.name)
        except DicomError as error:
            message = str(error)
            assert "\n" not in message and message.startswith(f"{path.name}: "), message
            expected = UNREADABLE.get(path.name, "has no pixel data")
            assert expected in message, message
            continue
        assert path.name not in UNREADABLE
        assert gray.dtype == np.uint8 and gray.ndim == 2
        decoded += 1
    assert decoded >= 59, f"{decoded} images decoded (59 of 64 with pixel data in pydicom 3.0's wheel)"
