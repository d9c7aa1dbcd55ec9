"""The radiograph analyzer (CR/DX hips): the AVN-net inference engine and the hip report (imported only when
loaded: it brings torch)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence

from pydicom.dataset import Dataset

from avn_node.config import Settings
from avn_node.findings import CaseFinding
from avn_node.models.inference import Analyzer as Engine
from avn_node.models.inference import EarlyReading
from avn_node.report.results import ResultSet, build_result_sets

log = logging.getLogger("avn_node.analyse")
MAX_AHEAD = 64  # readings waiting for their jobs


class RadiographAnalyzer:
    """:class:`avn_node.analyse.analyzers.Analyzer` for hip radiographs; loads the configured weights."""

    name = "radiograph"

    def __init__(self, settings: Settings) -> None:
        models = settings.models
        self.engine = Engine(models.dir, threads=models.threads, device=models.device,
                             refuse_out_of_distribution=models.refuse_out_of_distribution)  # fmt: skip
        self.summary_image = settings.reporting.summary_image
        self._ahead: dict[str, tuple[Dataset, EarlyReading]] = {}  # SOP Instance UID → the dataset read, its reading
        self._lock = threading.Lock()
        self.info = self.engine.info
        self.version = self.info.version

    @property
    def timings(self) -> dict[str, float]:
        return dict(self.engine.timings)

    def warm_up(self) -> None:
        """One small phantom radiograph through analysis, SR and images: highdicom's standard tables, the
        codecs, the first inference and the fonts are loaded here rather than on the first real study."""
        from avn_node.phantom.generate import phantom_dataset

        ds = phantom_dataset()
        for result in self.report(self.engine.analyse_case([ds]), {str(ds.SOPInstanceUID): ds}, 1, {}):
            result.images()

    def read_ahead(self, source: Dataset) -> None:
        findings, timings = self.engine.read([source])
        with self._lock:
            self._ahead[str(source.SOPInstanceUID)] = (source, EarlyReading(findings[0], timings))
            while len(self._ahead) > MAX_AHEAD:
                del self._ahead[next(iter(self._ahead))]  # the oldest, whose job never came

    def analyse(self, sources: Sequence[Dataset]) -> CaseFinding:
        with self._lock:
            held = {i: self._ahead.pop(str(ds.SOPInstanceUID), None) for i, ds in enumerate(sources)}
        ahead = {i: entry[1] for i, entry in held.items() if entry is not None and entry[0] is sources[i]}
        finding = self.engine.analyse_case(list(sources), ahead)
        for r in finding.radiographs:
            if r.error:
                log.warning("instance %s could not be analysed (the SR says so): %s", r.sop_instance_uid, r.error)
        return finding

    def report(
        self,
        finding: CaseFinding,
        sources: Mapping[str, Dataset],
        case_version: int,
        predecessors: Mapping[str, Sequence[Dataset]],
    ) -> list[ResultSet]:
        return build_result_sets(finding, sources, case_version, predecessors, self.summary_image)
