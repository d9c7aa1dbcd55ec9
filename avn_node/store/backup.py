"""Backup and restore of the embedded store: a consistent copy of the SQLite database, taken with SQLite's online
backup API while the node runs (a snapshot at one commit), the files its rows name, and a manifest of those files
(key, size, SHA-256) that restore checks before anything is written.

Stored files are never changed in place, so a file named by the snapshot is the file it named when the snapshot
was taken; files that arrive later belong to rows the snapshot does not have. With ``files=False`` only the
database and the manifest are written, for sites that copy ``data_dir`` with their own tools (restore then takes
the files from a folder given to it).
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from avn_node.store.files import fsync_dir, fsync_file, sha256_of

DATABASE_FILE = "avn-node.db"
MANIFEST_FILE = "manifest.json"
FILES_DIR = "files"


class BackupError(RuntimeError):
    """A backup or restore that cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class Entry:
    key: str  # relative to data_dir
    size: int
    sha256: str


def sqlite_path(url: str) -> Path:
    """The database file of a SQLite URL, or :class:`BackupError` for another database."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        raise BackupError(f"only the embedded SQLite database is backed up here; back up {parsed.get_backend_name()} "
                          "with its own tools (e.g. pg_dump) and data_dir with yours")  # fmt: skip
    return Path(parsed.database)


def _entries(database: Path, data_dir: Path) -> list[Entry]:
    """Every file the database at ``database`` names and that is on disk under ``data_dir``."""
    with sqlite3.connect(database) as db:
        keys = [k for (k,) in db.execute("SELECT file_key FROM instances WHERE state != 'purged'")]
        keys += [k for (k,) in db.execute("SELECT file_key FROM results WHERE NOT purged")]
    entries = []
    for key in sorted(set(keys)):
        path = data_dir / key
        if not path.is_file():
            raise BackupError(f"{key} is named by the database but missing under {data_dir}")
        entries.append(Entry(key, path.stat().st_size, sha256_of(path)))
    return entries


def backup(url: str, data_dir: Path, out: Path, files: bool = True) -> list[Entry]:
    """Write a backup of the database at ``url`` and the files under ``data_dir`` into the new folder ``out``."""
    source = sqlite_path(url)
    if not source.is_file():
        raise BackupError(f"no database at {source}")
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    copy = out / DATABASE_FILE
    with sqlite3.connect(source) as src, sqlite3.connect(copy) as dst:
        src.backup(dst)
    entries = _entries(copy, data_dir)
    if files:
        for e in entries:
            target = out / FILES_DIR / e.key
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(data_dir / e.key, target)
            fsync_file(target)
    manifest = {"database": DATABASE_FILE, "files": FILES_DIR if files else None,
                "entries": [asdict(e) for e in entries]}  # fmt: skip
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1) + "\n")
    fsync_file(copy)
    fsync_dir(out)
    return entries


def restore(backup_dir: Path, url: str, data_dir: Path, files_from: Path | None = None) -> list[Entry]:
    """Restore ``backup_dir`` into an empty ``data_dir`` and the database at ``url`` (which must not exist).

    The files come from the backup, or from ``files_from`` (a copy of the old ``data_dir``) for a backup made
    without files. Every file is checked against the manifest before the database is put in place.
    """
    manifest = json.loads((backup_dir / MANIFEST_FILE).read_text())
    target = sqlite_path(url)
    if target.exists():
        raise BackupError(f"a database exists at {target}: restore goes into a fresh place only")
    source_dir = files_from or (backup_dir / manifest["files"] if manifest["files"] else None)
    if source_dir is None:
        raise BackupError("this backup holds no files: give the folder that does (--files-from)")
    entries = [Entry(**e) for e in manifest["entries"]]
    for e in entries:
        path = source_dir / e.key
        if not path.is_file() or path.stat().st_size != e.size or sha256_of(path) != e.sha256:
            raise BackupError(f"{e.key} under {source_dir} is missing or differs from the manifest")
    for e in entries:
        destination = data_dir / e.key
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source_dir / e.key, destination)
        fsync_file(destination)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".restoring")
    shutil.copy2(backup_dir / manifest["database"], partial)
    fsync_file(partial)
    os.replace(partial, target)
    fsync_dir(target.parent)
    return entries
