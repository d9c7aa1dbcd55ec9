"""DX (For Presentation) and CR image objects of a phantom radiograph, encoded in the usual syntaxes.

Modules follow PS3.3 A.26 (Digital X-Ray Image IOD) and A.2 (Computed Radiography Image IOD). View
Position, Image Laterality and Body Part Examined are as unreliable as at real sites, on purpose.
Compression uses the field's encoders: OpenJPEG (JPEG 2000), CharLS (JPEG-LS), libjpeg-turbo via
imagecodecs (JPEG Lossless, Process 14 SV1) and pylibjpeg-rle (RLE).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
)

from avn_node import __version__
from avn_node.ground_truth import View
from avn_node.phantom.imaging import Acquisition, Radiograph

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "j2k": JPEG2000Lossless,
    "jpegls": JPEGLSLossless,
    "jpeg-lossless": JPEGLosslessSV1,
    "rle": RLELossless,
}
"""Names accepted by ``--syntax-mix`` and the transfer syntax each writes."""

MANUFACTURER = "avn-node phantom"

VIEW_CODES = {"AP": ("399348003", "SCT", "antero-posterior"), "LL": ("399352003", "SCT", "left lateral")}

ANATOMY = {
    "HIP": ("24136001", "SCT", "Hip joint"),
    "PELVIS": ("12921003", "SCT", "Pelvis"),
}


@dataclass(frozen=True)
class StudyInfo:
    """Patient and study attributes shared by the radiographs of one study."""

    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age_years: int
    charset: str | None
    study_uid: str
    study_date: dt.datetime
    accession: str
    study_id: str


@dataclass(frozen=True)
class ImageInfo:
    """Per-radiograph attributes: UIDs, numbering and the (unreliable) descriptive tags."""

    sop_uid: str
    series_uid: str
    series_number: int
    instance_number: int
    acquired: dt.datetime
    body_part: str
    view_position: str
    image_laterality: str
    syntax: str


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def build_dataset(study: StudyInfo, image: ImageInfo, acq: Acquisition, radiograph: Radiograph) -> Dataset:
    """The complete DX or CR dataset, pixels still uncompressed."""
    dx = acq.modality == "DX"
    sop_class = DigitalXRayImageStorageForPresentation if dx else ComputedRadiographyImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = image.sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "AVN_NODE_" + __version__.replace(".", "")[:6]
    if study.charset:
        ds.SpecificCharacterSet = study.charset
    ds.ImageType = ["ORIGINAL", "PRIMARY", ""] if dx else ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = image.sop_uid
    ds.StudyDate = study.study_date.strftime("%Y%m%d")
    ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = image.acquired.strftime("%Y%m%d")
    ds.StudyTime = study.study_date.strftime("%H%M%S")
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = image.acquired.strftime("%H%M%S")
    ds.AccessionNumber = study.accession
    ds.Modality = acq.modality
    if dx:
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = MANUFACTURER
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = ""
    ds.StationName = "PHANTOM1"
    ds.StudyDescription = "XR PELVIS AND HIPS"
    ds.SeriesDescription = {View.AP: "AP pelvis", View.FL: "Frog-leg lateral"}[acq.view]
    ds.ManufacturerModelName = "procedural phantom"
    ds.PatientName = study.patient_name
    ds.PatientID = study.patient_id
    ds.IssuerOfPatientID = "AVN-PHANTOM"
    ds.PatientBirthDate = study.birth_date
    ds.PatientSex = study.sex
    ds.PatientAge = f"{study.age_years:03d}Y"
    if image.body_part or not dx:
        ds.BodyPartExamined = image.body_part
    if image.view_position or not dx:
        ds.ViewPosition = image.view_position
    ds.DeviceSerialNumber = "0001"
    ds.SoftwareVersions = __version__
    ds.KVP = round(70 * acq.kv_scale, 1)
    ds.ExposureIndex = round(acq.photons, 1)
    ds.ImagerPixelSpacing = [round(acq.spacing_mm, 4)] * 2
    if dx:
        ds.DetectorType = "SCINTILLATOR"
        ds.PixelSpacing = [round(acq.spacing_mm, 4)] * 2
        ds.PixelSpacingCalibrationType = "GEOMETRY"
        ds.PixelSpacingCalibrationDescription = "imager pixel spacing, no magnification correction"
    ds.StudyInstanceUID = study.study_uid
    ds.SeriesInstanceUID = image.series_uid
    ds.StudyID = study.study_id
    ds.SeriesNumber = image.series_number
    ds.InstanceNumber = image.instance_number
    toward_columns = "R" if acq.mirrored else "L"
    ds.PatientOrientation = [toward_columns, "F"]
    ds.ImageLaterality = image.image_laterality
    if not dx and not image.image_laterality:
        del ds.ImageLaterality
        if image.body_part != "PELVIS":
            ds.Laterality = ""  # Type 2C unless the body part is known to be unpaired
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = acq.photometric
    ds.Rows, ds.Columns = acq.rows, acq.cols
    ds.BitsAllocated = 8 if acq.bits_stored == 8 else 16
    ds.BitsStored = acq.bits_stored
    ds.HighBit = acq.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    if acq.chain is not None and acq.chain.jpeg_quality:  # an export that went through lossy JPEG once
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    slope, intercept = acq.rescale
    if dx:
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1 if acq.photometric == "MONOCHROME1" else -1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
        ds.PresentationLUTShape = "INVERSE" if acq.photometric == "MONOCHROME1" else "IDENTITY"
        ds.AnatomicRegionSequence = Sequence([_code(*ANATOMY[image.body_part or "PELVIS"])])
        ds.AcquisitionContextSequence = Sequence([])
        ds.PositionerType = ""
        if image.view_position in VIEW_CODES:
            ds.ViewCodeSequence = Sequence([_code(*VIEW_CODES[image.view_position])])
    elif (slope, intercept) != (1.0, 0.0):
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = intercept, slope, "US"
    if acq.voi in ("window", "both"):
        ds.WindowCenter, ds.WindowWidth = radiograph.window
        ds.WindowCenterWidthExplanation = "NORMAL"
    if radiograph.voi_lut is not None:
        first, data = radiograph.voi_lut
        item = Dataset()
        item.LUTDescriptor = [len(data) % 65536, first, 16]
        item.LUTExplanation = "NORMAL"
        item.add_new(0x00283006, "OW", data.astype("<u2").tobytes())  # LUT Data
        ds.VOILUTSequence = Sequence([item])
    ds.PixelData = radiograph.pixels.tobytes()
    return ds


def encode(ds: Dataset, syntax: str, pixels: np.ndarray) -> None:
    """Re-encode ``ds`` in place into the transfer syntax called ``syntax`` (see TRANSFER_SYNTAXES)."""
    uid = TRANSFER_SYNTAXES[syntax]
    if uid == ExplicitVRLittleEndian:
        return
    if uid == JPEGLosslessSV1:
        frame = imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=int(ds.BitsStored))
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = uid
    else:
        ds.compress(uid, pixels, encoding_plugin="pylibjpeg" if uid == RLELossless else "", generate_instance_uid=False)


def write(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
