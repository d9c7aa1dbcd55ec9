"""Ficat stages per femoral head: which stage, which notes, and what each note does to the anatomy.

Each note has exactly one rendering below, so the notes of a head list exactly the features drawn. A
continuous ``severity`` in [0, 1] runs each feature from subtle (contrast about the quantum noise of one
pixel) to obvious. The layout of each feature comes from its own generator seeded by the head's seed and
the note, so dropping one note leaves the others unchanged (the tests rely on that).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from avn_node.ground_truth import NOTE_STAGES, FicatStage, Note, Side
from avn_node.phantom.projection import Array, Ellipsoid, Point, Solid

PAPER_STAGE_MIX: dict[FicatStage, float] = {
    FicatStage.ABSENCE: 1025,
    FicatStage.II: 810,
    FicatStage.III: 1271,
    FicatStage.IV: 1983,
}
"""Femoral-head counts per stage in AVN-net's data set (seed 000)."""


class StageMixError(ValueError):
    """A stage mix and bilateral rate that no population can satisfy."""


@dataclass(frozen=True)
class HeadLesion:
    """What is wrong with one femoral head."""

    stage: FicatStage
    notes: tuple[Note, ...]
    severity: float
    seed: int
    families: bool = False
    """Draw each note's appearance from several families (the varied styles); False: the classic look."""

    def without(self, note: Note) -> HeadLesion:
        """The same head with one feature left out (for tests of what each note renders)."""
        return replace(self, notes=tuple(n for n in self.notes if n != note))

    def rng(self, note: Note) -> np.random.Generator:
        return np.random.default_rng([self.seed, list(Note).index(note)])

    def family(self, note: Note, weights: Sequence[float]) -> int:
        """Which appearance family ``note`` takes (0, the classic one, unless :attr:`families`)."""
        if not self.families:
            return 0
        g = np.random.default_rng([self.seed, list(Note).index(note), 99])
        return int(g.choice(len(weights), p=np.asarray(weights) / np.sum(weights)))


def normalise_mix(mix: dict[FicatStage, float]) -> dict[FicatStage, float]:
    total = sum(mix.values())
    if total <= 0 or any(v < 0 for v in mix.values()):
        raise StageMixError(f'Option "--stage-mix" needs non-negative weights with a positive sum, got {mix}.')
    return {s: mix.get(s, 0.0) / total for s in FicatStage}


def patient_avn_probability(mix: dict[FicatStage, float], bilateral_rate: float) -> float:
    """P(a patient has AVN) so that heads follow ``mix`` when AVN patients are bilateral at ``bilateral_rate``.

    Per head, P(AVN) = p (1 + b) / 2; a patient-level p above 1 is impossible.
    """
    head_avn = 1.0 - normalise_mix(mix)[FicatStage.ABSENCE]
    p = 2.0 * head_avn / (1.0 + bilateral_rate)
    if p > 1.0 + 1e-9:
        need = 2.0 * head_avn - 1.0
        raise StageMixError(
            f'Option "--bilateral-rate" {bilateral_rate:.2f} is too low for a stage mix with '
            f"{head_avn:.0%} AVN heads: use at least {need:.2f}."
        )
    return min(p, 1.0)


def sample_stages(
    rng: np.random.Generator, mix: dict[FicatStage, float], bilateral_rate: float
) -> dict[Side, FicatStage]:
    """Stages of both hips of one patient: AVN bilateral at ``bilateral_rate``, stages drawn per head."""
    p_avn = patient_avn_probability(mix, bilateral_rate)
    norm = normalise_mix(mix)
    avn_stages = [FicatStage.II, FicatStage.III, FicatStage.IV]
    weights = np.array([norm[s] for s in avn_stages])
    stages = {Side.L: FicatStage.ABSENCE, Side.R: FicatStage.ABSENCE}
    if weights.sum() > 0 and rng.random() < p_avn:
        affected = [Side.L, Side.R] if rng.random() < bilateral_rate else [(Side.L, Side.R)[rng.integers(2)]]
        for side in affected:
            stages[side] = avn_stages[rng.choice(3, p=weights / weights.sum())]
    return stages


def _pick(rng: np.random.Generator, probs: dict[Note, float], at_least_one: Sequence[Note]) -> list[Note]:
    chosen = [n for n, p in probs.items() if rng.random() < p]
    if at_least_one and not set(chosen) & set(at_least_one):
        chosen.append(at_least_one[rng.integers(len(at_least_one))])
    return chosen


