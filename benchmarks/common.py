"""Shared by the benchmark scripts: merge a section into results/latest.json and re-render RESULTS.md."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from avn_node import __version__

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results" / "latest.json"


def summary(values: list[float], digits: int = 4) -> dict[str, float]:
    """min / median / n of repeated measurements."""
    return {"min": round(min(values), digits), "median": round(statistics.median(values), digits), "n": len(values)}


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    info: dict[str, object] = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pydicom": pydicom.__version__,
        "avn_node": __version__,
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def write_results(key: str, section: dict[str, object]) -> tuple[Path, Path]:
    """Store ``section`` under ``key`` (other keys kept), stamp machine and date, regenerate RESULTS.md."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    section = {"date": time.strftime("%Y-%m-%d"), **section}
    data[key] = section
    data["machine"] = {**data.get("machine", {}), **machine()}
    RESULTS.write_text(json.dumps(data, indent=1) + "\n")
    return RESULTS, write_markdown(data)


RENDERERS: dict[str, Callable[[dict], list[str]]] = {}


def renderer(key: str) -> Callable[[Callable[[dict], list[str]]], Callable[[dict], list[str]]]:
    """Register the Markdown renderer of one section."""

    def register(fn: Callable[[dict], list[str]]) -> Callable[[dict], list[str]]:
        RENDERERS[key] = fn
        return fn

    return register


def write_markdown(data: dict) -> Path:
    from benchmarks import sections  # noqa: F401  (registers the renderers)

    m = data.get("machine", {})
    lines = [
        "# Benchmark results",
        "",
        f"Machine: {m.get('cores')} cores ({m.get('cpu')}), Python {m.get('python')}, torch {m.get('torch', '-')}, "
        f"pydicom {m.get('pydicom')}, avn-node {m.get('avn_node')}. Each section gives its date and the command "
        "that measures it; min and median are over repeats.",
        "",
    ]
    for key, render in RENDERERS.items():
        if key in data:
            lines += render(data[key]) + [""]
    out = ROOT / "RESULTS.md"
    out.write_text("\n".join(lines))
    return out
