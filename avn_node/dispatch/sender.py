"""Results to each destination from the stored result files — C-STORE SCU here, STOW-RS in :mod:`.stow` —
with attempts and next-attempt time as columns.

Back-off: ``retry_first_seconds`` doubling per attempt up to ``retry_max_seconds``; after ``give_up_hours``
since the delivery was created it is dead-lettered (``avn-node deliveries retry`` re-queues it).
"""

from __future__ import annotations

import logging
import ssl
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from avn_node.association import DEFAULT_TIMEOUT_SECONDS, client_tls, scu_ae
from avn_node.config import Destination, Settings
from avn_node.dispatch import stow
from avn_node.dispatch.commitment import Committer
from avn_node.events import NodeEvent, emit
from avn_node.faults import fault_point
from avn_node.receive.statuses import STORED
from avn_node.store.files import LocalFileStore
from avn_node.store.models import Delivery, DeliveryState, Result, utcnow

log = logging.getLogger("avn_node.dispatch")
BATCH = 32  # deliveries per association
SUCCESS_STATUS = 0x0000
PENDING = frozenset({0xFF00, 0xFF01})  # C-FIND matches follow (PS3.4 C.4.1.1.4)


def send_files(
    destination: Destination,
    paths: list[Path],
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    tls: ssl.SSLContext | None = None,
) -> dict[Path, str]:
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
    contexts = [
        build_context(sop, ts)
        for sop, used in syntaxes.items()
        for ts in sorted(used | {ExplicitVRLittleEndian, ImplicitVRLittleEndian})
    ]
    ae = scu_ae(destination.calling_ae_title, contexts, timeout)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=(tls, destination.host) if tls is not None else None)  # fmt: skip
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "no association (peer down or aborted)"
        if tls is not None and not assoc.is_rejected:
            reason = "no association (peer down, aborted, or the TLS handshake failed: see the log)"
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


@dataclass(frozen=True)
class Claimed:
    """A delivery held by this dispatcher; ``in_doubt`` when an earlier claim never recorded its outcome."""

    delivery_id: int
    key: str
    purged: bool
    in_doubt: bool


def held_by(destination: Destination, datasets: list[Dataset], timeout: float = DEFAULT_TIMEOUT_SECONDS,
            tls: ssl.SSLContext | None = None) -> set[str] | None:  # fmt: skip
    """SOP Instance UIDs of ``datasets`` the destination holds, by C-FIND at IMAGE level (PS3.4 C.4.1, Study Root);
    None when it does not answer C-FIND."""
    model = StudyRootQueryRetrieveInformationModelFind
    ae = scu_ae(destination.calling_ae_title, [build_context(model)], timeout)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         tls_args=(tls, destination.host) if tls is not None else None)  # fmt: skip
    if not assoc.is_established:
        return None
    found: set[str] = set()
    try:
        for ds in datasets:
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID, query.SeriesInstanceUID = ds.StudyInstanceUID, ds.SeriesInstanceUID
            query.SOPInstanceUID = ds.SOPInstanceUID
            for status, identifier in assoc.send_c_find(query, model):
                code = getattr(status, "Status", None)
                if code in PENDING:
                    if identifier is not None and identifier.get("SOPInstanceUID") == ds.SOPInstanceUID:
                        found.add(str(ds.SOPInstanceUID))
                elif code != SUCCESS_STATUS:
                    return None  # refused, failed or timed out: the archive cannot be asked
    except (ValueError, RuntimeError):  # no accepted context for C-FIND
        return None
    finally:
        if assoc.is_established:
            assoc.release()
    return found


