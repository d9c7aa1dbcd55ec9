"""Scale-out throughput: studies per minute through ``serve`` + 1 and + 2 ``avn-node worker`` processes
(``[queue] backend = "celery"``, Redis broker, PostgreSQL), and through a ``backend = "local"`` node in the same
run as the baseline.

Each round sends its own fresh AP + FL studies back to back over one association per study and times from the
first C-STORE to the last result recorded as sent to a dcmtk storescp archive. Workers run ``threads = 1`` each;
the local node runs ``threads = 2`` (the embedded default). Writes the ``scaleout`` section.
Usage: ``python -m benchmarks.scaleout [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from benchmarks.common import write_results
from benchmarks.node import _store, _studies
from tests.conftest import free_port
from tests.node.conftest import Node, port_open, stop_process, wait_for
from tests.scaleout.servers import Postgres, Redis, Worker, settled

IDLE_SECONDS = 1.0
SIZE = 1500


def _round(node: Node, studies: list[list[Path]], url: str) -> dict[str, float]:
    """Send ``studies`` to a node with a database of its own; seconds until every one is analysed and every
    result sent, and the median seconds per job."""
    engine = create_engine(url)
    t0 = time.monotonic()
    for files in studies:
        assert _store(node.port, files) == 0
    sent_s = time.monotonic() - t0

    wait_for(lambda: settled(engine, sum(map(len, studies))), 1800, "every study analysed and sent")
    seconds = time.monotonic() - t0
    with engine.connect() as c:
        job_s = [s for (s,) in c.execute(text("SELECT seconds FROM jobs WHERE seconds IS NOT NULL"))]
        jobs = [d if isinstance(d, dict) else json.loads(d)
                for (d,) in c.execute(text("SELECT data FROM events WHERE kind = 'job.done'"))]  # fmt: skip
    engine.dispose()
    stages = {k: round(statistics.median(d["timings"].get(k, 0.0) for d in jobs), 3) for k in jobs[0]["timings"]}
    return {"seconds": round(seconds, 2), "send_seconds": round(sent_s, 2),
            "studies_per_min": round(len(studies) / seconds * 60, 2),
            "job_seconds_median": round(statistics.median(job_s), 3), "stage_seconds_median": stages}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 studies per round instead of 12")
    parser.add_argument("--studies", type=int, default=0, help="studies per round (overrides --quick)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's SIGTERM still stops every server
    per_round = args.studies or (4 if args.quick else 12)
    base = Path(tempfile.mkdtemp(prefix="scaleout-bench-"))
    archive_dir = base / "archive"
    archive_dir.mkdir()
    archive_port = free_port()
    storescp = subprocess.Popen(["storescp", "-aet", "ARCHIVE", "-od", str(archive_dir), str(archive_port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    try:
        wait_for(lambda: port_open(archive_port), 20, "storescp")
        for i, (label, workers) in enumerate((("local", 0), ("celery, 1 worker", 1), ("celery, 2 workers", 2))):
            studies = _studies(base / f"data-{i}", "explicit", per_round, SIZE, 700 + i)
            results[label] = _run(base / f"round-{i}", studies, workers, archive_port)
            print(label, results[label], flush=True)
    finally:
        stop_process(storescp)
        shutil.rmtree(base, ignore_errors=True)
    local = results["local"]["studies_per_min"]
    section = {"studies_per_round": per_round, "size": SIZE, "idle_seconds": IDLE_SECONDS, "rounds": results,
               "two_vs_one_worker": round(results["celery, 2 workers"]["studies_per_min"]
                                          / results["celery, 1 worker"]["studies_per_min"], 2),
               "one_worker_vs_local": round(results["celery, 1 worker"]["studies_per_min"] / local, 2)}  # fmt: skip
    print(json.dumps(section, indent=1))
    print(*write_results("scaleout", section))


def _run(root: Path, studies: list[list[Path]], workers: int, archive_port: int) -> dict[str, float]:
    """One round: a local node (``workers == 0``) or serve + ``workers`` Celery workers, all stopped after."""
    root.mkdir()
    node = Node(root / "node", idle_seconds=IDLE_SECONDS, destinations=[("archive", "ARCHIVE", archive_port)])
    node.root.mkdir()
    servers: list = []
    pool: list[Worker] = []
    try:
        if workers:
            redis, postgres = Redis(root / "redis"), Postgres(Path(tempfile.mkdtemp(prefix="avn-node-postgres-")))
            redis.root.mkdir()
            redis.start()
            servers.append(redis)
            postgres.init()
            servers.append(postgres)
            node.database_url = postgres.url
            node.sections = {"queue": f'backend = "celery"\nbroker_url = "{redis.url}"'}
        node.start()
        pool = [Worker(node.config, f"w{k}") for k in range(1, workers + 1)]
        for w in pool:
            w.start()
        for w in pool:
            w.wait_ready()
        url = node.database_url or f"sqlite:///{node.root / 'var' / 'avn-node.db'}"
        return _round(node, studies, url)
    finally:
        for w in pool:
            w.stop()
        if node.process is not None:
            node.stop()
        for server in reversed(servers):
            server.stop()
            if isinstance(server, Postgres):
                shutil.rmtree(server.root, ignore_errors=True)


if __name__ == "__main__":
    main()
