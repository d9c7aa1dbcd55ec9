"""The C-STORE handler's store step: durable file + row, refusals with named statuses, duplicates."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from avn_node.config import Settings
from avn_node.receive.scp import Receiver
from avn_node.receive.statuses import Refusal, Status
from avn_node.store.files import remove_stale_temp_files
from avn_node.store.models import Instance, InstanceState, Study


def _incoming(receiver: Receiver, source: Path, name: str = "in.dcm") -> Path:
    path = receiver.settings.tmp_dir / name
    shutil.copyfile(source, path)
    return path


def test_store_moves_file_into_store_and_commits_row_before_success(receiver: Receiver, phantom_set: Path):
    source = sorted(phantom_set.rglob("AP.dcm"))[0]
    incoming = _incoming(receiver, source)
    assert receiver.store(incoming, "MODALITY") == Status.SUCCESS
    assert not incoming.exists()
    with receiver.sessions() as s:
        (row,) = s.scalars(select(Instance)).all()
        assert (receiver.settings.node.data_dir / row.file_key).read_bytes() == source.read_bytes()
        assert not Path(row.file_key).is_absolute() and row.file_key.startswith("instances/")
        assert row.state == InstanceState.ACCEPTED and row.analyzer == "radiograph"
        assert row.calling_ae_title == "MODALITY"
        assert s.scalars(select(Study)).one().study_instance_uid == row.study_instance_uid


def test_store_is_idempotent_for_identical_duplicate_and_keeps_both_when_bytes_differ(receiver, phantom_set):
    source = sorted(phantom_set.rglob("AP.dcm"))[0]
    assert receiver.store(_incoming(receiver, source), "A") == Status.SUCCESS
    assert receiver.store(_incoming(receiver, source), "A") == Status.SUCCESS
    changed = pydicom.dcmread(source)
    changed.InstitutionName = "Elsewhere"
    changed.save_as(receiver.settings.tmp_dir / "changed.dcm")
    assert receiver.store(receiver.settings.tmp_dir / "changed.dcm", "A") == Status.SUCCESS
    with receiver.sessions() as s:
        rows = s.scalars(select(Instance)).all()
    assert len(rows) == 2 and len({r.file_key for r in rows}) == 2 and len({r.sop_instance_uid for r in rows}) == 1


def _with_security(settings: Settings, **values: float) -> Settings:
    return settings.model_copy(update={"security": settings.security.model_copy(update=values)})


def test_store_answers_out_of_resources_below_watermark(receiver: Receiver, phantom_set: Path):
    receiver.settings = _with_security(receiver.settings, min_free_disk_mb=1e12)
    outcome = receiver.store(_incoming(receiver, sorted(phantom_set.rglob("AP.dcm"))[0]), "A")
    assert isinstance(outcome, Refusal) and outcome.status == Status.OUT_OF_RESOURCES
    assert "below min_free_disk_mb 1e+12" in outcome.comment


def test_store_answers_out_of_resources_over_max_dataset_mb(receiver: Receiver, phantom_set: Path):
    receiver.settings = _with_security(receiver.settings, max_dataset_mb=0.001)
    outcome = receiver.store(_incoming(receiver, sorted(phantom_set.rglob("AP.dcm"))[0]), "A")
    assert isinstance(outcome, Refusal) and outcome.status == Status.OUT_OF_RESOURCES
    assert "over max_dataset_mb 0.001" in outcome.comment


def test_store_answers_cannot_understand_for_unparsable_header(receiver: Receiver):
    junk = receiver.settings.tmp_dir / "junk.dcm"
    junk.write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 64)
    outcome = receiver.store(junk, "A")
    assert isinstance(outcome, Refusal) and outcome.status == Status.CANNOT_UNDERSTAND


def test_store_answers_cannot_understand_naming_the_element_where_the_header_is_cut(receiver, phantom_set):
    source = sorted(phantom_set.rglob("AP.dcm"))[0]
    data = source.read_bytes()
    name = data.index(b"\x10\x00\x10\x00PN")  # Patient's Name, explicit VR
    cut = receiver.settings.tmp_dir / "cut.dcm"
    cut.write_bytes(data[: name + 10])
    outcome = receiver.store(cut, "A")
    assert isinstance(outcome, Refusal) and outcome.status == Status.CANNOT_UNDERSTAND
    assert outcome.comment.startswith("header cut short in (0010,0010)")


def test_store_answers_mismatch_when_the_data_set_names_another_sop_class_than_the_request(receiver, phantom_set):
    ds = pydicom.dcmread(sorted(phantom_set.rglob("AP.dcm"))[0])
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # what the request said (DX)
    ds.save_as(receiver.settings.tmp_dir / "other.dcm")
    outcome = receiver.store(receiver.settings.tmp_dir / "other.dcm", "A")
    assert isinstance(outcome, Refusal) and outcome.status == Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "SOP Class UID does not match the request" in outcome.comment


def test_store_keeps_non_radiograph_as_ignored(receiver: Receiver, phantom_set: Path):
    ds = pydicom.dcmread(sorted(phantom_set.rglob("AP.dcm"))[0])
    ds.Modality = "MR"
    ds.save_as(receiver.settings.tmp_dir / "mr.dcm")
    assert receiver.store(receiver.settings.tmp_dir / "mr.dcm", "A") == Status.SUCCESS
    with receiver.sessions() as s:
        assert s.scalars(select(Instance)).one().state == InstanceState.IGNORED
        assert s.scalars(select(Study)).all() == []


def test_store_accepts_again_an_instance_whose_file_was_purged(receiver: Receiver, phantom_set: Path):
    source = sorted(phantom_set.rglob("AP.dcm"))[0]
    assert receiver.store(_incoming(receiver, source), "A") == Status.SUCCESS
    with receiver.sessions() as s:
        row = s.scalars(select(Instance)).one()
        receiver.files.delete(row.file_key)
        row.state = InstanceState.PURGED
        s.commit()
    assert receiver.store(_incoming(receiver, source), "A") == Status.SUCCESS
    with receiver.sessions() as s:
        states = sorted(r.state for r in s.scalars(select(Instance)))
    assert states == ["accepted", "purged"]


def test_store_routes_a_radiograph_without_modality_by_its_sop_class(
    receiver: Receiver, phantom_set: Path, caplog: pytest.LogCaptureFixture
):
    ds = pydicom.dcmread(sorted(phantom_set.rglob("AP.dcm"))[0])
    del ds.Modality
    incoming = receiver.settings.tmp_dir / "no-modality.dcm"
    ds.save_as(incoming, enforce_file_format=True)
    with caplog.at_level("INFO"):
        assert receiver.store(incoming, "A") == Status.SUCCESS
    with receiver.sessions() as s:
        assert s.scalars(select(Instance)).one().state == InstanceState.ACCEPTED
    assert "has no Modality: routed as" in caplog.text


def test_store_logs_why_an_instance_is_ignored(receiver: Receiver, phantom_set: Path, caplog: pytest.LogCaptureFixture):
    ds = pydicom.dcmread(sorted(phantom_set.rglob("AP.dcm"))[0])
    ds.BodyPartExamined = "KNEE"
    incoming = receiver.settings.tmp_dir / "knee.dcm"
    ds.save_as(incoming, enforce_file_format=True)
    with caplog.at_level("INFO"):
        assert receiver.store(incoming, "A") == Status.SUCCESS
    assert "ignored: no analyzer selects" in caplog.text and "body part 'KNEE'" in caplog.text


def test_stale_temp_files_are_removed_and_a_receive_in_progress_is_kept(tmp_path: Path):
    old, fresh = tmp_path / "tmp-old", tmp_path / "tmp-fresh"
    old.write_bytes(b"cut short")
    fresh.write_bytes(b"still arriving")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert remove_stale_temp_files(tmp_path, 600) == 1
    assert not old.exists() and fresh.exists()
