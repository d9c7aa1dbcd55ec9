"""CAM and summary secondary captures: valid, labelled as derived, the banner, MONOCHROME1 the right way round."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from avn_node.report.capture import build_capture
from avn_node.report.identity import Producer
from avn_node.report.summary import build_summary
from tests.conftest import dciodvfy_errors
from tests.report.conftest import MODEL

PRODUCER = Producer.from_model(MODEL)


def _first(case_and_sources):
    case, sources = case_and_sources
    r = case.radiographs[0]
    return r, sources[r.sop_instance_uid]


def test_capture_passes_dciodvfy_and_is_marked_derived(one_study_case, tmp_path: Path):
    r, source = _first(one_study_case)
    sc = build_capture(source, r, str(source.StudyInstanceUID), PRODUCER)
    sc.save_as(tmp_path / "sc.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "sc.dcm") == []
    assert sc.Modality == "OT" and sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.DerivationDescription and sc.PatientID == source.PatientID
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.pixel_array.shape[2] == 3


def test_capture_shows_banner_while_demo_weights_are_loaded(one_study_case):
    r, source = _first(one_study_case)
    demo = build_capture(source, r, str(source.StudyInstanceUID), PRODUCER).pixel_array
    site = Producer(PRODUCER.model_name, PRODUCER.model_version, PRODUCER.weights_sha256, demo=False)
    clinical = build_capture(source, r, str(source.StudyInstanceUID), site).pixel_array
    top_demo, top_site = demo[:5].reshape(-1, 3).mean(0), clinical[:5].reshape(-1, 3).mean(0)
    assert top_demo[0] > 150 and top_demo[1] < 40  # red bar
    assert not (top_site[0] > 150 and top_site[1] < 40)


def test_capture_draws_heat_map_where_the_cam_peaks(one_study_case):
    r, source = _first(one_study_case)
    pixels = build_capture(source, r, str(source.StudyInstanceUID), PRODUCER).pixel_array.astype(int)
    colour = np.abs(pixels[..., 0] - pixels[..., 2])  # grey radiograph: 0; heat map and labels: > 0
    scale = pixels.shape[1] / source.Columns
    x0, y0, x1, y1 = (c * scale for c in r.heads[0].cam_box)
    peak_x, peak_y = round(x0 + (x1 - x0) * 32.5 / 64), round(y0 + (y1 - y0) * 24.5 / 64)  # the fixture's CAM peak
    assert colour[peak_y - 1 : peak_y + 2, peak_x - 1 : peak_x + 2].mean() > 60
    assert np.median(colour) == 0


def test_capture_shows_monochrome1_source_bone_bright(one_study_case):
    r, shared = _first(one_study_case)
    source = copy.deepcopy(shared)  # the session's dataset stays as read: other tests use it
    if source.PhotometricInterpretation != "MONOCHROME2" or source.file_meta.TransferSyntaxUID.is_compressed:
        source.decompress(generate_instance_uid=False)
        source.PhotometricInterpretation = "MONOCHROME2"
    inverted = copy.deepcopy(source)
    arr = source.pixel_array
    inverted.PixelData = (arr.max() - arr).astype(arr.dtype).tobytes()
    inverted.PhotometricInterpretation = "MONOCHROME1"
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence"):
        for ds in (source, inverted):
            if keyword in ds:
                delattr(ds, keyword)
    study = str(source.StudyInstanceUID)
    plain = build_capture(source, r, study, PRODUCER).pixel_array.astype(int)
    flipped = build_capture(inverted, r, study, PRODUCER).pixel_array.astype(int)
    assert np.abs(plain - flipped).mean() < 1.0


def test_capture_uid_depends_on_source_image_not_on_version(one_study_case):
    case, sources = one_study_case
    study = str(next(iter(sources.values())).StudyInstanceUID)
    uids = [build_capture(sources[r.sop_instance_uid], r, study, PRODUCER).SOPInstanceUID for r in case.radiographs]
    again = [build_capture(sources[r.sop_instance_uid], r, study, PRODUCER).SOPInstanceUID for r in case.radiographs]
    assert uids == again and len(set(uids)) == len(uids)


def test_summary_passes_dciodvfy_and_references_every_analysed_image(one_study_case, tmp_path: Path):
    case, sources = one_study_case
    reference: Dataset = next(iter(sources.values()))
    sc = build_summary(case, reference, str(reference.StudyInstanceUID), PRODUCER, sorted(sources), 1)
    sc.save_as(tmp_path / "summary.dcm", enforce_file_format=True)
    assert dciodvfy_errors(tmp_path / "summary.dcm") == []
    assert {i.ReferencedSOPInstanceUID for i in sc.SourceImageSequence} == set(sources)
    assert sc.BurnedInAnnotation == "YES"
    v2 = build_summary(case, reference, str(reference.StudyInstanceUID), PRODUCER, sorted(sources), 2)
    assert v2.SOPInstanceUID != sc.SOPInstanceUID and v2.SeriesInstanceUID == sc.SeriesInstanceUID


def test_captures_keep_the_study_description_and_patient_id_issuer_of_their_source(one_study_case):
    """An archive that takes a study's tags from its latest instance keeps them when the results arrive."""
    case, sources = one_study_case
    r, source = _first(one_study_case)
    assert source.StudyDescription and source.IssuerOfPatientID
    capture = build_capture(source, r, str(source.StudyInstanceUID), PRODUCER)
    summary = build_summary(case, source, str(source.StudyInstanceUID), PRODUCER, sorted(sources), 1)
    for sc in (capture, summary):
        assert sc.StudyDescription == source.StudyDescription
        assert sc.IssuerOfPatientID == source.IssuerOfPatientID


def test_capture_of_a_source_whose_instance_number_is_not_an_integer_is_numbered_1(one_study_case):
    r, source = _first(one_study_case)
    odd = copy.deepcopy(source)
    # as read from a modality's file: pydicom warns and keeps the string
    odd[0x00200013] = RawDataElement(Tag(0x00200013), "IS", 2, b"A1", 0, True, True)
    assert odd.get("InstanceNumber") == "A1"
    assert build_capture(odd, r, str(odd.StudyInstanceUID), PRODUCER).InstanceNumber == 1
