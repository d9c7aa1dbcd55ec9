"""``avn-node train``: detector, then classifier, from a ground-truthed folder; seeded and resumable.

Adam with weight decay 5e-4, learning rate halved when the validation figure plateaus (paper §III.C).
After training, the stage head's temperature is fitted on the validation split.
A checkpoint after every epoch (``checkpoints/``) lets an interrupted run continue where it stopped.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avn_node import __version__
from avn_node.ground_truth import GroundTruth
from avn_node.models.classifier import AvnClassifier
from avn_node.models.dataset import PreparedSet, prepare, split_patients
from avn_node.models.detector import build_detector
from avn_node.models.engine import (
    fit_temperature,
    train_classifier_epoch,
    train_detector_epoch,
    validate_classifier,
    validate_detector,
)
from avn_node.models.presets import Preset
from avn_node.models.weights import save_weights

MODEL_NAME = "AVN-net (avn-node)"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


def _epoch_rng(seed: int, stage: str, epoch: int) -> np.random.Generator:
    return np.random.default_rng([seed, {"detector": 1, "classifier": 2}[stage], epoch])


def _run_stage(
    stage: str,
    model: torch.nn.Module,
    lr: float,
    epochs: int,
    preset: Preset,
    seed: int,
    checkpoints: Path,
    step: Callable[[torch.optim.Optimizer, np.random.Generator, Callable[[int], None]], float],
    validate: Callable[[], float],
    mode: str,
    work_per_epoch: int,
    progress: bool,
) -> list[dict[str, float]]:
    """Train one network for ``epochs``, resuming from its checkpoint; returns the per-epoch history."""
    from rich.progress import Progress

    optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=preset.weight_decay)
    patience = preset.detector_patience if stage == "detector" else preset.plateau_patience
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=patience)
    path = checkpoints / f"{stage}.pt"
    history: list[dict[str, float]] = []
    start = 0
    if path.exists():
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = [dict(h) for h in state["history"]]
        start = int(state["epoch"])
    with Progress(disable=not progress) as bar:
        task = bar.add_task(f"{stage} epoch {start + 1}/{epochs}", total=work_per_epoch * (epochs - start))
        for epoch in range(start, epochs):
            torch.manual_seed(seed * 1000 + epoch)
            bar.update(task, description=f"{stage} epoch {epoch + 1}/{epochs}")
            loss = step(optimizer, _epoch_rng(seed, stage, epoch), lambda n: bar.advance(task, n))
            val = validate()
            scheduler.step(val)
            history.append({"epoch": epoch + 1, "loss": loss, "val": val, "lr": optimizer.param_groups[0]["lr"]})
            tmp = path.with_suffix(".tmp")
            torch.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "history": history,
                    "epoch": epoch + 1,
                },
                tmp,
            )
            tmp.replace(path)
    return history


def plot_history(histories: dict[str, list[dict[str, float]]], labels: dict[str, str], out: Path) -> None:
    """Loss and validation curves of each network, one panel per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.6), squeeze=False)
    for ax, (stage, hist) in zip(axes[0], histories.items(), strict=True):
        epochs = [h["epoch"] for h in hist]
        ax.plot(epochs, [h["loss"] for h in hist], label="training loss", color="tab:blue")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.set_title(stage)
        twin = ax.twinx()
        twin.plot(epochs, [h["val"] for h in hist], label=labels[stage], color="tab:orange")
        twin.set_ylabel(labels[stage])
        ax.legend(loc="upper left", fontsize=8)
        twin.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def train(
    data: Path,
    out: Path,
    preset: Preset,
    seed: int = 1,
    version: str = "",
    workers: int = 2,
    threads: int = 2,
    progress: bool = True,
    command: str = "",
) -> dict[str, Any]:
    """Train both networks on ``data`` and write a weights folder to ``out``; returns its model.json."""
    seed_everything(seed)
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    full = prepare(data, preset.detector_size, preset.crop_size, workers=workers, progress=progress)
    train_ids, val_ids = split_patients(len(full.patients), preset.validation_share, seed)
    train_set: PreparedSet = full.subset(train_ids)
    val_set: PreparedSet = full.subset(val_ids) if val_ids else train_set

    detector = build_detector(preset.detector_size)
    det_history = _run_stage(
        "detector",
        detector,
        preset.detector_lr,
        preset.detector_epochs,
        preset,
        seed,
        checkpoints,
        step=lambda opt, rng, adv: train_detector_epoch(
            detector, opt, train_set, preset.detector_size, preset.detector_batch, rng, adv
        ),
        validate=lambda: validate_detector(detector, val_set, preset.detector_size),
        mode="max",
        work_per_epoch=len(train_set.det_images),
        progress=progress,
    )
    classifier = AvnClassifier().to(memory_format=torch.channels_last)
    cls_history = _run_stage(
        "classifier",
        classifier,
        preset.classifier_lr,
        preset.classifier_epochs,
        preset,
        seed,
        checkpoints,
        step=lambda opt, rng, adv: train_classifier_epoch(
            classifier, opt, train_set, preset.crop_size, preset.classifier_batch, preset.crops_per_head, rng, adv
        ),
        validate=lambda: validate_classifier(classifier, val_set, preset.crop_size),
        mode="min",
        work_per_epoch=len(train_set.crops) * preset.crops_per_head,
        progress=progress,
    )
    temperature = fit_temperature(classifier, val_set, preset.crop_size)
    classifier.stage_temperature.fill_(temperature)
    truth = GroundTruth.load(data)
    meta: dict[str, Any] = {
        "name": MODEL_NAME,
        "version": version or out.name,
        "demo": True,
        "software": f"avn-node {__version__}",
        "torch": torch.__version__,
        "preset": preset.to_json(),
        "seed": seed,
        "command": command,
        "data": {
            "generator": truth.generator,
            "radiographs": len(truth.radiographs),
            "patients": len(full.patients),
            "training_patients": len(train_ids),
            "validation_patients": len(val_ids),
        },
        "calibration": {"stage_temperature": temperature, "fitted_on": "validation split"},
        "history": {"detector": det_history, "classifier": cls_history},
    }
    save_weights(out, detector, classifier, meta)
    plot_history(
        {"detector": det_history, "classifier": cls_history},
        {"detector": "validation F1 @ IoU 0.5", "classifier": "validation loss"},
        out / "training.png",
    )
    return meta
