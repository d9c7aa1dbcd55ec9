"""The job queue: compare-and-set claims, leases held by a worker, renewed, and reclaimed only when theirs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from avn_node.analyse.queue import JobQueue
from avn_node.store.database import open_database
from avn_node.store.models import Case, Job, JobState, utcnow
from tests.conftest import race_between_read_and_write


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    sessions = open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")
    with sessions() as s:
        case = Case(patient_id="P", version=1)
        s.add(case)
        s.flush()
        s.add(Job(case_id=case.id, version=1))
        s.commit()
    return sessions


def _job(sessions: sessionmaker[Session]) -> Job:
    with sessions() as s:
        return s.query(Job).one()


def test_two_claimers_never_get_one_job(sessions: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch):
    # both read the queued row before either writes
    queues = [JobQueue(sessions, f"worker-{i}", 600) for i in range(2)]
    claimed = race_between_read_and_write(monkeypatch, JobQueue, "_set", [q.claim for q in queues])
    assert sorted(c is None for c in claimed) == [False, True]
    winner = next(c for c in claimed if c is not None)
    job = _job(sessions)
    assert job.state == JobState.RUNNING and job.attempts == 1 and job.worker_id == winner.worker_id


def test_a_restart_leaves_another_workers_live_lease_alone(sessions: sessionmaker[Session]):
    assert JobQueue(sessions, "a", 600).claim() is not None
    assert JobQueue(sessions, "b", 600).reclaim() == 0
    assert _job(sessions).worker_id == "a" and _job(sessions).state == JobState.RUNNING
    assert JobQueue(sessions, "a", 600).reclaim() == 1  # its own job, interrupted by the restart
    assert _job(sessions).state == JobState.QUEUED


def test_an_expired_lease_is_reclaimed_and_its_old_holder_can_neither_renew_nor_finish(
    sessions: sessionmaker[Session],
):
    a, b = JobQueue(sessions, "a", 600), JobQueue(sessions, "b", 600)
    job = a.claim()
    assert job is not None and a.heartbeat(job.id)
    with sessions() as s:
        s.execute(update(Job).values(lease_until=utcnow() - timedelta(seconds=1)))
        s.commit()
    assert b.claim() is not None and _job(sessions).attempts == 2
    assert not a.heartbeat(job.id)
    with sessions() as s:
        assert not a.finish(s, job.id, 1.0)
        assert b.finish(s, job.id, 1.0)
        s.commit()
    assert _job(sessions).state == JobState.DONE


def test_heartbeat_renews_the_lease(sessions: sessionmaker[Session]):
    queue = JobQueue(sessions, "a", 600)
    job = queue.claim()
    assert job is not None
    with sessions() as s:
        s.execute(update(Job).values(lease_until=utcnow() + timedelta(seconds=5)))
        s.commit()
    assert queue.heartbeat(job.id)
    assert _job(sessions).lease_until > utcnow() + timedelta(seconds=590)


def test_a_failed_attempt_is_requeued_then_failed_with_its_case(sessions: sessionmaker[Session]):
    queue = JobQueue(sessions, "a", 600)
    for attempt in range(1, 4):
        job = queue.claim()
        assert job is not None and job.attempts == attempt
        assert queue.fail(job.id, "RuntimeError: boom") == (JobState.QUEUED if attempt < 3 else JobState.FAILED)
    with sessions() as s:
        assert s.query(Case).one().state == "failed"
    assert queue.claim() is None


def test_one_job_per_case_version(sessions: sessionmaker[Session]):
    with sessions() as s, pytest.raises(IntegrityError):
        s.add(Job(case_id=_job(sessions).case_id, version=1))
        s.commit()
