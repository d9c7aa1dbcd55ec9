"""Training and validation loops of the detector and the classifier (one epoch at a time).

Every epoch draws its augmentations from a generator seeded by ``(seed, epoch)``, so a resumed run
repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.models.detection.ssd import SSD
from torchvision.ops import box_iou, roi_align

from avn_node.models.augment import RandomAffine, photometric, rotate
from avn_node.models.classifier import AvnClassifier, focal_loss
from avn_node.models.dataset import CACHE_SCALE, PreparedSet
from avn_node.models.detector import FEMORAL_HEAD_LABEL, to_detector_input
from avn_node.models.transforms import CROP_SCALES, standardise

Progress = Callable[[int], None]
BN_BATCHES = 12
PHOTOMETRIC = photometric()
DETECTOR_AFFINE = RandomAffine()
CROP_ROTATION_P = 0.5
CROP_ROTATION_DEGREES = 10.0
"""Turn of a classifier crop: the cache (1.4 × the box) still covers a scale-1.05 crop turned by 10°."""


def detector_batch(
    data: PreparedSet, indices: np.ndarray, size: int, rng: np.random.Generator | None
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Letterboxed detector inputs and targets; with ``rng``: random zoom, flip, small affine, the photometric
    chain of :mod:`avn_node.models.augment`, and placement.
    """
    images, targets = [], []
    for i in indices:
        image = torch.from_numpy(data.det_images[i]).float().div_(255)
        boxes = torch.from_numpy(data.det_boxes[i]).clone()
        offset = (0.5, 0.5)
        if rng is not None:
            zoom = rng.uniform(0.7, 1.0)
            h, w = image.shape
            image = F.interpolate(
                image[None, None],
                size=(max(1, round(h * zoom)), max(1, round(w * zoom))),
                mode="bilinear",
                antialias=True,
            )[0, 0]
            boxes *= image.shape[1] / w
            if rng.random() < 0.5:
                image = image.flip(1)
                boxes[:, [0, 2]] = image.shape[1] - boxes[:, [2, 0]]
            image, boxes = DETECTOR_AFFINE(image, boxes, rng)
            image = PHOTOMETRIC(image[None, None], rng)[0, 0]
            offset = (rng.random(), rng.random())
        h, w = image.shape
        pad_x, pad_y = int((size - w) * offset[0]), int((size - h) * offset[1])
        canvas = image.new_zeros((1, size, size))
        canvas[0, pad_y : pad_y + h, pad_x : pad_x + w] = image
        boxes[:, [0, 2]] += pad_x
        boxes[:, [1, 3]] += pad_y
        images.append(to_detector_input(canvas))
        targets.append({"boxes": boxes, "labels": torch.full((len(boxes),), FEMORAL_HEAD_LABEL, dtype=torch.int64)})
    return images, targets


