"""Geometric transforms shared by training and inference: letterbox for the detector, multi-scale head crops.

Boxes are ``[x0, y0, x1, y1]`` in pixel columns and rows, as in torchvision's detection references.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from avn_node.findings import Box

CROP_SCALES: tuple[float, ...] = tuple(float(s) for s in np.linspace(0.85, 1.05, 5))
"""AVN-net's resampling of each detected head: five scales linearly spaced in [0.85, 1.05] (paper §III.B)."""

CROP_MEAN = 0.5
CROP_STD = 0.25


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits inside the square detector input: ``letterbox = image * scale + pad``."""

    scale: float
    pad_x: float
    pad_y: float

    def to_image(self, box: Box) -> Box:
        """A letterbox box in image pixels."""
        x0, y0, x1, y1 = box
        s = self.scale
        return ((x0 - self.pad_x) / s, (y0 - self.pad_y) / s, (x1 - self.pad_x) / s, (y1 - self.pad_y) / s)


def letterbox(
    image: torch.Tensor, size: int, offset: tuple[float, float] = (0.5, 0.5)
) -> tuple[torch.Tensor, Letterbox]:
    """Fit a ``(1, H, W)`` image into ``(1, size, size)`` keeping its aspect, zero padding.

    ``offset`` (0–1 per axis) places the image in the free space; 0.5 centres it (inference), training
    draws it at random.
    """
    _, h, w = image.shape
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(image[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    pad_x = int((size - nw) * offset[0])
    pad_y = int((size - nh) * offset[1])
    out = image.new_zeros((1, size, size))
    out[:, pad_y : pad_y + nh, pad_x : pad_x + nw] = resized
    return out, Letterbox(scale=nw / w, pad_x=float(pad_x), pad_y=float(pad_y))


def square_box(box: Box, scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0)) -> Box:
    """The square of side ``scale`` × the box's larger side, centred on the box centre moved by ``shift`` sides."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    cx = (x0 + x1) / 2 + shift[0] * side
    cy = (y0 + y1) / 2 + shift[1] * side
    half = side * scale / 2
    return (cx - half, cy - half, cx + half, cy + half)


def crop(image: torch.Tensor, boxes: list[Box], out_size: int) -> torch.Tensor:
    """Resample each box of a ``(1, H, W)`` image to ``(N, 1, out_size, out_size)``; outside the image is 0.

    Each output pixel averages the input pixels it covers (``roi_align`` with adaptive sampling), so a
    large head is downsampled without aliasing.
    """
    rois = torch.tensor([[0.0, *b] for b in boxes], dtype=image.dtype)
    return roi_align(image[None], rois, output_size=out_size, spatial_scale=1.0, sampling_ratio=0, aligned=True)


def head_crops(
    image: torch.Tensor, box: Box, out_size: int, scales: tuple[float, ...] = CROP_SCALES
) -> tuple[torch.Tensor, list[Box]]:
    """The multi-scale crops of one head and the square boxes they were taken from."""
    boxes = [square_box(box, s) for s in scales]
    return crop(image, boxes, out_size), boxes


def standardise(crops: torch.Tensor) -> torch.Tensor:
    """Centre crops of a [0, 1] image for the classifier."""
    return (crops - CROP_MEAN) / CROP_STD
