"""``avn-node evaluate``: the paper's metrics on a ground-truthed folder, with subject-bootstrap 95 % CIs.

Heads are matched to the truth one-to-one at IoU ≥ 0.5; classification metrics are over matched heads
(the paper evaluates on detected heads), detection metrics over all. Every patient is read as one case.

With ``truth_boxes`` the classifier reads the ground-truth boxes instead of detected heads (paper Tables III–V
without the detector): every truth head is classified, and detection is not scored.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avn_node.ground_truth import NOTES, STAGES, FicatStage, GroundTruth, RadiographTruth, Side, View
from avn_node.models.engine import match_boxes
from avn_node.models.inference import Analyzer, CaseFinding, HeadFinding, RadiographFinding
from avn_node.models.metrics import (
    bootstrap_ci,
    confusion_matrix,
    detection_scores,
    expected_calibration_error,
    per_class_scores,
    reliability,
    roc_auc,
    youden_point,
)

IOU_LEVELS = (0.5, 0.6, 0.7)

TARGETS: dict[str, tuple[str, float]] = {
    "detection.f1_iou50": (">=", 0.99),
    "view.auc": (">=", 0.995),
    "side.auc": (">=", 0.995),
    "presence.auc": (">=", 0.97),
    "stage.auc.absence": (">=", 0.93),
    "stage.auc.II": (">=", 0.93),
    "stage.auc.III": (">=", 0.93),
    "stage.auc.IV": (">=", 0.93),
    "calibration.ece": ("<=", 0.05),
}
"""The issue's targets on a held-out phantom set."""

DETECTION_SKIPPED = "not scored: the classifier read the ground-truth boxes (--truth-boxes)"


@dataclass
class HeadRecord:
    """A truth head matched to a detected one."""

    patient: str
    view: View
    side: Side
    stage: int
    notes: np.ndarray
    found: HeadFinding


@dataclass
class Collected:
    """Everything the metrics need, gathered from the cases."""

    heads: list[HeadRecord]
    detection: dict[float, list[tuple[str, int, int, int]]]  # iou → (patient, tp, fp, fn) per radiograph
    radiographs: list[tuple[str, View, RadiographFinding]]
    hips: list[tuple[str, Side, View, int, int]]  # patient, side, view, truth stage, predicted stage
    n_truth_heads: int
    truth_boxes: bool = False  # the heads were the truth boxes, not detected: detection is not scored


def collect(truth: GroundTruth, cases: list[CaseFinding], truth_boxes: bool = False) -> Collected:
    """Match every radiograph's heads to the truth (``truth_boxes``: the cases were read on the truth boxes)."""
    by_uid = {r.sop_instance_uid: r for case in cases for r in case.radiographs}
    out = Collected([], defaultdict(list), [], [], 0, truth_boxes)
    for rt in truth.radiographs:
        found = by_uid[rt.sop_instance_uid]
        if found.heads and not any(h.evaluated for h in found.heads):  # view unread: p = 0.5
            found = dataclasses.replace(found, ap_probability=0.5)
        out.radiographs.append((rt.patient_id, rt.view, found))
        out.n_truth_heads += len(rt.heads)
        _collect_radiograph(rt, found, out)
    return out


REFUSED_STAGE_P = {s: 0.5 if s == FicatStage.ABSENCE else 0.5 / (len(STAGES) - 1) for s in STAGES}
"""What a refused (out-of-distribution) head scores as: AVN p = 0.5, read as no AVN (a miss)."""


def as_scored(head: HeadFinding) -> HeadFinding:
    """A head as the metrics score it: a refused head counts as p = 0.5 for every AUC (AVN, stage absence,
    side, notes; the other stages share the rest) and as "no AVN" for stage and hip, so refusing costs like a miss.
    """
    if head.evaluated:
        return head
    return dataclasses.replace(
        head,
        stage=FicatStage.ABSENCE,
        stage_probabilities=dict(REFUSED_STAGE_P),
        note_probabilities=dict.fromkeys(NOTES, 0.5),
        side_probability=0.5,
    )


