"""The case rule, shared by ``serve`` (over database rows) and ``analyze`` (over files): one patient's studies
whose Study Date/Time lie within the window of the case's first study, never chained; a study without
Patient ID is a case of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydicom.dataset import Dataset


def study_datetime(ds: Dataset) -> datetime | None:
    """Study Date + Study Time as a datetime (read as UTC: only differences matter), or None."""
    date = str(ds.get("StudyDate", "") or "")
    time = str(ds.get("StudyTime", "") or "").split(".")[0].ljust(6, "0")[:6]
    try:
        return datetime.strptime(date + time, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def patient_of(ds: Dataset) -> tuple[str, str]:
    """Patient ID + Issuer of Patient ID, as the study rows store them."""
    return str(ds.get("PatientID", "") or "")[:64], str(ds.get("IssuerOfPatientID", "") or "")[:64]


def joins_case(
    case_patient: tuple[str, str], case_anchor: datetime | None, patient: tuple[str, str], anchor: datetime,
    window: timedelta,
) -> bool:  # fmt: skip
    """Whether a study of ``patient`` anchored at ``anchor`` belongs to the case anchored at ``case_anchor``.

    The anchor is the Study Date/Time, or when it is missing the time the study was first received.
    """
    return (
        bool(patient[0]) and case_patient == patient and case_anchor is not None and abs(anchor - case_anchor) <= window
    )
