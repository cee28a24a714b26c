"""The one decode + preprocess path: every pixel format NIH users meet, every way a file can be bad, the geometry."""

from __future__ import annotations

import io
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.errors import CxrError, ImageDecodeError, ImageTooLargeError
from cxr.imaging import decode
from cxr.imaging.decode import decode_grayscale, preprocess
from cxr.imaging.geometry import box_to_store, crop_square


def gradient(height: int = 40, width: int = 56, seed: int = 0) -> np.ndarray:
    """A smooth gradient plus noise, uint8: enough structure that a wrong conversion changes values."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    return np.clip(xx * 3 + yy * 2 + rng.integers(0, 20, (height, width)), 0, 255).astype(np.uint8)


def png_bytes(image: Image.Image, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format)
    return buffer.getvalue()


def test_8bit_grayscale_is_unchanged(tmp_path):
    pixels = gradient()
    path = tmp_path / "a.png"
    path.write_bytes(png_bytes(Image.fromarray(pixels)))
    np.testing.assert_array_equal(decode_grayscale(path), pixels)
    np.testing.assert_array_equal(decode_grayscale(path.read_bytes()), pixels)


@pytest.mark.parametrize("format", ["PNG", "BMP", "TIFF"])
def test_other_formats_decode_the_same(format):
    pixels = gradient(seed=3)
    np.testing.assert_array_equal(decode_grayscale(png_bytes(Image.fromarray(pixels), format)), pixels)


def test_16bit_is_scaled_by_its_range():
    pixels = np.array([[1000, 1500], [2000, 3000]], dtype=np.uint16)
    gray = decode_grayscale(png_bytes(Image.fromarray(pixels)))
    assert gray.dtype == np.uint8
    np.testing.assert_array_equal(gray, np.rint((pixels.astype(float) - 1000) * 255 / 2000).astype(np.uint8))
    flat = decode_grayscale(png_bytes(Image.fromarray(np.full((4, 4), 777, dtype=np.uint16))))
    assert flat.shape == (4, 4) and not flat.any()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_and_alpha_become_luma(mode):
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
    image = rgb.convert(mode) if mode != "LA" else rgb.convert("L").convert("LA")
    if mode == "RGBA":
        image.putalpha(Image.fromarray(rng.integers(0, 256, (24, 32), dtype=np.uint8)))  # alpha must not leak in
    red, green, blue = np.moveaxis(np.asarray(image.convert("RGB"), dtype=np.float64), -1, 0)
    luma = 0.299 * red + 0.587 * green + 0.114 * blue  # ITU-R 601-2; the alpha must not leak in
    assert np.abs(decode_grayscale(png_bytes(image)).astype(np.float64) - luma).max() <= 1


def test_the_rgba_nih_image(sample_dir):
    """``00000100_000.png`` is the sample's RGBA radiograph: grey in R=G=B, opaque alpha; it decodes to its grey."""
    path = sample_dir / "images" / "00000100_000.png"
    rgba = np.asarray(Image.open(path))
    assert rgba.shape == (1024, 1024, 4)
    np.testing.assert_array_equal(decode_grayscale(path), rgba[..., 0])


