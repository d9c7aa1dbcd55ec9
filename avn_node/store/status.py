"""What `avn-node status` shows: counts per state, recent failures, stored results."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from avn_node.store.models import Case, Delivery, DeliveryState, Instance, Job, Result, Study

RECENT = 20


def state_counts(session: Session, column: Any) -> dict[str, int]:
    """Rows per value of a state ``column``, e.g. ``Delivery.state``."""
    return {str(state): int(n) for state, n in session.execute(select(column, func.count()).group_by(column))}


def node_status(session: Session, data_dir: Path) -> dict[str, Any]:
    """A JSON-ready summary of the database; result paths as files under ``data_dir``."""
    failures = [
        f"job {j.id} case {j.case_id} v{j.version} ({j.state}, attempt {j.attempts}): {j.error}"
        for j in session.scalars(select(Job).where(Job.error != "").order_by(Job.id.desc()).limit(RECENT))
    ]
    failures += [
        f"delivery {d.id} to {d.destination} ({d.state}, attempt {d.attempts}): {d.last_error}"
        for d in session.scalars(
            select(Delivery).where(Delivery.state != DeliveryState.SENT, Delivery.last_error != "")
            .order_by(Delivery.id.desc()).limit(RECENT)
        )
    ]  # fmt: skip
    results = [
        {"id": r.id, "case": r.case_id, "version": r.version, "kind": r.kind, "study": r.study_instance_uid,
         "sop_instance_uid": r.sop_instance_uid, "path": str(data_dir / r.file_key)}
        for r in session.scalars(select(Result).order_by(Result.id.desc()).limit(RECENT))
    ]  # fmt: skip
    return {
        "instances": state_counts(session, Instance.state),
        "studies": state_counts(session, Study.state),
        "cases": state_counts(session, Case.state),
        "jobs": state_counts(session, Job.state),
        "deliveries": state_counts(session, Delivery.state),
        "failures": failures,
        "results": results,
    }
