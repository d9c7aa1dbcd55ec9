"""Training augmentations: range and shape kept, seeded repeats, monotone tone curves, boxes that follow the head."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from avn_node.models import augment as A

TRANSFORMS = [
    A.Resample(),
    A.Noise(),
    A.BlurSharpen(),
    A.RangeCompression(),
    A.ToneCurve(),
    A.Gamma(),
    A.Jpeg(),
    A.photometric(),
    A.RandomApply(A.Jpeg(), 0.5),
]


def _batch(n: int = 6, h: int = 48, w: int = 64) -> torch.Tensor:
    x = torch.rand(n, 1, h, w, generator=torch.Generator().manual_seed(0))
    x[0] = 0.0  # flat black
    x[1] = 1.0  # flat white
    x[2, :, :, : w // 2] = 0.0  # hard edge between the extremes
    x[2, :, :, w // 2 :] = 1.0
    return x


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: type(t).__name__)
def test_augmentation_keeps_shape_and_unit_range(transform):
    x = _batch()
    for seed in range(5):
        y = transform(x, np.random.default_rng(seed))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert bool(torch.isfinite(y).all())
        assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.equal(x, _batch()), "the input batch was changed in place"


@pytest.mark.parametrize("transform", TRANSFORMS, ids=lambda t: type(t).__name__)
def test_augmentation_repeats_for_the_same_seed(transform):
    x = _batch()
    first = transform(x, np.random.default_rng(7))
    again = transform(x, np.random.default_rng(7))
    torch.testing.assert_close(first, again, rtol=0, atol=0)


def test_photometric_chain_differs_between_seeds_and_images():
    x = _batch(8).clone()
    x[:] = x[3]  # eight copies of one image
    a, b = A.photometric()(x, np.random.default_rng(1)), A.photometric()(x, np.random.default_rng(2))
    assert not torch.equal(a, b)
    assert len({tuple(img.flatten()[:50].tolist()) for img in a}) > 1, "every image got the same augmentation"


def test_tone_curve_is_monotone_and_keeps_black_and_white():
    ramp = torch.linspace(0, 1, 256).repeat(16, 1, 4, 1)
    out = A.ToneCurve()(ramp, np.random.default_rng(3))
    assert bool((out.diff(dim=-1) >= -1e-6).all())
    torch.testing.assert_close(out[..., 0], torch.zeros_like(out[..., 0]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[..., -1], torch.ones_like(out[..., -1]), atol=1e-5, rtol=0)


def test_rotate_turns_counter_clockwise_about_the_centre():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 4:10, 12:20] = 1.0  # a bar above the centre
    torch.testing.assert_close(A.rotate(x, np.array([90.0])), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-4, rtol=0)
    torch.testing.assert_close(A.rotate(x, np.array([0.0])), x, atol=1e-6, rtol=0)


def _disc_image(h: int, w: int, cx: float, cy: float, r: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    return (((xs - cx) ** 2 + (ys - cy) ** 2) <= r**2).float() * 0.9 + 0.05


def test_detector_affine_keeps_a_bright_disc_inside_its_transformed_box():
    h, w, r = 180, 240, 18.0
    centres = [(70.0, 90.0), (170.0, 95.0)]
    image = torch.zeros(h, w)
    for cx, cy in centres:
        image = torch.maximum(image, _disc_image(h, w, cx, cy, r))
    # the phantom's loose square: 1.5 × the head's extent, centred on it
    boxes = torch.tensor([[cx - 1.5 * r, cy - 1.5 * r, cx + 1.5 * r, cy + 1.5 * r] for cx, cy in centres])
    affine = A.RandomAffine(p=1.0)
    moved = 0
    for seed in range(40):
        out, out_boxes = affine(image, boxes, np.random.default_rng(seed))
        assert out.shape == image.shape and out_boxes.shape == boxes.shape
        if torch.equal(out, image):
            torch.testing.assert_close(out_boxes, boxes)
            continue
        moved += 1
        assert bool((out_boxes[:, :2] >= 0).all() & (out_boxes[:, 2] <= w).all() & (out_boxes[:, 3] <= h).all())
        bright = out > 0.5
        inside = torch.zeros_like(bright)
        for x0, y0, x1, y1 in out_boxes.tolist():
            inside[int(np.floor(y0)) : int(np.ceil(y1)), int(np.floor(x0)) : int(np.ceil(x1))] = True
        assert int((bright & ~inside).sum()) == 0, f"seed {seed}: disc pixels outside the transformed box"
        # each box still holds its disc loosely: side about 3 radii times the scale, not inflated by the turn
        for x0, y0, x1, y1 in out_boxes.tolist():
            disc = bright[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
            extent = float(disc.any(0).sum())  # the disc's width in pixels after the transform
            assert 1.3 * extent <= x1 - x0 <= 1.75 * extent, (seed, x1 - x0, extent)
    assert moved >= 30, "the affine was hardly ever applied"


def test_box_of_a_turned_square_keeps_its_size():
    box = torch.tensor([[10.0, 20.0, 40.0, 50.0]])
    a = np.radians(10)
    turn = A._about_centre(np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]), 100, 100)
    out = A.transform_boxes(box, turn)
    torch.testing.assert_close(out[0, 2] - out[0, 0], torch.tensor(30.0))
    torch.testing.assert_close(out[0, 3] - out[0, 1], torch.tensor(30.0))


def test_detector_affine_leaves_an_image_whose_head_touches_the_edge_alone():
    image = torch.rand(100, 120, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[0.0, 30.0, 40.0, 70.0]])
    for seed in range(10):
        out, out_boxes = A.RandomAffine(p=1.0)(image, boxes, np.random.default_rng(seed))
        assert out is image and out_boxes is boxes
