"""``cxr dicom-node`` against pynetdicom peers on loopback: the round trip (SR and SC equal to ``cxr predict``), the
allow list, back-pressure, bad instances, a destination that is down, no file written and no identifier logged.
The same against a real PACS (Orthanc) and dcmtk is ``tests/pacs/test_pacs_orthanc.py``."""

from __future__ import annotations

import io
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")

from conftest import tiny_checkpoint  # noqa: E402
from cxr.errors import CxrError  # noqa: E402
from cxr.pacs.node import DicomNode, NodeSettings  # noqa: E402
from cxr.pacs.policy import AssociationPolicy, Destination, Peer, skip_reason  # noqa: E402
from cxr.pacs.sender import RetryPolicy  # noqa: E402
from privacy_checks import MARKERS, assert_no_marker, writes_during  # noqa: E402

SAMPLE = "00000013_003.png"
CR = "1.2.840.10008.5.1.4.1.1.1"
SR_CLASS, SC_CLASS = "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.7"


def cr_dataset(gray: np.ndarray, **attributes):
    """A CR image of ``gray`` (8-bit MONOCHROME2) in a new study, with the identifiers of ``MARKERS`` planted."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = CR
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.ViewPosition, ds.BodyPartExamined = "CR", "PA", "CHEST"
    ds.PatientSex, ds.StudyDate, ds.StudyTime, ds.StudyID = "F", "20240102", "101500", "1"
    ds.SeriesNumber, ds.InstanceNumber, ds.Manufacturer = 1, 1, "test"
    for keyword, value in {**MARKERS, **attributes}.items():
        setattr(ds, keyword, value)
    ds.set_pixel_data(gray, "MONOCHROME2", 8)
    return ds


def encoded(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def sr_findings(sr) -> dict[str, tuple[float, str, str]]:
    """``{finding: (probability, present/absent meaning, referenced SOP Instance UID)}`` read from an SR's content
    tree: each measurement group's finding type (DCM 121071), NUM item and qualitative evaluation."""
    found = {}

    def walk(items):
        for item in items:
            children = list(item.get("ContentSequence", []))
            codes = {
                child.ConceptNameCodeSequence[0].CodeMeaning: child
                for child in children
                if "ConceptNameCodeSequence" in child
            }
            if item.ValueType == "CONTAINER" and "Finding" in codes:
                finding = codes["Finding"].ConceptCodeSequence[0].CodeMeaning
                number = next(child for child in children if child.ValueType == "NUM")
                value = number.MeasuredValueSequence[0]
                probability = float(value.get("FloatingPointValue", value.NumericValue))
                evaluation = codes[finding].ConceptCodeSequence[0].CodeMeaning
                image = next(child for child in children if child.ValueType == "IMAGE")
                found[finding] = (probability, evaluation, image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            walk(children)

    walk(sr.ContentSequence)
    return found


def predicted_by_cli(checkpoint: Path, data: bytes, tmp_path: Path) -> dict[str, float]:
    """What ``cxr predict`` says about the same instance written as a file."""
    from cxr.inference.predict import predict_images

    path = tmp_path / "same-instance.dcm"
    path.write_bytes(data)
    return predict_images(checkpoint, [path])[0]["probabilities"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("pacs") / "tiny.ckpt")


@pytest.fixture(scope="module")
def predictor(checkpoint):
    from cxr.inference.predict import load_predictor

    return load_predictor(checkpoint)


@pytest.fixture(scope="module")
def gray(sample_dir) -> np.ndarray:
    image = Image.open(sample_dir / "images" / SAMPLE).convert("L")
    return np.asarray(image.resize((256, 256), Image.Resampling.BOX))  # smaller: the tests stay cheap


class Sink:
    """A storage SCP that keeps what it receives in memory: the PACS the node sends its results to."""

    def __init__(self):
        from pynetdicom import AE, evt

        self.received, self.ae = [], AE(ae_title="PACS")
        for sop_class in (SR_CLASS, SC_CLASS):
            self.ae.add_supported_context(sop_class)
        handlers = [(evt.EVT_C_STORE, self._store)]
        self.server = self.ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = self.server.server_address[1]

    def _store(self, event) -> int:
        dataset = event.dataset
        dataset.file_meta = event.file_meta
        self.received.append(dataset)
        return 0x0000

    def wait_for(self, count: int, timeout: float = 60.0) -> list:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return list(self.received)


@pytest.fixture
def sink():
    sink = Sink()
    yield sink
    sink.server.shutdown()


def settings_for(port: int, **options) -> NodeSettings:
    destination = Destination("127.0.0.1", port, "PACS")
    policy = AssociationPolicy([Peer("PACS", "127.0.0.1"), Peer("MODALITY", "127.0.0.1")])
    return NodeSettings(ae_title="CXR", destination=destination, policy=policy, port=0, **options)


@pytest.fixture
def start_node(predictor):
    nodes = []

    def start(settings: NodeSettings, worker: bool = True) -> DicomNode:
        nodes.append(DicomNode(predictor, settings).start(worker=worker))
        return nodes[-1]

    yield start
    for node in nodes:
        node.stop(drain_s=5)


def associate(node: DicomNode, ae_title: str = "MODALITY", bind: str = "127.0.0.1", contexts=(CR,)):
    from pynetdicom import AE

    ae = AE(ae_title=ae_title)
    for sop_class in contexts:
        ae.add_requested_context(sop_class)
    ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", node.port, ae_title="CXR", bind_address=(bind, 0))


def store(node: DicomNode, ds, **options) -> int:
    assoc = associate(node, **options)
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def test_round_trip_sr_and_sc_equal_cxr_predict(start_node, sink, checkpoint, gray, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    node = start_node(settings_for(sink.port, secondary_capture=True))
    ds = cr_dataset(gray)
    store(node, cr_dataset(gray))  # warm-up: the first prediction imports and opens what it needs lazily
    sink.wait_for(2)

    status, writes = writes_during(lambda: (store(node, ds), sink.wait_for(4))[0])
    assert status == 0x0000
    assert writes == [], "the node wrote a file while receiving, predicting and sending"
    results = {d.SOPClassUID: d for d in sink.received[2:]}
    assert set(results) == {SR_CLASS, SC_CLASS}
    sr, sc = results[SR_CLASS], results[SC_CLASS]

    expected = predicted_by_cli(checkpoint, encoded(ds), tmp_path)
    findings = sr_findings(sr)
    assert set(findings) == set(expected)
    thresholds = node.algorithm.thresholds
    for finding, (probability, evaluation, referenced) in findings.items():
        assert probability == pytest.approx(expected[finding], abs=1e-6), finding
        assert evaluation == ("Present" if expected[finding] >= thresholds[finding] else "Absent")
        assert referenced == ds.SOPInstanceUID
    for result in (sr, sc):
        assert result.StudyInstanceUID == ds.StudyInstanceUID and result.SeriesInstanceUID != ds.SeriesInstanceUID
        assert result.PatientID == ds.PatientID and str(result.PatientName) == str(ds.PatientName)
        equipment = [item for item in result.ContributingEquipmentSequence if item.Manufacturer == "cxr"]
        assert len(equipment) == 1 and "threshold Atelectasis=0.2," in equipment[0].ContributionDescription
        assert equipment[0].SoftwareVersions.startswith(node.algorithm.version.split()[0])
    assert sr.SeriesInstanceUID != sc.SeriesInstanceUID
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    assert "NOT FOR DIAGNOSTIC USE" in str(sr.ContentSequence[-1].TextValue)
    assert sc.BurnedInAnnotation == "YES" and sc.PhotometricInterpretation == "RGB"
    assert sc.Columns == gray.shape[1] and sc.Rows > gray.shape[0]  # the banner above the radiograph
    assert node.status().counts["results_sent"] == 2

    logged = "\n".join(f"{r.name} {r.getMessage()}" for r in caplog.records)
    assert "cxr.pacs" in logged and "results=2 sent" in logged
    assert_no_marker(logged, "log records")


def test_association_refused_unless_allowed(start_node, sink, gray):
    node = start_node(settings_for(sink.port))
    assert associate(node, ae_title="INTRUDER").is_rejected
    assert associate(node, ae_title="MODALITY", bind="127.0.0.2").is_rejected  # allowed title, other address
    assoc = associate(node)
    assert assoc.is_established and int(assoc.send_c_echo().Status) == 0
    assoc.release()
    assert node.status().counts["associations_refused"] == 2


def test_bad_instances_fail_and_the_node_keeps_serving(start_node, sink, gray):
    node = start_node(settings_for(sink.port))
    truncated = cr_dataset(gray)
    truncated.PixelData = truncated.PixelData[: gray.size // 3]
    assoc = associate(node)
    answer = assoc.send_c_store(truncated)
    assoc.release()
    assert (int(answer.Status), answer.ErrorComment) == (0xC000, "truncated pixel data")
    assert store(node, cr_dataset(gray, ViewPosition="LL")) == 0x0000  # a lateral: acknowledged, skipped
    assert store(node, cr_dataset(gray, BodyPartExamined="KNEE")) == 0x0000
    assert store(node, cr_dataset(gray)) == 0x0000
    assert len(sink.wait_for(1)) == 1 and sink.received[0].SOPClassUID == SR_CLASS
    counts = node.status().counts
    assert (counts["failed_decode"], counts["skipped"], counts["predicted"]) == (1, 2, 1)


def test_back_pressure_answers_out_of_resources(start_node, sink, gray):
    node = start_node(settings_for(sink.port, queue_size=1), worker=False)  # nothing drains the queue
    assert store(node, cr_dataset(gray)) == 0x0000
    assert store(node, cr_dataset(gray)) == 0xA700
    small = start_node(settings_for(sink.port, max_instance_bytes=gray.size // 2))
    assert store(small, cr_dataset(gray)) == 0xA700
    assert node.status().counts["refused_busy"] == 1 and small.status().counts["refused_too_large"] == 1


def test_destination_down_is_retried_then_counted_failed(start_node, gray, caplog):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    retry = RetryPolicy(deadline_s=1.0, first_delay_s=0.1, factor=2.0, max_delay_s=0.4)
    node = start_node(settings_for(closed, retry=retry))
    caplog.set_level(logging.INFO, logger="cxr.pacs")
    assert store(node, cr_dataset(gray)) == 0x0000
    deadline = time.monotonic() + 60
    while node.status().counts["results_failed"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert node.status().counts["results_failed"] == 1
    failure = next(r.getMessage() for r in caplog.records if "FAILED" in r.getMessage())
    attempts = int(failure.split("attempts=")[1].split()[0])
    assert attempts >= 3 and "results_failed=1" in failure  # 0.1 + 0.2 + 0.4 s of waits fit in the 1 s deadline


def test_policy_words():
    assert Destination.parse("pacs.example.org:4242:ORTHANC") == Destination("pacs.example.org", 4242, "ORTHANC")
    for bad in ("pacs:ORTHANC", "pacs:99999:ORTHANC", "pacs:4242:" + "X" * 17):
        with pytest.raises(CxrError, match="send-to"):
            Destination.parse(bad)
    with pytest.raises(CxrError, match="AET@HOST"):
        Peer.parse("ORTHANC")
    assert Peer.parse("ORTHANC@localhost") == Peer("ORTHANC", "127.0.0.1")
    policy = AssociationPolicy.for_node([], Destination("localhost", 4242, "ORTHANC"))
    assert policy.admits("ORTHANC", "127.0.0.1") and not policy.admits("ORTHANC", "10.1.1.1")
    assert AssociationPolicy([Peer("ANY", "*")]).admits("ANY  ", "10.1.1.1")
    from pydicom.dataset import Dataset

    header = Dataset()
    assert skip_reason(header) is None
    header.ViewPosition = "LL"
    assert skip_reason(header) == "view position LL is not frontal"
    header.ViewPosition, header.BodyPartExamined = "AP", "ABDOMEN"
    assert skip_reason(header) == "body part examined is not the chest"
    header.BodyPartExamined, header.Manufacturer, header.BurnedInAnnotation = "CHEST", "cxr", "YES"
    assert skip_reason(header) == "a cxr result (loop guard)"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_cli_node_with_metrics_and_audit(checkpoint, predictor, sink, gray, tmp_path):
    """``cxr dicom-node`` as a process: echo, a store whose SR reaches the PACS, ``/metrics``, the audit line, and on
    SIGTERM a drained queue and the final counts on stdout."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import urllib.request

    ports = []
    for _ in range(2):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    node_port, metrics_port = ports
    audit = tmp_path / "audit.jsonl"
    command = [
        sys.executable, "-m", "cxr", "dicom-node", str(checkpoint), "--port", str(node_port),
        "--send-to", f"127.0.0.1:{sink.port}:PACS", "--allow", "MODALITY@127.0.0.1",
        "--metrics-port", str(metrics_port), "--audit", str(audit),
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        from pynetdicom import AE

        client = AE(ae_title="MODALITY")
        client.add_requested_context(CR)
        deadline = time.monotonic() + 180
        while not (assoc := client.associate("127.0.0.1", node_port, ae_title="CXR")).is_established:
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
            time.sleep(0.5)
        ds = cr_dataset(gray)
        assert int(assoc.send_c_store(ds).Status) == 0
        assoc.release()
        assert sink.wait_for(1)[0].SOPClassUID == SR_CLASS
        deadline = time.monotonic() + 30
        while "cxr_dicom_results_sent_total 1.0" not in (
            metrics := urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
        ):
            assert time.monotonic() < deadline, metrics
            time.sleep(0.1)
        assert "cxr_dicom_received_total 1.0" in metrics and "cxr_dicom_queue_size 8.0" in metrics
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err[-2000:]
    assert "received=1 predicted=1" in out and "results_sent=1 results_failed=0" in out
    line = json.loads(audit.read_text())
    assert line["instance_bytes"] > gray.size and set(line["probabilities"]) == set(predictor.labels)
    assert_no_marker(out + err + audit.read_text(), "process output and audit trail")


def test_reasons_keep_no_library_detail():
    from cxr.imaging.dicom import DicomError
    from cxr.pacs.node import safe_reason

    assert safe_reason(DicomError("instance 1f: truncated pixel data (10 of 99 bytes)")) == "truncated pixel data"
    assert safe_reason(ValueError(f"invalid value: {MARKERS['PatientName']}")) == "ValueError"


def test_results_for_a_source_without_patient_or_study_attributes(predictor, gray):
    """Exports and test data often lack the Type 2 patient/study attributes: the SR and SC still build, with them
    present and empty, in the source's study."""
    import pydicom

    from cxr.pacs import results

    ds = cr_dataset(gray)
    for keyword in (*MARKERS, "PatientSex", "StudyDate", "StudyTime", "StudyID"):
        delattr(ds, keyword)
    header = pydicom.dcmread(io.BytesIO(encoded(ds)), stop_before_pixels=True)
    algorithm = results.Algorithm.of(predictor, "0" * 64)
    sr = results.structured_report(header, dict.fromkeys(predictor.labels, 0.5), algorithm)
    sc = results.secondary_capture(header, np.zeros((8, 8, 3), np.uint8), algorithm)
    for result in (sr, sc):
        result = pydicom.dcmread(io.BytesIO(encoded(result)))
        assert result.StudyInstanceUID == ds.StudyInstanceUID
        assert "PatientID" in result and not result.PatientID
    assert "PatientID" not in header  # the source's header itself is left as it was
