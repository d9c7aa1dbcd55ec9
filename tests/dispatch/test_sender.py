"""Back-off, dead-letter and re-queue of deliveries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from avn_node.config import Destination, DispatchSettings, Settings
from avn_node.dispatch.sender import dispatch_due, next_attempt, retry_deliveries, send_files
from avn_node.store.database import open_database
from avn_node.store.models import Case, Delivery, DeliveryState, Result, utcnow
from tests.conftest import free_port

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_dispatch_backs_off_doubling_from_first_to_max():
    d = DispatchSettings(retry_first_seconds=10, retry_max_seconds=600, give_up_hours=24)
    delays = [(next_attempt(d, n, T0) - T0).total_seconds() for n in range(1, 9)]
    assert delays == [10, 20, 40, 80, 160, 320, 600, 600]


def test_send_files_reports_unreachable_peer_per_file(tmp_path: Path, phantom_set: Path):
    files = sorted(phantom_set.rglob("*.dcm"))[:2]
    outcome = send_files(Destination(name="x", ae_title="NOBODY", host="127.0.0.1", port=free_port()), files, 5)
    assert set(outcome) == set(files) and all("no association" in e for e in outcome.values())


def test_dispatch_dead_letters_after_give_up_hours_and_retry_requeues(tmp_path: Path, phantom_set: Path):
    settings = Settings(
        destinations=[Destination(name="archive", ae_title="ARCHIVE", host="127.0.0.1", port=free_port())],
        dispatch=DispatchSettings(retry_first_seconds=10, retry_max_seconds=600, give_up_hours=1),
        database={"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
    )
    sessions = open_database(settings.database.url)
    path = sorted(phantom_set.rglob("*.dcm"))[0]
    with sessions() as s:
        case = Case(patient_id="P")
        s.add(case)
        s.flush()
        result = Result(case_id=case.id, version=1, study_instance_uid="1.2", kind="sr", sop_instance_uid="1.2.3",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33", path=str(path))  # fmt: skip
        s.add(result)
        s.flush()
        fresh = Delivery(result_id=result.id, destination="archive")
        old = Delivery(result_id=result.id, destination="archive", created_at=utcnow() - timedelta(hours=2))
        s.add_all([fresh, old])
        s.commit()
        ids = fresh.id, old.id
    assert dispatch_due(settings, sessions) == 0
    with sessions() as s:
        fresh, old = (s.get(Delivery, i) for i in ids)
        assert fresh.state == DeliveryState.PENDING and fresh.attempts == 1 and fresh.next_attempt_at > utcnow()
        assert "no association" in fresh.last_error
        assert old.state == DeliveryState.DEAD
        assert retry_deliveries(s, None) == 1
        assert s.get(Delivery, ids[1]).state == DeliveryState.PENDING


def test_send_files_reports_a_missing_file_without_raising(tmp_path: Path):
    missing = tmp_path / "gone.dcm"
    outcome = send_files(Destination(name="x", ae_title="NOBODY", host="127.0.0.1", port=free_port()), [missing], 5)
    assert outcome[missing].startswith("cannot read the file")
