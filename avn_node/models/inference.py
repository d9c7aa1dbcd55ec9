"""The inference engine: radiographs of a case → femoral heads with side, view, Ficat stage, notes and CAM.

One detector pass and one classifier pass for all radiographs and crops of a case, under
``torch.inference_mode``. Each head is resampled at the paper's five scales and the probabilities averaged
(test-time augmentation). Per hip, the most severe stage across the case's radiographs wins (paper §IV).

Every head gets an out-of-distribution score when the weights carry a reference (:mod:`avn_node.models.ood`);
with refusal on, a head beyond the threshold is refused: it keeps its box but asserts no stage, and never
decides a hip.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset

from avn_node.findings import (
    OUTSIDE_EXPERIENCE,
    Box,
    CaseFinding,
    HeadFinding,
    RadiographFinding,
    fuse_hips,
)  # fmt: skip
from avn_node.ground_truth import NOTES, STAGES, Side, View
from avn_node.models.classifier import SIDE_CLASSES, VIEW_CLASSES
from avn_node.models.detector import to_detector_input
from avn_node.models.ood import OodModel, detect_with_features
from avn_node.models.pixels import PixelDecodeError, Radiograph, load_radiograph
from avn_node.models.transforms import CROP_SCALES, head_crops, letterbox, standardise
from avn_node.models.weights import load_weights

DETECTION_THRESHOLD = 0.5
CAM_PIXELS = 64

log = logging.getLogger("avn_node.models")


@dataclass
class _Decoded:
    ds: Dataset
    radiograph: Radiograph | None
    error: str


@dataclass(frozen=True)
class EarlyReading:
    """One radiograph read before its case was complete (:meth:`Analyzer.read`), with the seconds per stage."""

    finding: RadiographFinding
    timings: dict[str, float]


def _count(ds: Dataset, keyword: str) -> int:
    """An integer attribute of a header as sent, 0 when absent or not a number (e.g. Rows written as text)."""
    try:
        return int(ds.get(keyword, 0) or 0)
    except (TypeError, ValueError):
        return 0


class Analyzer:
    """Loads a weights folder once; reads cases.

    Parameters:
        weights: the weights folder (``models/avn-demo-v3``).
        threads: torch intra-op threads.
        tta: average over the five paper scales (True) or use the middle one only.
        refuse_out_of_distribution: refuse heads beyond the weights' out-of-distribution threshold
            (``[models] refuse_out_of_distribution``); the score is computed either way when the weights have
            a reference.
    """

    def __init__(
        self,
        weights: Path,
        threads: int = 2,
        device: str = "cpu",
        tta: bool = True,
        refuse_out_of_distribution: bool = True,
    ) -> None:
        torch.set_num_threads(threads)
        self.device = torch.device(device)
        self.detector, self.classifier, self.info = load_weights(weights)
        self.detector.to(self.device)
        self.classifier.to(self.device)
        self.scales = CROP_SCALES if tta else (CROP_SCALES[len(CROP_SCALES) // 2],)
        self.timings: dict[str, float] = {}
        self.ood: OodModel | None = self.info.ood
        self.refuse_out_of_distribution = refuse_out_of_distribution and self.ood is not None
        if self.ood is None:
            (log.warning if refuse_out_of_distribution else log.info)(
                "weights %s have no out-of-distribution reference (ood.safetensors): no head gets an OOD score "
                "and none can be refused (`avn-node fit-ood` adds one)",
                weights,
            )

    def analyse_case(
        self, sources: list[Path | str | Dataset], ahead: Mapping[int, EarlyReading] | None = None
    ) -> CaseFinding:
        """Read every radiograph of a case and fuse the hips; :attr:`timings` holds the seconds per stage.

        ``ahead`` maps a position in ``sources`` to its :meth:`read` done before (while the case was not complete):
        it is not read again, and its seconds count in :attr:`timings`, whose ``"ahead"`` is their total.
        """
        ahead = ahead or {}
        fresh, timings = self.read([s for i, s in enumerate(sources) if i not in ahead])
        rest = iter(fresh)
        findings = tuple(ahead[i].finding if i in ahead else next(rest) for i in range(len(sources)))
        for earlier in ahead.values():
            for stage, seconds in earlier.timings.items():
                timings[stage] += seconds
        if ahead:
            timings["ahead"] = sum(sum(r.timings.values()) for r in ahead.values())
        self.timings = timings
        return CaseFinding(radiographs=findings, hips=fuse_hips(findings), model=self.info)

    def read(self, sources: list[Path | str | Dataset]) -> tuple[tuple[RadiographFinding, ...], dict[str, float]]:
        """Each radiograph's finding (hips not fused) and the seconds per stage, :attr:`timings` untouched: a
        read ahead may run in another thread beside :meth:`analyse_case`."""
        timings = {"decode": 0.0, "detect": 0.0, "classify": 0.0, "cam": 0.0}
        started = time.perf_counter()
        decoded = [self._decode(s) for s in sources]
        readable = [d for d in decoded if d.radiograph is not None]
        timings["decode"] = time.perf_counter() - started
        started = time.perf_counter()
        boxes, image_scores = self._detect_and_score([d.radiograph for d in readable])  # type: ignore[misc]
        timings["detect"] = time.perf_counter() - started
        per_rad = dict(zip((id(d) for d in readable), boxes, strict=True))
        per_image = dict(zip((id(d) for d in readable), image_scores, strict=True))
        heads = self._classify([(d.radiograph, per_rad[id(d)]) for d in readable], timings)  # type: ignore[misc]
        per_heads = dict(zip((id(d) for d in readable), heads, strict=True))
        findings = tuple(self._finding(d, per_heads.get(id(d)), per_image.get(id(d), float("nan"))) for d in decoded)
        return findings, timings

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

    def _detect(self, radiographs: list[Radiograph]) -> list[list[tuple[Box, float]]]:
        """Up to two heads per radiograph, in display coordinates, with their scores."""
        return self._detect_and_score(radiographs)[0]

    @torch.inference_mode()
    def _detect_and_score(self, radiographs: list[Radiograph]) -> tuple[list[list[tuple[Box, float]]], list[float]]:
        """:meth:`_detect`, and each radiograph's image OOD score from the same detector pass (NaN without one)."""
        if not radiographs:
            return [], []
        size = self.info.detector_size
        inputs, frames = [], []
        for rad in radiographs:
            lb, frame = letterbox(torch.from_numpy(rad.image)[None], size)
            inputs.append(to_detector_input(lb).to(self.device))
            frames.append(frame)
        outputs, features = detect_with_features(self.detector, inputs)
        image_scores = (
            self.ood.image_scores(features).tolist() if self.ood is not None else [float("nan")] * len(inputs)
        )
        results = []
        for out, frame in zip(outputs, frames, strict=True):
            kept: list[tuple[Box, float]] = []
            for box, score in zip(out["boxes"].tolist(), out["scores"].tolist(), strict=True):
                if score < DETECTION_THRESHOLD or len(kept) == 2:
                    break
                image_box = frame.to_image(tuple(box))
                if all(not _same_head(image_box, k) for k, _ in kept):
                    kept.append((image_box, float(score)))
            results.append(kept)
        return results, image_scores

    @torch.inference_mode()
    def _classify(
        self, items: list[tuple[Radiograph, list[tuple[Box, float]]]], timings: dict[str, float]
    ) -> list[list[tuple[Box, float, dict[str, np.ndarray], np.ndarray, Box]]]:
        """One classifier pass over every crop; per head: box, score, averaged probabilities, CAM, CAM box
        (``timings`` gets the seconds of classification and CAM).

        With an OOD reference, the probabilities carry ``"ood"``: the head's own score from its trunk features
        averaged over the scales (as the reference was fitted).
        """
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
        if self.ood is not None:
            pooled = out.features.mean((2, 3)).double()
            probs["ood"] = self.ood.head_scores(pooled.reshape(-1, n_scales, pooled.shape[1]).mean(1).cpu().numpy())
        timings["classify"] = time.perf_counter() - started
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
        timings["cam"] = time.perf_counter() - started
        return results

    def _finding(
        self,
        d: _Decoded,
        heads: list[tuple[Box, float, dict[str, np.ndarray], np.ndarray, Box]] | None,
        image_score: float = float("nan"),
    ) -> RadiographFinding:
        """The reading of one decoded radiograph from its heads and its image OOD score."""
        ds = d.ds
        common = {
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
            "study_instance_uid": str(ds.get("StudyInstanceUID", "")),
            "series_instance_uid": str(ds.get("SeriesInstanceUID", "")),
            "sop_class_uid": str(ds.get("SOPClassUID", "")),
            "rows": _count(ds, "Rows"),
            "columns": _count(ds, "Columns"),
        }
        if d.radiograph is None or heads is None:
            return RadiographFinding(**common, view=None, ap_probability=float("nan"), heads=(), error=d.error)
        rad = d.radiograph
        if not heads:
            return RadiographFinding(
                **common, view=None, ap_probability=float("nan"), heads=(), ood_score=image_score,
                out_of_distribution=self._beyond(image_score),
            )  # fmt: skip
        ap = float(np.mean([h[2]["view"][VIEW_CLASSES.index("AP")] for h in heads]))
        view = View.AP if ap >= 0.5 else View.FL
        sides = _assign_sides(rad, view, heads)
        findings = []
        for (box, score, p, cam, cam_box), side in zip(heads, sides, strict=True):
            side_p = float(p["side"][SIDE_CLASSES.index(side.value)])
            stage_probs = {s: float(v) for s, v in zip(STAGES, p["stage"], strict=True)}
            if rad.mirrored:
                cam = cam[:, ::-1].copy()
            own = float(p["ood"]) if "ood" in p else float("nan")
            ood_score = OodModel.combine(own, image_score)
            refused = self._beyond(ood_score)
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
                    ood_score=ood_score,
                    out_of_distribution=refused,
                    ood_reason=self._reason(own, image_score) if refused else "",
                )
            )
        return RadiographFinding(
            **common, view=view, ap_probability=ap, heads=tuple(findings),
            ood_score=float(np.fmax.reduce([image_score, *(h.ood_score for h in findings)])),
            out_of_distribution=any(h.out_of_distribution for h in findings),
        )  # fmt: skip

    def _beyond(self, score: float) -> bool:
        """True when refusal is on and ``score`` exceeds the threshold (a NaN score never does)."""
        return self.refuse_out_of_distribution and self.ood is not None and bool(score > self.ood.threshold)

    def _reason(self, own: float, image: float) -> str:
        """Why a head was refused, for the SR's TEXT item."""
        assert self.ood is not None
        rate = f"{100 * self.ood.false_flag_rate:g} %"
        what = (
            "the femoral head is unlike the training heads"
            if not image > own
            else "the radiograph is unlike the training radiographs"
        )
        return (
            f"AVN not evaluated, {OUTSIDE_EXPERIENCE}: {what} (out-of-distribution score {np.fmax(own, image):.2f} "
            f"above the threshold {self.ood.threshold:.2f}, set at a {rate} false-flag rate on held-out "
            "training-like heads)."
        )

    def analyse_case_with_heads(self, sources: list[Path | str | Dataset], heads: list[list[Box]]) -> CaseFinding:
        """:meth:`analyse_case` with each source's femoral heads given instead of detected (boxes in its stored
        pixels, detection score 1): the classifier alone, as ``avn-node evaluate --truth-boxes`` scores it. The
        detector still runs for the radiographs' out-of-distribution scores.
        """
        self.timings = {"decode": 0.0, "detect": 0.0, "classify": 0.0, "cam": 0.0}
        decoded = [self._decode(s) for s in sources]
        readable = [
            (d, [(d.radiograph.from_stored(b), 1.0) for b in boxes])
            for d, boxes in zip(decoded, heads, strict=True)
            if d.radiograph is not None
        ]
        _, image_scores = self._detect_and_score([d.radiograph for d, _ in readable])  # type: ignore[misc]
        given_heads = [(d.radiograph, given) for d, given in readable]
        classified = self._classify(given_heads, self.timings)  # type: ignore[arg-type]
        per_heads = {id(d): h for (d, _), h in zip(readable, classified, strict=True)}
        per_image = {id(d): score for (d, _), score in zip(readable, image_scores, strict=True)}
        findings = tuple(self._finding(d, per_heads.get(id(d)), per_image.get(id(d), float("nan"))) for d in decoded)
        return CaseFinding(radiographs=findings, hips=fuse_hips(findings), model=self.info)


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
