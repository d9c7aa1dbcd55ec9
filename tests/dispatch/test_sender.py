"""Back-off, dead-letter and re-queue of deliveries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from avn_node.config import Destination, DispatchSettings, Settings
from avn_node.dispatch.sender import Dispatcher, retry_deliveries, send_files
from avn_node.store.database import open_database
from avn_node.store.files import LocalFileStore
from avn_node.store.models import Case, Delivery, DeliveryState, Result, utcnow
from tests.conftest import free_port, race_between_read_and_write

T0 = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_dispatch_backs_off_doubling_from_first_to_max():
    d = DispatchSettings(retry_first_seconds=10, retry_max_seconds=600, give_up_hours=24)
    delays = [(d.next_attempt(n, T0) - T0).total_seconds() for n in range(1, 9)]
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
    files = LocalFileStore(tmp_path / "var")
    files.write(sorted(phantom_set.rglob("*.dcm"))[0].read_bytes(), "results/1.2/sr-1.2.3.dcm")
    with sessions() as s:
        case = Case(patient_id="P")
        s.add(case)
        s.flush()
        results = [Result(case_id=case.id, version=v, study_instance_uid="1.2", kind="sr", sop_instance_uid=f"1.2.{v}",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33", file_key="results/1.2/sr-1.2.3.dcm")
                   for v in (1, 2)]  # fmt: skip
        s.add_all(results)
        s.flush()
        fresh = Delivery(result_id=results[0].id, destination="archive")
        old = Delivery(result_id=results[1].id, destination="archive", created_at=utcnow() - timedelta(hours=2))
        s.add_all([fresh, old])
        s.commit()
        ids = fresh.id, old.id
    dispatcher = Dispatcher(settings, sessions, files, settings.destinations[0], "node-a", timeout=5)
    assert dispatcher.run_once() == 0
    assert dispatcher.claim() == []  # both wait for their next attempt
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


def test_two_dispatchers_never_claim_one_delivery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # both read the due deliveries before either writes
    settings = Settings(
        destinations=[Destination(name="archive", ae_title="ARCHIVE", host="127.0.0.1", port=free_port())],
        database={"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
    )
    sessions = open_database(settings.database.url)
    with sessions() as s:
        case = Case(patient_id="P")
        s.add(case)
        s.flush()
        for i in range(5):
            result = Result(case_id=case.id, version=1, study_instance_uid="1.2", kind="cam", sop_class_uid="1.2",
                            sop_instance_uid=f"1.2.{i}", file_key=f"results/1.2/cam-1.2.{i}.dcm")  # fmt: skip
            s.add(result)
            s.flush()
            s.add(Delivery(result_id=result.id, destination="archive"))
        s.commit()
    files = LocalFileStore(tmp_path / "var")
    dispatchers = [Dispatcher(settings, sessions, files, settings.destinations[0], f"node-{i}") for i in range(2)]
    claimed = race_between_read_and_write(monkeypatch, Dispatcher, "_take", [d.claim for d in dispatchers])
    assert sorted(len(c) for c in claimed) == [0, 5]
