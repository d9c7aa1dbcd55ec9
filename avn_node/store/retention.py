"""Retention: delete files past ``retention_days``; their rows stay, marked, as the audit trace.

A row is marked purged only once its file is gone, so the trace never claims a deletion that did not happen.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from avn_node.events import NodeEvent, emit
from avn_node.store.files import FileStore
from avn_node.store.models import Instance, InstanceState, Result, utcnow

log = logging.getLogger("avn_node.store")


def purge_older_than(session: Session, files: FileStore, days: float) -> tuple[int, int]:
    """Delete instance and result files older than ``days``; returns (deleted, could not be deleted)."""
    cutoff = utcnow() - timedelta(days=days)
    deleted = failed = 0
    rows: list[Instance | Result] = [
        *session.scalars(select(Instance).where(Instance.received_at < cutoff, Instance.state != InstanceState.PURGED)),
        *session.scalars(select(Result).where(Result.created_at < cutoff, Result.purged.is_(False))),
    ]
    for row in rows:
        if not files.delete(row.file_key):
            failed += 1
            log.error("retention: could not delete %s; its row stays as it is", row.file_key)
            continue
        if isinstance(row, Instance):
            row.state = InstanceState.PURGED
        else:
            row.purged = True
        deleted += 1
    emit(session, NodeEvent("purge", "", f"{deleted} files older than {days} days deleted, {failed} failed",
                            {"days": days, "deleted": deleted, "failed": failed}))  # fmt: skip
    session.commit()
    return deleted, failed
