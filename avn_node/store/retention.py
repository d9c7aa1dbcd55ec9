"""Retention: delete files past ``retention_days``; their rows stay, marked, as the audit trace."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from avn_node.store.models import Event, Instance, InstanceState, Result, utcnow


def purge_older_than(session: Session, days: float) -> int:
    """Delete instance and result files older than ``days``; returns how many files were deleted."""
    cutoff = utcnow() - timedelta(days=days)
    deleted = 0
    for row in session.scalars(
        select(Instance).where(Instance.received_at < cutoff, Instance.state != InstanceState.PURGED)
    ):
        Path(row.path).unlink(missing_ok=True)
        row.state = InstanceState.PURGED
        deleted += 1
    for result in session.scalars(select(Result).where(Result.created_at < cutoff, Result.purged.is_(False))):
        Path(result.path).unlink(missing_ok=True)
        result.purged = True
        deleted += 1
    session.add(Event(kind="purge", detail=f"{deleted} files older than {days} days"))
    session.commit()
    return deleted
