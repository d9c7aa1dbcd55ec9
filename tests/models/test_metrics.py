"""Metric functions against cases computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avn_node.ground_truth import Side, View
from avn_node.models.engine import match_boxes
from avn_node.models.evaluate import subject_sensitivity
from avn_node.models.metrics import (
    bootstrap_ci,
    confusion_matrix,
    detection_scores,
    expected_calibration_error,
    per_class_scores,
    roc_auc,
    roc_curve,
    youden_point,
)


def test_roc_auc_counts_concordant_pairs():
    # positives 0.35, 0.8 vs negatives 0.1, 0.4: pairs (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) → 3/4
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)


def test_roc_auc_counts_ties_half():
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == pytest.approx(0.5)
    assert roc_auc(np.array([0, 0, 1]), np.array([0.2, 0.7, 0.7])) == pytest.approx(0.75)


def test_roc_auc_is_nan_with_one_class():
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_roc_curve_ends_at_one_one_and_matches_auc_by_trapezoid():
    truth = np.array([0, 0, 1, 1, 0, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8, 0.6, 0.9])
    fpr, tpr, _ = roc_curve(truth, score)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(truth, score))


def test_youden_point_picks_best_threshold():
    threshold, sensitivity, specificity = youden_point(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
    # thresholds 0.8 (sens .5, spec 1), 0.4 (.5, .5), 0.35 (1, .5), 0.1 (1, 0): J = .5 first at 0.8
    assert (threshold, sensitivity, specificity) == (0.8, 0.5, 1.0)


def test_confusion_matrix_and_per_class_scores():
    truth = np.array([0, 0, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 2, 2, 0])
    m = confusion_matrix(truth, pred, 3)
    assert m.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    s = per_class_scores(m)
    # class 2: tp 2, fn 1, fp 0, tn 3 → sens 2/3, spec 1, F1 4/5
    assert s["sensitivity"][2] == pytest.approx(2 / 3)
    assert s["specificity"][2] == pytest.approx(1.0)
    assert s["f1"][2] == pytest.approx(0.8)
    # class 0: tp 1, fn 1, fp 1, tn 3 → F1 2/4
    assert s["f1"][0] == pytest.approx(0.5)


def test_detection_scores():
    assert detection_scores(8, 2, 0) == pytest.approx((0.8, 1.0, 16 / 18))
    assert detection_scores(0, 0, 0) == (0.0, 0.0, 0.0)


def test_expected_calibration_error_of_hand_made_bins():
    # bin 0.9–1.0: confidences .95, .95, correct 1 of 2 → |0.5 − 0.95| × 2/4; bin 0.6–0.7: .65, .65 both right
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.35, 0.65], [0.35, 0.65]])
    truth = np.array([0, 1, 1, 1])
    assert expected_calibration_error(probs, truth) == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)


def test_match_boxes_is_one_to_one_and_respects_threshold():
    pred = torch.tensor([[0.0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]])
    truth = torch.tensor([[0.0, 0, 10, 10], [52, 52, 62, 62]])
    pairs = match_boxes(pred, truth, 0.5)
    assert pairs == [(0, 0)]  # the second truth box overlaps pred 2 at IoU 64/136 < 0.5
    assert match_boxes(pred, truth, 0.4) == [(0, 0), (2, 1)]


def test_bootstrap_ci_resamples_whole_subjects_deterministically():
    subjects = np.array(["a", "a", "b", "b", "c", "c"])
    values = np.array([1.0, 1.0, 2.0, 2.0, 3.0, 3.0])
    seen = []

    def statistic(rows: np.ndarray) -> float:
        counts = np.bincount(rows, minlength=6)
        assert (counts[0::2] == counts[1::2]).all()  # both rows of a subject, always together
        seen.append(len(rows))
        return float(values[rows].mean())

    lo, hi = bootstrap_ci(statistic, subjects, 200, seed=3)
    assert 1.0 <= lo <= 2.0 <= hi <= 3.0
    assert set(seen) == {6}
    assert bootstrap_ci(lambda r: float(values[r].mean()), subjects, 200, seed=3) == (lo, hi)


def test_subject_sensitivity_takes_most_severe_stage_per_hip():
    hips = [
        # patient p1, right hip stage II: missed on AP, found on FL
        ("p1", Side.R, View.AP, 1, 0),
        ("p1", Side.R, View.FL, 1, 1),
        # patient p2, left hip stage IV: found on AP only
        ("p2", Side.L, View.AP, 3, 3),
        ("p2", Side.L, View.FL, 3, 0),
        # healthy hip: not counted
        ("p3", Side.L, View.AP, 0, 0),
        ("p3", Side.L, View.FL, 0, 1),
    ]
    s = subject_sensitivity(hips)
    assert s == {
        "sensitivity_ap": 0.5,
        "sensitivity_fl": 0.5,
        "sensitivity_ap_fl": 1.0,
        "n_diseased_hips_both_views": 2,
    }
