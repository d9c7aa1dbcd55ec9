"""Projected path lengths of simple solids on a detector grid.

World coordinates are millimetres in the detector plane: x towards the patient's left, y towards the feet,
origin between the hip centres. A :class:`Canvas` maps them to pixel columns/rows (with rotation and
mirroring); each solid returns the length (mm) a ray travels through it, evaluated only on the pixels its
footprint covers. Bones are cortical shells around cancellous cores: a :class:`Bone` keeps the union of
its elements as the maximum path of the outer and inner surfaces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Array = np.ndarray
Point = tuple[float, float]


@dataclass(frozen=True)
class Window:
    """A rectangle of the pixel grid and the world coordinates of its pixel centres."""

    rows: slice
    cols: slice
    x: Array
    y: Array


class Canvas:
    """Pixel grid of the detector with its world ↔ pixel mapping."""

    def __init__(
        self,
        rows: int,
        cols: int,
        spacing_mm: float,
        center_world: Point,
        rotation_deg: float = 0.0,
        mirrored: bool = False,
    ) -> None:
        self.rows, self.cols, self.spacing_mm = rows, cols, spacing_mm
        theta = math.radians(rotation_deg)
        m = -1.0 if mirrored else 1.0
        c, s = math.cos(theta), math.sin(theta)
        # pixel = A @ (world - center_world) + center_px
        self._a = np.array([[c * m, -s], [s * m, c]]) / spacing_mm
        self._ainv = np.linalg.inv(self._a)
        self._c_world = np.asarray(center_world, dtype=float)
        self._c_px = np.array([(cols - 1) / 2.0, (rows - 1) / 2.0])

    def to_pixel(self, pts: Array) -> Array:
        """World points (..., 2) → pixel (column, row)."""
        return (np.asarray(pts, float) - self._c_world) @ self._a.T + self._c_px

    def to_world(self, pts: Array) -> Array:
        """Pixel (column, row) points (..., 2) → world."""
        return (np.asarray(pts, float) - self._c_px) @ self._ainv.T + self._c_world

    def window(self, lo: Point, hi: Point, step: int = 1) -> Window | None:
        """Pixels whose centres may fall in the world box ``lo``–``hi`` (``step`` > 1 subsamples)."""
        corners = np.array([[lo[0], lo[1]], [hi[0], lo[1]], [lo[0], hi[1]], [hi[0], hi[1]]])
        px = self.to_pixel(corners)
        c0 = max(int(math.floor(px[:, 0].min())), 0)
        c1 = min(int(math.ceil(px[:, 0].max())) + 1, self.cols)
        r0 = max(int(math.floor(px[:, 1].min())), 0)
        r1 = min(int(math.ceil(px[:, 1].max())) + 1, self.rows)
        if c0 >= c1 or r0 >= r1:
            return None
        cc = np.arange(c0, c1, step, dtype=np.float32)[None, :] - np.float32(self._c_px[0])
        rr = np.arange(r0, r1, step, dtype=np.float32)[:, None] - np.float32(self._c_px[1])
        ai = self._ainv.astype(np.float32)
        x = ai[0, 0] * cc + ai[0, 1] * rr + np.float32(self._c_world[0])
        y = ai[1, 0] * cc + ai[1, 1] * rr + np.float32(self._c_world[1])
        return Window(slice(r0, r1, step), slice(c0, c1, step), x, y)

    def full(self, step: int) -> Window:
        """The whole grid, subsampled by ``step``."""
        corners = self.to_world(np.array([[0, 0], [self.cols, 0], [0, self.rows], [self.cols, self.rows]]))
        w = self.window(tuple(corners.min(0)), tuple(corners.max(0)), step)
        assert w is not None
        return w


class Solid:
    """A convex-ish solid: its world bounding box and its path length on a window."""

    def bbox(self) -> tuple[Point, Point]:
        raise NotImplementedError

    def path(self, x: Array, y: Array) -> Array:
        raise NotImplementedError

    def shrunk(self, k: float) -> Solid:
        """The same solid with its surface moved ``k`` mm inwards (the cancellous core)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Ellipsoid(Solid):
    """Ellipsoid with in-plane semi-axes ``a`` (along ``angle_deg``) and ``b``, depth semi-axis ``c``.

    ``modulation`` scales the in-plane radius by direction (a deformed head); ``cut`` = (nx, ny, d)
    removes everything beyond the plane ``n·(p - center) = d`` perpendicular to the detector (a flattened
    dome).
    """

    center: Point
    a: float
    b: float
    c: float
    angle_deg: float = 0.0
    modulation: Callable[[Array], Array] | None = None
    cut: tuple[float, float, float] | None = None

    def bbox(self) -> tuple[Point, Point]:
        r = max(self.a, self.b) * (1.25 if self.modulation else 1.0)
        return (self.center[0] - r, self.center[1] - r), (self.center[0] + r, self.center[1] + r)

    def path(self, x: Array, y: Array) -> Array:
        dx, dy = x - np.float32(self.center[0]), y - np.float32(self.center[1])
        t = math.radians(self.angle_deg)
        ct, st = np.float32(math.cos(t)), np.float32(math.sin(t))
        u, v = dx * ct + dy * st, -dx * st + dy * ct
        q = (u / np.float32(self.a)) ** 2 + (v / np.float32(self.b)) ** 2
        if self.modulation is not None:
            q /= self.modulation(np.arctan2(dy, dx)).astype(np.float32) ** 2
        out = np.float32(2.0 * self.c) * np.sqrt(np.maximum(np.float32(1.0) - q, np.float32(0.0)))
        if self.cut is not None:
            nx, ny, d = self.cut
            out[dx * np.float32(nx) + dy * np.float32(ny) > np.float32(d)] = 0.0
        return out

    def shrunk(self, k: float) -> Ellipsoid:
        cut = None if self.cut is None else (self.cut[0], self.cut[1], self.cut[2] - k)
        return Ellipsoid(
            self.center,
            max(self.a - k, 0.1),
            max(self.b - k, 0.1),
            max(self.c - k, 0.1),
            self.angle_deg,
            self.modulation,
            cut,
        )


