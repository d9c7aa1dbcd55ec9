"""The SCP: one AE built from settings, one C-STORE handler that writes durably and only then succeeds.

pynetdicom streams each dataset to a temp file inside ``data_dir`` (``STORE_RECV_CHUNKED_DATASET``); the
handler checks watermark and size, reads the header for UIDs, fsyncs, renames into the store, commits the
row, and answers. Pixels are never decoded here.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom.sop_class import Verification
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from avn_node.config import Settings
from avn_node.receive import RADIOGRAPH_CLASSES
from avn_node.receive.statuses import Refusal, Status
from avn_node.store.files import InvalidUidError, checked_uid, durable_move, instance_path, sha256_of
from avn_node.store.models import Event, Instance, InstanceState, Study, StudyState, utcnow

log = logging.getLogger("avn_node.receive")


def study_datetime(ds: Dataset) -> datetime | None:
    """Study Date + Study Time as a datetime (read as UTC: only differences matter), or None."""
    date = str(ds.get("StudyDate", "") or "")
    time = str(ds.get("StudyTime", "") or "").split(".")[0].ljust(6, "0")[:6]
    try:
        return datetime.strptime(date + time, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


class Receiver:
    """Turns a received temp file into a stored instance and a committed row."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions

    def routed(self, ds: Dataset) -> bool:
        """Within ``[routing]``: a CR/DX image of an allowed modality and body part."""
        routing = self.settings.routing
        return (
            str(ds.get("SOPClassUID", "")) in RADIOGRAPH_CLASSES
            and str(ds.get("Modality", "")).upper() in {m.upper() for m in routing.modalities}
            and str(ds.get("BodyPartExamined", "") or "").upper() in {b.upper() for b in routing.body_parts}
        )

    def store(self, path: Path, calling_ae: str) -> Status | Refusal:
        """Store the Part 10 file at ``path`` (it is moved); the status to answer."""
        security = self.settings.security
        data_dir = self.settings.node.data_dir
        free_mb = shutil.disk_usage(data_dir).free / 2**20
        if free_mb < security.min_free_disk_mb:
            return Refusal(Status.OUT_OF_RESOURCES, f"free disk {free_mb:.0f} MB below min_free_disk_mb")
        size = path.stat().st_size
        if size > security.max_dataset_mb * 2**20:
            return Refusal(Status.OUT_OF_RESOURCES, f"dataset of {size / 2**20:.0f} MB over max_dataset_mb")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the peer's data
            return Refusal(Status.CANNOT_UNDERSTAND, f"header cannot be parsed: {type(exc).__name__}")
        try:
            sop = checked_uid(ds.get("SOPInstanceUID"), "SOP Instance UID")
            sop_class = checked_uid(ds.get("SOPClassUID"), "SOP Class UID")
            study = checked_uid(ds.get("StudyInstanceUID"), "Study Instance UID")
            series = checked_uid(ds.get("SeriesInstanceUID"), "Series Instance UID")
        except InvalidUidError as exc:
            return Refusal(Status.CANNOT_UNDERSTAND, str(exc))
        sha = sha256_of(path)
        routed = self.routed(ds)
        with self.sessions() as session:
            known = session.scalars(
                select(Instance).where(Instance.sop_instance_uid == sop, Instance.state != InstanceState.PURGED)
            ).all()
        if any(i.sha256 == sha for i in known):
            log.info("duplicate instance %s from %s: identical bytes, already stored", sop, calling_ae)
            return Status.SUCCESS
        if known:
            log.warning("instance %s from %s: same SOP Instance UID, different bytes; both kept", sop, calling_ae)
        destination = instance_path(data_dir, study, series, sop, sha)
        durable_move(path, destination)
        row = Instance(
            sop_instance_uid=sop,
            sop_class_uid=sop_class,
            study_instance_uid=study,
            series_instance_uid=series,
            modality=str(ds.get("Modality", ""))[:16],
            state=InstanceState.ACCEPTED if routed else InstanceState.IGNORED,
            path=str(destination),
            sha256=sha,
            size_bytes=size,
            transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
            calling_ae_title=calling_ae[:16],
        )
        for attempt in range(3):
            try:
                with self.sessions() as session:
                    session.add(row)
                    if routed:
                        self._touch_study(session, ds, study)
                    session.commit()
                break
            except IntegrityError:  # two associations created the same study at once: the row exists now
                if attempt == 2:
                    raise
                row = Instance(**{c.key: getattr(row, c.key) for c in Instance.__table__.columns if c.key != "id"})
        log.info("stored %s of study %s from %s (%s)", sop, study, calling_ae, "accepted" if routed else "ignored")
        return Status.SUCCESS

    @staticmethod
    def _touch_study(session: Session, ds: Dataset, uid: str) -> None:
        """Create the study or mark it receiving again: its idle timer restarts."""
        now = utcnow()
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one_or_none()
        if study is None:
            study = Study(
                study_instance_uid=uid,
                patient_id=str(ds.get("PatientID", ""))[:64],
                issuer_of_patient_id=str(ds.get("IssuerOfPatientID", ""))[:64],
                study_datetime=study_datetime(ds),
                first_received_at=now,
            )
            session.add(study)
            session.add(Event(kind="study.receiving", subject=uid))
        elif study.state == StudyState.COMPLETE:
            study.state = StudyState.RECEIVING
            study.first_received_at = now
            session.add(Event(kind="study.reopened", subject=uid, detail="new instance after completion"))
        study.last_received_at = now

    def handle_store(self, event: evt.Event) -> int | Dataset:
        """EVT_C_STORE: the one seam between the network and the store."""
        calling = event.assoc.requestor.ae_title
        path = Path(event.dataset_path)
        try:
            outcome = self.store(path, calling)
        except Exception:  # noqa: BLE001 - never acknowledge what was not recorded
            log.exception("could not record an instance from %s", calling)
            outcome = Refusal(Status.PROCESSING_FAILURE, "the node could not record the instance")
        if isinstance(outcome, Refusal):
            log.warning("refused C-STORE from %s: 0x%04X %s", calling, outcome.status, outcome.comment)
            return outcome.dataset()
        return int(outcome)


