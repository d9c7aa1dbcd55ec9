"""Retention: `avn-node purge` deletes files past the window and keeps the rows as an audit trace."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select

from avn_node.store.database import open_database
from avn_node.store.models import Event, Instance, InstanceState, utcnow


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "c.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path}"\n[database]\nurl = "sqlite:///{tmp_path}/db.sqlite"\n')
    return config


def test_purge_deletes_old_files_and_keeps_rows(tmp_path: Path):
    sessions = open_database(f"sqlite:///{tmp_path}/db.sqlite")
    old, new = tmp_path / "old.dcm", tmp_path / "new.dcm"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    with sessions() as s:
        for path, age in ((old, 10), (new, 1)):
            s.add(Instance(sop_instance_uid="1.2", sop_class_uid="1.2", study_instance_uid="1.2",
                           series_instance_uid="1.2", state=InstanceState.ACCEPTED, path=str(path),
                           sha256="0" * 64, size_bytes=1, received_at=utcnow() - timedelta(days=age)))  # fmt: skip
        s.commit()
    proc = subprocess.run([sys.executable, "-m", "avn_node", "purge", "--older-than", "5", "--config",
                           str(_config(tmp_path))], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0 and "1 files deleted" in proc.stdout
    assert not old.exists() and new.exists()
    with sessions() as s:
        states = sorted(i.state for i in s.scalars(select(Instance)))
        assert states == ["accepted", "purged"]
        assert s.scalars(select(Event).where(Event.kind == "purge")).one()


def test_deliveries_retry_needs_ids_or_all(tmp_path: Path):
    proc = subprocess.run([sys.executable, "-m", "avn_node", "deliveries", "retry", "--config", str(_config(tmp_path))],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "--all" in proc.stderr
