"""Each Ficat stage and note is really rendered, from subtle to obvious, in the head it is listed for.

Margins are stated against the quantum noise of the same radiograph: σ is the per-pixel noise standard
deviation in stored values inside the head box, measured from two noise realisations of one image. The
matched-filter detectability d' = ‖Δ‖₂ / σ is the signal-to-noise ratio of an ideal observer who knows
the feature's shape and place; d' ≥ 20 means a feature no observer could mistake for noise.
"""

from __future__ import annotations

import numpy as np
import pytest

from avn_node.ground_truth import FicatStage, Note, Side
from avn_node.phantom.generate import PatientPlan, PhantomOptions, plan_patient, render_radiograph
from avn_node.phantom.lesions import HeadLesion

NORMAL = {Side.R: HeadLesion(FicatStage.ABSENCE, (), 0.0, 7), Side.L: HeadLesion(FicatStage.ABSENCE, (), 0.0, 8)}
NOTE_STAGE = {
    Note.SCLEROSIS: FicatStage.II,
    Note.CYSTS: FicatStage.II,
    Note.CRESCENT_SIGN: FicatStage.II,
    Note.SUBCHONDRAL_COLLAPSE: FicatStage.III,
    Note.HEAD_DEFORMATION: FicatStage.III,
    Note.ACETABULAR_DEFORMATION: FicatStage.IV,
    Note.JOINT_SPACE_NARROWING: FicatStage.IV,
}
SEEDS = (1, 2, 3)


def _ap(seed: int) -> PatientPlan:
    return plan_patient(PhantomOptions(studies=1, seed=seed, shape_mix={"ap": 1.0}, size_range=(700, 900)), 0)


def _pixels(plan: PatientPlan, lesions: dict[Side, HeadLesion], **kw: object) -> tuple[np.ndarray, dict]:
    radiograph, outlines = render_radiograph(plan, plan.radiographs[0], lesions=lesions, **kw)  # type: ignore[arg-type]
    return radiograph.pixels.astype(np.float64), outlines


def _head_region(outlines: dict, side: Side) -> tuple[slice, slice]:
    x0, y0, x1, y1 = (int(v) for v in outlines[side])
    return slice(y0, y1), slice(x0, x1)


def _noise_sigma(plan: PatientPlan, region: tuple[slice, slice]) -> float:
    a, _ = _pixels(plan, NORMAL, realisation=1)
    b, _ = _pixels(plan, NORMAL, realisation=2)
    return float(np.std(a[region] - b[region]) / np.sqrt(2))


def _contrast(plan: PatientPlan, lesion: HeadLesion) -> tuple[np.ndarray, float]:
    """Noise-free difference lesion − normal in the right head's box, and that box's noise σ."""
    normal, outlines = _pixels(plan, NORMAL, noise=False)
    region = _head_region(outlines, Side.R)
    diseased, _ = _pixels(plan, {**NORMAL, Side.R: lesion}, noise=False)
    return diseased[region] - normal[region], _noise_sigma(plan, region)


@pytest.mark.parametrize("seed", SEEDS)
def test_phantom_stage_iv_head_differs_from_absence_by_twice_the_noise(seed: int) -> None:
    """At mid severity a stage IV head's RMS change over its whole box is ≥ 2σ (measured 5.3–12.6σ on seeds 1–3)."""
    notes = (
        Note.SCLEROSIS,
        Note.SUBCHONDRAL_COLLAPSE,
        Note.HEAD_DEFORMATION,
        Note.ACETABULAR_DEFORMATION,
        Note.JOINT_SPACE_NARROWING,
    )
    delta, sigma = _contrast(_ap(seed), HeadLesion(FicatStage.IV, notes, 0.5, 11))
    assert np.sqrt(np.mean(delta**2)) >= 2 * sigma


@pytest.mark.parametrize("note", list(Note))
def test_phantom_each_note_changes_the_head_region(note: Note) -> None:
    """Every note alone, at mid severity, gives d' ≥ 20 in the head box (measured 55–1450 on seeds 1–3)."""
    for seed in SEEDS:
        delta, sigma = _contrast(_ap(seed), HeadLesion(NOTE_STAGE[note], (note,), 0.5, 11))
        assert np.sqrt(np.sum(delta**2)) / sigma >= 20, seed


@pytest.mark.parametrize("note", [Note.SCLEROSIS, Note.CYSTS, Note.CRESCENT_SIGN])
def test_phantom_faintest_pre_collapse_signs_are_comparable_to_the_noise(note: Note) -> None:
    """At severity 0 no pixel of sclerosis, cysts or crescent changes by > 3.5σ (measured ≤ 3.0σ): borderline cases."""
    for seed in SEEDS:
        delta, sigma = _contrast(_ap(seed), HeadLesion(NOTE_STAGE[note], (note,), 0.0, 11))
        assert np.abs(delta).max() <= 3.5 * sigma, seed


def test_phantom_lesion_leaves_the_other_hip_alone() -> None:
    """A stage IV right hip changes the left head's box by well under the noise (only global windowing moves)."""
    plan = _ap(1)
    normal, outlines = _pixels(plan, NORMAL, noise=False)
    region = _head_region(outlines, Side.L)
    notes = (Note.SUBCHONDRAL_COLLAPSE, Note.ACETABULAR_DEFORMATION, Note.JOINT_SPACE_NARROWING)
    diseased, _ = _pixels(plan, {**NORMAL, Side.R: HeadLesion(FicatStage.IV, notes, 1.0, 11)}, noise=False)
    assert np.abs(diseased[region] - normal[region]).mean() <= 0.2 * _noise_sigma(plan, region)


def test_phantom_dropping_a_note_keeps_the_other_features_in_place() -> None:
    plan = _ap(2)
    both = HeadLesion(FicatStage.II, (Note.SCLEROSIS, Note.CYSTS), 0.8, 11)
    cysts_only, _ = _pixels(plan, {**NORMAL, Side.R: both.without(Note.SCLEROSIS)}, noise=False)
    direct, _ = _pixels(plan, {**NORMAL, Side.R: HeadLesion(FicatStage.II, (Note.CYSTS,), 0.8, 11)}, noise=False)
    np.testing.assert_array_equal(cysts_only, direct)
