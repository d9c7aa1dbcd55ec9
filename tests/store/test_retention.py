"""Retention: `avn-node purge` deletes files past the window and keeps the rows as an audit trace."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from avn_node.store.database import open_database
from avn_node.store.files import LocalFileStore
from avn_node.store.models import Event, Instance, InstanceState, utcnow
from avn_node.store.retention import purge_older_than


def _node(tmp_path: Path) -> tuple[Path, Path]:
    """A node folder whose config names its data and database relative to itself; returns (config, data)."""
    node = tmp_path / "node"
    (node / "etc").mkdir(parents=True)
    config = node / "etc" / "avn-node.toml"
    config.write_text('[node]\ndata_dir = "../var"\n[database]\nurl = "sqlite:///../var/db.sqlite"\n')
    return config, node / "var"


def _instances(data: Path, ages: dict[str, float]) -> None:
    sessions = open_database(f"sqlite:///{data}/db.sqlite")
    with sessions() as s:
        for key, age in ages.items():
            (data / key).parent.mkdir(parents=True, exist_ok=True)
            (data / key).write_bytes(b"x")
            s.add(Instance(sop_instance_uid="1.2", sop_class_uid="1.2", study_instance_uid="1.2",
                           series_instance_uid="1.2", state=InstanceState.ACCEPTED, file_key=key,
                           sha256="0" * 64, size_bytes=1, received_at=utcnow() - timedelta(days=age)))  # fmt: skip
        s.commit()


def test_purge_from_another_directory_deletes_old_files_and_keeps_rows(tmp_path: Path):
    config, data = _node(tmp_path)
    _instances(data, {"instances/1.2/1.2/old.dcm": 10, "instances/1.2/1.2/new.dcm": 1})
    cron = tmp_path / "cron"
    cron.mkdir()
    proc = subprocess.run([sys.executable, "-m", "avn_node", "purge", "--older-than", "5", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=cron)  # fmt: skip
    assert proc.returncode == 0 and "1 files deleted" in proc.stdout, proc.stderr
    assert not (data / "instances/1.2/1.2/old.dcm").exists() and (data / "instances/1.2/1.2/new.dcm").exists()
    assert list(cron.iterdir()) == []
    with open_database(f"sqlite:///{data}/db.sqlite")() as s:
        assert sorted(i.state for i in s.scalars(select(Instance))) == ["accepted", "purged"]
        assert s.scalars(select(Event).where(Event.kind == "purge")).one().data == {"days": 5, "deleted": 1,
                                                                                      "failed": 0}  # fmt: skip


def test_purge_leaves_the_row_of_a_file_it_could_not_delete(tmp_path: Path):
    data = tmp_path / "var"
    _instances(data, {"instances/1.2/1.2/kept.dcm": 10})
    (data / "instances/1.2/1.2/kept.dcm").unlink()
    (data / "instances/1.2/1.2/kept.dcm").mkdir()  # unlink fails, even for root
    with open_database(f"sqlite:///{data}/db.sqlite")() as s:
        assert purge_older_than(s, LocalFileStore(data), 5) == (0, 1)
        assert s.scalars(select(Instance)).one().state == InstanceState.ACCEPTED


def test_status_from_another_directory_creates_nothing(tmp_path: Path):
    config, data = _node(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run([sys.executable, "-m", "avn_node", "status", "--config", str(config)],
                          capture_output=True, text=True, timeout=120, cwd=elsewhere)  # fmt: skip
    assert proc.returncode == 1 and "no database" in proc.stderr
    assert list(elsewhere.iterdir()) == [] and not data.exists()


def test_deliveries_retry_needs_ids_or_all(tmp_path: Path):
    config, _ = _node(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "avn_node", "deliveries", "retry", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "--all" in proc.stderr
