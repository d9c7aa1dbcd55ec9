"""Training on a tiny phantom set: the loop learns, resumes exactly, augments with side-swapping flips; fine-tuning
from existing weights (all layers or heads only); evaluation of the classifier on the truth boxes.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from avn_node.models.classifier import AvnClassifier
from avn_node.models.dataset import prepare
from avn_node.models.engine import classifier_batch, train_classifier_epoch, validate_classifier
from avn_node.models.presets import PRESETS
from avn_node.models.train import ResumeMismatchError, train
from avn_node.models.weights import CLASSIFIER_FILE, DETECTOR_FILE, MODEL_FILE, load_weights
from avn_node.phantom.generate import PhantomOptions, generate

SMOKE = PRESETS["smoke"]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    generate(PhantomOptions(studies=6, seed=41, syntax_mix={"explicit": 1.0}, size_range=(400, 600)), out, workers=1)
    return out


def _ignore(_: int) -> None:
    pass


def _train(data: Path, out: Path, **changes: int) -> dict:
    return train(data, out, replace(SMOKE, **changes), seed=3, threads=1, workers=1, progress=False)


def test_train_lowers_detector_loss(tiny_set: Path, tmp_path: Path):
    losses = [
        h["loss"]
        for h in _train(tiny_set, tmp_path / "w", detector_epochs=6, classifier_epochs=0)["history"]["detector"]
    ]
    assert losses[-1] < 0.8 * losses[0], losses


def test_classifier_epochs_lower_unaugmented_training_loss(tiny_set: Path):
    data = prepare(tiny_set, SMOKE.detector_size, SMOKE.crop_size, workers=1, progress=False)
    torch.manual_seed(0)
    model = AvnClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=SMOKE.classifier_lr)
    before = validate_classifier(model, data, SMOKE.crop_size)
    for epoch in range(8):
        train_classifier_epoch(model, optimizer, data, SMOKE.crop_size, 16, 1, np.random.default_rng(epoch), _ignore)
    after = validate_classifier(model, data, SMOKE.crop_size)
    assert after < 0.7 * before, (before, after)


def test_train_writes_loadable_weights_with_their_recipe(tiny_set: Path, tmp_path: Path):
    out = tmp_path / "w"
    _train(tiny_set, out, detector_epochs=1, classifier_epochs=1)
    for name in (DETECTOR_FILE, CLASSIFIER_FILE, MODEL_FILE, "training.png"):
        assert (out / name).is_file(), name
    meta = json.loads((out / MODEL_FILE).read_text())
    assert meta["preset"]["name"] == "smoke" and meta["seed"] == 3 and meta["demo"] is True
    assert meta["data"]["generator"]["seed"] == 41
    _, _, info = load_weights(out)
    assert info.version == "w" and len(info.sha256) == 64


def test_train_resumed_from_checkpoint_equals_uninterrupted_run(tiny_set: Path, tmp_path: Path):
    _train(tiny_set, tmp_path / "once", detector_epochs=2, classifier_epochs=2)
    _train(tiny_set, tmp_path / "twice", detector_epochs=1, classifier_epochs=0)
    _train(tiny_set, tmp_path / "twice", detector_epochs=2, classifier_epochs=2)
    for name in (DETECTOR_FILE, CLASSIFIER_FILE):
        once, twice = load_file(tmp_path / "once" / name), load_file(tmp_path / "twice" / name)
        assert once.keys() == twice.keys()
        for key in once:
            torch.testing.assert_close(once[key], twice[key], rtol=0, atol=0, msg=f"{name}:{key}")


def test_classifier_batch_flip_swaps_side_label(tiny_set: Path):
    data = prepare(tiny_set, SMOKE.detector_size, 64, workers=1, progress=False)
    idx = np.arange(len(data.crops))
    plain, plain_labels = classifier_batch(data, idx, 64, None)
    augmented, labels = classifier_batch(data, idx, 64, np.random.default_rng(0))
    flipped = 0
    for k in range(len(idx)):
        a = augmented[k, 0].flatten()
        same = torch.corrcoef(torch.stack([a, plain[k, 0].flatten()]))[0, 1]
        mirrored = torch.corrcoef(torch.stack([a, plain[k, 0].flip(-1).flatten()]))[0, 1]
        was_flipped = bool(mirrored > same)
        flipped += was_flipped
        assert labels["side"][k] == (1 - plain_labels["side"][k] if was_flipped else plain_labels["side"][k])
        assert labels["stage"][k] == plain_labels["stage"][k]
    assert 0 < flipped < len(idx)


def test_cli_train_rejects_unknown_profile(tiny_set: Path, tmp_path: Path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "avn_node",
            "train",
            "--data",
            str(tiny_set),
            "--out",
            str(tmp_path),
            "--profile",
            "huge",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "--profile" in proc.stderr


@pytest.fixture(scope="module")
def base_weights(tiny_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Smoke weights trained one epoch per network from scratch: what fine-tuning starts from."""
    out = tmp_path_factory.mktemp("base") / "base-v1"
    _train(tiny_set, out, detector_epochs=1, classifier_epochs=1)
    return out


