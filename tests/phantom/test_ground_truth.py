"""ground_truth.json of the phantom follows DESIGN §5 and matches the files."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from avn_node.ground_truth import (
    NOTE_STAGES,
    FicatStage,
    GroundTruth,
    GroundTruthError,
    HeadTruth,
    Side,
    View,
)
from avn_node.phantom.generate import PhantomOptions, generate, plan_patient
from avn_node.phantom.lesions import PAPER_STAGE_MIX, StageMixError, sample_stages


def test_ground_truth_boxes_lie_inside_their_image(phantom_set: Path) -> None:
    for r in GroundTruth.load(phantom_set).radiographs:
        ds = pydicom.dcmread(phantom_set / r.file, stop_before_pixels=True)
        for h in r.heads:
            x0, y0, x1, y1 = h.box
            assert 0 <= x0 < x1 <= ds.Columns and 0 <= y0 < y1 <= ds.Rows


def test_ground_truth_has_two_heads_per_ap_and_one_or_two_per_fl(phantom_set: Path) -> None:
    truth = GroundTruth.load(phantom_set)
    counts = {(r.view, len(r.heads)) for r in truth.radiographs}
    assert {c for v, c in counts if v is View.AP} == {2}
    assert {c for v, c in counts if v is View.FL} == {1, 2}
    for r in truth.radiographs:
        assert len({h.side for h in r.heads}) == len(r.heads)


def test_ground_truth_notes_belong_to_their_stage(phantom_set: Path) -> None:
    heads = [h for r in GroundTruth.load(phantom_set).radiographs for h in r.heads]
    for h in heads:
        assert all(h.stage in NOTE_STAGES[n] for n in h.notes)
        assert (h.stage is FicatStage.ABSENCE) == (h.notes == ())


def test_ground_truth_matches_the_dicom_headers(phantom_set: Path) -> None:
    for r in GroundTruth.load(phantom_set).radiographs:
        ds = pydicom.dcmread(phantom_set / r.file, stop_before_pixels=True)
        assert (ds.SOPInstanceUID, ds.PatientID, ds.StudyInstanceUID) == (
            r.sop_instance_uid,
            r.patient_id,
            r.study_instance_uid,
        )
        assert r.file.startswith(f"{r.patient_id}/")


def test_ground_truth_right_head_lies_on_the_side_patient_orientation_names(phantom_set: Path) -> None:
    """Patient's left is on the image's right unless Patient Orientation says the image is mirrored."""
    for r in GroundTruth.load(phantom_set).radiographs:
        if len(r.heads) != 2:
            continue
        ds = pydicom.dcmread(phantom_set / r.file, stop_before_pixels=True)
        x = {h.side: (h.box[0] + h.box[2]) / 2 for h in r.heads}
        assert (x[Side.L] > x[Side.R]) == (ds.PatientOrientation[0] == "L")


def test_ground_truth_box_is_the_loose_square_of_design_5(phantom_set: Path) -> None:
    """Unclipped boxes are square, about 1.5 femoral-head diameters wide."""
    for r in GroundTruth.load(phantom_set).radiographs:
        ds = pydicom.dcmread(phantom_set / r.file, stop_before_pixels=True)
        spacing = float(ds.ImagerPixelSpacing[0])
        for h in r.heads:
            x0, y0, x1, y1 = h.box
            if 0 < x0 and 0 < y0 and x1 < ds.Columns and y1 < ds.Rows:
                assert abs((x1 - x0) - (y1 - y0)) <= 0.2 + 1e-9  # coordinates are rounded to 0.1 px
                assert 1.5 * 36 <= (x1 - x0) * spacing <= 1.5 * 66  # femoral heads are 36–66 mm across


def test_ground_truth_round_trips_through_json(phantom_set: Path) -> None:
    truth = GroundTruth.load(phantom_set)
    raw = json.loads((phantom_set / "ground_truth.json").read_text(encoding="utf-8"))
    assert truth.to_json() == raw
    assert raw["generator"]["name"] == "avn-node phantom" and raw["generator"]["seed"] == 12


def test_head_truth_rejects_a_note_outside_its_stage() -> None:
    with pytest.raises(GroundTruthError, match="joint_space_narrowing"):
        HeadTruth.from_json({"side": "L", "box": [0, 0, 10, 10], "stage": "II", "notes": ["joint_space_narrowing"]})


def test_phantom_same_seed_writes_identical_files_whatever_the_worker_count(tmp_path: Path) -> None:
    options = PhantomOptions(studies=3, seed=5, size_range=(500, 600))
    generate(options, tmp_path / "a", workers=1)
    generate(options, tmp_path / "b", workers=2)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b and len(files_a) >= 4
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_phantom_stage_mix_follows_the_paper_by_default() -> None:
    """Head stages over many draws land within 2 points of AVN-net's 1025:810:1271:1983."""
    import numpy as np

    rng = np.random.default_rng(0)
    counts = {s: 0 for s in FicatStage}
    for _ in range(20000):
        for stage in sample_stages(rng, PAPER_STAGE_MIX, 0.6).values():
            counts[stage] += 1
    total = sum(PAPER_STAGE_MIX.values())
    for stage, n in counts.items():
        assert abs(n / 40000 - PAPER_STAGE_MIX[stage] / total) < 0.02, stage


def test_phantom_refuses_a_bilateral_rate_the_stage_mix_cannot_meet() -> None:
    with pytest.raises(StageMixError, match="--bilateral-rate"):
        PhantomOptions(studies=1, bilateral_rate=0.3)


def test_phantom_study_shapes_put_ap_and_fl_in_one_or_two_studies() -> None:
    one = plan_patient(PhantomOptions(studies=1, shape_mix={"ap+fl": 1.0}), 0)
    two = plan_patient(PhantomOptions(studies=1, shape_mix={"ap|fl": 1.0}), 0)
    assert [r.view for r in one.radiographs] == [View.AP, View.FL]
    assert len({r.study.study_uid for r in one.radiographs}) == 1
    assert len({r.study.study_uid for r in two.radiographs}) == 2
    assert len({r.study.accession for r in two.radiographs}) == 2
    assert {r.study.study_date.date() for r in two.radiographs} == {two.radiographs[0].study.study_date.date()}
