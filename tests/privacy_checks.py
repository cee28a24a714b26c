"""Checks shared by the tests of the services that receive patient data (``cxr serve``, ``cxr dicom-node``):
identifiers planted in a DICOM header must appear in no answer or log, and nothing received may be written to disk."""

from __future__ import annotations

import os
import sys

MARKERS = {
    "PatientName": "ZQMARKER^PATIENTNAME",
    "PatientID": "ZQMARKERPID4471",
    "PatientBirthDate": "19020317",
    "AccessionNumber": "ZQMARKERACC93",
    "InstitutionName": "ZQMARKER INSTITUTION",
    "ReferringPhysicianName": "ZQMARKER^REFERRER",
}
MARKER_FILE = "ZQMARKERFILE_DOE_JANE.dcm"


def assert_no_marker(text: str, where: str) -> None:
    for value in [*MARKERS.values(), MARKER_FILE, "ZQMARKERFILE", "ZQMARKER"]:
        assert value not in text, (value, where)


_AUDIT_HOOK: dict = {"armed": False, "events": []}


def _record_writes(event: str, args) -> None:
    if not _AUDIT_HOOK["armed"]:
        return
    if event == "open":
        path, _mode, flags = args
        if isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND):
            _AUDIT_HOOK["events"].append((event, path))
    elif event in ("tempfile.mkstemp", "tempfile.mkdtemp", "os.truncate"):
        _AUDIT_HOOK["events"].append((event, args))


def writes_during(action) -> list:
    """The files opened for writing (and temp files made) anywhere in this process while ``action`` runs."""
    if not getattr(sys, "_cxr_write_hook", False):
        sys.addaudithook(_record_writes)  # cannot be removed: armed only inside this function
        sys._cxr_write_hook = True
    _AUDIT_HOOK["events"] = []
    _AUDIT_HOOK["armed"] = True
    try:
        result = action()
    finally:
        _AUDIT_HOOK["armed"] = False
    return result, list(_AUDIT_HOOK["events"])
