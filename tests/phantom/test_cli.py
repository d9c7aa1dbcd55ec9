"""``avn-node phantom`` as a user runs it: a subprocess, one test per option."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SMALL = ["--size-range", "500", "600", "--workers", "1"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "avn_node", "phantom", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_phantom_writes_studies_and_ground_truth(tmp_path: Path) -> None:
    out = _run("--out", str(tmp_path), "--studies", "2", "--seed", "4", *SMALL)
    assert out.returncode == 0, out.stderr
    truth = json.loads((tmp_path / "ground_truth.json").read_text(encoding="utf-8"))
    assert truth["generator"]["seed"] == 4
    assert {r["patient_id"] for r in truth["radiographs"]} == {"P0001", "P0002"}
    assert all((tmp_path / r["file"]).is_file() for r in truth["radiographs"])


def test_cli_phantom_preview_writes_a_contact_sheet_png(tmp_path: Path) -> None:
    out = _run("--out", str(tmp_path), "--studies", "3", "--preview", *SMALL)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_phantom_stage_mix_changes_the_stages(tmp_path: Path) -> None:
    out = _run(
        "--out",
        str(tmp_path),
        "--studies",
        "3",
        "--stage-mix",
        "absence=0,II=0,III=0,IV=1",
        "--bilateral-rate",
        "1",
        *SMALL,
    )
    assert out.returncode == 0, out.stderr
    truth = json.loads((tmp_path / "ground_truth.json").read_text(encoding="utf-8"))
    assert {h["stage"] for r in truth["radiographs"] for h in r["heads"]} == {"IV"}


def test_cli_phantom_syntax_mix_selects_the_transfer_syntax(tmp_path: Path) -> None:
    import pydicom

    out = _run("--out", str(tmp_path), "--studies", "2", "--syntax-mix", "rle=1", *SMALL)
    assert out.returncode == 0, out.stderr
    syntaxes = {
        pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID for f in tmp_path.rglob("*.dcm")
    }
    assert syntaxes == {"1.2.840.10008.1.2.5"}


def test_cli_phantom_shape_mix_fl_only_writes_only_frog_legs(tmp_path: Path) -> None:
    out = _run("--out", str(tmp_path), "--studies", "2", "--shape-mix", "fl=1", "--fl-unilateral-rate", "1", *SMALL)
    assert out.returncode == 0, out.stderr
    truth = json.loads((tmp_path / "ground_truth.json").read_text(encoding="utf-8"))
    assert [(r["view"], len(r["heads"])) for r in truth["radiographs"]] == [("FL", 1), ("FL", 1)]


def test_cli_phantom_exits_2_naming_an_impossible_bilateral_rate(tmp_path: Path) -> None:
    out = _run("--out", str(tmp_path), "--studies", "1", "--bilateral-rate", "0.1")
    assert out.returncode == 2
    assert "--bilateral-rate" in out.stderr


def test_cli_phantom_exits_2_naming_an_unknown_syntax(tmp_path: Path) -> None:
    out = _run("--out", str(tmp_path), "--studies", "1", "--syntax-mix", "mpeg=1")
    assert out.returncode == 2
    assert "--syntax-mix" in out.stderr


def test_cli_phantom_exits_2_on_a_malformed_stage_mix(tmp_path: Path) -> None:
    out = _run("--out", str(tmp_path), "--studies", "1", "--stage-mix", "II")
    assert out.returncode == 2
    assert "--stage-mix" in out.stderr
