"""The node's processes, each owned by one object with ``start()`` and ``stop()`` (the CLI adds the signal
handling):

- :class:`Node` (``avn-node serve``): receiver, scheduler and dashboard, and with ``[queue] backend = "local"`` a
  worker and one dispatcher per destination, each in a thread; with ``"celery"`` it sends the analysis jobs to the
  broker instead (:class:`~avn_node.analyse.celery_queue.TaskSender`).
- :class:`CeleryWorker` (``avn-node worker``): a Celery worker running the analysis jobs it is sent, and one
  dispatcher per destination.

Stopping stops accepting, lets the running job finish, and leaves everything else in the database, where the
next start picks it up.
"""

from __future__ import annotations

import ctypes
import logging
import re
import socket
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from avn_node.analyse.ahead import ReadAhead
from avn_node.analyse.analyzers import Analyzer, analyzer_kinds
from avn_node.analyse.queue import JobQueue
from avn_node.analyse.worker import Worker
from avn_node.association import configure_process
from avn_node.audit import AuditLog
from avn_node.config import Settings
from avn_node.dispatch.sender import Dispatcher, release_claims
from avn_node.events import NodeEvent, emit_now, subscribe
from avn_node.group.scheduler import close_stable_studies, next_deadline, schedule_cases
from avn_node.loops import Loops
from avn_node.receive.scp import start_scp
from avn_node.store.database import connect, open_database
from avn_node.store.files import LocalFileStore, remove_stale_temp_files
from avn_node.store.models import utcnow
from avn_node.store.retention import purge_older_than
from avn_node.web.server import Dashboard

log = logging.getLogger("avn_node.serve")
M_ARENA_MAX = -8  # mallopt parameter (glibc malloc.h)
MALLOC_ARENAS = 2
RETENTION_SWEEP_SECONDS = 24 * 3600
MAX_WAIT_S = 1.0  # the scheduler's longest sleep: a busy case's next version, expired leases, the daily sweep
STALE_TEMP_SECONDS = 600  # a shared temp file unwritten this long belongs to no receive still running


def worker_id(settings: Settings) -> str:
    """This node's name on the jobs it holds: the same after a restart, different for a node elsewhere."""
    return f"{socket.gethostname()}:{settings.node.port}:{settings.node.data_dir}"[:128]


def load_analyzers(settings: Settings) -> dict[str, Analyzer]:
    """Every analyzer the configuration enables, loaded (models and all)."""
    analyzers: dict[str, Analyzer] = {}
    for kind in analyzer_kinds(settings):
        analyzers[kind.name] = kind.load()
        log.info("analyzer %s %s loaded", kind.name, analyzers[kind.name].version)
    return analyzers


class _Process:
    """What both processes share: the database, the file store, the job queue, the loops, the audit log, and
    the wake-ups committed events give the loops."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings = settings
        self.loops = Loops()
        # Loops poll every tick; a committed event that means work for a loop wakes it at once.
        self.wake_worker, self.wake_dispatch = threading.Event(), threading.Event()
        self.wake_schedule = threading.Event()
        self.unsubscribers = [subscribe(self._wake)]
        self.name = name

    def _wake(self, event: NodeEvent) -> None:
        if event.kind in ("case.queued", "job.retry"):
            self.wake_worker.set()
        if event.kind in ("result.stored", "delivery.retry"):
            self.wake_dispatch.set()
        if event.kind in ("study.receiving", "study.reopened", "job.done", "job.failed", "job.retry"):
            self.wake_schedule.set()  # a new completion deadline, or a case free for its next version

    def _open(self, sessions) -> None:  # noqa: ANN001 - a sessionmaker
        settings = self.settings
        self.sessions = sessions
        self.files = LocalFileStore(settings.node.data_dir)
        self.queue = JobQueue(self.sessions, self.name, settings.queue.lease_seconds)
        if settings.security.audit_log:
            self.unsubscribers.append(subscribe(AuditLog(Path(settings.security.audit_log), settings.node.ae_title)))

    def _reclaim(self) -> None:
        """Re-queue this process's interrupted jobs and release its deliveries in doubt."""
        if resumed := self.queue.reclaim():
            log.info("resuming %d interrupted analysis jobs", resumed)
        with self.sessions() as session:
            if released := release_claims(session, self.queue.worker_id):
                log.info("%d deliveries were being sent when the node stopped: in doubt, due now", released)

    def _dispatch(self) -> None:
        for destination in self.settings.destinations:
            dispatcher = Dispatcher(self.settings, self.sessions, self.files, destination, self.queue.worker_id)
            self.loops.spawn(f"dispatch-{destination.name}", dispatcher.run_once,
                             f"dispatch to {destination.name}", self.wake_dispatch)  # fmt: skip

    def _close(self) -> None:
        for unsubscribe in self.unsubscribers:
            unsubscribe()


