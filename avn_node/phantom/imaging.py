"""X-ray image formation: Beer–Lambert on path-length maps, then what a real detector and its software do.

Primary fluence ``N0 · heel · collimation · exp(-Σ μ·t)`` with automatic exposure control, scatter as a
broad blur of the primary, Poisson-like quantum noise, detector blur, log conversion, the vendor's
edge enhancement / dynamic-range compression, and the mapping to 12–16 stored bits (MONOCHROME1 or 2)
with a window or a VOI LUT that a viewer applies.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import gaussian_filter

from avn_node.ground_truth import Side, View
from avn_node.phantom.anatomy import PathMaps
from avn_node.phantom.projection import Array, Canvas, Point
from avn_node.phantom.variation import ImageChain, sample_chain

MU_SOFT = 0.0205
MU_CORTICAL = 0.11
MU_CANCELLOUS = 0.045
"""Linear attenuation coefficients (1/mm) at an effective energy of a ~70 kVp hip exposure."""

DX_SPACINGS_MM = (0.100, 0.125, 0.139, 0.143, 0.148, 0.150, 0.160, 0.175, 0.200)
CR_SPACINGS_MM = (0.100, 0.150, 0.175, 0.200)


@dataclass(frozen=True)
class Acquisition:
    """Everything about one exposure and its processing that is not the patient."""

    view: View
    unilateral: Side | None
    modality: str
    rows: int
    cols: int
    spacing_mm: float
    center_world: Point
    rotation_deg: float
    mirrored: bool
    photometric: str
    bits_stored: int
    kv_scale: float
    photons: float
    heel: float
    heel_along_rows: bool
    scatter_ratio: float
    scatter_sigma_mm: float
    blur_px: float
    edge_enhance: float
    range_compress: float
    processing_sigma_mm: float
    collimation: tuple[float, float, float, float]
    marker: Side | None
    marker_at: tuple[float, float]
    rescale: tuple[float, float]
    voi: str
    window_scale: float
    seed: int
    chain: ImageChain | None = None
    """The varied styles' image chain and export; None: the classic chain."""

    @classmethod
    def sample(
        cls,
        rng: np.random.Generator,
        view: View,
        unilateral: Side | None,
        modality: str,
        hip_distance: float,
        size_range: tuple[int, int] = (1500, 3000),
        style: str = "classic",
        look_rng: np.random.Generator | None = None,
    ) -> Acquisition:
        """One exposure; the detector's pixel count stays in ``size_range`` (pixel spacing adapts).

        ``look_rng`` draws what the varied styles change (field of view, lumbar spine in the field, chain).
        """
        spacing = float(rng.choice(DX_SPACINGS_MM if modality == "DX" else CR_SPACINGS_MM))
        if unilateral is None:
            width = rng.uniform(330, 430)
            height = width * rng.uniform(0.72, 0.9)
            center = (rng.uniform(-15, 15), rng.uniform(0, 35))
            if look_rng is not None:
                width *= look_rng.uniform(0.95, 1.15)
                if look_rng.random() < 0.3:  # pelvis with the lumbar spine
                    height = width * look_rng.uniform(0.95, 1.2)
                    center = (center[0], look_rng.uniform(-70, -20))
        else:
            width = rng.uniform(200, 290)
            height = width * rng.uniform(0.85, 1.1)
            sgn = -1.0 if unilateral is Side.R else 1.0
            center = (sgn * (hip_distance / 2 + rng.uniform(-5, 30)), rng.uniform(5, 45))
        lo, hi = size_range
        spacing = round(float(np.clip(spacing, width / hi, width / lo)), 4)
        cols = int(np.clip(round(width / spacing), lo, hi))
        rows = int(np.clip(round(height / spacing), lo, hi))
        if unilateral is None:
            marker = Side.R if rng.random() < 0.85 else (Side.L if rng.random() < 0.5 else None)
        else:
            marker = unilateral if rng.random() < 0.85 else None
        rescale = (1.0, 0.0)
        voi = str(rng.choice(["window", "lut", "both"], p=[0.7, 0.15, 0.15]))
        if modality == "CR" and voi == "window" and rng.random() < 0.4:
            rescale = [(1.0, -1024.0), (0.5, 0.0), (2.0, -4096.0)][int(rng.integers(3))]
        margins = tuple(float(rng.uniform(0.0, 0.07)) if rng.random() < 0.6 else 0.0 for _ in range(4))
        acq = cls(
            view=view,
            unilateral=unilateral,
            modality=modality,
            rows=rows,
            cols=cols,
            spacing_mm=spacing,
            center_world=center,
            rotation_deg=float(np.clip(rng.normal(0, 4), -10, 10)),
            mirrored=bool(rng.random() < 0.05),
            photometric="MONOCHROME1" if rng.random() < (0.5 if modality == "CR" else 0.15) else "MONOCHROME2",
            bits_stored=int(rng.integers(12, 17)),
            kv_scale=rng.uniform(0.88, 1.12),
            photons=float(np.exp(rng.uniform(np.log(400), np.log(3000)))),
            heel=rng.uniform(-0.15, 0.15),
            heel_along_rows=bool(rng.random() < 0.5),
            scatter_ratio=rng.uniform(0.3, 1.2),
            scatter_sigma_mm=rng.uniform(20, 50),
            blur_px=rng.uniform(0.5, 0.9),
            edge_enhance=rng.uniform(0.0, 0.8),
            range_compress=rng.uniform(0.0, 0.5),
            processing_sigma_mm=rng.uniform(8, 25),
            collimation=margins,  # type: ignore[arg-type]
            marker=marker,
            marker_at=(rng.uniform(0.04, 0.12), rng.uniform(0.06, 0.3)),
            rescale=rescale,
            voi=voi,
            window_scale=rng.uniform(1.2, 1.5),
            seed=int(rng.integers(2**31)),
        )
        if look_rng is None:
            return acq
        chain = sample_chain(look_rng, style, modality)
        acq = replace(
            acq,
            chain=chain,
            kv_scale=look_rng.uniform(0.75, 1.3),
            photons=float(np.exp(look_rng.uniform(np.log(150), np.log(5000)))),
            scatter_ratio=look_rng.uniform(0.2, 2.0),
            blur_px=look_rng.uniform(0.4, 2.5),
            edge_enhance=look_rng.uniform(0.0, 2.5),
            range_compress=look_rng.uniform(0.0, 0.8),
            processing_sigma_mm=look_rng.uniform(4, 30),
            collimation=tuple(float(look_rng.uniform(0.0, 0.08)) if look_rng.random() < 0.5 else 0.0 for _ in range(4)),
        )
        if chain is not None and chain.bits8:  # an 8-bit export: no modality rescale
            return replace(acq, bits_stored=8, rescale=(1.0, 0.0))
        return acq

    def canvas(self) -> Canvas:
        """The detector grid of this exposure."""
        return Canvas(self.rows, self.cols, self.spacing_mm, self.center_world, self.rotation_deg, self.mirrored)

    @property
    def max_value(self) -> int:
        return (1 << self.bits_stored) - 1


