"""Every DIMSE status the node sends, named by its meaning (PS3.4 Annex B.2.3, PS3.7 Annex C)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from pydicom.dataset import Dataset


class Status(IntEnum):
    SUCCESS = 0x0000
    PROCESSING_FAILURE = 0x0110  # PS3.7 C.4: the store or its row failed
    COERCION_OF_DATA_ELEMENTS = 0xB000  # PS3.4 B.2.3 Warning
    ELEMENTS_DISCARDED = 0xB006  # PS3.4 B.2.3 Warning
    DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING = 0xB007  # PS3.4 B.2.3 Warning
    OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3 Refused: Out of Resources
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # PS3.4 B.2.3 Error: Data Set does not match SOP Class
    CANNOT_UNDERSTAND = 0xC000  # PS3.4 B.2.3 Error: Cannot understand


STORED = frozenset(
    {Status.SUCCESS, Status.COERCION_OF_DATA_ELEMENTS, Status.ELEMENTS_DISCARDED,
     Status.DATASET_DOES_NOT_MATCH_SOP_CLASS_WARNING}
)  # fmt: skip
"""Statuses with which a C-STORE SCP has stored the object."""


@dataclass(frozen=True)
class Refusal:
    """A failure answer: the status, the Error Comment the peer sees, and the reason logged."""

    status: Status
    comment: str

    def dataset(self) -> Dataset:
        ds = Dataset()
        ds.Status = int(self.status)
        ds.ErrorComment = self.comment[:64]  # LO
        return ds
