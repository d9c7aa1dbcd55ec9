"""One analysis job, in four steps that hold the database only briefly:

1. *read* — the case's instances and earlier SRs (a short read);
2. *analyse* and *report* — the analyzer, no session open;
3. *store* — the result files, durably, then one short transaction that finishes the job (compare-and-set:
   only if this worker still holds it), records the results and enqueues one delivery per destination.

Result UIDs are deterministic, so a job repeated after a crash rewrites the same files and rows; a capture
whose UID is already recorded (same image, same model) is neither stored nor sent again. While the job runs a
heartbeat renews its lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from io import BytesIO

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from avn_node.analyse.analyzers import Analyzer
from avn_node.analyse.queue import JobQueue, case_instances, mark_analysed
from avn_node.config import Settings
from avn_node.events import NodeEvent, emit
from avn_node.faults import fault_point
from avn_node.findings import RadiographFinding, head_json
from avn_node.metrics import observe_job
from avn_node.report.results import ResultSet
from avn_node.store.files import LocalFileStore, result_key
from avn_node.store.models import Case, CaseState, Delivery, Instance, Job, Reading, Result

log = logging.getLogger("avn_node.analyse")


class Worker:
    """Runs the jobs it claims from ``queue`` with the analyzer each job names; results go to ``files``."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session], analyzers: Mapping[str, Analyzer],
                 queue: JobQueue, files: LocalFileStore) -> None:  # fmt: skip
        self.settings, self.sessions, self.analyzers = settings, sessions, analyzers
        self.queue, self.files = queue, files

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
            written = self._write(sets, known)
            readings = [reading_row(r, finding.model.version) for r in finding.radiographs]
            recorded = self._record(job, written, readings, covered, time.perf_counter() - started, timings, step)
            if recorded:
                observe_job(timings)
                log.info("case %d version %d: %d new result objects in %.2f s", job.case_id, job.version,
                         len(written), time.perf_counter() - started)  # fmt: skip
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
        sources = {uid: pydicom.dcmread(self.files.local_path(key)) for uid, key in keys.items()}
        previous = {study: [pydicom.dcmread(self.files.local_path(key), stop_before_pixels=True)]
                    for study, key in latest.items()}  # fmt: skip
        return sources, previous, known, list(instances.values())

    def _write(self, sets: list[ResultSet], known: set[str]) -> list[Result]:
        """Store every result object not recorded yet; their rows, not added to any session."""
        rows = []
        for result_set in sets:
            kinds = ["sr", *["cam"] * len(result_set.captures), *(["summary"] if result_set.summary else [])]
            for kind, ds in zip(kinds, result_set.datasets(), strict=True):
                uid = str(ds.SOPInstanceUID)
                if uid in known:
                    continue
                key = result_key(result_set.study_instance_uid, kind, uid)
                buffer = BytesIO()
                ds.save_as(buffer, enforce_file_format=True)
                self.files.write(buffer.getvalue(), key)
                fault_point("analyse.between-results")
                rows.append(Result(study_instance_uid=result_set.study_instance_uid, kind=kind, sop_instance_uid=uid,
                                   sop_class_uid=str(ds.SOPClassUID), file_key=key))  # fmt: skip
        return rows

    def _record(self, job: Job, results: list[Result], readings: list[Reading], covered: list[Instance],
                seconds: float, timings: dict[str, float], store_started: float) -> bool:  # fmt: skip
        """One transaction: finish the job, add the results, their deliveries and the readings, mark what was
        analysed."""
        with self.sessions() as session:
            if not self.queue.finish(session, job.id, seconds):
                session.rollback()
                log.warning("job %d: no longer held by this worker; results not recorded", job.id)
                return False
            case = session.get(Case, job.case_id)
            assert case is not None
            for row in [*results, *readings]:
                row.case_id, row.version = case.id, job.version
                session.add(row)
            session.flush()
            for row in results:
                for destination in self.settings.destinations:
                    session.add(Delivery(result_id=row.id, destination=destination.name))
            mark_analysed(session, case, covered)
            case.state = CaseState.REPORTED
            timings["store"] = time.perf_counter() - store_started
            data = {"case": case.id, "version": job.version, "results": len(results), "seconds": round(seconds, 4),
                    "timings": {k: round(v, 4) for k, v in timings.items()}}  # fmt: skip
            emit(session, NodeEvent("job.done", str(job.id), data=data))
            for row in results:
                emit(session, NodeEvent("result.stored", row.sop_instance_uid,
                                        data={"case": case.id, "version": job.version, "kind": row.kind}))  # fmt: skip
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