def handle_echo(event: evt.Event) -> int:
    """EVT_C_ECHO: verification succeeds."""
    return int(Status.SUCCESS)


def build_ae(settings: Settings) -> AE:
    """The AE: every storage SOP class in every transfer syntax, Verification, limits from ``[security]``."""
    security = settings.security
    ae = AE(ae_title=settings.node.ae_title)
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    ae.add_supported_context(Verification)
    ae.maximum_associations = security.max_associations
    ae.maximum_pdu_size = security.max_pdu_bytes
    ae.require_calling_aet = list(security.allowed_calling_aets)
    if not security.allowed_calling_aets:
        log.warning("security.allowed_calling_aets is empty: any calling AE title may store")
    return ae


# A-ASSOCIATE-RJ parameters (PS3.8 9.3.4)
REJECTED_PERMANENT = 0x01
SERVICE_USER = 0x01
NO_REASON_GIVEN = 0x01


def _peer(event: evt.Event) -> str:
    return f"{event.assoc.requestor.ae_title}@{event.assoc.requestor.address}"


def _check_peer(settings: Settings, event: evt.Event) -> None:
    """EVT_REQUESTED: pynetdicom has no IP allow-list, so reject associations from other addresses."""
    allowed = settings.security.allowed_peer_ips
    address = event.assoc.requestor.address
    if allowed and address not in allowed:
        log.warning("rejected association from %s: address not in security.allowed_peer_ips", _peer(event))
        event.assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, NO_REASON_GIVEN)


def _log_association(event: evt.Event) -> None:
    """One log line per association event: accepted, rejected, released, aborted (AE titles, addresses)."""
    what = {
        evt.EVT_ACCEPTED: "accepted",
        evt.EVT_REJECTED: "rejected (calling AE title not allowed, or no acceptable context)",
        evt.EVT_RELEASED: "released",
        evt.EVT_ABORTED: "aborted",
    }[event.event]
    level = logging.WARNING if event.event in (evt.EVT_REJECTED, evt.EVT_ABORTED) else logging.INFO
    log.log(level, "association from %s %s", _peer(event), what)


def start_scp(settings: Settings, sessions: sessionmaker[Session]):  # noqa: ANN201 - pynetdicom's server type
    """Start the SCP in the background; returns pynetdicom's server (``.shutdown()`` stops it)."""
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    tempfile.tempdir = str(settings.tmp_dir)  # pynetdicom's temp files: same filesystem as the store
    _config.STORE_RECV_CHUNKED_DATASET = True
    receiver = Receiver(settings, sessions)
    handlers = [
        (evt.EVT_C_STORE, receiver.handle_store),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_REQUESTED, lambda event: _check_peer(settings, event)),
        *((e, _log_association) for e in (evt.EVT_ACCEPTED, evt.EVT_REJECTED, evt.EVT_RELEASED, evt.EVT_ABORTED)),
    ]
    ae = build_ae(settings)
    log.info("listening as %s on %s:%d", settings.node.ae_title, settings.node.host, settings.node.port)
    return ae.start_server((settings.node.host, settings.node.port), block=False, evt_handlers=handlers)