def _collect_radiograph(rt: RadiographTruth, found: RadiographFinding, out: Collected) -> None:
    """Detection counts evaluated heads only (a refused head is a miss); every matched head is classified,
    a refused one as :func:`as_scored` says.
    """
    pred = torch.tensor([h.box for h in found.heads], dtype=torch.float32).reshape(-1, 4)
    evaluated = torch.tensor([h.box for h in found.heads if h.evaluated], dtype=torch.float32).reshape(-1, 4)
    true = torch.tensor([h.box for h in rt.heads], dtype=torch.float32).reshape(-1, 4)
    for iou in IOU_LEVELS:
        tp = len(match_boxes(evaluated, true, iou))
        out.detection[iou].append((rt.patient_id, tp, len(evaluated) - tp, len(true) - tp))
    for p, t in match_boxes(pred, true, 0.5):
        head, th = as_scored(found.heads[p]), rt.heads[t]
        notes = np.array([float(n in th.notes) for n in NOTES])
        out.heads.append(HeadRecord(rt.patient_id, rt.view, th.side, STAGES.index(th.stage), notes, head))
        out.hips.append((rt.patient_id, th.side, rt.view, STAGES.index(th.stage), STAGES.index(head.stage)))


def _ci(stat: Any, subjects: np.ndarray, resamples: int, seed: int) -> list[float]:
    return [round(v, 4) for v in bootstrap_ci(stat, subjects, resamples, seed)]


@dataclass
class Scores:
    """Truth and model output as arrays: per matched head, and per radiograph with at least one head."""

    subject: np.ndarray
    stage_true: np.ndarray
    stage_p: np.ndarray  # (heads, stages)
    side_true: np.ndarray  # True = L
    side_score: np.ndarray  # probability of L
    side_assigned_ok: np.ndarray
    notes_true: np.ndarray  # (heads, notes)
    notes_score: np.ndarray
    rad_subject: np.ndarray
    view_true: np.ndarray  # True = AP
    view_score: np.ndarray  # probability of AP

    @classmethod
    def of(cls, c: Collected) -> Scores:
        rads = [(p, v, f) for p, v, f in c.radiographs if f.heads]
        return cls(
            subject=np.array([h.patient for h in c.heads]),
            stage_true=np.array([h.stage for h in c.heads]),
            stage_p=np.array([[h.found.stage_probabilities[s] for s in STAGES] for h in c.heads]).reshape(
                -1, len(STAGES)
            ),
            side_true=np.array([h.side == Side.L for h in c.heads]),
            side_score=np.array(
                [h.found.side_probability if h.found.side == Side.L else 1 - h.found.side_probability for h in c.heads]
            ),
            side_assigned_ok=np.array([h.found.side == h.side for h in c.heads]),
            notes_true=np.array([h.notes for h in c.heads]).reshape(-1, len(NOTES)),
            notes_score=np.array([[h.found.note_probabilities[n] for n in NOTES] for h in c.heads]).reshape(
                -1, len(NOTES)
            ),
            rad_subject=np.array([p for p, _, _ in rads]),
            view_true=np.array([v == View.AP for _, v, _ in rads]),
            view_score=np.array([f.ap_probability for _, _, f in rads]),
        )


def ood_rates(c: Collected) -> dict[str, Any]:
    """How often the model refused: heads (all read, and those matching a truth head) and radiographs."""
    heads = [h for _, _, f in c.radiographs for h in f.heads]
    flagged = sum(h.out_of_distribution for h in heads)
    flagged_matched = sum(h.found.out_of_distribution for h in c.heads)
    rads = sum(f.out_of_distribution for _, _, f in c.radiographs)
    return {
        "n_heads_read": len(heads),
        "n_heads_flagged": flagged,
        "flag_rate_heads": flagged / len(heads) if heads else float("nan"),
        "flag_rate_matched_heads": flagged_matched / len(c.heads) if c.heads else float("nan"),
        "n_radiographs_flagged": rads,
        "flag_rate_radiographs": rads / len(c.radiographs) if c.radiographs else float("nan"),
        "scored_as": "a refused head is a detection miss and p = 0.5 for every AUC (no AVN for stage and hip)",
    }


