"""What a real department varies beyond the classic phantom: anatomy extras, hardware, image chain, export.

Three rendering styles share the DICOM and ground-truth contract:

- ``classic``: the original look; draws nothing from here, so its data sets are unchanged.
- ``varied``: shape families of the skeleton, lumbar spine, bowel gas, shields, buttons, calcified vessels,
  skin folds, screws, nails, plates and arthroplasties, and a randomised digital image chain (tone curve,
  multi-scale edge enhancement, grid lines, structured noise, burned-in text, 8-bit and JPEG-damaged exports).
- ``alt``: a second look written to differ from both: a film-screen chain (characteristic curve on optical
  density, grain, vignetting, no digital processing), a coarser trabecular texture, thin cortices and other
  body proportions; always 8-bit. A model trained without it shows how it does on a look it was not tuned on.

All draws come from a generator of their own (``[seed, patient, 7]``), never from the classic stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from avn_node.ground_truth import Side

STYLES = ("classic", "varied", "alt")
HARDWARE = ("none", "screws", "nail", "plate", "arthroplasty")
METAL = 22.0
"""Attenuation of implant steel or cobalt-chrome in units of cancellous bone (path-length weight)."""


@dataclass(frozen=True)
class Implant:
    """Hardware in one hip; an arthroplasty replaces the femoral head (then no truth head on that side)."""

    kind: str = "none"
    screws: int = 0
    spread: float = 0.0
    """Spacing of parallel screws, in head radii."""
    metal: float = METAL
    cup: bool = True


@dataclass(frozen=True)
class AnatomyExtras:
    """Patient-level additions to the path-length maps (world millimetres)."""

    spine_levels: int = 0
    gas: tuple[tuple[float, float, float, float, float], ...] = ()
    """Bowel gas and stool pockets: centre x, y, semi-axes a, b and the share of soft tissue they replace."""
    shield: tuple[float, float, float] | None = None
    """Gonadal shield: centre x, y, half width."""
    buttons: tuple[tuple[float, float, float], ...] = ()
    vessels: tuple[Side, ...] = ()
    folds: tuple[tuple[float, float, float, float, float], ...] = ()
    """Skin folds: x0, y0, x1, y1, radius."""
    implants: dict[Side, Implant] = field(default_factory=dict)
    trabecular: float = 0.12
    trabecular_scale: float = 1.0
    head_cortex: float = 1.0
    head_aspect: float = 1.0
    socket_depth: float = 0.0
    """Acetabular depth change as a fraction of the head radius (positive: deeper, more coverage)."""
    anatomic: Anatomic | None = None
    """The anatomic skeleton family (None: the simple shapes every style had before)."""


@dataclass(frozen=True)
class Anatomic:
    """Closer to anatomy than the simple shapes: the acetabular walls cover the head, the obturator ring and
    the rami are curved, the iliac crest is a thick rim, the neck has a waist and the greater trochanter is a
    ridge on the lateral metaphysis."""

    wall_mm: float = 3.0
    """Thickness of the anterior and posterior acetabular walls."""
    posterior_wall: float = 0.4
    """How far the posterior wall's rim reaches across the head, laterally, in head radii from its centre."""
    anterior_wall: float = 0.0
    crest_mm: float = 5.0
    neck_waist: float = 0.64
    """Narrowest half-width of the femoral neck, in head radii."""
    ramus_bend: float = 0.25
    """Bow of the pubic and ischial rami, in head radii."""


@dataclass(frozen=True)
class ImageChain:
    """The part of image formation that differs between styles (``None`` on an acquisition: classic)."""

    film: bool = False
    tone_contrast: float = 0.0
    """Strength of the S-shaped tone curve applied after log conversion (0: linear)."""
    tone_mid: float = 0.5
    tone_gamma: float = 1.0
    edge_fine: float = 0.0
    fine_sigma_mm: float = 1.5
    grid_period_px: float = 0.0
    grid_amplitude: float = 0.0
    grid_vertical: bool = True
    banding: float = 0.0
    mottle: float = 0.0
    grain: float = 0.0
    vignette: float = 0.0
    text: tuple[str, ...] = ()
    bits8: bool = False
    jpeg_quality: int = 0
    """Lossy JPEG round trip of the 8-bit export (0: none)."""


