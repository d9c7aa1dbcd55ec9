"""Who made a result: the node as a device, the model as an algorithm (PS3.16 TID 1002, TID 4019); and the
character set its copied patient and study text is written in."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from highdicom import ContributingEquipment
from highdicom.sr import AlgorithmIdentification, DeviceObserverIdentifyingAttributes, ObserverContext
from highdicom.valuerep import _check_specific_character_set
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from avn_node import __version__
from avn_node.findings import ModelInfo
from avn_node.report.codes import ARTIFICIAL_INTELLIGENCE, PROCESSING_EQUIPMENT
from avn_node.report.uids import derived_uid

log = logging.getLogger("avn_node.report")

UTF8 = "ISO_IR 192"
MANUFACTURER = "avn-node project"
DEVICE_NAME = "avn-node"
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"
INTENDED_USE = (
    "Research and demonstration: detects femoral heads on AP pelvis and frog-leg lateral hip radiographs and "
    "grades avascular necrosis by Ficat stage (AVN-net, Li, Li, Tian, IEEE JBHI 2020), with class-activation maps."
)


@dataclass(frozen=True)
class Producer:
    """The node and the loaded model, as every result object names them."""

    model_name: str
    model_version: str
    weights_sha256: str
    demo: bool

    @classmethod
    def from_model(cls, info: ModelInfo) -> Producer:
        return cls(info.name, info.version, info.sha256, info.demo)

    @property
    def device_uid(self) -> str:
        """Device UID of the observer and contributing equipment, derived from the weights' sha256."""
        return derived_uid("device", self.weights_sha256)

    @property
    def software_versions(self) -> list[str]:
        return [f"avn-node {__version__}", f"{self.model_version} sha256:{self.weights_sha256[:16]}"]

    @property
    def intended_use(self) -> str:
        """The TEXT the SR carries; says NOT FOR DIAGNOSTIC USE while demo weights are loaded."""
        text = INTENDED_USE
        if self.demo:
            text += f" Demo weights trained on synthetic data only: {NOT_FOR_DIAGNOSTIC_USE}."
        return text

    def algorithm(self) -> AlgorithmIdentification:
        """Algorithm Identification (TID 4019), family DCM Artificial Intelligence."""
        return AlgorithmIdentification(
            name=self.model_name, version=self.model_version, family=ARTIFICIAL_INTELLIGENCE, manufacturer=MANUFACTURER
        )

    def observer(self) -> ObserverContext:
        """Device observer (TID 1004)."""
        return ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=self.device_uid,
                name=DEVICE_NAME,
                manufacturer_name=MANUFACTURER,
                model_name=self.model_name,
                serial_number=self.weights_sha256[:16],
            ),
        )

    def equipment(self) -> ContributingEquipment:
        """Contributing Equipment with purpose Processing Equipment (DCM 109102)."""
        return ContributingEquipment(
            manufacturer=MANUFACTURER,
            purpose_of_reference=PROCESSING_EQUIPMENT,
            manufacturer_model_name=self.model_name,
            software_versions=self.software_versions,
            device_serial_number=self.weights_sha256[:16],
            contribution_description=f"{self.model_name} {self.model_version}: femoral head detection, Ficat staging",
        )


def with_writable_character_set(source: Dataset) -> Dataset:
    """``source``, or a shallow copy whose Specific Character Set (PS3.3 C.12.1.1.2) results can be written in.

    The source's own set when highdicom writes it; otherwise its text is decoded as declared and the copy says
    UTF-8, which holds any text: an ISO 2022 code extension given alone, an empty first value, a set pydicom
    does not know (decoded with the default repertoire, as the log says).
    """
    declared = source.get("SpecificCharacterSet")
    if declared is None:
        return source
    value = declared if isinstance(declared, str) else list(declared)
    try:
        _check_specific_character_set(value)  # highdicom's own check of what it will write
        return source
    except ValueError as exc:
        log.warning("Specific Character Set %r of %s cannot be written (%s): results are written in UTF-8",
                    value, source.get("SOPInstanceUID", "?"), exc)  # fmt: skip
    source.decode()
    copy = Dataset(source)
    copy.file_meta = source.file_meta
    copy.SpecificCharacterSet = UTF8
    return copy
