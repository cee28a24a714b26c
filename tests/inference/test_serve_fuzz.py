"""Hostile input, generated: the API against its own OpenAPI schema (Schemathesis), and real PNG/JPEG/DICOM files
mutated byte by byte through the decoder and the API. Both seeded, so a failure repeats."""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from conftest import tiny_checkpoint
from cxr.errors import ImageDecodeError
from cxr.imaging.decode import decode_grayscale
from cxr.inference.serve import create_app

KEY = "schemathesis-key-0123456789"
SEED = 20240917
CASES = 300


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("serve-fuzz") / "tiny.ckpt")


# --- The API from its schema ---------------------------------------------------------------------------------------


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_api_conforms_to_its_schema(checkpoint):
    """Requests drawn from the keyed app's own OpenAPI schema, valid and invalid ones: no 5xx, and every status,
    content type and body as the schema declares; the key is sent, and the ``ignored_auth`` check also tries each
    operation without it and with a wrong one. ``positive_data_acceptance`` is left out: a schema-valid request
    is any bytes in field 'file', and random bytes are rightly refused (415), not predicted.

    (Through ``as_strategy``: Schemathesis' pytest plugin does not run under pytest 9.)"""
    from hypothesis import given
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    app = create_app(checkpoint, max_upload_mb=1, api_keys=[KEY])
    api = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = {f"{op.ok().method.upper()} {op.ok().path}" for op in api.get_all_operations()}
    assert {"POST /api/predict", "GET /api/model", "GET /healthz", "GET /readyz", "GET /metrics"} <= operations
    seen: Counter = Counter()

    @given(case=st.one_of(api.as_strategy(GenerationMode.POSITIVE), api.as_strategy(GenerationMode.NEGATIVE)))
    @settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        response = case.call_and_validate(
            headers={"Authorization": f"Bearer {KEY}"}, excluded_checks=[positive_data_acceptance]
        )
        seen[(case.method.upper(), case.path, response.status_code)] += 1

    check()
    assert any(path == "/api/predict" and status >= 400 for _, path, status in seen), seen
    assert {path for _, path, _ in seen} >= {"/api/predict", "/api/model", "/healthz"}, seen


# --- Mutated real files --------------------------------------------------------------------------------------------


def dicom(gray: np.ndarray, syntax=None, bits: int = 8, photometric: str = "MONOCHROME2") -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    pixels = gray if bits == 8 else (gray.astype(np.uint16) * 16 + 7)
    ds.set_pixel_data(pixels, photometric, bits)
    if bits > 8:
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.WindowCenter, ds.WindowWidth = 1000, 3000
    if syntax is not None:
        ds.compress(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def corpus(sample_dir) -> dict[str, bytes]:
    """Real radiographs as PNG (the NIH original and smaller ones), JPEG (baseline, progressive) and DICOM (native
    8 and 16 bit, RLE, JPEG 2000 lossless)."""
    from pydicom.uid import JPEG2000Lossless, RLELossless

    original = (sample_dir / "images" / "00000013_003.png").read_bytes()
    gray = cv2.imdecode(np.frombuffer(original, np.uint8), cv2.IMREAD_GRAYSCALE)
    small, tiny = cv2.resize(gray, (256, 256), interpolation=cv2.INTER_AREA), cv2.resize(gray, (96, 96))
    files = {
        "nih.png": original,
        "small.png": cv2.imencode(".png", small)[1].tobytes(),
        "deep.png": cv2.imencode(".png", small.astype(np.uint16) * 257)[1].tobytes(),
        "baseline.jpg": cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes(),
        "progressive.jpg": cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(),
        "native8.dcm": dicom(tiny),
        "native16.dcm": dicom(tiny, bits=12, photometric="MONOCHROME1"),
        "rle.dcm": dicom(tiny, RLELossless),
    }
    with contextlib.suppress(Exception):  # without a JPEG 2000 encoder the other eight still run
        files["j2k.dcm"] = dicom(tiny, JPEG2000Lossless)
    return files


def mutate(data: bytes, rng: np.random.Generator) -> tuple[str, bytes]:
    """One of several corruptions, at a random place: bit flips, truncation, spliced or overwritten junk, a corrupt
    header, a huge length field, a deleted or duplicated range."""
    buffer = bytearray(data)
    size = len(buffer)
    kind = rng.choice(["flip", "truncate", "splice", "overwrite", "header", "length", "delete", "duplicate"])
    at = int(rng.integers(0, size))
    if kind == "flip":
        for position in rng.integers(0, size, int(rng.integers(1, 17))):
            buffer[position] ^= 1 << int(rng.integers(0, 8))
    elif kind == "truncate":
        del buffer[int(rng.integers(1, size)) :]
    elif kind == "splice":
        buffer[at:at] = rng.integers(0, 256, int(rng.integers(1, 512)), dtype=np.uint8).tobytes()
    elif kind == "overwrite":
        junk = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
        buffer[at : at + len(junk)] = junk
    elif kind == "header":  # the first bytes: signatures, IHDR/SOF, the DICOM preamble, meta and image attributes
        for position in rng.integers(0, min(size, 800), int(rng.integers(1, 9))):
            buffer[position] = int(rng.integers(0, 256))
    elif kind == "length":
        position = int(rng.integers(0, min(size, 800)))
        buffer[position : position + 4] = rng.choice([b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\x00\x00\x00\x00"])
    elif kind == "delete":
        del buffer[at : at + int(rng.integers(1, 256))]
    else:
        buffer[at:at] = buffer[at : at + int(rng.integers(1, 256))]
    return str(kind), bytes(buffer)


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_mutated_files_are_decoded_or_refused(corpus, checkpoint):
    """A few hundred corrupted PNG/JPEG/DICOM files: the decoder returns an 8-bit image or raises ImageDecodeError
    (nothing else), and the API answers 200 or a 4xx with a detail, never a 5xx; it is still up at the end."""
    rng = np.random.default_rng(SEED)
    client = TestClient(create_app(checkpoint, decode_timeout=20))
    names = sorted(corpus)
    statuses: Counter = Counter()
    outcomes: Counter = Counter()
    for case in range(CASES):
        name = names[case % len(names)]
        kind, data = mutate(corpus[name], rng)
        where = f"case {case}: {kind} of {name}"
        try:
            gray = decode_grayscale(data, name=name)
        except ImageDecodeError:
            outcomes["refused"] += 1
        else:
            assert gray.dtype == np.uint8 and gray.ndim == 2 and gray.size > 0, where
            outcomes["decoded"] += 1
        answer = client.post("/api/predict", files={"file": (name, data)})
        statuses[answer.status_code] += 1
        assert answer.status_code == 200 or 400 <= answer.status_code < 500, (where, answer.text)
        if answer.status_code != 200:
            assert answer.json()["detail"], where
    assert client.get("/healthz").status_code == 200
    # The corruptions reach both outcomes: some files still decode, many are refused.
    assert outcomes["decoded"] > 0 and outcomes["refused"] > 0, outcomes
    assert statuses[200] > 0 and sum(n for s, n in statuses.items() if s != 200) > 0, statuses
