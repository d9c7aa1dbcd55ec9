"""Out-of-distribution refusal: fitted at training, flags foreign radiographs, passes held-out phantom heads.

Weights come from the ``smoke`` profile on a small phantom (seconds of training: they prove the mechanism, not
the model). The foreign images are real CRs from pydicom-data (MIT): a chest (NEMA WG04 RG1) and a distal tibia
(RG3).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from avn_node.config import load_settings
from avn_node.findings import CaseFinding, fuse_hips
from avn_node.ground_truth import STAGES, FicatStage, GroundTruth
from avn_node.models.dataset import prepare
from avn_node.models.evaluate import as_scored, collect, compute_metrics
from avn_node.models.inference import Analyzer
from avn_node.models.ood import (
    FALSE_FLAG_RATE,
    OOD_FILE,
    head_features,
    head_radiographs,
    image_features,
    ledoit_wolf,
)
from avn_node.models.presets import PRESETS
from avn_node.models.train import train
from avn_node.models.weights import MODEL_FILE, load_weights
from avn_node.phantom.generate import PhantomOptions, generate
from tests.report.conftest import finding_from_truth

pytestmark = [pytest.mark.xdist_group("ood"), pytest.mark.timeout(1800)]

# 14 patients, 40 % of them held out for the threshold: the split train.py makes, at the smoke profile
TRAIN = PhantomOptions(studies=14, seed=61, syntax_mix={"explicit": 1.0}, size_range=(400, 500))
HELD_OUT = PhantomOptions(studies=8, seed=62, syntax_mix={"explicit": 1.0}, size_range=(400, 500))
PRESET = replace(PRESETS["smoke"], validation_share=0.4)
# Few validation heads make the fitted threshold their maximum; on new heads of the same generator the
# flag rate then scatters around 1 / (n + 1). The bound is loose for the small sample, not the stated 2 %.
HELD_OUT_FLAG_RATE_MAX = 0.15
CHEST, TIBIA = "RG1_UNCR.dcm", "RG3_UNCR.dcm"


@pytest.fixture(scope="module")
def train_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ood-train")
    generate(TRAIN, out, workers=1)
    return out


@pytest.fixture(scope="module")
def weights(train_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ood-weights") / "w"
    train(train_set, out, PRESET, seed=3, threads=2, workers=1, progress=False)
    return out


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ood-held-out")
    generate(HELD_OUT, out, workers=1)
    return out


@pytest.fixture(scope="module")
def analyzer(weights: Path) -> Analyzer:
    return Analyzer(weights, threads=2)


@pytest.fixture(scope="module")
def held_out_scores(analyzer: Analyzer, held_out: Path) -> np.ndarray:
    """Each held-out phantom head's score on its ground-truth box (the classifier's view of a real head)."""
    data = prepare(held_out, analyzer.info.detector_size, analyzer.info.crop_size, workers=1, progress=False)
    assert analyzer.ood is not None
    own = analyzer.ood.head_scores(head_features(analyzer.classifier, data, analyzer.info.crop_size))
    image = analyzer.ood.image_scores(image_features(analyzer.detector, data, analyzer.info.detector_size))
    return np.fmax(own, image[head_radiographs(data)])


def test_training_stores_the_reference_with_its_threshold_and_false_flag_rate(weights: Path):
    meta = json.loads((weights / MODEL_FILE).read_text())
    entry = meta["ood"]
    assert entry["file"] == OOD_FILE and (weights / OOD_FILE).is_file()
    assert entry["false_flag_rate"] == FALSE_FLAG_RATE == 0.02
    assert entry["fitted_on"].startswith("validation split")
    assert entry["validation_heads"] > 0 and entry["training_heads"] > entry["validation_heads"] / 2
    assert entry["validation_flag_rate"] <= FALSE_FLAG_RATE
    assert entry["quantiles"]["validation_heads"]["q98"] <= entry["threshold"]
    assert entry["head"]["dimensions"] == 512 and entry["image"]["dimensions"] == 480
    _, _, info = load_weights(weights)
    assert info.ood is not None and info.ood.threshold == pytest.approx(entry["threshold"])
    assert info.ood.head.precision.shape == (512, 512) and info.ood.head.precision.dtype == np.float32


@pytest.mark.parametrize("name", [CHEST, TIBIA])
def test_chest_and_tibia_radiographs_score_above_every_held_out_phantom_head_and_are_flagged(
    analyzer: Analyzer, held_out_scores: np.ndarray, name: str
):
    found = analyzer.analyse_radiograph(get_testdata_file(name))
    assert found.error == ""
    assert found.ood_score > held_out_scores.max()
    assert found.ood_score > analyzer.ood.threshold and found.out_of_distribution  # type: ignore[union-attr]
    for head in found.heads:  # whatever the detector hallucinated is refused, never staged
        assert head.out_of_distribution and not head.evaluated
        assert "outside the model's experience" in head.ood_reason


def test_held_out_phantom_heads_pass_at_about_the_stated_rate(analyzer: Analyzer, held_out_scores: np.ndarray):
    assert len(held_out_scores) >= 20
    rate = float(np.mean(held_out_scores > analyzer.ood.threshold))  # type: ignore[union-attr]
    assert rate <= HELD_OUT_FLAG_RATE_MAX, (rate, np.sort(held_out_scores)[-5:])
    assert np.median(held_out_scores) < 0.8 * analyzer.ood.threshold  # type: ignore[union-attr]


def test_refusal_switched_off_flags_nothing_but_still_scores(weights: Path):
    lenient = Analyzer(weights, threads=2, refuse_out_of_distribution=False)
    found = lenient.analyse_radiograph(get_testdata_file(CHEST))
    assert found.ood_score > lenient.ood.threshold  # type: ignore[union-attr]
    assert not found.out_of_distribution
    assert all(h.evaluated and np.isfinite(h.ood_score) for h in found.heads)


def test_weights_without_a_reference_score_nothing_and_refuse_nothing(weights: Path, tmp_path: Path, caplog):
    bare = tmp_path / "bare"
    shutil.copytree(weights, bare, ignore=shutil.ignore_patterns("checkpoints", OOD_FILE))
    meta = json.loads((bare / MODEL_FILE).read_text())
    del meta["ood"]
    (bare / MODEL_FILE).write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="avn_node.models"):
        plain = Analyzer(bare, threads=2)
    assert plain.ood is None and "no out-of-distribution reference" in caplog.text
    found = plain.analyse_radiograph(get_testdata_file(CHEST))
    assert np.isnan(found.ood_score) and not found.out_of_distribution
    assert all(np.isnan(h.ood_score) and h.evaluated for h in found.heads)


def test_fit_ood_cli_rebuilds_the_training_split_and_reproduces_the_reference(
    weights: Path, train_set: Path, held_out: Path, tmp_path: Path
):
    trained = json.loads((weights / MODEL_FILE).read_text())["ood"]
    refitted = tmp_path / "w"
    shutil.copytree(weights, refitted, ignore=shutil.ignore_patterns("checkpoints", OOD_FILE))
    meta = json.loads((refitted / MODEL_FILE).read_text())
    del meta["ood"]
    (refitted / MODEL_FILE).write_text(json.dumps(meta))
    command = [sys.executable, "-m", "avn_node", "fit-ood", "--weights", str(refitted), "--workers", "1"]
    wrong = subprocess.run([*command, "--data", str(held_out)], capture_output=True, text=True)
    assert wrong.returncode == 2 and "not their training data" in wrong.stderr
    proc = subprocess.run([*command, "--data", str(train_set)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    entry = json.loads((refitted / MODEL_FILE).read_text())["ood"]
    assert entry["validation_heads"] == trained["validation_heads"]
    assert entry["threshold"] == pytest.approx(trained["threshold"], rel=1e-3)
    assert entry["fitted_by"] == "avn-node fit-ood" and (refitted / OOD_FILE).is_file()


def test_ledoit_wolf_covariance_is_invertible_with_fewer_samples_than_dimensions():
    x = np.random.default_rng(0).normal(size=(10, 64))
    _, cov, shrinkage = ledoit_wolf(x)
    assert 0 < shrinkage <= 1
    assert np.linalg.cond(cov) < 1e6


def test_refusal_is_on_by_default_and_switchable_by_config(monkeypatch: pytest.MonkeyPatch):
    assert load_settings().models.refuse_out_of_distribution is True
    monkeypatch.setenv("AVN_MODELS__REFUSE_OUT_OF_DISTRIBUTION", "false")
    assert load_settings().models.refuse_out_of_distribution is False


def _refused(head):
    return dataclasses.replace(head, out_of_distribution=True, ood_score=9.0, ood_reason="AVN not evaluated: test")


def test_evaluation_counts_a_refused_head_as_a_detection_miss_and_p_one_half(phantom_set: Path):
    truth = GroundTruth.load(phantom_set)
    records = truth.radiographs
    radiographs = [finding_from_truth(r, pydicom.dcmread(phantom_set / r.file)) for r in records]
    baseline = compute_metrics(collect(truth, [CaseFinding(tuple(radiographs), (), None)]), 0)  # type: ignore[arg-type]
    assert baseline["detection"]["recall_iou50"] == 1.0 and baseline["ood"]["n_heads_flagged"] == 0
    first = radiographs[0]
    radiographs[0] = dataclasses.replace(first, heads=tuple(_refused(h) for h in first.heads), out_of_distribution=True)
    c = collect(truth, [CaseFinding(tuple(radiographs), (), None)])  # type: ignore[arg-type]
    m = compute_metrics(c, 0)
    n_heads = sum(len(r.heads) for r in records)
    assert m["detection"]["recall_iou50"] == pytest.approx(1 - len(first.heads) / n_heads)
    assert m["detection"]["precision_iou50"] == 1.0  # a refusal is no false positive either
    assert m["ood"]["n_heads_flagged"] == len(first.heads) and m["ood"]["n_radiographs_flagged"] == 1
    assert m["n_matched_heads"] == n_heads  # still classified, as p = 0.5
    refused = [h for h in c.heads if h.found.out_of_distribution]
    assert refused and all(h.found.presence_probability == 0.5 for h in refused)
    assert all(h.found.stage == FicatStage.ABSENCE and h.found.side_probability == 0.5 for h in refused)
    scored = as_scored(radiographs[0].heads[0])
    assert sum(scored.stage_probabilities[s] for s in STAGES) == pytest.approx(1.0)


def test_a_refused_head_never_decides_its_hip(phantom_set: Path):
    truth = GroundTruth.load(phantom_set)
    by_patient: dict[str, list] = {}
    for r in truth.radiographs:
        by_patient.setdefault(r.patient_id, []).append(r)
    records = next(rs for rs in by_patient.values() if len(rs) == 2 and {h.side for h in rs[1].heads} <= {
        h.side for h in rs[0].heads})  # fmt: skip
    ap, fl = (finding_from_truth(r, pydicom.dcmread(phantom_set / r.file)) for r in records)
    side = fl.heads[0].side
    worst = dataclasses.replace(
        next(h for h in ap.heads if h.side == side),
        stage=FicatStage.IV,
        stage_probabilities={s: 0.97 if s == FicatStage.IV else 0.01 for s in STAGES},
    )
    ap = dataclasses.replace(ap, heads=tuple(_refused(worst) if h.side == side else h for h in ap.heads))
    (hip,) = [h for h in fuse_hips((ap, fl)) if h.side == side]
    assert hip.evaluated and hip.decided_by == fl.sop_instance_uid and hip.sources == (fl.sop_instance_uid,)
    fl = dataclasses.replace(fl, heads=tuple(_refused(h) if h.side == side else h for h in fl.heads))
    (hip,) = [h for h in fuse_hips((ap, fl)) if h.side == side]
    assert not hip.evaluated and set(hip.sources) == {ap.sop_instance_uid, fl.sop_instance_uid}


def test_evaluate_reports_the_refusal_rate_with_the_threshold(weights: Path, held_out: Path, tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "avn_node", "evaluate", "--data", str(held_out), "--weights", str(weights),
         "--json", "--bootstrap", "0", "--out", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    ood = json.loads(proc.stdout)["ood"]
    assert ood["reference"] is True and ood["refusal"] is True and ood["false_flag_rate"] == FALSE_FLAG_RATE
    assert ood["n_heads_read"] > 0 and 0 <= ood["flag_rate_heads"] <= 1
    assert ood["n_heads_flagged"] == round(ood["flag_rate_heads"] * ood["n_heads_read"])
    assert "out-of-distribution refusal (threshold" in (tmp_path / "report.md").read_text()
