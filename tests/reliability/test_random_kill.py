"""200 instances in 20 studies from four concurrent senders while the node is killed (SIGKILL, as ``kill -9``) at
random moments and restarted: every instance a sender got success for is stored with its bytes, every case version
has one SR per study, the archive holds exactly the results the database recorded, no temp debris, the database
intact. The senders behave as modalities: what was not acknowledged is sent again once the node is back."""

from __future__ import annotations

import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from tests.node.conftest import Archive, Node, port_open, wait_for
from tests.reliability.test_crash import _check_store, check_results, settled
from tests.reliability.test_limits import _radiograph

pytestmark = [pytest.mark.xdist_group("node"), pytest.mark.peers, pytest.mark.timeout(600)]

STUDIES, PER_STUDY, SENDERS, KILLS = 20, 10, 4, 3
SETTLE_S = 300


def _write_studies(folder: Path) -> list[list[Path]]:
    folder.mkdir()
    rng = np.random.default_rng(200)
    studies = []
    for s in range(STUDIES):
        paths = []
        for n in range(PER_STUDY):
            ds = _radiograph(f"1.2.826.0.1.3680043.10.511.200.{s + 1}", n + 1, rng)
            path = folder / f"{s:02d}-{n:02d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        studies.append(paths)
    return studies


def _send_study(node: Node, files: list[Path], acknowledged: dict[Path, bool], stop: threading.Event) -> None:
    """Send ``files`` in one association; after a failure wait for the node and go on from the first file not
    acknowledged, in a new association, as a modality does."""
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ComputedRadiographyImageStorage)
    pending = list(files)
    while pending and not stop.is_set():
        if not port_open(node.port):
            time.sleep(0.2)
            continue
        assoc = ae.associate("127.0.0.1", node.port, ae_title="AVN_NODE")
        if not assoc.is_established:
            time.sleep(0.5)
            continue
        try:
            while pending:
                status = assoc.send_c_store(pending[0])
                if status.get("Status") != 0x0000:
                    break
                acknowledged[pending.pop(0)] = True
        except (RuntimeError, ValueError):  # the association died under it
            pass
        finally:
            if assoc.is_established:
                assoc.release()


def test_killed_at_random_moments_while_four_senders_send_200_instances_nothing_is_lost_or_duplicated(
    node: Node, archive: Archive, tmp_path: Path, record_property
):
    studies = _write_studies(tmp_path / "studies")
    node.destinations = [("archive", archive.aet, archive.port)]
    node.idle_seconds = 2
    node.start()
    acknowledged: dict[Path, bool] = {f: False for files in studies for f in files}
    stop = threading.Event()

    def sender(k: int) -> None:
        for files in studies[k::SENDERS]:
            _send_study(node, files, acknowledged, stop)

    senders = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(SENDERS)]
    for t in senders:
        t.start()
    moments = random.Random(7)
    kills = 0
    for _ in range(KILLS):
        time.sleep(moments.uniform(1.0, 6.0))
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=30)
        kills += 1
        node.start()
    for t in senders:
        t.join(timeout=SETTLE_S)
    stop.set()
    assert all(acknowledged.values()), f"{sum(not v for v in acknowledged.values())} instances never acknowledged"
    record_property("kills", kills)

    with sqlite3.connect(node.root / "var" / "avn-node.db") as db:
        wait_for(lambda: settled(node, db, len(acknowledged)), SETTLE_S, "every image analysed, every result sent")
        results, redelivered = check_results(db, archive)
    _check_store(node, acknowledged)
    record_property("results", results)
    record_property("re-deliveries", redelivered)
