"""Orthanc, the archive, stores the result objects in the source study: no new patient, no new study."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import pytest

from avn_node.report.results import build_result_sets
from tests.conftest import DCMTK_TIMEOUTS, STORESCU_TIMEOUT_S, OrthancServer, require_tool

pytestmark = pytest.mark.peers


def _storescu(server: OrthancServer, files: list[Path]) -> None:
    """dcmtk storescu, proposing each file's own transfer syntax (``--required``)."""
    command = [require_tool("storescu"), *DCMTK_TIMEOUTS, "--required", "-aet", "AVN_NODE", "-aec", server.aet]
    proc = subprocess.run([*command, "127.0.0.1", str(server.dicom_port), *map(str, files)], capture_output=True,
                          text=True, timeout=STORESCU_TIMEOUT_S)  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_orthanc_files_results_under_the_source_patient_and_studies(two_study_case, orthanc, tmp_path: Path):
    case, sources = two_study_case
    source_files = []
    for uid, original in sources.items():
        ds = copy.deepcopy(original)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)  # this test is about where results land, not about codecs
        ds.save_as(tmp_path / f"src-{uid}.dcm", enforce_file_format=True)
        source_files.append(tmp_path / f"src-{uid}.dcm")
    _storescu(orthanc, source_files)
    results = [ds for result in build_result_sets(case, sources) for ds in result.datasets()]
    result_files = []
    for i, ds in enumerate(results):
        ds.save_as(tmp_path / f"result-{i}.dcm", enforce_file_format=True)
        result_files.append(tmp_path / f"result-{i}.dcm")
    _storescu(orthanc, result_files)

    assert len(orthanc.get("/patients")) == 1
    studies = orthanc.get("/studies?expand")
    assert {s["MainDicomTags"]["StudyInstanceUID"] for s in studies} == {
        str(d.StudyInstanceUID) for d in sources.values()
    }
    assert len(orthanc.get("/instances")) == len(sources) + len(results)
    for ds in results:
        (found,) = orthanc.post("/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": ds.SOPInstanceUID}})
        tags = orthanc.get(f"/instances/{found}/simplified-tags")
        assert tags["PatientID"] == ds.PatientID and tags["StudyInstanceUID"] == ds.StudyInstanceUID
        if ds.Modality == "SR":
            assert tags["ContentSequence"]  # Orthanc parsed the SR tree
