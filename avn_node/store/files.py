"""The file store: files by *key*, a POSIX path relative to ``data_dir`` built from checked UIDs, so a row means
the same file whatever the working directory of the process reading it. The local implementation writes
durably: fsync before rename, fsync of the folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Protocol

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


class InvalidUidError(ValueError):
    """A UID that PS3.5 §9.1 does not allow; it is never used in a path."""


def checked_uid(value: object, keyword: str) -> str:
    """``value`` as a UID string, or :class:`InvalidUidError` naming the attribute."""
    uid = str(value or "").strip()
    if not uid:
        raise InvalidUidError(f"{keyword} is missing")
    if len(uid) > 64 or not UID_PATTERN.match(uid):
        raise InvalidUidError(f"{keyword} is not a valid UID: {uid[:80]!r}")
    return uid


def files_under(paths: Iterable[Path]) -> list[Path]:
    """Every file under the given files and folders, sorted (callers decide which are DICOM)."""
    files: list[Path] = []
    for path in paths:
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs_durably(folder: Path) -> None:
    """Create ``folder`` and its missing parents, fsyncing the parent of each folder created."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        fsync_dir(path.parent)


def durable_move(source: Path, destination: Path) -> None:
    """fsync ``source``, rename it to ``destination`` (same filesystem) and fsync the destination folder."""
    fsync_file(source)
    make_dirs_durably(destination.parent)
    os.replace(source, destination)
    fsync_dir(destination.parent)


def durable_write(data: bytes, destination: Path) -> None:
    """Write ``data`` beside ``destination``, then :func:`durable_move` it into place."""
    make_dirs_durably(destination.parent)
    tmp = destination.with_name(f".{destination.name}.tmp")
    tmp.write_bytes(data)
    durable_move(tmp, destination)


def remove_stale_temp_files(folder: Path, older_than_seconds: float) -> int:
    """Delete files in ``folder`` untouched for ``older_than_seconds`` (receives a crash or a full disk cut
    short: never acknowledged, so nothing is lost); returns how many."""
    cutoff = time.time() - older_than_seconds
    removed = 0
    for path in folder.iterdir() if folder.is_dir() else ():
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another node's receive finished meanwhile
            continue
    return removed


def instance_key(study: str, series: str, sop: str, sha256: str) -> str:
    """``instances/<study>/<series>/<sop>.<sha8>.dcm``; all UIDs already checked."""
    return f"instances/{study}/{series}/{sop}.{sha256[:8]}.dcm"


def result_key(study: str, kind: str, sop: str) -> str:
    """``results/<study>/<kind>-<sop>.dcm``."""
    return f"results/{study}/{kind}-{sop}.dcm"


class FileStore(Protocol):
    """Where instances and results live, by key (see :func:`instance_key`, :func:`result_key`)."""

    def put(self, source: Path, key: str) -> None:
        """Move the local file ``source`` under ``key`` durably (it is gone from ``source`` afterwards)."""

    def write(self, data: bytes, key: str) -> None:
        """Store ``data`` under ``key`` durably."""

    def open(self, key: str) -> BinaryIO:
        """The file under ``key``, for reading."""

    def delete(self, key: str) -> bool:
        """Remove the file under ``key``; True when it is gone afterwards (also when it was never there)."""

    def exists(self, key: str) -> bool: ...


class LocalFileStore:
    """:class:`FileStore` on a local folder (``data_dir``) that also holds the temp files, so moves are renames."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()

    def local_path(self, key: str) -> Path:
        """The file of ``key`` on this machine; a key that could leave the root is refused."""
        relative = PurePosixPath(key)
        if not key or relative.is_absolute() or ".." in relative.parts:
            raise ValueError(f"not a file-store key: {key!r}")
        return self.root / relative

    def put(self, source: Path, key: str) -> None:
        durable_move(source, self.local_path(key))

    def write(self, data: bytes, key: str) -> None:
        durable_write(data, self.local_path(key))

    def open(self, key: str) -> BinaryIO:
        return self.local_path(key).open("rb")

    def delete(self, key: str) -> bool:
        path = self.local_path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError:
            return False
        return not path.exists()

    def exists(self, key: str) -> bool:
        return self.local_path(key).is_file()
