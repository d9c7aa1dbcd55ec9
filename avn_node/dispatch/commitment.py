"""Storage commitment, push model (PS3.4 Annex J), for DIMSE destinations with ``storage_commitment = true``.

A result stored at such a destination is *committing*. The destination's dispatcher asks the archive by
N-ACTION "Request Storage Commitment" (J.3.2) to commit every committing result that is due, under one new
Transaction UID; the archive answers later by N-EVENT-REPORT (J.3.3) on an association of its own to this node's
SCP, which hands it to :func:`handle_event_report`. A committed result's delivery is sent; a failed one is pending
again and is stored anew after the usual back-off; one not reported within ``storage_commitment_timeout_seconds``
is in doubt and asked for again under a new Transaction UID (a late report of the old one changes nothing). Only
the destination's own AE title may report, and its association must pass ``[security]`` like any other.
"""

from __future__ import annotations

import logging
import ssl
from datetime import timedelta

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from avn_node.association import DEFAULT_TIMEOUT_SECONDS, peer, scu_ae
from avn_node.config import Destination, DispatchSettings, Settings
from avn_node.events import NodeEvent, emit
from avn_node.store.models import Delivery, DeliveryState, Result, utcnow

log = logging.getLogger("avn_node.dispatch")

PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"  # the well-known SOP Instance of the Push Model (PS3.6 A.1)
REQUEST_STORAGE_COMMITMENT = 1  # N-ACTION Action Type ID (J.3.2)
ALL_COMMITTED = 1  # N-EVENT-REPORT Event Type ID "Storage Commitment Request Successful" (J.3.3)
SOME_FAILED = 2  # "Storage Commitment Request Complete – Failures Exist"
MAX_REFERENCES = 512  # results named by one request

# DIMSE statuses of the N-EVENT-REPORT response (PS3.7 10.1.1.1.8)
SUCCESS = 0x0000
PROCESSING_FAILURE = 0x0110
NO_SUCH_SOP_CLASS = 0x0118
NO_SUCH_EVENT_TYPE = 0x0113
# Failure Reason (0008,1197) of a Failed SOP Sequence item (J.3.3.1.1)
FAILURE_REASONS = {
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0119: "class / instance conflict",
    0x0122: "referenced SOP class not supported",
    0x0131: "duplicate transaction UID",
    0x0213: "resource limitation",
}


def request_commitment(
    destination: Destination,
    transaction_uid: str,
    references: list[tuple[str, str]],
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    tls: ssl.SSLContext | None = None,
) -> str:
    """Send the N-ACTION naming ``references`` (SOP Class UID, SOP Instance UID); ``""`` when the archive took
    the request, else the reason."""
    ae = scu_ae(destination.calling_ae_title, [build_context(StorageCommitmentPushModel)], timeout)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=(tls, destination.host) if tls is not None else None)  # fmt: skip
    if not assoc.is_established:
        return "association for storage commitment rejected" if assoc.is_rejected else "no association"
    request = Dataset()
    request.TransactionUID = transaction_uid
    request.ReferencedSOPSequence = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_instance
        request.ReferencedSOPSequence.append(item)
    try:
        status, _ = assoc.send_n_action(request, REQUEST_STORAGE_COMMITMENT, StorageCommitmentPushModel,
                                        PUSH_MODEL_INSTANCE)  # fmt: skip
    except (ValueError, RuntimeError) as exc:  # the archive accepted no Storage Commitment context
        return f"storage commitment not offered by the archive ({exc})"
    finally:
        if assoc.is_established:
            assoc.release()
    code = getattr(status, "Status", None)
    if code is None:
        return "no response to the storage commitment request"
    return "" if code == SUCCESS else f"storage commitment request refused: status 0x{code:04X}"


