"""``cxr dicom-node`` inside a real PACS: Debian's Orthanc on loopback sends it a CR made from a real NIH image, and
finds the node's SR (probabilities equal to ``cxr predict`` on the same file, to 1e-6) and Secondary Capture in the same
study; dcmtk's ``echoscu``/``storescu`` work as a second client; no file is written by the node meanwhile, no planted
identifier is logged; with Orthanc stopped, results are retried and counted failed.

Skipped without ``Orthanc``/``storescu`` (``apt-get install orthanc dcmtk``) unless ``CXR_REQUIRE_ORTHANC=1`` (CI).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("pynetdicom")

from test_pacs import SC_CLASS, SR_CLASS, cr_dataset, encoded, predicted_by_cli, sr_findings  # noqa: E402

from privacy_checks import assert_no_marker, writes_during  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]  # a hung PACS fails the test with its name
TOOLS = ("Orthanc", "storescu", "echoscu")


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    found = {tool: shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin") for tool in TOOLS}
    missing = [tool for tool, path in found.items() if not path]
    if missing:
        message = f"{', '.join(missing)} not installed (apt-get install orthanc dcmtk)"
        if os.environ.get("CXR_REQUIRE_ORTHANC") == "1":
            pytest.fail(message + " and CXR_REQUIRE_ORTHANC=1")
        pytest.skip(message)
    return found


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from conftest import tiny_checkpoint

    return tiny_checkpoint(tmp_path_factory.mktemp("pacs-orthanc") / "tiny.ckpt")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    from cxr.inference.predict import load_predictor

    return load_predictor(checkpoint)


def radiograph(sample_dir: Path, name: str):
    """A real NIH image at half its size (512 px: the test stays cheap, the pixels stay a radiograph's)."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(sample_dir / "images" / name).convert("L").reduce(2))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Orthanc:
    """Orthanc with a configuration of its own in ``folder``: storage there, HTTP on loopback only, the node as its one
    modality (C-STORE accepted from that AE title at that address only)."""

    def __init__(
        self,
        binary: str,
        folder: Path,
        dicom_port: int,
        node_port: int,
        plugins: tuple[str, ...] = (),
        http_port: int | None = None,
    ):
        self.dicom_port, self.http_port = dicom_port, http_port or free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        config = {
            "Name": "cxr-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "storage"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "Plugins": list(plugins),
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {"cxr": ["CXR", "127.0.0.1", node_port]}, "DicomAlwaysAllowStore": False,
            "DicomCheckModalityHost": True,
            "DicomCheckCalledAet": True, "HttpThreadsCount": 4, "DicomThreadsCount": 2, "ConcurrentJobs": 1,
        }  # fmt: skip
        (folder / "orthanc.json").write_text(json.dumps(config))
        self.log = open(folder / "orthanc.log", "wb")  # noqa: SIM115  closed in stop()
        self.process = subprocess.Popen([binary, str(folder / "orthanc.json")], stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.get("/system")
                return
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log = (folder / "orthanc.log").read_text()[-2000:]
                    raise RuntimeError(f"Orthanc did not start: {log}") from None
                time.sleep(0.1)

    def request(self, method: str, path: str, body: bytes | None = None):
        request = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=120) as answer:
            data = answer.read()
        return json.loads(data) if answer.headers.get_content_type() == "application/json" else data

    def get(self, path: str):
        return self.request("GET", path)

    def instances_of_study(self, study_uid: str) -> dict[str, bytes]:
        """``{SOP Class UID: file}`` of the study's instances (the last of each class)."""
        import io

        import pydicom

        found = self.request("POST", "/tools/lookup", study_uid.encode())
        study = next((item["ID"] for item in found if item["Type"] == "Study"), None)
        if study is None:
            return {}
        files = {}
        for instance in self.get(f"/studies/{study}/instances"):
            data = self.get(f"/instances/{instance['ID']}/file")
            files[str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPClassUID)] = data
        return files

    def wait_for(self, study_uid: str, classes: set[str], timeout: float = 120) -> dict[str, bytes]:
        deadline = time.monotonic() + timeout
        while not classes <= set(files := self.instances_of_study(study_uid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return files

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def storescu(tools: dict[str, str], port: int, path: Path) -> subprocess.CompletedProcess:
    command = [tools["storescu"], "-aet", "STORESCU", "-aec", "CXR", "127.0.0.1", str(port), str(path)]
    return subprocess.run(command, capture_output=True, text=True)


def test_orthanc_round_trip(tools, checkpoint, predictor, tmp_path, sample_dir, caplog):
    import io

    import pydicom

    from cxr.inference.serve.telemetry import AuditLog
    from cxr.pacs.node import DicomNode
    from cxr.pacs.run import node_settings

    caplog.set_level(logging.DEBUG)
    orthanc_port = free_port()
    settings = node_settings(
        "CXR", 0, f"127.0.0.1:{orthanc_port}:ORTHANC", ["ORTHANC@127.0.0.1", "STORESCU@localhost"],
        secondary_capture=True, retry_seconds=2,
    )  # fmt: skip
    audit = AuditLog(tmp_path / "audit.jsonl")
    audit.describe_model(predictor)
    node = DicomNode(predictor, settings, audit=audit).start()
    orthanc = None
    try:
        orthanc = Orthanc(tools["Orthanc"], tmp_path, orthanc_port, node.port)
        gray = radiograph(sample_dir, "00000013_003.png")

        # dcmtk as a second client: C-ECHO allowed and refused, then C-STORE of a file (also the warm-up).
        echo = [tools["echoscu"], "-aec", "CXR", "127.0.0.1", str(node.port)]
        assert subprocess.run([*echo, "-aet", "STORESCU"], capture_output=True).returncode == 0
        assert subprocess.run([*echo, "-aet", "INTRUDER"], capture_output=True).returncode != 0
        first = cr_dataset(gray)
        (tmp_path / "first.dcm").write_bytes(encoded(first))
        stored = storescu(tools, node.port, tmp_path / "first.dcm")
        assert stored.returncode == 0, stored.stderr
        assert {SR_CLASS, SC_CLASS} <= set(orthanc.wait_for(first.StudyInstanceUID, {SR_CLASS, SC_CLASS}))

        # Orthanc's REST API: upload, then ask Orthanc to send the instance to the node.
        ds = cr_dataset(gray)
        data = encoded(ds)
        uploaded = orthanc.request("POST", "/instances", data)

        def round_trip():
            orthanc.request("POST", "/modalities/cxr/store", uploaded["ID"].encode())
            return orthanc.wait_for(ds.StudyInstanceUID, {SR_CLASS, SC_CLASS})

        files, writes = writes_during(round_trip)
        assert writes == [], "the node wrote a file during the round trip"
        sr = pydicom.dcmread(io.BytesIO(files[SR_CLASS]))
        sc = pydicom.dcmread(io.BytesIO(files[SC_CLASS]))
        expected = predicted_by_cli(checkpoint, data, tmp_path)
        findings = sr_findings(sr)
        assert set(findings) == set(expected)
        for finding, (probability, _evaluation, referenced) in findings.items():
            assert probability == pytest.approx(expected[finding], abs=1e-6), finding
            assert referenced == ds.SOPInstanceUID
        assert sr.StudyInstanceUID == sc.StudyInstanceUID == ds.StudyInstanceUID
        assert len({sr.SeriesInstanceUID, sc.SeriesInstanceUID, ds.SeriesInstanceUID}) == 3
        assert sr.PatientID == ds.PatientID and sr.VerificationFlag == "UNVERIFIED"
        assert sc.BurnedInAnnotation == "YES"

        # Orthanc stopped: the next result is retried for --retry-seconds, then counted failed.
        orthanc.stop()
        orthanc = None
        (tmp_path / "third.dcm").write_bytes(encoded(cr_dataset(gray)))
        stored = storescu(tools, node.port, tmp_path / "third.dcm")
        assert stored.returncode == 0, stored.stderr
        deadline = time.monotonic() + 60
        while node.status().counts["results_failed"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        counts = node.status().counts
        assert (counts["results_sent"], counts["results_failed"], counts["associations_refused"]) == (2, 1, 1)
    finally:
        node.stop(drain_s=10)
        audit.close()
        if orthanc is not None:
            orthanc.stop()

    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "results=2 sent" in logged and "FAILED" in logged
    assert_no_marker(logged, "log records")
    trail = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(trail) == 3 and json.loads(trail[1])["probabilities"] == pytest.approx(expected, abs=1e-12)
    assert_no_marker("\n".join(trail), "audit trail")


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def test_orthanc_stow_rs(tools, predictor, tmp_path, sample_dir):
    """Results by STOW-RS only (``--stow-url``) into Orthanc's DICOMweb plugin (Debian's ``orthanc-dicomweb``)."""
    from cxr.pacs.node import DicomNode
    from cxr.pacs.run import node_settings

    if not DICOMWEB_PLUGIN.exists():
        message = f"{DICOMWEB_PLUGIN} is missing (apt-get install orthanc-dicomweb)"
        if os.environ.get("CXR_REQUIRE_ORTHANC") == "1":
            pytest.fail(message + " and CXR_REQUIRE_ORTHANC=1")
        pytest.skip(message)
    http_port = free_port()
    settings = node_settings(
        "CXR", 0, None, ["STORESCU@127.0.0.1"], secondary_capture=True,
        stow_url=f"http://127.0.0.1:{http_port}/dicom-web/", retry_seconds=30,
    )  # fmt: skip
    node = DicomNode(predictor, settings).start()
    orthanc = None
    try:
        orthanc = Orthanc(tools["Orthanc"], tmp_path, free_port(), node.port, (str(DICOMWEB_PLUGIN),), http_port)
        gray = radiograph(sample_dir, "00000001_000.png")
        ds = cr_dataset(gray)
        (tmp_path / "stow.dcm").write_bytes(encoded(ds))
        assert storescu(tools, node.port, tmp_path / "stow.dcm").returncode == 0
        files = orthanc.wait_for(ds.StudyInstanceUID, {SR_CLASS, SC_CLASS})
        assert {SR_CLASS, SC_CLASS} <= set(files)
        assert node.status().counts["results_sent"] == 1
    finally:
        node.stop(drain_s=10)
        if orthanc is not None:
            orthanc.stop()