def sample_lesion(rng: np.random.Generator, stage: FicatStage) -> HeadLesion:
    """Notes and severity of a head with ``stage``; every AVN stage shows at least one of its signs."""
    n = Note
    notes: list[Note] = []
    if stage is FicatStage.II:
        notes = _pick(rng, {n.SCLEROSIS: 0.75, n.CYSTS: 0.5}, [n.SCLEROSIS, n.CYSTS])
        notes += _pick(rng, {n.CRESCENT_SIGN: 0.3}, [])
    elif stage is FicatStage.III:
        notes = _pick(
            rng, {n.SUBCHONDRAL_COLLAPSE: 0.85, n.HEAD_DEFORMATION: 0.55}, [n.SUBCHONDRAL_COLLAPSE, n.HEAD_DEFORMATION]
        )
        notes += _pick(rng, {n.CRESCENT_SIGN: 0.5, n.SCLEROSIS: 0.6, n.CYSTS: 0.35}, [])
    elif stage is FicatStage.IV:
        notes = _pick(
            rng, {n.SUBCHONDRAL_COLLAPSE: 0.8, n.HEAD_DEFORMATION: 0.75}, [n.SUBCHONDRAL_COLLAPSE, n.HEAD_DEFORMATION]
        )
        notes += _pick(
            rng,
            {n.ACETABULAR_DEFORMATION: 0.8, n.JOINT_SPACE_NARROWING: 0.8},
            [n.ACETABULAR_DEFORMATION, n.JOINT_SPACE_NARROWING],
        )
        notes += _pick(rng, {n.SCLEROSIS: 0.6, n.CYSTS: 0.35}, [])
    assert all(stage in NOTE_STAGES[x] for x in notes)
    severity = float(rng.beta(1.3, 1.3)) if stage is not FicatStage.ABSENCE else 0.0
    ordered = tuple(x for x in Note if x in notes)
    return HeadLesion(stage, ordered, severity, int(rng.integers(2**31)))


@dataclass(frozen=True)
class HeadFrame:
    """Where a femoral head sits: centre, radius, dome direction (unit, towards the weight-bearing roof)."""

    center: Point
    radius: float
    dome: Point

    def at(self, along_dome: float, across: float) -> Point:
        """A point ``along_dome``·R towards the dome and ``across``·R perpendicular to it."""
        wx, wy = self.dome
        r = self.radius
        return (
            self.center[0] + r * (along_dome * wx - across * wy),
            self.center[1] + r * (along_dome * wy + across * wx),
        )


@dataclass
class LesionEffects:
    """A lesion translated into changes of the anatomy and extra attenuation."""

    head_modulation: Callable[[Array], Array] | None = None
    head_cut: tuple[float, float, float] | None = None
    socket_cortex_extra_mm: float = 0.0
    socket_modulation: Callable[[Array], Array] | None = None
    osteophytes: list[Solid] = field(default_factory=list)
    density: list[tuple[Solid, float]] = field(default_factory=list)
    """(solid, Δμ in 1/mm × μ_cancellous): attenuation added inside the head."""
    lucency_sector: tuple[float, float] | None = None


def _ramp(severity: float, lo: float, hi: float) -> float:
    return lo + (hi - lo) * severity


