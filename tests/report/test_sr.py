"""The TID 1500 SR: valid for dicom3tools, readable by dcmtk, and saying what DESIGN §6 asks."""

from __future__ import annotations

import dataclasses
import subprocess
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from avn_node.findings import CaseFinding, RadiographFinding, fuse_hips
from avn_node.ground_truth import FicatStage
from avn_node.report import codes
from avn_node.report.identity import Producer
from avn_node.report.results import build_result_sets
from avn_node.report.sr import _percent, build_sr
from tests.conftest import dciodvfy_errors, require_tool
from tests.report.conftest import MODEL


def _save(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def _dsrdump(path: Path) -> str:
    return subprocess.run([require_tool("dsrdump"), str(path)], capture_output=True, text=True, check=True,
                          timeout=60).stdout  # fmt: skip


def _sr(case_and_sources, version: int = 1, previous=()) -> Dataset:
    case, sources = case_and_sources
    study = str(next(iter(sources.values())).StudyInstanceUID)
    return build_sr(case, sources, study, Producer.from_model(MODEL), version, previous)


def test_sr_passes_dciodvfy_without_errors(one_study_case, tmp_path: Path):
    assert dciodvfy_errors(_save(_sr(one_study_case), tmp_path / "sr.dcm")) == []


def test_sr_has_one_group_per_head_per_radiograph_and_one_per_hip(one_study_case, tmp_path: Path):
    case, _ = one_study_case
    tree = _dsrdump(_save(_sr(one_study_case), tmp_path / "sr.dcm"))
    identifiers = [line.split('="')[1].rstrip('">') for line in tree.splitlines() if '"Tracking Identifier")=' in line]
    expected = [f"FH-{h.side.value} {r.view.value}" for r in case.radiographs for h in r.heads]
    expected += [f"FH-{hip.side.value} case" for hip in case.hips]
    assert identifiers == expected
    assert tree.count('"Image Region")=(POLYLINE') == len(expected)  # every group has a region (OHIF needs it)
    assert tree.count('"Finding Site")=(2812003,SCT,"Head of Femur")') == len(expected)


def test_sr_lists_probabilities_in_percent_presence_and_stages_first_then_likeliest_note(one_study_case, tmp_path):
    case, _ = one_study_case
    head = case.radiographs[0].heads[0]
    tree = _dsrdump(_save(_sr(one_study_case), tmp_path / "sr.dcm"))
    group = tree.split('"Tracking Identifier")=')[1]
    numbers = [line.split('NUM:(,,"')[1].split('")')[0] for line in group.splitlines() if "NUM:(" in line]
    assert numbers[:4] == ["AVN probability", "Ficat II probability", "Ficat III probability", "Ficat IV probability"]
    assert len(numbers) == 4 + 7
    likeliest = max(head.note_probabilities, key=head.note_probabilities.get)
    assert numbers[4] == codes.NOTE_PROBABILITY[likeliest].meaning
    assert '(%,UCUM,"%")' in group


@pytest.mark.parametrize(("p", "shown"), [(0.91234, 91.23), (0.5, 50.0), (1.0, 100.0), (3e-7, 0.0001), (0.0, 0.0001)])
def test_percentages_keep_four_digits_and_are_never_zero(p: float, shown: float):
    assert _percent(p) == pytest.approx(shown)


def test_sr_states_stage_presence_notes_and_laterality(one_study_case):
    case, _ = one_study_case
    sr = _sr(one_study_case)
    head = case.radiographs[0].heads[0]
    group = sr.ContentSequence[-2].ContentSequence[0]  # Imaging Measurements → first group
    items = {item.ConceptNameCodeSequence[0].CodeMeaning: item for item in group.ContentSequence}
    assert items["Tracking Identifier"].TextValue == f"FH-{head.side.value} {case.radiographs[0].view.value}"
    stage = items["Ficat stage"].ConceptCodeSequence[0].CodeMeaning
    assert stage == {"absence": "No AVN or Ficat I", "II": "Ficat II", "III": "Ficat III", "IV": "Ficat IV"}[head.stage]
    presence = items["AVN of femoral head"].ConceptCodeSequence[0].CodeMeaning
    assert presence == ("Absent" if head.stage == FicatStage.ABSENCE else "Present")
    site = items["Finding Site"]
    assert site.ContentSequence[0].ConceptCodeSequence[0].CodeMeaning == {"L": "Left", "R": "Right"}[head.side]


def test_sr_declares_private_scheme_and_carries_intended_use_text(one_study_case):
    sr = _sr(one_study_case)
    assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == ["99AVNNODE"]
    remarks = sr.ContentSequence[-1]
    assert remarks.ConceptNameCodeSequence[0].CodeMeaning == "Qualitative Evaluations"
    assert "NOT FOR DIAGNOSTIC USE" in remarks.ContentSequence[0].TextValue


def test_sr_names_algorithm_and_processing_equipment(one_study_case):
    sr = _sr(one_study_case)
    (equipment,) = [e for e in sr.ContributingEquipmentSequence if e.Manufacturer == "avn-node project"]
    assert equipment.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"
    assert MODEL.version in " ".join(equipment.SoftwareVersions)
    dump = str(sr)
    assert "Artificial Intelligence" in dump and MODEL.name in dump


def test_sr_copies_patient_and_study_of_its_sources(one_study_case):
    _, sources = one_study_case
    sr = _sr(one_study_case)
    source = next(iter(sources.values()))
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                    "AccessionNumber", "StudyDate", "StudyID"):  # fmt: skip
        assert sr.get(keyword) == source.get(keyword), keyword
    assert sr.get("SpecificCharacterSet") == source.get("SpecificCharacterSet")


