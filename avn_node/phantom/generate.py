"""Seeded generation of whole phantom data sets: patients, studies, radiographs, files and ground truth.

Patient ``i`` of seed ``s`` draws everything from ``default_rng([s, i])`` and its UIDs from the same
pair, so a data set is identical whatever the number of workers.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from avn_node import __version__
from avn_node.ground_truth import FicatStage, GroundTruth, HeadTruth, RadiographTruth, Side, View
from avn_node.parallel import process_map
from avn_node.phantom.anatomy import SIDE_SIGN, Patient, Pose, render
from avn_node.phantom.dicom import TRANSFER_SYNTAXES, ImageInfo, StudyInfo, build_dataset, encode, write
from avn_node.phantom.imaging import Acquisition, Radiograph, expose
from avn_node.phantom.lesions import PAPER_STAGE_MIX, HeadLesion, patient_avn_probability, sample_lesion, sample_stages
from avn_node.phantom.variation import STYLES, sample_extras, sample_leg_adduction, sample_patient_changes

GENERATOR_NAME = "avn-node phantom"
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:avn-node:phantom")
"""Phantom UIDs are 2.25 UUIDs (PS3.5 B.2) named by seed, patient and object: reproducible, never reused."""

DEFAULT_SYNTAX_MIX = {"explicit": 0.4, "j2k": 0.15, "jpegls": 0.15, "jpeg-lossless": 0.15, "rle": 0.15}
STUDY_SHAPES = ("ap+fl", "ap|fl", "ap", "fl")
"""AP + FL in one study; AP and FL in two studies of the same day; AP only; FL only."""
DEFAULT_SHAPE_MIX = {"ap+fl": 0.45, "ap|fl": 0.25, "ap": 0.15, "fl": 0.15}

NAMES: list[tuple[str, str | None]] = [
    ("Smith^John", None),
    ("Brown^Mary", None),
    ("Garcia^Luis", None),
    ("Nguyen^Anh", None),
    ("Kowalski^Piotr", None),
    ("Okafor^Chinedu", None),
    ("Hansen^Ingrid", None),
    ("Rossi^Marco", None),
    ("Dupré^Zoë", "ISO_IR 100"),
    ("Müller^Jürgen", "ISO_IR 100"),
    ("Ångström^Åsa", "ISO_IR 100"),
    ("Núñez^José", "ISO_IR 100"),
    ("Weiß^Björn", "ISO_IR 192"),
    ("Παπαδόπουλος^Νίκος", "ISO_IR 192"),
    ("山田^太郎", "ISO_IR 192"),
    ("Иванова^Ольга", "ISO_IR 192"),
]


class PhantomOptionError(ValueError):
    """An option of ``avn-node phantom`` that cannot be honoured; the message names it."""


@dataclass(frozen=True)
class PhantomOptions:
    """What to generate (see ``avn-node phantom --help``)."""

    studies: int
    seed: int = 1
    stage_mix: dict[FicatStage, float] = field(default_factory=lambda: dict(PAPER_STAGE_MIX))
    bilateral_rate: float = 0.6
    syntax_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SYNTAX_MIX))
    shape_mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_SHAPE_MIX))
    fl_unilateral_rate: float = 0.4
    size_range: tuple[int, int] = (1500, 3000)
    style_mix: dict[str, float] = field(default_factory=lambda: {"classic": 1.0})
    """Weights of the rendering styles (:data:`~avn_node.phantom.variation.STYLES`), drawn per patient."""

    def __post_init__(self) -> None:
        if self.studies < 1:
            raise PhantomOptionError(f'Option "--studies" must be at least 1, got {self.studies}.')
        unknown = set(self.syntax_mix) - set(TRANSFER_SYNTAXES)
        if unknown:
            raise PhantomOptionError(
                f'Option "--syntax-mix" has unknown syntaxes {sorted(unknown)}; known: {sorted(TRANSFER_SYNTAXES)}.'
            )
        if set(self.shape_mix) - set(STUDY_SHAPES):
            raise PhantomOptionError(f'Option "--shape-mix" knows only {list(STUDY_SHAPES)}.')
        if not self.style_mix or set(self.style_mix) - set(STYLES) or sum(self.style_mix.values()) <= 0:
            raise PhantomOptionError(
                f'Option "--style" needs positive weights of {list(STYLES)}, got {self.style_mix}.'
            )
        lo, hi = self.size_range
        if not 256 <= lo <= hi <= 4096:
            raise PhantomOptionError(f'Option "--size-range" needs 256 <= MIN <= MAX <= 4096, got {self.size_range}.')
        patient_avn_probability(self.stage_mix, self.bilateral_rate)  # raises on an impossible mix

    def to_json(self) -> dict[str, object]:
        return {
            "studies": self.studies,
            "stage_mix": {k.value: v for k, v in self.stage_mix.items()},
            "bilateral_rate": self.bilateral_rate,
            "syntax_mix": self.syntax_mix,
            "shape_mix": self.shape_mix,
            "fl_unilateral_rate": self.fl_unilateral_rate,
            "size_range": list(self.size_range),
            "style_mix": self.style_mix,
        }


def _choice(rng: np.random.Generator, mix: dict[str, float]) -> str:
    keys = list(mix)
    p = np.array([mix[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


@dataclass(frozen=True)
class PlannedRadiograph:
    """One radiograph to render: who, which view, which study, how acquired."""

    view: View
    unilateral: Side | None
    study: StudyInfo
    image: ImageInfo
    relpath: str
    pose: Pose
    acquisition: Acquisition


@dataclass(frozen=True)
class PatientPlan:
    """Everything drawn for one patient, before any pixel is rendered."""

    patient: Patient
    lesions: dict[Side, HeadLesion]
    radiographs: list[PlannedRadiograph]
    style: str = "classic"


def plan_patient(options: PhantomOptions, index: int) -> PatientPlan:
    """Draw patient ``index`` of the data set: anatomy, lesions, studies and acquisitions."""
    rng = np.random.default_rng([options.seed, index])

    def uid(*parts: object) -> str:
        name = "/".join(map(str, (options.seed, index, *parts)))
        return f"2.25.{uuid.uuid5(UID_NAMESPACE, name).int}"

    patient = Patient.sample(rng)
    look_rng = np.random.default_rng([options.seed, index, 7])  # the styles' draws leave the classic stream alone
    style = _choice(look_rng, options.style_mix)
    if style != "classic":
        patient = replace(patient, **sample_patient_changes(look_rng, style), extras=sample_extras(look_rng, style))
    stages = sample_stages(rng, options.stage_mix, options.bilateral_rate)
    lesions = {side: sample_lesion(rng, stages[side]) for side in (Side.R, Side.L)}
    if style != "classic":
        lesions = {side: replace(lesion, families=True) for side, lesion in lesions.items()}
    shape = _choice(rng, options.shape_mix)
    views = {"ap+fl": [View.AP, View.FL], "ap|fl": [View.AP, View.FL], "ap": [View.AP], "fl": [View.FL]}[shape]
    pid = f"P{index + 1:04d}"
    name, charset = NAMES[int(rng.integers(len(NAMES)))]
    day = dt.datetime(2020, 1, 1, 7, 0) + dt.timedelta(
        days=int(rng.integers(0, 6 * 365)), minutes=int(rng.integers(0, 11 * 60))
    )
    birth = day.year - patient.age_years
    studies: list[StudyInfo] = []
    for k in range(2 if shape == "ap|fl" else 1):
        studies.append(
            StudyInfo(
                patient_name=name,
                patient_id=pid,
                birth_date=f"{birth:04d}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
                sex=patient.sex,
                age_years=patient.age_years,
                charset=charset,
                study_uid=uid("study", k),
                study_date=day + dt.timedelta(minutes=40 * k),
                accession=f"A{options.seed % 1000:03d}{index:06d}{k}",
                study_id=str(k + 1),
            )
        )
    modality = {s.study_uid: ("DX" if rng.random() < 0.6 else "CR") for s in studies}
    one_series = rng.random() < 0.5
    planned = []
    for j, view in enumerate(views):
        study = studies[min(j, len(studies) - 1)]
        mod = modality[study.study_uid]
        unilateral = None
        if view is View.FL and rng.random() < options.fl_unilateral_rate:
            unilateral = (Side.R, Side.L)[int(rng.integers(2))]
        elif style != "classic" and view is View.AP and look_rng.random() < 0.15:  # a tight single-hip AP
            unilateral = (Side.R, Side.L)[int(look_rng.integers(2))]
        pose = Pose.sample(rng, view, patient)
        if style == "varied" and view is View.AP:
            pose = replace(pose, adduction_deg=sample_leg_adduction(look_rng))
        acq = _fit_acquisition(
            rng, view, unilateral, mod, patient, options.size_range, style, look_rng if style != "classic" else None
        )
        same_series = one_series and len(studies) == 1
        series_number = 1 if same_series else j + 1
        correct_lat = unilateral.value if unilateral else "B"
        lat = correct_lat if rng.random() < 0.85 else str(rng.choice(["U", "L", "R", "B"]))
        if mod == "CR" and rng.random() < 0.4:
            lat = ""
        image = ImageInfo(
            sop_uid=uid("image", j),
            series_uid=uid("series", 0 if same_series else j),
            series_number=series_number,
            instance_number=j + 1 if same_series else 1,
            acquired=study.study_date + dt.timedelta(minutes=2 + 3 * j),
            body_part=str(rng.choice(["HIP", "PELVIS", ""], p=[0.45, 0.4, 0.15])),
            view_position=str(rng.choice(["AP", "", "LL"], p=[0.7, 0.2, 0.1])),
            image_laterality=lat if (lat or mod == "CR") else correct_lat,
            syntax=_choice(rng, options.syntax_mix),
        )
        relpath = f"{pid}/ST{studies.index(study) + 1}/{view.value}.dcm"
        planned.append(PlannedRadiograph(view, unilateral, study, image, relpath, pose, acq))
    return PatientPlan(patient, lesions, planned, style)


def _fit_acquisition(
    rng: np.random.Generator,
    view: View,
    unilateral: Side | None,
    modality: str,
    patient: Patient,
    size_range: tuple[int, int],
    style: str = "classic",
    look_rng: np.random.Generator | None = None,
) -> Acquisition:
    """An acquisition in which the imaged heads lie wholly inside and any other head wholly outside."""
    margin = patient.head_radius + patient.joint_gap + 6.0
    for _ in range(50):
        acq = Acquisition.sample(rng, view, unilateral, modality, patient.hip_distance, size_range, style, look_rng)
        canvas = acq.canvas()
        ok = True
        for side in (Side.R, Side.L):
            c = canvas.to_pixel(np.array([SIDE_SIGN[side] * patient.hip_distance / 2, 0.0]))
            m = margin / acq.spacing_mm
            d_in = min(c[0], c[1], acq.cols - c[0], acq.rows - c[1])  # < 0: the centre lies outside
            wanted = unilateral is None or side is unilateral
            if wanted and d_in < m * 1.1 + 0.05 * max(acq.rows, acq.cols):
                ok = False
            if not wanted and d_in > -m:
                ok = False
        if ok:
            return acq
    raise PhantomOptionError(f'Option "--size-range" {size_range} leaves no room for both hips; widen it.')


def loose_square(outline: tuple[float, float, float, float], cols: int, rows: int) -> tuple[float, ...]:
    """DESIGN §5's box: centred on the outline, side 1.5 × its larger extent, clipped to the image."""
    x0, y0, x1, y1 = outline
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.75 * max(x1 - x0, y1 - y0)
    return (max(cx - half, 0.0), max(cy - half, 0.0), min(cx + half, float(cols)), min(cy + half, float(rows)))


