"""Tables of the single source of truth (DESIGN §1): every state of instance, study, case, job, result, delivery.

Timestamps are UTC. States are one column each, so every stage is a query and restartable from the database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        return value.astimezone(UTC).replace(tzinfo=None) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    pass


class InstanceState(StrEnum):
    ACCEPTED = "accepted"  # a radiograph within [routing]
    IGNORED = "ignored"  # stored, not analysed (other modality, body part, our own results)
    PURGED = "purged"  # file deleted by retention; the row stays as an audit trace


class StudyState(StrEnum):
    RECEIVING = "receiving"
    COMPLETE = "complete"


class CaseState(StrEnum):
    PENDING = "pending"  # a job is queued or running for its current version
    REPORTED = "reported"
    FAILED = "failed"


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DeliveryState(StrEnum):
    PENDING = "pending"
    COMMITTING = "committing"  # stored at the archive; its storage commitment (PS3.4 Annex J) not yet reported
    SENT = "sent"  # delivered (and committed, where the destination asks for storage commitment)
    DEAD = "dead"  # gave up after give_up_hours; `avn-node deliveries retry` re-queues


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    modality: Mapped[str] = mapped_column(String(16), default="")
    state: Mapped[str] = mapped_column(String(16))
    analyzer: Mapped[str] = mapped_column(String(32), default="")  # the analyzer that selected it; "" if none
    file_key: Mapped[str] = mapped_column(Text)  # relative to data_dir (store.files)
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(Integer)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    calling_ae_title: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_datetime: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default=StudyState.RECEIVING, index=True)
    first_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    analysed_instances: Mapped[int] = mapped_column(Integer, default=0)  # accepted instances at last analysis
    case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id"), nullable=True, index=True)

    case: Mapped[Case | None] = relationship(back_populates="studies")


class Case(Base):
    __tablename__ = "cases"

    id: Mapped[int] = mapped_column(primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    anchor_datetime: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=CaseState.PENDING)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    studies: Mapped[list[Study]] = relationship(back_populates="case")


class Job(Base):
    """One analysis of a case version; claimed with compare-and-set, held by ``worker_id`` until ``lease_until``
    (renewed while it runs)."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("case_id", "version", name="uq_jobs_case_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    analyzer: Mapped[str] = mapped_column(String(32), default="radiograph")
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str] = mapped_column(String(128), default="")
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # with [queue] backend = "celery": when a task for this job last went to the broker (None: not yet)
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str] = mapped_column(Text, default="")
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Result(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # sr | cam | summary
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    file_key: Mapped[str] = mapped_column(Text)  # relative to data_dir (store.files)
    purged: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Delivery(Base):
    """One result to one destination; ``next_attempt_at`` doubles as the lease of the dispatcher sending it, and
    while committing as the time its storage commitment is (re)requested."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("result_id", "destination", name="uq_deliveries_result_destination"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # set while being sent
    claimed_by: Mapped[str] = mapped_column(String(128), default="")  # the node sending it
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    commitment_uid: Mapped[str] = mapped_column(String(64), default="", index=True)  # latest Transaction UID
    committed_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    result: Mapped[Result] = relationship()


class Event(Base):
    """Audit trail: one row per state change worth reading later (UIDs, AE titles; never patient names)."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(128), default="")
    detail: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # the event's fields, numbers as numbers


class Reading(Base):
    """What the model read on one radiograph of a case version (the SR says the same in DICOM): view, heads with
    box, side, stage, probabilities, notes and out-of-distribution score — for the dashboard, the review page,
    the metrics and the drift plot."""

    __tablename__ = "readings"

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    model_version: Mapped[str] = mapped_column(String(64), default="")
    view: Mapped[str] = mapped_column(String(8), default="")  # AP | FL | "" (not read)
    error: Mapped[str] = mapped_column(Text, default="")
    out_of_distribution: Mapped[bool] = mapped_column(Boolean, default=False)
    refused_heads: Mapped[int] = mapped_column(Integer, default=0)  # heads refused as out of distribution
    heads: Mapped[list] = mapped_column(JSON, default=list)  # avn_node.findings.head_json per head
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Role(StrEnum):
    ADMIN = "admin"  # everything, including retry and retract
    RADIOLOGIST = "radiologist"  # reads and reviews (labels)
    VIEWER = "viewer"  # reads only


class User(Base):
    """A dashboard account: an argon2 password hash and the sha256 of its API token (neither kept in clear)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(Text, default="")
    token_sha256: Mapped[str] = mapped_column(String(64), default="", index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Label(Base):
    """A reviewer's confirmed or corrected reading of one radiograph; the newest per radiograph counts."""

    __tablename__ = "labels"

    id: Mapped[int] = mapped_column(primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    reading_id: Mapped[int | None] = mapped_column(ForeignKey("readings.id"), nullable=True)
    model_version: Mapped[str] = mapped_column(String(64), default="")
    reviewer: Mapped[str] = mapped_column(String(64))
    view: Mapped[str] = mapped_column(String(8))
    heads: Mapped[list] = mapped_column(JSON, default=list)  # side, circle [cx, cy, r], stage, notes
    changes: Mapped[list] = mapped_column(JSON, default=list)  # what differs from the model's reading
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
