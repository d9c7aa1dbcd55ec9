"""Radiograph pixels for the models: decode, modality LUT, VOI LUT, MONOCHROME1, display orientation, normalisation.

Implements the grayscale pipeline of PS3.4 N.2 (Modality LUT → VOI LUT → presentation) up to a [0, 1] float
image, then a robust percentile normalisation so that bit depth, exposure and windowing don't matter to the
networks. The image is turned into the standard display orientation of a hip radiograph (patient's right on
the image's left, PS3.3 C.7.6.1.1.1), so positions and the side classifier speak of the patient's side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
MIN_SIDE = 64
"""Pixels: a stored image narrower or shorter than this holds no hip to read (and would break the crops)."""


class PixelDecodeError(ValueError):
    """The pixel data of an accepted instance cannot be turned into an image (names the reason)."""


@dataclass(frozen=True)
class Radiograph:
    """A normalised radiograph in standard display orientation.

    ``image`` is float32 in [0, 1], rows × columns of the stored image. ``mirrored`` says the stored image
    was flipped left–right to reach the standard orientation; :meth:`to_stored` maps boxes back.
    """

    image: np.ndarray
    mirrored: bool
    orientation_known: bool

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def to_stored(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A box ``[x0, y0, x1, y1]`` of this image in the stored image's pixel columns and rows."""
        return flip_box(box, self.width) if self.mirrored else box

    def from_stored(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """A box of the stored image in this image's coordinates."""
        return self.to_stored(box)


def flip_box(box: tuple[float, float, float, float], width: int) -> tuple[float, float, float, float]:
    """Mirror ``[x0, y0, x1, y1]`` left–right in an image ``width`` pixels wide."""
    x0, y0, x1, y1 = box
    return (width - x1, y0, width - x0, y1)


def is_mirrored(ds: Dataset) -> tuple[bool, bool]:
    """``(mirrored, known)`` from Patient Orientation (0020,0020): rows running toward the patient's right."""
    orientation = ds.get("PatientOrientation")
    if not orientation or len(orientation) != 2:
        return False, False
    toward_columns = str(orientation[0]).upper()
    if toward_columns.startswith("R"):
        return True, True
    if toward_columns.startswith("L"):
        return False, True
    return False, False


def normalise(values: np.ndarray) -> np.ndarray:
    """Map the 0.5–99.5 percentile range to [0, 1], clipped; a flat image becomes zeros."""
    sample = values[:: max(1, values.shape[0] // 512), :: max(1, values.shape[1] // 512)]
    lo, hi = np.percentile(sample, (LOW_PERCENTILE, HIGH_PERCENTILE))
    if not np.isfinite(lo) or not np.isfinite(hi) or hi <= lo:
        return np.zeros(values.shape, np.float32)
    out = (values.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def presentation_values(ds: Dataset) -> np.ndarray:
    """Decoded pixels after the Modality and VOI LUTs, MONOCHROME1 inverted, colour reduced to luminance.

    Raises:
        PixelDecodeError: no pixel data, several frames, a codec failure, or an image under :data:`MIN_SIDE`
            pixels (the message names it).
    """
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise PixelDecodeError("the instance has no Pixel Data")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom and the codec plugins raise many types
        raise PixelDecodeError(f"pixel data cannot be decoded: {type(exc).__name__}: {exc}") from exc
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise PixelDecodeError(f"expected one frame, got Number of Frames {frames}")
    if arr.ndim in (2, 3) and min(arr.shape[:2]) < MIN_SIDE:
        rows, columns = arr.shape[:2]
        raise PixelDecodeError(f"an image of {columns} x {rows} pixels is too small to analyse (minimum {MIN_SIDE})")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if arr.ndim == 3:
        # pydicom converts YBR to RGB; a radiograph stored in colour is grey in content
        return arr.astype(np.float32).mean(axis=2)
    if arr.ndim != 2:
        raise PixelDecodeError(f"unexpected pixel array shape {arr.shape}")
    values = apply_modality_lut(arr, ds)
    values = apply_voi_lut(values, ds, prefer_lut=True)
    values = np.asarray(values, np.float32)
    if photometric == "MONOCHROME1":
        values = values.max() - values
    return values


def load_radiograph(source: Path | str | Dataset) -> Radiograph:
    """Read a DICOM file (or dataset) into a normalised, display-oriented :class:`Radiograph`.

    Raises:
        PixelDecodeError: the file cannot be read or its pixels cannot be decoded.
    """
    if isinstance(source, Dataset):
        ds = source
    else:
        try:
            ds = pydicom.dcmread(source)
        except Exception as exc:
            raise PixelDecodeError(f"not a readable DICOM file: {type(exc).__name__}: {exc}") from exc
    image = normalise(presentation_values(ds))
    mirrored, known = is_mirrored(ds)
    if mirrored:
        image = np.ascontiguousarray(image[:, ::-1])
    return Radiograph(image=image, mirrored=mirrored, orientation_known=known)
