"""The node's results as standard DICOM objects (highdicom): a Structured Report and a Secondary Capture.

The SR is a Comprehensive 3D SR holding TID 1500 "Measurement Report": per finding one measurement group (TID 1501)
with the finding as its type, the probability (DCM 122157 "Probability", unit UCUM ``1``), present/absent at the
model's threshold (DCM 121053 / 121054), the algorithm (TID 4019: name, version, that threshold as parameter) and the
source image it was computed on. The same algorithm is named as contributing equipment (PS3.3 C.12.1.1.5; IHE AI
Results), the document is UNVERIFIED and says it is not for diagnostic use. Findings are coded in a local scheme,
``99CXR`` (PS3.16 8.2: designators beginning with 99 are private), with NIH's label names as code values and
meanings. The Secondary Capture is the radiograph with the Grad-CAM overlay of the positive findings and a text
banner burned in (``BurnedInAnnotation`` YES). Both go into the source's study (patient and study attributes copied
by highdicom from the source header), each kind into a series of its own.

UIDs are derived from the source instance and the model (``generate_uid`` with entropy sources), so a result sent
twice, after a retry, is the same instance to the PACS, not a duplicate.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass

import cv2
import numpy as np

from cxr.pacs.policy import MANUFACTURER

CODING_SCHEME = "99CXR"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE: research software, results unverified by a physician."
SR_SERIES_DESCRIPTION = "cxr AI results (not for diagnostic use)"
SC_SERIES_DESCRIPTION = "cxr Grad-CAM (not for diagnostic use)"
DEFAULT_ORIENTATION = ("L", "F")
"""Patient Orientation of the Secondary Capture when the source has none: a frontal chest radiograph's conventional
display (patient's left to the right of the screen, feet down)."""


@dataclass(frozen=True)
class Algorithm:
    """The model as the results name it: what IHE AI Results calls the algorithm and its producing equipment."""

    name: str
    version: str
    labels: tuple[str, ...]
    thresholds: Mapping[str, float]
    device_uid: str

    @classmethod
    def of(cls, predictor, model_sha256: str) -> Algorithm:
        from pydicom.uid import generate_uid

        name = f"cxr {predictor.architecture.name}"  # the network (resnet18), from the artifact's ArchitectureSpec
        version = f"{predictor.package_version} model-sha256:{model_sha256[:16]}"
        thresholds = {label: float(predictor.thresholds[label]) for label in predictor.labels}
        uid = generate_uid(entropy_srcs=["cxr dicom-node", model_sha256])
        return cls(name[:64], version[:64], tuple(predictor.labels), thresholds, uid)

    def parameters(self, labels: tuple[str, ...] | None = None) -> list[str]:
        """``threshold <finding>=<value>`` for ``labels`` (default: every output)."""
        return [f"threshold {label}={self.thresholds[label]:.6g}" for label in labels or self.labels]

    def positive(self, probabilities: Mapping[str, float]) -> list[str]:
        """The findings at or above their threshold, most probable first (as ``cxr predict``'s ``positive``)."""
        found = [label for label in self.labels if probabilities[label] >= self.thresholds[label]]
        return sorted(found, key=lambda label: -probabilities[label])


def finding_code(label: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=label, scheme_designator=CODING_SCHEME, meaning=label)


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["cxr dicom-node", *parts])


def _equipment(algorithm: Algorithm):
    from highdicom import ContributingEquipment
    from pydicom.sr.codedict import codes

    return ContributingEquipment(
        MANUFACTURER,
        codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algorithm.name,
        software_versions=algorithm.version,
        contribution_datetime=datetime.datetime.now(datetime.UTC).replace(tzinfo=None),
        contribution_description=("thresholds: " + ", ".join(algorithm.parameters()))[:1024],
    )


def _finding_group(label: str, probability: float, algorithm: Algorithm, source_uid: str, source_image):
    """TID 1501 for one finding; its TID 4019 names the algorithm with the one threshold that decided present/absent
    (all thresholds are in the contributing equipment's description)."""
    import highdicom.sr as sr
    from pydicom.sr.codedict import codes

    present = probability >= algorithm.thresholds[label]
    algorithm_id = sr.AlgorithmIdentification(
        algorithm.name, algorithm.version, algorithm.parameters((label,)), manufacturer=MANUFACTURER
    )
    return sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=sr.TrackingIdentifier(uid=_uid(source_uid, algorithm.version, label), identifier=label),
        finding_type=finding_code(label),
        algorithm_id=algorithm_id,
        measurements=[sr.Measurement(name=codes.DCM.Probability, value=float(probability), unit=codes.UCUM.NoUnits)],
        qualitative_evaluations=[
            sr.QualitativeEvaluation(finding_code(label), codes.DCM.Present if present else codes.DCM.Absent)
        ],
        source_images=[source_image],
    )