def compute_metrics(c: Collected, resamples: int, seed: int = 0) -> dict[str, Any]:
    """The metrics.json object (fixed paths: see the README's evaluation section)."""
    sc = Scores.of(c)
    subj, stage_true, stage_p = sc.subject, sc.stage_true, sc.stage_p
    stage_pred = stage_p.argmax(1) if len(stage_p) else np.zeros(0, int)
    presence_true = stage_true > 0
    presence_score = 1 - stage_p[:, 0] if len(stage_p) else np.zeros(0)
    side_true, side_score, side_assigned_ok = sc.side_true, sc.side_score, sc.side_assigned_ok
    notes_true, notes_score = sc.notes_true, sc.notes_score
    rad_subj, view_true, view_score = sc.rad_subject, sc.view_true, sc.view_score

    m: dict[str, Any] = {
        "n_radiographs": len(c.radiographs),
        "n_heads": c.n_truth_heads,
        "n_matched_heads": len(c.heads),
        "n_patients": len({p for p, _, _ in c.radiographs}),
    }
    m["ood"] = ood_rates(c)

    det: dict[str, Any] = {}
    for iou in IOU_LEVELS if not c.truth_boxes else ():
        rows = np.array([r[1:] for r in c.detection[iou]]).reshape(-1, 3)
        det_subj = np.array([r[0] for r in c.detection[iou]])
        key = f"iou{int(iou * 100)}"
        precision, recall, f1 = detection_scores(*rows.sum(0).tolist())
        det[f"precision_{key}"], det[f"recall_{key}"], det[f"f1_{key}"] = precision, recall, f1
        det[f"f1_{key}_ci"] = _ci(
            lambda i, rows=rows: detection_scores(*rows[i].sum(0).tolist())[2], det_subj, resamples, seed
        )
    m["detection"] = det if not c.truth_boxes else {"skipped": DETECTION_SKIPPED}

    m["view"] = {
        "auc": roc_auc(view_true, view_score),
        "auc_ci": _ci(lambda i: roc_auc(view_true[i], view_score[i]), rad_subj, resamples, seed),
        "accuracy": float(np.mean(view_true == (view_score >= 0.5))) if len(view_true) else float("nan"),
    }
    m["side"] = {
        "auc": roc_auc(side_true, side_score),
        "auc_ci": _ci(lambda i: roc_auc(side_true[i], side_score[i]), subj, resamples, seed),
        "accuracy_assigned": float(side_assigned_ok.mean()) if len(c.heads) else float("nan"),
        "disagreements": int(sum(not h.found.side_agrees for h in c.heads)),
    }

    thr, sens, spec = (
        youden_point(presence_true, presence_score) if len(set(presence_true)) == 2 else (float("nan"),) * 3
    )
    m["presence"] = {
        "auc": roc_auc(presence_true, presence_score),
        "auc_ci": _ci(lambda i: roc_auc(presence_true[i], presence_score[i]), subj, resamples, seed),
        "youden_threshold": thr,
        "sensitivity": sens,
        "specificity": spec,
    }

    collapse_true = np.minimum(stage_true, 2)  # 0 absence, 1 pre-collapse (II), 2 post-collapse (III, IV)
    collapse_pred = (
        np.stack([stage_p[:, 0], stage_p[:, 1], stage_p[:, 2:].sum(1)], 1).argmax(1)
        if len(stage_p)
        else np.zeros(0, int)
    )
    with np.errstate(invalid="ignore"):
        m["collapse"] = {
            "pre_sensitivity": float(np.mean(collapse_pred[collapse_true == 1] == 1)),
            "post_sensitivity": float(np.mean(collapse_pred[collapse_true == 2] == 2)),
        }

    conf = confusion_matrix(stage_true, stage_pred, len(STAGES))
    scores = per_class_scores(conf)
    names = [s.value for s in STAGES]
    m["stage"] = {
        "labels": names,
        "auc": {n: roc_auc(stage_true == k, stage_p[:, k]) for k, n in enumerate(names)},
        "auc_ci": {
            n: _ci(lambda i, k=k: roc_auc(stage_true[i] == k, stage_p[i, k]), subj, resamples, seed)
            for k, n in enumerate(names)
        },
        "sensitivity": {n: float(scores["sensitivity"][k]) for k, n in enumerate(names)},
        "specificity": {n: float(scores["specificity"][k]) for k, n in enumerate(names)},
        "f1": {n: float(scores["f1"][k]) for k, n in enumerate(names)},
        "f1_macro": float(np.nanmean(scores["f1"])),
        "f1_macro_ci": _ci(
            lambda i: float(
                np.nanmean(per_class_scores(confusion_matrix(stage_true[i], stage_pred[i], len(STAGES)))["f1"])
            ),
            subj,
            resamples,
            seed,
        ),
        "confusion": conf.tolist(),
    }

    def notes_macro(i: np.ndarray) -> float:
        aucs = [roc_auc(notes_true[i, j], notes_score[i, j]) for j in range(len(NOTES))]
        return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")

    m["notes"] = {
        "auc": {n.value: roc_auc(notes_true[:, j], notes_score[:, j]) for j, n in enumerate(NOTES)},
        "auc_macro": notes_macro(np.arange(len(c.heads))),
        "auc_macro_ci": _ci(notes_macro, subj, resamples, seed),
    }
    m["subject"] = subject_sensitivity(c.hips)
    m["calibration"] = {
        "ece": expected_calibration_error(stage_p, stage_true),
        "ece_ci": _ci(lambda i: expected_calibration_error(stage_p[i], stage_true[i]), subj, resamples, seed),
        "reliability": reliability(stage_p, stage_true) if len(stage_p) else [],
    }
    m["targets"] = check_targets(m)
    return _finite(m)