def test_jpeg_decodes(tmp_path):
    path = tmp_path / "x.jpg"
    Image.fromarray(gradient()).save(path, quality=95)
    gray = decode_grayscale(path)
    assert gray.shape == (40, 56) and np.abs(gray.astype(int) - gradient()).mean() < 5


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB", "RGBA"])
def test_pillow_and_opencv_decoders_agree(mode):
    """The benchmark compares the two decoders; they must mean the same pixels (luma rounding may differ by 1)."""
    base = gradient(seed=2)
    if mode == "I;16":
        image = Image.fromarray(base.astype(np.uint16) * 200 + 300)
    elif mode == "L":
        image = Image.fromarray(base)
    else:
        image = Image.fromarray(np.stack([base, 255 - base, base // 2], axis=-1)).convert(mode)
    data = png_bytes(image)
    pillow = decode._decode_pillow(data, "x")
    opencv = decode._decode_opencv(data, "x")
    assert np.abs(pillow.astype(int) - opencv.astype(int)).max() <= (1 if mode in ("RGB", "RGBA") else 0)


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty file"), (b"not an image at all" * 10, "not an image"), ("truncated", "truncated")],
)
def test_bad_files_raise_with_name_and_reason(tmp_path, content, reason):
    if content == "truncated":
        whole = png_bytes(Image.fromarray(gradient(200, 200)))
        content = whole[: len(whole) // 2]
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=reason) as caught:
        decode_grayscale(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, CxrError)


def test_missing_file_raises(tmp_path):
    with pytest.raises(ImageDecodeError, match=r"nope\.png: cannot read"):
        decode_grayscale(tmp_path / "nope.png")


def test_decompression_bomb_limit_is_honoured(monkeypatch):
    data = png_bytes(Image.fromarray(gradient(40, 56)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 56 - 1)
    with pytest.raises(ImageTooLargeError, match="exceeds the limit"):
        decode_grayscale(data, name="upload.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40 * 56)
    assert decode_grayscale(data).shape == (40, 56)


def test_dicom_is_delegated_by_suffix_or_magic(monkeypatch, tmp_path):
    calls = []

    def read_dicom(source, name=None):
        calls.append((source, name))
        return np.full((3, 5), 9, dtype=np.uint8)

    monkeypatch.setitem(sys.modules, "cxr.imaging.dicom", types.SimpleNamespace(read_dicom=read_dicom))
    by_suffix = tmp_path / "a.dcm"
    by_suffix.write_bytes(b"anything")
    by_magic = b"\0" * 128 + b"DICM" + b"rest"
    assert decode_grayscale(by_suffix).shape == (3, 5)
    assert decode_grayscale(by_magic).shape == (3, 5)
    assert calls == [(by_suffix, str(by_suffix)), (by_magic, "<bytes>")]

    def broken(source, name=None):
        raise KeyError("(0028,0010)")

    monkeypatch.setitem(sys.modules, "cxr.imaging.dicom", types.SimpleNamespace(read_dicom=broken))
    with pytest.raises(ImageDecodeError, match="unreadable DICOM"):
        decode_grayscale(by_magic, name="scan")


def test_crop_and_area_resize():
    image = np.zeros((100, 160), dtype=np.uint8)
    image[25:75, 55:105] = 200  # the centred 50% square of the shorter side
    out = preprocess(image, 10, crop=0.5)
    assert out.shape == (10, 10) and out.dtype == np.uint8 and (out == 200).all()
    # Area interpolation by an integer factor is the block mean.
    pixels = gradient(64, 64)
    expected = pixels.reshape(16, 4, 16, 4).mean(axis=(1, 3))
    np.testing.assert_allclose(preprocess(pixels, 16, crop=1.0), expected, atol=0.5)
    np.testing.assert_array_equal(preprocess(pixels, 64), pixels)
    with pytest.raises(CxrError, match="crop"):
        preprocess(pixels, 16, crop=0)


def test_crop_square_geometry():
    assert tuple(map(int, crop_square(1024, 1024, 0.75))) == (128, 128, 768)
    assert tuple(map(int, crop_square(2000, 1000, 1.0))) == (500, 0, 1000)
    widths, heights = np.array([1024, 2000]), np.array([1024, 1000])
    left, top, side = crop_square(widths, heights, 0.75)
    assert left.tolist() == [128, 625] and top.tolist() == [128, 125] and side.tolist() == [768, 750]


def test_box_to_store_maps_the_crop_square_and_clips():
    assert box_to_store(128, 128, 768, 768, 1024, 1024, 0.75, 300) == (0.0, 0.0, 300.0, 300.0)
    assert box_to_store(512, 512, 76.8, 38.4, 1024, 1024, 0.75, 300) == pytest.approx((150.0, 150.0, 30.0, 15.0))
    assert box_to_store(0, 0, 100, 100, 1024, 1024, 0.75, 300) == (0.0, 0.0, 0.0, 0.0)  # outside the crop
    boxes = np.array([[512.0, 512.0, 76.8, 38.4], [0.0, 0.0, 100.0, 100.0]])
    sources = np.array([1024, 1024])
    x, y, w, h = box_to_store(*boxes.T, sources, sources, 0.75, 300)
    assert np.allclose([x[0], y[0], w[0], h[0]], [150, 150, 30, 15]) and w[1] == 0


@pytest.mark.parametrize(("width", "height", "crop", "size"), [(200, 160, 0.75, 48), (160, 240, 1.0, 64)])
def test_box_to_store_matches_preprocess(width, height, crop, size):
    """A bright rectangle drawn at a source box lands where box_to_store says, in the preprocessed image."""
    image = np.zeros((height, width), dtype=np.uint8)
    x, y, w, h = 70, 60, 40, 30
    image[y : y + h, x : x + w] = 255
    out = preprocess(image, size, crop)
    bx, by, bw, bh = box_to_store(x, y, w, h, width, height, crop, size)
    rows, cols = np.nonzero(out > 127)
    assert abs(cols.min() - bx) <= 1 and abs(cols.max() + 1 - (bx + bw)) <= 1
    assert abs(rows.min() - by) <= 1 and abs(rows.max() + 1 - (by + bh)) <= 1


def test_load_is_decode_then_preprocess(sample_dir):
    path = Path(sample_dir) / "images" / "00000001_000.png"
    np.testing.assert_array_equal(decode.load(path, 64, 0.75), preprocess(decode_grayscale(path), 64, 0.75))
