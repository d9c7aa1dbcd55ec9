"""Node events: one :func:`emit` at every state transition (DESIGN §1), recorded as an ``events`` row in the
transaction that makes the change; once that transaction commits (never if it rolls back) the event is logged
with its fields and handed to subscribers (metrics, audit).

Events carry UIDs, AE titles, addresses and numbers — never patient names.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, sessionmaker

from avn_node.store.models import Event

log = logging.getLogger("avn_node.events")


@dataclass(frozen=True)
class NodeEvent:
    """``kind`` is ``<thing>.<what happened>``, e.g. ``instance.stored``; ``data`` holds numbers as numbers."""

    kind: str
    subject: str = ""
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


Subscriber = Callable[[NodeEvent], None]
_subscribers: list[Subscriber] = []


def subscribe(subscriber: Subscriber) -> Callable[[], None]:
    """Call ``subscriber`` with every event from now on; returns the function that unsubscribes it."""
    _subscribers.append(subscriber)
    return lambda: _subscribers.remove(subscriber)


def emit(session: Session, event: NodeEvent) -> None:
    """Add the event's row to ``session``; it is published when the session commits."""
    session.add(Event(kind=event.kind, subject=event.subject[:128], detail=event.detail, data=event.data or None))
    session.info.setdefault(PENDING, []).append(event)


def publish(event: NodeEvent) -> None:
    """Log the event and notify subscribers without a row: for what is frequent and changes no state."""
    _publish(event)


def emit_now(sessions: sessionmaker[Session], event: NodeEvent) -> None:
    """:func:`emit` in a transaction of its own, for events with no state change of their own (associations)."""
    with sessions() as session:
        emit(session, event)
        session.commit()


PENDING = "avn_node.events"


@sa_event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    for event in session.info.pop(PENDING, []):
        _publish(event)


@sa_event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(PENDING, None)


NOT_LOGGED = frozenset({"patient_id"})
"""Event fields kept out of the ordinary log (patient data: the database and the audit trail only)."""


def _publish(event: NodeEvent) -> None:
    # DEBUG: each stage logs its own line for people; this one carries the fields for machines
    fields = {k: v for k, v in event.data.items() if k not in NOT_LOGGED}
    log.debug("%s %s %s", event.kind, event.subject, event.detail,
              extra={"event": event.kind, "subject": event.subject, **fields})  # fmt: skip
    for subscriber in list(_subscribers):
        try:
            subscriber(event)
        except Exception:  # noqa: BLE001 - a subscriber never breaks the transition it observes
            log.exception("event subscriber %r failed on %s", subscriber, event.kind)