def subject_sensitivity(hips: list[tuple[str, Side, View, int, int]]) -> dict[str, Any]:
    """AVN sensitivity per hip with the most severe stage over AP only, FL only, and AP + FL radiographs.

    All three are computed on the diseased hips seen in both views, so they compare like with like.
    """
    by_hip: dict[tuple[str, Side], dict[View, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
    for patient, side, view, truth, pred in hips:
        by_hip[(patient, side)][view].append((truth, pred))
    both = {k: v for k, v in by_hip.items() if View.AP in v and View.FL in v}
    diseased = {k: v for k, v in both.items() if max(t for views in v.values() for t, _ in views) > 0}

    def sens(views: tuple[View, ...]) -> float:
        if not diseased:
            return float("nan")
        hits = [max(p for view in views for _, p in v[view]) > 0 for v in diseased.values()]
        return float(np.mean(hits))

    return {
        "sensitivity_ap": sens((View.AP,)),
        "sensitivity_fl": sens((View.FL,)),
        "sensitivity_ap_fl": sens((View.AP, View.FL)),
        "n_diseased_hips_both_views": len(diseased),
    }


def check_targets(m: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each target of :data:`TARGETS` with the measured value and whether it is met; targets of a part that was
    not scored (detection with truth boxes) are left out.
    """
    out = {}
    for path, (op, limit) in TARGETS.items():
        value: Any = m
        try:
            for part in path.split("."):
                value = value[part]
        except KeyError:
            continue
        met = bool(value >= limit) if op == ">=" else bool(value <= limit)
        out[path] = {"target": f"{op} {limit}", "value": value, "met": met and bool(np.isfinite(value))}
    return out


def _finite(obj: Any) -> Any:
    """NaN → None, so metrics.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def analyse_all(
    analyzer: Analyzer, root: Path, truth: GroundTruth, progress: bool = True, truth_boxes: bool = False
) -> list[CaseFinding]:
    """Read every patient of the folder as one case (``truth_boxes``: on the truth boxes, no detection)."""
    from rich.progress import track

    by_patient: dict[str, list[RadiographTruth]] = defaultdict(list)
    for r in truth.radiographs:
        by_patient[r.patient_id].append(r)
    cases = track(by_patient.values(), description="Reading cases", disable=not progress)
    if truth_boxes:
        return [
            analyzer.analyse_case_with_heads([root / r.file for r in rs], [[h.box for h in r.heads] for r in rs])
            for rs in cases
        ]
    return [analyzer.analyse_case([root / r.file for r in rs]) for rs in cases]


def evaluate(
    data: Path,
    weights: Path,
    out: Path | None,
    resamples: int,
    threads: int = 2,
    tta: bool = True,
    progress: bool = True,
    truth_boxes: bool = False,
    refuse_out_of_distribution: bool = True,
) -> dict[str, Any]:
    """Read ``data`` with ``weights``; write metrics.json, report.md and plots to ``out`` when given.

    ``truth_boxes``: classify the ground-truth boxes instead of detected heads; detection is not scored.
    ``refuse_out_of_distribution`` off: every head is scored as read, none flagged.
    """
    truth = GroundTruth.load(data)
    analyzer = Analyzer(weights, threads=threads, tta=tta, refuse_out_of_distribution=refuse_out_of_distribution)
    collected = collect(truth, analyse_all(analyzer, data, truth, progress, truth_boxes), truth_boxes)
    metrics = compute_metrics(collected, resamples)
    metrics["model"] = {"name": analyzer.info.name, "version": analyzer.info.version, "sha256": analyzer.info.sha256}
    ood = analyzer.ood
    metrics["ood"] |= {
        "reference": ood is not None,  # False: weights without ood.safetensors, nothing can be refused
        "refusal": analyzer.refuse_out_of_distribution,
        "threshold": ood.threshold if ood else None,
        "false_flag_rate": ood.false_flag_rate if ood else None,
    }
    metrics["data"] = {
        "generator": truth.generator,
        "bootstrap_resamples": resamples,
        "test_time_augmentation": tta,
        "heads": "truth boxes" if truth_boxes else "detected",
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        from avn_node.models.evaluation_report import write_plots, write_report

        write_plots(collected, metrics, out)
        write_report(metrics, out / "report.md")
    return metrics
