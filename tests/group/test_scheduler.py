"""Idle and force timers, and the case window measured from the case's first study (no chaining)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from avn_node.config import PipelineSettings
from avn_node.group.scheduler import close_stable_studies, next_deadline, schedule_cases
from avn_node.store.database import open_database
from avn_node.store.models import Case, Instance, InstanceState, Job, Study, StudyState

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)
PIPELINE = PipelineSettings(study_idle_seconds=20, study_force_seconds=600, case_window_hours=24)


@pytest.fixture
def session(tmp_path: Path):
    with open_database(f"sqlite:///{tmp_path / 'db.sqlite'}")() as s:
        yield s


def _study(session: Session, uid: str, patient: str = "P1", taken: datetime = T0, first=T0, last=T0) -> Study:
    study = Study(study_instance_uid=uid, patient_id=patient, study_datetime=taken, first_received_at=first,
                  last_received_at=last)  # fmt: skip
    session.add(study)
    session.add(Instance(sop_instance_uid=f"{uid}.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                         study_instance_uid=uid, series_instance_uid=f"{uid}.9", state=InstanceState.ACCEPTED,
                         analyzer="radiograph", file_key="x", sha256="0" * 64, size_bytes=1))  # fmt: skip
    session.flush()
    return study


def test_group_completes_study_after_idle_seconds(session: Session):
    study = _study(session, "1.1", last=T0)
    assert close_stable_studies(session, PIPELINE, T0 + timedelta(seconds=19)) == []
    assert close_stable_studies(session, PIPELINE, T0 + timedelta(seconds=20)) == ["1.1"]
    assert study.state == StudyState.COMPLETE


def test_next_deadline_is_the_earliest_idle_or_force_time_of_a_receiving_study(session: Session):
    assert next_deadline(session, PIPELINE) is None
    _study(session, "1.1", first=T0, last=T0 + timedelta(seconds=5))  # idle at T0 + 25 s
    assert next_deadline(session, PIPELINE) == T0 + timedelta(seconds=25)
    _study(session, "1.2", first=T0 - timedelta(seconds=590), last=T0 + timedelta(seconds=8))  # forced at T0 + 10 s
    assert next_deadline(session, PIPELINE) == T0 + timedelta(seconds=10)
    close_stable_studies(session, PIPELINE, T0 + timedelta(seconds=10))
    assert next_deadline(session, PIPELINE) == T0 + timedelta(seconds=25)  # the complete one no longer counts


def test_group_forces_study_after_force_seconds_while_instances_keep_arriving(session: Session):
    now = T0 + timedelta(seconds=600)
    _study(session, "1.2", first=T0, last=now - timedelta(seconds=1))
    assert close_stable_studies(session, PIPELINE, now) == ["1.2"]


def test_group_puts_studies_of_one_patient_within_window_into_one_case(session: Session):
    a = _study(session, "1.3", taken=T0)
    b = _study(session, "1.4", taken=T0 + timedelta(hours=3))
    close_stable_studies(session, PIPELINE, T0 + timedelta(hours=1))
    schedule_cases(session, PIPELINE)
    assert a.case_id == b.case_id is not None
    assert len(session.scalars(select(Job)).all()) == 1


def test_group_measures_window_from_first_study_so_cases_never_chain(session: Session):
    a = _study(session, "1.5", taken=T0)
    b = _study(session, "1.6", taken=T0 + timedelta(hours=20))
    c = _study(session, "1.7", taken=T0 + timedelta(hours=40))  # within 24 h of b, not of a
    other = _study(session, "1.8", patient="P2", taken=T0)
    close_stable_studies(session, PIPELINE, T0 + timedelta(days=3))
    schedule_cases(session, PIPELINE)
    assert a.case_id == b.case_id != c.case_id
    assert other.case_id not in {a.case_id, c.case_id}


def test_group_queues_one_version_at_a_time_and_nothing_without_new_images(session: Session):
    study = _study(session, "1.9")
    close_stable_studies(session, PIPELINE, T0 + timedelta(minutes=1))
    assert len(schedule_cases(session, PIPELINE)) == 1
    assert schedule_cases(session, PIPELINE) == []  # job still queued
    job = session.scalars(select(Job)).one()
    job.state = "done"
    study.analysed_instances = 1
    assert schedule_cases(session, PIPELINE) == []  # reported, no new image


def test_group_never_fuses_studies_without_patient_id(session: Session):
    a = _study(session, "2.1", patient="")
    b = _study(session, "2.2", patient="", taken=T0 + timedelta(minutes=5))
    close_stable_studies(session, PIPELINE, T0 + timedelta(hours=1))
    schedule_cases(session, PIPELINE)
    assert a.case_id is not None and b.case_id is not None and a.case_id != b.case_id


def test_group_does_not_requeue_a_failed_case_without_new_images(session: Session):
    from avn_node.analyse.queue import MAX_ATTEMPTS, JobQueue

    _study(session, "2.3")
    close_stable_studies(session, PIPELINE, T0 + timedelta(minutes=1))
    schedule_cases(session, PIPELINE)
    job = session.scalars(select(Job)).one()
    assert job.analyzer == "radiograph"
    job.attempts = MAX_ATTEMPTS  # it crashed the process every time
    session.commit()
    assert JobQueue(sessionmaker(session.get_bind()), "w1", 600).claim() is None
    session.refresh(job)
    assert job.state == "failed"
    assert schedule_cases(session, PIPELINE) == []


def test_reanalyse_queues_a_new_version_of_an_analysed_case_and_refuses_unknown_or_busy_ones(session: Session):
    from avn_node.group.scheduler import reanalyse_studies

    study = _study(session, "1.9", last=T0)
    close_stable_studies(session, PIPELINE, T0 + timedelta(seconds=30))
    assert reanalyse_studies(session, ["1.9"]) == {"1.9": (False, "not analysed yet: it is queued when complete")}
    schedule_cases(session, PIPELINE)
    first = session.scalars(select(Job)).one()
    assert reanalyse_studies(session, ["1.9"])["1.9"][0] is False  # version 1 still queued
    first.state = "done"
    outcome = reanalyse_studies(session, ["1.9", "9.9"])
    assert outcome["1.9"] == (True, f"case {study.case_id} version 2 queued")
    assert outcome["9.9"] == (False, "unknown study")
    assert [j.version for j in session.scalars(select(Job).order_by(Job.id))] == [1, 2]


def test_a_job_finishing_while_the_scheduler_looks_queues_no_second_version(
    session: Session, monkeypatch: pytest.MonkeyPatch
):
    import avn_node.group.scheduler as scheduler
    from avn_node.analyse.queue import JobQueue, mark_analysed

    _study(session, "3.1")
    close_stable_studies(session, PIPELINE, T0 + timedelta(minutes=1))
    schedule_cases(session, PIPELINE)
    session.commit()
    sessions = sessionmaker(session.get_bind())
    queue = JobQueue(sessions, "w", 600)
    job = queue.claim()
    real_busy = scheduler._busy

    def worker_commits_first(s: Session, case_id: int) -> bool:
        # the scheduler has already read "study 3.1 has 1 image, 0 analysed"; now the worker finishes
        with sessions() as worker:
            assert queue.finish(worker, job.id, 1.0)
            mark_analysed(worker, worker.get(Case, job.case_id))
            worker.commit()
        return real_busy(s, case_id)

    monkeypatch.setattr(scheduler, "_busy", worker_commits_first)
    assert schedule_cases(session, PIPELINE) == []
    assert [j.version for j in session.scalars(select(Job))] == [1]
