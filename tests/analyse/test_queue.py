"""The job queue: compare-and-set claims, leases held by a worker, renewed, and reclaimed only when theirs."""

from __future__ import annotations

import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from avn_node.analyse.queue import JobQueue, mark_sent, unsent
from avn_node.store.database import open_database
from avn_node.store.models import Case, Job, JobState, utcnow
from tests.conftest import race_between_read_and_write
from tests.scaleout.servers import Postgres


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


def test_unsent_lists_new_failed_and_lost_jobs_and_not_those_at_the_broker(sessions: sessionmaker[Session]):
    lease = timedelta(seconds=600)
    with sessions() as s:
        assert unsent(s, lease) == [1]  # new
        mark_sent(s, [1])
        s.commit()
        assert unsent(s, lease) == []  # its task is with the broker
    a = JobQueue(sessions, "a", 600)
    job = a.claim(1)
    assert job is not None and a.fail(job.id, "boom") == JobState.QUEUED
    with sessions() as s:
        assert unsent(s, lease) == [1]  # re-queued after a failure: sent again at once
        now = utcnow()  # sent, claimed, and its lease ran out a second ago
        s.execute(update(Job).values(state=JobState.RUNNING, enqueued_at=now - timedelta(seconds=60),
                                     lease_until=now - timedelta(seconds=1)))  # fmt: skip
        s.commit()
        assert unsent(s, lease) == [1]  # its worker was lost: the lease ran out after the task was sent
        mark_sent(s, [1])
        s.commit()
        assert unsent(s, lease) == []


@pytest.mark.peers
def test_on_postgresql_a_named_claim_waits_for_a_locked_row_and_the_oldest_free_claim_skips_it(
    postgres: Postgres,
):
    sessions = open_database(postgres.url)
    with sessions() as s:
        case = Case(patient_id="P", version=1)
        s.add(case)
        s.flush()
        s.add_all([Job(case_id=case.id, version=1), Job(case_id=case.id, version=2)])
        s.commit()
    sender = sessions()
    mark_sent(sender, [1])  # the task sender's transaction holds job 1's row
    assert JobQueue(sessions, "a", 600).claim().id == 2  # skipped, not waited for
    named: list[Job | None] = []
    claimer = threading.Thread(target=lambda: named.append(JobQueue(sessions, "b", 600).claim(1)))
    claimer.start()
    claimer.join(1.0)
    assert claimer.is_alive(), "the named claim did not wait for the lock"
    sender.commit()
    sender.close()
    claimer.join(30)
    assert named and named[0] is not None and named[0].worker_id == "b"
