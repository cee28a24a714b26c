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

from cxr.dicom import DicomError, DicomTooLargeError, read_dicom
from cxr.imaging import ImageDecodeError, decode_grayscale, is_dicom

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

    from cxr.artifact import make_preprocessing, write_artifact
    from cxr.labels import FINDINGS
    from cxr.models import create_model
    from cxr.predict import predict_images

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
