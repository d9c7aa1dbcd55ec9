"""The Comprehensive SR of one study of a case: TID 1500 Imaging Measurement Report (DESIGN §6).

One TID 1410 planar-ROI group per femoral head per radiograph, one per hip for the case (most severe stage,
its region the box that decided it), one "FH not found" group over each radiograph that could not be read or
showed no femoral head, a TEXT with the intended use, and TEXT lines saying why. A head refused as out of
distribution keeps its group and box with AVN "not evaluated" and its reason; a hip all of whose heads were
refused gets a case group saying the same.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import numpy as np
from highdicom.sr import (
    ComprehensiveSR,
    ContainerContentItem,
    FindingSite,
    GraphicTypeValues,
    ImageRegion,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurement,
    SourceImageForRegion,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from avn_node.findings import OUTSIDE_EXPERIENCE, CaseFinding, HeadFinding, HipFinding, RadiographFinding
from avn_node.ground_truth import NOTES, FicatStage
from avn_node.report import codes
from avn_node.report.identity import MANUFACTURER, Producer
from avn_node.report.uids import derived_uid

SR_SERIES_NUMBER = 990
TYPE2_EVIDENCE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
    "StudyID", "ReferringPhysicianName",
)  # fmt: skip


def _polyline(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A rectangle as a closed 5-point polyline in (column, row) (PS3.3 C.18.6.1.1)."""
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=np.float32)


def _box_polyline(box: tuple[float, float, float, float], rows: int, columns: int) -> np.ndarray:
    """The box clipped to the image."""
    x0, x1 = np.clip([box[0], box[2]], 0, columns)
    y0, y1 = np.clip([box[1], box[3]], 0, rows)
    return _polyline(float(x0), float(y0), float(x1), float(y1))


def _percent(p: float) -> float:
    """``p`` in percent to 4 significant digits, never below 0.0001: OHIF prints a zero as a blank."""
    return max(float(f"{100.0 * float(p):.4g}"), 0.0001)


def _measurements(head: HeadFinding, referenced: Sequence[SourceImageForMeasurement] | None) -> list[Measurement]:
    """AVN probability, each AVN stage's, then each note's, likeliest first, in percent.

    OHIF prints a group's first five NUMs, so a reader sees presence, the three stages and the likeliest note.
    """
    items = [(codes.AVN_PROBABILITY, head.presence_probability)]
    items += [(code, head.stage_probabilities[stage]) for stage, code in codes.STAGE_PROBABILITY.items()]
    notes = sorted(NOTES, key=lambda note: -head.note_probabilities[note])
    items += [(codes.NOTE_PROBABILITY[note], head.note_probabilities[note]) for note in notes]
    return [
        Measurement(
            name=name,
            value=_percent(p),
            unit=codes.PERCENT,
            referenced_images=referenced if i == 0 else None,
        )
        for i, (name, p) in enumerate(items)
    ]


def _evaluations(head: HeadFinding) -> list[QualitativeEvaluation]:
    present = head.stage != FicatStage.ABSENCE
    evaluations = [
        QualitativeEvaluation(codes.AVN, codes.PRESENT if present else codes.ABSENT),
        QualitativeEvaluation(codes.FICAT_STAGE, codes.STAGE[head.stage]),
    ]
    evaluations += [QualitativeEvaluation(codes.NOTE[n], codes.PRESENT) for n in head.notes]
    return evaluations


