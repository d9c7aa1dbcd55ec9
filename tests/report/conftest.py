"""Hand-made findings over real phantom files, so result objects are tested apart from model quality."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from avn_node.findings import CaseFinding, HeadFinding, ModelInfo, RadiographFinding, fuse_hips
from avn_node.ground_truth import NOTES, STAGES, GroundTruth, RadiographTruth, View
from avn_node.models.transforms import square_box

MODEL = ModelInfo(name="AVN-net (avn-node)", version="test-v0", sha256="ab" * 32, detector_size=256, crop_size=160,
                  demo=True)  # fmt: skip


def _cam() -> np.ndarray:
    """A CAM peaking in the upper middle of the box, where the weight-bearing dome lies."""
    y, x = np.mgrid[0:64, 0:64]
    return np.exp(-((x - 32) ** 2 + (y - 24) ** 2) / (2 * 8.0**2)).astype(np.float32)


def finding_from_truth(rt: RadiographTruth, ds: Dataset) -> RadiographFinding:
    """A reading that agrees with the ground truth, with fixed probabilities."""
    heads = tuple(
        HeadFinding(
            side=h.side,
            box=h.box,
            detection_score=0.99,
            side_probability=0.97,
            side_agrees=True,
            stage=h.stage,
            stage_probabilities={s: 0.85 if s == h.stage else 0.05 for s in STAGES},
            note_probabilities={n: 0.9 if n in h.notes else 0.05 for n in NOTES},
            cam=_cam(),
            cam_box=square_box(h.box, 1.05),
        )
        for h in rt.heads
    )
    return RadiographFinding(
        sop_instance_uid=rt.sop_instance_uid,
        study_instance_uid=rt.study_instance_uid,
        series_instance_uid=str(ds.SeriesInstanceUID),
        sop_class_uid=str(ds.SOPClassUID),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        view=rt.view,
        ap_probability=0.98 if rt.view == View.AP else 0.02,
        heads=heads,
    )


def make_case(root: Path, records: list[RadiographTruth]) -> tuple[CaseFinding, dict[str, Dataset]]:
    """The case of these radiographs and their full datasets by SOP Instance UID."""
    sources = {r.sop_instance_uid: pydicom.dcmread(root / r.file) for r in records}
    radiographs = tuple(finding_from_truth(r, sources[r.sop_instance_uid]) for r in records)
    return CaseFinding(radiographs=radiographs, hips=fuse_hips(radiographs), model=MODEL), sources


@pytest.fixture(scope="session")
def patients(phantom_set: Path) -> dict[str, list[RadiographTruth]]:
    by_patient: dict[str, list[RadiographTruth]] = defaultdict(list)
    for r in GroundTruth.load(phantom_set).radiographs:
        by_patient[r.patient_id].append(r)
    return by_patient


@pytest.fixture(scope="session")
def one_study_case(phantom_set: Path, patients: dict[str, list[RadiographTruth]]):
    """A patient whose AP and FL lie in one study."""
    for records in patients.values():
        if len(records) == 2 and len({r.study_instance_uid for r in records}) == 1:
            return make_case(phantom_set, records)
    pytest.fail("the phantom set has no one-study AP + FL patient")


@pytest.fixture(scope="session")
def two_study_case(phantom_set: Path, patients: dict[str, list[RadiographTruth]]):
    """A patient whose AP and FL were sent as two studies."""
    for records in patients.values():
        if len({r.study_instance_uid for r in records}) == 2:
            return make_case(phantom_set, records)
    pytest.fail("the phantom set has no two-study patient")
