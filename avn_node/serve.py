"""The node: receiver, scheduler, a local worker and one dispatcher per destination, each in its own thread,
owned by one :class:`Node` with ``start()`` and ``stop()`` (``avn-node serve`` adds the signal handling).

Stopping stops accepting, lets the running job finish, and leaves everything else in the database, where the
next start picks it up.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from avn_node.analyse.analyzers import Analyzer, analyzer_kinds
from avn_node.analyse.queue import JobQueue
from avn_node.analyse.worker import Worker
from avn_node.association import configure_process
from avn_node.audit import AuditLog
from avn_node.config import Settings
from avn_node.dispatch.sender import Dispatcher, release_claims
from avn_node.events import NodeEvent, emit_now, subscribe
from avn_node.group.scheduler import close_stable_studies, schedule_cases
from avn_node.receive.scp import start_scp
from avn_node.store.database import open_database
from avn_node.store.files import LocalFileStore, remove_stale_temp_files
from avn_node.store.models import utcnow
from avn_node.store.retention import purge_older_than

log = logging.getLogger("avn_node.serve")
TICK_SECONDS = 0.5
RETENTION_SWEEP_SECONDS = 24 * 3600
STALE_TEMP_SECONDS = 600  # a shared temp file unwritten this long belongs to no receive still running


def worker_id(settings: Settings) -> str:
    """This node's name on the jobs it holds: the same after a restart, different for a node elsewhere."""
    return f"{socket.gethostname()}:{settings.node.port}:{settings.node.data_dir}"[:128]


class Node:
    """One running node over the database and file store of ``settings``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.server = None
        # Loops poll every tick; a committed event that means work for a loop wakes it at once.
        self.wake_worker, self.wake_dispatch = threading.Event(), threading.Event()
        self.unsubscribe = subscribe(self._wake)
        self.unsubscribe_audit: Callable[[], None] = lambda: None

    def _wake(self, event: NodeEvent) -> None:
        if event.kind in ("case.queued", "job.retry"):
            self.wake_worker.set()
        elif event.kind in ("job.done", "delivery.retry"):
            self.wake_dispatch.set()

    def start(self) -> None:
        """Migrate, load the analyzers, reclaim this node's interrupted jobs, then receive, schedule, analyse and
        dispatch in the background."""
        settings = self.settings
        settings.node.data_dir.mkdir(parents=True, exist_ok=True)
        own_tmp = settings.tmp_dir / re.sub(r"[^A-Za-z0-9.-]", "_", f"{socket.gethostname()}-{settings.node.port}")
        if stale := remove_stale_temp_files(own_tmp, 0) + remove_stale_temp_files(settings.tmp_dir, STALE_TEMP_SECONDS):
            log.info("removed %d temp files of receives cut short before this start", stale)
        configure_process(own_tmp)
        self.sessions = open_database(settings.database.url)
        self.files = LocalFileStore(settings.node.data_dir)
        self.queue = JobQueue(self.sessions, worker_id(settings), settings.queue.lease_seconds)
        analyzers: dict[str, Analyzer] = {}
        if settings.pipeline.analyse:
            for kind in analyzer_kinds(settings):
                analyzers[kind.name] = kind.load()
                log.info("analyzer %s %s loaded", kind.name, analyzers[kind.name].version)
            if resumed := self.queue.reclaim():
                log.info("resuming %d interrupted analysis jobs", resumed)
        with self.sessions() as session:
            if released := release_claims(session, self.queue.worker_id):
                log.info("%d deliveries were being sent when the node stopped: in doubt, due now", released)
        if settings.security.audit_log:
            self.unsubscribe_audit = subscribe(AuditLog(Path(settings.security.audit_log), settings.node.ae_title))
        emit_now(self.sessions, NodeEvent("node.started", settings.node.ae_title, data={
            "port": settings.node.port, "data_dir": str(settings.node.data_dir),
            "tls": bool(settings.security.tls_cert), "analyzers": sorted(analyzers),
            "destinations": [d.name for d in settings.destinations],
        }))  # fmt: skip
        self.server = start_scp(settings, self.sessions)
        self._spawn("schedule", self._schedule)
        if analyzers:
            worker = Worker(settings, self.sessions, analyzers, self.queue, self.files)
            self._spawn("analyse", lambda: self._loop(worker.run_next, "analysis", self.wake_worker))
        for destination in settings.destinations:
            dispatcher = Dispatcher(settings, self.sessions, self.files, destination, self.queue.worker_id)
            self._spawn(f"dispatch-{destination.name}",
                        lambda d=dispatcher: self._loop(d.run_once, f"dispatch to {d.destination.name}",
                                                        self.wake_dispatch))  # fmt: skip

    def stop(self) -> None:
        """No new associations; the running job and sends finish; then every thread has ended."""
        log.info("stopping: no new associations; finishing the running job")
        if self.server is not None:
            self.server.shutdown()
        self.stopping.set()
        for thread in self.threads:
            thread.join()
        if self.server is not None:
            emit_now(self.sessions, NodeEvent("node.stopped", self.settings.node.ae_title))
        self.unsubscribe()
        self.unsubscribe_audit()
        log.info("stopped")

    def _spawn(self, name: str, target) -> None:  # noqa: ANN001
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _loop(self, step, what: str, wake: threading.Event | None = None) -> None:  # noqa: ANN001
        """Call ``step`` until stopping; right away again when it did work, else after a tick or a wake-up."""
        while not self.stopping.is_set():
            try:
                if step():
                    continue
            except Exception:  # noqa: BLE001 - the database holds the work; the next tick tries again
                log.exception("%s failed; retrying", what)
            if wake is None:
                self.stopping.wait(TICK_SECONDS)
            elif wake.wait(TICK_SECONDS):
                wake.clear()

    def _schedule(self) -> None:
        next_sweep = time.monotonic()
        settings = self.settings

        def tick() -> bool:
            nonlocal next_sweep
            if settings.storage.retention_days > 0 and time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + RETENTION_SWEEP_SECONDS
                with self.sessions() as session:
                    deleted, failed = purge_older_than(session, self.files, settings.storage.retention_days)
                log.info("retention sweep: %d files older than %s days deleted, %d could not be", deleted,
                         settings.storage.retention_days, failed)  # fmt: skip
            with self.sessions() as session:
                close_stable_studies(session, settings.pipeline, utcnow())
                if settings.pipeline.analyse:
                    schedule_cases(session, settings.pipeline)
                session.commit()
            return False

        self._loop(tick, "scheduler tick")


def serve(settings: Settings, stop: threading.Event) -> None:
    """Run a :class:`Node` until ``stop`` is set."""
    node = Node(settings)
    node.start()
    try:
        stop.wait()
    finally:
        node.stop()
