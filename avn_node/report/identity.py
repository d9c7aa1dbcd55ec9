"""Who made a result: the node as a device, the model as an algorithm (PS3.16 TID 1002, TID 4019)."""

from __future__ import annotations

from dataclasses import dataclass

from highdicom import ContributingEquipment
from highdicom.sr import AlgorithmIdentification, DeviceObserverIdentifyingAttributes, ObserverContext
from pydicom.sr.codedict import codes

from avn_node import __version__
from avn_node.findings import ModelInfo
from avn_node.report.codes import ARTIFICIAL_INTELLIGENCE, PROCESSING_EQUIPMENT
from avn_node.report.uids import derived_uid

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
