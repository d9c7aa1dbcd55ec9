"""What an analysis found, as plain data: the domain types report, dispatch and the web read, free of torch.

:mod:`avn_node.models.inference` produces them; :mod:`avn_node.report` turns them into DICOM (PS3.3 A.35 SR,
A.8 secondary capture).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from avn_node.ground_truth import NOTES, STAGES, FicatStage, Note, Side, View

if TYPE_CHECKING:
    from avn_node.models.ood import OodModel

Box = tuple[float, float, float, float]
"""x0, y0, x1, y1 in pixel columns and rows."""

NOTE_THRESHOLD = 0.5
OUTSIDE_EXPERIENCE = "outside the model's experience"
"""What a refused head says on the captures and in the SR's reason."""


@dataclass(frozen=True)
class ModelInfo:
    """What the SR's algorithm identification needs: name, version, and the sha256 of both weight files.

    ``ood`` is the folder's out-of-distribution reference, None when it has none (then no head gets a score
    and none can be refused).
    """

    name: str
    version: str
    sha256: str
    detector_size: int
    crop_size: int
    demo: bool
    ood: OodModel | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class HeadFinding:
    """One detected femoral head. Boxes are in the stored image's pixel columns and rows.

    ``cam`` is the stage head's class activation map (0–1, square) over ``cam_box``.
    ``side_agrees`` is False when the classifier reads the other side than position and orientation say.
    ``ood_score`` is the out-of-distribution score (NaN when the weights have no reference; about 1 for a
    typical unseen in-distribution head); ``out_of_distribution`` is True only when refusal is on and the
    score exceeds the weights' threshold: then the head is *refused* — stage, notes and probabilities are the
    model's raw output but must not be asserted, and ``ood_reason`` says why.
    """

    side: Side
    box: Box
    detection_score: float
    side_probability: float
    side_agrees: bool
    stage: FicatStage
    stage_probabilities: dict[FicatStage, float]
    note_probabilities: dict[Note, float]
    cam: np.ndarray = field(repr=False)
    cam_box: Box = (0.0, 0.0, 0.0, 0.0)
    ood_score: float = float("nan")
    out_of_distribution: bool = False
    ood_reason: str = ""

    @property
    def evaluated(self) -> bool:
        """False for a refused head: AVN not evaluated."""
        return not self.out_of_distribution

    @property
    def presence_probability(self) -> float:
        """Probability of AVN (stages II–IV)."""
        return 1.0 - self.stage_probabilities[FicatStage.ABSENCE]

    @property
    def notes(self) -> tuple[Note, ...]:
        """Notes whose probability reaches :data:`NOTE_THRESHOLD`."""
        return tuple(n for n in NOTES if self.note_probabilities[n] >= NOTE_THRESHOLD)

    @property
    def severity(self) -> tuple[int, float]:
        """Sort key: stage first, then presence probability."""
        return STAGES.index(self.stage), self.presence_probability


def _number(value: float) -> float | None:
    """A JSON-safe float: NaN (no score) becomes None."""
    return None if value != value else round(float(value), 4)


def head_json(head: HeadFinding) -> dict[str, object]:
    """The head as JSON (no CAM): what the readings table keeps, the API returns and the review page starts from."""
    return {
        "side": head.side.value,
        "box": [round(v, 1) for v in head.box],
        "detection_score": _number(head.detection_score),
        "side_agrees": head.side_agrees,
        "stage": head.stage.value,
        "presence_probability": _number(head.presence_probability),
        "stage_probabilities": {k.value: _number(v) for k, v in head.stage_probabilities.items()},
        "notes": [n.value for n in head.notes],
        "note_probabilities": {k.value: _number(v) for k, v in head.note_probabilities.items()},
        "ood_score": _number(head.ood_score),
        "out_of_distribution": head.out_of_distribution,
        "ood_reason": head.ood_reason,
    }


@dataclass(frozen=True)
class RadiographFinding:
    """The reading of one radiograph; ``error`` names why it could not be read (then no heads).

    ``ood_score`` is the larger of the image's own out-of-distribution score and its heads' (NaN without a
    reference); ``out_of_distribution`` is True, with refusal on, when a head is refused or, with no head found,
    when the image itself lies beyond the threshold (it then keeps its "FH not found" reading).
    """

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    rows: int
    columns: int
    view: View | None
    ap_probability: float
    heads: tuple[HeadFinding, ...]
    error: str = ""
    ood_score: float = float("nan")
    out_of_distribution: bool = False


@dataclass(frozen=True)
class HipFinding:
    """A hip of the case: the most severe stage over its radiographs, decided by one head on one image.

    Only evaluated heads decide. When every head of the hip was refused, ``head`` is the least foreign of
    them (its box marks the hip) and :attr:`evaluated` is False: AVN not evaluated for that hip.
    """

    side: Side
    decided_by: str  # SOP Instance UID
    head: HeadFinding
    sources: tuple[str, ...]  # every radiograph whose reading of this hip was used (all, when none was)

    @property
    def stage(self) -> FicatStage:
        """The deciding head's stage; meaningless when not :attr:`evaluated`."""
        return self.head.stage

    @property
    def evaluated(self) -> bool:
        return self.head.evaluated


@dataclass(frozen=True)
class CaseFinding:
    """All radiographs of a case, the fused hips, and the model that read them."""

    radiographs: tuple[RadiographFinding, ...]
    hips: tuple[HipFinding, ...]
    model: ModelInfo


def fuse_hips(radiographs: tuple[RadiographFinding, ...]) -> tuple[HipFinding, ...]:
    """Per side, the evaluated head with the most severe stage (ties: higher presence probability) decides.

    A refused head never decides; a hip all of whose heads were refused is reported as not evaluated, marked
    by its least foreign head.
    """
    hips = []
    for side in (Side.R, Side.L):
        seen = [(r, h) for r in radiographs for h in r.heads if h.side == side]
        if not seen:
            continue
        used = [(r, h) for r, h in seen if h.evaluated]
        if used:
            rad, head = max(used, key=lambda rh: rh[1].severity)
        else:
            used = seen
            rad, head = min(seen, key=lambda rh: rh[1].ood_score)
        hips.append(HipFinding(side, rad.sop_instance_uid, head, tuple(r.sop_instance_uid for r, _ in used)))
    return tuple(hips)
