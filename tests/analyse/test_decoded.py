"""Decoding ahead: a compressed instance is decoded in the decoding process after it is stored, and its job
takes the decoded dataset; uncompressed, undecodable or over-budget instances are left to the job."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from avn_node.analyse.decoded import DecodedInstances
from avn_node.events import subscribe
from avn_node.receive.scp import Receiver
from avn_node.receive.statuses import Status
from avn_node.store.models import Instance, InstanceState

RG2 = Path(__file__).resolve().parents[1] / "data" / "real-dicom" / "nema_wg04_rg2"  # see its README
pytestmark = pytest.mark.timeout(120)


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
            assert row.state == InstanceState.ACCEPTED
            keys[name] = row.file_key
    return keys


@pytest.fixture
def decoded(receiver: Receiver):
    d = DecodedInstances(receiver.sessions, receiver.files)
    unsubscribe = subscribe(d.on_event)
    yield d
    unsubscribe()
    d.close()


def _decode_all(decoded: DecodedInstances) -> None:
    while decoded.decode_next():
        pass


def test_a_compressed_instance_is_taken_decoded_with_its_own_uids(receiver: Receiver, decoded: DecodedInstances):
    keys = _store(receiver, "RG2_JLSL.dcm", "RG2_UNC_derived_from_JPLL.dcm")
    _decode_all(decoded)
    ds = decoded.take(keys["RG2_JLSL.dcm"])
    assert ds is not None and not ds.file_meta.TransferSyntaxUID.is_compressed
    original = pydicom.dcmread(RG2 / "RG2_JLSL.dcm")
    assert ds.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(ds.pixel_array, original.pixel_array)  # lossless: the very pixels
    assert decoded.take(keys["RG2_JLSL.dcm"]) is None  # taken once
    assert decoded.take(keys["RG2_UNC_derived_from_JPLL.dcm"]) is None  # uncompressed: its job reads the file


def test_an_undecodable_instance_is_left_to_its_job(receiver: Receiver, decoded: DecodedInstances):
    keys = _store(receiver, "RG2_JPLY.dcm")  # an invalid JPEG scan header
    _decode_all(decoded)
    assert decoded.take(keys["RG2_JPLY.dcm"]) is None


def test_nothing_more_is_decoded_ahead_while_the_budget_is_held(receiver: Receiver, decoded: DecodedInstances):
    decoded.budget = 1
    keys = _store(receiver, "RG2_JLSL.dcm", "RG2_JPLL.dcm")
    _decode_all(decoded)
    assert decoded.take(keys["RG2_JLSL.dcm"]) is not None
    assert decoded.take(keys["RG2_JPLL.dcm"]) is None
