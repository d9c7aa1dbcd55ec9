"""The read side of the dashboard, its API and ``avn-node status``: queries over the one database, so every
figure is right whichever process did the work."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from avn_node.ground_truth import STAGES, FicatStage
from avn_node.store.models import (
    Case,
    Delivery,
    DeliveryState,
    Event,
    Instance,
    Job,
    JobState,
    Label,
    Reading,
    Result,
    Study,
    StudyState,
)
from avn_node.store.status import state_counts
from avn_node.web.schemas import (
    Attempt,
    CaseOut,
    Counts,
    DeliveryOut,
    DriftWeek,
    Failures,
    Hip,
    InstanceOut,
    JobOut,
    LabelOut,
    Overview,
    QueueDepth,
    ReadingOut,
    ResultOut,
    Retraction,
    StudyDetail,
    StudySummary,
)

RECENT = 15
DELIVERY_EVENTS = ("delivery.failed", "delivery.done", "delivery.retry", "delivery.dead")


def short_uid(uid: str) -> str:
    """A UID short enough for a table cell: its head and tail."""
    return uid if len(uid) <= 20 else f"{uid[:8]}…{uid[-8:]}"


def counts(session: Session) -> Counts:
    return Counts(
        instances=state_counts(session, Instance.state),
        studies=state_counts(session, Study.state),
        cases=state_counts(session, Case.state),
        jobs=state_counts(session, Job.state),
        deliveries=state_counts(session, Delivery.state),
    )


def queue_depth(c: Counts) -> QueueDepth:
    return QueueDepth(
        studies_receiving=c.studies.get(StudyState.RECEIVING, 0),
        jobs_queued=c.jobs.get(JobState.QUEUED, 0),
        jobs_running=c.jobs.get(JobState.RUNNING, 0),
        deliveries_pending=c.deliveries.get(DeliveryState.PENDING, 0),
        deliveries_committing=c.deliveries.get(DeliveryState.COMMITTING, 0),
        deliveries_dead=c.deliveries.get(DeliveryState.DEAD, 0),
    )


def overview(session: Session) -> Overview:
    c = counts(session)
    return Overview(counts=c, queue=queue_depth(c), recent=list_studies(session, limit=RECENT))


def _latest_readings(session: Session, case_ids: set[int]) -> dict[int, list[Reading]]:
    """Per case, the readings of its newest version that has any."""
    if not case_ids:
        return {}
    newest = (
        select(Reading.case_id, func.max(Reading.version).label("version"))
        .where(Reading.case_id.in_(case_ids))
        .group_by(Reading.case_id)
        .subquery()
    )
    rows = session.scalars(
        select(Reading).join(newest, (Reading.case_id == newest.c.case_id) & (Reading.version == newest.c.version))
    )
    out: dict[int, list[Reading]] = defaultdict(list)
    for row in rows:
        out[row.case_id].append(row)
    return out


def hips(readings: list[Reading], study_uid: str | None = None) -> list[Hip]:
    """Per side, the most severe evaluated stage over the readings (of one study when ``study_uid`` is given)."""
    seen: dict[str, list[dict]] = defaultdict(list)
    for reading in readings:
        if study_uid is None or reading.study_instance_uid == study_uid:
            for head in reading.heads:
                seen[head["side"]].append(head)
    out = []
    for side in ("R", "L"):
        if side not in seen:
            continue
        used = [h for h in seen[side] if not h["out_of_distribution"]]
        if not used:
            out.append(Hip(side=side, stage=None, presence_probability=None))
            continue
        worst = max(used, key=lambda h: (STAGES.index(FicatStage(h["stage"])), h["presence_probability"] or 0.0))
        out.append(Hip(side=side, stage=worst["stage"], presence_probability=worst["presence_probability"]))
    return out


def _summaries(session: Session, studies: list[Study]) -> list[StudySummary]:
    uids = [s.study_instance_uid for s in studies]
    n_instances = dict(
        session.execute(
            select(Instance.study_instance_uid, func.count())
            .where(Instance.study_instance_uid.in_(uids))
            .group_by(Instance.study_instance_uid)
        ).all()
    )
    cases = {c.id: c for c in session.scalars(select(Case).where(Case.id.in_({s.case_id for s in studies})))}
    readings = _latest_readings(session, set(cases))
    out = []
    for s in studies:
        case = cases.get(s.case_id) if s.case_id else None
        mine = [r for r in readings.get(s.case_id or -1, []) if r.study_instance_uid == s.study_instance_uid]
        out.append(
            StudySummary(
                study_instance_uid=s.study_instance_uid,
                patient_id=s.patient_id,
                accession_number=s.accession_number,
                study_datetime=s.study_datetime,
                state=s.state,
                instances=int(n_instances.get(s.study_instance_uid, 0)),
                case_id=s.case_id,
                case_state=case.state if case else None,
                version=mine[0].version if mine else None,
                hips=hips(mine),
                out_of_distribution=any(r.out_of_distribution for r in mine),
            )
        )
    return out


def list_studies(
    session: Session,
    q: str = "",
    state: str = "",
    date_from: datetime | None = None,
    date_to: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[StudySummary]:
    """Studies newest first; ``q`` matches patient ID, accession number or the start of the Study Instance UID."""
    query = select(Study)
    if q:
        query = query.where(
            or_(Study.patient_id == q, Study.accession_number == q, Study.study_instance_uid.startswith(q))
        )
    if state:
        query = query.where(Study.state == state)
    if date_from is not None:
        query = query.where(Study.study_datetime >= date_from)
    if date_to is not None:
        query = query.where(Study.study_datetime <= date_to)
    rows = session.scalars(query.order_by(Study.last_received_at.desc(), Study.id.desc()).limit(limit).offset(offset))
    return _summaries(session, list(rows))


def _delivery(d: Delivery, history: Sequence[Event] = ()) -> DeliveryOut:
    return DeliveryOut(
        id=d.id, result_id=d.result_id, destination=d.destination, state=d.state, attempts=d.attempts,
        next_attempt_at=d.next_attempt_at, last_error=d.last_error, sent_at=d.sent_at,
        history=[Attempt(at=e.at, kind=e.kind, detail=e.detail) for e in history],
    )  # fmt: skip


def _delivery_history(session: Session, ids: list[int]) -> dict[str, list[Event]]:
    events = session.scalars(
        select(Event)
        .where(Event.kind.in_(DELIVERY_EVENTS), Event.subject.in_([str(i) for i in ids]))
        .order_by(Event.id)
    )
    out: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        out[e.subject].append(e)
    return out


def _result(r: Result, deliveries: list[DeliveryOut]) -> ResultOut:
    return ResultOut(id=r.id, case_id=r.case_id, version=r.version, kind=r.kind, sop_instance_uid=r.sop_instance_uid,
                     sop_class_uid=r.sop_class_uid, purged=r.purged, created_at=r.created_at,
                     deliveries=deliveries)  # fmt: skip


def reading_out(r: Reading) -> ReadingOut:
    return ReadingOut(
        id=r.id, case_id=r.case_id, version=r.version, sop_instance_uid=r.sop_instance_uid,
        model_version=r.model_version, view=r.view, error=r.error, out_of_distribution=r.out_of_distribution,
        heads=r.heads, created_at=r.created_at,
    )  # fmt: skip


def label_out(label: Label) -> LabelOut:
    return LabelOut(
        id=label.id, sop_instance_uid=label.sop_instance_uid, study_instance_uid=label.study_instance_uid,
        reviewer=label.reviewer, model_version=label.model_version, view=label.view, heads=label.heads,
        changes=label.changes, created_at=label.created_at,
    )  # fmt: skip


def study_detail(session: Session, uid: str) -> StudyDetail | None:
    study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).first()
    if study is None:
        return None
    instances = session.scalars(select(Instance).where(Instance.study_instance_uid == uid).order_by(Instance.id))
    readings = _latest_readings(session, {study.case_id}).get(study.case_id, []) if study.case_id else []
    results = list(session.scalars(select(Result).where(Result.study_instance_uid == uid).order_by(Result.id)))
    deliveries = list(session.scalars(select(Delivery).where(Delivery.result_id.in_([r.id for r in results]))))
    history = _delivery_history(session, [d.id for d in deliveries])
    per_result: dict[int, list[DeliveryOut]] = defaultdict(list)
    for d in deliveries:
        per_result[d.result_id].append(_delivery(d, history.get(str(d.id), [])))
    labels = session.scalars(select(Label).where(Label.study_instance_uid == uid).order_by(Label.id))
    retracted = session.scalars(
        select(Event).where(Event.kind == "result.retracted", Event.subject == uid).order_by(Event.id)
    )
    return StudyDetail(
        summary=_summaries(session, [study])[0],
        instances=[
            InstanceOut(
                sop_instance_uid=i.sop_instance_uid,
                series_instance_uid=i.series_instance_uid,
                modality=i.modality,
                state=i.state,
                transfer_syntax_uid=i.transfer_syntax_uid,
                size_bytes=i.size_bytes,
                calling_ae_title=i.calling_ae_title,
                received_at=i.received_at,
            )  # fmt: skip
            for i in instances
        ],
        readings=[reading_out(r) for r in readings if r.study_instance_uid == uid],
        results=[_result(r, per_result.get(r.id, [])) for r in results],
        labels=[label_out(label) for label in labels],
        retractions=[
            Retraction(at=e.at, version=e.data["version"], user=e.data["user"], reason=e.detail,
                       rejection_sop_instance_uid=e.data["rejection"])  # fmt: skip
            for e in retracted
        ],
    )


def _job(j: Job) -> JobOut:
    return JobOut(id=j.id, case_id=j.case_id, version=j.version, state=j.state, attempts=j.attempts, error=j.error,
                  created_at=j.created_at, finished_at=j.finished_at)  # fmt: skip


def case_detail(session: Session, case_id: int) -> CaseOut | None:
    case = session.get(Case, case_id)
    if case is None:
        return None
    studies = session.scalars(select(Study.study_instance_uid).where(Study.case_id == case.id).order_by(Study.id))
    jobs = session.scalars(select(Job).where(Job.case_id == case.id).order_by(Job.id))
    readings = _latest_readings(session, {case.id}).get(case.id, [])
    return CaseOut(id=case.id, patient_id=case.patient_id, version=case.version, state=case.state,
                   studies=list(studies), jobs=[_job(j) for j in jobs],
                   readings=[reading_out(r) for r in readings])  # fmt: skip


def result_detail(session: Session, result_id: int) -> ResultOut | None:
    r = session.get(Result, result_id)
    if r is None:
        return None
    deliveries = list(session.scalars(select(Delivery).where(Delivery.result_id == r.id)))
    history = _delivery_history(session, [d.id for d in deliveries])
    return _result(r, [_delivery(d, history.get(str(d.id), [])) for d in deliveries])


def list_deliveries(session: Session, state: str = "", destination: str = "", limit: int = 100) -> list[DeliveryOut]:
    query = select(Delivery)
    if state:
        query = query.where(Delivery.state == state)
    if destination:
        query = query.where(Delivery.destination == destination)
    return [_delivery(d) for d in session.scalars(query.order_by(Delivery.id.desc()).limit(limit))]


def failures(session: Session, limit: int = 100) -> Failures:
    """Jobs that failed or are retrying after an error; deliveries dead or retrying after an error."""
    jobs = session.scalars(select(Job).where(Job.error != "").order_by(Job.id.desc()).limit(limit))
    deliveries = list(
        session.scalars(
            select(Delivery)
            .where(Delivery.state != DeliveryState.SENT, or_(Delivery.last_error != "", Delivery.state == "dead"))
            .order_by(Delivery.id.desc())
            .limit(limit)
        )
    )
    history = _delivery_history(session, [d.id for d in deliveries])
    return Failures(
        jobs=[_job(j) for j in jobs],
        deliveries=[_delivery(d, history.get(str(d.id), [])) for d in deliveries],
    )


def drift(session: Session) -> list[DriftWeek]:
    """Per ISO week and model version: radiographs read, heads, the OOD-flag rate and mean p(AVN)."""
    weeks: dict[tuple[str, str], dict[str, Any]] = {}
    for r in session.scalars(select(Reading).order_by(Reading.created_at)):
        year, week, _ = r.created_at.isocalendar()
        w = weeks.setdefault((f"{year}-W{week:02d}", r.model_version), {"radiographs": 0, "heads": 0, "flagged": 0,
                                                                         "p": []})  # fmt: skip
        w["radiographs"] += 1
        for head in r.heads:
            w["heads"] += 1
            if head["out_of_distribution"]:
                w["flagged"] += 1
            elif head["presence_probability"] is not None:
                w["p"].append(head["presence_probability"])
    return [
        DriftWeek(
            week=week,
            model_version=version,
            radiographs=w["radiographs"],
            heads=w["heads"],
            ood_flag_rate=w["flagged"] / w["heads"] if w["heads"] else 0.0,
            mean_presence_probability=sum(w["p"]) / len(w["p"]) if w["p"] else None,
        )  # fmt: skip
        for (week, version), w in sorted(weeks.items())
    ]
