"""The queue on Celery (``[queue] backend = "celery"``): ``serve`` receives, groups and schedules and sends one
task per analysis job to the broker; any number of ``avn-node worker`` processes analyse, report and dispatch.

Tasks carry IDs only and the database row is the truth: a task claims its job with the compare-and-set of
:class:`~avn_node.analyse.queue.JobQueue`, so a duplicate or stale task does nothing. Tasks are acknowledged
late, one at a time (prefetch 1). A worker lost mid-job stops renewing its lease, and :class:`TaskSender` sends
the job again once the lease has run out — with the Redis broker an unacknowledged task would otherwise come
back only after its visibility timeout (an hour by default). Workers run Celery's solo pool: the task runs in
the process that loaded torch, which never forks.
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from avn_node.analyse.queue import mark_sent, unsent
from avn_node.config import Settings

log = logging.getLogger("avn_node.analyse")
ANALYSE_TASK = "avn_node.analyse"  # args: [job id]
DISPATCH_TASK = "avn_node.dispatch"  # args: [job id]: its results wait to be sent
TASK_QUEUE = "avn-node"


def celery_app(settings: Settings) -> Celery:
    """A Celery app on ``[queue] broker_url``, configured for late acknowledgement and prefetch 1."""
    app = Celery("avn_node", broker=settings.queue.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_default_queue=TASK_QUEUE,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        # a lost broker connection cancels what runs unacknowledged (Celery 6's default): it comes back anyway
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    return app


def worker_name(name: str | None) -> str:
    """This worker's name on the jobs and deliveries it holds: host plus ``name`` (default: the process id)."""
    return f"{socket.gethostname()}:worker-{name or os.getpid()}"[:128]


class TaskSender:
    """Sends a task for every claimable job whose task is not with the broker (new, re-queued after a failure,
    or held by a worker whose lease ran out); a broker outage only delays: the job waits in the database."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.app = celery_app(settings)
        self.sessions = sessions
        self.lease = timedelta(seconds=settings.queue.lease_seconds)
        self.broker_down = False

    def send_due(self) -> int:
        """Send the due tasks; how many went. Each job is marked sent (committed) before its task goes, so a
        worker that takes the task at once finds the row unlocked; a task that could not go is unmarked."""
        with self.sessions() as session:
            due = unsent(session, self.lease)
            mark_sent(session, due)
            session.commit()
            sent = 0
            for job_id in due:
                try:
                    self.app.send_task(ANALYSE_TASK, args=[job_id], retry=False)
                except Exception as exc:  # noqa: BLE001 - kombu raises its own and the transport's errors
                    if not self.broker_down:
                        log.error("broker %s unavailable (%s: %s): jobs wait in the database",
                                  self.app.conf.broker_url, type(exc).__name__, exc)  # fmt: skip
                    self.broker_down = True
                    mark_sent(session, due[sent:], sent=False)
                    session.commit()
                    break
                sent += 1
            if sent and self.broker_down:
                log.info("broker reachable again")
                self.broker_down = False
        if sent:
            log.info("sent %d analysis tasks to the broker (jobs %s)", sent, ", ".join(map(str, due[:sent])))
        return sent
