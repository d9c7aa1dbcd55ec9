"""Scale-out end to end: ``avn-node serve`` on PostgreSQL sending its jobs through Redis to ``avn-node worker``
processes, results at a dcmtk ``storescp +uf`` archive (which keeps every re-delivery as a file of its own);
workers killed, Redis and PostgreSQL restarted."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation
from sqlalchemy import Engine, text

from avn_node.ground_truth import GroundTruth
from avn_node.phantom.generate import PhantomOptions, generate
from tests.node.conftest import Archive, Node, storescu, wait_for
from tests.scaleout.servers import Postgres, Redis, Worker, settled

pytestmark = [pytest.mark.xdist_group("node"), pytest.mark.peers, pytest.mark.timeout(600)]
SETTLE_S = 300


@pytest.fixture(scope="module")
def ten_studies(tmp_path_factory: pytest.TempPathFactory) -> list[list[Path]]:
    """Ten patients with one AP + frog-leg study each, uncompressed, at reduced size; one file list per study."""
    out = tmp_path_factory.mktemp("ten-studies")
    generate(PhantomOptions(studies=10, seed=17, syntax_mix={"explicit": 1.0}, shape_mix={"ap+fl": 1.0},
                            size_range=(600, 800)), out, workers=2)  # fmt: skip
    by_study: dict[str, list[Path]] = {}
    for r in GroundTruth.load(out).radiographs:
        by_study.setdefault(r.study_instance_uid, []).append(out / r.file)
    assert len(by_study) == 10 and all(len(files) == 2 for files in by_study.values())
    return list(by_study.values())


def _start(node: Node, archive: Archive, workers: list[Worker]) -> None:
    node.destinations = [("archive", archive.aet, archive.port)]
    node.start()
    for w in workers:
        w.start()
    for w in workers:
        w.wait_ready()


def _send(node: Node, studies: list[list[Path]]) -> None:
    for files in studies:
        proc = storescu(node.port, files)
        assert proc.returncode == 0, proc.stderr


def _check_exactly_once(db: Engine, archive: Archive, studies: list[list[Path]]) -> None:
    """Every result of every study at the archive once: one SR per study and version, a capture per image."""
    with db.connect() as c:
        kinds = Counter(k for (k,) in c.execute(text("SELECT kind FROM results")))
        recorded = {uid for (uid,) in c.execute(text("SELECT sop_instance_uid FROM results"))}
        failed = c.execute(text("SELECT COUNT(*) FROM jobs WHERE state = 'failed'")).scalar()
    assert failed == 0
    assert kinds == {"sr": len(studies), "cam": sum(map(len, studies)), "summary": len(studies)}
    delivered = Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in archive.files())
    assert set(delivered) == recorded, "the archive lacks a result, or holds one the node did not record"
    assert max(delivered.values()) == 1, "a result reached the archive twice"


def _jobs_by_worker(db: Engine) -> Counter:
    with db.connect() as c:
        return Counter(w.split(":worker-")[-1] for (w,) in c.execute(text("SELECT worker_id FROM jobs")))


def test_two_workers_deliver_every_result_of_ten_studies_exactly_once(
    celery_node: Node, workers: list[Worker], archive: Archive, postgres: Postgres, ten_studies, record_property
):
    _start(celery_node, archive, workers)
    _send(celery_node, ten_studies)
    db = postgres.engine()
    wait_for(lambda: settled(db, 20), SETTLE_S, "every study analysed and every result sent")
    _check_exactly_once(db, archive, ten_studies)
    by_worker = _jobs_by_worker(db)
    assert set(by_worker) == {"w1", "w2"}, f"one worker did all the jobs: {by_worker}"
    record_property("jobs per worker", dict(by_worker))
    status = celery_node.status()  # avn-node status on PostgreSQL
    assert status["jobs"] == {"done": 10} and status["deliveries"] == {"sent": 40}
    for w in workers:  # SIGTERM: Celery's warm shutdown, then the dispatch loops end
        w.stop()
        assert w.process.returncode == 0, w.log.read_text()[-2000:]


def test_a_worker_killed_mid_analysis_has_its_job_completed_by_the_other(
    celery_node: Node, workers: list[Worker], archive: Archive, postgres: Postgres, ten_studies
):
    doomed, survivor = workers
    doomed.env = {"AVN_FAULT": "analyse.mid-analysis"}  # dies (as by kill -9) inside its first analysis
    _start(celery_node, archive, workers)
    _send(celery_node, ten_studies[:4])
    wait_for(lambda: doomed.process.poll() is not None, SETTLE_S, "the first worker to die mid-analysis")
    assert doomed.process.returncode == 137 and "dying at analyse.mid-analysis" in doomed.log.read_text()
    db = postgres.engine()
    wait_for(lambda: settled(db, 8), SETTLE_S, "every study analysed and every result sent")
    _check_exactly_once(db, archive, ten_studies[:4])
    with db.connect() as c:
        redone = c.execute(text("SELECT worker_id, attempts FROM jobs WHERE attempts > 1")).all()
    assert len(redone) == 1, redone  # the killed worker's job, taken over once its lease ran out
    ((holder, attempts),) = redone
    assert attempts == 2 and holder.endswith(":worker-w2")
    assert _jobs_by_worker(db) == {"w2": 4}


def test_work_resumes_after_redis_restarts_with_queued_tasks_lost(
    celery_node: Node, workers: list[Worker], archive: Archive, postgres: Postgres, redis: Redis, ten_studies
):
    celery_node.destinations = [("archive", archive.aet, archive.port)]
    celery_node.start()
    _send(celery_node, ten_studies[:3])
    db = postgres.engine()

    def sent_to_broker(n: int) -> bool:
        with db.connect() as c:
            return c.execute(text("SELECT COUNT(*) FROM jobs WHERE enqueued_at IS NOT NULL")).scalar() == n

    wait_for(lambda: sent_to_broker(3), 120, "three tasks at the broker")
    redis.stop()  # no persistence: the three tasks are gone with it
    redis.start()
    for w in workers:
        w.start()
    _send(celery_node, ten_studies[3:5])
    for w in workers:
        w.wait_ready()
    with db.connect() as c:  # restart the broker again while the workers run
        wait_for(lambda: c.execute(text("SELECT COUNT(*) FROM jobs WHERE state = 'done'")).scalar() >= 1, SETTLE_S,
                 "a first job done")  # fmt: skip
    redis.stop()
    redis.start()
    wait_for(lambda: settled(db, 10), SETTLE_S, "every study analysed and every result sent")
    _check_exactly_once(db, archive, ten_studies[:5])
    assert "broker" in celery_node.log.read_text()


def test_while_postgresql_is_down_the_receiver_answers_out_of_resources_and_recovers_by_itself(
    celery_node: Node, workers: list[Worker], archive: Archive, postgres: Postgres, ten_studies
):
    _start(celery_node, archive, workers[:1])
    _send(celery_node, ten_studies[:1])
    postgres.stop()
    ds = pydicom.dcmread(ten_studies[1][0])
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ComputedRadiographyImageStorage)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", celery_node.port, ae_title="AVN_NODE")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert (status.Status, status.ErrorComment) == (0xA700, "database unavailable")
    assert "database unavailable" in celery_node.log.read_text()
    postgres.start()
    _send(celery_node, ten_studies[1:3])  # the modality sends again; the node was not restarted
    db = postgres.engine()
    wait_for(lambda: settled(db, 6), SETTLE_S, "every study analysed and every result sent")
    _check_exactly_once(db, archive, ten_studies[:3])
    assert celery_node.process.poll() is None and workers[0].process.poll() is None
