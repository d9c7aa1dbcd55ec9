"""Ingest: the same ~40 DX files of ~10 MB by dcmtk storescu to dcmtk storescp and to avn-node (analysis off).

avn-node fsyncs every file and commits its row before answering; storescp does neither. Each repeat starts
each receiver on an empty folder; the order alternates. Writes the ``ingest`` section of
``benchmarks/results/latest.json``. Usage: ``python -m benchmarks.ingest [--repeats N]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from avn_node.phantom.generate import PhantomOptions, generate
from benchmarks.common import summary, write_results

ROOT = Path(__file__).resolve().parents[1]


def _free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free now: every socket stays bound until all are picked."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _free_port() -> int:
    return _free_ports(1)[0]


def _wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None:
            raise RuntimeError("receiver exited")
        time.sleep(0.1)
    raise RuntimeError("receiver did not start")


def _stop(proc: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM, then SIGKILL when it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _send(port: int, aet: str, files: list[Path]) -> float:
    t0 = time.perf_counter()
    # dcmtk's connection, association and DIMSE timeouts, and a bound on the whole call: a stuck peer fails
    subprocess.run(["storescu", "-to", "30", "-ta", "30", "-td", "120", "-aec", aet, "127.0.0.1", str(port),
                    *map(str, files)], check=True, capture_output=True, timeout=900)  # fmt: skip
    return time.perf_counter() - t0


def _timed_receiver(command: list[str], port: int, aet: str, files: list[Path]) -> float:
    """Start a receiver, time one storescu of ``files`` to it, stop it."""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        return _send(port, aet, files)
    finally:
        _stop(proc)


def storescp_run(files: list[Path], work: Path) -> float:
    port, out = _free_port(), work / "storescp"
    out.mkdir()
    return _timed_receiver(["storescp", "-aet", "ARCHIVE", "-od", str(out), str(port)], port, "ARCHIVE", files)


def node_run(files: list[Path], work: Path) -> float:
    port, data = _free_port(), work / "node"
    config = work / "node.toml"
    config.write_text(
        f'[dashboard]\nport = 0\n[node]\nhost = "127.0.0.1"\nport = {port}\ndata_dir = "{data}"\n'
        f'[database]\nurl = "sqlite:///{data}/avn-node.db"\n[pipeline]\nanalyse = false\n'
        "[security]\nmin_free_disk_mb = 100\n"
    )
    command = [sys.executable, "-m", "avn_node", "serve", "--config", str(config)]
    return _timed_receiver(command, port, "AVN_NODE", files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--files", type=int, default=40)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        options = PhantomOptions(studies=args.files // 2, seed=31, syntax_mix={"explicit": 1.0},
                                 shape_mix={"ap+fl": 1.0}, size_range=(2300, 2300))  # fmt: skip
        generate(options, base / "data", workers=2)
        files = sorted((base / "data").rglob("*.dcm"))
        megabytes = sum(f.stat().st_size for f in files) / 1e6
        rates: dict[str, list[float]] = {"storescp": [], "avn_node": []}
        for r in range(args.repeats):
            order = [("storescp", storescp_run), ("avn_node", node_run)]
            for name, run in order if r % 2 == 0 else reversed(order):
                work = base / f"run-{r}-{name}"
                work.mkdir()
                rates[name].append(megabytes / run(files, work))
                shutil.rmtree(work)
    finally:
        shutil.rmtree(base)
    node, dcmtk = summary(rates["avn_node"], 2), summary(rates["storescp"], 2)
    section = {
        "files": len(files),
        "megabytes": round(megabytes, 1),
        "storescp_mb_per_s": dcmtk,
        "avn_node_mb_per_s": node,
        "ratio_vs_storescp": round(node["median"] / dcmtk["median"], 3),
    }
    print(json.dumps(section, indent=1))
    print(*write_results("ingest", section))


if __name__ == "__main__":
    main()
