"""What every secondary capture the node returns has in common (SC Image IOD, PS3.3 A.8.1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from avn_node.findings import RadiographFinding
from avn_node.report.identity import MANUFACTURER, Producer
from avn_node.report.uids import derived_uid

# Patient and study attributes highdicom does not copy (PS3.3 C.7.1.1, C.7.2.1, C.7.2.2): an archive that
# takes a study's tags from its latest instance would otherwise lose them when the results arrive.
PATIENT_STUDY_EXTRAS = (
    "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence", "StudyDescription",
    "IssuerOfAccessionNumberSequence", "ProcedureCodeSequence", "PatientAge", "PatientSize", "PatientWeight",
)  # fmt: skip


def source_image_sequence(radiographs: Sequence[RadiographFinding]) -> DicomSequence:
    """Source Image Sequence (0008,2112) naming the analysed radiographs."""
    items = []
    for r in radiographs:
        item = Dataset()
        item.ReferencedSOPClassUID = r.sop_class_uid
        item.ReferencedSOPInstanceUID = r.sop_instance_uid
        items.append(item)
    return DicomSequence(items)


def secondary_capture(
    reference: Dataset,
    pixels: np.ndarray,
    target_study_uid: str,
    producer: Producer,
    kind: str,
    series_number: int,
    series_description: str,
    uid_inputs: Sequence[str | int],
    instance_number: int,
    sources: Sequence[RadiographFinding],
    derivation: str,
) -> SCImage:
    """An RGB secondary capture in the reference's patient and study, in the series of ``kind``.

    Its UID is derived from the study, ``kind``, the weights and ``uid_inputs``. Burned In Annotation is
    YES; Source Image Sequence names ``sources``. Patient Orientation and Laterality are left to the caller.
    """
    suffix = " (not for diagnostic use)" if producer.demo else ""
    sc = SCImage.from_ref_dataset(
        ref_dataset=reference,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=derived_uid(f"{kind}-series", target_study_uid, producer.weights_sha256),
        series_number=series_number,
        sop_instance_uid=derived_uid(kind, target_study_uid, producer.weights_sha256, *uid_inputs),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        contributing_equipment=[producer.equipment()],
        series_description=series_description + suffix,
        manufacturer_model_name=producer.model_name,
        software_versions=producer.software_versions,
    )
    sc.BurnedInAnnotation = "YES"
    sc.SourceImageSequence = source_image_sequence(sources)
    sc.DerivationDescription = derivation[:1024]
    for keyword in ("SpecificCharacterSet", *PATIENT_STUDY_EXTRAS):
        if keyword in reference:
            setattr(sc, keyword, reference[keyword].value)
    return sc
