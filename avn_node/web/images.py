"""What the pages show of stored DICOM files: PNG renderings of radiographs and captures, and an SR's content
tree (PS3.3 C.17.3: each item's concept name, value type and value)."""

from __future__ import annotations

from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset

from avn_node.models.pixels import normalise, presentation_values

MAX_SIDE = 2048
TEMPORAL = {"DATETIME": "DateTime", "DATE": "Date", "TIME": "Time"}


def png(path: Path, max_side: int) -> bytes:
    """The stored image as PNG, no larger than ``max_side`` (stored orientation: boxes of readings fit it).

    Grey images go through the presentation pipeline (Modality and VOI LUT, MONOCHROME1 inverted) and a
    percentile window; colour images (the captures) as they are."""
    ds = pydicom.dcmread(path)
    if str(ds.get("PhotometricInterpretation", "")).startswith("MONOCHROME"):
        pixels = (normalise(presentation_values(ds)) * 255).astype(np.uint8)
        image = Image.fromarray(pixels, mode="L")
    else:
        image = Image.fromarray(np.asarray(ds.pixel_array, np.uint8)).convert("RGB")
    image.thumbnail((min(max_side, MAX_SIDE),) * 2, Image.Resampling.LANCZOS)
    out = BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@dataclass
class ContentItem:
    """One node of an SR's content tree."""

    name: str
    value_type: str
    value: str
    children: list[ContentItem] = field(default_factory=list)


def _meaning(seq: object) -> str:
    return str(seq[0].CodeMeaning) if seq else ""  # type: ignore[index]


def _value(item: Dataset) -> str:
    kind = item.get("ValueType", "")
    if kind == "TEXT":
        return str(item.get("TextValue", ""))
    if kind == "CODE":
        return _meaning(item.get("ConceptCodeSequence"))
    if kind == "NUM" and item.get("MeasuredValueSequence"):
        measured = item.MeasuredValueSequence[0]
        return f"{measured.NumericValue} {_meaning(measured.get('MeasurementUnitsCodeSequence'))}".strip()
    if kind == "UIDREF":
        return str(item.get("UID", ""))
    if kind in TEMPORAL:
        return str(item.get(TEMPORAL[kind], ""))
    if kind == "IMAGE" and item.get("ReferencedSOPSequence"):
        return str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
    if kind == "SCOORD":
        return f"{item.get('GraphicType', '')} {list(item.get('GraphicData', []))}"
    return ""


def _items(seq: object) -> list[ContentItem]:
    out = []
    for item in seq or []:  # type: ignore[union-attr]
        out.append(
            ContentItem(
                name=_meaning(item.get("ConceptNameCodeSequence")),
                value_type=str(item.get("ValueType", "")),
                value=_value(item),
                children=_items(item.get("ContentSequence")),
            )
        )
    return out


def sr_tree(path: Path) -> ContentItem:
    """The SR's document title and content items."""
    ds = pydicom.dcmread(path)
    return ContentItem(_meaning(ds.get("ConceptNameCodeSequence")), "CONTAINER", "", _items(ds.get("ContentSequence")))
