"""Idle and force timers as queries over UTC columns (mercure's routing, without folders), then cases.

A case is one patient's (Patient ID + Issuer) complete studies whose Study Date/Time lie within
``case_window_hours`` of the case's first study (:func:`avn_node.group.cases.joins_case`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from avn_node.config import PipelineSettings
from avn_node.events import NodeEvent, emit
from avn_node.group.cases import joins_case
from avn_node.store.models import Case, CaseState, Instance, InstanceState, Job, JobState, Study, StudyState

log = logging.getLogger("avn_node.group")


def close_stable_studies(session: Session, pipeline: PipelineSettings, now: datetime) -> list[str]:
    """Mark receiving studies complete after ``study_idle_seconds`` of silence or ``study_force_seconds``."""
    idle_before = now - timedelta(seconds=pipeline.study_idle_seconds)
    force_before = now - timedelta(seconds=pipeline.study_force_seconds)
    studies = session.scalars(
        select(Study).where(
            Study.state == StudyState.RECEIVING,
            or_(Study.last_received_at <= idle_before, Study.first_received_at <= force_before),
        )
    ).all()
    for study in studies:
        study.state = StudyState.COMPLETE
        study.completed_at = now
        receiving = (now - study.first_received_at).total_seconds()
        emit(session, NodeEvent("study.complete", study.study_instance_uid, data={"seconds_receiving": receiving}))
        log.info("study %s complete", study.study_instance_uid)
    return [s.study_instance_uid for s in studies]


def next_deadline(session: Session, pipeline: PipelineSettings) -> datetime | None:
    """When the next receiving study becomes complete (its idle or force time), if nothing else arrives."""
    last, first = session.execute(
        select(func.min(Study.last_received_at), func.min(Study.first_received_at)).where(
            Study.state == StudyState.RECEIVING
        )
    ).one()
    if last is None:
        return None
    return min(last + timedelta(seconds=pipeline.study_idle_seconds),
               first + timedelta(seconds=pipeline.study_force_seconds))  # fmt: skip


def _anchor(study: Study) -> datetime:
    return study.study_datetime or study.first_received_at


def _case_for(session: Session, study: Study, window: timedelta) -> Case:
    """The patient's case whose first study lies within the window of this one, or a new case.

    A study without Patient ID always gets a case of its own: anonymous studies are never fused.
    """
    candidates = (
        []
        if not study.patient_id
        else session.scalars(
            select(Case)
            .where(Case.patient_id == study.patient_id, Case.issuer_of_patient_id == study.issuer_of_patient_id)
            .order_by(Case.id)
        ).all()
    )
    patient = (study.patient_id, study.issuer_of_patient_id)
    for case in candidates:
        if joins_case((case.patient_id, case.issuer_of_patient_id), case.anchor_datetime, patient, _anchor(study),
                      window):  # fmt: skip
            return case
    case = Case(
        patient_id=study.patient_id, issuer_of_patient_id=study.issuer_of_patient_id, anchor_datetime=_anchor(study)
    )
    session.add(case)
    session.flush()
    return case


def _busy(session: Session, case_id: int) -> bool:
    """Whether the case has a job queued or running."""
    return bool(
        session.scalar(
            select(func.count(Job.id)).where(Job.case_id == case_id, Job.state.in_([JobState.QUEUED, JobState.RUNNING]))
        )
    )


def _unanalysed(session: Session, study: Study) -> bool:
    """Read again now: does the study have accepted images its case's last version did not cover?

    A worker marks its job done and the images it covered in one commit, so once :func:`_busy` saw the job
    done, this sees what it covered.
    """
    session.refresh(study)
    accepted = session.scalar(
        select(func.count(func.distinct(Instance.sop_instance_uid))).where(
            Instance.study_instance_uid == study.study_instance_uid, Instance.state == InstanceState.ACCEPTED
        )
    )
    return study.analysed_instances < (accepted or 0)


def schedule_cases(session: Session, pipeline: PipelineSettings) -> list[int]:
    """Put complete studies with unanalysed images into cases and queue one job per case version."""
    accepted = (
        select(
            Instance.study_instance_uid,
            func.count(func.distinct(Instance.sop_instance_uid)).label("n"),
            func.max(Instance.analyzer).label("analyzer"),
        )
        .where(Instance.state == InstanceState.ACCEPTED)
        .group_by(Instance.study_instance_uid)
        .subquery()
    )
    rows = session.execute(
        select(Study, accepted.c.analyzer)
        .join(accepted, accepted.c.study_instance_uid == Study.study_instance_uid)
        .where(Study.state == StudyState.COMPLETE, Study.analysed_instances < accepted.c.n)
        .order_by(Study.id)
    ).all()
    queued = []
    window = timedelta(hours=pipeline.case_window_hours)
    for study, analyzer in rows:
        if study.case_id is None:
            study.case = _case_for(session, study, window)
            session.flush()
        case = study.case
        assert case is not None
        if _busy(session, case.id):
            continue  # the next version follows once this one is done
        if not _unanalysed(session, study):
            continue  # the job that just finished covered these images (it committed after the query above)
        session.refresh(case)
        case.version += 1
        case.state = CaseState.PENDING
        session.add(Job(case_id=case.id, version=case.version, analyzer=analyzer))
        emit(session, NodeEvent("case.queued", str(case.id), data={"version": case.version, "analyzer": analyzer,
                                                                   "study": study.study_instance_uid}))  # fmt: skip
        session.flush()
        log.info("case %d version %d queued (study %s)", case.id, case.version, study.study_instance_uid)
        queued.append(case.id)
    return queued


def reanalyse_studies(session: Session, study_uids: list[str]) -> dict[str, tuple[bool, str]]:
    """Queue a new version of the case of each study on demand (e.g. after new weights); per UID whether it
    was queued and what happened.

    Earlier results stay as they are; the new version's SR names the latest earlier SR as its predecessor.
    """
    outcome: dict[str, tuple[bool, str]] = {}
    for uid in study_uids:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        if study is None:
            outcome[uid] = (False, "unknown study")
        elif study.case is None:
            outcome[uid] = (False, "not analysed yet: it is queued when complete")
        elif _busy(session, study.case_id):
            outcome[uid] = (False, f"case {study.case_id} already has a job queued or running")
        else:
            case = study.case
            analyzer = session.scalar(select(Job.analyzer).where(Job.case_id == case.id).order_by(Job.id.desc()))
            case.version += 1
            case.state = CaseState.PENDING
            session.add(Job(case_id=case.id, version=case.version, analyzer=analyzer or "radiograph"))
            emit(session, NodeEvent("case.queued", str(case.id), "on demand", {"version": case.version, "study": uid}))
            session.flush()
            log.info("case %d version %d queued on demand (study %s)", case.id, case.version, uid)
            outcome[uid] = (True, f"case {case.id} version {case.version} queued")
    return outcome
