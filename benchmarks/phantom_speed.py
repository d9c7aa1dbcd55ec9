"""Phantom speed: radiographs/s at 2048² on all cores, and where one radiograph's time goes.

Writes ``benchmarks/results/latest.json`` (key ``phantom``, merged with what other benchmarks wrote) and
regenerates ``benchmarks/RESULTS.md``. Usage: ``python benchmarks/phantom_speed.py [--repeats N] [--studies N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from avn_node import __version__
from avn_node.phantom.anatomy import render
from avn_node.phantom.dicom import TRANSFER_SYNTAXES, build_dataset, encode
from avn_node.phantom.generate import PhantomOptions, generate, plan_patient
from avn_node.phantom.imaging import expose

ROOT = Path(__file__).resolve().parent
SIZE = (2048, 2048)
AIM_RADIOGRAPHS_PER_S = 2.0


def _summary(values: list[float]) -> dict[str, float]:
    return {"min": round(min(values), 4), "median": round(statistics.median(values), 4), "n": len(values)}


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
    return {k: _summary(v) for k, v in times.items()}


def write_results(section: dict[str, object]) -> Path:
    results = ROOT / "results" / "latest.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(results.read_text()) if results.exists() else {}
    data["phantom"] = section
    data["machine"] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pydicom": pydicom.__version__,
        "avn_node": __version__,
    }
    results.write_text(json.dumps(data, indent=1) + "\n")
    return results


def write_markdown(section: dict) -> Path:
    m = section
    lines = [
        "# Benchmark results",
        "",
        f"Measured {m['date']} on {m['machine_cores']} cores; regenerate with `make bench-phantom`.",
        "",
        "## Phantom (`avn-node phantom`)",
        "",
        "| figure | min | median | aim |",
        "|---|---|---|---|",
        f"| radiographs/s at 2048², {m['workers']} workers, default syntax mix, written to disk "
        f"| {m['radiographs_per_s_runs']['min']:.2f} | {m['radiographs_per_s']:.2f} | ≥ {AIM_RADIOGRAPHS_PER_S:.1f} "
        f"({m['radiographs_per_s'] / AIM_RADIOGRAPHS_PER_S:.1f}× the aim) |",
    ]
    for name, s in m["stage_seconds"].items():
        lines.append(
            f"| s per radiograph: {name.replace('_', ' ')} (1 process) | {s['min']:.3f} | {s['median']:.3f} | |"
        )
    lines.append("")
    out = ROOT / "RESULTS.md"
    out.write_text("\n".join(lines))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    rates, n = throughput(args.studies, args.repeats, args.workers)
    section = {
        "date": time.strftime("%Y-%m-%d"),
        "machine_cores": os.cpu_count(),
        "workers": args.workers,
        "size": list(SIZE),
        "radiographs_per_repeat": n,
        "radiographs_per_s": round(statistics.median(rates), 3),
        "radiographs_per_s_runs": _summary(rates),
        "stage_seconds": stages(6),
    }
    print(json.dumps(section, indent=1))
    print(write_results(section), write_markdown(section))


if __name__ == "__main__":
    main()
