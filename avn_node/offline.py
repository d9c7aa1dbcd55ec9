"""``avn-node analyze``: the node's analysis and result objects on files, without a network.

The inputs go through the same seams as in ``serve``: each analyzer kind selects its instances by header
(``[routing]`` included), studies are put into cases by the same rule (:mod:`avn_node.group.cases`), and every
study of a case gets its result set under ``OUT/<Study Instance UID>/``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from avn_node.analyse.analyzers import Analyzer, AnalyzerKind, selecting_kind
from avn_node.findings import CaseFinding
from avn_node.group.cases import joins_case, patient_of, study_datetime
from avn_node.store.files import InvalidUidError, checked_uid, files_under
from avn_node.store.models import utcnow


@dataclass
class OfflineRun:
    """What ``analyze`` did: cases read, files written, inputs skipped (path → reason)."""

    cases: list[CaseFinding] = field(default_factory=list)
    written: list[Path] = field(default_factory=list)
    skipped: dict[Path, str] = field(default_factory=dict)


@dataclass
class FileCase:
    """One case built from files: its analyzer, patient, anchor and instances (SOP Instance UID → dataset)."""

    kind: str
    patient: tuple[str, str]
    anchor: datetime
    studies: list[str] = field(default_factory=list)
    sources: dict[str, Dataset] = field(default_factory=dict)


def group_files(
    paths: Iterable[Path], kinds: Sequence[AnalyzerKind], window: timedelta
) -> tuple[list[FileCase], dict[Path, str]]:
    """The cases among ``paths`` (studies in order of first appearance), and the inputs skipped with why."""
    skipped: dict[Path, str] = {}
    studies: dict[str, tuple[str, tuple[str, str], datetime, dict[str, Dataset]]] = {}
    received = utcnow()  # a study without Study Date/Time is anchored when it arrives, as in serve
    for path in files_under(paths):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            skipped[path] = f"not a DICOM file ({exc})"
            continue
        kind = selecting_kind(kinds, ds)
        if kind is None:
            skipped[path] = (
                f"not selected by any analyzer (SOP Class {ds.get('SOPClassUID', 'missing')}, "
                f"modality {ds.get('Modality', '')!r}, body part {ds.get('BodyPartExamined', '')!r})"
            )
            continue
        try:
            uid = checked_uid(ds.get("SOPInstanceUID"), "SOP Instance UID")
            study = checked_uid(ds.get("StudyInstanceUID"), "Study Instance UID")
        except InvalidUidError as exc:
            skipped[path] = str(exc)
            continue
        entry = studies.setdefault(study, (kind.name, patient_of(ds), study_datetime(ds) or received, {}))
        entry[3][uid] = ds
    cases: list[FileCase] = []
    for study, (kind, patient, anchor, sources) in studies.items():
        case = next((c for c in cases if c.kind == kind and joins_case(c.patient, c.anchor, patient, anchor, window)),
                    None)  # fmt: skip
        if case is None:
            case = FileCase(kind, patient, anchor)
            cases.append(case)
        case.studies.append(study)
        case.sources.update(sources)
    return cases, skipped


def analyze(
    paths: Iterable[Path], out: Path, kinds: Sequence[AnalyzerKind], window: timedelta = timedelta(hours=24)
) -> OfflineRun:
    """Analyse what ``kinds`` select among ``paths`` and write each study's result set under ``out``."""
    cases, skipped = group_files(paths, kinds, window)
    run = OfflineRun(skipped=skipped)
    loaded: dict[str, Analyzer] = {}
    for case in cases:
        if case.kind not in loaded:
            loaded[case.kind] = next(k for k in kinds if k.name == case.kind).load()
        analyzer = loaded[case.kind]
        finding = analyzer.analyse(list(case.sources.values()))
        run.cases.append(finding)
        for result in analyzer.report(finding, case.sources, 1, {}):
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
