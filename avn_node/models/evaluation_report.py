"""The evaluation's pictures and Markdown report: ROC per task, stage confusion matrix, reliability diagram."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from avn_node.ground_truth import NOTES, STAGES
from avn_node.models.evaluate import Collected, Scores
from avn_node.models.metrics import roc_auc, roc_curve


def write_plots(c: Collected, m: dict[str, Any], out: Path) -> list[Path]:
    """roc.png, confusion.png and reliability.png in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sc = Scores.of(c)
    stage_true, stage_p = sc.stage_true, sc.stage_p
    curves = {
        "view (AP)": (sc.view_true, sc.view_score),
        "side (L)": (sc.side_true, sc.side_score),
        "AVN presence": (stage_true > 0, 1 - stage_p[:, 0]),
        **{f"stage {s.value}": (stage_true == k, stage_p[:, k]) for k, s in enumerate(STAGES)},
        **{f"note {n.value}": (sc.notes_true[:, j] > 0, sc.notes_score[:, j]) for j, n in enumerate(NOTES)},
    }
    panels = {
        "view and side": ["view (AP)", "side (L)"],
        "presence and stage": ["AVN presence"] + [f"stage {s.value}" for s in STAGES],
        "notes": [f"note {n.value}" for n in NOTES],
    }
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for ax, (title, names) in zip(axes, panels.items(), strict=True):
        for name in names:
            truth, score = curves[name]
            if 0 < truth.sum() < len(truth):
                fpr, tpr, _ = roc_curve(truth, score)
                ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(truth, score):.3f})")
        ax.plot([0, 1], [0, 1], ":", color="grey")
        ax.set(title=f"ROC: {title}", xlabel="1 − specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    paths = [out / "roc.png"]
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    conf = np.array(m["stage"]["confusion"])
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.imshow(conf, cmap="Blues")
    labels = m["stage"]["labels"]
    ax.set(
        xticks=range(4),
        yticks=range(4),
        xticklabels=labels,
        yticklabels=labels,
        xlabel="predicted stage",
        ylabel="true stage",
        title="Ficat stage per head",
    )
    for (i, j), v in np.ndenumerate(conf):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > conf.max() / 2 else "black")
    fig.tight_layout()
    paths.append(out / "confusion.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    bins = m["calibration"]["reliability"]
    fig, ax = plt.subplots(figsize=(4.6, 4))
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", label="stage head")
    for b in bins:
        ax.annotate(
            str(b["count"]), (b["confidence"], b["accuracy"]), fontsize=7, xytext=(3, -9), textcoords="offset points"
        )
    ax.set(
        xlabel="confidence (top stage probability)",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title=f"Reliability (ECE {_fmt(m['calibration']['ece'])})",
    )
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    paths.append(out / "reliability.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


def _source(generator: dict[str, Any]) -> str:
    if not generator:
        return "site data"
    return f"{generator.get('name', '?')} {generator.get('version', '')}, seed {generator.get('seed', '?')}"


def _fmt(value: Any, ci: list[float | None] | None = None) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.3f}"
    if ci and None not in ci:
        text += f" ({ci[0]:.3f}–{ci[1]:.3f})"
    return text


def _ood_row(ood: dict[str, Any]) -> str:
    """The refusal line: how many heads were refused as out of distribution, and how they were scored."""
    if not ood.get("reference"):
        return "| out-of-distribution refusal | — | no reference in these weights: nothing refused |"
    if not ood.get("refusal"):
        return "| out-of-distribution refusal | — | switched off |"
    return (
        f"| out-of-distribution refusal (threshold {_fmt(ood['threshold'])} at a "
        f"{100 * ood['false_flag_rate']:g} % false-flag rate) | heads / radiographs refused | "
        f"{_fmt(ood['flag_rate_heads'])} ({ood['n_heads_flagged']} of {ood['n_heads_read']}) / "
        f"{_fmt(ood['flag_rate_radiographs'])}; {ood['scored_as']} |"
    )


def write_report(m: dict[str, Any], path: Path) -> None:
    """A Markdown summary of ``metrics.json`` with the targets, 95 % CIs in brackets."""
    det, st = m["detection"], m["stage"]
    heads = (
        f"{m['n_matched_heads']} classified on their ground-truth boxes, detection not scored"
        if "skipped" in det
        else f"{m['n_matched_heads']} detected at IoU ≥ 0.5"
    )
    lines = [
        f"# Evaluation of {m['model']['name']} {m['model']['version']}",
        "",
        f"{m['n_radiographs']} radiographs, {m['n_heads']} femoral heads ({heads}), "
        f"{m['n_patients']} patients; data: {_source(m['data']['generator'])}; "
        f"{m['data']['bootstrap_resamples']} bootstrap resamples of patients; test-time averaging over five "
        f"scales: {'on' if m['data']['test_time_augmentation'] else 'off'}. Weights sha256 `{m['model']['sha256']}`.",
        "",
        "| task | metric | value (95 % CI) |",
        "|---|---|---|",
    ]
    if "skipped" in det:
        lines.append(f"| head detection | — | {det['skipped']} |")
    for iou in (50, 60, 70) if "skipped" not in det else ():
        lines.append(
            f"| head detection IoU {iou / 100:.1f} | precision / recall / F1 | "
            f"{det[f'precision_iou{iou}']:.3f} / {det[f'recall_iou{iou}']:.3f} / "
            f"{_fmt(det[f'f1_iou{iou}'], det[f'f1_iou{iou}_ci'])} |"
        )
    lines += [
        f"| view | AUC | {_fmt(m['view']['auc'], m['view']['auc_ci'])} |",
        f"| side (classifier) | AUC | {_fmt(m['side']['auc'], m['side']['auc_ci'])} |",
        f"| side (reported) | accuracy | {_fmt(m['side']['accuracy_assigned'])}, "
        f"{m['side']['disagreements']} disagreements flagged |",
        f"| AVN presence | AUC | {_fmt(m['presence']['auc'], m['presence']['auc_ci'])} |",
        f"| AVN presence at Youden point | sensitivity / specificity | {_fmt(m['presence']['sensitivity'])} / "
        f"{_fmt(m['presence']['specificity'])} |",
        f"| pre-collapse (II) / post-collapse (III–IV) | sensitivity | {_fmt(m['collapse']['pre_sensitivity'])} / "
        f"{_fmt(m['collapse']['post_sensitivity'])} |",
    ]
    for name in st["labels"]:
        lines.append(
            f"| stage {name} | AUC; sensitivity / specificity / F1 | "
            f"{_fmt(st['auc'][name], st['auc_ci'][name])}; {_fmt(st['sensitivity'][name])} / "
            f"{_fmt(st['specificity'][name])} / {_fmt(st['f1'][name])} |"
        )
    sub = m["subject"]
    lines += [
        f"| staging | macro F1 | {_fmt(st['f1_macro'], st['f1_macro_ci'])} |",
        f"| notes | macro AUC | {_fmt(m['notes']['auc_macro'], m['notes']['auc_macro_ci'])} |",
        f"| hip, most severe stage ({sub['n_diseased_hips_both_views']} diseased hips seen in both views) | "
        f"sensitivity AP / FL / AP + FL | {_fmt(sub['sensitivity_ap'])} / {_fmt(sub['sensitivity_fl'])} / "
        f"{_fmt(sub['sensitivity_ap_fl'])} |",
        f"| stage calibration | ECE | {_fmt(m['calibration']['ece'], m['calibration']['ece_ci'])} |",
        _ood_row(m.get("ood") or {}),
        "",
        "## Targets",
        "",
        "| metric | target | value | met |",
        "|---|---|---|---|",
    ]
    for key, t in m["targets"].items():
        lines.append(f"| `{key}` | {t['target']} | {_fmt(t['value'])} | {'yes' if t['met'] else '**no**'} |")
    lines += [
        "",
        "## Stage confusion (rows: truth, columns: prediction)",
        "",
        "| | " + " | ".join(st["labels"]) + " |",
        "|---" * 5 + "|",
    ]
    for name, row in zip(st["labels"], st["confusion"], strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    lines += ["", "![ROC](roc.png)", "", "![confusion](confusion.png) ![reliability](reliability.png)", ""]
    path.write_text("\n".join(lines))
