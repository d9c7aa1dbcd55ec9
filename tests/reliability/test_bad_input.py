"""The bad-input corpus (:mod:`tests.reliability.corpus`) sent to the node as a process, each file on an
association of its own: the status the sender gets, the log line naming the reason, the final state, and the node
still answering C-ECHO after every file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from avn_node.association import any_length_uid
from avn_node.ground_truth import GroundTruth
from tests.node.conftest import Archive, Node, _uncompressed, wait_for
from tests.reliability.corpus import Item, Outcome, build, table

pytestmark = [pytest.mark.xdist_group("node"), pytest.mark.peers, pytest.mark.timeout(600)]

RESULTS_WAIT_S = 300
NOT_ANALYSED_TEXT = b"could not be analysed"


def _sources(phantom_set: Path) -> tuple[Path, Path]:
    """An AP radiograph (uncompressed) and a JPEG 2000 radiograph of the phantom set."""
    radiographs = GroundTruth.load(phantom_set).radiographs
    ap = next(r for r in radiographs if r.view == "AP")
    j2k = next(
        phantom_set / r.file for r in radiographs
        if read_file_meta_info(phantom_set / r.file).TransferSyntaxUID.startswith("1.2.840.10008.1.2.4.9")
    )  # fmt: skip
    return _uncompressed(phantom_set / ap.file), j2k


def _association(port: int, aet: str, sop_class: str, transfer_syntax: str):  # noqa: ANN202 - pynetdicom's type
    ae = AE(ae_title=aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(sop_class, transfer_syntax)
    return ae.associate("127.0.0.1", port, ae_title="AVN_NODE")


def _send(port: int, item: Item) -> int | None:
    """The status the node answers to ``item``'s file, sent as raw bytes; None when no presentation context was
    accepted (pynetdicom then aborts the association it requested)."""
    meta = read_file_meta_info(item.file)
    assoc = _association(port, item.aet, meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(item.file)
    finally:
        assoc.release()
    return int(status.Status) if "Status" in status else -1  # -1: no response at all (aborted)


def _echo(port: int) -> bool:
    assoc = _association(port, "ECHOER", Verification, pydicom.uid.ImplicitVRLittleEndian)
    if not assoc.is_established:
        return False
    try:
        return assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


def _sr_texts(archive: Archive) -> dict[str, bytes]:
    """Study Instance UID → bytes of the SR the archive holds for it (files still being written are skipped)."""
    texts = {}
    for path in archive.files():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - storescp is still writing it
            continue
        if ds.Modality == "SR":
            texts[str(ds.StudyInstanceUID)] = path.read_bytes()
    return texts


def _final_state(item: Item, status: int | None, db: sqlite3.Connection, srs: dict[str, bytes]) -> str:
    if status is None:
        return Outcome.NOT_SENT
    states = {s for (s,) in db.execute("SELECT state FROM instances WHERE study_instance_uid = ?",
                                      (item.study_instance_uid,))}  # fmt: skip
    if not states or status != 0:
        return Outcome.REFUSED if not states else f"status 0x{status:04X} but stored"
    if states == {"ignored"}:
        return Outcome.IGNORED
    sr = srs.get(item.study_instance_uid)
    if sr is None:
        return "stored, no SR"
    return Outcome.NOT_ANALYSABLE if NOT_ANALYSED_TEXT in sr else Outcome.ANALYSED


def _log_names(item: Item, log: str) -> bool:
    """The node's log has a line about ``item`` (its AE title or SOP Instance UID) with the expected reason, and
    one saying so for an image that could not be analysed."""
    lines = log.splitlines()
    about = [line for line in lines if item.aet in line or item.sop_instance_uid in line]
    named = any(item.log in line for line in about) if item.log else True
    if item.outcome == Outcome.NOT_ANALYSABLE:
        named = named and any("could not be analysed" in line for line in about)
    return named


def test_every_bad_input_gets_its_status_a_log_line_with_the_reason_and_its_final_state(
    node: Node, archive: Archive, phantom_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    items = build(tmp_path / "corpus", *_sources(phantom_set))
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send each file's bytes as they are
    monkeypatch.setitem(_config.VALIDATORS, "UI", any_length_uid)  # and its bad UIDs, as a modality would
    node.destinations = [("archive", archive.aet, archive.port)]
    node.start()

    statuses, echoed = {}, {}
    for item in items:
        statuses[item.name] = _send(node.port, item)
        echoed[item.name] = _echo(node.port)
    analysable = {i.study_instance_uid for i in items if i.outcome in (Outcome.ANALYSED, Outcome.NOT_ANALYSABLE)}
    wait_for(lambda: analysable <= set(_sr_texts(archive)), RESULTS_WAIT_S, "an SR for every analysable study")
    wait_for(lambda: node.status()["deliveries"].get("pending", 0) == 0, RESULTS_WAIT_S, "every delivery sent")

    log = node.log.read_text()
    srs = _sr_texts(archive)
    with sqlite3.connect(node.root / "var" / "avn-node.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        finals = {i.name: _final_state(i, statuses[i.name], db, srs) for i in items}
    measured = {
        i.name: ("not sent (no context)" if statuses[i.name] is None else f"0x{statuses[i.name]:04X}", finals[i.name])
        for i in items
    }
    (node.root / "corpus.md").write_text(table(items, measured) + "\n")  # the measured table, for the README
    print(table(items, measured))

    wrong = [
        f"{i.name}: status {measured[i.name][0]} (want {i.status}), state {finals[i.name]!r} (want {i.outcome!r})"
        for i in items
        if statuses[i.name] != i.status or finals[i.name] != i.outcome
    ]
    unnamed = [i.name for i in items if not _log_names(i, log)]
    assert wrong == [], wrong
    assert unnamed == [], f"no log line naming the reason for {unnamed}"
    assert all(echoed.values()), [n for n, ok in echoed.items() if not ok]
    assert node.process.poll() is None, "the node died"
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:4000]
    assert [p for p in (node.root / "var" / "tmp").rglob("*") if p.is_file()] == [], "temp debris"
