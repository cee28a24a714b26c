"""``cxr serve``: the REST API's contract, its error codes, agreement with the CLI and ONNX, a loopback load test."""

from __future__ import annotations

import base64
import io
import json
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from conftest import running_server, tiny_checkpoint
from cxr.inference.serve import create_app
from cxr.labels import FINDINGS

SAMPLE = "00000013_003.png"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("serve") / "tiny.ckpt")


@pytest.fixture(scope="module")
def client(checkpoint) -> TestClient:
    return TestClient(create_app(checkpoint, max_upload_mb=2))


@pytest.fixture(scope="module")
def png_bytes(sample_dir) -> bytes:
    return (sample_dir / "images" / SAMPLE).read_bytes()


def post(client: TestClient, data: bytes, name: str = "x.png", **query):
    return client.post("/api/predict", files={"file": (name, data, "application/octet-stream")}, params=query)


def decode_data_url(url: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))


def test_pages_and_descriptions(client, checkpoint):
    assert client.get("/healthz").json() == {"status": "ok", "model": checkpoint.name}
    model = client.get("/api/model").json()
    assert model["labels"] == list(FINDINGS) and model["backend"] == "torch"
    assert set(model["thresholds"]) == set(FINDINGS) and model["preprocessing"]["crop"] == pytest.approx(0.9)
    assert "not a medical device" in model["card"]["disclaimer"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="file-input"' in page.text and "/static/app.js" in page.text
    for asset in ("app.js", "style.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/model", "/healthz"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


def test_predict_answers_like_the_cli(client, checkpoint, png_bytes, sample_dir):
    from cxr.inference.predict import predict_images

    answer = post(client, png_bytes, SAMPLE)
    assert answer.status_code == 200, answer.text
    record = answer.json()
    # The client's file name is never echoed (it may name the patient): only its suffix is kept.
    assert set(record) == {"image", "probabilities", "positive", "thresholds"} and record["image"] == "upload.png"
    expected = predict_images(checkpoint, [sample_dir / "images" / SAMPLE])[0]
    assert record["probabilities"] == pytest.approx(expected["probabilities"], abs=1e-6)
    assert record["positive"] == expected["positive"] and record["thresholds"] == expected["thresholds"]


def test_preview_and_heatmaps(client, png_bytes):
    record = post(client, png_bytes, SAMPLE, preview=1, cam="Mass,Effusion").json()
    preview = decode_data_url(record["preview"])
    assert preview.mode == "L" and max(preview.size) == 512
    assert set(record["heatmaps"]) == {"Mass", "Effusion"}
    every = post(client, png_bytes, SAMPLE, cam="all").json()["heatmaps"]
    assert every.keys() == set(FINDINGS) and every["Mass"] == record["heatmaps"]["Mass"]
    alphas = {}
    for name, url in every.items():
        heatmap = decode_data_url(url)
        assert heatmap.mode == "RGBA" and heatmap.size == preview.size
        alphas[name] = np.asarray(heatmap)[..., 3]
        assert alphas[name].min() == 0  # transparent where the map is cold
    # A random-init model may give a finding an all-zero map (ReLU of negative evidence), not every finding.
    hot = [name for name, alpha in alphas.items() if alpha.max() > 0]
    assert len(hot) >= 2 and not np.array_equal(alphas[hot[0]], alphas[hot[1]])
    positive = post(client, png_bytes, SAMPLE, cam="positive").json()
    assert set(positive["heatmaps"]) == set(positive["positive"]) and "preview" not in positive


def test_dicom_upload(client, png_bytes):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    gray = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("L"))
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.set_pixel_data(255 - gray, "MONOCHROME1", 8)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    from_dicom = post(client, buffer.getvalue(), "study.dcm", preview=1).json()
    from_png = post(client, png_bytes, SAMPLE).json()
    assert from_dicom["probabilities"] == pytest.approx(from_png["probabilities"], abs=1e-4)
    assert from_dicom["image"] == "upload.dcm" and from_dicom["preview"].startswith("data:image/png")


def png_bomb(width: int = 12_000, height: int = 12_000) -> bytes:
    """A valid all-black PNG over Pillow's pixel limit (~89 M): 144 M pixels in a few hundred kB."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    compressor, row = zlib.compressobj(9), bytes(width + 1)  # filter byte + one row of zeros
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_error_codes(client, png_bytes):
    cases = {
        "not an image": (post(client, b"hello, I am text" * 20, "notes.txt"), 415),
        "pdf": (post(client, b"%PDF-1.4\n" + bytes(500), "scan.pdf"), 415),
        "truncated png": (post(client, png_bytes[:3000], "cut.png"), 400),
        "corrupt dicom": (post(client, bytes(128) + b"DICM" + b"\x02\x00" * 50, "bad.dcm"), 400),
        "empty": (post(client, b"", "empty.png"), 400),
        "unknown finding": (post(client, png_bytes, "x.png", cam="Tumour"), 400),
        "no file field": (client.post("/api/predict", data={"other": "1"}), 400),
        "bomb": (post(client, png_bomb(), "bomb.png"), 413),
        "over the limit": (post(client, png_bytes + bytes(3 * 2**20), "big.png"), 413),
    }
    for name, (response, status) in cases.items():
        assert response.status_code == status, (name, response.text)
        assert response.json()["detail"], name
    assert "not a PNG, JPEG or DICOM" in cases["not an image"][0].json()["detail"]
    assert "limit" in cases["over the limit"][0].json()["detail"]
    assert client.get("/healthz").status_code == 200  # and the server is still fine


def test_chunked_upload_over_the_limit_is_refused():
    """No Content-Length (chunked transfer): the limit is enforced on the bytes received."""
    from cxr.inference.serve import UploadLimit

    sent, calls = [], []

    async def app(scope, receive, send):
        calls.append(await receive())

    async def receive():
        return {"type": "http.request", "body": bytes(600), "more_body": True}

    async def send(message):
        sent.append(message)

    import asyncio

    scope = {"type": "http", "method": "POST", "headers": []}
    asyncio.run(UploadLimit(app, max_bytes=1000)(scope, receive, send))
    assert sent[0]["status"] == 413 and not calls


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_cli_onnx_and_api_agree(checkpoint, sample_dir, tmp_path, png_bytes):
    """The same image through `cxr predict` (checkpoint and ONNX) and the API (checkpoint and ONNX): within 1e-4."""
    from typer.testing import CliRunner

    from cxr.cli import app
    from cxr.inference.export import export_onnx

    onnx_path = Path(export_onnx(checkpoint, tmp_path / "model.onnx")["path"])
    image = sample_dir / "images" / SAMPLE
    answers = {}
    for name, model in (("cli", checkpoint), ("cli-onnx", onnx_path)):
        result = CliRunner().invoke(app, ["predict", str(model), str(image), "--json"])
        assert result.exit_code == 0, result.output
        answers[name] = json.loads(result.stdout)["probabilities"]
    answers["api"] = post(TestClient(create_app(checkpoint)), png_bytes, SAMPLE).json()["probabilities"]
    onnx_client = TestClient(create_app(onnx_path))
    onnx_answer = post(onnx_client, png_bytes, SAMPLE, cam="positive").json()
    answers["api-onnx"] = onnx_answer["probabilities"]
    assert set(onnx_answer["heatmaps"]) == set(onnx_answer["positive"])  # heatmaps from the .onnx file alone
    reference = np.array([answers["cli"][f] for f in FINDINGS])
    for name, probabilities in answers.items():
        assert np.abs(np.array([probabilities[f] for f in FINDINGS]) - reference).max() <= 1e-4, name


@pytest.fixture
def live_server(checkpoint):
    """uvicorn on 127.0.0.1 (a free port) in a thread: the real HTTP stack, not the in-process test client."""
    with running_server(create_app(checkpoint)) as url:
        yield url


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_load_on_loopback_has_no_server_errors(live_server, png_bytes, sample_dir):
    """200 requests, 8 at a time, mixing images, heatmaps and bad input: zero 5xx, identical answers per image."""
    import httpx

    other = (sample_dir / "images" / "00000001_000.png").read_bytes()
    uploads = [
        ("a.png", png_bytes, {}, 200),
        ("b.png", other, {"cam": "positive"}, 200),
        ("c.txt", b"not an image at all", {}, 415),
        ("d.png", png_bytes[:500], {}, 400),
    ]

    def request(i: int):
        name, data, query, _ = uploads[i % len(uploads)]
        with httpx.Client(base_url=live_server, timeout=120) as http:
            response = http.post("/api/predict", files={"file": (name, data)}, params=query)
        return i % len(uploads), response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(request, range(200)))
    assert not [status for _, status, _ in results if status >= 500]
    for kind, status, body in results:
        assert status == uploads[kind][3], body
    for kind in (0, 1):  # concurrent requests never mix up answers
        answers = [body["probabilities"] for k, _, body in results if k == kind]
        assert all(answer == pytest.approx(answers[0], abs=1e-6) for answer in answers)
    first_a = next(body for k, _, body in results if k == 0)
    first_b = next(body for k, _, body in results if k == 1)
    assert first_a["probabilities"] != pytest.approx(first_b["probabilities"], abs=1e-6)


def test_real_server_answers_413_to_a_large_upload(live_server):
    """Over the real HTTP stack the client gets the 413 (not a reset connection), declared or chunked."""
    import httpx

    big = b"\x89PNG\r\n\x1a\n" + bytes(25 * 2**20)
    with httpx.Client(base_url=live_server, timeout=120) as http:
        declared = http.post("/api/predict", files={"file": ("big.png", big)})
        chunked = http.post(
            "/api/predict",
            content=(bytes(2**20) for _ in range(25)),
            headers={"content-type": "multipart/form-data; boundary=x"},
        )
        assert declared.status_code == chunked.status_code == 413
        assert "limit of 20 MB" in declared.json()["detail"]
        assert http.get("/healthz").status_code == 200
