"""Training augmentations that keep the networks from learning one renderer's look.

Small composable callables in the style of torchvision's ``references/detection/transforms.py``. Each
photometric transform takes a batch of grey images ``(N, 1, H, W)`` in [0, 1] and a NumPy
:class:`~numpy.random.Generator`, draws its parameters per image from that generator only (noise through a
torch generator seeded from it), and returns a batch of the same shape in [0, 1]. The training engine passes
the generator it seeds per epoch, so a resumed run repeats exactly what an uninterrupted one did.

The default :func:`photometric` chain follows an acquisition: resolution (down-and-up sampling), quantum
noise, the vendor's processing (blur or unsharp-mask sharpening, dynamic-range compression, tone curve,
gamma), storage (JPEG). No inversion: the pixel pipeline already turns MONOCHROME1 into MONOCHROME2.

:class:`RandomAffine` is the detector's geometric transform (image and boxes together); :func:`rotate`
turns the classifier's cached head crops (labels unchanged).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

Augmentation = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float, n: int) -> np.ndarray:
    return np.exp(rng.uniform(np.log(lo), np.log(hi), n))


def _torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


def _per_image(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(values, np.float32))[:, None, None, None]


@dataclass(frozen=True)
class Compose:
    """Apply ``transforms`` in order."""

    transforms: Sequence[Augmentation]

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        for t in self.transforms:
            x = t(x, rng)
        return x


@dataclass(frozen=True)
class RandomApply:
    """Apply ``transform`` to each image of the batch with probability ``p`` (drawn per image)."""

    transform: Augmentation
    p: float

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        pick = torch.from_numpy(rng.random(len(x)) < self.p)
        if not bool(pick.any()):
            return x
        if bool(pick.all()):
            return self.transform(x, rng)
        out = x.clone()
        out[pick] = self.transform(x[pick], rng)
        return out


def gaussian_blur(x: torch.Tensor, sigmas: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur of each image with its own ``sigma`` (pixels); reflected borders."""
    n, _, h, w = x.shape
    radius = max(1, min(math.ceil(3 * float(np.max(sigmas))), (min(h, w) - 1)))
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernels = torch.exp(-0.5 * (taps[None] / torch.from_numpy(np.asarray(sigmas, np.float32))[:, None]) ** 2)
    kernels = (kernels / kernels.sum(1, keepdim=True)).to(x.dtype)
    y = F.pad(x.reshape(1, n, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernels[:, None, None, :], groups=n)
    y = F.conv2d(y, kernels[:, None, :, None], groups=n)
    return y.reshape(n, 1, h, w)


@dataclass(frozen=True)
class Resample:
    """Down-sample by a random factor in ``factors`` (antialiased) and back up: a coarser detector or archive."""

    factors: tuple[float, float] = (0.35, 1.0)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        h, w = x.shape[-2:]
        out = []
        for image, f in zip(x, rng.uniform(*self.factors, len(x)), strict=True):
            small = F.interpolate(
                image[None], size=(max(2, round(h * f)), max(2, round(w * f))), mode="bilinear", antialias=True
            )
            out.append(F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)[0])
        return torch.stack(out).clamp_(0, 1)


@dataclass(frozen=True)
class Noise:
    """Additive noise: Gaussian (std log-uniform in ``gaussian``) or signal-dependent, Poisson-like (variance
    ``k`` × signal, ``k`` log-uniform in ``poisson``; the signal is the brightness or its complement, so either
    bright or dark parts are the photon-starved ones).
    """

    gaussian: tuple[float, float] = (0.003, 0.04)
    poisson: tuple[float, float] = (1e-4, 4e-3)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        n = len(x)
        kind = rng.integers(0, 3, n)  # 0 Gaussian, 1 Poisson on brightness, 2 Poisson on its complement
        std = _per_image(_log_uniform(rng, *self.gaussian, n))
        k = _per_image(_log_uniform(rng, *self.poisson, n))
        noise = torch.randn(x.shape, generator=_torch_generator(rng), dtype=x.dtype)
        kind_t = torch.from_numpy(kind)[:, None, None, None]
        signal = torch.where(kind_t == 1, x, 1 - x).clamp_min(0)
        scale = torch.where(kind_t == 0, std.expand_as(x), (signal * k).sqrt())
        return (x + scale * noise).clamp_(0, 1)


@dataclass(frozen=True)
class BlurSharpen:
    """Local contrast: a slight Gaussian blur (sigma in ``blur``) or an unsharp mask (sigma in ``sharpen``,
    amount in ``amount``), one or the other per image with equal odds.
    """

    blur: tuple[float, float] = (0.4, 1.6)
    sharpen: tuple[float, float] = (1.0, 4.0)
    amount: tuple[float, float] = (0.3, 1.5)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        n = len(x)
        sharpen = rng.random(n) < 0.5
        sigmas = np.where(sharpen, rng.uniform(*self.sharpen, n), rng.uniform(*self.blur, n))
        amount = np.where(sharpen, rng.uniform(*self.amount, n), -1.0)
        blurred = gaussian_blur(x, sigmas)
        return (x + _per_image(amount) * (x - blurred)).clamp_(0, 1)


