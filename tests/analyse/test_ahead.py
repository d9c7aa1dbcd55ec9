"""Reading ahead: an accepted instance is decoded (a compressed one in the decoding process) and read by its
analyzer before its case is complete; the job takes that dataset and the analyzer reuses its reading.
Undecodable or over-budget instances are left to the job."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from avn_node.analyse.ahead import ReadAhead
from avn_node.config import Settings
from avn_node.events import subscribe
from avn_node.receive.scp import Receiver
from avn_node.receive.statuses import Status
from avn_node.store.models import Instance, InstanceState

RG2 = Path(__file__).resolve().parents[1] / "data" / "real-dicom" / "nema_wg04_rg2"  # see its README
pytestmark = pytest.mark.timeout(120)


class Recorder:
    """An analyzer that notes what it was asked to read ahead."""

    def __init__(self) -> None:
        self.read: list[Dataset] = []

    def read_ahead(self, source: Dataset) -> None:
        self.read.append(source)


def _store(receiver: Receiver, *names: str) -> dict[str, str]:
    """Store RG2 files; file key by name."""
    keys = {}
    for name in names:
        incoming = receiver.settings.tmp_dir / name
        shutil.copyfile(RG2 / name, incoming)
        assert receiver.store(incoming, "MODALITY") == Status.SUCCESS
        sop = str(pydicom.dcmread(RG2 / name, stop_before_pixels=True).SOPInstanceUID)
        with receiver.sessions() as s:
            row = s.scalars(select(Instance).where(Instance.sop_instance_uid == sop)).one()
            assert row.state == InstanceState.ACCEPTED and row.analyzer == "radiograph"
            keys[name] = row.file_key
    return keys


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def ahead(receiver: Receiver, recorder: Recorder):
    a = ReadAhead(receiver.sessions, receiver.files, {"radiograph": recorder})
    unsubscribe = subscribe(a.on_event)
    yield a
    unsubscribe()
    a.close()


def _read_next(ahead: ReadAhead) -> None:
    """Read the next decoded instance, waiting for a decoding process to finish it."""
    deadline = time.monotonic() + 60
    while not ahead.read_next():
        assert time.monotonic() < deadline, "nothing decoded"
        time.sleep(0.01)


def _read_all(ahead: ReadAhead) -> None:
    while ahead.decode_next():
        pass
    deadline = time.monotonic() + 60
    while ahead.in_flight():
        assert time.monotonic() < deadline, "still in flight"
        ahead.read_next() or time.sleep(0.01)


def test_a_compressed_instance_is_decoded_read_and_taken_with_its_own_uids(
    receiver: Receiver, ahead: ReadAhead, recorder: Recorder
):
    keys = _store(receiver, "RG2_JLSL.dcm", "RG2_UNC_derived_from_JPLL.dcm")
    _read_all(ahead)
    ds = ahead.take(keys["RG2_JLSL.dcm"])
    assert ds is not None and not ds.file_meta.TransferSyntaxUID.is_compressed
    original = pydicom.dcmread(RG2 / "RG2_JLSL.dcm")
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(ds.pixel_array, original.pixel_array)  # lossless: the very pixels
    assert ahead.take(keys["RG2_JLSL.dcm"]) is None  # taken once
    uncompressed = ahead.take(keys["RG2_UNC_derived_from_JPLL.dcm"])
    assert {id(d) for d in recorder.read} == {id(ds), id(uncompressed)}  # the analyzer read the objects taken


def test_an_undecodable_instance_is_left_to_its_job(receiver: Receiver, ahead: ReadAhead, recorder: Recorder):
    keys = _store(receiver, "RG2_JPLY.dcm")  # an invalid JPEG scan header
    _read_all(ahead)
    assert ahead.take(keys["RG2_JPLY.dcm"]) is None and recorder.read == []


def test_nothing_more_is_read_ahead_while_the_budget_is_held(receiver: Receiver, ahead: ReadAhead):
    ahead.budget = 1
    keys = _store(receiver, "RG2_JLSL.dcm", "RG2_JPLL.dcm")
    _read_all(ahead)
    assert ahead.take(keys["RG2_JLSL.dcm"]) is not None
    assert ahead.take(keys["RG2_JPLL.dcm"]) is None


def test_the_radiograph_analyzer_reuses_a_reading_ahead_only_for_the_dataset_it_read(phantom_set: Path):
    from avn_node.analyse.radiograph import RadiographAnalyzer

    analyzer = RadiographAnalyzer(Settings())
    path = sorted(phantom_set.rglob("AP.dcm"))[0]
    ds = pydicom.dcmread(path)
    analyzer.read_ahead(ds)
    reused = analyzer.analyse([ds])
    assert analyzer.timings["ahead"] > 0  # not read again
    fresh = analyzer.analyse([pydicom.dcmread(path)])  # same content, another object: read in the job
    assert "ahead" not in analyzer.timings
    pairs = list(zip(reused.radiographs[0].heads, fresh.radiographs[0].heads, strict=True))
    assert pairs and all(a.side == b.side and a.stage == b.stage and np.allclose(a.box, b.box)
                         and np.isclose(a.presence_probability, b.presence_probability) for a, b in pairs)  # fmt: skip
    assert [h.stage for h in reused.hips] == [h.stage for h in fresh.hips]


def test_a_burst_is_left_to_the_jobs(receiver: Receiver, ahead: ReadAhead, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("avn_node.analyse.ahead.BURST", 1)
    keys = _store(receiver, "RG2_JLSL.dcm", "RG2_JPLL.dcm")
    _read_all(ahead)
    assert ahead.take(keys["RG2_JLSL.dcm"]) is None  # one more waited when it came up
    assert ahead.take(keys["RG2_JPLL.dcm"]) is not None


def test_a_job_waits_for_its_instance_in_flight_and_one_it_read_itself_is_not_read_later(
    receiver: Receiver, ahead: ReadAhead, recorder: Recorder
):
    keys = _store(receiver, "RG2_JLSL.dcm", "RG2_JPLL.dcm")
    ahead.decode_next()  # decoded, not read yet: in flight
    taken: list[Dataset | None] = []
    job = threading.Thread(target=lambda: taken.append(ahead.take(keys["RG2_JLSL.dcm"])))
    job.start()
    job.join(0.3)
    assert job.is_alive()  # waiting for the decoding and the read
    _read_next(ahead)
    job.join(5)
    assert taken and taken[0] is not None
    assert ahead.take(keys["RG2_JPLL.dcm"]) is None  # still queued: the job reads it
    _read_all(ahead)
    assert len(recorder.read) == 1  # nor read ahead afterwards, for nobody
