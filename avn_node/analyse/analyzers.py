"""The analyzer port (DESIGN §1 "one analyzer per kind of input"): which instances an analyzer selects, how it
reads a case, and which result sets it reports — and the registry of the kinds the configuration enables.

Selection reads headers only and never loads a model, so the receiver can route without torch; :meth:`load`
builds the analyzer itself once per process.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from pydicom.dataset import Dataset

from avn_node.config import RoutingSettings, Settings
from avn_node.findings import CaseFinding
from avn_node.receive import RADIOGRAPH_CLASSES
from avn_node.report.results import ResultSet

log = logging.getLogger("avn_node.analyse")
CR_CLASS = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography Image Storage


class Analyzer(Protocol):
    """A loaded analyzer: its name and model version, and the two steps a job runs."""

    name: str
    version: str
    timings: dict[str, float]  # seconds per step of the last :meth:`analyse`

    def warm_up(self) -> None:
        """Analyse and report one synthetic input, so the first real case pays none of the one-time costs."""

    def read_ahead(self, source: Dataset) -> None:
        """Read one instance before its case is complete; :meth:`analyse` reuses that reading when it is given
        this very dataset object (called from another thread than :meth:`analyse`)."""

    def analyse(self, sources: Sequence[Dataset]) -> CaseFinding:
        """Read one case (every selected instance, pixels included)."""

    def report(
        self,
        finding: CaseFinding,
        sources: Mapping[str, Dataset],
        case_version: int,
        predecessors: Mapping[str, Sequence[Dataset]],
    ) -> list[ResultSet]:
        """The result sets of ``finding``, one per study, naming each study's ``predecessors`` (earlier SRs)."""


@dataclass(frozen=True)
class AnalyzerKind:
    """One entry of the registry: header-only selection, and how to load the analyzer."""

    name: str
    unit: Literal["study", "series"]
    selects: Callable[[Dataset], bool]
    load: Callable[[], Analyzer]


def radiograph_modality(ds: Dataset) -> str:
    """Modality, or when it is missing the one the SOP class implies (CR or DX); "" for other classes."""
    sop_class = str(ds.get("SOPClassUID", ""))
    modality = str(ds.get("Modality", "") or "").strip().upper()
    if modality or sop_class not in RADIOGRAPH_CLASSES:
        return modality
    implied = "CR" if sop_class == CR_CLASS else "DX"
    log.info("%s has no Modality: routed as %s by its SOP class", ds.get("SOPInstanceUID", "?"), implied)
    return implied


def routed_radiograph(ds: Dataset, routing: RoutingSettings) -> bool:
    """Within ``[routing]``: a CR/DX image of an allowed modality (see :func:`radiograph_modality`) and body
    part."""
    return (
        str(ds.get("SOPClassUID", "")) in RADIOGRAPH_CLASSES
        and radiograph_modality(ds) in {m.upper() for m in routing.modalities}
        and str(ds.get("BodyPartExamined", "") or "").upper() in {b.upper() for b in routing.body_parts}
    )


def _load_radiograph(settings: Settings) -> Analyzer:
    from avn_node.analyse.radiograph import RadiographAnalyzer

    return RadiographAnalyzer(settings)


def analyzer_kinds(settings: Settings) -> list[AnalyzerKind]:
    """The kinds ``settings`` enable, in the order they are asked to select an instance."""
    return [
        AnalyzerKind(
            name="radiograph",
            unit="study",
            selects=lambda ds: routed_radiograph(ds, settings.routing),
            load=lambda: _load_radiograph(settings),
        )
    ]


def selecting_kind(kinds: Sequence[AnalyzerKind], ds: Dataset) -> AnalyzerKind | None:
    """The first kind that selects ``ds`` (header only), or None: stored, not analysed."""
    return next((kind for kind in kinds if kind.selects(ds)), None)