class Dispatcher:
    """The deliveries to one destination, in a loop of their own (:class:`avn_node.serve.Node`): a hung archive
    stalls only itself.

    Each round claims up to :data:`BATCH` due deliveries with compare-and-set (pushing their next attempt past
    the time the send may take, which is the claim's lease, and stamping ``claimed_at``), sends them over one
    association with no session open, and records each outcome in one short transaction.

    A delivery claimed before whose outcome was never recorded (the node died while sending) is *in doubt*: the
    archive is asked by C-FIND (IMAGE level) whether it holds the object, and it is re-sent only if not — or, where
    the archive answers no C-FIND, re-sent and counted as a re-delivery.
    """

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], files: LocalFileStore,
                 destination: Destination, owner: str, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:  # fmt: skip
        self.settings, self.sessions, self.files = settings, sessions, files
        self.destination, self.owner, self.timeout = destination, owner, timeout
        self.committer: Committer | None = None  # storage commitment: DIMSE destinations that ask for it
        if destination.kind == "stow-rs":
            self.query = "QIDO-RS"
            self.send = partial(stow.send_files, destination, timeout=timeout)
            self.held = partial(stow.held_by, destination, timeout=timeout)
        else:
            tls = client_tls(settings.security) if destination.tls else None
            self.query = "C-FIND"
            self.send = partial(send_files, destination, timeout=timeout, tls=tls)
            self.held = partial(held_by, destination, timeout=timeout, tls=tls)
            if destination.storage_commitment:
                self.committer = Committer(settings.dispatch, sessions, destination, timeout, tls)

    def claim(self) -> list[Claimed]:
        """The due deliveries this dispatcher now holds."""
        now = utcnow()
        lease = now + timedelta(seconds=self.timeout * (BATCH + 3))
        claimed = []
        with self.sessions() as session:
            due = session.execute(
                select(Delivery.id, Delivery.next_attempt_at, Delivery.claimed_at, Result.file_key, Result.purged)
                .join(Result, Result.id == Delivery.result_id)
                .where(Delivery.destination == self.destination.name, Delivery.state == DeliveryState.PENDING,
                       Delivery.next_attempt_at <= now)
                .order_by(Delivery.next_attempt_at, Delivery.id)
                .limit(BATCH)
            ).all()  # fmt: skip
            for delivery_id, seen, earlier_claim, key, purged in due:
                if self._take(session, delivery_id, seen, lease, now, self.owner):
                    claimed.append(Claimed(delivery_id, key, purged, in_doubt=earlier_claim is not None))
            session.commit()
        return claimed

    @staticmethod
    def _take(session: Session, delivery_id: int, seen: datetime, lease: datetime, now: datetime, owner: str) -> bool:
        """Compare-and-set: hold the delivery only if it is still pending with the next attempt seen."""
        taken = session.execute(
            update(Delivery)
            .where(Delivery.id == delivery_id, Delivery.state == DeliveryState.PENDING)
            .where(Delivery.next_attempt_at == seen)
            .values(next_attempt_at=lease, claimed_at=now, claimed_by=owner)
        )
        return taken.rowcount == 1

    def run_once(self) -> int:
        """One round: claim, send and record; then, with storage commitment, ask for what is due. Returns how
        many deliveries were sent or asked for."""
        done = self._send_due()
        return done + (self.committer.request_due() if self.committer is not None else 0)

    def _send_due(self) -> int:
        claimed = self.claim()
        if not claimed:
            return 0
        doubtful = [c for c in claimed if c.in_doubt and not c.purged]
        held = self._held_by_archive(doubtful) if doubtful else set()
        notes = {c.delivery_id: {"in_doubt": True, "found_by_c_find": held is not None and c.key in (held or ())}
                 for c in doubtful}  # fmt: skip
        to_send = [c for c in claimed if not c.purged and (held is None or c.key not in held)]
        paths = {c.key: self.files.local_path(c.key) for c in to_send}
        outcome = self.send(list(paths.values())) if paths else {}
        fault_point("dispatch.after-send")
        errors = {key: outcome[path] for key, path in paths.items()}
        errors.update({c.key: "" for c in doubtful if held and c.key in held})
        errors.update({c.key: "result purged by retention" for c in claimed if c.purged})
        return self._record({c.delivery_id: errors[c.key] for c in claimed}, notes)

    def _held_by_archive(self, doubtful: list[Claimed]) -> set[str] | None:
        """Keys of the in-doubt results the archive already holds; None when it cannot be asked (C-FIND or QIDO-RS)."""
        by_uid = {}
        for c in doubtful:
            try:
                by_uid[c.key] = pydicom.dcmread(self.files.local_path(c.key), stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - an unreadable file is re-sent and fails there, with its reason
                continue
        found = self.held(list(by_uid.values()))
        if found is None:
            log.warning("%s cannot be asked (%s): %d results in doubt are sent again", self.destination.name,
                        self.query, len(doubtful))  # fmt: skip
            return None
        return {key for key, ds in by_uid.items() if str(ds.SOPInstanceUID) in found}

    def _record(self, errors: dict[int, str], notes: dict[int, dict[str, bool]]) -> int:
        sent = 0
        now = utcnow()
        name = self.destination.name
        failed: dict[str, list[datetime]] = defaultdict(list)  # error → next attempts, one log line per error
        with self.sessions() as session:
            for delivery_id, error in errors.items():
                delivery = session.get(Delivery, delivery_id)
                assert delivery is not None
                delivery.attempts += 1
                delivery.claimed_at, delivery.claimed_by = None, ""
                uid = delivery.result.sop_instance_uid
                data = {"destination": name, "sop_instance_uid": uid, "attempt": delivery.attempts,
                        **notes.get(delivery_id, {})}  # fmt: skip
                if not error:
                    delivery.sent_at = utcnow()
                    sent += 1
                    if self.committer is None:
                        delivery.state = DeliveryState.SENT
                        emit(session, NodeEvent("delivery.done", str(delivery_id), data=data))
                        log.info("sent %s to %s", uid, name)
                    else:  # its storage commitment is asked for at once
                        delivery.state, delivery.next_attempt_at = DeliveryState.COMMITTING, now
                        emit(session, NodeEvent("delivery.stored", str(delivery_id), data=data))
                        log.info("sent %s to %s; awaiting its storage commitment", uid, name)
                    continue
                delivery.last_error = error
                if now - delivery.created_at >= timedelta(hours=self.settings.dispatch.give_up_hours):
                    delivery.state = DeliveryState.DEAD
                    emit(session, NodeEvent("delivery.dead", str(delivery_id), error, data))
                    log.error("gave up sending %s to %s: %s", uid, name, error)
                else:
                    delivery.next_attempt_at = self.settings.dispatch.next_attempt(delivery.attempts, now)
                    data["retry_in_seconds"] = (delivery.next_attempt_at - now).total_seconds()
                    emit(session, NodeEvent("delivery.failed", str(delivery_id), error, data))
                    failed[error].append(delivery.next_attempt_at)
            session.commit()
        for error, attempts in failed.items():
            log.warning("sending %d results to %s failed (%s); next attempt from %s", len(attempts), name, error,
                        min(attempts).isoformat(timespec="seconds"))  # fmt: skip
        return sent


def release_claims(session: Session, owner: str) -> int:
    """At start: deliveries ``owner`` held when it stopped are due now (still in doubt); returns how many."""
    released = session.execute(
        update(Delivery)
        .where(Delivery.claimed_by == owner, Delivery.state == DeliveryState.PENDING)
        .values(next_attempt_at=utcnow())
    ).rowcount
    session.commit()
    return released


def retry_deliveries(session: Session, ids: list[int] | None, by: str = "") -> int:
    """Re-queue dead or pending deliveries now (``ids`` None: every dead one); returns how many. ``by`` names the
    dashboard user who asked (its event records them)."""
    query = select(Delivery).where(Delivery.state != DeliveryState.SENT)
    query = query.where(Delivery.id.in_(ids)) if ids else query.where(Delivery.state == DeliveryState.DEAD)
    rows = session.scalars(query).all()
    now = utcnow()
    for delivery in rows:
        delivery.state = DeliveryState.PENDING
        delivery.next_attempt_at = now
        delivery.created_at = now  # a fresh give-up window
        data = {"destination": delivery.destination, **({"user": by} if by else {})}
        emit(session, NodeEvent("delivery.retry", str(delivery.id), by and f"by {by}", data))
    session.commit()
    return len(rows)
