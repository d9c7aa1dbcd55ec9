"""The serving node: end-to-end latency per transfer syntax, concurrent associations, and memory.

A node (demo weights, ``study_idle_seconds = 1``) sends its results to a dcmtk storescp archive. Latency is
from the end of a study's C-STOREs to the SR's arrival at the archive, minus the idle time; studies go one
after another. Concurrency: 1, 10 and 50 simultaneous associations, each storing one small study. Memory:
the node's resident set after start (models and web app loaded) and its peak (VmHWM) at the end, and the peak
of its child processes (the two decoders). Writes the ``e2e``, ``concurrency`` and ``memory`` sections.
Usage: ``python -m benchmarks.node [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.presentation import build_context

from avn_node.phantom.dicom import TRANSFER_SYNTAXES
from avn_node.phantom.generate import PhantomOptions, generate
from benchmarks.common import summary, write_results
from benchmarks.ingest import ROOT, _free_ports, _stop, _wait_port

IDLE_SECONDS = 1.0
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
ANALYSIS_STAGES = ("decode", "detect", "classify", "cam")


def _rss_mib(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _children_peak_mib(pid: int) -> float:
    """Sum of the peak resident sets of ``pid``'s child processes (the node's decoding processes)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return sum(_rss_mib(int(child), "VmHWM") for child in children)


def _studies(root: Path, syntax: str, n: int, size: int, seed: int) -> list[list[Path]]:
    options = PhantomOptions(studies=n, seed=seed, syntax_mix={syntax: 1.0}, shape_mix={"ap+fl": 1.0},
                             size_range=(size, size))  # fmt: skip
    truth = generate(options, root, workers=2)
    by_study: dict[str, list[Path]] = {}
    for r in truth.radiographs:
        by_study.setdefault(r.study_instance_uid, []).append(root / r.file)
    return list(by_study.values())


def _store(port: int, files: list[Path]) -> int:
    """C-STORE ``files`` over one association, one context per transfer syntax; returns failures."""
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    ae = AE(ae_title="BENCH")
    ae.requested_contexts = [build_context(str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID)) for h in headers]
    assoc = ae.associate("127.0.0.1", port, ae_title="AVN_NODE")
    if not assoc.is_established:
        return len(files)
    failures = sum(getattr(assoc.send_c_store(f), "Status", -1) != 0 for f in files)
    assoc.release()
    return failures


