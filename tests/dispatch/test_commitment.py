"""Storage commitment (PS3.4 Annex J, push model) against Orthanc: a delivery is sent only once the archive's
N-EVENT-REPORT commits it; a failure re-queues it; an unreported request is in doubt and asked again; a report
from an AE that is not the destination changes nothing."""

from __future__ import annotations

import time
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.sop_class import StorageCommitmentPushModel
from sqlalchemy import select

from avn_node.config import Destination, DispatchSettings, Settings
from avn_node.dispatch.commitment import ALL_COMMITTED, PROCESSING_FAILURE, PUSH_MODEL_INSTANCE
from avn_node.dispatch.sender import Dispatcher
from avn_node.receive.scp import start_scp
from avn_node.store.database import open_database
from avn_node.store.files import LocalFileStore
from avn_node.store.models import Case, Delivery, DeliveryState, Event, Result
from tests.conftest import OrthancServer, free_port

pytestmark = [pytest.mark.peers, pytest.mark.timeout(120)]
WAIT_S = 30


class Rig:
    """An in-process SCP and database, one result file per phantom radiograph, deliveries to Orthanc. (No
    ``configure_process``: it would move this test process's temp folder, which other fixtures use.)"""

    def __init__(self, tmp_path: Path, orthanc: OrthancServer, files: list[Path]) -> None:
        self.port = free_port()
        destination = Destination(name="archive", ae_title=orthanc.aet, host="127.0.0.1", port=orthanc.dicom_port,
                                  storage_commitment=True, storage_commitment_timeout_seconds=2)  # fmt: skip
        self.settings = Settings(
            node={"ae_title": "AVN_NODE", "host": "127.0.0.1", "port": self.port, "data_dir": str(tmp_path / "var")},
            database={"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
            dispatch=DispatchSettings(retry_first_seconds=1, retry_max_seconds=2),
            destinations=[destination],
        )  # fmt: skip
        self.sessions = open_database(self.settings.database.url)
        self.files = LocalFileStore(tmp_path / "var")
        self.server = start_scp(self.settings, self.sessions)
        self.dispatcher = Dispatcher(self.settings, self.sessions, self.files, destination, "node-a", timeout=5)
        self.uids = []
        with self.sessions() as s:
            case = Case(patient_id="P")
            s.add(case)
            s.flush()
            for path in files:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                key = f"results/x/sr-{ds.SOPInstanceUID}.dcm"
                self.files.write(path.read_bytes(), key)
                result = Result(case_id=case.id, version=1, study_instance_uid=str(ds.StudyInstanceUID), kind="cam",
                                sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
                                file_key=key)  # fmt: skip
                s.add(result)
                s.flush()
                s.add(Delivery(result_id=result.id, destination="archive"))
                self.uids.append(str(ds.SOPInstanceUID))
            s.commit()

    def deliveries(self) -> list[Delivery]:
        with self.sessions() as s:
            return list(s.scalars(select(Delivery).order_by(Delivery.id)))

    def events(self, kind: str) -> list[Event]:
        with self.sessions() as s:
            return list(s.scalars(select(Event).where(Event.kind == kind)))

    def dispatch_until(self, done, what: str) -> None:  # noqa: ANN001 - a predicate
        deadline = time.monotonic() + WAIT_S
        while not done():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.deliveries()}"
            self.dispatcher.run_once()
            time.sleep(0.2)


@pytest.fixture
def rig(tmp_path: Path, orthanc: OrthancServer, phantom_set: Path):
    r = Rig(tmp_path, orthanc, sorted(phantom_set.rglob("*.dcm"))[:2])
    yield r
    r.server.shutdown()


def _all(rig: Rig, state: str) -> bool:
    return all(d.state == state for d in rig.deliveries())


