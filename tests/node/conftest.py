"""The node as a real process on loopback, with a dcmtk storescp archive beside it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest

from avn_node.models import DEFAULT_WEIGHTS
from tests.conftest import DCMTK_SCP_TIMEOUTS, DCMTK_TIMEOUTS, STORESCU_TIMEOUT_S, free_port, require_tool

ROOT = Path(__file__).resolve().parents[2]
COPIES = Path(tempfile.gettempdir()) / f"avn-node-test-copies-{os.getpid()}"
WEIGHTS = Path(os.environ.get("AVN_TEST_WEIGHTS", ROOT / DEFAULT_WEIGHTS))  # other weights: set the variable


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def stop_process(proc: subprocess.Popen, timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL when it has not exited within ``timeout`` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@dataclass
class Node:
    """``avn-node serve`` with its own config, data folder and log."""

    root: Path
    port: int = field(default_factory=free_port)
    # Silence before a study counts as complete: long enough that storescu's next file, on two cores shared
    # with a training test, arrives first (at 1 s a study was analysed twice, with one image and then both).
    idle_seconds: float = 4.0
    destinations: list[tuple[str, str, int]] = field(default_factory=list)  # (name, AE title, port)
    destinations_tls: bool = False
    destination_lines: str = ""  # more lines in every [[destinations]], e.g. storage_commitment = true
    min_free_disk_mb: float = 1
    extra: str = ""  # more [security] lines
    sections: dict[str, str] = field(default_factory=dict)  # more lines per section, e.g. {"dispatch": "..."}
    env: dict[str, str] = field(default_factory=dict)  # e.g. AVN_FAULT
    database_url: str = ""  # default: SQLite in the data folder
    tail: str = ""  # TOML appended last, e.g. a [[destinations]] of another kind
    dashboard_port: int = field(default_factory=free_port)
    dashboard_host: str = "127.0.0.1"
    dashboard_token: str = ""
    process: subprocess.Popen | None = None

    @property
    def config(self) -> Path:
        return self.root / "avn-node.toml"

    @property
    def log(self) -> Path:
        return self.root / "node.log"

    def write_config(self) -> None:
        data = self.root / "var"
        sections = {
            "node": f'ae_title = "AVN_NODE"\nhost = "127.0.0.1"\nport = {self.port}\ndata_dir = "{data}"',
            "database": f'url = "{self.database_url or f"sqlite:///{data}/avn-node.db"}"',
            "pipeline": f"study_idle_seconds = {self.idle_seconds}",
            "models": f'dir = "{WEIGHTS}"\nthreads = 2',
            "dispatch": "retry_first_seconds = 1",
            "security": f"min_free_disk_mb = {self.min_free_disk_mb}\n{self.extra}",
            "dashboard": f'host = "{self.dashboard_host}"\nport = {self.dashboard_port}\n'
            f'token = "{self.dashboard_token}"',
        }
        for name, lines in self.sections.items():
            sections[name] = f"{sections.get(name, '')}\n{lines}"
        text = "".join(f"[{name}]\n{lines}\n" for name, lines in sections.items())
        for name, aet, port in self.destinations:
            text += f'[[destinations]]\nname = "{name}"\nae_title = "{aet}"\nhost = "127.0.0.1"\nport = {port}\n'
            text += "tls = true\n" if self.destinations_tls else ""
            text += self.destination_lines
        self.config.write_text(text + self.tail)

    def start(self) -> None:
        self.write_config()
        log = self.log.open("a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "avn_node", "serve", "--config", str(self.config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )  # fmt: skip
        wait_for(lambda: port_open(self.port) or self.process.poll() is not None, 60, "the node to listen")
        assert self.process.poll() is None, self.log.read_text()[-3000:]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def status(self) -> dict:
        import json

        out = subprocess.run(
            [sys.executable, "-m", "avn_node", "status", "--json", "--config", str(self.config)],
            capture_output=True, text=True, check=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        return json.loads(out.stdout)


@dataclass
class Archive:
    """dcmtk storescp writing every received object into ``folder``."""

    folder: Path
    port: int
    aet: str = "ARCHIVE"

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())


@pytest.fixture
def archive(tmp_path: Path) -> Iterator[Archive]:
    folder = tmp_path / "archive"
    folder.mkdir()
    arch = Archive(folder, free_port())
    proc = subprocess.Popen(
        [require_tool("storescp"), *DCMTK_SCP_TIMEOUTS, "-aet", arch.aet, "-od", str(folder), "+uf", str(arch.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: port_open(arch.port) or proc.poll() is not None, 10, "storescp")
        assert proc.poll() is None, f"storescp exited with {proc.returncode}"
        yield arch
    finally:
        stop_process(proc)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A node (not yet started: tests set destinations and timers, then call ``start()``)."""
    n = Node(tmp_path / "node")
    n.root.mkdir()
    yield n
    if n.process is not None and n.process.poll() is None:
        n.stop()


@pytest.fixture(scope="session", autouse=True)
def _remove_decompressed_copies() -> Iterator[None]:
    """The copies :func:`storescu` sends of compressed files live as long as the test session (per worker)."""
    yield
    shutil.rmtree(COPIES, ignore_errors=True)


def _uncompressed(path: Path) -> Path:
    ds = pydicom.dcmread(path)
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        return path
    ds.decompress(generate_instance_uid=False)
    copy = COPIES / f"{ds.SOPInstanceUID}.dcm"
    if not copy.exists():
        COPIES.mkdir(parents=True, exist_ok=True)
        ds.save_as(copy, enforce_file_format=True)
    return copy


def storescu(
    port: int, files: list[Path], aet: str = "AVN_NODE", options: Sequence[str] = ()
) -> subprocess.CompletedProcess:
    """dcmtk storescu (with ``options``, e.g. TLS); it proposes uncompressed syntaxes, so compressed files go
    as decompressed copies."""
    files = [_uncompressed(f) for f in files]
    return subprocess.run(
        [
            require_tool("storescu"),
            *DCMTK_TIMEOUTS,
            "--required",
            "-aet",
            "MODALITY",
            "-aec",
            aet,
            *options,
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=STORESCU_TIMEOUT_S,
    )
