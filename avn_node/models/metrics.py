"""Metric functions of the evaluation (paper §III.D): ROC AUC, Youden point, F1, confusion, ECE, bootstrap CIs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import rankdata


def roc_auc(truth: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann–Whitney U, ties counted half); NaN when only one class is present."""
    truth = np.asarray(truth, bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(truth: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, thresholds descending, starting at (0, 0)."""
    truth = np.asarray(truth, bool)
    order = np.argsort(-np.asarray(score, float), kind="stable")
    s, t = np.asarray(score, float)[order], truth[order]
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(t)[distinct]
    fp = np.cumsum(~t)[distinct]
    tpr = np.r_[0.0, tp / max(1, truth.sum())]
    fpr = np.r_[0.0, fp / max(1, (~truth).sum())]
    return fpr, tpr, np.r_[np.inf, s[distinct]]


def youden_point(truth: np.ndarray, score: np.ndarray) -> tuple[float, float, float]:
    """``(threshold, sensitivity, specificity)`` maximising sensitivity + specificity − 1."""
    fpr, tpr, thr = roc_curve(truth, score)
    best = int(np.argmax(tpr - fpr))
    return float(thr[best]), float(tpr[best]), float(1 - fpr[best])


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows = truth, columns = prediction."""
    m = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(m, (np.asarray(truth, int), np.asarray(pred, int)), 1)
    return m


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """One-vs-rest sensitivity, specificity and F1 per class from a confusion matrix."""
    tp = np.diag(confusion).astype(float)
    fn = confusion.sum(1) - tp
    fp = confusion.sum(0) - tp
    tn = confusion.sum() - tp - fn - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "sensitivity": tp / (tp + fn),
            "specificity": tn / (tn + fp),
            "f1": 2 * tp / (2 * tp + fp + fn),
        }


def detection_scores(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    """``(precision, recall, F1)``; 0 where undefined."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return precision, recall, f1


def expected_calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Top-label ECE (Guo et al. 2017): bin by confidence, weight |accuracy − confidence| by bin share."""
    probabilities = np.asarray(probabilities, float)
    if len(probabilities) == 0:
        return float("nan")
    conf = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(truth)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def reliability(probabilities: np.ndarray, truth: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Per confidence bin: mean confidence, accuracy and count (for the reliability diagram)."""
    probabilities = np.asarray(probabilities, float)
    conf = probabilities.max(1)
    correct = probabilities.argmax(1) == np.asarray(truth)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    return [
        {
            "confidence": float(conf[which == b].mean()),
            "accuracy": float(correct[which == b].mean()),
            "count": int((which == b).sum()),
        }
        for b in range(bins)
        if (which == b).any()
    ]


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float], subjects: np.ndarray, resamples: int, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile interval of ``statistic(rows)`` over resamples of whole subjects.

    ``subjects[i]`` is the subject of row ``i``; each resample draws subjects with replacement and passes
    the row indices of every drawn copy. Resamples where the statistic is undefined (NaN) are skipped.
    """
    subjects = np.asarray(subjects)
    if resamples <= 0 or len(subjects) == 0:
        return float("nan"), float("nan")
    unique, inverse = np.unique(subjects, return_inverse=True)
    rows_of = [np.nonzero(inverse == k)[0] for k in range(len(unique))]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        drawn = rng.integers(0, len(unique), len(unique))
        value = statistic(np.concatenate([rows_of[k] for k in drawn]))
        if np.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, (2.5, 97.5))
    return float(lo), float(hi)
