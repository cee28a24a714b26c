"""Source images written at the paths a dataset's metadata lists, in the formats datasets ship: 16-bit PNGs, JPEGs,
DICOMs (shared by the tests that prepare stores from the fixtures' real metadata excerpts)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def gradient(seed: int, height: int = 80, width: int = 64, maximum: int = 4095) -> np.ndarray:
    """A 12-bit-range image with a seed-dependent bright square, so rows are told apart after resizing."""
    rng = np.random.default_rng(seed)
    image = np.tile(np.linspace(0, maximum // 2, width), (height, 1))
    top, left = rng.integers(0, height - 24), rng.integers(0, width - 24)
    image[top : top + 24, left : left + 24] = maximum
    return image.astype(np.uint16)


def write_dicom(path: Path, pixels: np.ndarray) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    dataset = Dataset()
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.SOPClassUID, dataset.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    dataset.Modality, dataset.PhotometricInterpretation = "CR", "MONOCHROME2"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 1, 16, 12, 11
    dataset.PixelRepresentation = 0
    dataset.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    dataset.save_as(path, enforce_file_format=True)


def write_source_image(path: Path, seed: int, side: int = 48) -> None:
    """A distinct image at ``path`` in the format its suffix names (``.dcm``/``.dicom``: DICOM, else via OpenCV)."""
    pixels = gradient(seed, side, side)
    if path.suffix.lower() in (".dcm", ".dicom"):
        write_dicom(path, pixels)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    image = pixels if path.suffix.lower() == ".png" else (pixels >> 4).astype(np.uint8)
    assert cv2.imwrite(str(path), image), path
