"""Retracting a study's result set from the dashboard: the rejection note is stored and delivered like any
result, and an event records who and why."""

from __future__ import annotations

from io import BytesIO

import pydicom
from sqlalchemy import select
from sqlalchemy.orm import Session

from avn_node.events import NodeEvent, emit
from avn_node.report.rejection import build_rejection
from avn_node.store.files import LocalFileStore, result_key
from avn_node.store.models import Delivery, Result

REJECTION = "kos"
"""The results table's kind of a rejection note."""


class RetractionError(ValueError):
    """Nothing to retract (the message says why)."""


def retract(session: Session, files: LocalFileStore, destinations: list[str], study_uid: str, version: int,
            reason: str, who: str) -> Result:  # fmt: skip
    """Store the rejection of ``study_uid``'s results of ``version`` and queue it to every destination; committed.

    Raises:
        RetractionError: no such result set, it was retracted already, or a file of it is gone.
    """
    rows = list(session.scalars(
        select(Result).where(Result.study_instance_uid == study_uid, Result.version == version,
                             Result.kind != REJECTION)
    ))  # fmt: skip
    if not rows:
        raise RetractionError(f"study {study_uid} has no results of version {version}")
    if any(r.purged or not files.local_path(r.file_key).is_file() for r in rows):
        raise RetractionError(f"a result of version {version} was purged: the archive is the only copy left")
    evidence = [pydicom.dcmread(files.local_path(r.file_key), stop_before_pixels=True) for r in rows]
    note = build_rejection(evidence, reason, who)
    uid = str(note.SOPInstanceUID)
    if session.scalars(select(Result).where(Result.sop_instance_uid == uid)).first() is not None:
        raise RetractionError(f"version {version} of study {study_uid} was retracted already")
    buffer = BytesIO()
    note.save_as(buffer, enforce_file_format=True)
    key = result_key(study_uid, REJECTION, uid)
    files.write(buffer.getvalue(), key)
    row = Result(case_id=rows[0].case_id, version=version, study_instance_uid=study_uid, kind=REJECTION,
                 sop_instance_uid=uid, sop_class_uid=str(note.SOPClassUID), file_key=key)  # fmt: skip
    session.add(row)
    session.flush()
    for name in destinations:
        session.add(Delivery(result_id=row.id, destination=name))
    emit(session, NodeEvent("result.retracted", study_uid, reason, data={
        "version": version, "user": who, "rejection": uid, "results": [r.sop_instance_uid for r in rows]}))  # fmt: skip
    session.commit()
    return row
