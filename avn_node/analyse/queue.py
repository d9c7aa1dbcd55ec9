"""The analysis queue over the ``jobs`` table: claim, heartbeat, finish and fail with compare-and-set.

Every write is ``UPDATE … WHERE`` the state (and owner) the caller saw, and its row count is checked, so two
workers that read the same row cannot both take it; PostgreSQL also skips rows another claimer has locked.
A claim leases the job to ``worker_id`` until ``lease_until``; the heartbeat renews it while the job runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Select, select, update
from sqlalchemy.orm import Session, sessionmaker

from avn_node.events import NodeEvent, emit
from avn_node.store.models import Case, CaseState, Instance, InstanceState, Job, JobState, Study, utcnow

log = logging.getLogger("avn_node.analyse")
MAX_ATTEMPTS = 3


def case_instances(session: Session, case: Case) -> dict[str, Instance]:
    """The case's accepted instances: the latest copy per SOP Instance UID."""
    studies = session.scalars(select(Study.study_instance_uid).where(Study.case_id == case.id)).all()
    rows = session.scalars(
        select(Instance)
        .where(Instance.study_instance_uid.in_(studies), Instance.state == InstanceState.ACCEPTED)
        .order_by(Instance.id)
    ).all()
    return {row.sop_instance_uid: row for row in rows}


def mark_analysed(session: Session, case: Case, analysed: Iterable[Instance] | None = None) -> None:
    """Record how many images of each study a version covered (``analysed``, default: every accepted one now),
    so only images it did not cover queue another version."""
    counts: dict[str, int] = {}
    for row in case_instances(session, case).values() if analysed is None else analysed:
        counts[row.study_instance_uid] = counts.get(row.study_instance_uid, 0) + 1
    for study in session.scalars(select(Study).where(Study.case_id == case.id)):
        study.analysed_instances = counts.get(study.study_instance_uid, 0)


def _claimable(now: datetime) -> ColumnElement[bool]:
    return (Job.state == JobState.QUEUED) | ((Job.state == JobState.RUNNING) & (Job.lease_until < now))


def claimable(session: Session, job_id: int | None = None) -> Select[tuple[int, str, int]]:
    """The oldest job (or job ``job_id``) that is queued or whose lease ran out: (id, state, attempts)."""
    query = select(Job.id, Job.state, Job.attempts).where(_claimable(utcnow())).order_by(Job.id).limit(1)
    if job_id is not None:
        query = query.where(Job.id == job_id)
    if session.get_bind().dialect.name == "postgresql":
        # the oldest free job: skip those another claimer holds; a named job: wait for whoever holds its row
        query = query.with_for_update(skip_locked=job_id is None)
    return query