class Committer:
    """Requests storage commitment for one destination's committing deliveries (compare-and-set claims, as the
    sends are: several dispatchers of one destination never ask twice for one delivery)."""

    def __init__(self, dispatch: DispatchSettings, sessions: sessionmaker[Session], destination: Destination,
                 timeout: float = DEFAULT_TIMEOUT_SECONDS, tls: ssl.SSLContext | None = None) -> None:  # fmt: skip
        self.dispatch, self.sessions, self.destination = dispatch, sessions, destination
        self.timeout, self.tls = timeout, tls

    def request_due(self) -> int:
        """Ask for every committing delivery that is due (never asked, in doubt, or after a failed request);
        returns how many were asked for."""
        now = utcnow()
        transaction = generate_uid()
        wait = timedelta(seconds=self.destination.storage_commitment_timeout_seconds)
        asked: list[tuple[int, str, str]] = []
        with self.sessions() as session:
            due = session.execute(
                select(Delivery.id, Delivery.next_attempt_at, Delivery.commitment_uid, Delivery.created_at,
                       Result.sop_class_uid, Result.sop_instance_uid)
                .join(Result, Result.id == Delivery.result_id)
                .where(Delivery.destination == self.destination.name, Delivery.state == DeliveryState.COMMITTING,
                       Delivery.next_attempt_at <= now)
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(MAX_REFERENCES)
            ).all()  # fmt: skip
            for row in due:
                held = (Delivery.id == row.id, Delivery.state == DeliveryState.COMMITTING,
                        Delivery.next_attempt_at == row.next_attempt_at)  # fmt: skip
                data = {"destination": self.destination.name, "sop_instance_uid": row.sop_instance_uid}
                if now - row.created_at >= timedelta(hours=self.dispatch.give_up_hours):
                    why = "the archive never confirmed its storage commitment"
                    if session.execute(update(Delivery).where(*held).values(state=DeliveryState.DEAD,
                                                                            last_error=why)).rowcount:  # fmt: skip
                        emit(session, NodeEvent("delivery.dead", str(row.id), why, data))
                        log.error("gave up on %s at %s: %s", row.sop_instance_uid, self.destination.name, why)
                    continue
                taken = update(Delivery).where(*held).values(next_attempt_at=now + wait, commitment_uid=transaction)
                if session.execute(taken).rowcount != 1:
                    continue
                asked.append((row.id, row.sop_class_uid, row.sop_instance_uid))
                if row.commitment_uid:
                    emit(session, NodeEvent("delivery.in_doubt", str(row.id), "storage commitment not reported in "
                                            f"{wait.total_seconds():g} s: asked again", data))  # fmt: skip
            session.commit()  # before the request: the report may come back at once
        if not asked:
            return 0
        error = request_commitment(self.destination, transaction, [(c, i) for _, c, i in asked], self.timeout,
                                   self.tls)  # fmt: skip
        if error:
            self._failed([delivery_id for delivery_id, _, _ in asked], transaction, error)
        else:
            log.info("asked %s to commit %d results (transaction %s)", self.destination.name, len(asked), transaction)
        return len(asked)

    def _failed(self, ids: list[int], transaction: str, error: str) -> None:
        """The request did not reach the archive: ask again after the back-off."""
        now = utcnow()
        with self.sessions() as session:
            for delivery in session.scalars(select(Delivery).where(Delivery.id.in_(ids))):
                if delivery.state != DeliveryState.COMMITTING or delivery.commitment_uid != transaction:
                    continue  # reported or retried meanwhile
                delivery.attempts += 1
                delivery.last_error = error
                delivery.next_attempt_at = self.dispatch.next_attempt(delivery.attempts, now)
                emit(session, NodeEvent("delivery.failed", str(delivery.id), error,
                                        {"destination": self.destination.name, "attempt": delivery.attempts}))
            session.commit()
        log.warning("storage commitment of %d results at %s not requested (%s); asking again later", len(ids),
                    self.destination.name, error)  # fmt: skip


