"""Phantom files are valid DICOM that real tools and pydicom read."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from avn_node.phantom.generate import PhantomOptions, generate, plan_patient, render_radiograph
from tests.conftest import PHANTOM_SET_OPTIONS, dciodvfy_errors, require_tool


def test_phantom_files_pass_dciodvfy_without_errors(phantom_set: Path) -> None:
    files = sorted(phantom_set.rglob("*.dcm"))
    assert len(files) >= 12
    problems = {str(f.relative_to(phantom_set)): e for f in files if (e := dciodvfy_errors(f))}
    assert problems == {}


def test_phantom_writes_every_transfer_syntax_and_pydicom_decodes_each(phantom_set: Path) -> None:
    seen = {}
    for f in sorted(phantom_set.rglob("*.dcm")):
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array
        assert arr.shape == (ds.Rows, ds.Columns)
        assert int(arr.max()) < 2**ds.BitsStored
        assert arr.std() > 0
        seen.setdefault(ds.file_meta.TransferSyntaxUID, f)
    assert set(seen) == {ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1, RLELossless}


def test_phantom_compression_is_lossless(phantom_set: Path) -> None:
    """Decoding a compressed file gives back exactly the pixels that were rendered."""
    checked: set[str] = set()
    for index in range(PHANTOM_SET_OPTIONS.studies):
        plan = plan_patient(PHANTOM_SET_OPTIONS, index)
        for item in plan.radiographs:
            ds = pydicom.dcmread(phantom_set / item.relpath)
            syntax = ds.file_meta.TransferSyntaxUID
            if syntax == ExplicitVRLittleEndian or syntax in checked:
                continue
            radiograph, _ = render_radiograph(plan, item)
            np.testing.assert_array_equal(ds.pixel_array, radiograph.pixels)
            checked.add(syntax)
    assert len(checked) == 4


def test_phantom_dicom_has_patient_study_and_equipment_modules(phantom_set: Path) -> None:
    for f in sorted(phantom_set.rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert ds.SOPClassUID in (DigitalXRayImageStorageForPresentation, ComputedRadiographyImageStorage)
        assert ds.Modality == ("DX" if ds.SOPClassUID == DigitalXRayImageStorageForPresentation else "CR")
        for keyword in (
            "PatientName",
            "PatientID",
            "PatientSex",
            "PatientBirthDate",
            "StudyDate",
            "StudyTime",
            "AccessionNumber",
            "Manufacturer",
            "ImagerPixelSpacing",
            "PatientOrientation",
        ):
            assert keyword in ds, keyword
        assert list(ds.PatientOrientation)[1] == "F" and list(ds.PatientOrientation)[0] in ("L", "R")
        assert "WindowCenter" in ds or "VOILUTSequence" in ds
        if ds.Modality == "DX":
            assert (ds.RescaleSlope, ds.RescaleIntercept) == (1, 0)
            assert ds.PresentationIntentType == "FOR PRESENTATION"


def test_phantom_patient_names_survive_their_character_set(phantom_set: Path) -> None:
    for f in sorted(phantom_set.rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        name = str(ds.PatientName)
        if any(ord(c) > 127 for c in name):
            assert ds.SpecificCharacterSet in ("ISO_IR 100", "ISO_IR 192")
            raw = ds["PatientName"].value.original_string
            assert raw.decode("latin-1" if ds.SpecificCharacterSet == "ISO_IR 100" else "utf-8") == name


@pytest.mark.slow
def test_phantom_default_detector_is_1500_to_3000_pixels_at_0_1_to_0_2_mm(tmp_path: Path) -> None:
    generate(PhantomOptions(studies=2, seed=3, shape_mix={"ap+fl": 1.0}), tmp_path, workers=2)
    for f in sorted(tmp_path.rglob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert 1500 <= ds.Rows <= 3000 and 1500 <= ds.Columns <= 3000
        assert all(0.1 <= float(v) <= 0.2 for v in ds.ImagerPixelSpacing)
        assert 12 <= ds.BitsStored <= 16
        assert dciodvfy_errors(f) == []


DCMTK_DECODERS = {JPEGLosslessSV1: "dcmdjpeg", JPEGLSLossless: "dcmdjpls", RLELossless: "dcmdrle"}


def test_phantom_compressed_files_decode_identically_with_dcmtk(phantom_set: Path, tmp_path: Path) -> None:
    """dcmtk's own decoders read our JPEG Lossless, JPEG-LS and RLE files to the same pixels as pydicom."""
    done = set()
    for f in sorted(phantom_set.rglob("*.dcm")):
        syntax = pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID
        if syntax not in DCMTK_DECODERS or syntax in done:
            continue
        out = tmp_path / f"{len(done)}.dcm"
        subprocess.run(
            [require_tool(DCMTK_DECODERS[syntax]), str(f), str(out)], check=True, capture_output=True, timeout=120
        )
        np.testing.assert_array_equal(pydicom.dcmread(out).pixel_array, pydicom.dcmread(f).pixel_array)
        done.add(syntax)
    assert done == set(DCMTK_DECODERS)
