"""A head refused as out of distribution: its SR group says "not evaluated" and why, the captures say so too."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import pytest
from PIL import ImageDraw
from pydicom.dataset import Dataset

from avn_node.findings import OUTSIDE_EXPERIENCE, CaseFinding, RadiographFinding, fuse_hips
from avn_node.report import capture, summary
from avn_node.report.identity import Producer
from avn_node.report.sr import build_sr
from tests.conftest import dciodvfy_errors, require_tool
from tests.report.conftest import MODEL

PRODUCER = Producer.from_model(MODEL)
REASON = (
    f"AVN not evaluated, {OUTSIDE_EXPERIENCE}: the femoral head is unlike the training heads "
    "(out-of-distribution score 7.50 above the threshold 1.00, set at a 2 % false-flag rate)."
)


def _refuse(r: RadiographFinding, which: int | None = None) -> RadiographFinding:
    """``r`` with head ``which`` (default: all) refused."""
    heads = tuple(
        dataclasses.replace(h, out_of_distribution=True, ood_score=7.5, ood_reason=REASON)
        if which is None or i == which
        else h
        for i, h in enumerate(r.heads)
    )
    return dataclasses.replace(r, heads=heads, out_of_distribution=True, ood_score=7.5)


def _case(case: CaseFinding, radiographs: tuple[RadiographFinding, ...]) -> CaseFinding:
    return CaseFinding(radiographs=radiographs, hips=fuse_hips(radiographs), model=case.model)


def _sr_tree(case: CaseFinding, sources: dict[str, Dataset], path: Path) -> str:
    study = str(next(iter(sources.values())).StudyInstanceUID)
    build_sr(case, sources, study, PRODUCER, 1).save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    dump = subprocess.run([require_tool("dsrdump"), "+Pl", str(path)], capture_output=True, text=True, check=True)
    return dump.stdout


def _group(tree: str, identifier: str) -> str:
    """The dsrdump lines of the measurement group with this tracking identifier."""
    groups = tree.split('"Tracking Identifier")=')
    (group,) = [g for g in groups[1:] if g.startswith(f'"{identifier}"')]
    return group.split("CONTAINER:(")[0]  # up to the next group or the remarks


def test_sr_of_a_refused_head_keeps_its_box_says_not_evaluated_with_the_reason_and_asserts_no_stage(
    one_study_case, tmp_path: Path
):
    case, sources = one_study_case
    r = case.radiographs[0]
    refused = _case(case, (_refuse(r, 0), *case.radiographs[1:]))
    tree = _sr_tree(refused, sources, tmp_path / "sr.dcm")
    head = r.heads[0]
    group = _group(tree, f"FH-{head.side.value} {r.view.value}")
    assert '(373121007,SCT,"Not Evaluated")' in group
    assert '"Reason AVN not evaluated")=(AVN-005,99AVNNODE,"Outside the model\'s experience")' in group
    assert f'TEXT:(,,"Comment")="{REASON}"' in group
    assert '"Image Region")=(POLYLINE' in group and '"Head of Femur"' in group
    for asserted in ("Ficat stage", "NUM:", '"Present"', '"Absent"', "probability"):
        assert asserted not in group, asserted
    other = r.heads[1] if len(r.heads) > 1 else case.radiographs[1].heads[0]
    view = r.view.value if len(r.heads) > 1 else case.radiographs[1].view.value
    assert "Ficat stage" in _group(tree, f"FH-{other.side.value} {view}")  # the others are read as before


def test_sr_of_a_hip_whose_every_head_was_refused_says_not_evaluated_at_case_level(one_study_case, tmp_path: Path):
    case, sources = one_study_case
    refused = _case(case, tuple(_refuse(r) for r in case.radiographs))
    assert refused.hips and not any(h.evaluated for h in refused.hips)
    tree = _sr_tree(refused, sources, tmp_path / "sr.dcm")
    for hip in refused.hips:
        group = _group(tree, f"FH-{hip.side.value} case")
        assert '(373121007,SCT,"Not Evaluated")' in group and "No radiograph of this hip could be evaluated" in group
        assert "Ficat stage" not in group and "NUM:" not in group
    assert "FH not found" not in tree  # heads were found; they were refused, not missed
    assert tree.count('"Image Region")=(POLYLINE') == tree.count('"Tracking Identifier")=')  # OHIF needs each


@pytest.fixture
def drawn_text(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every string the captures draw."""
    texts: list[str] = []
    original = ImageDraw.ImageDraw.text

    def record(self, xy, text, *args, **kwargs):  # noqa: ANN001, ANN202
        texts.append(str(text))
        return original(self, xy, text, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", record)
    return texts


def test_capture_shows_a_refused_head_as_outside_the_models_experience_without_stage_or_heat_map(
    one_study_case, drawn_text: list[str]
):
    case, sources = one_study_case
    r = _refuse(case.radiographs[0])
    pixels = capture.render_overlay(sources[r.sop_instance_uid], r, demo=False).astype(int)
    assert OUTSIDE_EXPERIENCE in drawn_text and any("AVN not evaluated" in t for t in drawn_text)
    assert not any("%" in t or "Ficat" in t or "no AVN" in t for t in drawn_text)
    scale = pixels.shape[1] / r.columns
    x0, y0, x1, y1 = (round(c * scale) for c in r.heads[0].cam_box)
    inside = pixels[y0 + 8 : y1 - 8, x0 + 8 : x1 - 8]  # within the box, clear of its outline
    assert abs(inside[..., 0] - inside[..., 2]).mean() < 1  # grey: no heat map


def test_summary_shows_a_refused_hip_as_not_evaluated(one_study_case, drawn_text: list[str]):
    case, _ = one_study_case
    refused = _case(case, tuple(_refuse(r) for r in case.radiographs))
    summary.render_summary(refused, demo=False)
    assert drawn_text.count("not evaluated") == len(summary.table_rows(refused))
    assert OUTSIDE_EXPERIENCE in drawn_text
    assert not any(t.endswith(" %") for t in drawn_text)


def test_a_capture_showing_a_refusal_never_shares_its_uid_with_one_that_does_not(one_study_case):
    case, sources = one_study_case
    r = case.radiographs[0]
    source = sources[r.sop_instance_uid]
    study = str(source.StudyInstanceUID)
    plain = capture.build_capture(source, r, study, PRODUCER).SOPInstanceUID
    assert capture.build_capture(source, r, study, PRODUCER).SOPInstanceUID == plain
    assert capture.build_capture(source, _refuse(r), study, PRODUCER).SOPInstanceUID != plain
