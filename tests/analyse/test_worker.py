"""The worker over the analyzer port: what a version covered, failures re-queued, results recorded once."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from sqlalchemy import select

from avn_node.analyse.queue import JobQueue
from avn_node.analyse.worker import Worker
from avn_node.config import Destination
from avn_node.findings import CaseFinding, ModelInfo
from avn_node.group.scheduler import close_stable_studies, schedule_cases
from avn_node.receive.scp import Receiver
from avn_node.receive.statuses import Status
from avn_node.report.results import ResultSet
from avn_node.store.models import Delivery, Event, Job, JobState, Result, utcnow


class FakeAnalyzer:
    """An :class:`~avn_node.analyse.analyzers.Analyzer` that runs ``during`` while it "reads" the case."""

    name = "radiograph"
    version = "fake-1"

    def __init__(self, during: Callable[[], None] = lambda: None) -> None:
        self.during, self.timings, self.seen = during, {"read": 0.0}, []

    def analyse(self, sources: Sequence[Dataset]) -> CaseFinding:
        self.seen.append(sorted(str(ds.SOPInstanceUID) for ds in sources))
        self.during()
        return CaseFinding((), (), ModelInfo("fake", self.version, "0" * 64, 256, 160, True))

    def report(self, finding: CaseFinding, sources: Mapping[str, Dataset], case_version: int,
               predecessors: Mapping[str, Sequence[Dataset]]) -> list[ResultSet]:  # fmt: skip
        return []


def _receive(receiver: Receiver, source: Path, new_sop: bool = False) -> None:
    incoming = receiver.settings.tmp_dir / "in.dcm"
    shutil.copyfile(source, incoming)
    if new_sop:
        ds = pydicom.dcmread(incoming)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(incoming, enforce_file_format=True)
    assert receiver.store(incoming, "MODALITY") == Status.SUCCESS


def _schedule(receiver: Receiver) -> list[int]:
    with receiver.sessions() as session:
        close_stable_studies(session, receiver.settings.pipeline, utcnow() + timedelta(hours=1))
        queued = schedule_cases(session, receiver.settings.pipeline)
        session.commit()
    return queued


def _worker(receiver: Receiver, analyzer: FakeAnalyzer) -> Worker:
    queue = JobQueue(receiver.sessions, "w", 600)
    return Worker(receiver.settings, receiver.sessions, {"radiograph": analyzer}, queue, receiver.files)


def test_an_image_arriving_while_its_case_is_analysed_queues_another_version(receiver: Receiver, phantom_set: Path):
    source = sorted(phantom_set.rglob("AP.dcm"))[0]
    _receive(receiver, source)
    assert len(_schedule(receiver)) == 1
    analyzer = FakeAnalyzer(during=lambda: _receive(receiver, source, new_sop=True))
    assert _worker(receiver, analyzer).run_next()
    assert len(analyzer.seen[0]) == 1
    assert len(_schedule(receiver)) == 1  # version 2, for the image version 1 did not read
    assert _worker(receiver, FakeAnalyzer()).run_next()
    with receiver.sessions() as s:
        assert [(j.version, j.state) for j in s.scalars(select(Job).order_by(Job.id))] == [(1, "done"), (2, "done")]
        done = s.scalars(select(Event).where(Event.kind == "job.done")).all()
        assert [e.data["version"] for e in done] == [1, 2] and "read" in done[0].data["timings"]
    assert _schedule(receiver) == []


def test_a_failing_analysis_is_requeued_with_its_error(receiver: Receiver, phantom_set: Path):
    _receive(receiver, sorted(phantom_set.rglob("AP.dcm"))[0])
    _schedule(receiver)

    def boom() -> None:
        raise RuntimeError("decoder exploded")

    assert _worker(receiver, FakeAnalyzer(during=boom)).run_next()
    with receiver.sessions() as s:
        job = s.scalars(select(Job)).one()
        assert job.state == JobState.QUEUED and job.error == "RuntimeError: decoder exploded" and job.attempts == 1


def _object(sop_class: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    return ds


class ReportingAnalyzer(FakeAnalyzer):
    """Reports one SR and one capture; notes what the database held when the capture was drawn."""

    def __init__(self, sessions) -> None:  # noqa: ANN001 - a sessionmaker
        super().__init__()
        self.sessions, self.when_drawn = sessions, []

    def report(self, finding: CaseFinding, sources: Mapping[str, Dataset], case_version: int,
               predecessors: Mapping[str, Sequence[Dataset]]) -> list[ResultSet]:  # fmt: skip
        def draw() -> tuple[tuple[Dataset, ...], Dataset | None]:
            with self.sessions() as s:
                self.when_drawn = [(r.kind, len(s.scalars(select(Delivery).where(Delivery.result_id == r.id)).all()))
                                   for r in s.scalars(select(Result))]  # fmt: skip
            return (_object("1.2.840.10008.5.1.4.1.1.7"),), None

        study = str(next(iter(sources.values())).StudyInstanceUID)
        return [ResultSet(study, _object("1.2.840.10008.5.1.4.1.1.88.33"), draw)]


def test_the_sr_is_recorded_and_queued_for_sending_before_the_images_are_drawn(receiver: Receiver, phantom_set: Path):
    _receive(receiver, sorted(phantom_set.rglob("AP.dcm"))[0])
    _schedule(receiver)
    settings = receiver.settings.model_copy(
        update={"destinations": [Destination(name="archive", ae_title="A", host="127.0.0.1", port=104)]}
    )
    analyzer = ReportingAnalyzer(receiver.sessions)
    worker = Worker(settings, receiver.sessions, {"radiograph": analyzer}, JobQueue(receiver.sessions, "w", 600),
                    receiver.files)  # fmt: skip
    assert worker.run_next()
    assert analyzer.when_drawn == [("sr", 1)]  # the SR and its delivery, committed; the capture not yet
    with receiver.sessions() as s:
        assert sorted(r.kind for r in s.scalars(select(Result))) == ["cam", "sr"]
        assert len(s.scalars(select(Delivery)).all()) == 2
        (done,) = s.scalars(select(Event).where(Event.kind == "job.done")).all()
        assert done.data["results"] == 2 and {"report", "store", "images"} <= set(done.data["timings"])
