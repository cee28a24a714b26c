"""Who is in a synthetic dataset: patients, their follow-ups, labels, demographics, split and blacklist.

``nih`` follows NIH ChestX-ray14's label counts (Wang et al., 2017; 112,120 images, No Finding 53.8%) through a
Gaussian copula: finding ``f`` is present in an image when ``a·g + k·h[cluster(f)] + b·p[patient, f] + c·e >
Φ⁻¹(1 - prevalence[f])``, with ``g`` an image's general sickness (findings co-occur), ``h`` a clinical cluster
(effusion with atelectasis and heart failure; infection; tumour; COPD; chronic pleuro-parenchymal disease), ``p`` the
patient's own tendency (findings persist across follow-ups) and ``e`` noise. Every term is standard normal and the
weights' squares sum to 1, so each finding's prevalence is exactly its target; ``a`` is set so that "No Finding" has
its target share (calibrated by Monte Carlo).

``flat`` gives every finding about 21% and No Finding about 20%, enough positives for small runs. There an image is
healthy with probability 0.187, and otherwise has each finding independently (still persisting across a patient's
follow-ups): findings co-occur, about 3.7 per abnormal image, but one finding's sign says almost nothing about
another's, so a model — and its Grad-CAM — has to find each sign itself rather than lean on its companions.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from cxr.errors import CxrError
from cxr.labels import FINDINGS, NO_FINDING

NIH_COUNTS = {
    "Atelectasis": 11559, "Cardiomegaly": 2776, "Consolidation": 4667, "Edema": 2303, "Effusion": 13317,
    "Emphysema": 2516, "Fibrosis": 1686, "Hernia": 227, "Infiltration": 19894, "Mass": 5782, "Nodule": 6331,
    "Pleural_Thickening": 3385, "Pneumonia": 1431, "Pneumothorax": 5302,
}  # fmt: skip
"""Images per finding in the full NIH release (``Data_Entry_2017_v2020.csv``, 112,120 images)."""
NIH_IMAGES = 112_120

CLUSTERS = (
    ("Atelectasis", "Cardiomegaly", "Edema", "Effusion"),
    ("Consolidation", "Infiltration", "Pneumonia"),
    ("Mass", "Nodule"),
    ("Emphysema", "Pneumothorax"),
    ("Fibrosis", "Pleural_Thickening"),
    ("Hernia",),
)
CLUSTER_WEIGHT, PATIENT_WEIGHT = 0.3, 0.5
GENERAL_WEIGHT = 0.386  # Monte Carlo: No Finding 53.8% with NIH's prevalences
FLAT_PREVALENCE, FLAT_HEALTHY = 0.21, 0.187  # 0.187 + 0.813 · (1 - 0.21 / 0.813)^14 = 0.20 without findings

FIRST_FOLDER_IMAGES, FOLDER_IMAGES = 4999, 10000  # NIH: images_001 holds 4,999 images, the others 10,000
TEST_SHARE = 25596 / 112120  # NIH's official test list: 22.8% of the images, patient-disjoint


@dataclass(frozen=True)
class ImageRecord:
    """One image of the dataset, with everything ``Data_Entry_2017_v2020.csv`` and the lists say about it."""

    index: int
    patient_id: int
    follow_up: int
    age: int
    sex: str
    view: str
    findings: tuple[str, ...]
    split: str  # "train_val" or "test"
    blacklisted: bool
    rgba: bool

    @property
    def name(self) -> str:
        """NIH's file name: 8-digit patient id, underscore, 3-digit follow-up number."""
        return f"{self.patient_id:08d}_{self.follow_up:03d}.png"

    @property
    def folder(self) -> str:
        """The NIH archive folder the image belongs to (``images_001`` ... ``images_012``)."""
        number = 1 if self.index < FIRST_FOLDER_IMAGES else 2 + (self.index - FIRST_FOLDER_IMAGES) // FOLDER_IMAGES
        return f"images_{number:03d}"

    @property
    def finding_labels(self) -> str:
        """The ``Finding Labels`` cell: findings joined by ``|`` in alphabetical order, or ``No Finding``."""
        return "|".join(self.findings) if self.findings else NO_FINDING


def prevalences(prevalence: str) -> np.ndarray:
    """Target share of images with each finding (canonical order) for a prevalence scheme."""
    if prevalence == "nih":
        return np.array([NIH_COUNTS[f] / NIH_IMAGES for f in FINDINGS])
    if prevalence == "flat":
        return np.full(len(FINDINGS), FLAT_PREVALENCE)
    raise CxrError(f"unknown prevalence {prevalence!r}: use 'nih' or 'flat'")


