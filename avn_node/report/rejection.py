"""Retracting a result set: a Key Object Selection document titled "Rejected for Quality Reasons" (DCM 113001,
PS3.16 CID 7011) that names every object of the set, as IHE IOCM (Imaging Object Change Management) has an
archive hide or delete them. PS3.3 A.35.4 (Key Object Selection Document IOD), built with highdicom."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from highdicom.sr import ObserverContext, PersonObserverIdentifyingAttributes
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from avn_node.report.identity import MANUFACTURER
from avn_node.report.uids import derived_uid

REJECTION_SERIES_NUMBER = 9901
"""Series Number of rejection notes (the result series use their own numbers)."""


def build_rejection(evidence: Sequence[Dataset], reason: str, reviewer: str) -> hd.ko.KeyObjectSelectionDocument:
    """The KOS that rejects ``evidence`` (the result objects of one study and version, headers suffice), with the
    reviewer as person observer and ``reason`` as its description. Its UID depends on what it rejects, so
    retracting the same set twice makes the same object."""
    if not evidence:
        raise ValueError("nothing to reject")
    uid = derived_uid("rejection", *sorted(str(ds.SOPInstanceUID) for ds in evidence))
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.RejectedForQualityReasons,
        referenced_objects=list(evidence),
        observer_person_context=ObserverContext(
            observer_type=codes.DCM.Person,
            observer_identifying_attributes=PersonObserverIdentifyingAttributes(name=_person_name(reviewer)),
        ),
        description=reason[:1024] or None,
    )
    return hd.ko.KeyObjectSelectionDocument(
        evidence=list(evidence),
        content=content,
        series_instance_uid=derived_uid("rejection-series", uid),
        series_number=REJECTION_SERIES_NUMBER,
        sop_instance_uid=uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
    )


def _person_name(user: str) -> str:
    """A dashboard user name as a PN value (no component separators or backslashes)."""
    return "".join(c for c in user if c not in "^=\\")[:64] or "unknown"
