"""The case summary secondary capture: hips × view × stage × probability × notes, readable on a PACS monitor.

A head (or hip) refused as out of distribution reads "not evaluated" and "outside the model's experience".
"""

from __future__ import annotations

import numpy as np
from highdicom.sc import SCImage
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from avn_node.findings import OUTSIDE_EXPERIENCE, CaseFinding, HeadFinding
from avn_node.ground_truth import Side
from avn_node.report.drawing import REFUSED_COLOUR, STAGE_COLOURS, STAGE_LABELS, banner, font
from avn_node.report.identity import Producer
from avn_node.report.secondary import secondary_capture

SUMMARY_SERIES_NUMBER = 992
WIDTH, HEIGHT = 1280, 800
COLUMNS = (("Hip", 40), ("Read on", 150), ("Ficat stage", 290), ("Stage prob.", 460), ("AVN prob.", 620),
           ("Notes", 770))  # fmt: skip
NOTES_WIDTH = WIDTH - 770 - 30


def table_rows(case: CaseFinding) -> list[tuple[Side, str, HeadFinding]]:
    """Per hip: the case verdict first, then each radiograph's reading of that hip."""
    rows = []
    for hip in case.hips:
        rows.append((hip.side, "case", hip.head))
        for r in case.radiographs:
            for head in r.heads:
                if head.side == hip.side:
                    rows.append((hip.side, r.view.value if r.view else "image", head))
    return rows


def _wrap(draw: ImageDraw.ImageDraw, text: str, f: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """Greedy word wrap at ``width`` pixels."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and draw.textlength(f"{lines[-1]} {word}", font=f) <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def _notes_text(head: HeadFinding) -> str:
    return ", ".join(n.value.replace("_", " ") for n in head.notes) or "none"


def render_summary(case: CaseFinding, demo: bool) -> np.ndarray:
    """The summary table as an RGB image."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (12, 12, 16))
    draw = ImageDraw.Draw(image)
    top = (WIDTH // 28) * 2 if demo else 20
    draw.text((40, top), "AVN-net reading of this case", font=font(34, bold=True), fill=(255, 255, 255))
    model = f"{case.model.name} {case.model.version} · sha256 {case.model.sha256[:12]}"
    draw.text((40, top + 46), model, font=font(18), fill=(170, 170, 170))
    y = top + 100
    for title, x in COLUMNS:
        draw.text((x, y), title, font=font(22, bold=True), fill=(200, 200, 200))
    y += 38
    draw.line([(30, y - 6), (WIDTH - 30, y - 6)], fill=(90, 90, 90), width=2)
    for side, read_on, head in table_rows(case):
        bold = read_on == "case"
        f = font(24 if bold else 21, bold=bold)
        colour = STAGE_COLOURS[head.stage] if head.evaluated else REFUSED_COLOUR
        cells = [
            "Right" if side == Side.R else "Left",
            read_on,
            STAGE_LABELS[head.stage] if head.evaluated else "not evaluated",
            f"{100 * head.stage_probabilities[head.stage]:.0f} %" if head.evaluated else "-",
            f"{100 * head.presence_probability:.0f} %" if head.evaluated else "-",
        ]
        for (_, x), text in zip(COLUMNS, cells, strict=False):
            draw.text((x, y), text, font=f, fill=colour if x >= COLUMNS[2][1] else (235, 235, 235))
        note_lines = _wrap(draw, _notes_text(head) if head.evaluated else OUTSIDE_EXPERIENCE, f, NOTES_WIDTH)
        for i, line in enumerate(note_lines):
            draw.text((COLUMNS[-1][1], y + i * (f.size + 4)), line, font=f, fill=(235, 235, 235))
        y += max(1, len(note_lines)) * (f.size + 4) + (16 if bold else 8)
        if y > HEIGHT - 80:
            break
    unread = [r for r in case.radiographs if r.error or not r.heads]
    if unread:
        y += 10
        for r in unread:
            reason = r.error or "no femoral head found"
            draw.text((40, y), f"Image …{r.sop_instance_uid[-12:]}: {reason}"[:110], font=font(18), fill=(255, 180, 80))
            y += 26
    if not case.hips and not unread:
        draw.text((40, y), "No radiograph was analysed.", font=font(22), fill=(255, 180, 80))
    footer = "Probabilities are model outputs, not calibrated clinical risks. Boxes and heat maps: CAM series."
    draw.text((40, HEIGHT - 40), footer, font=font(16), fill=(150, 150, 150))
    if demo:
        banner(image)
    return np.asarray(image)


def build_summary(
    case: CaseFinding, reference: Dataset, target_study_uid: str, producer: Producer, analysed: list[str], version: int
) -> SCImage:
    """The summary image of ``case`` for ``target_study_uid``; ``reference`` is an instance of that study."""
    sc = secondary_capture(
        reference,
        render_summary(case, producer.demo),
        target_study_uid,
        producer,
        kind="summary-sc",
        series_number=SUMMARY_SERIES_NUMBER,
        series_description="AVN-net summary",
        uid_inputs=[*sorted(analysed), version],
        instance_number=version,
        sources=case.radiographs,
        derivation=f"Table of the findings of {producer.model_name} {producer.model_version}",
    )
    sc.PatientOrientation = ""  # a table has no patient orientation
    sc.Laterality = ""  # Type 2C; the table covers both hips, which General Series cannot say
    return sc
