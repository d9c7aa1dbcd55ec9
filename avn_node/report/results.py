"""A case's result sets: per study of the case, its SR, one CAM capture per radiograph of it, the summary."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from avn_node.findings import CaseFinding
from avn_node.report.capture import build_capture
from avn_node.report.identity import Producer, with_writable_character_set
from avn_node.report.sr import build_sr
from avn_node.report.summary import build_summary


@dataclass(frozen=True)
class ResultSet:
    """The objects returned into one study (DESIGN §6)."""

    study_instance_uid: str
    sr: Dataset
    captures: tuple[Dataset, ...]
    summary: Dataset | None

    def datasets(self) -> list[Dataset]:
        """SR first, then captures, then the summary image."""
        return [self.sr, *self.captures, *([self.summary] if self.summary is not None else [])]


def build_result_sets(
    case: CaseFinding,
    sources: Mapping[str, Dataset],
    version: int = 1,
    previous: Mapping[str, Sequence[Dataset]] | None = None,
    summary_image: bool = True,
) -> list[ResultSet]:
    """One :class:`ResultSet` per study of the case, in order of first appearance.

    ``sources`` maps SOP Instance UID → full dataset (pixels included) of every analysed instance;
    ``previous`` maps a study to the SRs the new version replaces.
    """
    producer = Producer.from_model(case.model)
    sources = {uid: with_writable_character_set(ds) for uid, ds in sources.items()}
    studies: list[str] = []
    for r in case.radiographs:
        study = str(sources[r.sop_instance_uid].StudyInstanceUID)
        if study not in studies:
            studies.append(study)
    analysed = sorted(sources)
    sets = []
    for study in studies:
        mine = [r for r in case.radiographs if str(sources[r.sop_instance_uid].StudyInstanceUID) == study]
        sr = build_sr(case, dict(sources), study, producer, version, (previous or {}).get(study, ()))
        captures = tuple(build_capture(sources[r.sop_instance_uid], r, study, producer) for r in mine if not r.error)
        summary = (
            build_summary(case, sources[mine[0].sop_instance_uid], study, producer, analysed, version)
            if summary_image
            else None
        )
        sets.append(ResultSet(study, sr, captures, summary))
    return sets
