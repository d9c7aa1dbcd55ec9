"""Reviewers' labels: a confirmed or corrected reading of one radiograph, and their export as a training set.

A reviewer draws each femoral head as a circle on its outline; the box of DESIGN §5 follows from it by the
loose-square rule (centred on the outline, side 1.5 × its extent). The newest label of a radiograph counts.
``avn-node labels export`` writes the labelled radiographs with a DESIGN §5 ``ground_truth.json`` — ready for
``avn-node train --init-from`` and ``evaluate`` — and ``agreement.json`` / ``.md``: the model against the
reviewers (per-head stage confusion, box IoU, heads added and deleted, views changed).
"""

from __future__ import annotations

import csv
import json
import shutil
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from avn_node import __version__
from avn_node.events import NodeEvent, emit
from avn_node.ground_truth import (
    STAGES,
    FicatStage,
    GroundTruth,
    GroundTruthError,
    HeadTruth,
    Note,
    RadiographTruth,
    Side,
    View,
)
from avn_node.phantom.generate import loose_square
from avn_node.store.files import LocalFileStore
from avn_node.store.models import Instance, Label, Reading

Circle = tuple[float, float, float]
"""Centre column, centre row and radius of a femoral head's outline, in stored-image pixels."""
EXPORTER = "avn-node labels"


class LabelError(ValueError):
    """A label that cannot be stored (the message names the field)."""


@dataclass(frozen=True)
class HeadLabel:
    side: Side
    circle: Circle
    stage: FicatStage
    notes: tuple[Note, ...]

    def to_json(self) -> dict[str, Any]:
        return {"side": self.side.value, "circle": [round(v, 1) for v in self.circle], "stage": self.stage.value,
                "notes": [n.value for n in self.notes]}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HeadLabel:
        return cls(Side(d["side"]), tuple(d["circle"]), FicatStage(d["stage"]), tuple(Note(n) for n in d["notes"]))


def circle_of_box(box: list[float] | tuple[float, ...]) -> Circle:
    """The outline circle inside a loose-square box (its side is 1.5 × the outline's diameter)."""
    x0, y0, x1, y1 = box
    return ((x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) / 3)


def box_of_circle(circle: Circle, columns: int, rows: int) -> tuple[float, float, float, float]:
    """DESIGN §5's loose square of the circle's outline, clipped to the image."""
    cx, cy, r = circle
    return loose_square((cx - r, cy - r, cx + r, cy + r), columns, rows)  # type: ignore[return-value]


def validate(heads: list[HeadLabel], columns: int, rows: int) -> None:
    """Refuse a label the ground truth could not hold: two heads of one side, a circle off the image, a note its
    stage does not allow (DESIGN §5)."""
    sides = [h.side for h in heads]
    if len(set(sides)) != len(sides):
        raise LabelError("heads: one head per side")
    for h in heads:
        cx, cy, r = h.circle
        if not (0 <= cx <= columns and 0 <= cy <= rows and 2 <= r <= max(columns, rows)):
            raise LabelError(f"heads.{h.side.value}.circle: {list(h.circle)} lies off the {columns} x {rows} image")
        try:
            HeadTruth(h.side, box_of_circle(h.circle, columns, rows), h.stage, h.notes)
        except GroundTruthError as exc:
            raise LabelError(f"heads.{h.side.value}: {exc}") from None


