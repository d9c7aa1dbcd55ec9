"""The shipped demo weights: size, model card, targets on a held-out phantom set, determinism, CAM, robustness."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch

from avn_node.ground_truth import FicatStage, GroundTruth
from avn_node.models import DEFAULT_WEIGHTS
from avn_node.models.engine import match_boxes
from avn_node.models.inference import CAM_PIXELS, Analyzer
from avn_node.models.transforms import square_box
from avn_node.phantom.generate import PhantomOptions, generate

pytestmark = pytest.mark.xdist_group("shipped-weights")

ROOT = Path(__file__).resolve().parents[2]
WEIGHTS = ROOT / DEFAULT_WEIGHTS
HELD_OUT = PhantomOptions(studies=30, seed=777)  # a seed used neither for training (101) nor validation (9001)
BROKEN_JPEG = ROOT / "tests" / "data" / "real-dicom" / "nema_wg04_rg2" / "RG2_JPLY.dcm"
# Share of CAM mass inside the head's own extent (the central 1/1.5 of the box). A uniform map puts 40 % there;
# on the held-out seed-9001 set avn-demo-v1 put a median of 58.5 % (minimum 50.7 %, 85 AVN heads); v2 and v3 pass too.
HEAD_SHARE_MIN = 0.5


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("held-out")
    generate(HELD_OUT, out, workers=2)
    return out


@pytest.fixture(scope="module")
def analyzer() -> Analyzer:
    return Analyzer(WEIGHTS, threads=2)


def test_shipped_weights_fit_size_budget_and_card_says_not_for_clinical_use():
    size = sum(p.stat().st_size for p in WEIGHTS.glob("*.safetensors"))
    assert size <= 60 * 1024 * 1024
    card = (WEIGHTS / "model_card.md").read_text().lower()
    assert "not for clinical use" in card and "synthetic" in card
    metrics = json.loads((WEIGHTS / "metrics.json").read_text())
    assert metrics["n_heads"] > 0 and metrics["model"]["sha256"] == Analyzer(WEIGHTS).info.sha256


def test_shipped_weights_meet_loosened_targets_on_held_out_studies(held_out: Path, tmp_path: Path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "avn_node",
            "evaluate",
            "--data",
            str(held_out),
            "--weights",
            str(WEIGHTS),
            "--json",
            "--bootstrap",
            "200",
            "--out",
            str(tmp_path),
        ],  # fmt: skip
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.loads(proc.stdout)
    assert m["detection"]["f1_iou50"] >= 0.97
    assert m["view"]["auc"] >= 0.99 and m["side"]["auc"] >= 0.99
    # 84 heads: the 95 % CI of presence AUC spans about ±0.06 here (avn-demo-v3: 0.950, CI 0.869–0.995; v2:
    # 0.962), so the floor sits two standard errors under the 0.97 the 300-head held-out set must reach
    assert m["presence"]["auc"] >= 0.93
    for stage in ("absence", "II", "III", "IV"):
        assert m["stage"]["auc"][stage] >= 0.90, stage
    assert 0 <= m["stage"]["f1_macro"] <= 1
    assert m["notes"]["auc_macro"] is not None and m["calibration"]["ece"] is not None
    for name in ("metrics.json", "report.md", "roc.png", "confusion.png", "reliability.png"):
        assert (tmp_path / name).is_file(), name


def test_inference_is_deterministic(held_out: Path, analyzer: Analyzer):
    files = sorted((held_out / "P0001").rglob("*.dcm"))
    first, second = analyzer.analyse_case(files), analyzer.analyse_case(files)
    for a, b in zip(first.radiographs, second.radiographs, strict=True):
        assert [h.box for h in a.heads] == [h.box for h in b.heads]
        assert [h.stage_probabilities for h in a.heads] == [h.stage_probabilities for h in b.heads]
        for ha, hb in zip(a.heads, b.heads, strict=True):
            np.testing.assert_array_equal(ha.cam, hb.cam)


def _central_share(cam: np.ndarray, cam_box: tuple, head_box: tuple) -> float:
    """Share of CAM mass inside the femoral head's own extent: the central 1/1.5 of the loose-square box."""
    x0, y0, x1, y1 = cam_box
    xs = x0 + (np.arange(CAM_PIXELS) + 0.5) / CAM_PIXELS * (x1 - x0)
    ys = y0 + (np.arange(CAM_PIXELS) + 0.5) / CAM_PIXELS * (y1 - y0)
    hx0, hy0, hx1, hy1 = square_box(head_box, 1 / 1.5)
    inside = ((ys >= hy0) & (ys <= hy1))[:, None] & ((xs >= hx0) & (xs <= hx1))[None, :]
    return float(cam[inside].sum() / cam.sum())


def test_cam_mass_concentrates_on_the_femoral_head(held_out: Path, analyzer: Analyzer):
    truth = GroundTruth.load(held_out)
    shares = []
    for r in truth.radiographs[:24]:
        found = analyzer.analyse_radiograph(held_out / r.file)
        pred = torch.tensor([h.box for h in found.heads]).reshape(-1, 4)
        gt = torch.tensor([h.box for h in r.heads]).reshape(-1, 4)
        for p, t in match_boxes(pred, gt, 0.5):
            head = found.heads[p]
            if r.heads[t].stage != FicatStage.ABSENCE and head.cam.sum() > 0:
                shares.append(_central_share(head.cam, head.cam_box, r.heads[t].box))
    assert len(shares) >= 10
    # a uniform map puts (1/1.5)² / 1.05² = 40 % of its mass there
    assert np.median(shares) >= HEAD_SHARE_MIN, shares
    assert min(shares) > 0.40, shares  # no AVN head's map is spread more evenly than uniform


def test_mirrored_radiograph_reads_the_same_patient_sides(held_out: Path, analyzer: Analyzer, tmp_path: Path):
    path = sorted(held_out.rglob("AP.dcm"))[0]
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)
    mirrored = copy.deepcopy(ds)
    mirrored.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
    mirrored.PatientOrientation = ["R" if ds.PatientOrientation[0] == "L" else "L", ds.PatientOrientation[1]]
    plain, flipped = analyzer.analyse_radiograph(ds), analyzer.analyse_radiograph(mirrored)
    assert sorted((h.side, h.stage) for h in plain.heads) == sorted((h.side, h.stage) for h in flipped.heads)
    for h in plain.heads:
        (twin,) = [f for f in flipped.heads if f.side == h.side]
        x0, _, x1, _ = twin.box
        assert abs((ds.Columns - x1) - h.box[0]) < 0.05 * ds.Columns  # the same head, mirrored


def test_undecodable_radiograph_is_reported_not_raised(held_out: Path, analyzer: Analyzer):
    good = sorted(held_out.rglob("*.dcm"))[0]
    case = analyzer.analyse_case([BROKEN_JPEG, good])
    broken = case.radiographs[0]
    assert broken.error.startswith("pixel data cannot be decoded") and broken.heads == ()
    assert case.radiographs[1].heads


def test_analyze_cli_writes_a_result_set_per_study(held_out: Path, tmp_path: Path):
    patient = held_out / "P0002"
    proc = subprocess.run(
        [sys.executable, "-m", "avn_node", "analyze", str(patient), "--out", str(tmp_path), "--weights", str(WEIGHTS)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in patient.rglob("*.dcm")}
    assert {p.name for p in tmp_path.iterdir()} == studies
    for folder in tmp_path.iterdir():
        names = sorted(p.name for p in folder.iterdir())
        assert names[-2:] == ["sr.dcm", "summary.dcm"] and names[0].startswith("cam-")