class Node(_Process):
    """``avn-node serve``: one running node over the database and file store of ``settings``."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, worker_id(settings))
        self.server = None
        self.dashboard: Dashboard | None = None
        self.local = settings.queue.backend == "local"

    def start(self) -> None:
        """Migrate, load the analyzers, reclaim this node's interrupted jobs, then receive, schedule, analyse and
        dispatch in the background (with Celery: receive, schedule and send the jobs to the broker)."""
        settings = self.settings
        settings.node.data_dir.mkdir(parents=True, exist_ok=True)
        own_tmp = settings.tmp_dir / re.sub(r"[^A-Za-z0-9.-]", "_", f"{socket.gethostname()}-{settings.node.port}")
        if stale := remove_stale_temp_files(own_tmp, 0) + remove_stale_temp_files(settings.tmp_dir, STALE_TEMP_SECONDS):
            log.info("removed %d temp files of receives cut short before this start", stale)
        configure_process(own_tmp)
        limit_malloc_arenas()
        self._open(open_database(settings.database.url))
        analyzers = load_analyzers(settings) if settings.pipeline.analyse and self.local else {}
        if self.local:
            self._reclaim()
        emit_now(self.sessions, NodeEvent("node.started", settings.node.ae_title, data={
            "port": settings.node.port, "data_dir": str(settings.node.data_dir),
            "tls": bool(settings.security.tls_cert), "analyzers": sorted(analyzers),
            "destinations": [d.name for d in settings.destinations], "queue": settings.queue.backend,
        }))  # fmt: skip
        self.dashboard = Dashboard(settings, self.sessions, self.files)
        self.dashboard.start()
        self.server = start_scp(settings, self.sessions)
        tick, wait = self._tick()
        self.loops.spawn("schedule", tick, "scheduler tick", self.wake_schedule, wait)
        if analyzers:
            ahead = ReadAhead(self.sessions, self.files, analyzers)
            ahead.start()
            self.unsubscribers += [subscribe(ahead.on_event), ahead.close]
            self.loops.spawn("decode-ahead", ahead.decode_next, "decoding ahead", ahead.arrived)
            self.loops.spawn("read-ahead", ahead.read_next, "reading ahead", ahead.decoded)
            worker = Worker(settings, self.sessions, analyzers, self.queue, self.files, ahead)
            warmed = False

            def analyse() -> bool:  # the loop's first step warms the analyzers up, off the receiver's path
                nonlocal warmed
                if not warmed:
                    worker.warm_up()
                    warmed = True
                    return True
                return worker.run_next()

            self.loops.spawn("analyse", analyse, "analysis", self.wake_worker)
        if self.local:
            self._dispatch()

    def stop(self) -> None:
        """No new associations; the running job and sends finish; then every thread has ended."""
        log.info("stopping: no new associations; finishing the running job")
        if self.server is not None:
            self.server.shutdown()
        if self.dashboard is not None:
            self.dashboard.stop()
        self.loops.stop()
        if self.server is not None:
            emit_now(self.sessions, NodeEvent("node.stopped", self.settings.node.ae_title))
        self._close()
        log.info("stopped")

    def _tick(self) -> tuple[Callable[[], bool], Callable[[], float]]:
        """The scheduler's step — retention sweep (daily), study timers, cases, and with Celery the tasks due —
        and how long to wait after it: until the next study's completion deadline, at most :data:`MAX_WAIT_S`."""
        next_sweep = time.monotonic()
        deadline: datetime | None = None
        settings = self.settings
        sender = None
        if not self.local:
            from avn_node.analyse.celery_queue import TaskSender

            sender = TaskSender(settings, self.sessions)

        def tick() -> bool:
            nonlocal next_sweep, deadline
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
                deadline = next_deadline(session, settings.pipeline)
            if sender is not None:
                sender.send_due()
            return False

        def wait() -> float:
            if deadline is None:
                return MAX_WAIT_S
            return min(max((deadline - utcnow()).total_seconds(), 0.0), MAX_WAIT_S)

        return tick, wait


class CeleryWorker(_Process):
    """``avn-node worker``: runs the analysis tasks the broker hands it (one at a time, in this process) and
    dispatches the results; ``name`` tells its jobs apart from other workers' (stable across restarts when
    given, e.g. the systemd instance)."""

    def __init__(self, settings: Settings, name: str | None = None) -> None:
        from avn_node.analyse.celery_queue import worker_name

        super().__init__(settings, worker_name(name))

    def run(self) -> int:
        """Load the analyzers, then consume tasks until Celery's warm shutdown (SIGTERM); its exit code."""
        from avn_node.analyse.celery_queue import ANALYSE_TASK, DISPATCH_TASK, TASK_QUEUE, celery_app

        settings = self.settings
        limit_malloc_arenas()
        self._open(connect(settings.database.url))
        worker = Worker(settings, self.sessions, load_analyzers(settings), self.queue, self.files)
        worker.warm_up()
        self._reclaim()
        self._dispatch()
        app = celery_app(settings)

        @app.task(name=ANALYSE_TASK)
        def analyse(job_id: int) -> None:
            if not worker.run_next(job_id):
                log.info("job %d: nothing to do (done, or held by another worker)", job_id)
            elif settings.destinations:
                app.send_task(DISPATCH_TASK, args=[job_id])  # wakes an idle worker's dispatchers

        @app.task(name=DISPATCH_TASK)
        def dispatch(job_id: int) -> None:  # noqa: ARG001 - the deliveries' rows say what to send
            self.wake_dispatch.set()

        log.info("worker %s ready for tasks on %s", self.name, settings.queue.broker_url)
        consumer = app.Worker(pool_cls="solo", concurrency=1, hostname="@".join(reversed(self.name.split(":", 1))),
                              queues=[TASK_QUEUE], without_gossip=True, without_mingle=True, loglevel="INFO",
                              redirect_stdouts=False)  # fmt: skip
        try:
            consumer.start()
        finally:
            self.loops.stop()
            self._close()
        return consumer.exitcode or 0


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """glibc only, before the threads start: at most ``arenas`` malloc arenas. Each thread that allocates large
    buffers (decoded pixels, tensors) otherwise keeps an arena of its own that holds on to freed memory: the
    serving node's peak in `make bench-node` grew past 1.5 GiB."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return  # not glibc
    libc.mallopt(M_ARENA_MAX, arenas)


def serve(settings: Settings, stop: threading.Event) -> None:
    """Run a :class:`Node` until ``stop`` is set."""
    node = Node(settings)
    node.start()
    try:
        stop.wait()
    finally:
        node.stop()
