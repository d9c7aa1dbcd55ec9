"""The SCP: one C-STORE handler that writes durably and only then succeeds (the AE: :mod:`avn_node.association`).

pynetdicom streams each dataset to a temp file inside ``data_dir`` (``STORE_RECV_CHUNKED_DATASET``); the
handler checks watermark and size, reads the header for UIDs, fsyncs, renames into the store, commits the
row, and answers. Pixels are never decoded here.
"""

from __future__ import annotations

import logging
import shutil
from functools import partial
from pathlib import Path

import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pynetdicom import evt
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from avn_node.analyse.analyzers import analyzer_kinds, selecting_kind
from avn_node.association import peer, reject_unlisted_address, scp_ae, server_tls
from avn_node.config import Settings
from avn_node.dispatch.commitment import handle_event_report
from avn_node.events import NodeEvent, emit, emit_now, publish
from avn_node.faults import fault_point
from avn_node.group.cases import patient_of, study_datetime
from avn_node.receive.statuses import Refusal, Status
from avn_node.store.files import InvalidUidError, LocalFileStore, checked_uid, instance_key, sha256_of
from avn_node.store.models import Instance, InstanceState, Study, StudyState, utcnow

log = logging.getLogger("avn_node.receive")
DATABASE_DOWN = (OperationalError, InterfaceError)  # no connection, or the server went away mid-transaction

UNDEFINED_LENGTH = 0xFFFFFFFF  # PS3.5 7.1.1
CONTEXT_REJECTIONS = {  # Presentation Context Item results, PS3.8 9.3.3.2
    0x01: "rejected by the node",
    0x02: "no reason given",
    0x03: "SOP class not supported",
    0x04: "none of its transfer syntaxes is supported",
}


def cut_short(ds: Dataset) -> str:
    """Where the header ends inside an element ("in (0010,0010): 2 of 14 bytes"), else "".

    pydicom reads a cut-short element without complaint, so a header truncated there would look like one whose
    later attributes are missing. Only the last element read can be short.
    """
    tags = list(ds.keys())
    if not tags:
        return ""
    raw = ds.get_item(tags[-1])
    if isinstance(raw, RawDataElement) and raw.value is not None and raw.length != UNDEFINED_LENGTH:
        if len(raw.value) < raw.length:
            return f"in {raw.tag}: {len(raw.value)} of {raw.length} bytes"
    return ""


def _unlike_request(ds: Dataset, sop_class: str, sop: str) -> Refusal | None:
    """A refusal when the data set's SOP Class or Instance UID is not the one the C-STORE request named (the
    received file's File Meta holds the request's; PS3.7 9.3.1.1)."""
    meta = ds.file_meta
    requested_class = str(meta.get("MediaStorageSOPClassUID", "") or sop_class)
    if requested_class != sop_class:
        comment = f"SOP Class UID does not match the request: data set {sop_class}, request {requested_class}"
        return Refusal(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, comment)
    requested = str(meta.get("MediaStorageSOPInstanceUID", "") or sop)
    if requested != sop:
        comment = f"SOP Instance UID does not match the request: data set {sop}, request {requested}"
        return Refusal(Status.CANNOT_UNDERSTAND, comment)
    return None