def iou(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _loose(circle: Circle) -> tuple[float, float, float, float]:
    cx, cy, r = circle
    return (cx - 1.5 * r, cy - 1.5 * r, cx + 1.5 * r, cy + 1.5 * r)


def match(model: list[dict], labelled: list[HeadLabel]) -> list[tuple[dict | None, HeadLabel | None, float]]:
    """Pairs of the model's head and the reviewer's (greedy by box IoU, at least 0.1); unpaired ones alone."""
    pairs = sorted(((iou(m["box"], _loose(h.circle)), i, j) for i, m in enumerate(model)
                    for j, h in enumerate(labelled)), reverse=True)  # fmt: skip
    used_m, used_l, out = set(), set(), []
    for overlap, i, j in pairs:
        if overlap >= 0.1 and i not in used_m and j not in used_l:
            used_m.add(i), used_l.add(j)
            out.append((model[i], labelled[j], overlap))
    out += [(m, None, 0.0) for i, m in enumerate(model) if i not in used_m]
    out += [(None, h, 0.0) for j, h in enumerate(labelled) if j not in used_l]
    return out


def changes(model_view: str, model_heads: list[dict], view: View, heads: list[HeadLabel]) -> list[str]:
    """What the reviewer changed against the model's reading, one phrase each (empty: confirmed as read)."""
    out = [f"view {model_view or 'unread'} → {view.value}"] if model_view != view.value else []
    for m, h, overlap in match(model_heads, heads):
        if h is None:
            out.append(f"{m['side']}: head deleted (not a femoral head)")
            continue
        if m is None:
            out.append(f"{h.side.value}: head added (missed by the model)")
            continue
        side = h.side.value
        if m["side"] != side:
            out.append(f"side {m['side']} → {side}")
        if overlap < 0.9:
            out.append(f"{side}: circle moved or resized (box IoU {overlap:.2f})")
        if m["stage"] != h.stage.value or m["out_of_distribution"]:
            was = "not evaluated" if m["out_of_distribution"] else m["stage"]
            out.append(f"{side}: stage {was} → {h.stage.value}")
        added = sorted({n.value for n in h.notes} - set(m["notes"]))
        removed = sorted(set(m["notes"]) - {n.value for n in h.notes})
        if added or removed:
            out.append(f"{side}: notes " + " ".join([*(f"+{n}" for n in added), *(f"−{n}" for n in removed)]))
    return out


def image_size(files: LocalFileStore, instance: Instance) -> tuple[int, int]:
    """Columns and rows of a stored radiograph (its header only)."""
    ds = pydicom.dcmread(files.local_path(instance.file_key), stop_before_pixels=True)
    return int(ds.Columns), int(ds.Rows)


def latest_reading(session: Session, sop_instance_uid: str) -> Reading | None:
    return session.scalars(
        select(Reading).where(Reading.sop_instance_uid == sop_instance_uid).order_by(Reading.id.desc())
    ).first()


def store_label(session: Session, files: LocalFileStore, sop_instance_uid: str, view: View, heads: list[HeadLabel],
                reviewer: str) -> Label:  # fmt: skip
    """Validate and record a reviewer's reading of a stored radiograph, with what it changed against the model's
    latest reading; committed."""
    instance = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)).first()
    if instance is None or not files.local_path(instance.file_key).is_file():
        raise LabelError(f"sop_instance_uid: no stored radiograph {sop_instance_uid}")
    validate(heads, *image_size(files, instance))
    reading = latest_reading(session, sop_instance_uid)
    label = Label(
        sop_instance_uid=sop_instance_uid, study_instance_uid=instance.study_instance_uid,
        reading_id=reading.id if reading else None, model_version=reading.model_version if reading else "",
        reviewer=reviewer, view=view.value, heads=[h.to_json() for h in heads],
        changes=changes(reading.view if reading else "", reading.heads if reading else [], view, heads),
    )  # fmt: skip
    session.add(label)
    emit(session, NodeEvent("label.stored", sop_instance_uid, "; ".join(label.changes) or "confirmed as read",
                            data={"user": reviewer, "study": instance.study_instance_uid,
                                  "model_version": label.model_version}))  # fmt: skip
    session.commit()
    return label


def newest_labels(session: Session) -> list[Label]:
    """The newest label of every labelled radiograph, oldest radiograph first."""
    newest = select(func.max(Label.id)).group_by(Label.sop_instance_uid)
    return list(session.scalars(select(Label).where(Label.id.in_(newest)).order_by(Label.id)))


@dataclass(frozen=True)
class ExportSummary:
    radiographs: int
    heads: int
    missing: int
    """Labelled radiographs whose file is gone (purged): not exported."""


