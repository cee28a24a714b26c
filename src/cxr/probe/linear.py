"""Linear probes: one L2-regularised logistic regression per label on frozen embeddings.

Per label: the training rows that give the label (a NaN target is unknown, not negative) fit scikit-learn's
``LogisticRegression`` (L-BFGS) at each inverse strength ``C`` of :data:`C_GRID`; the ``C`` with the highest AUROC
on the validation rows wins (ties: the one with the lower validation log-loss, then the stronger regularisation).
Features are standardised with the training rows' mean and deviation first (the penalty then treats every feature
alike, as in the linear-probe protocols of CLIP, Radford et al. 2021, and DINOv2, Oquab et al. 2023), and the scaling
is folded back into the weights, so the head applies to raw embeddings: ``logit = x @ weight.T + bias``.

A label whose training rows hold one class (a small fraction may have no positive) cannot be fitted: its weights are
zero and its bias is the log-odds of the training prevalence (clipped), which ranks nothing and is reported as such.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from cxr.evaluation.metrics import auroc

C_GRID = tuple(float(c) for c in np.logspace(-4, 2, 7))
"""Inverse L2 strengths tried on validation: 1e-4 ... 1e2, one per decade."""
MAX_ITER = 1000
PRIOR_CLIP = 1e-3


@dataclass
class LinearHead:
    """Fitted weights on raw embeddings, ``(K, D)`` and ``(K,)``, with how each label's strength was chosen."""

    weight: np.ndarray
    bias: np.ndarray
    chosen_c: list[float | None]  # None: not fitted (one class in training)
    val_auroc: list[dict[str, float]] = field(default_factory=list)  # per label: {C: validation AUROC}
    notes: dict[str, str] = field(default_factory=dict)  # label -> why it was not fitted / how C was chosen

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float64) @ self.weight.T.astype(np.float64) + self.bias.astype(np.float64)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(x)))


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    return mean, np.where(std > 1e-12, std, 1.0)


def _path(x: np.ndarray, y: np.ndarray, grid, seed: int):
    """``(C, fitted model)`` along ``grid`` in increasing C, each fit starting from the previous solution (the
    regularisation path: a weaker penalty moves the weights little, so L-BFGS needs few steps)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(max_iter=MAX_ITER, random_state=seed, warm_start=True)
    for c in sorted(grid):
        with warnings.catch_warnings():  # a weak penalty on separable data may stop at max_iter: still a usable head
            warnings.simplefilter("ignore")
            model.set_params(C=c).fit(x, y)
        yield c, model


def fit_label(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, grid=C_GRID, seed: int = 0
) -> tuple[np.ndarray, float, float | None, dict[str, float], str]:
    """One label on standardised features: ``(weight (D,), bias, chosen C or None, {C: val AUROC}, note)``."""
    known_train, known_val = ~np.isnan(y_train), ~np.isnan(y_val)
    xt, yt = x_train[known_train], y_train[known_train].astype(np.int64)
    xv, yv = x_val[known_val], y_val[known_val].astype(np.int64)
    if len(np.unique(yt)) < 2:
        prior = float(np.clip(yt.mean() if len(yt) else 0.5, PRIOR_CLIP, 1 - PRIOR_CLIP))
        note = f"not fitted: {len(yt)} training rows with one class; constant log-odds of {prior:.3g}"
        return np.zeros(x_train.shape[1]), float(np.log(prior / (1 - prior))), None, {}, note
    if len(np.unique(yv)) < 2:
        _, model = next(_path(xt, yt, [1.0], seed))
        note = "C = 1 (validation has one class: nothing to choose on)"
        return model.coef_[0].copy(), float(model.intercept_[0]), 1.0, {}, note
    best, scores = None, {}
    for c, model in _path(xt, yt, grid, seed):
        p = model.predict_proba(xv)[:, 1]
        score = float(auroc(yv[:, None], p[:, None])[0])
        scores[f"{c:g}"] = score
        key = (score, -_log_loss(yv, p), -c)
        if best is None or key > best[0]:
            best = (key, c, model.coef_[0].copy(), float(model.intercept_[0]))
    _, c, weight, bias = best
    return weight, bias, c, scores, f"C = {c:g} chosen on validation AUROC"


def fit_linear_head(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, labels: list[str],
    grid=C_GRID, seed: int = 0,
) -> LinearHead:  # fmt: skip
    """Fit every label (see the module doc); targets ``(n, K)`` float with NaN for unknown."""
    x_train, x_val = np.asarray(x_train, np.float64), np.asarray(x_val, np.float64)
    mean, std = _standardise(x_train)
    zt, zv = (x_train - mean) / std, (x_val - mean) / std
    weights, biases, chosen, scores, notes = [], [], [], [], {}
    for k, label in enumerate(labels):
        w, b, c, per_c, note = fit_label(zt, y_train[:, k], zv, y_val[:, k], grid, seed)
        # Fold the standardisation into the raw-feature head: w.(x - m)/s + b = (w/s).x + (b - w.(m/s)).
        weights.append(w / std)
        biases.append(b - float(np.dot(w, mean / std)))
        chosen.append(c)
        scores.append(per_c)
        notes[label] = note
    return LinearHead(np.asarray(weights, np.float32), np.asarray(biases, np.float32), chosen, scores, notes)