def test_a_delivery_is_sent_only_once_the_archive_commits_it(rig: Rig, orthanc: OrthancServer):
    orthanc.add_modality("avn", "AVN_NODE", rig.port)
    assert rig.dispatcher.run_once() == 4  # two stored, then two asked for in one transaction
    assert {d.state for d in rig.deliveries()} <= {DeliveryState.COMMITTING, DeliveryState.SENT}
    rig.dispatch_until(lambda: _all(rig, DeliveryState.SENT), "the commitment report")
    deliveries = rig.deliveries()
    assert all(d.committed_at is not None and d.committed_at >= d.sent_at for d in deliveries)
    assert len({d.commitment_uid for d in deliveries}) == 1
    assert len(rig.events("delivery.stored")) == 2
    assert all(e.data["committed"] for e in rig.events("delivery.done"))


def test_an_object_the_archive_does_not_commit_is_stored_again(rig: Rig, orthanc: OrthancServer):
    orthanc.add_modality("avn", "AVN_NODE", rig.port)
    rig.dispatch_until(lambda: _all(rig, DeliveryState.SENT), "both committed")
    first = rig.deliveries()[0]
    instance = next(i for i in orthanc.get("/instances")
                    if orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] == rig.uids[0])  # fmt: skip
    orthanc._request(f"/instances/{instance}", method="DELETE")  # lost by the archive after its commitment
    with rig.sessions() as s:  # as `avn-node deliveries retry` would, but straight to asking for commitment
        delivery = s.get(Delivery, first.id)
        delivery.state, delivery.next_attempt_at = DeliveryState.COMMITTING, delivery.sent_at
        s.commit()
    rig.dispatch_until(lambda: rig.events("delivery.failed"), "the failure report")
    failed = rig.deliveries()[0]
    assert failed.state in (DeliveryState.PENDING, DeliveryState.COMMITTING, DeliveryState.SENT)
    assert "not committed by the archive: 0x0112 no such object instance" in rig.events("delivery.failed")[0].detail
    rig.dispatch_until(lambda: _all(rig, DeliveryState.SENT), "stored again and committed")
    assert rig.deliveries()[0].attempts == 2
    assert len(orthanc.get("/instances")) == 2


def test_an_unreported_commitment_is_in_doubt_and_asked_for_again(rig: Rig, orthanc: OrthancServer):
    orthanc.add_modality("avn", "AVN_NODE", free_port())  # Orthanc's reports go nowhere
    rig.dispatcher.run_once()
    asked = {d.commitment_uid for d in rig.deliveries()}
    time.sleep(2.5)  # past storage_commitment_timeout_seconds
    orthanc.add_modality("avn", "AVN_NODE", rig.port)
    rig.dispatch_until(lambda: _all(rig, DeliveryState.SENT), "the second request's report")
    assert len(rig.events("delivery.in_doubt")) == 2
    assert {d.commitment_uid for d in rig.deliveries()}.isdisjoint(asked)
    assert all(d.attempts == 1 for d in rig.deliveries())  # asked again, never stored again


def test_a_report_from_an_ae_that_is_not_the_destination_changes_nothing(rig: Rig, orthanc: OrthancServer):
    rig.dispatcher.run_once()  # stored and asked for; Orthanc cannot report (the node is no modality of it)
    transaction = rig.deliveries()[0].commitment_uid
    report = Dataset()
    report.TransactionUID = transaction
    report.ReferencedSOPSequence = []
    for uid in rig.uids:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.1.1", uid
        report.ReferencedSOPSequence.append(item)
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(StorageCommitmentPushModel)
    assoc = ae.associate("127.0.0.1", rig.port, ae_title="AVN_NODE",
                         ext_neg=[build_role(StorageCommitmentPushModel, scp_role=True)])  # fmt: skip
    assert assoc.is_established
    status, _ = assoc.send_n_event_report(report, ALL_COMMITTED, StorageCommitmentPushModel, PUSH_MODEL_INSTANCE)
    assoc.release()
    assert status.Status == PROCESSING_FAILURE
    assert all(d.state == DeliveryState.COMMITTING for d in rig.deliveries())