class Receiver:
    """Turns a received temp file into a stored instance and a committed row."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.files = LocalFileStore(settings.node.data_dir)
        self.kinds = analyzer_kinds(settings)

    def store(self, path: Path, calling_ae: str) -> Status | Refusal:
        """Store the Part 10 file at ``path`` (moved into the store, or removed when those bytes are stored
        already; left in place when refused); the status to answer."""
        security = self.settings.security
        data_dir = self.settings.node.data_dir
        free_mb = shutil.disk_usage(data_dir).free / 2**20
        if free_mb < security.min_free_disk_mb:
            limit = security.min_free_disk_mb
            return Refusal(Status.OUT_OF_RESOURCES, f"free disk {free_mb:.0f} MB below min_free_disk_mb {limit:g}")
        size = path.stat().st_size
        if size > security.max_dataset_mb * 2**20:
            limit = security.max_dataset_mb
            return Refusal(Status.OUT_OF_RESOURCES, f"dataset of {size / 2**20:.0f} MB over max_dataset_mb {limit:g}")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the peer's data
            return Refusal(Status.CANNOT_UNDERSTAND, f"header cannot be parsed: {type(exc).__name__}")
        short = cut_short(ds)
        if short:
            return Refusal(Status.CANNOT_UNDERSTAND, f"header cut short {short}")
        try:
            sop = checked_uid(ds.get("SOPInstanceUID"), "SOP Instance UID")
            sop_class = checked_uid(ds.get("SOPClassUID"), "SOP Class UID")
            study = checked_uid(ds.get("StudyInstanceUID"), "Study Instance UID")
            series = checked_uid(ds.get("SeriesInstanceUID"), "Series Instance UID")
        except InvalidUidError as exc:
            return Refusal(Status.CANNOT_UNDERSTAND, str(exc))
        mismatch = _unlike_request(ds, sop_class, sop)
        if mismatch is not None:
            return mismatch
        sha = sha256_of(path)
        kind = selecting_kind(self.kinds, ds)
        routed = kind is not None
        with self.sessions() as session:
            known = session.scalars(
                select(Instance).where(Instance.sop_instance_uid == sop, Instance.state != InstanceState.PURGED)
            ).all()
        if any(i.sha256 == sha for i in known):
            log.info("duplicate instance %s from %s: identical bytes, already stored", sop, calling_ae)
            path.unlink()
            return Status.SUCCESS
        if known:
            log.warning("instance %s from %s: same SOP Instance UID, different bytes; both kept", sop, calling_ae)
        key = instance_key(study, series, sop, sha)
        row = Instance(
            sop_instance_uid=sop,
            sop_class_uid=sop_class,
            study_instance_uid=study,
            series_instance_uid=series,
            modality=str(ds.get("Modality", ""))[:16],
            state=InstanceState.ACCEPTED if routed else InstanceState.IGNORED,
            analyzer=kind.name if kind is not None else "",
            file_key=key,
            sha256=sha,
            size_bytes=size,
            transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
            calling_ae_title=calling_ae[:16],
        )
        new_file = not self.files.exists(key)
        self.files.put(path, key)
        fault_point("receive.after-rename")
        try:
            self._record(row, ds)
        except DATABASE_DOWN:
            if new_file:  # no row refers to it, and the sender sends it again
                self.files.delete(key)
            raise
        fault_point("receive.after-commit")
        outcome = f"accepted for the {kind.name} analyzer" if kind is not None else (
            f"ignored: no analyzer selects SOP class {sop_class}, modality {ds.get('Modality', '')!r}, "
            f"body part {ds.get('BodyPartExamined', '')!r} (see [routing])"
        )  # fmt: skip
        log.info("stored %s of study %s from %s (%s)", sop, study, calling_ae, outcome)
        return Status.SUCCESS

    def _record(self, row: Instance, ds: Dataset) -> None:
        """Commit the instance row, its study's timers (when routed) and its event."""
        for attempt in range(3):
            try:
                with self.sessions() as session:
                    session.add(row)
                    if row.state == InstanceState.ACCEPTED:
                        self._touch_study(session, ds, row.study_instance_uid)
                    emit(session, NodeEvent(f"instance.{row.state}", row.sop_instance_uid, data={
                        "study": row.study_instance_uid, "calling_ae_title": row.calling_ae_title,
                        "bytes": row.size_bytes, "analyzer": row.analyzer, "patient_id": str(ds.get("PatientID", "")),
                    }))  # fmt: skip
                    session.commit()
                return
            except IntegrityError:  # two associations created the same study at once: the row exists now
                if attempt == 2:
                    raise
                row = Instance(**{c.key: getattr(row, c.key) for c in Instance.__table__.columns if c.key != "id"})

    @staticmethod
    def _touch_study(session: Session, ds: Dataset, uid: str) -> None:
        """Create the study or mark it receiving again: its idle timer restarts."""
        now = utcnow()
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one_or_none()
        if study is None:
            patient, issuer = patient_of(ds)
            study = Study(
                study_instance_uid=uid,
                patient_id=patient,
                issuer_of_patient_id=issuer,
                accession_number=str(ds.get("AccessionNumber", "") or "")[:16],
                study_datetime=study_datetime(ds),
                first_received_at=now,
            )
            session.add(study)
            emit(session, NodeEvent("study.receiving", uid))
        elif study.state == StudyState.COMPLETE:
            study.state = StudyState.RECEIVING
            study.first_received_at = now
            emit(session, NodeEvent("study.reopened", uid, "new instance after completion"))
        study.last_received_at = now

    def _refused(self, event: evt.Event, refusal: Refusal) -> None:
        """Record the refusal as an event (best effort: the refusal itself may be a database failure)."""
        sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        data = {"status": int(refusal.status), "calling_ae_title": event.assoc.requestor.ae_title}
        try:
            emit_now(self.sessions, NodeEvent("instance.refused", sop, refusal.comment, data))
        except DATABASE_DOWN:
            log.warning("the refusal of %s is not in the database: it is unavailable", sop)
        except Exception:  # noqa: BLE001 - the refusal is answered and logged either way
            log.exception("could not record the refusal of %s", sop)

    def handle_store(self, event: evt.Event) -> int | Dataset:
        """EVT_C_STORE: the one seam between the network and the store."""
        calling = event.assoc.requestor.ae_title
        path = Path(event.dataset_path)
        fault_point("receive.after-temp")
        try:
            outcome = self.store(path, calling)
        except DATABASE_DOWN as exc:
            log.error("could not record an instance from %s: database unavailable (%s)", calling,
                      str(exc).splitlines()[0])  # fmt: skip
            outcome = Refusal(Status.OUT_OF_RESOURCES, "database unavailable")
        except Exception:  # noqa: BLE001 - never acknowledge what was not recorded
            log.exception("could not record an instance from %s", calling)
            outcome = Refusal(Status.PROCESSING_FAILURE, "the node could not record the instance")
        if isinstance(outcome, Refusal):
            log.warning("refused C-STORE from %s: 0x%04X %s", calling, outcome.status, outcome.comment)
            self._refused(event, outcome)
            return outcome.dataset()
        return int(outcome)


