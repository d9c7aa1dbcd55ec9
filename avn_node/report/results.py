"""A case's result sets: per study of the case, its SR, one CAM capture per radiograph of it, the summary.

The SR is built at once; the images (captures and summary) are rendered when first asked for, so a worker
can store and send the SR — what a viewer opens — while they are drawn.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

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
    render: Callable[[], tuple[tuple[Dataset, ...], Dataset | None]] = field(repr=False)

    @cached_property
    def _images(self) -> tuple[tuple[Dataset, ...], Dataset | None]:
        return self.render()

    @property
    def captures(self) -> tuple[Dataset, ...]:
        """One CAM secondary capture per analysed radiograph of the study (rendered on first use)."""
        return self._images[0]

    @property
    def summary(self) -> Dataset | None:
        """The case's summary image, None when ``[reporting] summary_image`` is off (rendered on first use)."""
        return self._images[1]

    def images(self) -> list[tuple[str, Dataset]]:
        """(result kind, dataset) of the images: ``cam`` per capture, then ``summary``."""
        return [*(("cam", c) for c in self.captures), *([("summary", self.summary)] if self.summary else [])]

    def datasets(self) -> list[Dataset]:
        """SR first, then captures, then the summary image."""
        return [self.sr, *(ds for _, ds in self.images())]


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

    def renderer(study: str) -> Callable[[], tuple[tuple[Dataset, ...], Dataset | None]]:
        mine = [r for r in case.radiographs if str(sources[r.sop_instance_uid].StudyInstanceUID) == study]

        def render() -> tuple[tuple[Dataset, ...], Dataset | None]:
            captures = tuple(build_capture(sources[r.sop_instance_uid], r, study, producer)
                             for r in mine if not r.error)  # fmt: skip
            summary = (
                build_summary(case, sources[mine[0].sop_instance_uid], study, producer, analysed, version)
                if summary_image
                else None
            )
            return captures, summary

        return render

    return [
        ResultSet(study, build_sr(case, dict(sources), study, producer, version, (previous or {}).get(study, ())),
                  renderer(study))  # fmt: skip
        for study in studies
    ]