def export(session: Session, files: LocalFileStore, out: Path, deidentify: bool = False,
           key: Path | None = None) -> ExportSummary:  # fmt: skip
    """Write the newest label of every radiograph under ``out``: the DICOM files, ``ground_truth.json`` and
    ``agreement.json`` / ``agreement.md``. With ``deidentify`` the files pass dicognito (PS3.15 E.1 basic
    profile: names, IDs, dates, UIDs replaced consistently) and ``key`` (a CSV outside ``out``) maps the new
    UIDs and IDs back."""
    out.mkdir(parents=True, exist_ok=True)
    truth = GroundTruth({"name": EXPORTER, "version": __version__, "deidentified": deidentify})
    pairs: list[tuple[dict | None, HeadLabel | None, float]] = []
    views: Counter[str] = Counter()
    key_rows: list[dict[str, str]] = []
    anonymizer = _anonymizer() if deidentify else None
    missing = 0
    for label in newest_labels(session):
        instance = session.scalars(select(Instance).where(Instance.sop_instance_uid == label.sop_instance_uid)).first()
        path = files.local_path(instance.file_key) if instance else None
        if path is None or not path.is_file():
            missing += 1
            continue
        ds = pydicom.dcmread(path)
        original = (str(ds.get("PatientID", "")), str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
        if anonymizer is not None:
            anonymizer.anonymize(ds)
            key_rows.append({"patient_id": original[0], "study_instance_uid": original[1],
                             "sop_instance_uid": original[2], "new_patient_id": str(ds.PatientID),
                             "new_study_instance_uid": str(ds.StudyInstanceUID),
                             "new_sop_instance_uid": str(ds.SOPInstanceUID)})  # fmt: skip
        relative = f"{_safe(str(ds.get('PatientID', '')) or 'unknown')}/{ds.StudyInstanceUID}/{ds.SOPInstanceUID}.dcm"
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if anonymizer is None:
            shutil.copyfile(path, target)
        else:
            ds.save_as(target, enforce_file_format=True)
        heads = [HeadLabel.from_json(h) for h in label.heads]
        columns, rows = int(ds.Columns), int(ds.Rows)
        truth.radiographs.append(RadiographTruth(
            relative, str(ds.SOPInstanceUID), str(ds.get("PatientID", "")), str(ds.StudyInstanceUID), View(label.view),
            tuple(HeadTruth(h.side, box_of_circle(h.circle, columns, rows), h.stage, h.notes)
                  for h in sorted(heads, key=lambda h: h.side.value)),
        ))  # fmt: skip
        reading = session.get(Reading, label.reading_id) if label.reading_id else None
        model_heads = reading.heads if reading else []
        pairs += match(model_heads, heads)
        views[f"{reading.view if reading else ''}→{label.view}"] += 1
    truth.dump(out)
    _write_agreement(out, pairs, views)
    if key_rows:
        assert key is not None
        key.parent.mkdir(parents=True, exist_ok=True)
        with key.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(key_rows[0]))
            writer.writeheader()
            writer.writerows(key_rows)
        key.chmod(0o600)
    return ExportSummary(len(truth.radiographs), sum(len(r.heads) for r in truth.radiographs), missing)


def _anonymizer():  # noqa: ANN202
    from dicognito.anonymizer import Anonymizer

    return Anonymizer()


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:64]


def agreement(pairs: list[tuple[dict | None, HeadLabel | None, float]], views: Counter[str]) -> dict[str, Any]:
    """Model against reviewers: stage confusion over paired heads, IoU of their boxes, heads added/deleted."""
    stages = [s.value for s in STAGES]
    confusion = {m: dict.fromkeys(stages, 0) for m in [*stages, "not evaluated"]}
    ious = []
    for m, h, overlap in pairs:
        if m is not None and h is not None:
            confusion["not evaluated" if m["out_of_distribution"] else m["stage"]][h.stage.value] += 1
            ious.append(overlap)
    paired = len(ious)
    agreeing = sum(confusion[s][s] for s in stages)
    return {
        "heads_paired": paired,
        "heads_added_by_reviewers": sum(1 for m, h, _ in pairs if m is None),
        "heads_deleted_by_reviewers": sum(1 for m, h, _ in pairs if h is None),
        "stage_agreement": agreeing / paired if paired else None,
        "stage_confusion": {"rows": "model", "columns": "reviewer", "counts": confusion},
        "box_iou_mean": sum(ious) / paired if paired else None,
        "box_iou_median": statistics.median(ious) if paired else None,
        "views": dict(views),
    }


def _write_agreement(out: Path, pairs: list, views: Counter[str]) -> None:  # noqa: ANN001
    data = agreement(pairs, views)
    (out / "agreement.json").write_text(json.dumps(data, indent=2) + "\n")
    stages = [s.value for s in STAGES]
    lines = [
        "# Model against reviewers", "",
        f"- heads paired: {data['heads_paired']}; added by reviewers (missed): {data['heads_added_by_reviewers']}; "
        f"deleted by reviewers (false heads): {data['heads_deleted_by_reviewers']}",
        f"- stage agreement: {_fmt(data['stage_agreement'])}; box IoU mean {_fmt(data['box_iou_mean'])}, "
        f"median {_fmt(data['box_iou_median'])}",
        "- views (model→reviewer): " + (", ".join(f"{k} {v}" for k, v in sorted(views.items())) or "none"), "",
        "| model \\ reviewer | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|",
    ]  # fmt: skip
    for row, counts in data["stage_confusion"]["counts"].items():
        lines.append(f"| {row} | " + " | ".join(str(counts[s]) for s in stages) + " |")
    (out / "agreement.md").write_text("\n".join(lines) + "\n")


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
