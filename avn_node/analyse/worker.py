"""One analysis job: read the case's radiographs, run the engine, build each study's results once, store
them durably, record them and queue their deliveries — in one commit after the files are on disk.

Result UIDs are deterministic, so a job repeated after a crash rewrites the same files and rows; a capture
whose UID is already recorded (same image, same model) is neither stored nor sent again.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import timedelta
from io import BytesIO

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from avn_node.config import Settings
from avn_node.models.inference import Analyzer
from avn_node.report.results import build_result_sets
from avn_node.store.files import durable_write, result_path
from avn_node.store.models import (
    Case,
    CaseState,
    Delivery,
    Event,
    Instance,
    InstanceState,
    Job,
    JobState,
    Result,
    Study,
    utcnow,
)

log = logging.getLogger("avn_node.analyse")
MAX_ATTEMPTS = 3


def claim_job(session: Session, lease_seconds: float) -> Job | None:
    """The oldest queued job, or a running one whose lease ran out; leased to the caller.

    A job that already had :data:`MAX_ATTEMPTS` (e.g. it killed the process each time) is failed instead.
    """
    now = utcnow()
    while True:
        job = session.scalars(
            select(Job)
            .where((Job.state == JobState.QUEUED) | ((Job.state == JobState.RUNNING) & (Job.lease_until < now)))
            .order_by(Job.id)
            .limit(1)
        ).first()
        if job is None:
            return None
        if job.attempts < MAX_ATTEMPTS:
            break
        _fail(session, job, job.error or f"gave up after {job.attempts} attempts")
        session.commit()
    job.state = JobState.RUNNING
    job.attempts += 1
    job.lease_until = now + timedelta(seconds=lease_seconds)
    session.commit()
    return job


def _case_instances(session: Session, case: Case) -> dict[str, Instance]:
    """The case's accepted radiographs: the latest copy per SOP Instance UID."""
    studies = session.scalars(select(Study).where(Study.case_id == case.id)).all()
    rows = session.scalars(
        select(Instance)
        .where(
            Instance.study_instance_uid.in_([s.study_instance_uid for s in studies]),
            Instance.state == InstanceState.ACCEPTED,
        )
        .order_by(Instance.id)
    ).all()
    return {row.sop_instance_uid: row for row in rows}


def _mark_analysed(session: Session, case: Case, instances: dict[str, Instance]) -> None:
    """Record how many images of each study this version covered: only newer images queue another."""
    counts: dict[str, int] = {}
    for row in instances.values():
        counts[row.study_instance_uid] = counts.get(row.study_instance_uid, 0) + 1
    for study in session.scalars(select(Study).where(Study.case_id == case.id)):
        study.analysed_instances = counts.get(study.study_instance_uid, 0)


def _fail(session: Session, job: Job, error: str) -> None:
    job.state = JobState.FAILED
    job.error = error[:2000]
    job.finished_at = utcnow()
    case = session.get(Case, job.case_id)
    if case is not None:
        case.state = CaseState.FAILED
        _mark_analysed(session, case, _case_instances(session, case))
    session.add(Event(kind="job.failed", subject=str(job.id), detail=job.error))


def _previous_srs(session: Session, case: Case, version: int) -> dict[str, list[Dataset]]:
    """Per study, the latest SR of an earlier version (Predecessor Documents Sequence)."""
    rows = session.scalars(
        select(Result)
        .where(Result.case_id == case.id, Result.kind == "sr", Result.version < version, Result.purged.is_(False))
        .order_by(Result.version)
    ).all()
    latest = {row.study_instance_uid: row for row in rows}
    return {study: [pydicom.dcmread(row.path, stop_before_pixels=True)] for study, row in latest.items()}


def run_job(settings: Settings, sessions: sessionmaker[Session], analyzer: Analyzer, job_id: int) -> None:
    """Analyse and report one job; marks it done, or failed (re-queued up to :data:`MAX_ATTEMPTS`)."""
    started = time.perf_counter()
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        case = session.get(Case, job.case_id)
        assert case is not None
        try:
            instances = _case_instances(session, case)
            sources = {uid: pydicom.dcmread(row.path) for uid, row in instances.items()}
            finding = analyzer.analyse_case(list(sources.values()))
            timings = dict(analyzer.timings)
            report_started = time.perf_counter()
            sets = build_result_sets(
                finding, sources, job.version, _previous_srs(session, case, job.version),
                settings.reporting.summary_image,
            )  # fmt: skip
            timings["report"] = time.perf_counter() - report_started
            store_started = time.perf_counter()
            known = set(session.scalars(select(Result.sop_instance_uid).where(Result.case_id == case.id)))
            new_results = []
            for result_set in sets:
                kinds = ["sr", *["cam"] * len(result_set.captures), *(["summary"] if result_set.summary else [])]
                for kind, ds in zip(kinds, result_set.datasets(), strict=True):
                    uid = str(ds.SOPInstanceUID)
                    if uid in known:
                        continue
                    path = result_path(settings.node.data_dir, result_set.study_instance_uid, kind, uid)
                    buffer = BytesIO()
                    ds.save_as(buffer, enforce_file_format=True)
                    durable_write(buffer.getvalue(), path)
                    row = Result(
                        case_id=case.id, version=job.version, study_instance_uid=result_set.study_instance_uid,
                        kind=kind, sop_instance_uid=uid, sop_class_uid=str(ds.SOPClassUID), path=str(path),
                    )  # fmt: skip
                    session.add(row)
                    new_results.append(row)
            session.flush()
            for row in new_results:
                for destination in settings.destinations:
                    session.add(Delivery(result_id=row.id, destination=destination.name))
            _mark_analysed(session, case, instances)
            case.state = CaseState.REPORTED
            job.state = JobState.DONE
            job.finished_at = utcnow()
            job.seconds = time.perf_counter() - started
            timings["store"] = time.perf_counter() - store_started
            detail = {"version": job.version, "seconds": {k: round(v, 4) for k, v in timings.items()}}
            session.add(Event(kind="case.reported", subject=str(case.id), detail=json.dumps(detail)))
            session.commit()
            log.info("case %d version %d: %d new result objects in %.2f s", case.id, job.version,
                     len(new_results), job.seconds)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a failed job is recorded, never lost
            session.rollback()
            job = session.get(Job, job_id)
            assert job is not None
            error = f"{type(exc).__name__}: {exc}"
            if job.attempts < MAX_ATTEMPTS:
                job.state = JobState.QUEUED
                job.error = error[:2000]
                session.add(Event(kind="job.retry", subject=str(job.id), detail=job.error))
            else:
                _fail(session, job, error)
            session.commit()
            log.exception("job %d (case %d) failed, attempt %d", job.id, job.case_id, job.attempts)