@dataclass(frozen=True)
class RangeCompression:
    """Dynamic-range compression, as CR/DR processing does: subtract ``strength`` × the deviation of a heavily
    blurred copy (scale ``scale`` × the shorter side) from its mean, then stretch the 0.5–99.5 percentiles
    back to [0, 1] as the pixel pipeline does. Flattens the large-scale exposure and raises local contrast.
    """

    strength: tuple[float, float] = (0.2, 0.75)
    scale: tuple[float, float] = (0.04, 0.15)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        n, _, h, w = x.shape
        strength = _per_image(rng.uniform(*self.strength, n))
        sigma = rng.uniform(*self.scale) * min(h, w)
        pool = max(1, int(sigma // 2))  # blur at reduced resolution: a wide kernel costs the same as a narrow one
        small = F.avg_pool2d(x, pool, ceil_mode=True) if pool > 1 else x
        low = gaussian_blur(small, np.full(n, sigma / pool))
        low = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
        y = x - strength * (low - low.mean(dim=(2, 3), keepdim=True))
        sample = y[:, 0, :: max(1, h // 64), :: max(1, w // 64)].flatten(1)
        lo, hi = torch.quantile(sample, torch.tensor([0.005, 0.995], dtype=y.dtype), dim=1)
        lo, hi = lo[:, None, None, None], hi[:, None, None, None]
        return ((y - lo) / (hi - lo).clamp_min(1e-3)).clamp_(0, 1)


@dataclass(frozen=True)
class ToneCurve:
    """A random monotone tone curve with ends fixed at 0 and 1: per image either piecewise linear through
    ``knots`` inner points with log-uniform slopes (up to ``slope_ratio`` apart), or a sigmoid (steepness in
    ``steepness``, centre in ``centre``) rescaled to the ends.
    """

    knots: int = 4
    slope_ratio: float = 6.0
    steepness: tuple[float, float] = (3.0, 10.0)
    centre: tuple[float, float] = (0.35, 0.65)
    lut_size: int = 65

    def _curve(self, rng: np.random.Generator, grid: np.ndarray) -> np.ndarray:
        if rng.random() < 0.5:
            slopes = _log_uniform(rng, 1 / math.sqrt(self.slope_ratio), math.sqrt(self.slope_ratio), self.knots + 1)
            ys = np.concatenate([[0.0], np.cumsum(slopes)])
            return np.interp(grid, np.linspace(0, 1, self.knots + 2), ys / ys[-1])
        k, m = rng.uniform(*self.steepness), rng.uniform(*self.centre)
        s = 1 / (1 + np.exp(-k * (grid - m)))
        return (s - s[0]) / (s[-1] - s[0])

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        n = len(x)
        grid = np.linspace(0, 1, self.lut_size)
        luts = torch.from_numpy(np.stack([self._curve(rng, grid) for _ in range(n)]).astype(np.float32)).to(x.dtype)
        pos = x.flatten(1).clamp(0, 1) * (self.lut_size - 1)
        idx = pos.floor().clamp_(max=self.lut_size - 2).long()
        frac = pos - idx
        lo, hi = luts.gather(1, idx), luts.gather(1, idx + 1)
        return (lo + frac * (hi - lo)).reshape(x.shape).clamp_(0, 1)


@dataclass(frozen=True)
class Gamma:
    """``x ** gamma``, gamma log-uniform in ``gammas``."""

    gammas: tuple[float, float] = (0.5, 2.0)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        return x.clamp(0, 1).pow(_per_image(_log_uniform(rng, *self.gammas, len(x))).to(x.dtype))


@dataclass(frozen=True)
class Jpeg:
    """Baseline JPEG round trip at a quality drawn uniformly in ``qualities`` (8-bit, as lossy archives store).

    Pillow's libjpeg: the same bytes as ``torchvision.io.encode_jpeg``, which torchvision 0.29 deprecates.
    """

    qualities: tuple[int, int] = (25, 95)

    def __call__(self, x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        u8 = (x.clamp(0, 1) * 255).round_().to(torch.uint8).numpy()
        qualities = rng.integers(self.qualities[0], self.qualities[1] + 1, len(x))
        out = np.empty_like(u8)
        for k, q in enumerate(qualities):
            buffer = io.BytesIO()
            Image.fromarray(u8[k, 0]).save(buffer, "JPEG", quality=int(q))
            buffer.seek(0)
            out[k, 0] = np.asarray(Image.open(buffer).convert("L"))
        return torch.from_numpy(out).to(x.dtype).div_(255)


def photometric() -> Compose:
    """The training chain: each step applied per image with its probability."""
    return Compose(
        [
            RandomApply(Resample(), 0.3),
            RandomApply(Noise(), 0.5),
            RandomApply(BlurSharpen(), 0.5),
            RandomApply(RangeCompression(), 0.3),
            RandomApply(ToneCurve(), 0.5),
            RandomApply(Gamma(), 0.8),
            RandomApply(Jpeg(), 0.3),
        ]
    )


def _sample(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Resample ``(N, 1, H, W)`` so that output pixel ``u`` shows input ``matrices[n] @ u`` (pixel coordinates,
    homogeneous 3 × 3, pixel ``i`` covering ``[i, i + 1]``); zero outside.
    """
    h, w = images.shape[-2:]
    to_norm = torch.tensor([[2 / w, 0, -1], [0, 2 / h, -1], [0, 0, 1]], dtype=torch.float64)
    theta = to_norm @ matrices.double() @ torch.linalg.inv(to_norm)
    grid = F.affine_grid(theta[:, :2].to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _about_centre(linear: np.ndarray, h: int, w: int) -> np.ndarray:
    """The 3 × 3 pixel-coordinate map applying ``linear`` (2 × 2) about the image centre."""
    c = np.array([w / 2, h / 2])
    m = np.eye(3)
    m[:2, :2] = linear
    m[:2, 2] = c - linear @ c
    return m


def rotate(images: torch.Tensor, degrees: np.ndarray) -> torch.Tensor:
    """Turn each image of ``(N, 1, H, W)`` about its centre by its angle (degrees, counter-clockwise on screen)."""
    h, w = images.shape[-2:]
    mats = []
    for d in degrees:
        a = math.radians(float(d))
        # screen rows run downwards: a counter-clockwise turn on screen is clockwise in (x, y)
        forward = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        mats.append(np.linalg.inv(_about_centre(forward, h, w)))
    return _sample(images, torch.from_numpy(np.stack(mats)))


def transform_boxes(boxes: torch.Tensor, matrix: np.ndarray) -> torch.Tensor:
    """The boxes after the pixel map ``matrix`` (3 × 3): the bounding box of each box's inscribed ellipse.

    A femoral head is round and its truth box a loose square around it, so the head lies inside the box's
    inscribed ellipse, and that ellipse's image bounds the transformed head tightly. The enclosing box of the
    four turned corners would instead grow by up to ``cos + sin`` of the angle (16 % at 10°) and teach the
    detector boxes that are too large.
    """
    if len(boxes) == 0:
        return boxes.clone()
    b = boxes.double()
    centre = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, torch.ones(len(b), dtype=b.dtype)], 1)
    half = torch.stack([(b[:, 2] - b[:, 0]) / 2, (b[:, 3] - b[:, 1]) / 2], 1)
    m = torch.from_numpy(matrix).double()
    c = centre @ m.T
    extent_x = ((m[0, 0] * half[:, 0]) ** 2 + (m[0, 1] * half[:, 1]) ** 2).sqrt()
    extent_y = ((m[1, 0] * half[:, 0]) ** 2 + (m[1, 1] * half[:, 1]) ** 2).sqrt()
    out = torch.stack([c[:, 0] - extent_x, c[:, 1] - extent_y, c[:, 0] + extent_x, c[:, 1] + extent_y], 1)
    return out.to(boxes.dtype)


@dataclass(frozen=True)
class RandomAffine:
    """A small random rotation, isotropic scale and shear about the image centre, for the detector.

    Conservative: an image keeps its geometry when a box touches the image edge (a head cut by the edge is
    not round in its box) or when a transformed box would leave the image.
    """

    degrees: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    shear: float = 4.0
    p: float = 0.5

    def matrix(self, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        a = math.radians(rng.uniform(-self.degrees, self.degrees))
        s = rng.uniform(*self.scale)
        sh = math.tan(math.radians(rng.uniform(-self.shear, self.shear)))
        turn = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
        return _about_centre(s * turn @ np.array([[1.0, sh], [0.0, 1.0]]), h, w)

    def __call__(
        self, image: torch.Tensor, boxes: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``image`` ``(H, W)`` and its ``(k, 4)`` boxes, both transformed (or both unchanged)."""
        if rng.random() >= self.p:
            return image, boxes
        h, w = image.shape[-2:]
        m = self.matrix(rng, h, w)
        edge = 1.0
        if len(boxes) and bool(
            (boxes[:, :2] <= edge).any() | (boxes[:, 2] >= w - edge).any() | (boxes[:, 3] >= h - edge).any()
        ):
            return image, boxes
        moved = transform_boxes(boxes, m)
        if len(moved) and bool((moved[:, :2] < 0).any() | (moved[:, 2] > w).any() | (moved[:, 3] > h).any()):
            return image, boxes
        out = _sample(image.reshape(1, 1, h, w), torch.from_numpy(np.linalg.inv(m))[None])
        return out.reshape(image.shape), moved
