"""The inference engine: radiographs of a case → femoral heads with side, view, Ficat stage, notes and CAM.

One detector pass and one classifier pass for all radiographs and crops of a case, under
``torch.inference_mode``. Each head is resampled at the paper's five scales and the probabilities averaged
(test-time augmentation). Per hip, the most severe stage across the case's radiographs wins (paper §IV).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset

from avn_node.ground_truth import NOTES, STAGES, FicatStage, Note, Side, View
from avn_node.models.classifier import SIDE_CLASSES, VIEW_CLASSES
from avn_node.models.detector import to_detector_input
from avn_node.models.pixels import PixelDecodeError, Radiograph, load_radiograph
from avn_node.models.transforms import CROP_SCALES, Box, head_crops, letterbox, standardise
from avn_node.models.weights import ModelInfo, load_weights

DETECTION_THRESHOLD = 0.5
NOTE_THRESHOLD = 0.5
CAM_PIXELS = 64


@dataclass(frozen=True)
class HeadFinding:
    """One detected femoral head. Boxes are in the stored image's pixel columns and rows.

    ``cam`` is the stage head's class activation map (0–1, ``CAM_PIXELS``²) over ``cam_box``.
    ``side_agrees`` is False when the classifier reads the other side than position and orientation say.
    """

    side: Side
    box: Box
    detection_score: float
    side_probability: float
    side_agrees: bool
    stage: FicatStage
    stage_probabilities: dict[FicatStage, float]
    note_probabilities: dict[Note, float]
    cam: np.ndarray = field(repr=False)
    cam_box: Box = (0.0, 0.0, 0.0, 0.0)

    @property
    def presence_probability(self) -> float:
        """Probability of AVN (stages II–IV)."""
        return 1.0 - self.stage_probabilities[FicatStage.ABSENCE]

    @property
    def notes(self) -> tuple[Note, ...]:
        """Notes whose probability reaches :data:`NOTE_THRESHOLD`."""
        return tuple(n for n in NOTES if self.note_probabilities[n] >= NOTE_THRESHOLD)

    @property
    def severity(self) -> tuple[int, float]:
        """Sort key: stage first, then presence probability."""
        return STAGES.index(self.stage), self.presence_probability


@dataclass(frozen=True)
class RadiographFinding:
    """The reading of one radiograph; ``error`` names why it could not be read (then no heads)."""

    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    rows: int
    columns: int
    view: View | None
    ap_probability: float
    heads: tuple[HeadFinding, ...]
    error: str = ""


@dataclass(frozen=True)
class HipFinding:
    """A hip of the case: the most severe stage over its radiographs, decided by one head on one image."""

    side: Side
    decided_by: str  # SOP Instance UID
    head: HeadFinding
    sources: tuple[str, ...]  # every radiograph showing this hip

    @property
    def stage(self) -> FicatStage:
        return self.head.stage


@dataclass(frozen=True)
class CaseFinding:
    """All radiographs of a case, the fused hips, and the model that read them."""

    radiographs: tuple[RadiographFinding, ...]
    hips: tuple[HipFinding, ...]
    model: ModelInfo


def fuse_hips(radiographs: tuple[RadiographFinding, ...]) -> tuple[HipFinding, ...]:
    """Per side, the head with the most severe stage (ties: higher presence probability) decides."""
    hips = []
    for side in (Side.R, Side.L):
        seen = [(r, h) for r in radiographs for h in r.heads if h.side == side]
        if not seen:
            continue
        rad, head = max(seen, key=lambda rh: rh[1].severity)
        hips.append(HipFinding(side, rad.sop_instance_uid, head, tuple(r.sop_instance_uid for r, _ in seen)))
    return tuple(hips)


@dataclass
class _Decoded:
    ds: Dataset
    radiograph: Radiograph | None
    error: str


class Analyzer:
    """Loads a weights folder once; reads cases.

    Parameters:
        weights: the weights folder (``models/avn-demo-v1``).
        threads: torch intra-op threads.
        tta: average over the five paper scales (True) or use the middle one only.
    """

    def __init__(self, weights: Path, threads: int = 2, device: str = "cpu", tta: bool = True) -> None:
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.detector, self.classifier, self.info = load_weights(weights)
        self.detector.to(self.device)
        self.classifier.to(self.device)
        self.scales = CROP_SCALES if tta else (CROP_SCALES[len(CROP_SCALES) // 2],)
        self.timings: dict[str, float] = {}

    def analyse_case(self, sources: list[Path | str | Dataset]) -> CaseFinding:
        """Read every radiograph of a case and fuse the hips; :attr:`timings` holds the seconds per stage."""
        self.timings = {"decode": 0.0, "detect": 0.0, "classify": 0.0, "cam": 0.0}
        started = time.perf_counter()
        decoded = [self._decode(s) for s in sources]
        readable = [d for d in decoded if d.radiograph is not None]
        self.timings["decode"] = time.perf_counter() - started
        started = time.perf_counter()
        boxes = self._detect([d.radiograph for d in readable])  # type: ignore[misc]
        self.timings["detect"] = time.perf_counter() - started
        per_rad = dict(zip((id(d) for d in readable), boxes, strict=True))
        heads = self._classify([(d.radiograph, per_rad[id(d)]) for d in readable])  # type: ignore[misc]
        per_heads = dict(zip((id(d) for d in readable), heads, strict=True))
        findings = tuple(self._finding(d, per_heads.get(id(d))) for d in decoded)
        return CaseFinding(radiographs=findings, hips=fuse_hips(findings), model=self.info)

    def analyse_radiograph(self, source: Path | str | Dataset) -> RadiographFinding:
        """Read one radiograph."""
        return self.analyse_case([source]).radiographs[0]

    @staticmethod
    def _decode(source: Path | str | Dataset) -> _Decoded:
        try:
            ds = source if isinstance(source, Dataset) else pydicom.dcmread(source)
        except Exception as exc:
            return _Decoded(Dataset(), None, f"not a readable DICOM file: {type(exc).__name__}: {exc}")
        try:
            return _Decoded(ds, load_radiograph(ds), "")
        except PixelDecodeError as exc:
            return _Decoded(ds, None, str(exc))

    @torch.inference_mode()
    def _detect(self, radiographs: list[Radiograph]) -> list[list[tuple[Box, float]]]:
        """Up to two heads per radiograph, in display coordinates, with their scores."""
        if not radiographs:
            return []
        size = self.info.detector_size
        inputs, frames = [], []
        for rad in radiographs:
            lb, frame = letterbox(torch.from_numpy(rad.image)[None], size)
            inputs.append(to_detector_input(lb).to(self.device))
            frames.append(frame)
        results = []
        for out, frame in zip(self.detector(inputs), frames, strict=True):
            kept: list[tuple[Box, float]] = []
            for box, score in zip(out["boxes"].tolist(), out["scores"].tolist(), strict=True):
                if score < DETECTION_THRESHOLD or len(kept) == 2:
                    break
                image_box = frame.to_image(tuple(box))
                if all(not _same_head(image_box, k) for k, _ in kept):
                    kept.append((image_box, float(score)))
            results.append(kept)
        return results

    @torch.inference_mode()
    def _classify(
        self, items: list[tuple[Radiograph, list[tuple[Box, float]]]]
    ) -> list[list[tuple[Box, float, dict[str, np.ndarray], np.ndarray, Box]]]:
        """One classifier pass over every crop; per head: box, score, averaged probabilities, CAM, CAM box."""
        n_scales = len(self.scales)
        batches, crop_boxes = [], []
        for rad, dets in items:
            image = torch.from_numpy(rad.image)[None]
            for box, _ in dets:
                crops, boxes = head_crops(image, box, self.info.crop_size, self.scales)
                batches.append(crops)
                crop_boxes.append(boxes)
        if not batches:
            return [[] for _ in items]
        started = time.perf_counter()
        x = standardise(torch.cat(batches)).to(self.device).contiguous(memory_format=torch.channels_last)
        out = self.classifier(x)
        probs = {k: v.reshape(-1, n_scales, v.shape[1]).mean(1).cpu().numpy() for k, v in out.probabilities().items()}
        self.timings["classify"] = time.perf_counter() - started
        started = time.perf_counter()
        stage_pick = torch.from_numpy(probs["stage"].argmax(1)).repeat_interleave(n_scales).to(self.device)
        cams = self.classifier.stage_cam(out.features, stage_pick).cpu()
        results: list[list[tuple[Box, float, dict[str, np.ndarray], np.ndarray, Box]]] = []
        k = 0
        for _, dets in items:
            heads = []
            for box, score in dets:
                head_probs = {name: p[k] for name, p in probs.items()}
                cam_box = crop_boxes[k][-1]
                cam = _merge_cams(cams[k * n_scales : (k + 1) * n_scales], crop_boxes[k], cam_box)
                heads.append((box, score, head_probs, cam, cam_box))
                k += 1
            results.append(heads)
        self.timings["cam"] = time.perf_counter() - started
        return results

    @staticmethod
    def _finding(
        d: _Decoded, heads: list[tuple[Box, float, dict[str, np.ndarray], np.ndarray, Box]] | None
    ) -> RadiographFinding:
        ds = d.ds
        common = {
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
            "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
            "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
            "sop_class_uid": str(ds.get("SOPClassUID", "")),
            "rows": int(ds.get("Rows", 0) or 0),
            "columns": int(ds.get("Columns", 0) or 0),
        }
        if d.radiograph is None or heads is None:
            return RadiographFinding(**common, view=None, ap_probability=float("nan"), heads=(), error=d.error)
        rad = d.radiograph
        if not heads:
            return RadiographFinding(**common, view=None, ap_probability=float("nan"), heads=())
        ap = float(np.mean([h[2]["view"][VIEW_CLASSES.index("AP")] for h in heads]))
        view = View.AP if ap >= 0.5 else View.FL
        sides = _assign_sides(rad, view, heads)
        findings = []
        for (box, score, p, cam, cam_box), side in zip(heads, sides, strict=True):
            side_p = float(p["side"][SIDE_CLASSES.index(side.value)])
            stage_probs = {s: float(v) for s, v in zip(STAGES, p["stage"], strict=True)}
            if rad.mirrored:
                cam = cam[:, ::-1].copy()
            findings.append(
                HeadFinding(
                    side=side,
                    box=rad.to_stored(box),
                    detection_score=score,
                    side_probability=side_p,
                    side_agrees=side_p >= 0.5,
                    stage=STAGES[int(np.argmax(p["stage"]))],
                    stage_probabilities=stage_probs,
                    note_probabilities={n: float(v) for n, v in zip(NOTES, p["notes"], strict=True)},
                    cam=cam,
                    cam_box=rad.to_stored(cam_box),
                )
            )
        return RadiographFinding(**common, view=view, ap_probability=ap, heads=tuple(findings))


def _same_head(a: Box, b: Box) -> bool:
    """Two boxes whose centres lie within half a box side of each other describe one head."""
    side = max(a[2] - a[0], b[2] - b[0])
    return abs((a[0] + a[2]) - (b[0] + b[2])) / 2 < side / 2 and abs((a[1] + a[3]) - (b[1] + b[3])) / 2 < side / 2


def _assign_sides(rad: Radiograph, view: View, heads: list[tuple]) -> list[Side]:
    """The patient's side of each head in a display-oriented image (patient's right on the image's left).

    Two heads: by position. One head on an AP: by which half of the image it lies in. One head on a
    frog-leg lateral (often centred on that hip): by the classifier's side output.
    """
    centres = [(h[0][0] + h[0][2]) / 2 for h in heads]
    if len(heads) == 2:
        right_first = centres[0] <= centres[1]
        return [Side.R, Side.L] if right_first else [Side.L, Side.R]
    if view == View.AP:
        return [Side.R if centres[0] < rad.width / 2 else Side.L]
    p_left = float(heads[0][2]["side"][SIDE_CLASSES.index("L")])
    return [Side.L if p_left >= 0.5 else Side.R]


def _merge_cams(cams: torch.Tensor, boxes: list[Box], target: Box) -> np.ndarray:
    """Resample each crop's CAM into the grid of ``target`` and average: one map in radiograph coordinates."""
    tx0, ty0, tx1, ty1 = target
    lin = torch.linspace(0.5 / CAM_PIXELS, 1 - 0.5 / CAM_PIXELS, CAM_PIXELS)
    xs, ys = tx0 + lin * (tx1 - tx0), ty0 + lin * (ty1 - ty0)
    grids = []
    for x0, y0, x1, y1 in boxes:
        gx = (xs - x0) / (x1 - x0) * 2 - 1
        gy = (ys - y0) / (y1 - y0) * 2 - 1
        grids.append(torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1))
    sampled = F.grid_sample(cams[:, None].float(), torch.stack(grids), mode="bilinear", align_corners=False)
    merged = sampled.mean(0)[0]
    return (merged / merged.max().clamp_min(1e-12)).numpy().astype(np.float32)