def sample_patient_changes(rng: np.random.Generator, style: str) -> dict[str, float]:
    """Skeletal shape family of one patient: replacements for :class:`~avn_node.phantom.anatomy.Patient` fields."""
    if style == "classic":
        return {}
    radius = rng.uniform(19.0, 27.0)
    changes: dict[str, float] = {
        "head_radius": radius,
        "neck_shaft_deg": rng.uniform(115, 145),
        "neck_length": radius * rng.uniform(1.7, 2.6),
        "shaft_radius": radius * rng.uniform(0.5, 0.66),
        "shaft_cortex": rng.uniform(2.5, 7.5) if style == "varied" else rng.uniform(1.8, 3.5),
        "joint_gap": rng.uniform(2.8, 5.5),
        "pelvic_height": rng.uniform(0.8, 1.2),
    }
    if style == "alt":  # other body proportions: slimmer or much heavier, wider pelves
        changes["trunk_half_width"] = rng.uniform(125, 230)
        changes["thigh_radius"] = rng.uniform(55, 120)
    else:
        changes["trunk_half_width"] = rng.uniform(120, 215)
        changes["thigh_radius"] = rng.uniform(58, 110)
    changes["trunk_half_depth"] = changes["trunk_half_width"] * rng.uniform(0.5, 0.7)
    return changes


def _implant(rng: np.random.Generator) -> Implant:
    kind = str(rng.choice(HARDWARE, p=[0.8, 0.06, 0.03, 0.03, 0.08]))
    return Implant(
        kind=kind,
        screws=int(rng.integers(2, 4)) if kind == "screws" else 1,
        spread=float(rng.uniform(0.22, 0.35)),
        metal=float(rng.uniform(0.7, 1.3) * METAL),
        cup=bool(rng.random() < 0.8),
    )


def sample_extras(rng: np.random.Generator, style: str) -> AnatomyExtras | None:
    """Anatomy additions of one patient (``None`` for the classic style)."""
    if style == "classic":
        return None
    gas = tuple(
        (
            rng.uniform(-120, 120),
            rng.uniform(-200, -40),
            rng.uniform(8, 40),
            rng.uniform(6, 25),
            rng.uniform(0.15, 0.6),
        )
        for _ in range(int(rng.integers(0, 9)))
    )
    if rng.random() < 0.5:  # stool: a mottle of small pockets in the colon's course
        cx, cy = rng.uniform(-110, 110), rng.uniform(-160, -60)
        gas += tuple(
            (cx + rng.normal(0, 25), cy + rng.normal(0, 20), rng.uniform(1.5, 5), rng.uniform(1.5, 5), 0.5)
            for _ in range(int(rng.integers(15, 50)))
        )
    implants = {s: _implant(rng) for s in (Side.R, Side.L)}
    if all(i.kind == "arthroplasty" for i in implants.values()) and rng.random() < 0.7:
        implants[Side.L] = Implant()  # mostly one replaced hip at a time
    folds = tuple(
        (
            rng.uniform(-200, 200),
            rng.uniform(-150, 150),
            rng.uniform(-200, 200),
            rng.uniform(-150, 250),
            rng.uniform(4, 12),
        )
        for _ in range(int(rng.integers(0, 3)))
    )
    return AnatomyExtras(
        spine_levels=int(rng.integers(2, 4)),
        gas=gas,
        shield=(rng.uniform(-15, 15), rng.uniform(45, 90), rng.uniform(35, 60)) if rng.random() < 0.08 else None,
        buttons=tuple(
            (rng.uniform(-200, 200), rng.uniform(-220, 250), rng.uniform(3, 9)) for _ in range(int(rng.integers(0, 4)))
        )
        if rng.random() < 0.25
        else (),
        vessels=tuple(s for s in (Side.R, Side.L) if rng.random() < 0.12),
        folds=folds,
        implants=implants,
        trabecular=float(rng.uniform(0.04, 0.3) if style == "varied" else rng.uniform(0.25, 0.5)),
        trabecular_scale=float(rng.uniform(0.7, 1.6) if style == "varied" else rng.uniform(1.8, 3.0)),
        head_cortex=float(rng.uniform(0.5, 1.5) if style == "varied" else rng.uniform(0.25, 0.6)),
        head_aspect=float(rng.uniform(0.93, 1.05)),
        socket_depth=float(rng.uniform(-0.15, 0.2)),
        anatomic=_anatomic(rng) if style == "varied" and rng.random() < ANATOMIC_SHARE else None,
    )


