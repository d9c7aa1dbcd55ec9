"""What the JSON API returns (and the pages show): typed objects, so the OpenAPI schema says what each field is."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from avn_node.ground_truth import Note


class Counts(BaseModel):
    """Rows per state of each stage's table."""

    instances: dict[str, int]
    studies: dict[str, int]
    cases: dict[str, int]
    jobs: dict[str, int]
    deliveries: dict[str, int]


class QueueDepth(BaseModel):
    """Work waiting at each stage."""

    studies_receiving: int
    jobs_queued: int
    jobs_running: int
    deliveries_pending: int
    deliveries_committing: int  # stored; the archive's storage commitment not yet reported
    deliveries_dead: int


class Hip(BaseModel):
    """One hip of a study's latest reading: the most severe evaluated stage over its radiographs."""

    side: str
    stage: str | None = Field(description="None: AVN not evaluated (every head of this hip was refused)")
    presence_probability: float | None


class StudySummary(BaseModel):
    study_instance_uid: str
    patient_id: str
    accession_number: str
    study_datetime: datetime | None
    state: str
    instances: int
    case_id: int | None
    case_state: str | None
    version: int | None = Field(description="the case's latest result version (None: not analysed yet)")
    hips: list[Hip]
    out_of_distribution: bool = Field(description="a radiograph or head of the latest reading was refused")


class Overview(BaseModel):
    counts: Counts
    queue: QueueDepth
    recent: list[StudySummary]


class Head(BaseModel):
    """A detected femoral head as the model read it (``avn_node.findings.head_json``)."""

    side: str
    box: list[float] = Field(description="x0, y0, x1, y1 in the stored image's pixel columns and rows")
    detection_score: float | None
    side_agrees: bool
    stage: str
    presence_probability: float | None
    stage_probabilities: dict[str, float | None]
    notes: list[str]
    note_probabilities: dict[str, float | None]
    ood_score: float | None
    out_of_distribution: bool
    ood_reason: str


class ReadingOut(BaseModel):
    id: int
    case_id: int
    version: int
    sop_instance_uid: str
    model_version: str
    view: str
    error: str
    out_of_distribution: bool
    heads: list[Head]
    created_at: datetime


class InstanceOut(BaseModel):
    sop_instance_uid: str
    series_instance_uid: str
    modality: str
    state: str
    transfer_syntax_uid: str
    size_bytes: int
    calling_ae_title: str
    received_at: datetime


class Attempt(BaseModel):
    """One event in a delivery's history (failed, done, retried, dead)."""

    at: datetime
    kind: str
    detail: str


class DeliveryOut(BaseModel):
    id: int
    result_id: int
    destination: str
    state: str
    attempts: int
    next_attempt_at: datetime
    last_error: str
    sent_at: datetime | None
    history: list[Attempt] = []


class ResultOut(BaseModel):
    id: int
    case_id: int
    version: int
    kind: str = Field(description="sr | cam | summary")
    sop_instance_uid: str
    sop_class_uid: str
    purged: bool
    created_at: datetime
    deliveries: list[DeliveryOut]


class LabelOut(BaseModel):
    id: int
    sop_instance_uid: str
    study_instance_uid: str
    reviewer: str
    model_version: str
    view: str
    heads: list[dict]
    changes: list[str]
    created_at: datetime


class Retraction(BaseModel):
    """A result set taken back: the rejection note (KOS, "Rejected for Quality Reasons") sent for it."""

    at: datetime
    version: int
    user: str
    reason: str
    rejection_sop_instance_uid: str


class RetractIn(BaseModel):
    version: int = Field(ge=1, le=2**31 - 1)
    reason: str = Field(min_length=3, max_length=1024)


class StudyDetail(BaseModel):
    summary: StudySummary
    instances: list[InstanceOut]
    readings: list[ReadingOut] = Field(description="the latest version's reading of each radiograph")
    results: list[ResultOut]
    labels: list[LabelOut]
    retractions: list[Retraction]


class JobOut(BaseModel):
    id: int
    case_id: int
    version: int
    state: str
    attempts: int
    error: str
    created_at: datetime
    finished_at: datetime | None


class Failures(BaseModel):
    jobs: list[JobOut]
    deliveries: list[DeliveryOut]


class RetryOut(BaseModel):
    requeued: int


class DriftWeek(BaseModel):
    """Per ISO week and model version: how foreign the images were and how much AVN was called."""

    week: str = Field(description="ISO week, e.g. 2026-W49")
    model_version: str
    radiographs: int
    heads: int
    ood_flag_rate: float = Field(description="share of heads refused as out of distribution")
    mean_presence_probability: float | None = Field(description="over evaluated heads")


class CaseOut(BaseModel):
    id: int
    patient_id: str
    version: int
    state: str
    studies: list[str]
    jobs: list[JobOut]
    readings: list[ReadingOut] = Field(description="the newest version's readings")


class Health(BaseModel):
    status: str


class HeadIn(BaseModel):
    """A femoral head as the reviewer drew it."""

    side: Literal["R", "L"]
    circle: tuple[float, float, float] = Field(description="centre column, centre row, radius (stored pixels)")
    stage: Literal["absence", "II", "III", "IV"]
    notes: list[Note] = Field(default=[], max_length=7)


class LabelIn(BaseModel):
    """A reviewer's confirmed or corrected reading of one radiograph."""

    sop_instance_uid: str = Field(max_length=64)
    view: Literal["AP", "FL"]
    heads: list[HeadIn] = Field(max_length=2)
