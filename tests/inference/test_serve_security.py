"""``cxr serve`` hardened: API keys, no patient data kept or echoed, hostile input, operations (readiness, metrics,
graceful shutdown, audit trail)."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi import FastAPI, UploadFile
from fastapi.testclient import TestClient
from PIL import Image

from conftest import running_server, tiny_checkpoint
from cxr.errors import CxrError
from cxr.inference.serve import app as serve_app
from cxr.inference.serve import create_app, service
from privacy_checks import MARKER_FILE, MARKERS, assert_no_marker, writes_during

SAMPLE = "00000013_003.png"
KEYS = ("first-client-key-0123456789", "second-client-key-abcdefghij")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("serve-security") / "tiny.ckpt")


@pytest.fixture(scope="module")
def png_bytes(sample_dir) -> bytes:
    return (sample_dir / "images" / SAMPLE).read_bytes()


def post(client, data: bytes, name: str = "x.png", headers=None, **query):
    return client.post(
        "/api/predict", files={"file": (name, data, "application/octet-stream")}, params=query, headers=headers
    )


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def dicom_bytes(gray: np.ndarray, **attributes) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.set_pixel_data(gray, "MONOCHROME2", 8)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


# --- 1. Authentication ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(checkpoint) -> TestClient:
    return TestClient(create_app(checkpoint, api_keys=KEYS))


def test_api_needs_a_key_and_the_rest_stays_open(keyed, png_bytes):
    for answer in (keyed.get("/api/model"), post(keyed, png_bytes), keyed.get("/api/model", headers=bearer("x" * 30))):
        assert answer.status_code == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["detail"]
    assert "not accepted" in keyed.get("/api/model", headers=bearer("x" * 30)).json()["detail"]
    assert keyed.get("/api/model", headers={"Authorization": f"Basic {KEYS[0]}"}).status_code == 401
    for key in KEYS:  # one key per client, each works
        assert keyed.get("/api/model", headers=bearer(key)).status_code == 200
        assert post(keyed, png_bytes, headers=bearer(key)).status_code == 200
    assert keyed.get("/api/model", headers={"authorization": f"bearer  {KEYS[1]} "}).status_code == 200
    for open_path in ("/healthz", "/readyz", "/metrics", "/", "/static/app.js", "/docs", "/openapi.json"):
        assert keyed.get(open_path).status_code == 200, open_path
    schema = keyed.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert schema["paths"]["/api/predict"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]


def test_a_request_without_a_key_is_refused_before_its_body_is_read(keyed):
    """401, not 413: the key is checked first, so an anonymous client cannot make the server buffer 20 MB."""
    answer = post(keyed, b"\x89PNG\r\n\x1a\n" + bytes(25 * 2**20))
    assert answer.status_code == 401


def test_keys_are_compared_in_constant_time_with_every_key(monkeypatch):
    from cxr.inference.serve import security

    calls = []
    real = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: calls.append(b) or real(a, b))
    keys = ("k" * 16, "l" * 16, "m" * 16)
    assert security.matching_key("k" * 16, keys) == 1
    assert len(calls) == 3  # the first key matched, the others were still compared
    assert security.matching_key("nope", keys) is None and len(calls) == 6


def test_key_file_and_environment(tmp_path):
    from cxr.inference.serve.security import api_keys, keys_from_environment

    key_file = tmp_path / "keys"
    key_file.write_text(f"# clients of the ward\n\n{KEYS[0]}\n  {KEYS[1]}  \n# retired: old-key\n")
    assert api_keys(None, key_file) == KEYS
    assert api_keys("env-key-0123456789abc", key_file) == ("env-key-0123456789abc", *KEYS)
    assert keys_from_environment({"CXR_API_KEY": KEYS[0], "CXR_API_KEY_FILE": str(key_file)}) == KEYS
    assert keys_from_environment({}) == ()
    for text, message in (("# only a comment\n", "holds no key"), ("short\n", "at least 16")):
        key_file.write_text(text)
        with pytest.raises(CxrError, match=message):
            api_keys(None, key_file)
    with pytest.raises(CxrError, match="cannot read"):
        api_keys(None, tmp_path / "missing")
    with pytest.raises(CxrError, match="at least 16"):
        create_app("unused.ckpt", api_keys=["secret"])


def test_listening_beyond_loopback_needs_a_key(monkeypatch, checkpoint, capsys):
    from cxr.cli import main
    from cxr.inference.serve.security import check_listen_address, is_loopback

    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"):
        assert is_loopback(host) and check_listen_address(host, (), insecure=False) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.org", ""):
        assert not is_loopback(host)
        with pytest.raises(CxrError, match="without an API key"):
            check_listen_address(host, (), insecure=False)
        assert check_listen_address(host, KEYS, insecure=False) is None
        assert "--insecure" in check_listen_address(host, (), insecure=True)

    monkeypatch.delenv("CXR_API_KEY", raising=False)
    monkeypatch.delenv("CXR_API_KEY_FILE", raising=False)
    monkeypatch.setattr(sys, "argv", ["cxr", "serve", str(checkpoint), "--host", "0.0.0.0"])
    with pytest.raises(SystemExit) as exited:
        main()  # the console script: a CxrError is one line on stderr and exit status 2
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without an API key" in " ".join(err.split())
    assert err.count("error:") == 1 and "Traceback" not in err


# --- 2. No patient data retained or echoed -------------------------------------------------------------------------


def planted(gray: np.ndarray) -> bytes:
    return dicom_bytes(gray, **MARKERS)


def test_no_header_value_or_file_name_in_answers_or_logs(checkpoint, png_bytes, caplog, monkeypatch):
    """A DICOM with identifiers planted in its header, under a file name that names the patient, through the real
    HTTP stack: the identifiers appear in no answer (body or headers) and no log record, at DEBUG."""
    import httpx

    gray = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("L"))
    good = planted(gray)
    truncated = good[: len(good) - gray.size // 2]  # the header intact, the pixels cut: a decode error
    for name in ("", "cxr", "uvicorn", "uvicorn.error", "uvicorn.access"):
        monkeypatch.setattr(logging.getLogger(name), "propagate", True)  # an earlier uvicorn config may cut them
        caplog.set_level(logging.DEBUG, logger=name or None)
    answers = []
    app = create_app(checkpoint)
    with (
        running_server(app, log_config=None, log_level="debug") as url,
        httpx.Client(base_url=url, timeout=120) as http,
    ):
        for data, name, query in (
            (good, MARKER_FILE, {"preview": 1, "cam": "positive"}),
            (truncated, MARKER_FILE, {}),
            (b"not an image", MARKER_FILE.replace(".dcm", ".txt"), {}),
        ):
            answers.append(http.post("/api/predict", files={"file": (name, data)}, params=query))
    assert [answer.status_code for answer in answers] == [200, 400, 415]
    assert answers[0].json()["image"] == "upload.dcm"
    for answer in answers:
        assert_no_marker(answer.text, "answer body")
        assert_no_marker(json.dumps(dict(answer.headers)), "answer headers")
    logged = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "cxr.access" in logged and "route=/api/predict status=200" in logged  # the logs were captured
    assert logged.count("request=") >= 3
    assert_no_marker(logged, "log records")


def test_uploads_never_touch_the_disk(checkpoint):
    """A 1.6 MB upload (Starlette's UploadFile spools parts over 1 MB to a temporary file) is parsed, decoded and
    predicted without opening any file for writing; the same body through an UploadFile endpoint does write."""
    noise = np.random.default_rng(0).integers(0, 256, (1300, 1300), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    big = buffer.getvalue()
    assert len(big) > 1.5 * 2**20

    client = TestClient(create_app(checkpoint))
    post(client, big)  # warm-up: lazy imports may open caches
    answer, writes = writes_during(lambda: post(client, big, "big.png"))
    assert answer.status_code == 200, answer.text
    assert writes == []

    control = FastAPI()

    @control.post("/upload")
    def upload(file: UploadFile) -> dict:
        return {"size": len(file.file.read())}

    control_client = TestClient(control)
    answer, writes = writes_during(lambda: control_client.post("/upload", files={"file": ("big.png", big)}))
    assert answer.json() == {"size": len(big)}, answer.text
    assert writes, "the write detector saw nothing: it would not catch a spooled upload"


def test_multipart_parsing_in_memory():
    from cxr.inference.serve.uploads import HTTPProblem, anonymous_name, multipart_file

    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="Doe^Jane.DCM"\r\n'
        b"Content-Type: application/dicom\r\n\r\n\x00\x01binary\r\n--XyZ--\r\n"
    )
    data, filename = multipart_file(body, "multipart/form-data; boundary=XyZ")
    assert data == b"\x00\x01binary" and filename == "Doe^Jane.DCM"
    assert anonymous_name(filename) == "upload.dcm" and anonymous_name("scan.exe") == anonymous_name(None) == "upload"
    for content_type, payload, message in (
        ("application/json", b"{}", "multipart/form-data"),
        ("multipart/form-data", body, "multipart/form-data"),  # no boundary
        ("multipart/form-data; boundary=XyZ", body.replace(b'name="file"', b'name="other"'), "no field 'file'"),
        ("multipart/form-data; boundary=XyZ", b"--XyZ\r\nbroken", "no field 'file'"),
    ):
        with pytest.raises(HTTPProblem, match=message) as caught:
            multipart_file(payload, content_type)
        assert caught.value.status == 400


# --- 3. Hostile input ----------------------------------------------------------------------------------------------


def test_a_slow_decode_is_answered_422_without_blocking_the_server(checkpoint, png_bytes, monkeypatch):
    """Decoding that outlasts the limit: 422 for that upload, 503 for one that cannot even start while the only
    decode thread is still busy with it, and meanwhile every other route answers."""
    import httpx

    entered, release = threading.Event(), threading.Event()

    def stuck(data, name=None):
        entered.set()
        release.wait(120)
        raise AssertionError("released")

    monkeypatch.setattr(service, "decode_grayscale", stuck)
    app = create_app(checkpoint, decode_timeout=1.0, decode_threads=1)
    try:
        with running_server(app) as url, httpx.Client(base_url=url, timeout=120) as http:
            answers = {}
            slow = threading.Thread(target=lambda: answers.update(slow=post(http, png_bytes)))
            slow.start()
            assert entered.wait(60)
            assert http.get("/healthz").status_code == 200  # while the decode is stuck
            assert http.get("/api/model").status_code == 200
            slow.join(120)
            assert answers["slow"].status_code == 422
            assert "longer than this server's limit of 1 s" in answers["slow"].json()["detail"]
            busy = post(http, png_bytes)
            assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
            metrics = http.get("/metrics").text
            assert "cxr_decode_timeouts_total 2.0" in metrics
    finally:
        release.set()


def test_dicom_pixel_budget_counts_every_frame(checkpoint):
    """Rows x Columns within the limit but x frames over it: refused (413) from the header, before any decoding."""
    from pydicom import dcmread

    ds = dcmread(io.BytesIO(dicom_bytes(np.zeros((8, 8), np.uint8))))
    side = int((Image.MAX_IMAGE_PIXELS * 0.8) ** 0.5)
    ds.Rows = ds.Columns = side
    ds.NumberOfFrames = 2
    buffer = io.BytesIO()
    ds.save_as(buffer)
    client = TestClient(create_app(checkpoint))
    answer = post(client, buffer.getvalue(), "multi.dcm")
    assert answer.status_code == 413 and "2 frame(s)" in answer.json()["detail"]
    ds.NumberOfFrames = 1  # one frame fits the budget: now the decoder sees the pixels are missing
    buffer = io.BytesIO()
    ds.save_as(buffer)
    assert post(client, buffer.getvalue(), "one.dcm").status_code == 400


# --- 4. Operations -------------------------------------------------------------------------------------------------


def metric(text: str, name: str, **labels) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_metrics_per_app(checkpoint, png_bytes):
    first, second = TestClient(create_app(checkpoint)), TestClient(create_app(checkpoint, api_keys=KEYS))
    for _ in range(3):
        assert post(first, png_bytes).status_code == 200
    assert post(first, b"text, not an image").status_code == 415
    assert second.get("/api/model").status_code == 401
    answer = first.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert metric(text, "cxr_http_requests_total", route="/api/predict", method="POST", status="200") == 3
    assert metric(text, "cxr_http_requests_total", route="/api/predict", method="POST", status="415") == 1
    assert metric(text, "cxr_http_request_duration_seconds_count", route="/api/predict", method="POST") == 4
    assert metric(text, "cxr_model_load_seconds") > 0 and metric(text, "cxr_model_ready") == 1
    assert metric(text, "cxr_upload_bytes_count") == 4
    other = second.get("/metrics").text  # a registry per app: the first app's requests are not here
    assert metric(other, "cxr_http_requests_total", route="/api/predict", method="POST", status="200") is None
    assert metric(other, "cxr_http_requests_total", route="/api/model", method="GET", status="401") == 1
    first.get("/no/such/page")
    assert metric(first.get("/metrics").text, "cxr_http_requests_total", route="unmatched", status="404") == 1


def test_readiness_while_the_model_loads_in_the_background(checkpoint, png_bytes, monkeypatch):
    from cxr.inference.predict import load_predictor

    release = threading.Event()

    def slow_load(path, **options):
        release.wait(120)
        return load_predictor(path, **options)

    monkeypatch.setattr(serve_app, "load_predictor", slow_load)
    client = TestClient(create_app(checkpoint, load_in_background=True))
    try:
        assert client.get("/healthz").json() == {"status": "ok", "model": checkpoint.name}
        for answer in (client.get("/readyz"), client.get("/api/model"), post(client, png_bytes)):
            assert answer.status_code == 503 and "still loading" in answer.json()["detail"]
        assert metric(client.get("/metrics").text, "cxr_model_ready") == 0
    finally:
        release.set()
    for _ in range(1200):
        if client.get("/readyz").status_code == 200:
            break
        threading.Event().wait(0.1)
    assert client.get("/readyz").json() == {"status": "ready"}
    assert post(client, png_bytes).status_code == 200

    broken = TestClient(create_app(checkpoint.parent / "missing.ckpt", load_in_background=True))
    for _ in range(1200):
        if broken.get("/healthz").status_code == 503:
            break
        threading.Event().wait(0.1)
    for path in ("/healthz", "/readyz", "/api/model"):
        answer = broken.get(path)
        assert answer.status_code == 503 and "could not be loaded" in answer.json()["detail"], path


def test_audit_trail(checkpoint, png_bytes, tmp_path):
    audit = tmp_path / "audit.jsonl"
    client = TestClient(create_app(checkpoint, audit=audit))
    gray = np.asarray(Image.open(io.BytesIO(png_bytes)).convert("L"))
    dicom = planted(gray)
    answers = [post(client, png_bytes, "a.png"), post(client, dicom, MARKER_FILE), post(client, b"junk", "c.png")]
    assert [a.status_code for a in answers] == [200, 200, 415]
    text = audit.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert len(lines) == 2  # one per prediction, none for the refused upload
    for line, answer, data in zip(lines, answers, (png_bytes, dicom), strict=False):
        assert set(line) == {"time", "request_id", "upload_sha256", "upload_bytes", "model", "probabilities"}
        assert line["time"].endswith("Z")
        assert line["request_id"] == answer.headers["x-request-id"]
        assert line["upload_sha256"] == hashlib.sha256(data).hexdigest() and line["upload_bytes"] == len(data)
        assert line["probabilities"] == answer.json()["probabilities"]
        assert line["model"]["path"] == str(checkpoint.resolve())
        assert line["model"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert_no_marker(text, "audit trail")
    assert oct(audit.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(CxrError, match="cannot open the audit log"):
        create_app(checkpoint, audit=tmp_path / "no" / "such" / "dir" / "audit.jsonl")


def test_settings_from_environment(tmp_path):
    from cxr.inference.serve import ServeSettings

    key_file = tmp_path / "keys"
    key_file.write_text(KEYS[1] + "\n")
    environ = {
        "CXR_SERVE_MODEL": "model.onnx",
        "CXR_SERVE_MAX_UPLOAD_MB": "5",
        "CXR_API_KEY": KEYS[0],
        "CXR_API_KEY_FILE": str(key_file),
        "CXR_SERVE_DECODE_TIMEOUT": "2.5",
        "CXR_SERVE_AUDIT": str(tmp_path / "audit.jsonl"),
        "CXR_SERVE_BACKGROUND_LOAD": "1",
        "CXR_SERVE_BATCH_MAX": "4",
        "CXR_SERVE_BATCH_WAIT_MS": "2.5",
        "CXR_SERVE_PRECISION": "auto",
    }
    settings = ServeSettings.from_environment(environ)
    assert settings == ServeSettings(
        model=Path("model.onnx"), max_upload_mb=5.0, api_keys=KEYS, decode_timeout=2.5,
        audit=tmp_path / "audit.jsonl", load_in_background=True, batch_max=4, batch_wait_ms=2.5, precision="auto",
    )  # fmt: skip
    # What cxr serve --workers hands its workers reads back as the same settings (keys through their file).
    assert ServeSettings.from_environment({**settings.to_environment(key_file), "CXR_API_KEY": KEYS[0]}) == (
        settings.model_copy(update={"model": Path("model.onnx").resolve(), "audit": settings.audit.resolve()})
    )
    defaults = ServeSettings.from_environment({"CXR_SERVE_MODEL": "m.ckpt"})
    assert defaults.api_keys == () and not defaults.load_in_background and defaults.batch_max > 1
    assert defaults.precision == "fp32"
    with pytest.raises(CxrError, match="precision"):
        ServeSettings.from_environment({**environ, "CXR_SERVE_PRECISION": "fp16"})
    with pytest.raises(CxrError, match="decode_timeout"):
        ServeSettings.from_environment({**environ, "CXR_SERVE_DECODE_TIMEOUT": "soon"})
    with pytest.raises(CxrError, match="batch_max"):
        ServeSettings.from_environment({**environ, "CXR_SERVE_BATCH_MAX": "0"})
    with pytest.raises(CxrError, match="CXR_SERVE_MODEL"):
        ServeSettings.from_environment({})


def test_cli_defaults_are_the_servers():
    from cxr.cli import inference
    from cxr.inference.serve import batching

    assert (inference.BATCH_MAX, inference.BATCH_WAIT_MS) == (batching.BATCH_MAX, batching.BATCH_WAIT_MS)


SLOW_SERVER = """
import sys, time
from pathlib import Path

import uvicorn

from cxr.inference.predict import load_predictor
from cxr.inference.serve import create_app, uvicorn_options

checkpoint, port, entered, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
predictor = load_predictor(checkpoint)
fast = predictor.probabilities


def slow(batch):  # the request in flight: it waits, inside the model, for the test's go-ahead
    entered.touch()
    while not go.exists():
        time.sleep(0.02)
    return fast(batch)


predictor.probabilities = slow
uvicorn.run(create_app(checkpoint, predictor=predictor), host="127.0.0.1", port=port, **uvicorn_options(30))
"""


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow  # over 3 s on 2 cores: out of make test-fast
def test_sigterm_lets_the_request_in_flight_finish(checkpoint, png_bytes, tmp_path):
    """A live ``uvicorn`` process with cxr serve's options: SIGTERM while a prediction is inside the model; the
    server stops accepting connections, the prediction still answers 200, and the process exits cleanly."""
    import signal
    import subprocess
    import time

    import httpx

    script, entered, go = tmp_path / "slow_server.py", tmp_path / "entered", tmp_path / "go"
    script.write_text(SLOW_SERVER)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(service.__file__).parents[3]),
                                                                      os.environ.get("PYTHONPATH")]))}  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(script), str(checkpoint), str(port), str(entered), str(go)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        for _ in range(1200):  # up to 2 minutes for torch to import on a busy machine
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert process.poll() is None, process.stdout.read()
                time.sleep(0.1)
        answers = {}

        def predict():
            answers["slow"] = post(httpx.Client(base_url=url, timeout=120), png_bytes)

        thread = threading.Thread(target=predict)
        thread.start()
        for _ in range(1200):
            if entered.exists():
                break
            time.sleep(0.1)
        assert entered.exists(), "the prediction never reached the model"
        process.send_signal(signal.SIGTERM)
        for _ in range(1200):  # graceful shutdown begins: the listening socket closes
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                time.sleep(0.1)
            except httpx.TransportError:
                break
        else:
            pytest.fail("the server kept accepting connections after SIGTERM")
        assert process.poll() is None  # still running: waiting for the request in flight
        go.touch()
        thread.join(120)
        assert answers["slow"].status_code == 200, answers["slow"].text
        assert set(answers["slow"].json()["probabilities"])
        assert process.wait(120) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal once it has shut down
        log = process.stdout.read()
        assert "Finished server process" in log, log
        assert "cxr.access" in log and "route=/api/predict status=200" in log, log  # our access log, configured
    finally:
        go.touch()
        if process.poll() is None:
            process.kill()
            process.wait()
