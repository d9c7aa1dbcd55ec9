"""The varied and alt styles render what they list: implants, arthroplasties, 8-bit and JPEG exports; the classic
style stays as it was."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from avn_node.ground_truth import Side, View
from avn_node.phantom.anatomy import render
from avn_node.phantom.dicom import build_dataset, encode, write
from avn_node.phantom.generate import PatientPlan, PhantomOptions, generate_patient, plan_patient, render_radiograph
from avn_node.phantom.variation import Implant
from tests.conftest import dciodvfy_errors

pytestmark = pytest.mark.slow
SMALL = (600, 800)


def _options(style: str, **kw: object) -> PhantomOptions:
    return PhantomOptions(studies=200, seed=41, style_mix={style: 1.0}, size_range=SMALL, **kw)  # type: ignore[arg-type]


def _first(options: PhantomOptions, wanted, limit: int = 200) -> tuple[int, PatientPlan]:  # noqa: ANN001
    """The first patient index whose plan satisfies ``wanted``."""
    for i in range(limit):
        plan = plan_patient(options, i)
        if wanted(plan):
            return i, plan
    raise AssertionError("no such patient in the first plans")


def _with_implant(plan: PatientPlan, side: Side, implant: Implant) -> PatientPlan:
    extras = replace(plan.patient.extras, implants={side: implant})
    return replace(plan, patient=replace(plan.patient, extras=extras))


def _ap_plan() -> PatientPlan:
    return _first(_options("varied", shape_mix={"ap": 1.0}), lambda p: p.radiographs[0].unilateral is None)[1]


def test_screw_is_denser_than_the_bone_around_it_inside_the_femur() -> None:
    plan = _ap_plan()
    item = plan.radiographs[0]
    canvas = item.acquisition.canvas()
    bare = render(canvas, _with_implant(plan, Side.R, Implant()).patient, item.pose, plan.lesions)
    fixed = render(canvas, _with_implant(plan, Side.R, Implant("screws", 2, 0.3)).patient, item.pose, plan.lesions)
    screw = fixed.extra - bare.extra > 1.0
    assert screw.sum() > 50
    x0, y0, x1, y1 = (int(v) for v in bare.head_outlines[Side.R])
    head = np.zeros_like(screw)
    head[y0:y1, x0:x1] = True
    assert (screw & head).any(), "the screws reach into the femoral head"
    # attenuation along each ray: metal + bone of the rendered scene
    bone = bare.cortical * 0.11 + (bare.cancellous + bare.extra) * 0.045
    metal = bone + (fixed.extra - bare.extra) * 0.045
    # along the same rays, the screw alone attenuates more than all the bone (head, neck, acetabular walls)
    assert (metal - bone)[screw & head].mean() > 1.5 * bone[screw & head].mean()


def test_screw_shows_brighter_than_the_head_around_it_in_the_stored_image() -> None:
    plan = _with_implant(_ap_plan(), Side.R, Implant("screws", 2, 0.3))
    item = plan.radiographs[0]
    radiograph, outlines = render_radiograph(plan, item, noise=False)
    bare, _ = render_radiograph(_with_implant(plan, Side.R, Implant()), item, noise=False)
    a, b = radiograph.pixels.astype(float), bare.pixels.astype(float)
    if item.acquisition.photometric == "MONOCHROME1":
        a, b = -a, -b
    x0, y0, x1, y1 = (int(v) for v in outlines[Side.R])
    diff = (a - b)[y0:y1, x0:x1]
    screw = diff > 0.5 * diff.max()
    assert screw.sum() > 20
    assert a[y0:y1, x0:x1][screw].mean() > a[y0:y1, x0:x1][~screw].mean()


def test_prosthetic_head_replaces_the_femoral_head_and_yields_no_truth_head(tmp_path: Path) -> None:
    options = _options("varied", shape_mix={"ap": 1.0})
    index, plan = _first(
        options,
        lambda p: (
            p.radiographs[0].unilateral is None
            and [p.patient.implant(s).kind for s in (Side.R, Side.L)].count("arthroplasty") == 1
        ),
    )
    replaced = next(s for s in (Side.R, Side.L) if plan.patient.implant(s).kind == "arthroplasty")
    item = plan.radiographs[0]
    maps = render(item.acquisition.canvas(), plan.patient, item.pose, plan.lesions)
    assert maps.head_outlines[replaced] == "prosthesis"
    assert isinstance(maps.head_outlines[_other(replaced)], tuple)
    # metal fills where the head was
    natural = render(
        item.acquisition.canvas(), _with_implant(plan, replaced, Implant()).patient, item.pose, plan.lesions
    )
    x0, y0, x1, y1 = (int(v) for v in natural.head_outlines[replaced])
    assert maps.extra[y0:y1, x0:x1].max() > 10 * max(natural.extra[y0:y1, x0:x1].max(), 1.0)
    truths = generate_patient((options, index, tmp_path))
    assert [h.side for h in truths[0].heads] == [_other(replaced)]


def _other(side: Side) -> Side:
    return Side.L if side is Side.R else Side.R


def test_eight_bit_export_keeps_its_range_and_jpeg_damage_is_declared(tmp_path: Path) -> None:
    options = _options("varied")
    _, plan = _first(options, lambda p: any(r.acquisition.chain.jpeg_quality for r in p.radiographs))
    item = next(r for r in plan.radiographs if r.acquisition.chain.jpeg_quality)
    radiograph, _ = render_radiograph(plan, item)
    assert radiograph.pixels.dtype == np.uint8
    ds = build_dataset(item.study, item.image, item.acquisition, radiograph)
    encode(ds, item.image.syntax, radiograph.pixels)
    write(ds, tmp_path / "x.dcm")
    back = pydicom.dcmread(tmp_path / "x.dcm")
    assert (back.BitsAllocated, back.BitsStored) == (8, 8)
    pixels = back.pixel_array
    assert pixels.max() >= 200 and pixels.min() <= 60
    assert back.LossyImageCompression == "01"
    assert dciodvfy_errors(tmp_path / "x.dcm") == []


def test_alt_style_is_an_eight_bit_film_chain() -> None:
    _, plan = _first(_options("alt"), lambda p: True)
    chains = [r.acquisition.chain for r in plan.radiographs]
    assert all(c.film and c.bits8 for c in chains)
    radiograph, _ = render_radiograph(plan, plan.radiographs[0])
    assert radiograph.pixels.dtype == np.uint8


def test_classic_patient_renders_the_same_pixels_whatever_the_other_patients_styles() -> None:
    mixed = PhantomOptions(studies=30, seed=41, style_mix={"classic": 1.0, "varied": 1.0}, size_range=SMALL)
    index, plan = _first(mixed, lambda p: p.style == "classic")
    pure = plan_patient(replace(mixed, style_mix={"classic": 1.0}), index)
    a, _ = render_radiograph(plan, plan.radiographs[0])
    b, _ = render_radiograph(pure, pure.radiographs[0])
    assert np.array_equal(a.pixels, b.pixels)
    assert plan.patient.extras is None and plan.radiographs[0].acquisition.chain is None


def test_varied_style_shows_tight_single_hip_ap_views() -> None:
    options = _options("varied", shape_mix={"ap": 1.0})
    _, plan = _first(options, lambda p: p.radiographs[0].unilateral is not None)
    assert plan.radiographs[0].view is View.AP
    _, outlines = render_radiograph(plan, plan.radiographs[0])
    assert list(outlines) in ([plan.radiographs[0].unilateral], [])


def test_anatomic_acetabular_walls_cover_the_medial_head_more_than_its_lateral_edge() -> None:
    index, plan = _first(
        _options("varied", shape_mix={"ap": 1.0}),
        lambda p: p.patient.look.anatomic is not None and p.radiographs[0].unilateral is None,
    )
    item = plan.radiographs[0]
    canvas = item.acquisition.canvas()
    simple = replace(plan.patient, extras=replace(plan.patient.extras, anatomic=None))
    walls = replace(plan.patient.look.anatomic, posterior_wall=0.0, anterior_wall=0.0)
    anatomic = replace(plan.patient, extras=replace(plan.patient.extras, anatomic=walls))
    with_walls = render(canvas, anatomic, item.pose, plan.lesions)
    without = render(canvas, simple, item.pose, plan.lesions)
    x0, y0, x1, y1 = (int(v) for v in with_walls.head_outlines[Side.R])
    added = (with_walls.cortical - without.cortical)[y0:y1, x0:x1]
    third = (x1 - x0) // 3
    # the patient's right hip: medial is towards the image's right (higher columns) in the canvas as drawn
    lateral, medial = added[:, :third], added[:, -third:]
    if canvas.to_pixel(np.array([0.0, 0.0]))[0] < x0:  # a mirrored canvas puts the midline on the left
        lateral, medial = medial, lateral
    assert medial.mean() > 0.5, "the walls add bone over the medial head"
    assert medial.mean() > 2 * max(lateral.mean(), 0.0), "the rims end before the lateral edge"


def test_varied_style_positions_legs_abducted_as_well_as_adducted() -> None:
    options = _options("varied", shape_mix={"ap": 1.0})
    angles = [plan_patient(options, i).radiographs[0].pose.adduction_deg for i in range(40)]
    assert min(angles) < -5 and max(angles) > 5
