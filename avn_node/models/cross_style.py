"""The cross-style table of a model card: weights folders × held-out phantom styles, and real radiographs.

Each weights folder reads each ``heldout-<style>`` folder (patients never used in training) and the real
radiographs under ``--real``; the table says how a model does on a look it was or was not trained on.
Usage: ``python -m avn_node.models.cross_style --weights A [B …] --heldout DIR --out DIR [--real DIR]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from avn_node.ground_truth import GroundTruth
from avn_node.models.evaluate import analyse_all, collect, compute_metrics
from avn_node.models.inference import Analyzer
from avn_node.phantom.variation import STYLES

REAL = Path(__file__).resolve().parents[2] / "tests" / "data" / "real-dicom"


def score_set(analyzer: Analyzer, data: Path, resamples: int = 200) -> dict[str, Any]:
    """Detection F1, view and presence AUC, normal heads' mean AVN probability and the refusal rate on ``data``."""
    truth = GroundTruth.load(data)
    collected = collect(truth, analyse_all(analyzer, data, truth, progress=False))
    m = compute_metrics(collected, resamples)
    normal = [h.found.presence_probability for h in collected.heads if h.stage == 0]
    flagged = [bool(getattr(h.found, "out_of_distribution", False)) for h in collected.heads]
    return {
        "heads": m["n_heads"],
        "detection_f1": m["detection"]["f1_iou50"],
        "view_auc": m["view"]["auc"],
        "presence_auc": m["presence"]["auc"],
        "presence_auc_ci": m["presence"]["auc_ci"],
        "normal_mean_avn_probability": float(np.mean(normal)) if normal else float("nan"),
        "flagged_share": float(np.mean(flagged)) if flagged else float("nan"),
    }


def read_real(analyzer: Analyzer, root: Path) -> list[dict[str, Any]]:
    """Per real radiograph: how many heads were found, their sides and AVN probabilities."""
    rows = []
    for path in sorted(root.rglob("*.dcm")):
        finding = analyzer.analyse_radiograph(path)
        rows.append(
            {
                "file": str(path.relative_to(root)),
                "error": finding.error,
                "heads": [
                    {
                        "side": h.side.value,
                        "score": round(h.detection_score, 3),
                        "avn_probability": round(h.presence_probability, 3),
                        "out_of_distribution": bool(getattr(h, "out_of_distribution", False)),
                    }
                    for h in finding.heads
                ],
            }
        )
    return rows


def _fmt(v: float) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.3f}"


def markdown(table: dict[str, Any]) -> str:
    """The cross-style and real-radiograph tables as Markdown."""
    lines = [
        "| weights | held-out style | heads | detection F1 | view AUC | presence AUC | normal heads' mean p(AVN) "
        "| heads flagged OOD |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for version, per_style in table["phantom"].items():
        for style, s in per_style.items():
            lines.append(
                f"| {version} | {style} | {s['heads']} | {_fmt(s['detection_f1'])} | {_fmt(s['view_auc'])} "
                f"| {_fmt(s['presence_auc'])} | {_fmt(s['normal_mean_avn_probability'])} | {_fmt(s['flagged_share'])} |"
            )
    lines += [
        "",
        "| weights | real radiographs | files | no head | one head | two heads | unreadable |",
        "|---|---|---|---|---|---|---|",
    ]
    for version, groups in table["real"].items():
        for group, rows in groups.items():
            counts = [len(r["heads"]) for r in rows if not r["error"]]
            lines.append(
                f"| {version} | {group} | {len(rows)} | {counts.count(0)} | {counts.count(1)} | {counts.count(2)} "
                f"| {sum(bool(r['error']) for r in rows)} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--weights", type=Path, nargs="+", required=True)
    parser.add_argument("--heldout", type=Path, required=True, help="folder holding heldout-<style>/ sets")
    parser.add_argument("--real", type=Path, default=REAL)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    table: dict[str, Any] = {"phantom": {}, "real": {}}
    for weights in args.weights:
        analyzer = Analyzer(weights)
        version = analyzer.info.version
        table["phantom"][version] = {
            style: score_set(analyzer, args.heldout / f"heldout-{style}")
            for style in STYLES
            if (args.heldout / f"heldout-{style}" / "ground_truth.json").exists()
        }
        table["real"][version] = {
            group.name: read_real(analyzer, group) for group in sorted(args.real.iterdir()) if group.is_dir()
        }
        print(f"{version}: done", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cross_style.json").write_text(json.dumps(table, indent=2) + "\n")
    (args.out / "cross_style.md").write_text(markdown(table))
    print(markdown(table))


if __name__ == "__main__":
    main()