def classifier_batch(
    data: PreparedSet,
    indices: np.ndarray,
    out_size: int,
    rng: np.random.Generator | None,
    scales: np.ndarray | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Standardised crops at ``scales`` (per index; default 0.95, the middle paper scale) and labels.

    With ``rng``: a small rotation, centre jitter, a left–right flip that swaps the side label, and the
    photometric chain of :mod:`avn_node.models.augment`.
    """
    cache = torch.from_numpy(data.crops[indices]).float().div_(255)[:, None]
    if rng is not None:
        turn = torch.from_numpy(rng.random(len(indices)) < CROP_ROTATION_P)
        if bool(turn.any()):
            degrees = rng.uniform(-CROP_ROTATION_DEGREES, CROP_ROTATION_DEGREES, int(turn.sum()))
            cache[turn] = rotate(cache[turn], degrees)
    c = cache.shape[-1]
    side_px = c / CACHE_SCALE
    rois = []
    for k in range(len(indices)):
        s, dx, dy = 0.95 if scales is None else float(scales[k]), 0.0, 0.0
        if rng is not None:
            dx, dy = rng.uniform(-0.04, 0.04, 2)
        half = side_px * s / 2
        cx, cy = c / 2 + dx * side_px, c / 2 + dy * side_px
        rois.append([k, cx - half, cy - half, cx + half, cy + half])
    crops = roi_align(cache, torch.tensor(rois, dtype=torch.float32), out_size, 1.0, 0, True)
    side = torch.from_numpy(data.side[indices]).clone()
    if rng is not None:
        flip = torch.from_numpy(rng.random(len(indices)) < 0.5)
        crops[flip] = crops[flip].flip(-1)
        side[flip] = 1 - side[flip]
        crops = PHOTOMETRIC(crops, rng)
    labels = {
        "view": torch.from_numpy(data.view[indices]),
        "side": side,
        "stage": torch.from_numpy(data.stage[indices]),
        "notes": torch.from_numpy(data.notes[indices]),
    }
    return standardise(crops).contiguous(memory_format=torch.channels_last), labels


def classifier_loss(model: AvnClassifier, crops: torch.Tensor, labels: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy for view and side, focal loss for the stage (paper), binary cross-entropy for notes."""
    out = model(crops)
    return (
        F.cross_entropy(out.view, labels["view"])
        + F.cross_entropy(out.side, labels["side"])
        + focal_loss(out.stage, labels["stage"])
        + F.binary_cross_entropy_with_logits(out.notes, labels["notes"])
    )


def _step(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    """One optimiser step on ``loss``; returns its value."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches; a last batch of one joins the one before (batch norm needs two samples)."""
    order = rng.permutation(n)
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches


def train_detector_epoch(
    model: SSD,
    optimizer: torch.optim.Optimizer,
    data: PreparedSet,
    size: int,
    batch_size: int,
    rng: np.random.Generator,
    progress: Progress,
) -> float:
    """One epoch of SSD multibox loss; returns the mean loss."""
    train_mode(model)
    losses = []
    for idx in _batches(len(data.det_images), batch_size, rng):
        images, targets = detector_batch(data, idx, size, rng)
        losses.append(_step(optimizer, sum(model(images, targets).values())))
        progress(len(idx))
    n = len(data.det_images)
    recalibrate_batch_norm(
        model,
        lambda: model(detector_batch(data, rng.choice(n, min(n, batch_size), replace=False), size, rng)[0]),
        BN_BATCHES,
    )
    return float(np.mean(losses))


def freeze(module: torch.nn.Module) -> None:
    """Stop training ``module``: no gradients for its parameters, and :func:`train_mode` keeps its batch norms in
    eval mode, so their running statistics stay those it was trained with.
    """
    for p in module.parameters():
        p.requires_grad_(False)


def _is_frozen(module: torch.nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(p.requires_grad for p in params)


def train_mode(model: torch.nn.Module) -> None:
    """``model.train()``, except for the batch norms of frozen parts, which stay in eval mode."""
    model.train()
    for m in model.modules():
        if isinstance(m, _BatchNorm) and _is_frozen(m):
            m.eval()


@torch.no_grad()
def recalibrate_batch_norm(model: torch.nn.Module, forward: Callable[[], object], batches: int) -> None:
    """Recompute every batch-norm layer's running statistics as the plain mean over ``batches`` calls of
    ``forward`` with the weights frozen ("precise BN"). The exponential running averages lag behind weights
    that change fast early in training: an SSDlite trained from scratch then detects nothing in eval mode.

    Frozen layers (see :func:`freeze`) keep their statistics: they are not trained, and the layers after them
    were trained on what their stored statistics produce.
    """
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and not _is_frozen(m)]
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for _ in range(batches):
        forward()
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    model.eval()


@torch.inference_mode()
def validate_detector(model: SSD, data: PreparedSet, size: int, iou: float = 0.5, score: float = 0.5) -> float:
    """F1 of detections scoring ≥ ``score`` matched one-to-one at IoU ≥ ``iou``."""
    model.eval()
    tp = fp = fn = 0
    for start in range(0, len(data.det_images), 16):
        idx = np.arange(start, min(start + 16, len(data.det_images)))
        images, targets = detector_batch(data, idx, size, None)
        for out, target in zip(model(images), targets, strict=True):
            pred = out["boxes"][out["scores"] >= score]
            matched = match_boxes(pred, target["boxes"], iou)
            tp += len(matched)
            fp += len(pred) - len(matched)
            fn += len(target["boxes"]) - len(matched)
    return 2 * tp / max(1, 2 * tp + fp + fn)


def match_boxes(pred: torch.Tensor, truth: torch.Tensor, iou: float) -> list[tuple[int, int]]:
    """Greedy one-to-one matching, highest IoU first; pairs ``(pred, truth)`` with IoU ≥ ``iou``."""
    if len(pred) == 0 or len(truth) == 0:
        return []
    ious = box_iou(pred, truth)
    pairs = []
    used_p, used_t = set(), set()
    for flat in torch.argsort(ious.flatten(), descending=True).tolist():
        p, t = divmod(flat, ious.shape[1])
        if ious[p, t] < iou:
            break
        if p in used_p or t in used_t:
            continue
        used_p.add(p)
        used_t.add(t)
        pairs.append((p, t))
    return pairs


def train_classifier_epoch(
    model: AvnClassifier,
    optimizer: torch.optim.Optimizer,
    data: PreparedSet,
    out_size: int,
    batch_size: int,
    crops_per_head: int,
    rng: np.random.Generator,
    progress: Progress,
) -> float:
    """One epoch over every head resampled ``crops_per_head`` = N times at N scales linearly spaced in
    [0.85, 1.05] (paper Table VI; N = 1 takes the middle scale); returns the mean loss.
    """
    train_mode(model)
    losses = []
    scale_set = np.linspace(0.85, 1.05, crops_per_head) if crops_per_head > 1 else np.array([0.95])
    heads = np.repeat(np.arange(len(data.crops)), crops_per_head)
    scales = np.tile(scale_set, len(data.crops))
    for pick in _batches(len(heads), batch_size, rng):
        idx = heads[pick]
        crops, labels = classifier_batch(data, idx, out_size, rng, scales[pick])
        losses.append(_step(optimizer, classifier_loss(model, crops, labels)))
        progress(len(idx))
    n = len(data.crops)
    recalibrate_batch_norm(
        model,
        lambda: model(
            classifier_batch(
                data,
                rng.choice(n, min(n, batch_size), replace=False),
                out_size,
                rng,
                rng.choice(scale_set, min(n, batch_size)),
            )[0]
        ),
        BN_BATCHES,
    )
    return float(np.mean(losses))


@torch.inference_mode()
def validate_classifier(model: AvnClassifier, data: PreparedSet, out_size: int) -> float:
    """Mean classifier loss on un-augmented crops at the middle paper scale."""
    model.eval()
    losses, weights = [], []
    for start in range(0, len(data.crops), 64):
        idx = np.arange(start, min(start + 64, len(data.crops)))
        crops, labels = classifier_batch(data, idx, out_size, None)
        losses.append(float(classifier_loss(model, crops, labels)))
        weights.append(len(idx))
    return float(np.average(losses, weights=weights)) if losses else float("nan")


@torch.inference_mode()
def fit_temperature(model: AvnClassifier, data: PreparedSet, out_size: int) -> float:
    """The stage temperature minimising the negative log-likelihood of the truth on ``data``, with the
    probabilities averaged over the five paper scales as inference does (temperature scaling, Guo et al. 2017).
    """
    model.eval()
    model.stage_temperature.fill_(1.0)
    logits = []
    for scale in CROP_SCALES:
        per_scale = []
        for start in range(0, len(data.crops), 64):
            idx = np.arange(start, min(start + 64, len(data.crops)))
            crops, _ = classifier_batch(data, idx, out_size, None, np.full(len(idx), scale))
            per_scale.append(model(crops).stage)
        logits.append(torch.cat(per_scale))
    stacked = torch.stack(logits)  # (scales, heads, stages)
    truth = torch.from_numpy(data.stage)
    grid = torch.exp(torch.linspace(np.log(0.25), np.log(4.0), 121))
    nll = [
        -torch.log((stacked / t).softmax(-1).mean(0).gather(1, truth[:, None]).clamp_min(1e-12)).mean() for t in grid
    ]
    return float(grid[int(torch.argmin(torch.stack(nll)))])