def test_sr_uid_is_deterministic_and_new_version_names_predecessor(one_study_case, tmp_path: Path):
    first, again = _sr(one_study_case), _sr(one_study_case)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    second = _sr(one_study_case, version=2, previous=[first])
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    referenced = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert referenced.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert dciodvfy_errors(_save(second, tmp_path / "v2.dcm")) == []


def test_two_study_case_gets_a_result_set_per_study_citing_the_other_study(two_study_case, tmp_path: Path):
    case, sources = two_study_case
    sets = build_result_sets(case, sources)
    studies = {str(ds.StudyInstanceUID) for ds in sources.values()}
    assert {s.study_instance_uid for s in sets} == studies
    for result in sets:
        sr = result.sr
        assert sr.StudyInstanceUID == result.study_instance_uid
        current = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                   for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}  # fmt: skip
        other = {i.ReferencedSOPInstanceUID for s in sr.PertinentOtherEvidenceSequence
                 for se in s.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}  # fmt: skip
        assert current | other == set(sources)
        assert all(str(sources[uid].StudyInstanceUID) == result.study_instance_uid for uid in current)
        assert len(result.captures) == 1  # the study's own radiograph only
        for i, ds in enumerate(result.datasets()):
            assert ds.StudyInstanceUID == result.study_instance_uid
            assert dciodvfy_errors(_save(ds, tmp_path / f"{result.study_instance_uid}-{i}.dcm")) == []


def _items(ds: Dataset) -> list[Dataset]:
    """Every content item under ``ds``, depth first."""
    return [x for item in ds.get("ContentSequence", []) for x in (item, *_items(item))]


def _unread(finding: RadiographFinding, error: str) -> RadiographFinding:
    return RadiographFinding(
        **{
            k: getattr(finding, k)
            for k in (
                "sop_instance_uid",
                "study_instance_uid",
                "series_instance_uid",
                "sop_class_uid",
                "rows",
                "columns",
            )
        },  # fmt: skip
        view=None,
        ap_probability=float("nan"),
        heads=(),
        error=error,
    )


