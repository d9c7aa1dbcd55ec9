"""Crash consistency: the node killed (as by ``kill -9``) at each fault point of a study's life, restarted, and
nothing acknowledged lost, no result duplicated — against dcmtk storescp (``+uf`` keeps every re-delivery as a
file of its own) and Orthanc (which answers the C-FIND that settles a delivery in doubt)."""

from __future__ import annotations

import hashlib
import sqlite3
from collections import Counter
from pathlib import Path

import pydicom
import pytest

from avn_node.ground_truth import GroundTruth
from tests.conftest import OrthancServer
from tests.node.conftest import Archive, Node, _uncompressed, storescu, wait_for

pytestmark = [pytest.mark.xdist_group("node"), pytest.mark.peers, pytest.mark.timeout(600)]

RESULTS_WAIT_S = 180
STUDIES = 3


def _three_studies(phantom_set: Path) -> list[list[Path]]:
    """The files of :data:`STUDIES` one-study patients, one list per study (uncompressed copies)."""
    by_study: dict[str, list[Path]] = {}
    patients: dict[str, set[str]] = {}
    for r in GroundTruth.load(phantom_set).radiographs:
        by_study.setdefault(r.study_instance_uid, []).append(_uncompressed(phantom_set / r.file))
        patients.setdefault(r.patient_id, set()).add(r.study_instance_uid)
    single = [next(iter(s)) for s in patients.values() if len(s) == 1]
    return [by_study[s] for s in single[:STUDIES]]


def _expected_results(studies: list[list[Path]]) -> int:
    return sum(len(files) + 2 for files in studies)  # per study: SR, a capture per radiograph, the summary


def _send_each(node: Node, studies: list[list[Path]]) -> dict[Path, bool]:
    """Send every file in an association of its own, as a modality retrying per image; file → acknowledged."""
    return {f: storescu(node.port, [f]).returncode == 0 for files in studies for f in files}


def _pixel_digest(path: Path) -> str:
    return hashlib.sha256(pydicom.dcmread(path).PixelData).hexdigest()


def _check_store(node: Node, sent: dict[Path, bool]) -> None:
    """Every acknowledged instance is stored, pixels unchanged; the database passes its integrity check."""
    data = node.root / "var"
    with sqlite3.connect(data / "avn-node.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        stored = {sop: key for sop, key in db.execute("SELECT sop_instance_uid, file_key FROM instances")}
    for path, acknowledged in sent.items():
        sop = str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)
        if acknowledged:
            assert sop in stored, f"acknowledged {sop} was lost"
            assert _pixel_digest(data / stored[sop]) == _pixel_digest(path)
    assert [p for p in (data / "tmp").rglob("*") if p.is_file()] == [], "temp debris"


def settled(node: Node, db: sqlite3.Connection, instances: int) -> bool:
    """``instances`` images analysed, no job open, no delivery pending."""
    (covered,) = db.execute("SELECT COALESCE(SUM(analysed_instances), 0) FROM studies").fetchone()
    (open_jobs,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')").fetchone()
    return covered == instances and open_jobs == 0 and node.status()["deliveries"].get("pending", 0) == 0


def _crash_and_recover(node: Node, fault: str, studies: list[list[Path]]) -> dict[Path, bool]:
    node.env = {"AVN_FAULT": fault}
    node.start()
    sent = _send_each(node, studies)
    wait_for(lambda: node.process.poll() is not None, RESULTS_WAIT_S, f"the node to die at {fault}")
    assert "AVN_FAULT: dying at " + fault in node.log.read_text()
    node.env = {}
    node.start()
    retried = _send_each(node, [[f for f, ok in sent.items() if not ok]])  # the modality sends again
    return {**sent, **retried}


@pytest.mark.parametrize(
    "fault",
    [
        "receive.after-temp",
        "receive.after-rename",
        "receive.after-commit",
        "analyse.mid-analysis",
        "analyse.between-results",
        "dispatch.after-send",
    ],
)
def test_killed_at_a_fault_point_the_node_loses_nothing_and_duplicates_no_result(
    node: Node, archive: Archive, phantom_set: Path, fault: str, record_property
):
    studies = _three_studies(phantom_set)
    node.destinations = [("archive", archive.aet, archive.port)]
    sent = _crash_and_recover(node, fault, studies)
    assert all(sent.values()), "a file the modality sent again was not acknowledged"
    with sqlite3.connect(node.root / "var" / "avn-node.db") as db:
        wait_for(lambda: settled(node, db, len(sent)), RESULTS_WAIT_S, "every image analysed and every result sent")
        recorded, redelivered = check_results(db, archive)
    _check_store(node, sent)
    assert recorded >= _expected_results(studies)
    record_property("re-deliveries", redelivered)  # same UID again (no C-FIND here)


def check_results(db: sqlite3.Connection, archive: Archive) -> tuple[int, int]:
    """No failed job, one SR per study and version, and the archive holding exactly the result UIDs recorded;
    the number of results and of re-deliveries (a UID the archive received again)."""
    recorded = {uid for (uid,) in db.execute("SELECT sop_instance_uid FROM results")}
    per_version = db.execute(
        "SELECT COUNT(*) FROM results WHERE kind = 'sr' GROUP BY case_id, version, study_instance_uid"
    ).fetchall()
    (failed,) = db.execute("SELECT COUNT(*) FROM jobs WHERE state = 'failed'").fetchone()
    assert failed == 0
    assert set(per_version) == {(1,)}, "two SRs for one study and version"
    delivered = Counter(_uid(p) for p in archive.files())
    assert set(delivered) == recorded, "the archive holds a result UID the node did not record, or lacks one"
    return len(recorded), sum(delivered.values()) - len(delivered)


def _uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_a_delivery_in_doubt_is_settled_by_c_find_and_not_sent_again(
    node: Node, orthanc: OrthancServer, phantom_set: Path
):
    node.destinations = [("archive", orthanc.aet, orthanc.dicom_port)]
    check_doubt_settled_by_query(node, orthanc, _three_studies(phantom_set)[:1])


def check_doubt_settled_by_query(node: Node, archive: OrthancServer, studies: list[list[Path]]) -> None:
    """Killed right after sending, restarted: every result in doubt is found at ``archive`` by a query (C-FIND or
    QIDO-RS) and none is sent twice."""
    _crash_and_recover(node, "dispatch.after-send", studies)
    expected = _expected_results(studies)
    wait_for(lambda: node.status()["deliveries"] == {"sent": expected}, RESULTS_WAIT_S, "every delivery sent")
    with sqlite3.connect(node.root / "var" / "avn-node.db") as db:
        settled = [row[0] for row in db.execute(
            "SELECT json_extract(data, '$.found_by_c_find') FROM events WHERE kind = 'delivery.done' "
            "AND json_extract(data, '$.in_doubt')"
        )]  # fmt: skip
    # the SR goes first, alone: the results of the send cut short are in doubt, and each was found at the archive
    assert settled and set(settled) == {1}, settled
    assert len(archive.get("/instances")) == expected
