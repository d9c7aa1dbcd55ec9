"""The bony pelvis, both proximal femora and the soft-tissue envelope, as path-length maps.

Everything is built from ellipsoids and tapered capsules in world millimetres (see
:mod:`avn_node.phantom.projection`). A :class:`Patient` holds what stays the same across the radiographs of
one person; a :class:`Pose` what changes between an AP pelvis and a frog-leg lateral.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from avn_node.ground_truth import Side, View
from avn_node.phantom.lesions import DomeSector, HeadFrame, HeadLesion, LesionEffects, effects, joint_gap_factor
from avn_node.phantom.projection import Array, Bone, Canvas, Capsule, Ellipsoid, Point, accumulate
from avn_node.phantom.variation import Anatomic, AnatomyExtras, Implant

CLASSIC_EXTRAS = AnatomyExtras()
SIDE_SIGN = {Side.R: -1.0, Side.L: 1.0}
"""World x of a side's hip: the patient's right at negative x."""


@dataclass(frozen=True)
class Patient:
    """Body habitus and skeletal dimensions of one patient (mm, degrees)."""

    sex: str
    age_years: int
    head_radius: float
    hip_distance: float
    neck_shaft_deg: float
    neck_length: float
    shaft_radius: float
    shaft_cortex: float
    joint_gap: float
    trunk_half_width: float
    trunk_half_depth: float
    thigh_radius: float
    pelvic_height: float
    bone_island: dict[Side, tuple[float, float, float] | None]
    extras: AnatomyExtras | None = None
    """Spine, gas, implants and shape-family details of the varied styles (None: the classic phantom)."""

    @property
    def look(self) -> AnatomyExtras:
        return self.extras or CLASSIC_EXTRAS

    def implant(self, side: Side) -> Implant:
        return self.look.implants.get(side, Implant())

    @classmethod
    def sample(cls, rng: np.random.Generator) -> Patient:
        sex = "F" if rng.random() < 0.45 else "M"
        scale = float(np.clip(rng.normal(1.0, 0.05), 0.88, 1.12))
        radius = (24.0 if sex == "M" else 21.5) * scale * rng.uniform(0.95, 1.05)
        fat = rng.uniform(0.0, 1.0)
        islands = {
            s: (
                (rng.uniform(-0.3, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(1.5, 3.5)) if rng.random() < 0.06 else None
            )
            for s in (Side.L, Side.R)
        }
        return cls(
            sex=sex,
            age_years=int(rng.integers(20, 80)),
            head_radius=radius,
            hip_distance=(172.0 if sex == "M" else 180.0) * scale * rng.uniform(0.96, 1.04),
            neck_shaft_deg=float(rng.normal(129, 4)),
            neck_length=radius * rng.uniform(2.0, 2.4),
            shaft_radius=radius * rng.uniform(0.55, 0.62),
            shaft_cortex=rng.uniform(4.0, 6.5),
            joint_gap=rng.uniform(3.5, 5.0),
            trunk_half_width=rng.uniform(150, 175) + 60 * fat,
            trunk_half_depth=rng.uniform(85, 105) + 55 * fat,
            thigh_radius=rng.uniform(65, 80) + 30 * fat,
            pelvic_height=rng.uniform(0.85, 1.12),
            bone_island=islands,
        )


@dataclass(frozen=True)
class Pose:
    """Positioning of one radiograph."""

    view: View
    adduction_deg: float
    abduction_deg: float
    neck_projection: float
    neck_shaft_projected_deg: float
    lesser_trochanter: float
    symphysis_shift: float

    @classmethod
    def sample(cls, rng: np.random.Generator, view: View, patient: Patient) -> Pose:
        frog = view is View.FL
        return cls(
            view=view,
            adduction_deg=rng.uniform(3, 10),
            abduction_deg=rng.uniform(35, 60) if frog else 0.0,
            neck_projection=rng.uniform(0.55, 0.8) if frog else rng.uniform(0.88, 1.0),
            neck_shaft_projected_deg=rng.uniform(140, 165) if frog else patient.neck_shaft_deg,
            lesser_trochanter=rng.uniform(0.8, 1.2) if frog else rng.uniform(0.0, 0.6),
            symphysis_shift=rng.uniform(-12, 12),
        )


@dataclass
class PathMaps:
    """Path lengths (mm) through each tissue, plus extra attenuation in units of cancellous bone."""

    soft: Array
    cortical: Array
    cancellous: Array
    extra: Array
    head_outlines: dict[Side, tuple[float, float, float, float] | None | str]
    """Per side: outline box in pixels, None (outside the image), "partial" (cut by its edge) or
    "prosthesis" (an arthroplasty: no femoral head to find)."""
    trabecular: float = 0.12
    trabecular_scale: float = 1.0


def _unit(x: float, y: float) -> Point:
    n = math.hypot(x, y)
    return (x / n, y / n)


def _rotate(v: Point, deg: float) -> Point:
    t = math.radians(deg)
    return (v[0] * math.cos(t) - v[1] * math.sin(t), v[0] * math.sin(t) + v[1] * math.cos(t))


def _add(p: Point, *terms: tuple[Point, float]) -> Point:
    x, y = p
    for (vx, vy), k in terms:
        x, y = x + vx * k, y + vy * k
    return (x, y)


def dome_direction(side: Side) -> Point:
    """Weight-bearing direction of a femoral head: up and 15° lateral."""
    return _unit(SIDE_SIGN[side] * math.sin(math.radians(15)), -math.cos(math.radians(15)))


def render(
    canvas: Canvas,
    patient: Patient,
    pose: Pose,
    lesions: dict[Side, HeadLesion],
    soft_step: int = 4,
) -> PathMaps:
    """Path-length maps of the whole scene on ``canvas``."""
    shape = (canvas.rows, canvas.cols)
    maps = PathMaps(
        soft=_soft_tissue(canvas, patient, pose, soft_step),
        cortical=np.zeros(shape, np.float32),
        cancellous=np.zeros(shape, np.float32),
        extra=np.zeros(shape, np.float32),
        head_outlines={},
        trabecular=patient.look.trabecular,
        trabecular_scale=patient.look.trabecular_scale,
    )
    _sacrum(canvas, patient, pose, maps)
    if patient.extras is not None:
        _extras(canvas, patient, pose, maps)
    for side in (Side.R, Side.L):
        _hip(canvas, patient, pose, side, lesions[side], maps)
    return maps


def _extras(canvas: Canvas, patient: Patient, pose: Pose, maps: PathMaps) -> None:
    """Lumbar spine, bowel gas, skin folds, shield, buttons and calcified vessels of the varied styles."""
    look = patient.look
    k = patient.hip_distance / 176.0
    ty = patient.pelvic_height
    for i in range(look.spine_levels):
        y = (-165 - 40 * (i + 1)) * ty * k
        x = pose.symphysis_shift * 0.05 * (i + 1)
        spine = Bone(canvas)
        spine.add(Ellipsoid((x, y), 25 * k, 16 * k, 18 * k), 1.6)
        for sgn in (-1.0, 1.0):
            spine.add(Ellipsoid((x + sgn * 15 * k, y - 4 * k), 5 * k, 7 * k, 9 * k), 1.5)
            spine.add(Capsule((x + sgn * 18 * k, y), (x + sgn * (42 + 4 * i) * k, y - 2 * k), 5 * k, 3 * k, 1.2), 1.2)
        spine.add(Ellipsoid((x, y + 6 * k), 5 * k, 9 * k, 6 * k), 1.2)
        spine.render(maps.cortical, maps.cancellous)
    for gx, gy, a, b, share in look.gas:
        accumulate(canvas, maps.soft, Ellipsoid((gx, gy), a, b, min(a, b) * 1.5), -share)
    np.maximum(maps.soft, 0.0, out=maps.soft)
    for x0, y0, x1, y1, r in look.folds:
        accumulate(canvas, maps.soft, Capsule((x0, y0), (x1, y1), r, r, 1.0), 1.0)
    if look.shield is not None:
        sx, sy, half = look.shield
        accumulate(canvas, maps.extra, Ellipsoid((sx, sy), half, 0.6 * half, 0.4), 150.0)
    for bx, by, r in look.buttons:
        accumulate(canvas, maps.extra, Ellipsoid((bx, by), r, r, 1.0), 30.0)
    for side in look.vessels:
        sgn = SIDE_SIGN[side]
        x = sgn * (patient.hip_distance / 2 - patient.head_radius * 1.4)
        for j in range(8):
            y0 = -40.0 + 30 * j
            p0, p1 = (x + sgn * 2.0 * j, y0), (x + sgn * 2.0 * (j + 0.6), y0 + 18)
            accumulate(canvas, maps.cortical, Capsule(p0, p1, 1.3, 1.3, 1.0), 1.0)


def _soft_tissue(canvas: Canvas, patient: Patient, pose: Pose, step: int) -> Array:
    w = canvas.full(step)
    t = np.zeros(w.x.shape, np.float32)
    depth = patient.trunk_half_depth / patient.trunk_half_width
    perineum = 3.2 * patient.head_radius * patient.pelvic_height
    trunk = Capsule(
        (0.0, -2000.0),
        (0.0, perineum - patient.trunk_half_width * 0.35),
        patient.trunk_half_width,
        patient.trunk_half_width,
        depth,
    )
    np.maximum(t, trunk.path(w.x, w.y), out=t)
    for side in (Side.R, Side.L):
        sgn = SIDE_SIGN[side]
        d = _shaft_direction(pose, sgn)
        start = (sgn * patient.hip_distance * 0.45, -30.0)
        thigh = Capsule(
            start,
            _add(start, (d, 2000.0)),
            patient.thigh_radius,
            patient.thigh_radius * 0.9,
            patient.trunk_half_depth / patient.thigh_radius * 0.8,
        )
        np.maximum(t, thigh.path(w.x, w.y), out=t)
    full = Image.fromarray(t, mode="F").resize((canvas.cols, canvas.rows), Image.Resampling.BILINEAR)
    return np.array(full, dtype=np.float32)


def _shaft_direction(pose: Pose, sgn: float) -> Point:
    """Unit vector along the femoral shaft, pointing distally."""
    if pose.view is View.FL:
        a = math.radians(pose.abduction_deg)
        return (sgn * math.sin(a), math.cos(a))
    a = math.radians(pose.adduction_deg)
    return (-sgn * math.sin(a), math.cos(a))


def _sacrum(canvas: Canvas, patient: Patient, pose: Pose, maps: PathMaps) -> None:
    k = patient.hip_distance / 176.0
    ty = patient.pelvic_height
    bone = Bone(canvas)
    bone.add(Ellipsoid((pose.symphysis_shift * 0.3, -100 * ty * k), 40 * k, 44 * ty * k, 15 * k), 1.4)
    bone.add(Capsule((0.0, -70 * ty * k), (pose.symphysis_shift * 0.1, -25 * ty * k), 20 * k, 7 * k, 0.7), 1.3)
    bone.add(Ellipsoid((0.0, -165 * ty * k), 26 * k, 15 * k, 22 * k), 1.5)
    bone.render(maps.cortical, maps.cancellous)
    for i in range(4):
        for sgn in (-1.0, 1.0):
            hole = Ellipsoid((sgn * 21 * k * (1 - 0.12 * i), (-128 + 19 * i) * ty * k), 4.5 * k, 3.5 * k, 12 * k)
            accumulate(canvas, maps.extra, hole, -0.8)


def _hip(canvas: Canvas, patient: Patient, pose: Pose, side: Side, lesion: HeadLesion, maps: PathMaps) -> None:
    sgn = SIDE_SIGN[side]
    r = patient.head_radius
    k = patient.hip_distance / 176.0
    ty = patient.pelvic_height
    med, lat, up = (-sgn, 0.0), (sgn, 0.0), (0.0, -1.0)
    acetabulum = (sgn * patient.hip_distance / 2, 0.0)
    dome = dome_direction(side)
    socket = r + patient.joint_gap
    head_center = _add(acetabulum, (dome, patient.joint_gap * (1.0 - joint_gap_factor(lesion))))
    head = HeadFrame(head_center, r, dome)
    fx: LesionEffects = effects(lesion, head)
    implant = patient.implant(side)
    replaced = implant.kind == "arthroplasty"
    symphysis = (pose.symphysis_shift + sgn * 13 * k, 30 * ty * k)
    tuberosity = _add(acetabulum, (med, 0.6 * r), (up, -2.8 * r * ty))

    # hemipelvis, then the socket carved out of it
    pelvis = Bone(canvas)
    pelvis.add(Ellipsoid(_add(acetabulum, (med, 0.3 * r), (up, 0.75 * r * ty)), 1.35 * r, 1.3 * r, 0.95 * r), 1.5)
    pelvis.add(
        Ellipsoid(_add(acetabulum, (med, 0.35 * r), (up, 2.0 * r * ty)), 1.25 * r, 1.7 * r * ty, 0.55 * r, sgn * 20),
        1.5,
    )
    pelvis.add(
        Ellipsoid((sgn * (patient.hip_distance / 2 + 4 * k), -100 * ty * k), 70 * k, 58 * ty * k, 7.5, sgn * -18), 1.8
    )
    anatomic = patient.look.anatomic
    bend = 0.0 if anatomic is None else anatomic.ramus_bend * r
    rami = [  # superior pubic ramus, inferior ramus, ischium: straight bars, or bowed round an oval foramen
        (_add(acetabulum, (med, 0.85 * r), (up, -0.3 * r * ty)), symphysis, (up, bend), 0.42 * r, 0.34 * r, 1.6),
        (_add(symphysis, (up, -26 * ty * k)), tuberosity, (up, -bend), 0.3 * r, 0.3 * r, 1.6),
        (_add(acetabulum, (med, 0.15 * r), (up, -0.9 * r * ty)), tuberosity, (lat, bend), 0.62 * r, 0.5 * r, 1.8),
    ]
    for p0, p1, bow, r0, r1, cortex in rami:
        for segment in _bowed(p0, p1, bow, r0, r1):
            pelvis.add(segment, cortex)
    pelvis.add(Ellipsoid(_add(symphysis, (up, -12 * ty * k)), 11 * k, 20 * ty * k, 13 * k), 1.5)
    pelvis.add(Ellipsoid(tuberosity, 0.55 * r, 0.65 * r, 0.6 * r), 1.5)
    pelvis.render(maps.cortical, maps.cancellous)
    cup = Ellipsoid(acetabulum, socket, socket, socket, modulation=fx.socket_modulation)
    w = canvas.window(*cup.bbox())
    if w is not None:
        carved = maps.cancellous[w.rows, w.cols]
        np.maximum(carved - cup.path(w.x, w.y), 0.0, out=carved)
    if anatomic is not None:
        _acetabular_walls(canvas, acetabulum, socket, sgn, anatomic, maps)
        _iliac_crest(canvas, patient, sgn, anatomic, maps)
    rim = 1.6 + fx.socket_cortex_extra_mm
    roof = HeadFrame(acetabulum, socket, dome)
    # the roof (sourcil): only rays grazing the socket's shell cross enough bone to show
    cover = math.radians(80 * (1.0 + patient.look.socket_depth))
    accumulate(canvas, maps.cortical, DomeSector(cup.shrunk(-rim), roof, cover, socket - 0.5), 1.0)
    accumulate(canvas, maps.cortical, DomeSector(cup, roof, cover, socket - 0.5), -1.0)
    for osteophyte in fx.osteophytes:
        accumulate(canvas, maps.cortical, osteophyte, 1.0)
    # pelvic brim (iliopectineal line) and teardrop: thin cortical lines
    brim = [
        (sgn * 40 * k, -80 * ty * k),
        _add(acetabulum, (med, 1.0 * r), (up, 1.5 * r * ty)),
        _add(acetabulum, (med, 1.2 * r), (up, 0.2 * r)),
        _add(symphysis, (up, 4.0)),
    ]
    for p0, p1 in itertools.pairwise(brim):
        accumulate(canvas, maps.cortical, Capsule(p0, p1, 2.2, 2.2, 1.6))
    accumulate(
        canvas,
        maps.cortical,
        Capsule(
            _add(acetabulum, (med, 1.15 * r), (up, 0.2 * r)),
            _add(acetabulum, (med, 1.05 * r), (up, -0.55 * r)),
            1.6,
            1.6,
            2.0,
        ),
    )

    # proximal femur
    shaft = _shaft_direction(pose, sgn)
    to_head = _neck_direction(shaft, pose.neck_shaft_projected_deg, sgn)
    junction = _add(head_center, (to_head, -patient.neck_length * pose.neck_projection))
    femur = Bone(canvas)
    aspect = patient.look.head_aspect
    head_solid = Ellipsoid(head_center, r, r * aspect, r, modulation=fx.head_modulation, cut=fx.head_cut)
    if replaced:  # head and most of the neck resected
        femur.add(Capsule(_add(head_center, (to_head, -0.75 * patient.neck_length)), junction, 0.7 * r, 0.82 * r), 1.6)
    else:
        femur.add(head_solid, patient.look.head_cortex)
        if anatomic is None:
            femur.add(Capsule(head_center, junction, 0.62 * r, 0.82 * r, 0.95), 1.6)
        else:  # a waist between the head and the flare to the trochanters
            waist = _add(head_center, (to_head, -0.45 * patient.neck_length * pose.neck_projection))
            femur.add(Capsule(head_center, waist, 0.75 * r, anatomic.neck_waist * r, 0.95), 1.6)
            femur.add(Capsule(waist, junction, anatomic.neck_waist * r, 0.9 * r, 0.95), 1.6)
    femur.add(
        Capsule(
            _add(junction, (shaft, -0.3 * r)),
            _add(junction, (shaft, 600.0)),
            patient.shaft_radius,
            patient.shaft_radius,
        ),
        patient.shaft_cortex,
    )
    # the metaphysis; the anatomic one is narrower and lower, so that the neck shows between head and trochanters
    flare = (-0.4, 0.95) if anatomic is None else (0.1, 0.75)
    femur.add(
        Capsule(
            _add(junction, (shaft, flare[0] * r), (lat, 0.3 * r)),
            _add(junction, (shaft, 1.2 * r)),
            flare[1] * r,
            0.72 * r,
            0.9,
        ),
        1.3,
    )
    angle = math.degrees(math.atan2(shaft[1], shaft[0]))
    greater = (0.3 if pose.view is View.FL else 0.7) * r
    lesser = _add(junction, (shaft, 1.5 * r), (med, (0.45 + 0.45 * pose.lesser_trochanter) * r))
    if anatomic is None:
        femur.add(Ellipsoid(_add(junction, (lat, greater), (shaft, -0.55 * r)), 0.7 * r, 1.0 * r, 0.85 * r, angle), 1.2)
    else:  # a ridge on the lateral metaphysis, its tip near the level of the neck's upper border
        top = _add(junction, (lat, greater + 0.1 * r), (shaft, -1.0 * r))
        femur.add(Capsule(top, _add(junction, (lat, 0.8 * greater), (shaft, 0.7 * r)), 0.42 * r, 0.55 * r, 1.4), 1.2)
    femur.add(Ellipsoid(lesser, 0.5 * r, 0.33 * r, 0.4 * r, angle), 1.0)
    femur.render(maps.cortical, maps.cancellous)
    if anatomic is not None:  # intertrochanteric line
        line = Capsule(_add(junction, (lat, 0.7 * greater), (shaft, 0.2 * r)), lesser, 1.4, 1.4, 2.0)
        accumulate(canvas, maps.cortical, line, 0.6)
    if replaced:
        _arthroplasty(canvas, implant, head_center, r, to_head, junction, shaft, roof, maps)
        outline = _outline(canvas, head_solid)
        maps.head_outlines[side] = "prosthesis" if isinstance(outline, tuple) else outline
        return

    # normal trabecular architecture (every head), then the lesion
    accumulate(
        canvas,
        maps.extra,
        Capsule(head.at(0.55, 0.1), _add(junction, (med, 0.45 * r), (shaft, 0.6 * r)), 0.2 * r, 0.28 * r, 0.9),
        0.22,
    )
    accumulate(canvas, maps.extra, Ellipsoid(_add(junction, (shaft, 0.1 * r)), 0.3 * r, 0.22 * r, 0.5 * r, angle), -0.3)
    island = patient.bone_island[side]
    if island is not None:
        accumulate(canvas, maps.extra, Ellipsoid(head.at(island[0], island[1]), island[2], island[2], island[2]), 1.2)
    for solid, dmu in fx.density:
        accumulate(canvas, maps.extra, solid, dmu)
    if implant.kind != "none":
        _fixation(canvas, implant, head, to_head, junction, shaft, lat, patient, maps)
    maps.head_outlines[side] = _outline(canvas, head_solid)


def _bowed(p0: Point, p1: Point, bow: tuple[Point, float], r0: float, r1: float, pieces: int = 6) -> list[Capsule]:
    """A tube from ``p0`` to ``p1`` whose middle is pushed ``bow`` off the straight line (a quadratic curve)."""
    if bow[1] == 0.0:
        return [Capsule(p0, p1, r0, r1)]
    mid = _add(((p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2), (bow[0], 2.0 * bow[1]))
    ts = np.linspace(0.0, 1.0, pieces + 1)
    pts = [
        (
            (1 - t) ** 2 * p0[0] + 2 * t * (1 - t) * mid[0] + t * t * p1[0],
            (1 - t) ** 2 * p0[1] + 2 * t * (1 - t) * mid[1] + t * t * p1[1],
        )
        for t in ts
    ]
    radii = r0 + (r1 - r0) * ts
    return [Capsule(pts[i], pts[i + 1], float(radii[i]), float(radii[i + 1])) for i in range(pieces)]


def _acetabular_walls(
    canvas: Canvas, acetabulum: Point, socket: float, sgn: float, anatomic: Anatomic, maps: PathMaps
) -> None:
    """The anterior and posterior walls of the socket: each a half of a spherical shell seen through the head,
    ending in a rim that crosses it (the posterior further laterally)."""
    outer = socket + anatomic.wall_mm
    for normal, reach in (
        (_unit(sgn * 0.8, 0.6), anatomic.posterior_wall),
        (_unit(sgn * 0.45, 0.9), anatomic.anterior_wall),
    ):
        cut = (normal[0], normal[1], reach * socket)
        accumulate(canvas, maps.cortical, Ellipsoid(acetabulum, outer, outer, outer, cut=cut), 0.5)
        accumulate(canvas, maps.cortical, Ellipsoid(acetabulum, socket, socket, socket, cut=cut), -0.5)


def _iliac_crest(canvas: Canvas, patient: Patient, sgn: float, anatomic: Anatomic, maps: PathMaps) -> None:
    """A thick rim along the upper border of the iliac wing (the wing drawn by :func:`_hip`)."""
    k = patient.hip_distance / 176.0
    cx, cy = sgn * (patient.hip_distance / 2 + 4 * k), -100 * patient.pelvic_height * k
    a, b, theta = 70 * k, 58 * patient.pelvic_height * k, math.radians(sgn * -18)
    ts = np.linspace(math.pi + 0.25, 2 * math.pi - 0.25, 16)
    pts = [
        (
            cx + a * math.cos(t) * math.cos(theta) - b * math.sin(t) * math.sin(theta),
            cy + a * math.cos(t) * math.sin(theta) + b * math.sin(t) * math.cos(theta),
        )
        for t in ts
    ]
    crest = Bone(canvas)
    for p0, p1 in itertools.pairwise(pts):
        crest.add(Capsule(p0, p1, anatomic.crest_mm, anatomic.crest_mm, 1.2), 1.5)
    crest.render(maps.cortical, maps.cancellous)


def _arthroplasty(
    canvas: Canvas,
    implant: Implant,
    center: Point,
    r: float,
    to_head: Point,
    junction: Point,
    shaft: Point,
    roof: HeadFrame,
    maps: PathMaps,
) -> None:
    """A metal prosthetic head on a stem down the femoral canal, and an acetabular cup."""
    ball = 0.62 * r
    accumulate(canvas, maps.extra, Ellipsoid(center, ball, ball, ball), implant.metal)
    neck = _add(center, (to_head, -0.9 * r))
    accumulate(canvas, maps.extra, Capsule(center, neck, 0.3 * r, 0.32 * r), implant.metal)
    accumulate(canvas, maps.extra, Capsule(neck, _add(junction, (shaft, 130.0)), 0.42 * r, 0.2 * r, 0.8), implant.metal)
    if implant.cup:
        shell = Ellipsoid(roof.center, r + 1.0, r + 1.0, r + 1.0)
        accumulate(canvas, maps.extra, DomeSector(shell, roof, math.radians(95), r - 3.0), implant.metal * 0.8)
        accumulate(
            canvas, maps.extra, DomeSector(shell.shrunk(3.0), roof, math.radians(95), r - 3.0), -implant.metal * 0.8
        )


def _fixation(
    canvas: Canvas,
    implant: Implant,
    head: HeadFrame,
    to_head: Point,
    junction: Point,
    shaft: Point,
    lat: Point,
    patient: Patient,
    maps: PathMaps,
) -> None:
    """Screws through the neck into the head, with an intramedullary nail or a lateral plate."""
    r = head.radius
    across = (-to_head[1], to_head[0])
    radius = 3.2 if implant.kind == "screws" else 5.5
    offsets = np.linspace(-1, 1, implant.screws) * implant.spread * r if implant.screws > 1 else [0.0]
    for off in offsets:
        tip = _add(head.center, (to_head, 0.45 * r), (across, float(off)))
        entry = _add(tip, (to_head, -(patient.neck_length + 1.6 * r)))
        accumulate(canvas, maps.extra, Capsule(entry, tip, radius, radius * 0.85), implant.metal)
    if implant.kind == "nail":
        top = _add(junction, (shaft, -1.6 * r), (lat, 0.3 * r))
        accumulate(canvas, maps.extra, Capsule(top, _add(junction, (shaft, 260.0)), 5.5, 4.5), implant.metal)
    elif implant.kind == "plate":
        side = _add(junction, (lat, patient.shaft_radius + 2.0), (shaft, 0.6 * r))
        accumulate(canvas, maps.extra, Capsule(side, _add(side, (shaft, 150.0)), 3.0, 3.0, 4.0), implant.metal)
        for j in range(4):
            p = _add(side, (shaft, 25.0 + 33.0 * j))
            accumulate(
                canvas, maps.extra, Capsule(p, _add(p, (lat, -2.2 * patient.shaft_radius)), 2.2, 2.2), implant.metal
            )


def _neck_direction(shaft: Point, neck_shaft_deg: float, sgn: float) -> Point:
    """Direction from the neck's junction with the shaft axis to the head: medial and up."""
    for d in (neck_shaft_deg, -neck_shaft_deg):
        v = _rotate(shaft, d)
        if v[1] < 0 and v[0] * -sgn > 0:
            return v
    raise AssertionError("no medial, upward neck direction")


def _outline(canvas: Canvas, solid: Ellipsoid) -> tuple[float, float, float, float] | None | str:
    """Pixel box ``[x0, y0, x1, y1]`` of the solid's outline (pixel edges); None if outside the image,
    ``"partial"`` if the image edge cuts it."""
    lo, hi = solid.bbox()
    w = canvas.window((lo[0] - 5, lo[1] - 5), (hi[0] + 5, hi[1] + 5))
    if w is None:
        return None
    inside = solid.path(w.x, w.y) > 0
    if not inside.any():
        return None
    if inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any():
        return "partial"
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    r0, c0 = w.rows.start, w.cols.start
    return (c0 + cols[0] - 0.5, r0 + rows[0] - 0.5, c0 + cols[-1] + 0.5, r0 + rows[-1] + 0.5)
