"""Out-of-distribution scores: refuse a femoral head unlike the training data rather than guess (DESIGN §1, §6).

Two Gaussians, fitted once at training time on un-augmented training data (whole patients):

- *head*: the classifier trunk's mean-pooled features (512) of each training head, averaged over the five
  paper scales as inference averages its probabilities;
- *image*: the detector backbone's last map (480 channels), mean-pooled, of each training radiograph's
  letterbox. It catches a foreign image on which the detector hallucinates a head-like crop.

Each is a mean and a Ledoit–Wolf-shrunk covariance (stored as its float32 precision matrix in
``ood.safetensors``). The validation split — patients held out from training — sets the scales: each
Mahalanobis distance is divided by its (1 − rate/2) quantile over the validation heads (for the image term:
over the validation heads' radiographs), so each term spends half the false-flag budget and 1 marks the edge of
unseen in-distribution data. A head's score is the larger of its two terms; the threshold is the validation
heads' (1 − rate) quantile of that score, at the stated false-flag rate (2 %). Threshold, rate, scales and the
quantiles behind them go into model.json.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file, save_file
from torchvision.models.detection.ssd import SSD

from avn_node.models.classifier import AvnClassifier
from avn_node.models.dataset import PreparedSet
from avn_node.models.engine import classifier_batch, detector_batch
from avn_node.models.transforms import CROP_SCALES

OOD_FILE = "ood.safetensors"
FALSE_FLAG_RATE = 0.02
"""Share of in-distribution heads (the validation split's) the threshold lets be flagged."""
IMAGE_MAP = "1"
"""The detector backbone's feature map pooled for the image score (SSDlite-MobileNetV3: the last backbone stage)."""
QUANTILES = (0.5, 0.9, 0.95, 0.98, 0.99, 1.0)
BATCH = 64


def ledoit_wolf(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, Ledoit–Wolf covariance (shrunk towards the scaled identity, Ledoit & Wolf 2004) and the shrinkage.

    Well conditioned with fewer samples than dimensions, which a small training set always has here.
    """
    x = np.asarray(x, np.float64)
    n, p = x.shape
    mean = x.mean(0)
    xc = x - mean
    cov = xc.T @ xc / n
    mu = float(np.trace(cov) / p)
    if mu <= 0:  # every sample identical: a tiny isotropic spread keeps the precision finite
        return mean, np.eye(p) * 1e-6, 1.0
    x2 = xc**2
    beta_ = float((x2.T @ x2).sum())
    delta_ = float((cov**2).sum())
    beta = (beta_ / n - delta_) / (p * n)
    delta = (delta_ - 2 * mu * np.trace(cov) + p * mu**2) / p
    shrinkage = 0.0 if delta <= 0 else float(np.clip(beta / delta, 0.0, 1.0))
    return mean, (1 - shrinkage) * cov + shrinkage * mu * np.eye(p), shrinkage


@dataclass(frozen=True)
class Gaussian:
    """One feature space's reference: mean, precision matrix, and ``scale``, the distance a score divides by."""

    mean: np.ndarray
    precision: np.ndarray
    scale: float = 1.0
    shrinkage: float = 0.0

    @classmethod
    def fit(cls, train: np.ndarray) -> Gaussian:
        """Mean and shrunk covariance of ``train`` (scale 1: set it with :meth:`scaled`)."""
        if len(train) < 2:
            raise ValueError(f"an out-of-distribution model needs at least 2 training samples, got {len(train)}")
        mean, cov, shrinkage = ledoit_wolf(train)
        precision = np.linalg.inv(cov)
        return cls(mean.astype(np.float32), ((precision + precision.T) / 2).astype(np.float32), 1.0, shrinkage)

    def scaled(self, reference: np.ndarray, quantile: float) -> Gaussian:
        """The same Gaussian whose scores are 1 at ``quantile`` of the distances of ``reference``."""
        scale = float(np.quantile(self.distance(reference), quantile))
        return Gaussian(self.mean, self.precision, max(scale, 1e-12), self.shrinkage)

    def distance(self, x: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``x``."""
        d = np.asarray(x, np.float64).reshape(-1, len(self.mean)) - self.mean
        return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, self.precision.astype(np.float64), d), 0.0))

    def score(self, x: np.ndarray) -> np.ndarray:
        """Distance in units of :attr:`scale`: at most about 1 for unseen in-distribution data."""
        return self.distance(x) / self.scale


def _quantiles(values: np.ndarray) -> dict[str, float]:
    if not len(values):
        return {}
    return {f"q{round(q * 100)}": round(float(np.quantile(values, q)), 4) for q in QUANTILES}


@dataclass(frozen=True)
class OodModel:
    """The fitted reference of a weights folder: head and (optional) image Gaussians, threshold, rate."""

    head: Gaussian
    image: Gaussian | None
    threshold: float
    false_flag_rate: float
    report: dict[str, Any]  # how it was fitted: counts and quantiles (model.json's "ood" entry)

    def image_scores(self, features: np.ndarray) -> np.ndarray:
        """Per radiograph: its letterbox's score, NaN without an image Gaussian."""
        if self.image is None:
            return np.full(len(features), np.nan)
        return self.image.score(features)

    def head_scores(self, features: np.ndarray) -> np.ndarray:
        """Per head: its own score (classifier features) alone."""
        return self.head.score(features)

    @staticmethod
    def combine(head_score: float, image_score: float) -> float:
        """A head's score: the larger of its own and its radiograph's (a foreign image flags all its heads)."""
        return float(np.fmax(head_score, image_score))

    def to_json(self) -> dict[str, Any]:
        """The model.json ``"ood"`` entry: everything but the matrices (those live in :data:`OOD_FILE`)."""
        return {
            "file": OOD_FILE,
            "threshold": round(self.threshold, 6),
            "false_flag_rate": self.false_flag_rate,
            "score": "max over head and image of Mahalanobis distance / its validation (1 - rate/2) quantile",
            "head": {
                "features": "classifier trunk, mean-pooled, averaged over the five paper scales",
                "dimensions": len(self.head.mean),
                "scale": round(self.head.scale, 6),
                "shrinkage": round(self.head.shrinkage, 6),
            },
            "image": None
            if self.image is None
            else {
                "features": f"detector backbone map {IMAGE_MAP}, mean-pooled, letterboxed radiograph",
                "dimensions": len(self.image.mean),
                "scale": round(self.image.scale, 6),
                "shrinkage": round(self.image.shrinkage, 6),
            },
            **self.report,
        }

    def save(self, folder: Path) -> dict[str, Any]:
        """Write :data:`OOD_FILE` into ``folder``; returns :meth:`to_json` with the file's sha256."""
        tensors = {"head.mean": self.head.mean, "head.precision": self.head.precision}
        if self.image is not None:
            tensors |= {"image.mean": self.image.mean, "image.precision": self.image.precision}
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(folder / OOD_FILE))
        return self.to_json() | {"sha256": hashlib.sha256((folder / OOD_FILE).read_bytes()).hexdigest()}

    @classmethod
    def load(cls, folder: Path, entry: dict[str, Any]) -> OodModel:
        """The model of ``folder`` described by model.json's ``"ood"`` entry.

        Raises:
            FileNotFoundError: the entry names a file the folder lacks.
            KeyError, ValueError: the entry or the file is incomplete.
        """
        tensors = load_file(str(folder / str(entry.get("file", OOD_FILE))))
        head = Gaussian(
            tensors["head.mean"], tensors["head.precision"], float(entry["head"]["scale"]),
            float(entry["head"].get("shrinkage", 0.0)),
        )  # fmt: skip
        image = None
        if entry.get("image") and "image.mean" in tensors:
            image = Gaussian(
                tensors["image.mean"], tensors["image.precision"], float(entry["image"]["scale"]),
                float(entry["image"].get("shrinkage", 0.0)),
            )  # fmt: skip
        report = {k: v for k, v in entry.items() if k not in {"file", "threshold", "false_flag_rate", "score",
                                                               "head", "image", "sha256"}}  # fmt: skip
        return cls(head, image, float(entry["threshold"]), float(entry["false_flag_rate"]), report)


@torch.inference_mode()
def head_features(classifier: AvnClassifier, data: PreparedSet, crop_size: int) -> np.ndarray:
    """``(heads, 512)``: the trunk's pooled features of each un-augmented head crop, averaged over the scales."""
    classifier.eval()
    total = None
    for scale in CROP_SCALES:
        parts = []
        for start in range(0, len(data.crops), BATCH):
            idx = np.arange(start, min(start + BATCH, len(data.crops)))
            crops, _ = classifier_batch(data, idx, crop_size, None, np.full(len(idx), scale))
            parts.append(classifier(crops).features.mean((2, 3)).double().cpu())
        pooled = torch.cat(parts) if parts else torch.zeros((0, classifier.stage.in_features), dtype=torch.float64)
        total = pooled if total is None else total + pooled
    assert total is not None
    return (total / len(CROP_SCALES)).numpy()


def detect_with_features(detector: SSD, images: list[torch.Tensor]) -> tuple[list[dict[str, torch.Tensor]], np.ndarray]:
    """The detector's output for ``images`` and, from the same pass, each image's pooled backbone features."""
    captured: dict[str, torch.Tensor] = {}
    hook = detector.backbone.register_forward_hook(
        lambda _module, _inputs, output: captured.update(features=output[IMAGE_MAP].mean((2, 3)))
    )
    try:
        outputs = detector(images)
    finally:
        hook.remove()
    return outputs, captured["features"].double().cpu().numpy()


@torch.inference_mode()
def image_features(detector: SSD, data: PreparedSet, size: int) -> np.ndarray:
    """``(radiographs, 480)``: pooled backbone features of each un-augmented (centred) letterbox."""
    detector.eval()
    parts = []
    for start in range(0, len(data.det_images), 16):
        idx = np.arange(start, min(start + 16, len(data.det_images)))
        images, _ = detector_batch(data, idx, size, None)
        parts.append(detect_with_features(detector, images)[1])
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def head_radiographs(data: PreparedSet) -> np.ndarray:
    """For each head of ``data``, the index of its radiograph (heads are stored radiograph by radiograph)."""
    return np.repeat(np.arange(len(data.det_boxes)), [len(b) for b in data.det_boxes]).astype(np.int64)


def fit_ood(
    classifier: AvnClassifier,
    train: PreparedSet,
    validation: PreparedSet,
    crop_size: int,
    detector: SSD | None = None,
    detector_size: int = 0,
    false_flag_rate: float = FALSE_FLAG_RATE,
) -> OodModel:
    """Fit the head (and, given ``detector``, the image) Gaussian on ``train`` and the threshold on ``validation``.

    ``validation`` should be the patients held out from training (``train.py``'s split); when it is ``train``
    itself (a one-patient set), the threshold comes from the training heads and says so.
    """
    if not 0 < false_flag_rate < 1:
        raise ValueError(f"false_flag_rate must lie in (0, 1), got {false_flag_rate}")
    held_out = validation is not train and len(validation.crops) > 0
    val = validation if held_out else train
    per_term = 1 - false_flag_rate / 2
    train_features = head_features(classifier, train, crop_size)
    val_features = head_features(classifier, val, crop_size) if held_out else train_features
    head = Gaussian.fit(train_features).scaled(val_features, per_term)
    val_head, train_head = head.score(val_features), head.score(train_features)
    image = None
    val_image_per_head = np.full(len(val_head), np.nan)
    val_image = np.zeros(0)
    if detector is not None:
        train_images = image_features(detector, train, detector_size)
        val_images = image_features(detector, val, detector_size) if held_out else train_images
        image = Gaussian.fit(train_images).scaled(val_images[head_radiographs(val)], per_term)
        val_image = image.score(val_images)
        val_image_per_head = val_image[head_radiographs(val)]
    combined = np.fmax(val_head, val_image_per_head)
    threshold = float(np.quantile(combined, 1 - false_flag_rate, method="higher"))
    report = {
        "fitted_on": "validation split (patients held out from training)"
        if held_out
        else "training heads (no validation split: the threshold is optimistic)",
        "training_heads": len(train.crops),
        "training_radiographs": len(train.det_images),
        "validation_heads": len(val.crops),
        "validation_radiographs": len(val.det_images),
        "validation_flag_rate": round(float(np.mean(combined > threshold)), 4),
        "quantiles": {
            "validation_heads": _quantiles(combined),
            "validation_head_features": _quantiles(val_head),
            "validation_images": _quantiles(val_image),
            "training_head_features": _quantiles(train_head),
        },
    }
    if len(val.crops) < 1 / false_flag_rate:
        report["note"] = (
            f"{len(val.crops)} validation heads are fewer than 1/rate = {1 / false_flag_rate:.0f}: the threshold is "
            "their maximum, and the false-flag rate on new in-distribution heads may exceed the stated one"
        )
    return OodModel(head, image, threshold, false_flag_rate, report)


def load_ood(folder: Path, meta: dict[str, Any]) -> OodModel | None:
    """The OOD model of a weights folder (model.json's ``"ood"`` entry and :data:`OOD_FILE`), or None."""
    entry = meta.get("ood")
    if not entry:
        return None
    return OodModel.load(folder, entry)


class OodDataError(ValueError):
    """The data given to :func:`refit` is not the data the weights were trained on."""


def refit(weights: Path, data: Path, workers: int = 2, threads: int = 2, progress: bool = True) -> dict[str, Any]:
    """``avn-node fit-ood``: fit the reference of an existing weights folder without retraining.

    ``data`` must be the folder the weights were trained on: the training/validation split is rebuilt from
    model.json's preset and seed exactly as ``train`` made it, so the threshold again comes from patients the
    networks never saw. Writes :data:`OOD_FILE` and model.json's ``"ood"`` entry; returns that entry.

    Raises:
        WeightsError: the weights folder cannot be loaded.
        OodDataError: ``data`` has another number of patients than the weights were trained on.
    """
    import json

    from avn_node.ground_truth import GroundTruth
    from avn_node.models.dataset import prepare, split_patients
    from avn_node.models.weights import MODEL_FILE, load_weights

    torch.set_num_threads(threads)
    detector, classifier, info = load_weights(weights)
    meta = json.loads((weights / MODEL_FILE).read_text())
    trained_on = meta.get("data", {})
    truth = GroundTruth.load(data)
    patients = len({r.patient_id for r in truth.radiographs})
    if "patients" in trained_on and int(trained_on["patients"]) != patients:
        raise OodDataError(
            f"{data} holds {patients} patients, the weights were trained on {trained_on['patients']}: "
            "not their training data, so the validation split cannot be rebuilt"
        )
    full = prepare(data, info.detector_size, info.crop_size, workers=workers, progress=progress)
    train_ids, val_ids = split_patients(
        len(full.patients), float(meta["preset"]["validation_share"]), int(meta["seed"])
    )
    train_set = full.subset(train_ids)
    val_set = full.subset(val_ids) if val_ids else train_set
    ood = fit_ood(classifier, train_set, val_set, info.crop_size, detector, info.detector_size)
    entry = ood.save(weights)
    entry["fitted_by"] = "avn-node fit-ood"
    if trained_on.get("generator") and truth.generator != trained_on["generator"]:
        entry["data_note"] = "the data's generator differs from the one the weights were trained on"
    meta["ood"] = entry
    tmp = weights / (MODEL_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    tmp.replace(weights / MODEL_FILE)
    return entry
