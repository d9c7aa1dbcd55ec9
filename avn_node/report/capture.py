"""The CAM secondary capture of one analysed radiograph (DESIGN §6; SC Image IOD, PS3.3 A.8.1).

The windowed radiograph as stored (MONOCHROME1 shown bright-bone), each head's box in its stage colour, the
stage head's class-activation map as a heat map inside the box, side, stage and probabilities as labels,
and a NOT FOR DIAGNOSTIC USE banner while demo weights are loaded. A head refused as out of distribution
gets its box and "AVN not evaluated, outside the model's experience", no heat map, stage or probability.
"""

from __future__ import annotations

import numpy as np
from highdicom.sc import SCImage
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset

from avn_node.findings import OUTSIDE_EXPERIENCE, HeadFinding, RadiographFinding
from avn_node.models.pixels import normalise, presentation_values
from avn_node.report.drawing import (
    REFUSED_COLOUR,
    STAGE_COLOURS,
    STAGE_LABELS,
    banner,
    heat_colours,
    labelled_box,
)
from avn_node.report.identity import Producer
from avn_node.report.secondary import secondary_capture

CAM_SERIES_NUMBER = 991
MAX_SIDE_PIXELS = 1024
HEAT_OPACITY = 0.6


def _grey(source: Dataset) -> tuple[np.ndarray, float]:
    """The displayed radiograph as uint8, at most :data:`MAX_SIDE_PIXELS` on its longer side, and the scale."""
    image = normalise(presentation_values(source)).astype(np.float32)
    scale = min(1.0, MAX_SIDE_PIXELS / max(image.shape))
    if scale < 1.0:
        size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
        image = _resized(image, size)
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), scale


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (float) resampled bilinearly to ``size`` (width, height); antialiased when shrinking."""
    return np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


def _blend_cam(rgb: np.ndarray, head: HeadFinding, scale: float) -> None:
    """Alpha-blend the head's CAM (opacity grows with activation) into its box, in place."""
    x0, y0, x1, y1 = (c * scale for c in head.cam_box)
    w, h = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    cam = np.clip(_resized(head.cam, (w, h)), 0, 1)
    cx0, cy0 = round(x0), round(y0)
    ix0, iy0 = max(0, cx0), max(0, cy0)
    ix1, iy1 = min(rgb.shape[1], cx0 + w), min(rgb.shape[0], cy0 + h)
    if ix1 <= ix0 or iy1 <= iy0:
        return
    part = cam[iy0 - cy0 : iy1 - cy0, ix0 - cx0 : ix1 - cx0]
    alpha = (HEAT_OPACITY * part)[..., None]
    region = rgb[iy0:iy1, ix0:ix1].astype(np.float32) / 255
    rgb[iy0:iy1, ix0:ix1] = np.round(255 * ((1 - alpha) * region + alpha * heat_colours(part))).astype(np.uint8)


def head_label(head: HeadFinding) -> list[str]:
    """Label lines of one head: side and stage, then the probability of that stage and of AVN.

    A refused head: side, "AVN not evaluated" and "outside the model's experience", nothing else.
    """
    side = "Right" if head.side.value == "R" else "Left"
    if not head.evaluated:
        return [f"{side}: AVN not evaluated", OUTSIDE_EXPERIENCE]
    lines = [f"{side}: {STAGE_LABELS[head.stage]}"]
    lines.append(f"{100 * head.stage_probabilities[head.stage]:.0f} %, AVN {100 * head.presence_probability:.0f} %")
    if not head.side_agrees:
        lines.append("side uncertain")
    return lines


def render_overlay(source: Dataset, radiograph: RadiographFinding, demo: bool) -> np.ndarray:
    """The RGB overlay image (rows × columns × 3, uint8)."""
    grey, scale = _grey(source)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for head in radiograph.heads:
        if head.evaluated:  # a refused head's CAM would explain a stage that is not asserted
            _blend_cam(rgb, head, scale)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    size = max(12, image.width // 48)
    for head in radiograph.heads:
        box = tuple(c * scale for c in head.box)
        colour = STAGE_COLOURS[head.stage] if head.evaluated else REFUSED_COLOUR
        labelled_box(draw, box, colour, head_label(head), size)  # type: ignore[arg-type]
    if not radiograph.heads:
        labelled_box(draw, (size, 3 * size, size, 3 * size), (255, 180, 80), ["No femoral head found"], size)
    if demo:
        banner(image)
    return np.asarray(image)


def _instance_number(source: Dataset) -> int:
    """The source's Instance Number (IS, PS3.5 6.2) for its capture; 1 when missing or not an integer string."""
    try:
        return int(source.get("InstanceNumber") or 1)
    except (TypeError, ValueError):
        return 1


def build_capture(source: Dataset, radiograph: RadiographFinding, target_study_uid: str, producer: Producer) -> SCImage:
    """The CAM secondary capture of ``source`` (a full dataset with pixels) in ``target_study_uid``.

    Its UID depends on the study, the model and the source image only: the same image read by the same
    model keeps its secondary capture across result versions. Refusal depends on configuration too (and on
    an out-of-distribution reference added later), so the sides of refused heads join the UID's inputs when
    there are any: a capture that shows a refusal never shares a UID with one that does not.
    """
    refused = [h.side.value for h in radiograph.heads if not h.evaluated]
    sc = secondary_capture(
        source,
        render_overlay(source, radiograph, producer.demo),
        target_study_uid,
        producer,
        kind="cam-sc",
        series_number=CAM_SERIES_NUMBER,
        series_description="AVN-net heat maps",
        uid_inputs=[str(source.SOPInstanceUID), *(["refused", *refused] if refused else [])],
        instance_number=_instance_number(source),
        sources=[radiograph],
        derivation=f"{producer.model_name} {producer.model_version}: femoral head boxes, Ficat stage and "
        "class-activation heat map drawn over the windowed radiograph",
    )
    sc.PatientOrientation = source.get("PatientOrientation") or ""
    sc.Laterality = source.get("Laterality", "")  # Type 2C: hips are paired
    return sc