def render_radiograph(
    plan: PatientPlan,
    item: PlannedRadiograph,
    noise: bool = True,
    realisation: int = 0,
    lesions: dict[Side, HeadLesion] | None = None,
) -> tuple[Radiograph, dict[Side, tuple[float, ...]]]:
    """Pixels of one planned radiograph and the outline box of each head it shows.

    ``lesions`` replaces the plan's lesions (the same anatomy and exposure with other findings).
    """
    acq = item.acquisition
    canvas = acq.canvas()
    maps = render(canvas, plan.patient, item.pose, lesions or plan.lesions)
    outlines: dict[Side, tuple[float, ...]] = {}
    for side, box in maps.head_outlines.items():
        wanted = item.unilateral is None or side is item.unilateral
        if wanted != (isinstance(box, tuple) or box == "prosthesis"):
            raise AssertionError(f"head {side} of {item.relpath} is {box!r}")
        if isinstance(box, tuple):
            outlines[side] = box
    return expose(maps, acq, noise=noise, realisation=realisation), outlines


def phantom_dataset(seed: int = 0, size: int = 768) -> Dataset:
    """The first radiograph of one phantom patient (AP, uncompressed), in memory: no file is written."""
    options = PhantomOptions(studies=1, seed=seed, syntax_mix={"explicit": 1.0}, shape_mix={"ap": 1.0},
                             size_range=(size, size))  # fmt: skip
    plan = plan_patient(options, 0)
    item = plan.radiographs[0]
    radiograph, _ = render_radiograph(plan, item)
    ds = build_dataset(item.study, item.image, item.acquisition, radiograph)
    encode(ds, item.image.syntax, radiograph.pixels)
    return ds


