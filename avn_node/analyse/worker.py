"""One analysis job, in steps that hold the database only briefly:

1. *read* — the case's instances and earlier SRs (a short read);
2. *analyse* and *report* — the analyzer, no session open;
3. *store the SRs* — their files, durably, then one short transaction (compare-and-set: only while this
   worker holds the job) that records them and enqueues one delivery per destination: the dispatcher sends
   the SR, which is what a viewer opens, while the images are still being drawn;
4. *store the images* — the captures and summary, rendered now, then the transaction that finishes the job,
   records them with their deliveries and the readings, and marks what was analysed.

Result UIDs are deterministic, so a job repeated after a crash rewrites the same files and rows; a capture
whose UID is already recorded (same image, same model) is neither stored nor sent again. While the job runs a
heartbeat renews its lease.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Mapping
from io import BytesIO

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from avn_node.analyse.ahead import ReadAhead
from avn_node.analyse.analyzers import Analyzer
from avn_node.analyse.queue import JobQueue, case_instances, mark_analysed
from avn_node.config import Settings
from avn_node.events import NodeEvent, emit
from avn_node.faults import fault_point
from avn_node.findings import RadiographFinding, head_json
from avn_node.metrics import observe_job
from avn_node.store.files import LocalFileStore, result_key
from avn_node.store.models import Case, CaseState, Delivery, Instance, Job, Reading, Result

log = logging.getLogger("avn_node.analyse")


class Worker:
    """Runs the jobs it claims from ``queue`` with the analyzer each job names; results go to ``files``."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], analyzers: Mapping[str, Analyzer],
                 queue: JobQueue, files: LocalFileStore, ahead: ReadAhead | None = None) -> None:  # fmt: skip
        self.settings, self.sessions, self.analyzers = settings, sessions, analyzers
        self.queue, self.files, self.ahead = queue, files, ahead

    def warm_up(self) -> None:
        """Warm every analyzer up (:meth:`Analyzer.warm_up`), then freeze what is loaded out of the garbage
        collector's full passes; a failure is logged, the node serves on."""
        for name, analyzer in self.analyzers.items():
            started = time.perf_counter()
            try:
                analyzer.warm_up()
            except Exception as exc:  # noqa: BLE001 - the first real case then pays the one-time costs
                log.warning("analyzer %s did not warm up (%s: %s)", name, type(exc).__name__, exc, exc_info=True)
                continue
            log.info("analyzer %s warmed up in %.2f s", name, time.perf_counter() - started)
        # what is loaded now (models, tables, the web app) lives as long as the process: the collector's full
        # passes need not scan it again during a job
        gc.freeze()

    def run_next(self, job_id: int | None = None) -> bool:
        """Claim and run the oldest claimable job (or job ``job_id``); False when there was none to claim."""
        job = self.queue.claim(job_id)
        if job is None:
            return False
        with self.sessions() as session:
            emit(session, NodeEvent("job.started", str(job.id), data={"case": job.case_id, "version": job.version,
                                                                      "attempt": job.attempts}))  # fmt: skip
            session.commit()
        self.run(job)
        return True

    def run(self, job: Job) -> None:
        """Analyse, report and store ``job``; on any error it is re-queued or failed, never lost."""
        started = time.perf_counter()
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job.id, stop), daemon=True, name=f"lease-{job.id}")
        beat.start()
        try:
            analyzer = self.analyzers.get(job.analyzer)
            if analyzer is None:
                raise LookupError(f'no analyzer "{job.analyzer}" is configured on this node')
            sources, previous, known, covered = self._read(job)
            finding = analyzer.analyse(list(sources.values()))
            fault_point("analyse.mid-analysis")
            timings = analyzer.timings
            step = time.perf_counter()
            sets = analyzer.report(finding, sources, job.version, previous)
            timings["report"] = time.perf_counter() - step
            step = time.perf_counter()
            srs = self._write([(s.study_instance_uid, "sr", s.sr) for s in sets], known)
            if not self._record_srs(job, srs):
                return
            timings["store"] = time.perf_counter() - step
            step = time.perf_counter()
            images = self._write([(s.study_instance_uid, kind, ds) for s in sets for kind, ds in s.images()], known)
            readings = [reading_row(r, finding.model.version) for r in finding.radiographs]
            if self._record(job, images, len(srs), readings, covered, time.perf_counter() - started, timings, step):
                observe_job(timings)
                log.info("case %d version %d: %d new result objects in %.2f s", job.case_id, job.version,
                         len(srs) + len(images), time.perf_counter() - started)  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - a failed job is recorded, never lost
            # the traceback once: a later attempt of a deterministic failure would only repeat it
            log.error("job %d (case %d) failed, attempt %d: %s: %s", job.id, job.case_id, job.attempts,
                      type(exc).__name__, exc, exc_info=job.attempts == 1)  # fmt: skip
            self.queue.fail(job.id, f"{type(exc).__name__}: {exc}")
        finally:
            stop.set()
            beat.join()

    def _heartbeat(self, job_id: int, stop: threading.Event) -> None:
        while not stop.wait(self.queue.lease.total_seconds() / 3):
            try:
                held = self.queue.heartbeat(job_id)
            except Exception as exc:  # noqa: BLE001 - the database is away: try again at the next beat
                log.warning("job %d: lease not renewed (%s); trying again", job_id, type(exc).__name__)
                continue
            if not held:
                log.warning("job %d: lease lost to another worker; its results will not be recorded here", job_id)
                return

    def _read(self, job: Job) -> tuple[dict[str, Dataset], dict[str, list[Dataset]], set[str], list[Instance]]:
        """The case's instances (full datasets), the latest earlier SR per study, the result UIDs recorded, and
        the instance rows read (what this version covers)."""
        with self.sessions() as session:
            case = session.get(Case, job.case_id)
            assert case is not None
            instances = case_instances(session, case)
            keys = {uid: row.file_key for uid, row in instances.items()}
            rows = session.scalars(
                select(Result)
                .where(Result.case_id == case.id, Result.kind == "sr", Result.version < job.version,
                       Result.purged.is_(False))
                .order_by(Result.version)
            ).all()  # fmt: skip
            latest = {row.study_instance_uid: row.file_key for row in rows}
            known = set(session.scalars(select(Result.sop_instance_uid).where(Result.case_id == case.id)))
        sources = {uid: self._source(key) for uid, key in keys.items()}
        previous = {study: [pydicom.dcmread(self.files.local_path(key), stop_before_pixels=True)]
                    for study, key in latest.items()}  # fmt: skip
        return sources, previous, known, list(instances.values())

    def _source(self, key: str) -> Dataset:
        """The instance of ``key``: the dataset read ahead when :mod:`.ahead` holds it, else read from its file."""
        ds = self.ahead.take(key) if self.ahead is not None else None
        return ds if ds is not None else pydicom.dcmread(self.files.local_path(key))

    def _write(self, objects: list[tuple[str, str, Dataset]], known: set[str]) -> list[Result]:
        """Store every (study, kind, dataset) not recorded yet; their rows, not added to any session."""
        rows = []
        for study, kind, ds in objects:
            uid = str(ds.SOPInstanceUID)
            if uid in known:
                continue
            key = result_key(study, kind, uid)
            buffer = BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            self.files.write(buffer.getvalue(), key)
            fault_point("analyse.between-results")
            rows.append(Result(study_instance_uid=study, kind=kind, sop_instance_uid=uid,
                               sop_class_uid=str(ds.SOPClassUID), file_key=key))  # fmt: skip
        return rows

    def _add_results(self, session: Session, job: Job, results: list[Result]) -> None:
        """Add the result rows of ``job`` and one delivery of each per destination."""
        for row in results:
            row.case_id, row.version = job.case_id, job.version
            session.add(row)
        session.flush()
        for row in results:
            for destination in self.settings.destinations:
                session.add(Delivery(result_id=row.id, destination=destination.name))
            emit(session, NodeEvent("result.stored", row.sop_instance_uid,
                                    data={"case": job.case_id, "version": job.version, "kind": row.kind}))  # fmt: skip

    def _record_srs(self, job: Job, results: list[Result]) -> bool:
        """One transaction: the SRs and their deliveries, while this worker still holds the job (lease renewed)."""
        with self.sessions() as session:
            if not self.queue.renew(session, job.id):
                session.rollback()
                log.warning("job %d: no longer held by this worker; results not recorded", job.id)
                return False
            self._add_results(session, job, results)
            session.commit()
        return True

    def _record(self, job: Job, results: list[Result], srs: int, readings: list[Reading], covered: list[Instance],
                seconds: float, timings: dict[str, float], images_started: float) -> bool:  # fmt: skip
        """One transaction: finish the job, add the images, their deliveries and the readings, mark what was
        analysed (``srs``: how many SRs the job recorded before)."""
        with self.sessions() as session:
            if not self.queue.finish(session, job.id, seconds):
                session.rollback()
                log.warning("job %d: no longer held by this worker; results not recorded", job.id)
                return False
            case = session.get(Case, job.case_id)
            assert case is not None
            self._add_results(session, job, results)
            for reading in readings:
                reading.case_id, reading.version = case.id, job.version
                session.add(reading)
            mark_analysed(session, case, covered)
            case.state = CaseState.REPORTED
            timings["images"] = time.perf_counter() - images_started
            data = {"case": case.id, "version": job.version, "results": srs + len(results),
                    "seconds": round(seconds, 4), "timings": {k: round(v, 4) for k, v in timings.items()}}  # fmt: skip
            emit(session, NodeEvent("job.done", str(job.id), data=data))
            session.commit()
        return True


def reading_row(radiograph: RadiographFinding, model_version: str) -> Reading:
    """The readings row of one radiograph (case and version set when recorded)."""
    return Reading(
        study_instance_uid=radiograph.study_instance_uid,
        sop_instance_uid=radiograph.sop_instance_uid,
        model_version=model_version,
        view=radiograph.view.value if radiograph.view else "",
        error=radiograph.error,
        out_of_distribution=radiograph.out_of_distribution,
        refused_heads=sum(1 for h in radiograph.heads if h.out_of_distribution),
        heads=[head_json(h) for h in radiograph.heads],
    )
