"""DICOMweb destinations: the node sends its results by STOW-RS to Orthanc's DICOMweb plugin (basic
credentials), records a refusal with its HTTP status and backs off, and settles a delivery in doubt by QIDO-RS."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import OrthancServer
from tests.node.conftest import Node, storescu, wait_for
from tests.reliability.test_crash import _expected_results, _three_studies, check_doubt_settled_by_query

pytestmark = [pytest.mark.xdist_group("node"), pytest.mark.peers, pytest.mark.timeout(600)]
WAIT_S = 180


def _stow(orthanc: OrthancServer, password: str) -> str:
    return (f'[[destinations]]\nname = "web"\nkind = "stow-rs"\nurl = "http://127.0.0.1:{orthanc.http_port}/dicom-web"\n'
            f'username = "avn"\npassword = "{password}"\n')  # fmt: skip


def test_results_reach_a_dicomweb_archive_by_stow_rs_each_once(
    node: Node, orthanc_dicomweb: OrthancServer, phantom_set: Path
):
    studies = _three_studies(phantom_set)[:1]
    node.tail = _stow(orthanc_dicomweb, "secret")
    node.start()
    assert storescu(node.port, studies[0]).returncode == 0
    expected = _expected_results(studies)
    wait_for(lambda: node.status()["deliveries"] == {"sent": expected}, WAIT_S, "every result sent by STOW-RS")
    with sqlite3.connect(node.root / "var" / "avn-node.db") as db:
        recorded = {uid for (uid,) in db.execute("SELECT sop_instance_uid FROM results")}
    held = {orthanc_dicomweb.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
            for i in orthanc_dicomweb.get("/instances")}  # fmt: skip
    assert held == recorded  # the results only (the radiographs went to the node, not to this archive)
    assert len(orthanc_dicomweb.get("/instances")) == expected  # each once


def test_a_refused_stow_is_recorded_with_its_http_status_and_retried_with_back_off(
    node: Node, orthanc_dicomweb: OrthancServer, phantom_set: Path
):
    node.tail = _stow(orthanc_dicomweb, "wrong")
    node.start()
    assert storescu(node.port, _three_studies(phantom_set)[0]).returncode == 0
    wait_for(lambda: "HTTP 401" in node.log.read_text(), WAIT_S, "the refusal in the log")
    with sqlite3.connect(node.root / "var" / "avn-node.db") as db:
        tried_again = "SELECT MIN(attempts) >= 2 FROM deliveries WHERE state = 'pending'"
        wait_for(lambda: db.execute(tried_again).fetchone()[0] == 1, WAIT_S, "a second attempt after 1 s")
        errors = {e for (e,) in db.execute("SELECT last_error FROM deliveries")}
        assert errors == {"not stored: HTTP 401 Unauthorized"}, errors
    assert orthanc_dicomweb.get("/instances") == []


def test_a_stow_delivery_in_doubt_is_settled_by_qido_rs_and_not_sent_again(
    node: Node, orthanc_dicomweb: OrthancServer, phantom_set: Path
):
    node.tail = _stow(orthanc_dicomweb, "secret")
    check_doubt_settled_by_query(node, orthanc_dicomweb, _three_studies(phantom_set)[:1])  # by QIDO-RS here