def head_group(
    head: HeadFinding,
    radiograph: RadiographFinding,
    producer: Producer,
    label: str,
    referenced: Sequence[RadiographFinding] = (),
    tracking_key: str = "",
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """A TID 1410 group for one head; ``label`` completes the tracking identifier (``FH-L AP``, ``FH-L case``).

    The tracking UID depends on ``tracking_key`` (default: the source image), side and label only, so it is
    stable across versions.

    A refused head (out of distribution) keeps its box and finding site, but says AVN "not evaluated" with
    the reason coded and as a TEXT; no stage, note or probability.
    """
    identifier = f"FH-{head.side.value} {label}"
    source = SourceImageForRegion(radiograph.sop_class_uid, radiograph.sop_instance_uid)
    refs = [SourceImageForMeasurement(r.sop_class_uid, r.sop_instance_uid) for r in referenced] or None
    common = {
        "tracking_identifier": TrackingIdentifier(
            uid=derived_uid("tracking", tracking_key or radiograph.sop_instance_uid, head.side.value, label),
            identifier=identifier,
        ),
        "referenced_region": ImageRegion(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=_box_polyline(head.box, radiograph.rows, radiograph.columns),
            source_image=source,
        ),
        "finding_type": codes.AVN,
        "finding_sites": [FindingSite(codes.HEAD_OF_FEMUR, laterality=codes.LATERALITY[head.side])],
        "algorithm_id": producer.algorithm(),
    }
    if not head.evaluated:
        group = PlanarROIMeasurementsAndQualitativeEvaluations(
            **common,
            qualitative_evaluations=[
                QualitativeEvaluation(codes.AVN, codes.NOT_EVALUATED),
                QualitativeEvaluation(codes.NOT_EVALUATED_REASON, codes.OUT_OF_DISTRIBUTION),
            ],
        )
        group[0].ContentSequence.append(_text(head.ood_reason or f"AVN not evaluated: {OUTSIDE_EXPERIENCE}."))
        return group
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        **common, measurements=_measurements(head, refs), qualitative_evaluations=_evaluations(head)
    )


def hip_group(
    hip: HipFinding, case: CaseFinding, producer: Producer, target_study_uid: str
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """The case-level group of one hip: the deciding head's box, referencing every image showing that hip.

    Its tracking UID follows the study and side, not the deciding image, so it survives new versions.
    """
    by_uid = {r.sop_instance_uid: r for r in case.radiographs}
    decider = by_uid[hip.decided_by]
    refs = [by_uid[uid] for uid in hip.sources]
    head = hip.head
    if not hip.evaluated:  # every reading of this hip was refused: the case group says so on its least foreign box
        reason = f"No radiograph of this hip could be evaluated ({len(hip.sources)} refused). {head.ood_reason}"
        head = dataclasses.replace(head, ood_reason=reason.strip())
    return head_group(head, decider, producer, "case", refs, tracking_key=target_study_uid)


def not_found_group(
    radiograph: RadiographFinding, producer: Producer
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    """A TID 1410 group for a radiograph where no femoral head could be read: AVN "not evaluated" over the
    whole image (a viewer shows it on the image; OHIF drops an SR with any group lacking a region).
    """
    label = radiograph.view.value if radiograph.view else "image"
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derived_uid("tracking", radiograph.sop_instance_uid, "not-found"), identifier=f"FH not found {label}"
        ),
        referenced_region=ImageRegion(
            graphic_type=GraphicTypeValues.POLYLINE,
            graphic_data=_polyline(0.0, 0.0, float(radiograph.columns), float(radiograph.rows)),
            source_image=SourceImageForRegion(radiograph.sop_class_uid, radiograph.sop_instance_uid),
        ),
        finding_type=codes.AVN,
        finding_sites=[FindingSite(codes.HEAD_OF_FEMUR)],
        algorithm_id=producer.algorithm(),
        qualitative_evaluations=[QualitativeEvaluation(codes.AVN, codes.NOT_EVALUATED)],
    )


def not_evaluated_group(target_study_uid: str, producer: Producer) -> MeasurementsAndQualitativeEvaluations:
    """TID 1501 group for a study none of whose images has a size (TID 1500 needs one group; the remarks say
    why). OHIF cannot show it; ``dsrdump`` and other viewers do.
    """
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=derived_uid("tracking", target_study_uid, "not-evaluated"), identifier="FH not found"
        ),
        finding_type=codes.AVN,
        algorithm_id=producer.algorithm(),
        qualitative_evaluations=[QualitativeEvaluation(codes.AVN, codes.NOT_EVALUATED)],
    )