@pytest.mark.parametrize("error", ["", "pixel data cannot be decoded: RuntimeError: bad JPEG"])
def test_sr_says_when_an_image_shows_no_head_or_cannot_be_decoded(one_study_case, tmp_path: Path, error: str):
    case, sources = one_study_case
    radiographs = (_unread(case.radiographs[0], error), *case.radiographs[1:])
    changed = CaseFinding(radiographs=radiographs, hips=fuse_hips(radiographs), model=case.model)
    sr = _sr((changed, sources))
    texts = [item.TextValue for item in sr.ContentSequence[-1].ContentSequence]
    expected = f"could not be analysed: {error}" if error else "No femoral head was found"
    assert any(expected in t and radiographs[0].sop_instance_uid in t for t in texts)
    assert dciodvfy_errors(_save(sr, tmp_path / "sr.dcm")) == []
    tree = _dsrdump(tmp_path / "sr.dcm")
    assert tree.count('"Tracking Identifier")="FH not found image"') == 1
    assert tree.count('"Image Region")=(POLYLINE') == tree.count('"Tracking Identifier")=')  # OHIF needs each
    assert pydicom.dcmread(tmp_path / "sr.dcm").SOPInstanceUID == sr.SOPInstanceUID


def test_sr_for_case_without_any_head_marks_each_whole_image_not_evaluated(one_study_case, tmp_path: Path):
    case, sources = one_study_case
    radiographs = tuple(_unread(r, "") for r in case.radiographs)
    empty = CaseFinding(radiographs=radiographs, hips=(), model=case.model)
    sr = _sr((empty, sources))
    tree = _dsrdump(_save(sr, tmp_path / "sr.dcm"))
    assert tree.count('"Tracking Identifier")="FH not found image"') == len(radiographs)
    assert tree.count('(373121007,SCT,"Not Evaluated")') == len(radiographs)
    assert tree.count('"Image Region")=(POLYLINE') == len(radiographs)
    regions = [item.GraphicData for item in _items(sr) if item.ValueType == "SCOORD"]
    assert [list(g) for g in regions] == [[0, 0, r.columns, 0, r.columns, r.rows, 0, r.rows, 0, 0] for r in radiographs]
    assert tree.count("No femoral head was found") == len(radiographs)
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []


def test_sr_for_study_without_image_size_falls_back_to_a_study_level_group(one_study_case, tmp_path: Path):
    case, sources = one_study_case
    radiographs = tuple(dataclasses.replace(_unread(r, "no Rows"), rows=0, columns=0) for r in case.radiographs)
    sr = _sr((CaseFinding(radiographs=radiographs, hips=(), model=case.model), sources))
    tree = _dsrdump(_save(sr, tmp_path / "sr.dcm"))
    assert '"Tracking Identifier")="FH not found"' in tree and '(373121007,SCT,"Not Evaluated")' in tree
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []


def _with_character_set(sources: dict[str, Dataset], charset: str, name: str) -> dict[str, Dataset]:
    """Copies of ``sources`` as a modality would write them: ``name`` encoded in ``charset``."""
    out = {}
    for uid, ds in sources.items():
        copy = Dataset(ds)
        copy.file_meta = ds.file_meta
        copy.SpecificCharacterSet, copy.PatientName = charset, name
        buffer = BytesIO()
        copy.save_as(buffer, enforce_file_format=True)
        out[uid] = pydicom.dcmread(BytesIO(buffer.getvalue()))
    return out


@pytest.mark.parametrize(
    ("charset", "name", "kept"),
    [
        ("ISO 2022 IR 87", "Yamada^Tarou=山田太郎", "Yamada^Tarou=山田太郎"),  # a code extension given alone
        ("ISO_IR 999", "Doe^Jane", "Doe^Jane"),  # unknown: read with the default repertoire
        ("ISO_IR 100", "Müller^Jürgen", "Müller^Jürgen"),  # written as declared
    ],
)
def test_results_are_built_for_any_character_set_and_keep_the_patient_name(
    one_study_case, charset: str, name: str, kept: str
):
    case, sources = one_study_case
    sets = build_result_sets(case, _with_character_set(sources, charset, name))
    for ds in sets[0].datasets():
        buffer = BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        back = pydicom.dcmread(BytesIO(buffer.getvalue()))
        assert str(back.PatientName) == kept
        assert back.SpecificCharacterSet == ("ISO_IR 100" if charset == "ISO_IR 100" else "ISO_IR 192")
