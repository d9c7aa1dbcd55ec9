"""Every coded concept the result objects use, in one place.

Standard codes come from pydicom's dictionaries (SNOMED CT ``SCT``, DICOM ``DCM``) where the concept exists;
Ficat stages, note types and the per-class probabilities have none and use the private scheme
:data:`SCHEME`, declared in each SR's Coding Scheme Identification Sequence (PS3.3 C.12.1.1.2.1).
"""

from __future__ import annotations

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from avn_node.ground_truth import FicatStage, Note, Side

SCHEME = "99AVNNODE"
SCHEME_IDENTIFICATION = CodingSchemeIdentificationItem(
    designator=SCHEME,
    name="avn-node findings of AVN-net (Li, Li, Tian, IEEE JBHI 2020)",
    responsible_organization="avn-node project",
)

HEAD_OF_FEMUR = codes.SCT.HeadOfFemur
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
NOT_EVALUATED = codes.SCT.NotEvaluated
COMMENT = codes.DCM.Comment
ARTIFICIAL_INTELLIGENCE = codes.DCM.ArtificialIntelligence
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment
IMAGING_MEASUREMENT_REPORT = codes.DCM.ImagingMeasurementReport
# SNOMED CT 783628002 "Plain X-ray of hip (procedure)"
PLAIN_XRAY_OF_HIP = Code("783628002", "SCT", "Plain X-ray of hip")
# TID 1500 row "Qualitative Evaluations" container (UMLS, as PS3.16 TID 1500 gives it)
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
PERCENT = Code("%", "UCUM", "%")

# Laterality qualifiers, SNOMED CT (PS3.16 CID 244)
LATERALITY: dict[Side, Code] = {
    Side.L: Code("7771000", "SCT", "Left"),
    Side.R: Code("24028007", "SCT", "Right"),
}

AVN = Code("AVN-001", SCHEME, "AVN of femoral head")
FICAT_STAGE = Code("AVN-002", SCHEME, "Ficat stage")
AVN_PROBABILITY = Code("AVN-003", SCHEME, "AVN probability")
# Why AVN was not evaluated on a detected head: the model refused it as unlike its training data.
NOT_EVALUATED_REASON = Code("AVN-004", SCHEME, "Reason AVN not evaluated")
OUT_OF_DISTRIBUTION = Code("AVN-005", SCHEME, "Outside the model's experience")

STAGE: dict[FicatStage, Code] = {
    FicatStage.ABSENCE: Code("AVN-010", SCHEME, "No AVN or Ficat I"),
    FicatStage.II: Code("AVN-012", SCHEME, "Ficat II"),
    FicatStage.III: Code("AVN-013", SCHEME, "Ficat III"),
    FicatStage.IV: Code("AVN-014", SCHEME, "Ficat IV"),
}
STAGE_PROBABILITY: dict[FicatStage, Code] = {
    FicatStage.II: Code("AVN-022", SCHEME, "Ficat II probability"),
    FicatStage.III: Code("AVN-023", SCHEME, "Ficat III probability"),
    FicatStage.IV: Code("AVN-024", SCHEME, "Ficat IV probability"),
}
"""Probabilities reported per stage; absence is 100 % minus the AVN probability."""

NOTE: dict[Note, Code] = {
    Note.SCLEROSIS: Code("AVN-031", SCHEME, "Sclerosis"),
    Note.CYSTS: Code("AVN-032", SCHEME, "Cystic change"),
    Note.CRESCENT_SIGN: Code("AVN-033", SCHEME, "Crescent sign"),
    Note.SUBCHONDRAL_COLLAPSE: Code("AVN-034", SCHEME, "Subchondral collapse"),
    Note.HEAD_DEFORMATION: Code("AVN-035", SCHEME, "Femoral head deformation"),
    Note.ACETABULAR_DEFORMATION: Code("AVN-036", SCHEME, "Acetabular deformation"),
    Note.JOINT_SPACE_NARROWING: Code("AVN-037", SCHEME, "Joint space narrowing"),
}
NOTE_PROBABILITY: dict[Note, Code] = {
    note: Code(f"AVN-04{i + 1}", SCHEME, f"{code.meaning} probability") for i, (note, code) in enumerate(NOTE.items())
}