def handle_event_report(
    settings: Settings, sessions: sessionmaker[Session], event: evt.Event
) -> tuple[int, Dataset | None]:
    """EVT_N_EVENT_REPORT: a storage commitment report (J.3.3) from a destination; the response status (and no
    Event Reply, J.3.3.1)."""
    return _report_status(settings, sessions, event), None


def _report_status(settings: Settings, sessions: sessionmaker[Session], event: evt.Event) -> int:
    request = event.request
    if str(request.AffectedSOPClassUID) != StorageCommitmentPushModel:
        log.warning("N-EVENT-REPORT from %s for SOP class %s refused: only storage commitment reports are taken",
                    peer(event), request.AffectedSOPClassUID)  # fmt: skip
        return NO_SUCH_SOP_CLASS
    reporter = event.assoc.requestor.ae_title
    names = [d.name for d in settings.destinations
             if d.kind == "dimse" and d.storage_commitment and d.ae_title == reporter]  # fmt: skip
    if not names:
        log.warning("storage commitment report from %s refused: no destination with that AE title asks for "
                    "storage commitment", peer(event))  # fmt: skip
        return PROCESSING_FAILURE
    if event.event_type not in (ALL_COMMITTED, SOME_FAILED):
        log.warning("storage commitment report from %s refused: event type %s", peer(event), event.event_type)
        return NO_SUCH_EVENT_TYPE
    info = event.event_information
    transaction = str(info.get("TransactionUID", ""))
    committed = {str(i.ReferencedSOPInstanceUID) for i in info.get("ReferencedSOPSequence", [])}
    failed = {str(i.ReferencedSOPInstanceUID): int(i.get("FailureReason", PROCESSING_FAILURE))
              for i in info.get("FailedSOPSequence", [])}  # fmt: skip
    try:
        settled = _settle(settings.dispatch, sessions, names, transaction, committed, failed)
    except Exception:  # noqa: BLE001 - the report is asked for again once in doubt
        log.exception("storage commitment report of transaction %s from %s not recorded", transaction, peer(event))
        return PROCESSING_FAILURE
    log.info("storage commitment report from %s, transaction %s: %d committed, %d failed, %d deliveries settled",
             peer(event), transaction, len(committed), len(failed), settled)  # fmt: skip
    return SUCCESS


def _settle(dispatch: DispatchSettings, sessions: sessionmaker[Session], destinations: list[str], transaction: str,
            committed: set[str], failed: dict[str, int]) -> int:  # fmt: skip
    """Mark the deliveries awaiting ``transaction`` committed or pending again; returns how many changed."""
    now = utcnow()
    settled = 0
    with sessions() as session:
        rows = session.scalars(
            select(Delivery)
            .where(Delivery.commitment_uid == transaction, Delivery.state == DeliveryState.COMMITTING,
                   Delivery.destination.in_(destinations))
        ).all()  # fmt: skip
        for delivery in rows:
            uid = delivery.result.sop_instance_uid
            data = {"destination": delivery.destination, "sop_instance_uid": uid, "transaction_uid": transaction}
            if uid in committed:
                delivery.state, delivery.committed_at, delivery.last_error = DeliveryState.SENT, now, ""
                emit(session, NodeEvent("delivery.done", str(delivery.id), "committed", {**data, "committed": True}))
            elif uid in failed:
                reason = failed[uid]
                error = f"not committed by the archive: 0x{reason:04X} {FAILURE_REASONS.get(reason, 'failure')}"
                delivery.state, delivery.last_error = DeliveryState.PENDING, error
                delivery.next_attempt_at = dispatch.next_attempt(delivery.attempts, now)
                emit(session, NodeEvent("delivery.failed", str(delivery.id), error, data))
                log.warning("%s at %s: %s; stored again from %s", uid, delivery.destination, error,
                            delivery.next_attempt_at.isoformat(timespec="seconds"))  # fmt: skip
            else:
                continue  # not named in the report: in doubt once the wait is over
            settled += 1
        session.commit()
    return settled
