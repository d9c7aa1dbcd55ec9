"""Contact sheet of a phantom data set: per stage, an AP and an FL with boxes and labels, and the head zoomed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pydicom  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from pydicom.pixels import apply_modality_lut, apply_voi_lut  # noqa: E402

from avn_node.ground_truth import FicatStage, GroundTruth, HeadTruth, RadiographTruth, View  # noqa: E402

ABBREVIATIONS = {
    "sclerosis": "scl",
    "cysts": "cyst",
    "crescent_sign": "cresc",
    "subchondral_collapse": "collapse",
    "head_deformation": "deform",
    "acetabular_deformation": "acet",
    "joint_space_narrowing": "JSN",
}


def display_image(path: Path) -> np.ndarray:
    """The radiograph as a viewer shows it: modality LUT, VOI (window or LUT), MONOCHROME1 inverted; 0–1."""
    ds = pydicom.dcmread(path)
    arr = ds.pixel_array
    if (float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))) != (1.0, 0.0):
        arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds).astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    out = (arr - lo) / max(hi - lo, 1e-6)
    return 1.0 - out if ds.PhotometricInterpretation == "MONOCHROME1" else out


def _label(head: HeadTruth) -> str:
    notes = ",".join(ABBREVIATIONS[n.value] for n in head.notes)
    return f"{head.side.value} {head.stage.value}" + (f" ({notes})" if notes else "")


def _pick(truth: GroundTruth, view: View, stage: FicatStage) -> tuple[RadiographTruth, HeadTruth] | None:
    """The first radiograph of ``view`` with a head of ``stage`` (the most severe such head)."""
    best = None
    for r in truth.radiographs:
        if r.view is not view:
            continue
        for h in r.heads:
            if h.stage is stage and (best is None or (h.severity or 0) > (best[1].severity or 0)):
                best = (r, h)
    return best


def contact_sheet(root: Path, out: Path, truth: GroundTruth | None = None) -> Path:
    """Write a PNG: rows = stages, columns = AP | AP head | FL | FL head."""
    truth = truth or GroundTruth.load(root)
    stages = list(FicatStage)
    fig, axes = plt.subplots(len(stages), 4, figsize=(16, 4.2 * len(stages)), facecolor="black")
    for i, stage in enumerate(stages):
        for j, view in enumerate((View.AP, View.FL)):
            ax_full, ax_head = axes[i, 2 * j], axes[i, 2 * j + 1]
            for ax in (ax_full, ax_head):
                ax.set_axis_off()
            picked = _pick(truth, view, stage)
            if picked is None:
                ax_full.set_title(f"{view.value}: no {stage.value} head in this set", color="white", fontsize=9)
                continue
            radiograph, head = picked
            img = display_image(root / radiograph.file)
            ax_full.imshow(img, cmap="gray", vmin=0, vmax=1)
            for h in radiograph.heads:
                x0, y0, x1, y1 = h.box
                ax_full.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, color="yellow", lw=1))
                ax_full.text(x0, y0 - 8, _label(h), color="yellow", fontsize=7, va="bottom")
            ax_full.set_title(f"{view.value} · {radiograph.file}", color="white", fontsize=9)
            x0, y0, x1, y1 = (int(round(v)) for v in head.box)
            ax_head.imshow(img[y0:y1, x0:x1], cmap="gray", vmin=0, vmax=1)
            ax_head.set_title(f"{_label(head)} · severity {head.severity or 0:.2f}", color="white", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=70, facecolor="black")
    plt.close(fig)
    return out