def sample_labels(rng: np.random.Generator, patient_index: np.ndarray, prevalence: str) -> np.ndarray:
    """Boolean (images × 14) labels for images of the given patients (indices into 0..P-1), as described above."""
    n, patients = len(patient_index), int(patient_index.max()) + 1 if len(patient_index) else 0
    general = rng.standard_normal((n, 1))
    cluster = rng.standard_normal((n, len(CLUSTERS)))[:, [_cluster(f) for f in FINDINGS]]
    persistent = rng.standard_normal((patients, len(FINDINGS)))[patient_index]
    noise = rng.standard_normal((n, len(FINDINGS)))
    if prevalence == "flat":
        healthy = rng.random(n) < FLAT_HEALTHY
        threshold = NormalDist().inv_cdf(1 - FLAT_PREVALENCE / (1 - FLAT_HEALTHY))
        b = PATIENT_WEIGHT
        return (b * persistent + np.sqrt(1 - b * b) * noise > threshold) & ~healthy[:, None]
    thresholds = np.array([NormalDist().inv_cdf(1 - q) for q in prevalences(prevalence)])
    a, k, b = GENERAL_WEIGHT, CLUSTER_WEIGHT, PATIENT_WEIGHT
    c = np.sqrt(1 - a * a - k * k - b * b)
    return a * general + k * cluster + b * persistent + c * noise > thresholds


def _cluster(finding: str) -> int:
    return next(i for i, members in enumerate(CLUSTERS) if finding in members)


def plan_cohort(images: int, seed: int, prevalence: str = "nih") -> list[ImageRecord]:
    """Patients with several follow-ups, labels, ages, sexes, views, a patient-wise split and a blacklist."""
    if images < 1:
        raise CxrError(f"--images must be at least 1, got {images}")
    prevalences(prevalence)  # validate early
    rng = np.random.default_rng([seed, 0])
    # Follow-ups per patient: geometric, mean ~3.3 (NIH: 112,120 images of 30,805 patients, 3.6 each).
    counts: list[int] = []
    total = 0  # a running total: re-summing the list each draw was quadratic in the number of patients
    while total < images:
        counts.append(min(int(rng.geometric(0.3)), 40, images - total))
        total += counts[-1]
    patient_index = np.repeat(np.arange(len(counts)), counts)
    follow_up = np.concatenate([np.arange(n) for n in counts])
    sex = np.where(rng.random(len(counts)) < 0.565, "M", "F")  # NIH: 56.5% male
    first_age = np.clip(np.round(rng.normal(47, 16.6, len(counts))), 2, 94).astype(int)
    # Follow-ups spread over months to years: each adds 0-2 years to the patient's age.
    aging = np.where(follow_up == 0, 0, rng.choice([0, 0, 0, 1, 1, 2], size=images))
    years = np.cumsum(aging)
    first_row = np.repeat(np.cumsum(counts) - counts, counts)
    age = np.minimum(first_age[patient_index] + years - years[first_row], 100)
    view = np.where(rng.random(images) < 0.6, "PA", "AP")  # NIH: 60% PA, 40% AP
    labels = sample_labels(rng, patient_index, prevalence)
    # Patient-wise split, about NIH's share of test images.
    test_patients, test_images = set(), 0
    for p in rng.permutation(len(counts)):
        if test_images >= TEST_SHARE * images or len(counts) - len(test_patients) <= 1:
            break
        test_patients.add(int(p))
        test_images += counts[p]
    # A few blacklisted (1%, drawn degraded) and RGBA (0.5%) images, as NIH has.
    black = set(rng.choice(images, max(1, round(0.01 * images)), replace=False).tolist()) if images >= 10 else set()
    candidates = [i for i in range(images) if i not in black]
    rgba = set(rng.choice(candidates, max(1, images // 200), replace=False).tolist()) if images >= 50 else set()
    return [
        ImageRecord(
            index=i,
            patient_id=int(patient_index[i]) + 1,
            follow_up=int(follow_up[i]),
            age=int(age[i]),
            sex=str(sex[patient_index[i]]),
            view=str(view[i]),
            findings=tuple(f for f, present in zip(FINDINGS, labels[i], strict=True) if present),
            split="test" if int(patient_index[i]) in test_patients else "train_val",
            blacklisted=i in black,
            rgba=i in rgba,
        )
        for i in range(images)
    ]