def effects(lesion: HeadLesion, head: HeadFrame) -> LesionEffects:
    """The anatomy changes and density changes of ``lesion`` for a head at ``head``."""
    fx = LesionEffects()
    s, r = lesion.severity, head.radius
    for note in lesion.notes:
        g = lesion.rng(note)
        if note is Note.SCLEROSIS:
            dmu = _ramp(s, 0.12, 0.75)
            if lesion.family(note, [2, 1]) == 1:  # diffuse: a hazy density over the weight-bearing segment
                c = head.at(g.uniform(0.2, 0.45), g.uniform(-0.2, 0.2))
                a = r * g.uniform(0.5, 0.75)
                fx.density.append((Ellipsoid(c, a, a * g.uniform(0.6, 0.9), a * 0.8, g.uniform(0, 180)), dmu * 0.6))
            elif g.random() < 0.6:  # patchy
                for _ in range(int(g.integers(3, 8))):
                    c = head.at(g.uniform(-0.1, 0.7), g.uniform(-0.55, 0.55))
                    a = r * g.uniform(0.12, 0.28)
                    fx.density.append((Ellipsoid(c, a, a * g.uniform(0.6, 1.0), a, g.uniform(0, 180)), dmu))
            else:  # banded: a dense rim around the necrotic segment
                c = head.at(g.uniform(0.25, 0.45), g.uniform(-0.15, 0.15))
                a = r * g.uniform(0.45, 0.6)
                outer = Ellipsoid(c, a, a * 0.8, a * 0.8, g.uniform(0, 180))
                fx.density.append((outer, dmu))
                fx.density.append((outer.shrunk(r * g.uniform(0.1, 0.18)), -dmu))
        elif note is Note.CYSTS:
            fill = -_ramp(s, 0.2, 1.0)
            for _ in range(int(g.integers(1, 5))):
                c = head.at(g.uniform(-0.2, 0.6), g.uniform(-0.5, 0.5))
                a = r * g.uniform(0.08, 0.2)
                cyst = Ellipsoid(c, a, a * g.uniform(0.6, 1.0), a * 0.9, g.uniform(0, 180))
                fx.density.append((cyst, fill))
                if lesion.family(note, [1, 1]) == 1:  # a sclerotic rim around each cyst
                    fx.density.append((cyst.shrunk(-r * 0.04), -fill * 0.6))
                    fx.density.append((cyst, fill * 0.6))
        elif note is Note.CRESCENT_SIGN:
            depth = r * g.uniform(0.04, 0.08)
            width = _ramp(s, 0.5, 1.8) * (1.0, 0.5, 2.0)[lesion.family(note, [1, 1, 1])]  # classic, thin, broad
            shell = Ellipsoid(head.center, r - depth, r - depth, r - depth)
            half = math.radians(g.uniform(30, 60))
            fx.density.append((DomeSector(shell, head, half), -_ramp(s, 0.3, 1.0)))
            fx.density.append((DomeSector(shell.shrunk(width), head, half), _ramp(s, 0.3, 1.0)))
        elif note is Note.SUBCHONDRAL_COLLAPSE:
            flat = _ramp(s, 0.8, 5.5)
            tilt = math.radians(g.uniform(-20, 20))
            if lesion.family(note, [1, 1]) == 1:  # a step: a steep plane off the dome's centre
                tilt = math.copysign(math.radians(g.uniform(25, 40)), tilt)
                flat *= 0.7
            wx, wy = head.dome
            nx, ny = wx * math.cos(tilt) - wy * math.sin(tilt), wx * math.sin(tilt) + wy * math.cos(tilt)
            fx.head_cut = (nx, ny, r - flat)
            # trabeculae compacted under the collapsed segment
            c = (head.center[0] + nx * (r - flat - 2.0), head.center[1] + ny * (r - flat - 2.0))
            fx.density.append(
                (Ellipsoid(c, r * 0.5, 1.5, r * 0.45, math.degrees(math.atan2(ny, nx)) + 90), _ramp(s, 0.2, 0.6))
            )
        elif note is Note.HEAD_DEFORMATION:
            eps = _ramp(s, 0.035, 0.12)
            p2, p3, w2 = g.uniform(0, 2 * math.pi), g.uniform(0, 2 * math.pi), g.uniform(0.3, 0.7)
            fx.head_modulation = _harmonics(eps, w2, p2, p3)
        elif note is Note.ACETABULAR_DEFORMATION:
            fx.socket_cortex_extra_mm = _ramp(s, 0.8, 4.5)
            fx.socket_modulation = _harmonics(_ramp(s, 0.02, 0.07), 0.5, g.uniform(0, 6.3), g.uniform(0, 6.3))
            for _ in range(int(g.integers(1, 4))):
                c = head.at(g.uniform(0.7, 1.1), g.choice([-1.0, 1.0]) * g.uniform(0.75, 1.05))
                a = _ramp(s, 1.5, 4.5) * g.uniform(0.7, 1.2)
                fx.osteophytes.append(Ellipsoid(c, a, a * 0.6, a * 0.8, g.uniform(0, 180)))
    return fx


def joint_gap_factor(lesion: HeadLesion) -> float:
    """Remaining fraction of the normal joint space (1 without joint-space narrowing)."""
    return _ramp(lesion.severity, 0.55, 0.12) if Note.JOINT_SPACE_NARROWING in lesion.notes else 1.0


def _harmonics(eps: float, w2: float, p2: float, p3: float) -> Callable[[Array], Array]:
    """A radius scale 1 + ε(w₂cos 2θ + w₃cos 3θ), the outline of a deformed head or socket."""

    def scale(theta: Array) -> Array:
        return 1.0 + eps * (w2 * np.cos(2 * theta + p2) + (1 - w2) * np.cos(3 * theta + p3))

    return scale


@dataclass(frozen=True)
class DomeSector(Solid):
    """A solid restricted to the directions within ``half`` radians of the dome, beyond ``min_radius`` mm."""

    solid: Ellipsoid
    head: HeadFrame
    half: float
    min_radius: float = 0.0

    def bbox(self) -> tuple[Point, Point]:
        return self.solid.bbox()

    def path(self, x: Array, y: Array) -> Array:
        dx, dy = x - np.float32(self.head.center[0]), y - np.float32(self.head.center[1])
        dist = np.sqrt(dx * dx + dy * dy)
        cosang = (dx * np.float32(self.head.dome[0]) + dy * np.float32(self.head.dome[1])) / (dist + np.float32(1e-6))
        keep = (cosang > np.float32(math.cos(self.half))) & (dist >= np.float32(self.min_radius))
        return self.solid.path(x, y) * keep

    def shrunk(self, k: float) -> DomeSector:
        return DomeSector(self.solid.shrunk(k), self.head, self.half, self.min_radius)
