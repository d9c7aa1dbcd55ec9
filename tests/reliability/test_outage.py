"""Archive outages and a full disk, with the node as a process: a hung archive stalls no analysis and gets each
result once when it returns, with back-off read from the recorded attempts; a delivery past ``give_up_hours`` is
dead-lettered, shown by ``status`` and sent by ``deliveries retry``; below ``min_free_disk_mb`` a C-STORE is
refused with the reason and accepted again, without a restart, once space returns."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from avn_node.ground_truth import GroundTruth, RadiographTruth
from tests.conftest import DCMTK_SCP_TIMEOUTS, free_port, require_tool
from tests.node.conftest import ROOT, Archive, Node, port_open, stop_process, storescu, wait_for

pytestmark = [pytest.mark.xdist_group("node"), pytest.mark.peers, pytest.mark.timeout(600)]

RESULTS_WAIT_S = 180


def _one_radiograph_studies(phantom_set: Path, n: int) -> list[Path]:
    """The files of ``n`` one-radiograph studies of different patients."""
    by_study: dict[str, list[RadiographTruth]] = {}
    for r in GroundTruth.load(phantom_set).radiographs:
        by_study.setdefault(r.study_instance_uid, []).append(r)
    singles = [rs[0] for rs in by_study.values() if len(rs) == 1]
    patients = {r.patient_id: r for r in singles}
    assert len(patients) >= n, "the phantom set has too few one-radiograph studies"
    return [phantom_set / r.file for r in list(patients.values())[:n]]


def _start_archive(folder: Path, port: int) -> subprocess.Popen:
    folder.mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [require_tool("storescp"), *DCMTK_SCP_TIMEOUTS, "-aet", "ARCHIVE", "-od", str(folder), "+uf", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(lambda: port_open(port), 30, "storescp to listen")
    return proc


@pytest.fixture
def hung_archive() -> Iterator[socket.socket]:
    """A port that accepts TCP connections and never answers (an archive hung mid-way)."""
    s = socket.socket()
    s.bind(("127.0.0.1", free_port()))
    s.listen(16)
    try:
        yield s
    finally:
        s.close()


def _db(node: Node) -> sqlite3.Connection:
    return sqlite3.connect(node.root / "var" / "avn-node.db")


def _reported_cases(node: Node) -> int:
    with _db(node) as db:
        return db.execute("SELECT COUNT(*) FROM cases WHERE state = 'reported'").fetchone()[0]


def _retry_delays(node: Node) -> dict[str, list[float]]:
    """Per delivery, the recorded waits before each next attempt."""
    with _db(node) as db:
        rows = db.execute("SELECT subject, json_extract(data, '$.retry_in_seconds') FROM events "
                          "WHERE kind = 'delivery.failed' ORDER BY id").fetchall()  # fmt: skip
    delays: dict[str, list[float]] = {}
    for subject, seconds in rows:
        delays.setdefault(subject, []).append(seconds)
    return delays


def test_a_hung_archive_stalls_no_analysis_and_gets_each_result_once_with_back_off_when_it_returns(
    node: Node, phantom_set: Path, hung_archive: socket.socket, tmp_path: Path
):
    first, second = _one_radiograph_studies(phantom_set, 2)
    port = hung_archive.getsockname()[1]
    node.destinations = [("archive", "ARCHIVE", port)]
    node.sections = {"dispatch": "retry_max_seconds = 4"}
    node.start()
    assert storescu(node.port, [first]).returncode == 0
    wait_for(lambda: _reported_cases(node) == 1, RESULTS_WAIT_S, "the first study's results")
    wait_for(lambda: len(_retry_delays(node)) == 3, 120, "the first, hung, attempt to fail")  # SR, capture, summary
    # the dispatcher has just begun another hung attempt; analysis goes on meanwhile
    assert storescu(node.port, [second]).returncode == 0
    wait_for(lambda: _reported_cases(node) == 2, RESULTS_WAIT_S, "the second study's results during the outage")

    hung_archive.close()
    archive = Archive(tmp_path / "archive", port)
    proc = _start_archive(archive.folder, port)
    try:
        wait_for(lambda: node.status()["deliveries"] == {"sent": 6}, RESULTS_WAIT_S, "every result delivered")
    finally:
        stop_process(proc)
    uids = Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in archive.files())
    assert len(uids) == 6 and set(uids.values()) == {1}, uids  # each result once, none twice
    for delays in _retry_delays(node).values():
        # doubling from retry_first_seconds = 1 up to retry_max_seconds = 4, counted from each attempt's end
        assert delays == [min(1.0 * 2**i, 4.0) for i in range(len(delays))], delays


def _status(node: Node) -> dict:
    out = subprocess.run([sys.executable, "-m", "avn_node", "status", "--config", str(node.config)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    return {"text": out.stdout, **node.status()}


def test_a_delivery_past_give_up_is_dead_lettered_shown_by_status_and_sent_by_deliveries_retry(
    node: Node, phantom_set: Path, tmp_path: Path
):
    (study,) = _one_radiograph_studies(phantom_set, 1)
    port = free_port()  # nothing listens: the archive is down
    node.destinations = [("archive", "ARCHIVE", port)]
    node.sections = {"dispatch": "give_up_hours = 0.0003"}  # about one second
    node.start()
    assert storescu(node.port, [study]).returncode == 0
    wait_for(lambda: node.status()["deliveries"] == {"dead": 3}, RESULTS_WAIT_S, "three dead-lettered deliveries")
    status = _status(node)
    assert "dead" in status["text"] and any("no association" in f for f in status["failures"]), status["text"]

    archive = Archive(tmp_path / "archive", port)
    proc = _start_archive(archive.folder, port)
    try:
        retry = subprocess.run(
            [sys.executable, "-m", "avn_node", "deliveries", "retry", "--all", "--config", str(node.config)],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert retry.returncode == 0 and "3 deliveries re-queued" in retry.stdout, retry.stdout + retry.stderr
        wait_for(lambda: node.status()["deliveries"] == {"sent": 3}, RESULTS_WAIT_S, "the retried deliveries sent")
    finally:
        stop_process(proc)
    assert len(archive.files()) == 3


def test_below_the_disk_watermark_a_store_is_refused_with_the_reason_and_accepted_again_when_space_returns(
    node: Node, phantom_set: Path, tmp_path: Path
):
    first, second = _one_radiograph_studies(phantom_set, 2)
    free_mb = shutil.disk_usage(tmp_path).free / 2**20
    node.min_free_disk_mb = int(free_mb - 400)  # met now; not once 800 MB of ballast fill the disk
    node.start()
    ballast = tmp_path / "ballast"
    with ballast.open("wb") as f:
        os.posix_fallocate(f.fileno(), 0, 800 * 2**20)
    try:
        refused = storescu(node.port, [first])
        assert refused.returncode != 0
        wait_for(lambda: "below min_free_disk_mb" in node.log.read_text(), 30, "the refusal with its reason")
        line = next(x for x in node.log.read_text().splitlines() if "below min_free_disk_mb" in x)
        assert "0xA700" in line and f"min_free_disk_mb {node.min_free_disk_mb:g}" in line, line
    finally:
        ballast.unlink()
    assert storescu(node.port, [first, second]).returncode == 0  # the same node, no restart
    assert node.status()["instances"] == {"accepted": 2}
    assert "Traceback" not in node.log.read_text()
