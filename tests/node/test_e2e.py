"""The node end to end with real peers: dcmtk echoscu/storescu/storescp, pynetdicom as a misbehaving sender."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import SecondaryCaptureImageStorage

from avn_node.association import any_length_uid
from avn_node.ground_truth import GroundTruth
from tests.conftest import DCMTK_TIMEOUTS, require_tool
from tests.node.conftest import Archive, Node, storescu, wait_for

# A test may start the node twice and wait twice for results (bounded inside: 60 s, 180 s each).
pytestmark = [pytest.mark.xdist_group("node"), pytest.mark.peers, pytest.mark.timeout(600)]

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
# How long to wait for results. Only a bound on waiting, not a speed requirement: another xdist worker may be
# training on the same cores (latency is measured in benchmarks/node.py).
RESULTS_WAIT_S = 180
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"


def _studies_of(phantom_set: Path) -> dict[str, list[list[Path]]]:
    """Per patient, its studies' files."""
    by_patient: dict[str, dict[str, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for r in GroundTruth.load(phantom_set).radiographs:
        by_patient[r.patient_id][r.study_instance_uid].append(phantom_set / r.file)
    return {p: list(s.values()) for p, s in by_patient.items()}


def _patient(phantom_set: Path, studies: int, radiographs: int) -> list[list[Path]]:
    for files in _studies_of(phantom_set).values():
        if len(files) == studies and sum(map(len, files)) == radiographs:
            return files
    pytest.fail(f"no phantom patient with {studies} studies and {radiographs} radiographs")


def _received(archive: Archive) -> list[Dataset]:
    """The objects at the archive; a file storescp has only begun to write is left for the next poll."""
    received = []
    for path in archive.files():
        try:
            received.append(pydicom.dcmread(path, stop_before_pixels=True))
        except (InvalidDicomError, EOFError):
            continue
    return received


def _wait_results(archive: Archive, n: int, timeout: float) -> list[Dataset]:
    wait_for(lambda: len(archive.files()) >= n, timeout, f"{n} result objects at the archive")
    time.sleep(0.5)
    return _received(archive)


def test_echoscu_gets_success_from_node(node: Node):
    node.start()
    proc = subprocess.run([require_tool("echoscu"), *DCMTK_TIMEOUTS, "-aec", "AVN_NODE", "127.0.0.1", str(node.port)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_node_returns_sr_and_captures_to_archive(node: Node, archive: Archive, phantom_set):
    (files,) = _patient(phantom_set, 1, 2)
    node.destinations = [("archive", archive.aet, archive.port)]
    node.start()
    assert storescu(node.port, files).returncode == 0
    received = _wait_results(archive, 4, RESULTS_WAIT_S)
    classes = sorted(str(ds.SOPClassUID) for ds in received)
    assert classes == sorted([SR_CLASS, SC_CLASS, SC_CLASS, SC_CLASS])  # SR, 2 CAM captures, summary
    study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    assert {str(ds.StudyInstanceUID) for ds in received} == {study}
    status = node.status()
    assert status["instances"] == {"accepted": 2} and status["deliveries"] == {"sent": 4}


def test_two_studies_of_one_patient_form_one_case_and_a_late_study_amends_the_sr(
    node: Node, archive: Archive, phantom_set
):
    first, second = _patient(phantom_set, 2, 2)
    node.destinations = [("archive", archive.aet, archive.port)]
    node.start()
    assert storescu(node.port, first).returncode == 0
    v1 = _wait_results(archive, 3, RESULTS_WAIT_S)  # SR, CAM, summary in the first study
    (sr1,) = [ds for ds in v1 if ds.SOPClassUID == SR_CLASS]
    assert storescu(node.port, second).returncode == 0
    # version 2: a new SR and summary in each study, one CAM for the new image; nothing of v1 sent again
    received = _wait_results(archive, 3 + 5, RESULTS_WAIT_S)
    uids = [str(ds.SOPInstanceUID) for ds in received]
    assert len(uids) == len(set(uids)) == 8
    srs = [ds for ds in received if ds.SOPClassUID == SR_CLASS]
    assert len(srs) == 3
    (amended,) = [
        ds for ds in srs if ds.StudyInstanceUID == sr1.StudyInstanceUID and ds.SOPInstanceUID != sr1.SOPInstanceUID
    ]
    predecessor = amended.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert predecessor.ReferencedSOPInstanceUID == sr1.SOPInstanceUID
    status = node.status()
    assert status["cases"] == {"reported": 1}
    assert status["jobs"] == {"done": 2}


@pytest.mark.parametrize("uid", ["1.2.3.abc", "1." + "2" * 198], ids=["letters", "200-characters"])
def test_node_answers_cannot_understand_for_malformed_uid_and_logs_reason(
    node: Node, phantom_set, uid: str, monkeypatch: pytest.MonkeyPatch
):
    node.start()
    ds = pydicom.dcmread(_patient(phantom_set, 1, 2)[0][0])
    ds.decompress(generate_instance_uid=False)
    ds.SOPInstanceUID = uid
    monkeypatch.setitem(_config.VALIDATORS, "UI", any_length_uid)  # this SCU sends the bad UID as a modality would
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AVN_NODE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xC000
    assert "SOP Instance UID is not a valid UID" in status.ErrorComment
    wait_for(lambda: "SOP Instance UID is not a valid UID" in node.log.read_text(), 30, "the refusal in the log")
    assert node.status()["instances"] == {}
    assert [p for p in (node.root / "var" / "tmp").rglob("*") if p.is_file()] == []  # no temp file left


def test_node_stores_other_sop_classes_as_ignored_and_duplicates_once(node: Node, phantom_set):
    node.start()
    files = _patient(phantom_set, 1, 2)[0]
    assert storescu(node.port, files).returncode == 0
    assert storescu(node.port, files).returncode == 0  # the same bytes again: idempotent
    sc = Dataset()
    sc.SOPClassUID, sc.SOPInstanceUID = SecondaryCaptureImageStorage, "1.2.826.0.1.3680043.10.511.1"
    sc.StudyInstanceUID, sc.SeriesInstanceUID = "1.2.826.0.1.3680043.10.511.2", "1.2.826.0.1.3680043.10.511.3"
    sc.Modality, sc.PatientID = "OT", "X"
    sc.file_meta = FileMetaDataset()
    sc.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(SecondaryCaptureImageStorage)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="AVN_NODE")
    assert assoc.send_c_store(sc).Status == 0x0000
    assoc.release()
    status = node.status()
    assert status["instances"] == {"accepted": 2, "ignored": 1}


def test_sigterm_mid_study_then_restart_completes_it_with_nothing_lost(node: Node, archive: Archive, phantom_set):
    (files,) = _patient(phantom_set, 1, 2)
    node.idle_seconds = 4
    node.destinations = [("archive", archive.aet, archive.port)]
    node.start()
    assert storescu(node.port, files[:1]).returncode == 0
    assert node.stop(signal.SIGTERM) == 0  # before the study counts as complete
    assert archive.files() == []
    node.start()
    assert storescu(node.port, files[1:]).returncode == 0
    expected = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}

    def final_sr_covers_both() -> bool:
        for ds in _received(archive):
            if ds.SOPClassUID == SR_CLASS:
                evidence = {i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                            for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}  # fmt: skip
                if evidence == expected:
                    return True
        return False

    wait_for(final_sr_covers_both, RESULTS_WAIT_S, "an SR covering both radiographs")
    assert node.status()["instances"] == {"accepted": 2}


def _echo(port: int, aet: str) -> subprocess.CompletedProcess:
    command = [require_tool("echoscu"), *DCMTK_TIMEOUTS, "-aet", aet, "-aec", "AVN_NODE", "127.0.0.1", str(port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_node_rejects_calling_ae_title_outside_allow_list(node: Node):
    node.extra = 'allowed_calling_aets = ["MODALITY"]'
    node.start()
    assert _echo(node.port, "STRANGER").returncode != 0
    assert _echo(node.port, "MODALITY").returncode == 0
    wait_for(lambda: "association from STRANGER@127.0.0.1 rejected" in node.log.read_text(), 30, "the rejection log")
    wait_for(lambda: "association from MODALITY@127.0.0.1 accepted" in node.log.read_text(), 30, "the acceptance log")


def test_node_stores_every_transfer_syntax_with_encoded_pixels_unchanged(node: Node, phantom_set: Path):
    node.start()
    files = sorted(phantom_set.rglob("*.dcm"))

    def encoded(paths: list[Path]) -> dict[str, tuple[str, bytes]]:
        out = {}
        for path in paths:
            ds = pydicom.dcmread(path)
            out[str(ds.SOPInstanceUID)] = (str(ds.file_meta.TransferSyntaxUID), ds.PixelData)
        return out

    sent = encoded(files)
    assert len({syntax for syntax, _ in sent.values()}) == 5
    proc = subprocess.run(
        [sys.executable, "-m", "avn_node", "send", *map(str, files), "--to", f"AVN_NODE@127.0.0.1:{node.port}"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert encoded(sorted((node.root / "var" / "instances").rglob("*.dcm"))) == sent


def test_audit_log_records_associations_instances_and_deliveries_without_patient_names(
    node: Node, archive: Archive, phantom_set
):
    audit = node.root / "audit.jsonl"
    node.extra = f'audit_log = "{audit}"\nallowed_calling_aets = ["MODALITY"]'
    node.destinations = [("archive", archive.aet, archive.port)]
    node.start()
    (files,) = _patient(phantom_set, 1, 1)
    assert _echo(node.port, "STRANGER").returncode != 0
    assert storescu(node.port, files).returncode == 0
    _wait_results(archive, 3, RESULTS_WAIT_S)
    wait_for(lambda: audit.exists() and audit.read_text().count('"delivery.done"') == 3, 30, "3 audited deliveries")
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    kinds = [e["EventTypeText"] for e in entries]
    assert kinds[0] == "node.started" and "association.rejected" in kinds and "association.accepted" in kinds
    assert {e["EventID"]["code"] for e in entries} >= {"110100", "110104", "110114"}
    stored = next(e for e in entries if e["EventTypeText"] == "instance.accepted")
    assert stored["ParticipantObject"] == str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    assert stored["Detail"]["calling_ae_title"] == "MODALITY"
    header = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert stored["ParticipantObjectPatient"]["ParticipantObjectID"] == header.PatientID
    assert "patient_id" not in stored["Detail"]
    name = str(pydicom.dcmread(files[0], stop_before_pixels=True).PatientName)
    assert name and name.split("^")[0] not in audit.read_text()
    # logrotate: move the file, send SIGHUP; the node lives on and writes the next line to a new file
    audit.rename(audit.with_name("audit.jsonl.1"))
    node.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: nothing to reopen" in node.log.read_text(), 30, "the SIGHUP logged")
    assert _echo(node.port, "MODALITY").returncode == 0 and node.process.poll() is None
    wait_for(lambda: audit.exists() and '"association.accepted"' in audit.read_text(), 30, "a line in the new file")