def generate_patient(args: tuple[PhantomOptions, int, Path]) -> list[RadiographTruth]:
    """Render and write every radiograph of one patient; returns their ground truth."""
    options, index, out = args
    plan = plan_patient(options, index)
    truths = []
    for item in plan.radiographs:
        radiograph, outlines = render_radiograph(plan, item)
        ds = build_dataset(item.study, item.image, item.acquisition, radiograph)
        encode(ds, item.image.syntax, radiograph.pixels)
        write(ds, out / item.relpath)
        heads = tuple(
            HeadTruth(
                side,
                loose_square(box, item.acquisition.cols, item.acquisition.rows),  # type: ignore[arg-type]
                plan.lesions[side].stage,
                plan.lesions[side].notes,
                plan.lesions[side].severity,
            )
            for side, box in sorted(outlines.items())
        )
        truths.append(
            RadiographTruth(
                item.relpath, item.image.sop_uid, item.study.patient_id, item.study.study_uid, item.view, heads
            )
        )
    return truths


def generate(
    options: PhantomOptions, out: Path, workers: int = 1, progress: Callable[[int], None] | None = None
) -> GroundTruth:
    """Write ``options.studies`` patients' studies under ``out`` and their ``ground_truth.json``."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(options, i, out) for i in range(options.studies)]
    truth = GroundTruth(
        {"name": GENERATOR_NAME, "version": __version__, "seed": options.seed, "options": options.to_json()}
    )
    for radiographs in process_map(generate_patient, jobs, workers):
        truth.radiographs.extend(radiographs)
        if progress:
            progress(1)
    truth.dump(out)
    return truth
