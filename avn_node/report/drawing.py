"""Drawing shared by the secondary captures: fonts, stage colours, the heat-map colour map, the banner."""

from __future__ import annotations

from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from avn_node.ground_truth import FicatStage
from avn_node.report.identity import NOT_FOR_DIAGNOSTIC_USE

STAGE_COLOURS: dict[FicatStage, tuple[int, int, int]] = {
    FicatStage.ABSENCE: (80, 200, 120),
    FicatStage.II: (250, 220, 60),
    FicatStage.III: (255, 150, 40),
    FicatStage.IV: (240, 60, 60),
}
STAGE_LABELS: dict[FicatStage, str] = {
    FicatStage.ABSENCE: "no AVN",
    FicatStage.II: "Ficat II",
    FicatStage.III: "Ficat III",
    FicatStage.IV: "Ficat IV",
}
BANNER_RED = (200, 0, 0)
REFUSED_COLOUR = (180, 180, 255)
"""A head refused as out of distribution: no stage colour, since no stage is asserted."""


@cache
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, shipped with matplotlib, so every install draws the same letters."""
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold" if bold else "normal"))
    return ImageFont.truetype(path, size)


def heat_colours(cam: np.ndarray) -> np.ndarray:
    """A CAM in [0, 1] as RGB floats in [0, 1]: matplotlib's turbo, red at the peak, clear over grey bone."""
    from matplotlib import colormaps

    return colormaps["turbo"](np.clip(cam, 0, 1))[..., :3]


def banner(image: Image.Image, text: str = NOT_FOR_DIAGNOSTIC_USE) -> None:
    """A red bar across the top with ``text`` in white, sized to the image."""
    draw = ImageDraw.Draw(image)
    size = max(14, image.width // 28)
    f = font(size, bold=True)
    height = int(size * 1.6)
    draw.rectangle([0, 0, image.width, height], fill=BANNER_RED)
    width = draw.textlength(text, font=f)
    draw.text(((image.width - width) / 2, (height - size) / 2 - 1), text, font=f, fill=(255, 255, 255))


def labelled_box(
    draw: ImageDraw.ImageDraw,
    box: tuple[float, float, float, float],
    colour: tuple[int, int, int],
    lines: list[str],
    size: int,
) -> None:
    """A rectangle with ``lines`` of text on a dark plate just above it (or inside when at the top edge)."""
    width = max(2, size // 6)
    draw.rectangle(box, outline=colour, width=width)
    f = font(size, bold=True)
    text_w = max(draw.textlength(line, font=f) for line in lines)
    plate_h = int(len(lines) * size * 1.25 + size * 0.3)
    x0 = box[0]
    y0 = box[1] - plate_h - width if box[1] - plate_h - width >= 0 else box[1] + width
    draw.rectangle([x0, y0, x0 + text_w + size * 0.6, y0 + plate_h], fill=(0, 0, 0))
    for i, line in enumerate(lines):
        draw.text((x0 + size * 0.3, y0 + size * 0.15 + i * size * 1.25), line, font=f, fill=colour)
