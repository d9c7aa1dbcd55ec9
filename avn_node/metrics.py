"""Per-process measurements for ``/metrics``: how long each stage of the analysis jobs took (histograms).

Counts of state come from the database (:mod:`avn_node.web.metrics`); durations are observed where the work runs.
With ``[queue] backend = "celery"`` the jobs run in ``avn-node worker`` processes, so serve and the workers of a
host share their histograms through prometheus-client's multiprocess mode: :func:`share_between_processes`
points ``PROMETHEUS_MULTIPROC_DIR`` at ``data_dir/metrics`` before prometheus-client is first imported, and the
dashboard sums every process's files. prometheus-client is imported lazily for that reason.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

MULTIPROCESS_DIR = "metrics"
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


def share_between_processes(data_dir: Path) -> Path:
    """Switch this process to multiprocess metrics under ``data_dir/metrics`` (call before anything imports
    prometheus_client); returns the folder."""
    folder = Path(data_dir) / MULTIPROCESS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    return folder


def multiprocess() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


@cache
def stage_seconds() -> Any:  # noqa: ANN401 - a prometheus_client Histogram, imported lazily
    """The histogram of job stage durations (decode, detect, classify, cam, report, store, images), unregistered: the
    dashboard's registry adds it (or, in multiprocess mode, reads every process's files)."""
    from prometheus_client import Histogram

    return Histogram("avn_stage_seconds", "Duration of each stage of an analysis job", ["stage"],
                     buckets=STAGE_BUCKETS, registry=None)  # fmt: skip


def observe_job(timings: dict[str, float]) -> None:
    """Record one finished job's stage durations."""
    histogram = stage_seconds()
    for stage, seconds in timings.items():
        histogram.labels(stage).observe(seconds)


def add_to(registry: Any) -> None:  # noqa: ANN401 - a prometheus_client CollectorRegistry
    """Make ``registry`` serve the stage histograms: this process's, or every process's in multiprocess mode."""
    if multiprocess():
        from prometheus_client import multiprocess as shared

        shared.MultiProcessCollector(registry)
    else:
        registry.register(stage_seconds())
