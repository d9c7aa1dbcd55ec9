"""Phantom speed: radiographs/s at 2048² on all cores, and where one radiograph's time goes.

Writes ``benchmarks/results/latest.json`` (key ``phantom``, merged with what other benchmarks wrote) and
regenerates ``benchmarks/RESULTS.md``. Usage: ``python -m benchmarks.phantom_speed [--repeats N] [--studies N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from avn_node.phantom.anatomy import render
from avn_node.phantom.dicom import TRANSFER_SYNTAXES, build_dataset, encode
from avn_node.phantom.generate import PhantomOptions, generate, plan_patient
from avn_node.phantom.imaging import expose
from benchmarks.common import summary, write_results

SIZE = (2048, 2048)


def throughput(studies: int, repeats: int, workers: int) -> tuple[list[float], int]:
    """Radiographs/s of ``avn-node phantom`` end to end (render, encode, write), per repeat."""
    rates, n = [], 0
    for r in range(repeats):
        out = Path(tempfile.mkdtemp(prefix="phantom-bench-"))
        try:
            t0 = time.perf_counter()
            truth = generate(PhantomOptions(studies=studies, seed=100 + r, size_range=SIZE), out, workers=workers)
            rates.append(len(truth.radiographs) / (time.perf_counter() - t0))
            n = len(truth.radiographs)
        finally:
            shutil.rmtree(out)
    return rates, n


def stages(samples: int) -> dict[str, dict[str, float]]:
    """Seconds per radiograph for each stage, single process."""
    times: dict[str, list[float]] = {"anatomy": [], "exposure": []}
    times.update({f"encode_{name}": [] for name in TRANSFER_SYNTAXES})
    options = PhantomOptions(studies=samples, seed=7, size_range=SIZE)
    for i in range(samples):
        plan = plan_patient(options, i)
        item = plan.radiographs[0]
        acq = item.acquisition
        t0 = time.perf_counter()
        maps = render(
            acq.canvas(),
            plan.patient,
            item.pose,
            plan.lesions,
        )
        t1 = time.perf_counter()
        radiograph = expose(maps, acq)
        t2 = time.perf_counter()
        times["anatomy"].append(t1 - t0)
        times["exposure"].append(t2 - t1)
        for name in TRANSFER_SYNTAXES:
            ds = build_dataset(item.study, item.image, acq, radiograph)
            t3 = time.perf_counter()
            encode(ds, name, radiograph.pixels)
            times[f"encode_{name}"].append(time.perf_counter() - t3)
    return {k: summary(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    rates, n = throughput(args.studies, args.repeats, args.workers)
    section = {
        "machine_cores": os.cpu_count(),
        "workers": args.workers,
        "size": list(SIZE),
        "radiographs_per_repeat": n,
        "radiographs_per_s": round(statistics.median(rates), 3),
        "radiographs_per_s_runs": summary(rates),
        "stage_seconds": stages(6),
    }
    print(json.dumps(section, indent=1))
    print(*write_results("phantom", section))


if __name__ == "__main__":
    main()