def _tensors(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {name: load_file(folder / name) for name in (DETECTOR_FILE, CLASSIFIER_FILE)}


def test_init_from_starts_from_the_given_weights_and_takes_their_sizes(
    tiny_set: Path, base_weights: Path, tmp_path: Path
):
    out = tmp_path / "site"
    cpu = replace(PRESETS["cpu"], detector_epochs=0, classifier_epochs=0)  # 256² / 160² in the profile
    meta = train(tiny_set, out, cpu, seed=3, threads=1, workers=1, progress=False, init_from=base_weights)
    assert meta["preset"]["detector_size"] == SMOKE.detector_size and meta["preset"]["crop_size"] == SMOKE.crop_size
    _, _, base_info = load_weights(base_weights)
    assert meta["init_from"] == {
        "name": base_info.name,
        "version": "base-v1",
        "sha256": base_info.sha256,
        "freeze_trunk": False,
        "sizes_from_weights": ["crop_size", "detector_size"],
    }
    assert json.loads((out / MODEL_FILE).read_text())["init_from"]["sha256"] == base_info.sha256
    base, tuned = _tensors(base_weights), _tensors(out)
    for name in base:
        for key in base[name]:
            if key != "stage_temperature":  # refitted on the validation split
                torch.testing.assert_close(tuned[name][key], base[name][key], rtol=0, atol=0, msg=f"{name}:{key}")
    load_weights(out)


def test_fine_tuning_starts_below_the_loss_of_training_from_scratch(tiny_set: Path, base_weights: Path, tmp_path: Path):
    scratch = json.loads((base_weights / MODEL_FILE).read_text())["history"]  # same seed, data and preset
    tuned = train(
        tiny_set,
        tmp_path / "site",
        replace(SMOKE, detector_epochs=1, classifier_epochs=1),
        seed=3,
        threads=1,
        workers=1,
        progress=False,
        init_from=base_weights,
    )["history"]
    for stage in ("detector", "classifier"):
        assert tuned[stage][0]["loss"] < scratch[stage][0]["loss"], (stage, tuned[stage], scratch[stage])


def test_freeze_trunk_trains_only_the_heads_and_keeps_trunk_batch_norm_statistics(
    tiny_set: Path, base_weights: Path, tmp_path: Path
):
    out = tmp_path / "heads"
    meta = train(
        tiny_set,
        out,
        replace(SMOKE, detector_epochs=1, classifier_epochs=1),
        seed=3,
        threads=1,
        workers=1,
        progress=False,
        init_from=base_weights,
        freeze_trunk=True,
    )
    assert meta["init_from"]["freeze_trunk"] is True
    base, tuned = _tensors(base_weights), _tensors(out)
    for name, trunk in ((DETECTOR_FILE, "backbone."), (CLASSIFIER_FILE, "trunk.")):
        frozen = [k for k in base[name] if k.startswith(trunk)]
        assert any("running_var" in k for k in frozen)
        for key in frozen:  # weights and batch-norm running statistics alike
            torch.testing.assert_close(tuned[name][key], base[name][key], rtol=0, atol=0, msg=f"{name}:{key}")
        heads = [k for k in base[name] if not k.startswith(trunk) and base[name][k].is_floating_point()]
        changed = [k for k in heads if not torch.equal(tuned[name][k], base[name][k])]
        assert len(changed) >= len(heads) // 2, (name, sorted(set(heads) - set(changed)))


def test_heads_only_fine_tuning_resumed_from_checkpoint_equals_uninterrupted_run(
    tiny_set: Path, base_weights: Path, tmp_path: Path
):
    def run(out: Path, det: int, cls: int) -> None:
        preset = replace(SMOKE, detector_epochs=det, classifier_epochs=cls)
        train(
            tiny_set,
            out,
            preset,
            seed=3,
            threads=1,
            workers=1,
            progress=False,
            init_from=base_weights,
            freeze_trunk=True,
        )

    run(tmp_path / "once", 2, 1)
    run(tmp_path / "twice", 1, 0)
    run(tmp_path / "twice", 2, 1)
    once, twice = _tensors(tmp_path / "once"), _tensors(tmp_path / "twice")
    for name in once:
        for key in once[name]:
            torch.testing.assert_close(twice[name][key], once[name][key], rtol=0, atol=0, msg=f"{name}:{key}")


def test_resuming_with_another_init_from_is_refused(tiny_set: Path, base_weights: Path, tmp_path: Path):
    out = tmp_path / "w"
    _train(tiny_set, out, detector_epochs=1, classifier_epochs=0)
    with pytest.raises(ResumeMismatchError, match="--init-from"):
        train(
            tiny_set,
            out,
            replace(SMOKE, detector_epochs=2, classifier_epochs=0),
            seed=3,
            threads=1,
            workers=1,
            progress=False,
            init_from=base_weights,
        )


def test_cli_train_freeze_trunk_needs_init_from(tiny_set: Path, tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, "-m", "avn_node", "train", "--data", str(tiny_set), "--out", str(tmp_path), "--freeze-trunk"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "--freeze-trunk" in proc.stderr and "--init-from" in proc.stderr


def test_evaluate_truth_boxes_scores_the_classifier_without_detection(
    tiny_set: Path, base_weights: Path, tmp_path: Path
):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "avn_node",
            "evaluate",
            "--data",
            str(tiny_set),
            "--weights",
            str(base_weights),
            "--truth-boxes",
            "--bootstrap",
            "20",
            "--json",
            "--out",
            str(tmp_path / "eval"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    truth = json.loads((tiny_set / "ground_truth.json").read_text())
    n_heads = sum(len(r["heads"]) for r in truth["radiographs"])
    assert m["data"]["heads"] == "truth boxes"
    assert m["n_heads"] == n_heads and m["n_matched_heads"] == n_heads  # every truth head classified
    assert set(m["detection"]) == {"skipped"}
    assert not any(k.startswith("detection.") for k in m["targets"])
    assert m["presence"]["auc"] is None or 0 <= m["presence"]["auc"] <= 1
    assert len(m["stage"]["confusion"]) == 4 and sum(map(sum, m["stage"]["confusion"])) == n_heads
    assert m["view"]["auc_ci"] and "stage.auc.II" in m["targets"]
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "detection not scored" in report and "F1" in report