@dataclass(frozen=True)
class Capsule(Solid):
    """A tube from ``p0`` to ``p1`` with rounded ends, radius tapering ``r0`` → ``r1``.

    The cross-section is an ellipse: ``r`` in the detector plane, ``depth * r`` along the beam.
    """

    p0: Point
    p1: Point
    r0: float
    r1: float
    depth: float = 1.0

    def bbox(self) -> tuple[Point, Point]:
        r = max(self.r0, self.r1)
        return (
            (min(self.p0[0], self.p1[0]) - r, min(self.p0[1], self.p1[1]) - r),
            (max(self.p0[0], self.p1[0]) + r, max(self.p0[1], self.p1[1]) + r),
        )

    def path(self, x: Array, y: Array) -> Array:
        ax, ay = self.p0
        ux, uy = self.p1[0] - ax, self.p1[1] - ay
        ll = ux * ux + uy * uy
        dx, dy = x - np.float32(ax), y - np.float32(ay)
        s = np.clip((dx * np.float32(ux) + dy * np.float32(uy)) / np.float32(ll), 0.0, 1.0)
        ex, ey = dx - s * np.float32(ux), dy - s * np.float32(uy)
        r = np.float32(self.r0) + s * np.float32(self.r1 - self.r0)
        q = (ex * ex + ey * ey) / (r * r)
        return np.float32(2.0 * self.depth) * r * np.sqrt(np.maximum(np.float32(1.0) - q, np.float32(0.0)))

    def shrunk(self, k: float) -> Capsule:
        r0, r1 = max(self.r0 - k, 0.1), max(self.r1 - k, 0.1)
        # keep the outer depth minus the shell thickness along the beam as well
        depth = max(self.depth * max(self.r0, self.r1) - k, 0.1) / max(r0, r1)
        return Capsule(self.p0, self.p1, r0, r1, depth)


def accumulate(canvas: Canvas, out: Array, solid: Solid, weight: float = 1.0) -> None:
    """Add ``weight`` × the path through ``solid`` into ``out``."""
    w = canvas.window(*solid.bbox())
    if w is not None:
        out[w.rows, w.cols] += np.float32(weight) * solid.path(w.x, w.y)


class Bone:
    """Union of solids with a cortical shell ``cortex_mm`` thick (per element) around cancellous bone."""

    def __init__(self, canvas: Canvas) -> None:
        self.canvas = canvas
        self._elements: list[tuple[Solid, float]] = []

    def add(self, solid: Solid, cortex_mm: float) -> None:
        self._elements.append((solid, cortex_mm))

    def render(self, cortical: Array, cancellous: Array) -> None:
        """Add this bone's cortical and cancellous path lengths into the two maps."""
        boxes = [s.bbox() for s, _ in self._elements]
        lo = (min(b[0][0] for b in boxes), min(b[0][1] for b in boxes))
        hi = (max(b[1][0] for b in boxes), max(b[1][1] for b in boxes))
        w = self.canvas.window(lo, hi)
        if w is None:
            return
        outer = np.zeros((w.y.shape[0], w.x.shape[1]), np.float32)
        inner = np.zeros_like(outer)
        r_base, c_base = w.rows.start, w.cols.start
        for solid, k in self._elements:
            sw = self.canvas.window(*solid.bbox())
            if sw is None:
                continue
            rs = slice(sw.rows.start - r_base, sw.rows.stop - r_base)
            cs = slice(sw.cols.start - c_base, sw.cols.stop - c_base)
            np.maximum(outer[rs, cs], solid.path(sw.x, sw.y), out=outer[rs, cs])
            np.maximum(inner[rs, cs], solid.shrunk(k).path(sw.x, sw.y), out=inner[rs, cs])
        cortical[w.rows, w.cols] += outer - inner
        cancellous[w.rows, w.cols] += inner
