"""C-STORE SCU to each destination, from the stored result files; attempts and next-attempt time are columns.

Back-off: ``retry_first_seconds`` doubling per attempt up to ``retry_max_seconds``; after ``give_up_hours``
since the delivery was created it is dead-lettered (``avn-node deliveries retry`` re-queues it).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.presentation import build_context
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from avn_node.config import Destination, DispatchSettings, Settings
from avn_node.receive.statuses import STORED
from avn_node.store.models import Delivery, DeliveryState, Event, utcnow

log = logging.getLogger("avn_node.dispatch")


def next_attempt(dispatch: DispatchSettings, attempts: int, now: datetime) -> datetime:
    """When to try again after ``attempts`` failures."""
    delay = min(dispatch.retry_first_seconds * 2 ** max(0, attempts - 1), dispatch.retry_max_seconds)
    return now + timedelta(seconds=delay)


def send_files(destination: Destination, paths: list[Path], timeout: float = 30) -> dict[Path, str]:
    """C-STORE every file over one association; per file ``""`` on success, else the reason.

    Proposes, per SOP class, one context per transfer syntax: each syntax the files use, plus Explicit and
    Implicit VR Little Endian. An SCP accepts one syntax per context, so each file goes as it is stored.
    """
    outcome: dict[Path, str] = {}
    syntaxes: dict[str, set[str]] = defaultdict(set)
    readable = []
    for path in paths:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            syntaxes[str(ds.SOPClassUID)].add(str(ds.file_meta.TransferSyntaxUID))
            readable.append(path)
        except Exception as exc:  # noqa: BLE001 - a missing or unreadable file fails alone
            outcome[path] = f"cannot read the file: {type(exc).__name__}: {exc}"
    if not readable:
        return outcome
    ae = AE(ae_title=destination.calling_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.requested_contexts = [
        build_context(sop, ts)
        for sop, used in syntaxes.items()
        for ts in sorted(used | {ExplicitVRLittleEndian, ImplicitVRLittleEndian})
    ]
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "no association (peer down or aborted)"
        return {**outcome, **dict.fromkeys(readable, reason)}
    try:
        for path in readable:
            try:
                status = assoc.send_c_store(path)
            except Exception as exc:  # noqa: BLE001 - e.g. the peer accepted no context for this SOP class
                outcome[path] = f"not sent: {type(exc).__name__}: {exc}"
                continue
            code = getattr(status, "Status", None)
            if code is None:
                outcome[path] = "no response (association aborted or timed out)"
            elif code in STORED:
                outcome[path] = ""
            else:
                outcome[path] = f"status 0x{code:04X} {getattr(status, 'ErrorComment', '')}".strip()
    finally:
        if assoc.is_established:
            assoc.release()
    return outcome


def dispatch_due(settings: Settings, sessions: sessionmaker[Session]) -> int:
    """Send every delivery that is due; returns how many were sent."""
    destinations = {d.name: d for d in settings.destinations}
    now = utcnow()
    with sessions() as session:
        due = session.scalars(
            select(Delivery).where(Delivery.state == DeliveryState.PENDING, Delivery.next_attempt_at <= now)
        ).all()
        by_destination: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in due:
            by_destination[delivery.destination].append(delivery)
        sent = 0
        for name, deliveries in by_destination.items():
            destination = destinations.get(name)
            if destination is None:
                outcome = {Path(d.result.path): f'destination "{name}" is no longer configured' for d in deliveries}
            else:
                outcome = send_files(destination, [Path(d.result.path) for d in deliveries if not d.result.purged])
                outcome.update(
                    {Path(d.result.path): "result purged by retention" for d in deliveries if d.result.purged}
                )
            for delivery in deliveries:
                error = outcome[Path(delivery.result.path)]
                delivery.attempts += 1
                if not error:
                    delivery.state = DeliveryState.SENT
                    delivery.sent_at = utcnow()
                    sent += 1
                    log.info("sent %s to %s", delivery.result.sop_instance_uid, name)
                    continue
                delivery.last_error = error
                if now - delivery.created_at >= timedelta(hours=settings.dispatch.give_up_hours):
                    delivery.state = DeliveryState.DEAD
                    session.add(Event(kind="delivery.dead", subject=str(delivery.id), detail=error))
                    log.error("gave up sending %s to %s: %s", delivery.result.sop_instance_uid, name, error)
                else:
                    delivery.next_attempt_at = next_attempt(settings.dispatch, delivery.attempts, now)
                    log.warning("sending %s to %s failed (%s); next attempt %s", delivery.result.sop_instance_uid,
                                name, error, delivery.next_attempt_at.isoformat())  # fmt: skip
        session.commit()
    return sent


def retry_deliveries(session: Session, ids: list[int] | None) -> int:
    """Re-queue dead or pending deliveries now (``ids`` None: every dead one); returns how many."""
    query = select(Delivery).where(Delivery.state != DeliveryState.SENT)
    query = query.where(Delivery.id.in_(ids)) if ids else query.where(Delivery.state == DeliveryState.DEAD)
    rows = session.scalars(query).all()
    now = utcnow()
    for delivery in rows:
        delivery.state = DeliveryState.PENDING
        delivery.next_attempt_at = now
        delivery.created_at = now  # a fresh give-up window
        session.add(Event(kind="delivery.retry", subject=str(delivery.id)))
    session.commit()
    return len(rows)