TYPE2_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex",  # Patient module (PS3.3 C.7.1.1)
    "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",  # General Study (C.7.2.1)
)  # fmt: skip
"""Type 2 attributes the results copy from the source: present, if empty, in every conforming image; highdicom's SR
reads them unconditionally, so a source without them (seen in exports and test data) gets them empty."""


def _complete_header(header):
    """``header``, or a copy of it with the missing Type 2 patient and study attributes present and empty."""
    missing = [keyword for keyword in TYPE2_PATIENT_STUDY if keyword not in header]
    if not missing:
        return header
    from copy import deepcopy

    header = deepcopy(header)
    for keyword in missing:
        setattr(header, keyword, None)
    return header


def structured_report(header, probabilities: Mapping[str, float], algorithm: Algorithm):
    """The Comprehensive 3D SR (TID 1500) of one predicted instance; ``header`` is the source without pixels."""
    import highdicom.sr as sr
    from pydicom.sr.codedict import codes

    header = _complete_header(header)
    device = sr.DeviceObserverIdentifyingAttributes(
        uid=algorithm.device_uid, name=algorithm.name, manufacturer_name=MANUFACTURER, model_name=algorithm.version
    )
    context = sr.ObservationContext(
        observer_device_context=sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    source_uid = str(header.SOPInstanceUID)
    source_image = sr.SourceImageForMeasurementGroup.from_source_image(header)
    groups = [
        _finding_group(label, probabilities[label], algorithm, source_uid, source_image) for label in algorithm.labels
    ]
    report = sr.MeasurementReport(
        observation_context=context,
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
    )
    report[0].ContentSequence.append(
        sr.TextContentItem(
            name=codes.DCM.Comment, value=NOT_FOR_DIAGNOSIS, relationship_type=sr.RelationshipTypeValues.CONTAINS
        )
    )
    document = sr.Comprehensive3DSR(
        evidence=[header],
        content=report,
        series_instance_uid=_uid(str(header.StudyInstanceUID), algorithm.version, "sr"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=_uid(source_uid, algorithm.version, "sr"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_verified=False,
        contributing_equipment=[_equipment(algorithm)],
    )
    document.SeriesDescription = SR_SERIES_DESCRIPTION
    return document


def banner_image(rgb: np.ndarray, lines: list[str]) -> np.ndarray:
    """``rgb`` (the overlay, source geometry) under a black strip holding ``lines`` in white, wrapped at commas to
    the image's width."""
    width = rgb.shape[1]
    scale, thickness = max(width / 1400, 0.35), max(1, round(2 * max(width / 1400, 0.35)))
    wrapped = [piece for line in lines for piece in _wrap(line, width - 12, scale, thickness)]
    line_height = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][1] * 2
    strip = np.zeros((line_height * len(wrapped) + line_height // 2, width, 3), dtype=np.uint8)
    for row, text in enumerate(wrapped):
        origin = (6, line_height * (row + 1))
        cv2.putText(strip, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([strip, rgb], axis=0))


def _wrap(text: str, width: int, scale: float, thickness: int) -> list[str]:
    """``text`` cut after commas into lines no wider than ``width`` pixels (a single long piece stays whole)."""
    lines, current = [], ""
    for piece in text.split(", "):
        candidate = f"{current}, {piece}" if current else piece
        if current and cv2.getTextSize(candidate, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)[0][0] > width:
            lines.append(current + ",")
            candidate = piece
        current = candidate
    return [*lines, current]


def banner_lines(probabilities: Mapping[str, float], algorithm: Algorithm) -> list[str]:
    positive = algorithm.positive(probabilities)
    found = ", ".join(f"{label} {probabilities[label]:.2f}" for label in positive) or "no finding above its threshold"
    return [f"{algorithm.name} - NOT FOR DIAGNOSTIC USE", f"Grad-CAM: {found}"]


def _orientation(header) -> tuple[str, str]:
    """The source's Patient Orientation (0020,0020) when it is two single biped directions, else the default."""
    try:
        orientation = tuple(str(value).strip().upper() for value in (header.get("PatientOrientation") or ()))
    except Exception:  # a malformed value: the default is as good as any
        return DEFAULT_ORIENTATION
    if len(orientation) == 2 and all(value in ("A", "P", "R", "L", "H", "F") for value in orientation):
        return orientation
    return DEFAULT_ORIENTATION


def secondary_capture(header, pixels: np.ndarray, algorithm: Algorithm):
    """The Secondary Capture image of one result: ``pixels`` (RGB uint8, the banner above the overlay)."""
    from highdicom.sc import SCImage

    orientation = _orientation(header)
    source_uid = str(header.SOPInstanceUID)
    image = SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=_uid(str(header.StudyInstanceUID), algorithm.version, "sc"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=_uid(source_uid, algorithm.version, "sc"),
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=orientation,
        contributing_equipment=[_equipment(algorithm)],
    )
    image.BurnedInAnnotation = "YES"
    image.SeriesDescription = SC_SERIES_DESCRIPTION
    image.DerivationDescription = "Grad-CAM overlay of the positive findings, with a text banner"
    return image
