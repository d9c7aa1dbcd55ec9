"""A weights folder: ``detector.safetensors``, ``classifier.safetensors`` and ``model.json`` (how they were made);
optionally ``ood.safetensors``, the out-of-distribution reference fitted with them (:mod:`avn_node.models.ood`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torchvision.models.detection.ssd import SSD

from avn_node.findings import ModelInfo
from avn_node.models.classifier import AvnClassifier
from avn_node.models.detector import build_detector
from avn_node.models.ood import OodModel, load_ood

DETECTOR_FILE = "detector.safetensors"
CLASSIFIER_FILE = "classifier.safetensors"
MODEL_FILE = "model.json"


class WeightsError(ValueError):
    """A weights folder is missing a file or does not match the networks."""


def save_weights(
    out: Path, detector: SSD, classifier: AvnClassifier, meta: dict[str, object], ood: OodModel | None = None
) -> None:
    """Write both networks as safetensors and ``meta`` as model.json; with ``ood`` also ``ood.safetensors``,
    described by ``meta["ood"]`` (set here).
    """
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in detector.state_dict().items()}, out / DETECTOR_FILE)
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, out / CLASSIFIER_FILE)
    if ood is not None:
        meta["ood"] = ood.save(out)
    (out / MODEL_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def weights_sha256(folder: Path) -> str:
    """sha256 over the detector then the classifier file: the identity of a model version."""
    digest = hashlib.sha256()
    for name in (DETECTOR_FILE, CLASSIFIER_FILE):
        digest.update((folder / name).read_bytes())
    return digest.hexdigest()


def load_weights(folder: Path) -> tuple[SSD, AvnClassifier, ModelInfo]:
    """Both networks in eval mode and their :class:`ModelInfo`.

    Raises:
        WeightsError: a file is missing, model.json lacks a key, or a tensor does not fit.
    """
    for name in (DETECTOR_FILE, CLASSIFIER_FILE, MODEL_FILE):
        if not (folder / name).is_file():
            raise WeightsError(f'Weights folder "{folder}" has no {name}.')
    meta = json.loads((folder / MODEL_FILE).read_text())
    try:
        info = ModelInfo(
            name=str(meta["name"]),
            version=str(meta["version"]),
            sha256=weights_sha256(folder),
            detector_size=int(meta["preset"]["detector_size"]),
            crop_size=int(meta["preset"]["crop_size"]),
            demo=bool(meta.get("demo", True)),
        )
    except KeyError as exc:
        raise WeightsError(f'{folder / MODEL_FILE} lacks the key "{exc.args[0]}".') from None
    try:
        info = dataclasses.replace(info, ood=load_ood(folder, meta))
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise WeightsError(f'The out-of-distribution model of "{folder}" cannot be read: {exc!r}') from None
    detector = build_detector(info.detector_size)
    classifier = AvnClassifier()
    try:
        detector.load_state_dict(load_file(folder / DETECTOR_FILE))
        classifier.load_state_dict(load_file(folder / CLASSIFIER_FILE))
    except RuntimeError as exc:
        raise WeightsError(f'Weights in "{folder}" do not fit the networks: {exc}') from None
    detector.eval()
    classifier.eval()
    classifier.to(memory_format=torch.channels_last)
    return detector, classifier, info