class JobQueue:
    """The jobs of one worker (``worker_id``): what it claims it holds until it finishes, fails or its lease ends."""

    def __init__(self, sessions: sessionmaker[Session], worker_id: str, lease_seconds: float) -> None:
        self.sessions = sessions
        self.worker_id = worker_id
        self.lease = timedelta(seconds=lease_seconds)

    def claim(self, job_id: int | None = None) -> Job | None:
        """Lease the oldest claimable job (or job ``job_id``, if it is claimable) to this worker; a job past
        :data:`MAX_ATTEMPTS` is failed instead."""
        with self.sessions() as session:
            while (seen := session.execute(claimable(session, job_id)).first()) is not None:
                job_id, state, attempts = seen
                if attempts >= MAX_ATTEMPTS:
                    job = session.get(Job, job_id)
                    assert job is not None
                    if self._set(session, job_id, state, attempts, state=JobState.FAILED, finished_at=utcnow(),
                                 error=job.error or f"gave up after {attempts} attempts"):  # fmt: skip
                        self._fail_case(session, job)
                    session.commit()
                    continue
                if self._set(session, job_id, state, attempts, state=JobState.RUNNING, attempts=attempts + 1,
                             worker_id=self.worker_id, lease_until=utcnow() + self.lease):  # fmt: skip
                    session.commit()
                    return session.get(Job, job_id)
                session.rollback()  # another worker took it between our read and our write
        return None

    @staticmethod
    def _set(session: Session, job_id: int, seen_state: str, seen_attempts: int, **values: object) -> bool:
        """Compare-and-set: write ``values`` only if the job is still in the state and attempts seen."""
        result = session.execute(
            update(Job).where(Job.id == job_id, Job.state == seen_state, Job.attempts == seen_attempts).values(**values)
        )
        return result.rowcount == 1

    def _held(self, job_id: int):  # noqa: ANN202 - an UPDATE statement
        """An UPDATE of ``job_id`` that matches only while this worker holds it running."""
        return update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING, Job.worker_id == self.worker_id)

    def heartbeat(self, job_id: int) -> bool:
        """Renew the lease; False when this worker no longer holds the job (its lease ran out and it was taken)."""
        with self.sessions() as session:
            held = self.renew(session, job_id)
            session.commit()
        return held

    def renew(self, session: Session, job_id: int) -> bool:
        """:meth:`heartbeat` inside the caller's transaction."""
        return session.execute(self._held(job_id).values(lease_until=utcnow() + self.lease)).rowcount == 1

    def finish(self, session: Session, job_id: int, seconds: float) -> bool:
        """Mark the job done inside the caller's transaction; False (nothing written) when it is not ours."""
        done = self._held(job_id).values(state=JobState.DONE, finished_at=utcnow(), seconds=seconds, error="")
        return session.execute(done).rowcount == 1

    def fail(self, job_id: int, error: str) -> str:
        """Re-queue the job, or fail it and its case after :data:`MAX_ATTEMPTS`; returns the new state."""
        with self.sessions() as session:
            job = session.get(Job, job_id)
            assert job is not None
            state = JobState.QUEUED if job.attempts < MAX_ATTEMPTS else JobState.FAILED
            values = {"state": state, "error": error[:2000], "lease_until": None, "enqueued_at": None}
            if state == JobState.FAILED:
                values["finished_at"] = utcnow()
            if session.execute(self._held(job_id).values(**values)).rowcount != 1:
                log.warning("job %d: failure not recorded, another worker holds it now", job_id)
                return job.state
            session.refresh(job)
            if state == JobState.FAILED:
                self._fail_case(session, job)
            else:
                emit(session, NodeEvent("job.retry", str(job_id), job.error, {"attempt": job.attempts}))
            session.commit()
            return state

    @staticmethod
    def _fail_case(session: Session, job: Job) -> None:
        case = session.get(Case, job.case_id)
        if case is not None:
            case.state = CaseState.FAILED
            mark_analysed(session, case)
        emit(session, NodeEvent("job.failed", str(job.id), job.error, {"case": job.case_id, "version": job.version,
                                                                       "attempts": job.attempts}))  # fmt: skip

    def reclaim(self) -> int:
        """At start: re-queue this worker's own running jobs (it was stopped or killed) and any expired lease;
        another worker's live lease is left alone."""
        with self.sessions() as session:
            reclaimed = session.execute(
                update(Job)
                .where(Job.state == JobState.RUNNING,
                       (Job.worker_id == self.worker_id) | (Job.lease_until < utcnow()) | Job.lease_until.is_(None))
                .values(state=JobState.QUEUED, lease_until=None)
            ).rowcount  # fmt: skip
            session.commit()
        return reclaimed


def unsent(session: Session, lease: timedelta, limit: int = 100) -> list[int]:
    """Claimable jobs whose task is not (or may no longer be) with the broker: never sent, sent longer than a
    lease ago, or sent before their lease ran out (their worker was lost). Oldest first."""
    now = utcnow()
    rows = session.scalars(
        select(Job.id)
        .where(_claimable(now),
               Job.enqueued_at.is_(None) | (Job.enqueued_at < now - lease)
               | (Job.lease_until.is_not(None) & (Job.enqueued_at < Job.lease_until)))
        .order_by(Job.id)
        .limit(limit)
    )  # fmt: skip
    return list(rows)


def mark_sent(session: Session, job_ids: list[int], sent: bool = True) -> None:
    """Record that tasks for ``job_ids`` go to the broker now (``sent=False``: that they did not go after all)."""
    if job_ids:
        session.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=utcnow() if sent else None))
