"""Pixel pipeline on real DICOM files (../shared/real-dicom, see its README for sources and licences)."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest

from avn_node.models.pixels import PixelDecodeError, load_radiograph

REAL = Path(__file__).resolve().parents[1] / "data" / "real-dicom"  # openly licensed, see its README
REAL_FILES = sorted(REAL.rglob("*.dcm"))
BROKEN = {"RG2_JPLY.dcm"}  # invalid JPEG scan header in the source file


def _uncompressed() -> pydicom.Dataset:
    ds = pydicom.dcmread(REAL / "nema_wg04_rg2" / "RG2_UNC_derived_from_JPLL.dcm")
    for keyword in ("WindowCenter", "WindowWidth", "VOILUTSequence"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def test_real_files_are_present():
    assert len(REAL_FILES) == 26


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: p.name)
def test_load_radiograph_decodes_real_file_or_names_the_failure(path: Path):
    if path.name in BROKEN:
        with pytest.raises(PixelDecodeError, match="cannot be decoded"):
            load_radiograph(path)
        return
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    rad = load_radiograph(path)
    assert rad.image.shape == (ds.Rows, ds.Columns)
    assert rad.image.dtype == np.float32
    assert 0.0 <= rad.image.min() and rad.image.max() <= 1.0
    assert rad.image.std() > 0.05  # not flat: the content survived


def test_load_radiograph_gives_same_image_for_every_lossless_encoding():
    names = ["RG2_JLSL.dcm", "RG2_JPLL.dcm", "RG2_UNC_derived_from_JPLL.dcm"]
    images = [load_radiograph(REAL / "nema_wg04_rg2" / n).image for n in names]
    for image in images[1:]:
        np.testing.assert_array_equal(image, images[0])


def test_load_radiograph_inverts_monochrome1():
    ds = _uncompressed()
    inverted = copy.deepcopy(ds)
    arr = ds.pixel_array
    inverted.PixelData = (arr.max() - arr).astype(arr.dtype).tobytes()
    inverted.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_allclose(load_radiograph(inverted).image, load_radiograph(ds).image, atol=1e-6)


def test_load_radiograph_applies_window():
    ds = _uncompressed()
    windowed = copy.deepcopy(ds)
    windowed.WindowCenter, windowed.WindowWidth = 200, 100  # a narrow window saturates most pixels
    plain, narrow = load_radiograph(ds).image, load_radiograph(windowed).image
    assert (narrow == 1.0).mean() > (plain == 1.0).mean() + 0.2


def test_load_radiograph_turns_mirrored_image_to_display_orientation():
    ds = _uncompressed()
    ds.PatientOrientation = ["L", "F"]
    mirrored = copy.deepcopy(ds)
    mirrored.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).tobytes()
    mirrored.PatientOrientation = ["R", "F"]
    standard, flipped = load_radiograph(ds), load_radiograph(mirrored)
    assert not standard.mirrored and flipped.mirrored and flipped.orientation_known
    np.testing.assert_array_equal(flipped.image, standard.image)
    assert flipped.to_stored((10.0, 5.0, 30.0, 25.0)) == (ds.Columns - 30.0, 5.0, ds.Columns - 10.0, 25.0)


def test_load_radiograph_without_pixel_data_names_the_reason():
    ds = _uncompressed()
    del ds.PixelData
    with pytest.raises(PixelDecodeError, match="no Pixel Data"):
        load_radiograph(ds)


def test_load_radiograph_of_non_dicom_names_the_reason(tmp_path: Path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    with pytest.raises(PixelDecodeError, match="not a readable DICOM file"):
        load_radiograph(junk)


def test_load_radiograph_of_an_image_too_small_for_a_hip_names_its_size():
    ds = _uncompressed()
    ds.Rows, ds.Columns = 1, 1
    ds.PixelData = b"\x00\x10"
    with pytest.raises(PixelDecodeError, match="1 x 1 pixels is too small"):
        load_radiograph(ds)