ANATOMIC_SHARE = 0.7
"""Share of varied patients drawn with the :class:`Anatomic` skeleton; the rest keep the simple shapes."""


def _anatomic(rng: np.random.Generator) -> Anatomic:
    return Anatomic(
        wall_mm=float(rng.uniform(2.0, 4.5)),
        posterior_wall=float(rng.uniform(0.1, 0.7)),
        anterior_wall=float(rng.uniform(-0.4, 0.2)),
        crest_mm=float(rng.uniform(3.5, 7.0)),
        neck_waist=float(rng.uniform(0.56, 0.7)),
        ramus_bend=float(rng.uniform(0.1, 0.45)),
    )


def sample_leg_adduction(rng: np.random.Generator) -> float:
    """Adduction (negative: abduction) of the legs on an AP of the varied styles: patients are not always
    positioned straight, and a painful hip is often held abducted."""
    return float(rng.uniform(-20.0, 12.0))


def sample_chain(rng: np.random.Generator, style: str, modality: str) -> ImageChain | None:
    """The image chain of one exposure (``None`` for the classic style)."""
    if style == "classic":
        return None
    text = ()
    if rng.random() < 0.5:
        text = tuple(
            str(t)
            for t in rng.choice(
                ["AP", "STANDING", "SUPINE", "PORTABLE", "L", "R", "LAT", "FROG", "100 cm", "kV 75", "mAs 20"],
                size=int(rng.integers(1, 4)),
                replace=False,
            )
        )
    if style == "alt":
        return ImageChain(
            film=True,
            tone_contrast=float(rng.uniform(0.8, 2.2)),
            tone_mid=float(rng.uniform(0.35, 0.65)),
            tone_gamma=float(rng.uniform(0.7, 1.5)),
            grain=float(rng.uniform(0.005, 0.03)),
            vignette=float(rng.uniform(0.0, 0.35)),
            mottle=float(rng.uniform(0.0, 0.015)),
            text=text,
            bits8=True,
            jpeg_quality=int(rng.integers(40, 96)) if rng.random() < 0.6 else 0,
        )
    bits8 = rng.random() < 0.35
    return ImageChain(
        tone_contrast=float(rng.uniform(0.0, 2.0) if rng.random() < 0.7 else 0.0),
        tone_mid=float(rng.uniform(0.3, 0.7)),
        tone_gamma=float(np.exp(rng.uniform(-0.4, 0.4))),
        edge_fine=float(rng.uniform(0.0, 2.0) if rng.random() < 0.6 else 0.0),
        fine_sigma_mm=float(rng.uniform(0.6, 3.0)),
        grid_period_px=float(rng.uniform(2.1, 5.0)) if rng.random() < 0.3 else 0.0,
        grid_amplitude=float(rng.uniform(0.003, 0.02)),
        grid_vertical=bool(rng.random() < 0.5),
        banding=float(rng.uniform(0.0, 0.01)) if rng.random() < 0.3 else 0.0,
        mottle=float(rng.uniform(0.0, 0.012)) if rng.random() < 0.4 else 0.0,
        text=text,
        bits8=bits8,
        jpeg_quality=int(rng.integers(35, 96)) if bits8 and rng.random() < 0.6 else 0,
    )
