"""``avn-node serve``: receiver, scheduler, a bounded local worker and the dispatcher in one process.

SIGTERM stops accepting, lets the running job finish, and leaves everything else in the database, where the
next start picks it up.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from sqlalchemy import update

from avn_node.analyse.worker import claim_job, run_job
from avn_node.config import Settings
from avn_node.dispatch.sender import dispatch_due
from avn_node.group.scheduler import close_stable_studies, schedule_cases
from avn_node.receive.scp import start_scp
from avn_node.store.database import open_database
from avn_node.store.models import Job, JobState, utcnow
from avn_node.store.retention import purge_older_than

log = logging.getLogger("avn_node.serve")
TICK_SECONDS = 0.5
RETENTION_SWEEP_SECONDS = 24 * 3600


def serve(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run until ``stop`` is set (or SIGTERM/SIGINT when run from the main thread)."""
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    settings.node.data_dir.mkdir(parents=True, exist_ok=True)
    sessions = open_database(settings.database.url)
    with sessions() as session:  # a single local worker: whatever ran before a restart runs again
        resumed = session.execute(
            update(Job).where(Job.state == JobState.RUNNING).values(state=JobState.QUEUED, lease_until=None)
        ).rowcount
        session.commit()
    if resumed:
        log.info("resuming %d interrupted analysis jobs", resumed)
    analyzer = None
    if settings.pipeline.analyse:
        from avn_node.models.inference import Analyzer

        analyzer = Analyzer(
            settings.models.dir,
            threads=settings.models.threads,
            device=settings.models.device,
            refuse_out_of_distribution=settings.models.refuse_out_of_distribution,
        )
        log.info("model %s %s loaded (sha256 %s)", analyzer.info.name, analyzer.info.version, analyzer.info.sha256[:12])
    server = start_scp(settings, sessions)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="analyse")
    running: Future[None] | None = None
    next_sweep = time.monotonic()
    try:
        while not stop.is_set():
            try:
                if settings.storage.retention_days > 0 and time.monotonic() >= next_sweep:
                    with sessions() as session:
                        deleted = purge_older_than(session, settings.storage.retention_days)
                    log.info("retention sweep: %d files older than %s days deleted", deleted,
                             settings.storage.retention_days)  # fmt: skip
                    next_sweep = time.monotonic() + RETENTION_SWEEP_SECONDS
                with sessions() as session:
                    close_stable_studies(session, settings.pipeline, utcnow())
                    if analyzer is not None:
                        schedule_cases(session, settings.pipeline)
                    session.commit()
                if analyzer is not None and (running is None or running.done()):
                    with sessions() as session:
                        job = claim_job(session, settings.queue.lease_seconds)
                    if job is not None:
                        running = pool.submit(run_job, settings, sessions, analyzer, job.id)
                if settings.destinations:
                    dispatch_due(settings, sessions)
            except Exception:  # noqa: BLE001 - the database holds the work; the next tick tries again
                log.exception("scheduler tick failed; retrying")
            stop.wait(TICK_SECONDS)
    finally:
        log.info("stopping: no new associations; finishing the running job")
        server.shutdown()
        pool.shutdown(wait=True)
        log.info("stopped")
