"""``avn-node analyze``: the node's analysis and result objects on files, without a network.

Radiographs (CR and DX images) are grouped into one case per patient (Patient ID + Issuer); every study of a
case gets its result set under ``OUT/<Study Instance UID>/``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from avn_node.findings import Analyzer, CaseFinding
from avn_node.receive import RADIOGRAPH_CLASSES
from avn_node.report.results import build_result_sets
from avn_node.store.files import InvalidUidError, checked_uid, files_under


@dataclass
class OfflineRun:
    """What ``analyze`` did: cases read, files written, inputs skipped (path → reason)."""

    cases: list[CaseFinding] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)


def _patient_key(ds: Dataset) -> tuple[str, str]:
    """Patient ID + Issuer; a study without Patient ID is a case of its own."""
    patient = str(ds.get("PatientID", "") or "")
    if not patient:
        return "", str(ds.StudyInstanceUID)
    return patient, str(ds.get("IssuerOfPatientID", ""))


def analyze(paths: Iterable[Path], out: Path, analyzer: Analyzer, summary_image: bool = True) -> OfflineRun:
    """Analyse the radiographs among ``paths`` and write each study's result set under ``out``."""
    run = OfflineRun()
    by_patient: dict[tuple[str, str], dict[str, Dataset]] = defaultdict(dict)
    for path in files_under(paths):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            run.skipped[path] = f"not a DICOM file ({exc})"
            continue
        uid = str(ds.get("SOPInstanceUID", ""))
        if str(ds.get("SOPClassUID", "")) not in RADIOGRAPH_CLASSES:
            run.skipped[path] = f"not a CR or DX image (SOP Class {ds.get('SOPClassUID', 'missing')})"
        else:
            try:
                checked_uid(uid, "SOP Instance UID")
                checked_uid(ds.get("StudyInstanceUID"), "Study Instance UID")
            except InvalidUidError as exc:
                run.skipped[path] = str(exc)
                continue
            by_patient[_patient_key(ds)][uid] = ds
    for sources in by_patient.values():
        case = analyzer.analyse_case(list(sources.values()))
        run.cases.append(case)
        for result in build_result_sets(case, sources, summary_image=summary_image):
            folder = out / result.study_instance_uid
            folder.mkdir(parents=True, exist_ok=True)
            names = [
                "sr.dcm",
                *(f"cam-{c.SourceImageSequence[0].ReferencedSOPInstanceUID}.dcm" for c in result.captures),
            ]
            names += ["summary.dcm"] if result.summary is not None else []
            for name, ds in zip(names, result.datasets(), strict=True):
                ds.save_as(folder / name, enforce_file_format=True)
                run.written.append(folder / name)
    return run
