"""The ground-truth contract of DESIGN §5: vocabulary, per-head truth, and ``ground_truth.json`` I/O.

The phantom writes it, training reads it, evaluation compares against it; a site's own labelled
radiographs use the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

GROUND_TRUTH_FILE = "ground_truth.json"


class View(StrEnum):
    """Exam view of a hip radiograph."""

    AP = "AP"
    FL = "FL"


class Side(StrEnum):
    """The patient's side of a femoral head (not the side of the image)."""

    L = "L"
    R = "R"


class FicatStage(StrEnum):
    """Ficat stage as graded by AVN-net; ``ABSENCE`` covers no AVN and stage I."""

    ABSENCE = "absence"
    II = "II"
    III = "III"
    IV = "IV"


class Note(StrEnum):
    """AVN-net's clinical note types."""

    SCLEROSIS = "sclerosis"
    CYSTS = "cysts"
    CRESCENT_SIGN = "crescent_sign"
    SUBCHONDRAL_COLLAPSE = "subchondral_collapse"
    HEAD_DEFORMATION = "head_deformation"
    ACETABULAR_DEFORMATION = "acetabular_deformation"
    JOINT_SPACE_NARROWING = "joint_space_narrowing"


STAGES: tuple[FicatStage, ...] = tuple(FicatStage)
NOTES: tuple[Note, ...] = tuple(Note)

NOTE_STAGES: dict[Note, frozenset[FicatStage]] = {
    Note.SCLEROSIS: frozenset({FicatStage.II, FicatStage.III, FicatStage.IV}),
    Note.CYSTS: frozenset({FicatStage.II, FicatStage.III, FicatStage.IV}),
    Note.CRESCENT_SIGN: frozenset({FicatStage.II, FicatStage.III}),
    Note.SUBCHONDRAL_COLLAPSE: frozenset({FicatStage.III, FicatStage.IV}),
    Note.HEAD_DEFORMATION: frozenset({FicatStage.III, FicatStage.IV}),
    Note.ACETABULAR_DEFORMATION: frozenset({FicatStage.IV}),
    Note.JOINT_SPACE_NARROWING: frozenset({FicatStage.IV}),
}
"""The note–stage table of DESIGN §5: the stages each note may accompany."""


class GroundTruthError(ValueError):
    """A ground-truth record breaks the contract of DESIGN §5."""


@dataclass(frozen=True)
class HeadTruth:
    """One femoral head: patient side, loose-square box ``[x0, y0, x1, y1]`` in pixels, stage, notes.

    ``severity`` (0–1, phantom only) says how pronounced the rendered lesion is; sites leave it out.
    """

    side: Side
    box: tuple[float, float, float, float]
    stage: FicatStage
    notes: tuple[Note, ...] = ()
    severity: float | None = None

    def __post_init__(self) -> None:
        x0, y0, x1, y1 = self.box
        if not (x1 > x0 and y1 > y0):
            raise GroundTruthError(f'Argument "box" must have x1 > x0 and y1 > y0, got {self.box}.')
        for note in self.notes:
            if self.stage not in NOTE_STAGES[note]:
                raise GroundTruthError(f'Note "{note}" is not allowed with stage "{self.stage}".')
        if len(set(self.notes)) != len(self.notes):
            raise GroundTruthError(f'Argument "notes" repeats a note: {list(self.notes)}.')

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "side": self.side.value,
            "box": [round(float(v), 1) for v in self.box],
            "stage": self.stage.value,
            "notes": [n.value for n in self.notes],
        }
        if self.severity is not None:
            out["severity"] = round(float(self.severity), 4)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> HeadTruth:
        try:
            box = tuple(float(v) for v in obj["box"])
            if len(box) != 4:
                raise GroundTruthError(f'Key "box" needs 4 numbers, got {obj["box"]}.')
            return cls(
                side=Side(obj["side"]),
                box=box,  # type: ignore[arg-type]
                stage=FicatStage(obj["stage"]),
                notes=tuple(Note(n) for n in obj.get("notes", [])),
                severity=obj.get("severity"),
            )
        except (KeyError, ValueError) as exc:
            raise GroundTruthError(f"Invalid head record {obj}: {exc}") from exc


@dataclass(frozen=True)
class RadiographTruth:
    """One radiograph: where its file lies (relative to the data set root) and its heads."""

    file: str
    sop_instance_uid: str
    patient_id: str
    study_instance_uid: str
    view: View
    heads: tuple[HeadTruth, ...]

    def __post_init__(self) -> None:
        sides = [h.side for h in self.heads]
        if len(set(sides)) != len(sides):
            raise GroundTruthError(f'Radiograph "{self.file}" has two heads on one side.')

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "sop_instance_uid": self.sop_instance_uid,
            "patient_id": self.patient_id,
            "study_instance_uid": self.study_instance_uid,
            "view": self.view.value,
            "heads": [h.to_json() for h in self.heads],
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RadiographTruth:
        try:
            return cls(
                file=str(obj["file"]),
                sop_instance_uid=str(obj["sop_instance_uid"]),
                patient_id=str(obj["patient_id"]),
                study_instance_uid=str(obj["study_instance_uid"]),
                view=View(obj["view"]),
                heads=tuple(HeadTruth.from_json(h) for h in obj["heads"]),
            )
        except (KeyError, ValueError) as exc:
            if isinstance(exc, GroundTruthError):
                raise
            raise GroundTruthError(f"Invalid radiograph record: {exc}") from exc


@dataclass
class GroundTruth:
    """The whole ``ground_truth.json``: who made it and one record per radiograph."""

    generator: dict[str, Any]
    radiographs: list[RadiographTruth] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"generator": self.generator, "radiographs": [r.to_json() for r in self.radiographs]}

    def dump(self, root: Path) -> Path:
        path = Path(root) / GROUND_TRUTH_FILE
        path.write_text(json.dumps(self.to_json(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, root: Path) -> GroundTruth:
        """Read ``ground_truth.json`` from a data set folder (or the file itself)."""
        path = Path(root)
        if path.is_dir():
            path = path / GROUND_TRUTH_FILE
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise GroundTruthError(f'Cannot read ground truth "{path}": {exc}') from exc
        return cls(
            generator=dict(obj.get("generator", {})),
            radiographs=[RadiographTruth.from_json(r) for r in obj.get("radiographs", [])],
        )
