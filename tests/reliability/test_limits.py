"""The association limits and allow-lists of ``[security]``, proved against the node as a process: the peer
address allow-list (a connection from 127.0.0.2), ``max_associations``, ``max_pdu_bytes``, and 50 concurrent
associations of 10 instances each stored without one failure."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from tests.node.conftest import Node, wait_for

pytestmark = [pytest.mark.xdist_group("node"), pytest.mark.peers, pytest.mark.timeout(600)]

NOT_ANALYSED = {"pipeline": "analyse = false"}  # these tests are about receiving


def _ae(aet: str = "MODALITY") -> AE:
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(Verification)
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    return ae


def _associate(node: Node, source: str = "127.0.0.1", max_pdu: int = 16382):  # noqa: ANN202 - pynetdicom's type
    return _ae().associate("127.0.0.1", node.port, ae_title="AVN_NODE", bind_address=(source, 0), max_pdu=max_pdu)


def _radiograph(study: str, n: int, rng: np.random.Generator) -> Dataset:
    """A small CR hip image of its own SOP Instance UID in ``study``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = ComputedRadiographyImageStorage, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.BodyPartExamined = f"LOAD-{study[-6:]}", "Load^Test", "CR", "HIP"
    ds.InstanceNumber = n
    ds.Rows = ds.Columns = 128
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4096, (128, 128), dtype=np.uint16).tobytes()
    return ds


def test_an_address_outside_allowed_peer_ips_is_rejected_and_a_listed_one_accepted(node: Node):
    node.extra = 'allowed_peer_ips = ["127.0.0.1"]'
    node.sections = NOT_ANALYSED
    node.start()
    stranger = _associate(node, source="127.0.0.2")
    # the node answers A-ASSOCIATE-RJ and closes; on a loaded machine the requestor can see the close before it
    # reads the RJ (then pynetdicom reports an abort): either way no association, and the log says why
    assert not stranger.is_established and (stranger.is_rejected or stranger.is_aborted)
    wait_for(lambda: "address not in security.allowed_peer_ips" in node.log.read_text(), 30, "the refusal logged")
    assert "@127.0.0.2" in next(x for x in node.log.read_text().splitlines() if "allowed_peer_ips" in x)
    listed = _associate(node)
    assert listed.is_established and listed.send_c_echo().Status == 0x0000
    listed.release()


def test_max_associations_rejects_one_more_and_admits_again_once_one_is_released(node: Node):
    limit = 3
    node.extra = f"max_associations = {limit}"
    node.sections = NOT_ANALYSED
    node.start()
    # Open associations until one is refused. A TCP connection that never sends an A-ASSOCIATE-RQ (the fixture's
    # port probe) also holds a slot until the node's ACSE timeout, so the first refusal may come one early.
    held = []
    for _ in range(limit + 1):
        assoc = _associate(node)
        if not assoc.is_established:
            break
        held.append(assoc)
    assert not assoc.is_established
    # A-ASSOCIATE-RJ, transient: local limit exceeded (PS3.8 9.3.4); the sender may see the connection end first
    wait_for(lambda: "MODALITY@127.0.0.1 rejected" in node.log.read_text(), 30, "the rejection logged")
    assert limit - 1 <= len(held) <= limit
    held.pop().release()
    time.sleep(1)  # pynetdicom counts an association until its thread has ended
    again = _associate(node)
    assert again.is_established
    for a in (again, *held):
        a.release()


def test_max_pdu_bytes_is_the_maximum_length_the_node_announces_and_a_store_still_succeeds(node: Node):
    node.extra = "max_pdu_bytes = 16384"
    node.sections = NOT_ANALYSED
    node.start()
    assoc = _associate(node, max_pdu=0)  # the sender takes any PDU size; the node's limit decides
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 16384
    status = assoc.send_c_store(_radiograph(generate_uid(), 1, np.random.default_rng(0)))
    assoc.release()
    assert status.Status == 0x0000  # 32 kB of pixels arrived in PDUs of at most 16 kB


def test_fifty_concurrent_associations_of_ten_instances_are_all_stored(node: Node, record_property):
    associations, per_association = 50, 10
    node.sections = NOT_ANALYSED
    node.start()
    rng = np.random.default_rng(50)
    studies = [[_radiograph(f"1.2.826.0.1.3680043.10.511.50.{a + 100000}", n, rng) for n in range(per_association)]
               for a in range(associations)]  # fmt: skip
    together = threading.Barrier(associations, timeout=120)

    def send(datasets: list[Dataset]) -> list[int]:
        assoc = _associate(node)
        assert assoc.is_established
        try:
            together.wait()  # every association open at once before the first instance goes
            return [int(assoc.send_c_store(ds).get("Status", -1)) for ds in datasets]
        finally:
            assoc.release()

    started = time.monotonic()
    with ThreadPoolExecutor(associations) as pool:
        statuses = [s for result in pool.map(send, studies) for s in result]
    record_property("instances per second", len(statuses) / (time.monotonic() - started))
    assert statuses == [0x0000] * associations * per_association
    with sqlite3.connect(node.root / "var" / "avn-node.db") as db:
        rows = db.execute("SELECT sop_instance_uid, file_key, sha256 FROM instances WHERE state = 'accepted'")
        rows = rows.fetchall()
        (study_count,) = db.execute("SELECT COUNT(*) FROM studies").fetchone()
    assert {uid for uid, _, _ in rows} == {str(ds.SOPInstanceUID) for study in studies for ds in study}
    assert study_count == associations
    for _, key, sha in rows:
        assert hashlib.sha256((node.root / "var" / key).read_bytes()).hexdigest() == sha
