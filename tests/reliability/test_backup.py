"""``avn-node backup`` while the node runs, ``avn-node restore`` into a fresh folder, and the node resuming there:
the same rows, nothing sent again, a new study analysed and delivered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from avn_node.store.backup import BackupError, backup, restore
from tests.node.conftest import ROOT, Archive, Node, storescu, wait_for
from tests.reliability.test_outage import _one_radiograph_studies

pytestmark = [pytest.mark.xdist_group("node"), pytest.mark.peers, pytest.mark.timeout(600)]

RESULTS_WAIT_S = 180


def _cli(node: Node, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avn_node", *args, "--config", str(node.config)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip


def test_a_backup_taken_while_the_node_runs_restores_into_a_fresh_folder_where_the_node_resumes(
    node: Node, archive: Archive, phantom_set: Path, tmp_path: Path
):
    first, second = _one_radiograph_studies(phantom_set, 2)
    node.destinations = [("archive", archive.aet, archive.port)]
    node.start()
    assert storescu(node.port, [first]).returncode == 0
    wait_for(lambda: node.status()["deliveries"] == {"sent": 3}, RESULTS_WAIT_S, "the first study's results sent")
    made = _cli(node, "backup", "--out", str(tmp_path / "backup"))
    assert made.returncode == 0, made.stderr
    assert "database and 4 files" in made.stdout  # the image, the SR, its capture, the summary
    before = node.status()
    node.stop()

    restored = Node(tmp_path / "restored", destinations=node.destinations)
    restored.root.mkdir()
    restored.write_config()
    put = _cli(restored, "restore", "--from", str(tmp_path / "backup"))
    assert put.returncode == 0, put.stderr
    try:
        restored.start()
        after = restored.status()
        assert {k: after[k] for k in ("instances", "cases", "deliveries")} == {
            k: before[k] for k in ("instances", "cases", "deliveries")
        }
        assert storescu(restored.port, [second]).returncode == 0
        wait_for(lambda: restored.status()["deliveries"] == {"sent": 6}, RESULTS_WAIT_S, "the new study's results")
    finally:
        restored.stop()
    assert len(archive.files()) == 6  # the first study's results were not sent again


def _store_with_one_file(tmp_path: Path) -> tuple[str, Path]:
    import sqlite3

    data = tmp_path / "var"
    (data / "instances").mkdir(parents=True)
    (data / "instances" / "a.dcm").write_bytes(b"image")
    url = f"sqlite:///{data / 'avn-node.db'}"
    with sqlite3.connect(data / "avn-node.db") as db:
        db.execute("CREATE TABLE instances (file_key TEXT, state TEXT)")
        db.execute("CREATE TABLE results (file_key TEXT, purged BOOLEAN)")
        db.execute("INSERT INTO instances VALUES ('instances/a.dcm', 'accepted')")
    return url, data


def test_restore_refuses_a_file_that_differs_from_the_manifest_and_writes_nothing(tmp_path: Path):
    url, data = _store_with_one_file(tmp_path)
    backup(url, data, tmp_path / "backup")
    (tmp_path / "backup" / "files" / "instances" / "a.dcm").write_bytes(b"tampered")
    fresh = tmp_path / "fresh"
    with pytest.raises(BackupError, match="instances/a.dcm .* differs from the manifest"):
        restore(tmp_path / "backup", f"sqlite:///{fresh / 'avn-node.db'}", fresh)
    assert not fresh.exists()


def test_backup_without_files_lists_them_and_restore_takes_them_from_the_given_folder(tmp_path: Path):
    url, data = _store_with_one_file(tmp_path)
    entries = backup(url, data, tmp_path / "backup", files=False)
    manifest = json.loads((tmp_path / "backup" / "manifest.json").read_text())
    assert manifest["files"] is None and [e["key"] for e in manifest["entries"]] == ["instances/a.dcm"]
    fresh = tmp_path / "fresh"
    with pytest.raises(BackupError, match="--files-from"):
        restore(tmp_path / "backup", f"sqlite:///{fresh / 'avn-node.db'}", fresh)
    assert restore(tmp_path / "backup", f"sqlite:///{fresh / 'avn-node.db'}", fresh, files_from=data) == entries
    assert (fresh / "instances" / "a.dcm").read_bytes() == b"image" and (fresh / "avn-node.db").is_file()
