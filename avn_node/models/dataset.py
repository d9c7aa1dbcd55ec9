"""Training data from any folder with ``ground_truth.json``: decoded once into a compact in-memory set.

Per radiograph the detector image (longer side = detector size, display orientation) and its head boxes;
per head a square crop of :data:`CACHE_SCALE` × its box at :data:`CACHE_PIXELS` per box side, from which
training draws its random-scale crops, and the labels (view, side, stage, notes).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from avn_node.ground_truth import NOTES, STAGES, GroundTruth, RadiographTruth
from avn_node.models.classifier import SIDE_CLASSES, VIEW_CLASSES
from avn_node.models.pixels import load_radiograph
from avn_node.models.transforms import crop, square_box
from avn_node.parallel import process_map

CACHE_SCALE = 1.4
"""Side of a cached head crop relative to its box: room for scale 1.05 plus centre jitter."""


@dataclass
class PreparedSet:
    """Decoded radiographs and heads as arrays; ``*_patient`` index into ``patients``."""

    patients: list[str]
    det_images: list[np.ndarray]  # uint8, longer side = detector size
    det_boxes: list[np.ndarray]  # (k, 4) float32 in det_image pixels
    rad_patient: np.ndarray
    crops: np.ndarray  # (H, C, C) uint8, CACHE_SCALE × box
    view: np.ndarray
    side: np.ndarray
    stage: np.ndarray
    notes: np.ndarray  # (H, 7) float32 multi-hot
    head_patient: np.ndarray

    def subset(self, patients: set[int]) -> PreparedSet:
        """The radiographs and heads of the given patient indices."""
        r = np.array([p in patients for p in self.rad_patient], bool)
        h = np.array([p in patients for p in self.head_patient], bool)
        return PreparedSet(
            patients=self.patients,
            det_images=[im for im, keep in zip(self.det_images, r, strict=True) if keep],
            det_boxes=[b for b, keep in zip(self.det_boxes, r, strict=True) if keep],
            rad_patient=self.rad_patient[r],
            crops=self.crops[h],
            view=self.view[h],
            side=self.side[h],
            stage=self.stage[h],
            notes=self.notes[h],
            head_patient=self.head_patient[h],
        )


def _prepare_one(args: tuple[Path, RadiographTruth, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path, truth, det_size, cache_pixels = args
    rad = load_radiograph(path)
    image = torch.from_numpy(rad.image)[None]
    scale = det_size / max(rad.height, rad.width)
    size = (max(1, round(rad.height * scale)), max(1, round(rad.width * scale)))
    det = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0, 0]
    boxes = [rad.from_stored(h.box) for h in truth.heads]
    det_boxes = np.array([[c * scale for c in b] for b in boxes], np.float32).reshape(-1, 4)
    crops = crop(image, [square_box(b, CACHE_SCALE) for b in boxes], cache_pixels)[:, 0] if boxes else None
    crops_u8 = (
        np.zeros((0, cache_pixels, cache_pixels), np.uint8)
        if crops is None
        else (crops.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    )
    return (det.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), det_boxes, crops_u8


def prepare(root: Path, det_size: int, crop_size: int, workers: int = 2, progress: bool = True) -> PreparedSet:
    """Decode every radiograph of ``root/ground_truth.json`` once (``workers`` spawned processes)."""
    from rich.progress import track

    truth = GroundTruth.load(root)
    cache_pixels = int(np.ceil(crop_size * CACHE_SCALE / 0.85))
    jobs = [(root / r.file, r, det_size, cache_pixels) for r in truth.radiographs]
    patients = sorted({r.patient_id for r in truth.radiographs})
    pindex = {p: i for i, p in enumerate(patients)}
    results = process_map(_prepare_one, jobs, workers, chunksize=4)
    results = list(track(results, total=len(jobs), description="Decoding radiographs", disable=not progress))
    det_images, det_boxes, crops = [], [], []
    view, side, stage, notes, head_patient = [], [], [], [], []
    for r, (det, boxes, head_crops) in zip(truth.radiographs, results, strict=True):
        det_images.append(det)
        det_boxes.append(boxes)
        crops.append(head_crops)
        for h in r.heads:
            view.append(VIEW_CLASSES.index(r.view.value))
            side.append(SIDE_CLASSES.index(h.side.value))
            stage.append(STAGES.index(h.stage))
            notes.append([float(n in h.notes) for n in NOTES])
            head_patient.append(pindex[r.patient_id])
    return PreparedSet(
        patients=patients,
        det_images=det_images,
        det_boxes=det_boxes,
        rad_patient=np.array([pindex[r.patient_id] for r in truth.radiographs]),
        crops=np.concatenate(crops) if crops else np.zeros((0, cache_pixels, cache_pixels), np.uint8),
        view=np.array(view, np.int64),
        side=np.array(side, np.int64),
        stage=np.array(stage, np.int64),
        notes=np.array(notes, np.float32).reshape(-1, len(NOTES)),
        head_patient=np.array(head_patient, np.int64),
    )


def split_patients(n_patients: int, validation_share: float, seed: int) -> tuple[set[int], set[int]]:
    """A seeded split of patient indices into training and validation (whole patients, no leakage)."""
    order = np.random.default_rng(seed).permutation(n_patients)
    n_val = int(round(n_patients * validation_share)) if n_patients > 1 else 0
    return set(order[n_val:].tolist()), set(order[:n_val].tolist())