def handle_echo(event: evt.Event) -> int:
    """EVT_C_ECHO: verification succeeds."""
    return int(Status.SUCCESS)


def _association_handlers(settings: Settings, sessions: sessionmaker[Session]) -> list:  # noqa: ANN001
    """Association events: a log line each; accepted and rejected ones as node events (AE title, address), a
    rejection also as an event row."""
    what = {
        evt.EVT_ACCEPTED: "accepted",
        evt.EVT_REJECTED: "rejected (calling AE title not allowed, or no acceptable context)",
        evt.EVT_RELEASED: "released",
        evt.EVT_ABORTED: "aborted",
    }

    def requested(event: evt.Event) -> None:
        if reject_unlisted_address(settings.security, event):
            _record(event, "association.rejected", "address not in security.allowed_peer_ips")

    def _record(event: evt.Event, kind: str, reason: str = "") -> None:
        requestor = event.assoc.requestor
        data = {"calling_ae_title": requestor.ae_title, "address": requestor.address, "port": requestor.port}
        if kind == "association.accepted":  # one per association: logged and audited, no row (a commit each)
            publish(NodeEvent(kind, peer(event), reason, data))
            return
        try:
            emit_now(sessions, NodeEvent(kind, peer(event), reason, data))
        except Exception:  # noqa: BLE001 - an unrecorded association event never breaks the association
            log.exception("could not record %s of %s", kind, peer(event))

    def logged(event: evt.Event) -> None:
        level = logging.WARNING if event.event in (evt.EVT_REJECTED, evt.EVT_ABORTED) else logging.INFO
        log.log(level, "association from %s %s", peer(event), what[event.event])
        if event.event == evt.EVT_ACCEPTED:
            _record(event, "association.accepted")
            for cx in event.assoc.rejected_contexts:  # the sender cannot send these: say which and why
                reason = CONTEXT_REJECTIONS.get(cx.result or 0, f"result {cx.result}")
                log.warning("association from %s: presentation context for %s rejected (%s; proposed %s)",
                            peer(event), cx.abstract_syntax, reason, ", ".join(cx.transfer_syntax) or "-")  # fmt: skip
        elif event.event == evt.EVT_REJECTED:
            _record(event, "association.rejected", what[event.event])

    return [(evt.EVT_REQUESTED, requested), *((e, logged) for e in what)]


def start_scp(settings: Settings, sessions: sessionmaker[Session]):  # noqa: ANN201 - pynetdicom's server type
    """Start the SCP in the background; returns pynetdicom's server (``.shutdown()`` stops it).

    The process must have been set up by :func:`avn_node.association.configure_process`.
    """
    receiver = Receiver(settings, sessions)
    handlers = [
        (evt.EVT_C_STORE, receiver.handle_store),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_N_EVENT_REPORT, partial(handle_event_report, settings, sessions)),
        *_association_handlers(settings, sessions),
    ]
    ae = scp_ae(settings.node.ae_title, settings.security)
    tls = server_tls(settings.security)
    transport = "TCP" if tls is None else "TLS only"
    transport += ", client certificate required" if tls is not None and settings.security.tls_ca else ""
    log.info("listening as %s on %s:%d (%s)", settings.node.ae_title, settings.node.host, settings.node.port, transport)
    return ae.start_server((settings.node.host, settings.node.port), block=False, evt_handlers=handlers,
                           ssl_context=tls)  # fmt: skip