@dataclass(frozen=True)
class Radiograph:
    """Stored pixels and the display settings a modality would send with them (output units)."""

    pixels: Array
    window: tuple[float, float]
    voi_lut: tuple[int, np.ndarray] | None
    """(first value mapped, 16-bit LUT entries) when the acquisition uses a VOI LUT."""


def _profile(n: int, lo: float, hi: float, edge_px: float) -> Array:
    """1 inside the collimated interval [lo, hi) of n pixels (fractions), falling off over ``edge_px``."""
    i = np.arange(n, dtype=np.float32)
    a, b = lo * n, (1.0 - hi) * n
    return np.clip(np.minimum(i - a, b - i) / max(edge_px, 1e-3) + 0.5, 0.0, 1.0)


def _lowres(img: Array, step: int, sigma_px: float) -> Array:
    """Gaussian blur computed on a ``step``-subsampled copy and brought back to full size."""
    small = gaussian_filter(img[::step, ::step], sigma_px / step, mode="nearest")
    full = Image.fromarray(small.astype(np.float32), mode="F").resize(img.shape[::-1], Image.Resampling.BILINEAR)
    return np.asarray(full, dtype=np.float32)


def _texture(shape: tuple[int, int], rng: np.random.Generator, scale: float = 1.0) -> Array:
    """Band-pass noise with unit variance: the trabecular pattern of cancellous bone (``scale``: its grain)."""
    step = 2 * max(1, int(scale))  # coarse grain is drawn on a coarser grid
    small = rng.standard_normal((shape[0] // step + 1, shape[1] // step + 1), dtype=np.float32)
    sigma = 2.0 * scale / step
    band = gaussian_filter(small, sigma) - gaussian_filter(small, 3.0 * sigma)
    band /= band.std() + 1e-6
    full = Image.fromarray(band, mode="F").resize(shape[::-1], Image.Resampling.BILINEAR)
    return np.asarray(full, dtype=np.float32)


def _marker_mask(acq: Acquisition) -> Array:
    """Path length (mm of lead-equivalent) of the radiopaque side marker, in pixels of the image."""
    mask = np.zeros((acq.rows, acq.cols), np.float32)
    if acq.marker is None:
        return mask
    size = int(14.0 / acq.spacing_mm)
    glyph = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(glyph)
    font = ImageFont.load_default(size=int(size * 0.9))
    draw.text(
        (size * 0.12, -size * 0.05),
        acq.marker.value,
        fill=255,
        font=font,
        stroke_width=max(size // 18, 1),
        stroke_fill=255,
    )
    on_right = (acq.marker is Side.L) != acq.mirrored
    if acq.mirrored:
        glyph = glyph.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    left, top, right, bottom = acq.collimation
    fx, fy = acq.marker_at
    c0 = int((1.0 - right - fx) * acq.cols) - size if on_right else int((left + fx) * acq.cols)
    r0 = int((top + fy) * acq.rows)
    mask[r0 : r0 + size, c0 : c0 + size] = np.asarray(glyph, np.float32) / 255.0
    return mask


def _near_hips(maps: PathMaps, acq: Acquisition, step: int) -> Array:
    """Mask (subsampled by ``step``) of the pixels within two head diameters of a femoral head."""
    mask = np.zeros(((acq.rows + step - 1) // step, (acq.cols + step - 1) // step), bool)
    for box in maps.head_outlines.values():
        if isinstance(box, tuple):
            x0, y0, x1, y1 = box
            cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 1.25
            mask[
                max(int((cy - half) / step), 0) : int((cy + half) / step) + 1,
                max(int((cx - half) / step), 0) : int((cx + half) / step) + 1,
            ] = True
    return mask


def expose(maps: PathMaps, acq: Acquisition, noise: bool = True, realisation: int = 0) -> Radiograph:
    """Form the stored image of ``maps`` under ``acq``.

    ``noise=False`` gives the noise-free expectation; ``realisation`` picks another draw of the quantum
    noise with everything else unchanged.
    """
    rng = np.random.default_rng(acq.seed)
    tex = _texture((acq.rows, acq.cols), rng, maps.trabecular_scale)
    chain = acq.chain
    noise_rng = np.random.default_rng([acq.seed, 1, realisation]) if noise else None
    bone = 1.0 / acq.kv_scale  # harder beams lower bone contrast more than soft-tissue attenuation
    soft = np.maximum(maps.soft - maps.cortical - maps.cancellous, 0.0)
    line = soft * np.float32(MU_SOFT * acq.kv_scale**-0.5)
    line += maps.cortical * np.float32(MU_CORTICAL * bone)
    line += (maps.cancellous * (1.0 + np.float32(maps.trabecular) * tex) + maps.extra) * np.float32(
        MU_CANCELLOUS * bone
    )
    line += _marker_mask(acq) * np.float32(4.0)

    left, top, right, bottom = acq.collimation
    edge = 1.5 / acq.spacing_mm
    col_p = _profile(acq.cols, left, right, edge)
    row_p = _profile(acq.rows, top, bottom, edge)
    heel_c = 1.0 + acq.heel * np.linspace(-1, 1, acq.cols, dtype=np.float32) * (not acq.heel_along_rows)
    heel_r = 1.0 + acq.heel * np.linspace(-1, 1, acq.rows, dtype=np.float32) * acq.heel_along_rows
    inside = row_p[:, None] * col_p[None, :]
    fluence = (heel_r[:, None] * heel_c[None, :]) * (0.04 + 0.96 * inside)
    if chain is not None and chain.vignette:
        fluence *= _vignette(acq.rows, acq.cols, chain.vignette)
    # automatic exposure control: the chamber behind the hips sees ``photons`` per pixel
    r, c = acq.rows // 2, acq.cols // 2
    chamber = float(
        np.median(line[r - acq.rows // 8 : r + acq.rows // 8 : 4, c - acq.cols // 6 : c + acq.cols // 6 : 4])
    )
    n0 = acq.photons * float(np.exp(chamber))
    primary = fluence * np.float32(n0) * np.exp(-line)
    step = 8
    detected = primary + np.float32(acq.scatter_ratio) * _lowres(primary, step, acq.scatter_sigma_mm / acq.spacing_mm)
    if noise_rng is not None:
        detected += np.sqrt(detected) * noise_rng.standard_normal(detected.shape, dtype=np.float32)
    detected = gaussian_filter(detected, acq.blur_px, truncate=3.0)
    q = np.float32(np.log(n0)) - np.log(np.maximum(detected, np.float32(1.0)))
    base = _lowres(q, step, acq.processing_sigma_mm / acq.spacing_mm)
    # the modality's automatic levels look at the anatomy away from the hips, so no lesion moves them
    levels = (inside[::step, ::step] > 0.5) & ~_near_hips(maps, acq, step)
    if chain is None or not chain.film:  # a film-screen system has no digital processing
        q += np.float32(acq.edge_enhance) * (q - base) - np.float32(acq.range_compress) * (
            base - base[::step, ::step][levels].mean()
        )
    field = q[::step, ::step][levels]
    lo, hi = np.percentile(field, [0.5, 99.8])
    span = acq.max_value * rng.uniform(0.6, 0.92)
    offset = acq.max_value * rng.uniform(0.02, 0.06)
    if chain is None:
        v = np.clip((q - np.float32(lo)) * np.float32(span / max(hi - lo, 1e-3)) + np.float32(offset), 0, acq.max_value)
    else:
        q = (q - np.float32(lo)) * np.float32(1.0 / max(hi - lo, 1e-3))
        q = _chain(q, chain, acq, np.random.default_rng([acq.seed, 2, realisation]) if noise else None)
        v = np.clip(q * np.float32(span) + np.float32(offset), 0, acq.max_value)
    dtype = np.uint8 if acq.bits_stored == 8 else np.uint16
    stored = np.rint(v).astype(dtype)
    if acq.photometric == "MONOCHROME1":
        stored = (acq.max_value - stored).astype(dtype)
    if chain is not None:
        stored = _export(stored, chain, acq)

    slope, intercept = acq.rescale
    body = stored[::step, ::step][levels].astype(np.float64) * slope + intercept
    p_lo, p_hi = np.percentile(body, [1, 99.9])
    width = max((p_hi - p_lo) * acq.window_scale, 2.0)  # wide enough that bone keeps its texture
    centre = p_hi - 0.55 * width if acq.photometric == "MONOCHROME1" else p_lo + 0.55 * width  # bone side
    window = (float(round(centre, 1)), float(round(width, 1)))
    lut = None
    if acq.voi != "window":
        a, b = (int(x) for x in np.percentile(body, [0.2, 99.8]))
        n = min(max(b - a + 1, 2), 65535)
        x = np.linspace(-4.0, 4.0, n) * (1.0 / acq.window_scale)
        lut = (a, np.rint(65535.0 / (1.0 + np.exp(-x))).astype(np.uint16))
    return Radiograph(stored, window, lut)


def _vignette(rows: int, cols: int, strength: float) -> Array:
    """Radial fall-off of the exposure towards the corners (film-screen cassette, short distance)."""
    y = np.linspace(-1, 1, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1, 1, cols, dtype=np.float32)[None, :]
    return np.float32(1.0) - np.float32(strength) * (x * x + y * y) / np.float32(2.0)


def _chain(q: Array, chain: ImageChain, acq: Acquisition, noise_rng: np.random.Generator | None) -> Array:
    """The varied styles' processing of the normalised attenuation image (0–1 over the body)."""
    if chain.edge_fine:
        sigma = chain.fine_sigma_mm / acq.spacing_mm
        step = max(1, int(sigma / 3))
        blurred = _lowres(q, step, sigma) if step > 1 else gaussian_filter(q, sigma, truncate=2.5)
        q = q + np.float32(chain.edge_fine) * (q - blurred)
    if chain.tone_contrast:
        s_curve = 1.0 / (1.0 + np.exp(-np.float32(chain.tone_contrast) * (q - np.float32(chain.tone_mid)) * 2))
        ends = 1.0 / (1.0 + np.exp(-chain.tone_contrast * (np.array([0.0, 1.0]) - chain.tone_mid) * 2))
        q = ((s_curve - np.float32(ends[0])) / np.float32(ends[1] - ends[0])).astype(np.float32)
    if chain.tone_gamma != 1.0:
        q = np.clip(q, 0.0, None) ** np.float32(chain.tone_gamma)
    if chain.grid_period_px:
        axis = np.arange(acq.cols if chain.grid_vertical else acq.rows, dtype=np.float32)
        lines = np.float32(chain.grid_amplitude) * np.sin(axis * np.float32(2 * np.pi / chain.grid_period_px))
        q = q + (lines[None, :] if chain.grid_vertical else lines[:, None])
    if noise_rng is not None:
        if chain.banding:
            q = q + np.float32(chain.banding) * noise_rng.standard_normal((acq.rows, 1), dtype=np.float32)
        if chain.mottle:
            q = q + np.float32(chain.mottle) * _texture(q.shape, noise_rng, 12.0)
        if chain.grain:
            q = q + np.float32(chain.grain) * noise_rng.standard_normal(q.shape, dtype=np.float32)
    return q.astype(np.float32)


def _export(stored: Array, chain: ImageChain, acq: Acquisition) -> Array:
    """Burned-in text in display white, then the lossy JPEG round trip of an 8-bit export."""
    if chain.text:
        white = 0 if acq.photometric == "MONOCHROME1" else acq.max_value
        mask = Image.new("L", (acq.cols, acq.rows), 0)
        draw = ImageDraw.Draw(mask)
        font = ImageFont.load_default(size=max(acq.rows // 40, 8))
        text_rng = np.random.default_rng([acq.seed, 3])
        for line in chain.text:
            x = int(text_rng.uniform(0.02, 0.8) * acq.cols)
            y = int(text_rng.choice([text_rng.uniform(0.01, 0.08), text_rng.uniform(0.9, 0.96)]) * acq.rows)
            draw.text((x, y), line, fill=255, font=font)
        stored = np.where(np.asarray(mask) > 127, stored.dtype.type(white), stored)
    if chain.jpeg_quality and stored.dtype == np.uint8:
        buffer = io.BytesIO()
        Image.fromarray(stored).save(buffer, format="JPEG", quality=chain.jpeg_quality)
        stored = np.asarray(Image.open(buffer), dtype=np.uint8).copy()
    return stored