def _text(value: str) -> TextContentItem:
    return TextContentItem(name=codes.COMMENT, value=value, relationship_type=RelationshipTypeValues.CONTAINS)


def _remarks(case: CaseFinding, producer: Producer) -> ContainerContentItem:
    """TID 1500's Qualitative Evaluations container: intended use, and what could not be read."""
    container = ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS, relationship_type=RelationshipTypeValues.CONTAINS
    )
    lines = [producer.intended_use]
    for r in case.radiographs:
        if r.error:
            lines.append(f"Image {r.sop_instance_uid} could not be analysed: {r.error}")
        elif not r.heads:
            lines.append(f"No femoral head was found on image {r.sop_instance_uid}.")
            if r.out_of_distribution:
                lines.append(
                    f"Image {r.sop_instance_uid} is unlike the radiographs the model was trained on "
                    f"(out-of-distribution score {r.ood_score:.2f}), {OUTSIDE_EXPERIENCE}."
                )
    container.ContentSequence = [_text(line[:1024]) for line in lines]
    return container


PIXEL_DATA_TAGS = frozenset({Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData")})


def evidence_dataset(source: Dataset) -> Dataset:
    """A header copy with the Type 2 patient and study attributes present, as SR evidence requires."""
    ds = Dataset()
    for tag, element in source.items():  # not deepcopy(source): that copies the pixels and their decoded cache
        if tag not in PIXEL_DATA_TAGS:
            ds[tag] = copy.deepcopy(element)
    for keyword in TYPE2_EVIDENCE:
        if keyword not in ds:
            setattr(ds, keyword, None)
    return ds


def build_sr(
    case: CaseFinding,
    sources: dict[str, Dataset],
    target_study_uid: str,
    producer: Producer,
    version: int,
    previous: Sequence[Dataset] = (),
) -> ComprehensiveSR:
    """The SR of ``target_study_uid`` for ``case`` at result ``version`` (1, 2, …).

    ``sources`` maps SOP Instance UID → header of every analysed instance of the case. ``previous`` are the
    SRs this version replaces (Predecessor Documents Sequence).
    """
    analysed = sorted(sources)
    in_study = [uid for uid in analysed if str(sources[uid].StudyInstanceUID) == target_study_uid]
    if not in_study:
        raise ValueError(f'No analysed instance belongs to study "{target_study_uid}".')
    groups: list[PlanarROIMeasurementsAndQualitativeEvaluations | MeasurementsAndQualitativeEvaluations] = []
    for r in case.radiographs:
        if str(sources[r.sop_instance_uid].StudyInstanceUID) != target_study_uid:
            continue
        groups += [head_group(head, r, producer, r.view.value if r.view else "image") for head in r.heads]
        if not r.heads and r.rows and r.columns:
            groups.append(not_found_group(r, producer))
    groups += [hip_group(hip, case, producer, target_study_uid) for hip in case.hips]
    if not groups:  # not even an image size to point at
        groups = [not_evaluated_group(target_study_uid, producer)]
    report = MeasurementReport(
        observation_context=producer.observer(),
        procedure_reported=codes.PLAIN_XRAY_OF_HIP,
        imaging_measurements=groups,
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    report[0].ContentSequence.append(_remarks(case, producer))
    first = sources[in_study[0]]
    evidence = [evidence_dataset(sources[uid]) for uid in [in_study[0], *(u for u in analysed if u != in_study[0])]]
    return ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=derived_uid("sr-series", target_study_uid, producer.weights_sha256),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid("sr", target_study_uid, producer.weights_sha256, *analysed, version),
        instance_number=version,
        manufacturer=MANUFACTURER,
        is_complete=True,
        previous_versions=list(previous) or None,
        contributing_equipment=[producer.equipment()],
        coding_schemes=[codes.SCHEME_IDENTIFICATION],
        series_description="AVN-net report",
        manufacturer_model_name=producer.model_name,
        software_versions=producer.software_versions,
        specific_character_set=first.get("SpecificCharacterSet"),
    )
