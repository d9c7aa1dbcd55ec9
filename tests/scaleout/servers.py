"""Scale-out peers on loopback: redis-server and PostgreSQL (Debian packages; PostgreSQL refuses to run as root,
so as root it runs as the ``postgres`` user), and ``avn-node worker`` as a process. Each server is a child of
the test (or benchmark) that starts it, stopped by its fixture (tests/conftest.py ``redis`` and ``postgres``);
and :func:`settled`, the database check that a node (with any backend) has finished its work."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text

from tests.conftest import free_port, require_tool
from tests.node.conftest import ROOT, port_open, stop_process, wait_for


def _postgres_tool(name: str) -> str:
    """A PostgreSQL server program: on PATH, or in Debian's versioned folder."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        pytest.fail(f"{name} not found: run the tests through `make test`, which installs PostgreSQL")
    return found


def _as_postgres() -> dict:
    """Popen arguments that drop root to the ``postgres`` user (the server refuses root); nothing otherwise."""
    return {"user": "postgres", "group": "postgres", "extra_groups": []} if os.geteuid() == 0 else {}


@dataclass
class Redis:
    """redis-server without persistence: a restart loses every queued task, as a crashed broker would."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [require_tool("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)],
            stdout=(self.root / "redis.log").open("a"), stderr=subprocess.STDOUT,
        )  # fmt: skip
        wait_for(lambda: port_open(self.port) or self.process.poll() is not None, 20, "redis-server")
        assert self.process.poll() is None, (self.root / "redis.log").read_text()[-2000:]

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@dataclass
class Postgres:
    """A PostgreSQL cluster of its own (trust authentication on 127.0.0.1), with a database ``avn``."""

    root: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/avn"

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        initdb = [_postgres_tool("initdb"), "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres", "-E",
                  "UTF8", "--no-sync"]  # fmt: skip
        subprocess.run(initdb, check=True, capture_output=True, timeout=120, **_as_postgres())
        self.start()
        with self.engine("postgres").connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(text("CREATE DATABASE avn"))

    def start(self) -> None:
        log = (self.root / "postgres.log").open("a")
        self.process = subprocess.Popen(
            [_postgres_tool("postgres"), "-D", str(self.root / "data"), "-p", str(self.port), "-h", "127.0.0.1",
             "-k", str(self.root), "-F", "-c", "max_connections=200"],
            stdout=log, stderr=subprocess.STDOUT, **_as_postgres(),
        )  # fmt: skip
        wait_for(lambda: self._ready() or self.process.poll() is not None, 30, "PostgreSQL")
        assert self.process.poll() is None, (self.root / "postgres.log").read_text()[-2000:]

    def _ready(self) -> bool:
        return subprocess.run([shutil.which("pg_isready") or _postgres_tool("pg_isready"), "-h", "127.0.0.1", "-p",
                               str(self.port), "-q"], timeout=10).returncode == 0  # fmt: skip

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open sessions are ended, as when a server goes down under its clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_process(self.process)

    def engine(self, database: str = "avn") -> Engine:
        return create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}", pool_pre_ping=True)


@dataclass
class Worker:
    """``avn-node worker`` over the node's configuration file (same database, same data folder)."""

    config: Path
    name: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    @property
    def log(self) -> Path:
        return self.config.parent / f"worker-{self.name}.log"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "avn_node", "worker", "--config", str(self.config), "--name", self.name],
            stdout=self.log.open("a"), stderr=subprocess.STDOUT, cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "AVN_MODELS__THREADS": "1", **self.env},
        )  # fmt: skip

    def wait_ready(self) -> None:
        wait_for(lambda: " ready." in self.log.read_text() or self.process.poll() is not None, 120,
                 f"worker {self.name} to consume")  # fmt: skip
        assert self.process.poll() is None, self.log.read_text()[-3000:]

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=60)


def settled(db: Engine, instances: int) -> bool:
    """``instances`` images analysed, no job open, no delivery pending."""
    with db.connect() as c:
        covered = c.execute(text("SELECT COALESCE(SUM(analysed_instances), 0) FROM studies")).scalar()
        open_jobs = c.execute(text("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')")).scalar()
        pending = c.execute(text("SELECT COUNT(*) FROM deliveries WHERE state = 'pending'")).scalar()
    return covered == instances and open_jobs == 0 and pending == 0
