"""``avn-node train``: detector, then classifier, from a ground-truthed folder; seeded and resumable.

Adam with weight decay 5e-4, learning rate halved when the validation figure plateaus (paper §III.C).
After training, the stage head's temperature is fitted on the validation split, then the out-of-distribution
reference (training heads, threshold on the validation split; :mod:`avn_node.models.ood`).
A checkpoint after every epoch (``checkpoints/``) lets an interrupted run continue where it stopped.

Site adaptation: ``init_from`` starts both networks from an existing weights folder (its input sizes win over
the preset's); ``freeze_trunk`` then trains only the heads (detector backbone and classifier trunk frozen, their
batch norms in eval mode and left out of the precise-BN recalibration).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
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
    freeze,
    train_classifier_epoch,
    train_detector_epoch,
    validate_classifier,
    validate_detector,
)
from avn_node.models.ood import fit_ood
from avn_node.models.presets import Preset
from avn_node.models.weights import load_weights, save_weights

MODEL_NAME = "AVN-net (avn-node)"


class ResumeMismatchError(ValueError):
    """A checkpoint was written by a run started differently (other ``init_from`` or ``freeze_trunk``)."""


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
    recipe: dict[str, Any] | None = None,
) -> list[dict[str, float]]:
    """Train one network for ``epochs``, resuming from its checkpoint; returns the per-epoch history.

    Only parameters that require gradients are optimised. ``recipe`` (how the run started) is stored in the
    checkpoint; resuming with another one raises :class:`ResumeMismatchError`.
    """
    from rich.progress import Progress

    recipe = recipe or {"init_from": None, "freeze_trunk": False}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=lr, weight_decay=preset.weight_decay)
    patience = preset.detector_patience if stage == "detector" else preset.plateau_patience
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=mode, factor=0.5, patience=patience)
    path = checkpoints / f"{stage}.pt"
    history: list[dict[str, float]] = []
    start = 0
    if path.exists():
        state = torch.load(path, weights_only=True)
        stored = state.get("recipe", {"init_from": None, "freeze_trunk": False})
        if stored != recipe:
            raise ResumeMismatchError(
                f"{path} was written by a run started with {stored}, not {recipe}: "
                "resume with the same --init-from and --freeze-trunk, or write to a new folder"
            )
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
                    "recipe": recipe,
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
    init_from: Path | None = None,
    freeze_trunk: bool = False,
) -> dict[str, Any]:
    """Train both networks on ``data`` and write a weights folder to ``out``; returns its model.json.

    With ``init_from`` (a weights folder) both networks start from its weights and its detector and crop sizes
    replace the preset's (model.json's ``init_from.sizes_from_weights`` names those that differed); with
    ``freeze_trunk`` only the heads train.

    Raises:
        WeightsError: ``init_from`` is not a loadable weights folder.
        ResumeMismatchError: ``out`` holds checkpoints of a run started differently.
        ValueError: ``freeze_trunk`` without ``init_from``.
    """
    if freeze_trunk and init_from is None:
        raise ValueError("freeze_trunk needs init_from: a trunk with random weights would stay random")
    seed_everything(seed)
    torch.set_num_threads(threads)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    start = None
    init_record: dict[str, Any] | None = None
    if init_from is not None:
        det0, cls0, info = load_weights(init_from)
        sizes = {"detector_size": info.detector_size, "crop_size": info.crop_size}
        init_record = {
            "name": info.name,
            "version": info.version,
            "sha256": info.sha256,
            "freeze_trunk": freeze_trunk,
            "sizes_from_weights": sorted(k for k, v in sizes.items() if getattr(preset, k) != v),
        }
        preset = replace(preset, **sizes)
        cls0.stage_temperature.fill_(1.0)  # the stage loss wants raw logits; refitted after training
        if freeze_trunk:
            freeze(det0.backbone)
            freeze(cls0.trunk)
        start = (det0, cls0)
    recipe = {"init_from": init_record["sha256"] if init_record else None, "freeze_trunk": freeze_trunk}
    full = prepare(data, preset.detector_size, preset.crop_size, workers=workers, progress=progress)
    train_ids, val_ids = split_patients(len(full.patients), preset.validation_share, seed)
    train_set: PreparedSet = full.subset(train_ids)
    val_set: PreparedSet = full.subset(val_ids) if val_ids else train_set

    detector = build_detector(preset.detector_size) if start is None else start[0]
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
        recipe=recipe,
    )
    classifier = AvnClassifier().to(memory_format=torch.channels_last) if start is None else start[1]
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
        recipe=recipe,
    )
    temperature = fit_temperature(classifier, val_set, preset.crop_size)
    classifier.stage_temperature.fill_(temperature)
    ood = fit_ood(classifier, train_set, val_set, preset.crop_size, detector, preset.detector_size)
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
        "init_from": init_record,
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
    save_weights(out, detector, classifier, meta, ood=ood)  # also sets meta["ood"]
    plot_history(
        {"detector": det_history, "classifier": cls_history},
        {"detector": "validation F1 @ IoU 0.5", "classifier": "validation loss"},
        out / "training.png",
    )
    return meta