def _sr_arrival(archive: Path, study: str, timeout: float) -> tuple[float, float]:
    """(monotonic, wall-clock) time at which the SR of ``study`` is at the archive."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in archive.glob("SR*"):
            try:
                if str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID) == study:
                    return time.monotonic(), time.time()
            except Exception:  # noqa: BLE001 - storescp may still be writing it
                continue
        time.sleep(0.02)
    raise TimeoutError(f"no SR for study {study}")


def _stage_seconds(database: Path, arrivals: dict[str, float]) -> dict[str, list[float]]:
    """Per uncompressed study: the job's own stage timings (its job.done event; ``images`` runs behind the SR)
    and dispatch, from the SR's recording (its result.stored event) to its arrival."""
    stages: dict[str, list[float]] = {}
    with sqlite3.connect(database) as db:
        for study, wall in arrivals.items():
            (case_id,) = db.execute("SELECT case_id FROM studies WHERE study_instance_uid = ?", (study,)).fetchone()
            (data,) = db.execute(
                "SELECT e.data FROM events e JOIN jobs j ON j.id = CAST(e.subject AS INTEGER) "
                "WHERE e.kind = 'job.done' AND j.case_id = ? ORDER BY e.id DESC LIMIT 1",
                (case_id,),
            ).fetchone()
            for name, seconds in json.loads(data)["timings"].items():
                stages.setdefault(name, []).append(seconds)
            (recorded,) = db.execute(
                "SELECT e.at FROM events e JOIN results r ON r.sop_instance_uid = e.subject "
                "WHERE e.kind = 'result.stored' AND r.kind = 'sr' AND r.case_id = ? ORDER BY e.id DESC LIMIT 1",
                (case_id,),
            ).fetchone()
            recorded_at = datetime.fromisoformat(recorded).replace(tzinfo=UTC).timestamp()
            stages.setdefault("dispatch", []).append(wall - recorded_at)
    return stages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer studies (about 2 minutes)")
    args = parser.parse_args()
    per_syntax = {s: (3 if s == "explicit" else 1) if args.quick else 20 for s in TRANSFER_SYNTAXES}
    base = Path(tempfile.mkdtemp(prefix="node-bench-"))
    archive, (node_port, archive_port) = base / "archive", _free_ports(2)
    archive.mkdir()
    data = base / "node"
    config = base / "node.toml"
    config.write_text(
        f'[dashboard]\nport = 0\n[node]\nhost = "127.0.0.1"\nport = {node_port}\ndata_dir = "{data}"\n'
        f'[database]\nurl = "sqlite:///{data}/avn-node.db"\n[pipeline]\nstudy_idle_seconds = {IDLE_SECONDS}\n'
        f"[security]\nmin_free_disk_mb = 100\n[dispatch]\nretry_first_seconds = 1\n"
        f'[[destinations]]\nname = "archive"\nae_title = "ARCHIVE"\nhost = "127.0.0.1"\nport = {archive_port}\n'
    )
    storescp = subprocess.Popen(["storescp", "-aet", "ARCHIVE", "-od", str(archive), str(archive_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    node = subprocess.Popen([sys.executable, "-m", "avn_node", "serve", "--config", str(config)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_port(archive_port, storescp)
        _wait_port(node_port, node)
        time.sleep(1)
        rss_idle = _rss_mib(node.pid, "VmRSS")
        latency: dict[str, list[float]] = {}
        arrivals: dict[str, float] = {}  # uncompressed study → wall-clock arrival of its SR
        for i, (syntax, n) in enumerate(per_syntax.items()):
            for files in _studies(base / f"data-{syntax}", syntax, n, 2048, 500 + i):
                study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
                assert _store(node_port, files) == 0
                sent = time.monotonic()
                arrived, wall = _sr_arrival(archive, study, 120)
                latency.setdefault(syntax, []).append(arrived - sent - IDLE_SECONDS)
                if syntax == "explicit":
                    arrivals[study] = wall
        stages = _stage_seconds(data / "avn-node.db", arrivals)
        small = _studies(base / "data-small", "explicit", 50, 600, 900)
        concurrency = {}
        for k in (1, 10, 50):
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=k) as pool:
                failures = list(pool.map(lambda j: _store(node_port, small[j]), range(k)))
            files = sum(len(small[j]) for j in range(k))
            concurrency[f"failures_{k}"] = sum(failures)
            concurrency[f"files_per_s_{k}"] = round(files / (time.perf_counter() - t0), 2)
            time.sleep(IDLE_SECONDS + 2)
        rss_peak = _rss_mib(node.pid, "VmHWM")
        children_peak = _children_peak_mib(node.pid)
    finally:
        _stop(node, 120)
        _stop(storescp)
        shutil.rmtree(base)

    def quantiles(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return {"p50_s_after_idle": round(statistics.median(ordered), 3), "p95_s_after_idle": round(p95, 3),
                "n": len(ordered)}  # fmt: skip

    explicit = quantiles(latency["explicit"])
    # the in-process analysis of the same studies (decode → CAM of each job), the denominator of the overhead
    analysis = statistics.median(map(sum, zip(*(stages[k] for k in ANALYSIS_STAGES), strict=True)))
    e2e = {
        **explicit,
        "analysis_s_median": round(analysis, 3),
        "overhead_ratio": round(explicit["p95_s_after_idle"] / analysis, 2),
        "idle_seconds": IDLE_SECONDS,
        "size": 2048,
        "by_syntax": {
            str(TRANSFER_SYNTAXES[s]): {"name": s, **quantiles(v)} for s, v in latency.items() if s != "explicit"
        },
        "p95_ratio_worst_compressed": round(max(quantiles(v)["p95_s_after_idle"] for s, v in latency.items()
                                                if s != "explicit") / explicit["p95_s_after_idle"], 2),  # fmt: skip
        "stage_seconds": {name: summary(values, 3) for name, values in stages.items()},
    }
    memory = {"rss_idle_mib": round(rss_idle, 1), "rss_peak_mib": round(rss_peak, 1),
              "children_rss_peak_mib": round(children_peak, 1)}  # fmt: skip
    print(json.dumps({"e2e": e2e, "concurrency": concurrency, "memory": memory}, indent=1))
    write_results("e2e", e2e)
    write_results("concurrency", concurrency)
    print(*write_results("memory", memory))


if __name__ == "__main__":
    main()
