"""Synthetic NIH ChestX-ray14: learnable, localisable radiograph phantoms in NIH's exact file layout.

``cxr synth`` (:func:`generate`) is how the tests and the demo exercise the whole pipeline without the real
45 GB. A patient keeps their anatomy (:mod:`.anatomy`) across follow-ups; each of the 14 findings is drawn as the
sign a radiologist looks for (:mod:`.opacities`, :mod:`.structures`) at a place fixed per patient
(:mod:`.findings`), and its box goes to ``BBox_List_2017.csv``; labels, demographics and splits follow NIH's
(:mod:`.cohort`); :mod:`.radiograph` turns density into 8-bit film; :mod:`.dataset` writes the files.
"""

from cxr.synth.anatomy import Pose, sample_pose
from cxr.synth.cohort import ImageRecord, plan_cohort
from cxr.synth.dataset import generate, render_record
from cxr.synth.phantom import Patient, Radiograph, render, sample_patient

__all__ = [
    "ImageRecord",
    "Patient",
    "Pose",
    "Radiograph",
    "generate",
    "plan_cohort",
    "render",
    "render_record",
    "sample_patient",
    "sample_pose",
]
