"""Orthanc as the PACS: it auto-forwards stable studies to the node and receives the results, with no loop, each
delivery counted only once Orthanc commits it (storage commitment, PS3.4 Annex J)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import OrthancServer, free_ports, require_tool
from tests.node.conftest import Node, port_open, stop_process, storescu, wait_for

# Orthanc and the node start (bounded inside: 20 s, 60 s), then up to 90 s for the results and 8 s more.
pytestmark = [pytest.mark.xdist_group("node"), pytest.mark.peers, pytest.mark.timeout(600)]

# Forward the whole study when it becomes stable, as a PACS auto-forward rule does: the node must recognise
# its own results and the images it already read when the study comes back (DESIGN §7).
FORWARD_LUA = """
function OnStableStudy(studyId, tags, metadata)
  for _, instance in pairs(ParseJson(RestApiGet('/studies/' .. studyId .. '/instances'))) do
    SendToModality(instance['ID'], 'avn')
  end
end
"""


@pytest.fixture
def pacs(tmp_path: Path, node: Node) -> Iterator[OrthancServer]:
    """Orthanc with an auto-forward rule to the node, and the node sending its results back."""
    dicom_port, http_port = free_ports(2)
    (tmp_path / "forward.lua").write_text(FORWARD_LUA)
    config = {
        "Name": "avn-node test PACS", "StorageDirectory": str(tmp_path / "orthanc"),
        "IndexDirectory": str(tmp_path / "orthanc"), "DicomAet": "PACS", "DicomPort": dicom_port,
        "HttpPort": http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "StableAge": 2, "Plugins": [],
        "DicomModalities": {"avn": ["AVN_NODE", "127.0.0.1", node.port]},
        "LuaScripts": [str(tmp_path / "forward.lua")],
    }  # fmt: skip
    (tmp_path / "orthanc.json").write_text(json.dumps(config))
    proc = subprocess.Popen([require_tool("Orthanc"), str(tmp_path / "orthanc.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_for(lambda: port_open(http_port) or proc.poll() is not None, 20, "Orthanc")
        assert proc.poll() is None, f"Orthanc exited with {proc.returncode}"
        node.destinations = [("pacs", "PACS", dicom_port)]
        node.destination_lines = "storage_commitment = true\n"
        node.start()
        yield OrthancServer("PACS", dicom_port, http_port)
    finally:
        stop_process(proc)


def test_orthanc_auto_forward_gets_sr_and_captures_into_the_same_study(pacs, node: Node, phantom_set: Path):
    files = sorted((phantom_set / "P0002").rglob("*.dcm"))
    assert storescu(pacs.dicom_port, files, aet=pacs.aet).returncode == 0

    def series_modalities() -> list[str]:
        return sorted(s["MainDicomTags"].get("Modality", "") for s in pacs.get("/series?expand"))

    wait_for(lambda: {"SR", "OT"} <= set(series_modalities()), 90, "SR and secondary captures in Orthanc")
    time.sleep(8)  # the study becomes stable again and is forwarded again: nothing new may come back
    assert len(pacs.get("/patients")) == 1
    assert len(pacs.get("/studies")) == 1
    instances = len(pacs.get("/instances"))
    assert instances == len(files) + 1 + len(files) + 1  # radiographs, SR, a CAM per radiograph, summary
    status = node.status()
    assert status["jobs"] == {"done": 1}  # the returning study was recognised, not read again
    assert status["deliveries"] == {"sent": len(files) + 2}
    with sqlite3.connect(node.root / "var" / "avn-node.db") as db:
        committed = db.execute("SELECT COUNT(*) FROM deliveries WHERE committed_at >= sent_at").fetchone()[0]
    assert committed == len(files) + 2  # each result committed by Orthanc's N-EVENT-REPORT
