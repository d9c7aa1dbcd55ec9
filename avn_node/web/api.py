"""The JSON API under ``/api/v1`` (its OpenAPI schema at ``/api/v1/openapi.json``), ``/healthz`` and ``/readyz``.

Reading needs the ``viewer`` role, retrying a delivery ``admin``, a label ``radiologist``; a browser's
state change carries its CSRF token in ``X-CSRF-Token`` (see :mod:`avn_node.web.auth`).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from avn_node.dispatch.sender import retry_deliveries
from avn_node.ground_truth import FicatStage, Side, View
from avn_node.labels import HeadLabel, LabelError, store_label
from avn_node.store.models import Delivery, DeliveryState, Label, Role
from avn_node.web import queries
from avn_node.web.auth import Principal, require
from avn_node.web.retraction import RetractionError, retract
from avn_node.web.schemas import (
    CaseOut,
    DeliveryOut,
    DriftWeek,
    Failures,
    Health,
    LabelIn,
    LabelOut,
    Overview,
    ResultOut,
    RetractIn,
    RetryOut,
    StudyDetail,
    StudySummary,
)

T = TypeVar("T")
api = APIRouter(prefix="/api/v1", tags=["api"])
health = APIRouter(tags=["health"])


def db(request: Request) -> Iterator[Session]:
    with request.app.state.sessions() as session:
        yield session


def viewer(request: Request) -> Principal:
    return require(request, Role.VIEWER)


def admin_change(request: Request) -> Principal:
    return require(request, Role.ADMIN, changes=True)


DB = Annotated[Session, Depends(db)]
RowId = Annotated[int, Path(ge=1, le=2**31 - 1, description="row id (a 32-bit INTEGER on every database)")]
Viewer = Annotated[Principal, Depends(viewer)]
AdminChange = Annotated[Principal, Depends(admin_change)]


def _found(value: T | None, what: str) -> T:
    if value is None:
        raise HTTPException(404, f"no {what}")
    return value


@api.get("/overview", response_model=Overview)
def get_overview(session: DB, _: Viewer) -> Overview:
    """Counts per state, the queue depth per stage and the most recent studies."""
    return queries.overview(session)


@api.get("/studies", response_model=list[StudySummary])
def get_studies(
    session: DB,
    _: Viewer,
    q: Annotated[str, Query(max_length=64, description="patient ID, accession number or UID prefix")] = "",
    state: Annotated[str, Query(pattern="^(|receiving|complete)$")] = "",
    date_from: datetime | None = None,
    date_to: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[StudySummary]:
    """Studies, newest first."""
    return queries.list_studies(session, q, state, date_from, date_to, limit, offset)


@api.get("/studies/{study_instance_uid}", response_model=StudyDetail)
def get_study(study_instance_uid: str, session: DB, _: Viewer) -> StudyDetail:
    """A study: its instances, the latest reading of each radiograph, its results with their deliveries, labels."""
    return _found(queries.study_detail(session, study_instance_uid), "such study")


@api.get("/cases/{case_id}", response_model=CaseOut)
def get_case(case_id: RowId, session: DB, _: Viewer) -> CaseOut:
    return _found(queries.case_detail(session, case_id), "such case")


@api.get("/results/{result_id}", response_model=ResultOut)
def get_result(result_id: RowId, session: DB, _: Viewer) -> ResultOut:
    return _found(queries.result_detail(session, result_id), "such result")


@api.get("/deliveries", response_model=list[DeliveryOut])
def get_deliveries(
    session: DB,
    _: Viewer,
    state: Annotated[str, Query(pattern="^(|pending|sent|dead)$")] = "",
    destination: Annotated[str, Query(max_length=64)] = "",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[DeliveryOut]:
    return queries.list_deliveries(session, state, destination, limit)


@api.post("/deliveries/{delivery_id}/retry", response_model=RetryOut)
def post_retry(delivery_id: RowId, session: DB, who: AdminChange) -> RetryOut:
    """Send this delivery again now (a fresh give-up window); 409 when it was sent already."""
    delivery = _found(session.get(Delivery, delivery_id), "such delivery")
    if delivery.state == DeliveryState.SENT:
        raise HTTPException(409, "this delivery was sent already")
    return RetryOut(requeued=retry_deliveries(session, [delivery_id], by=who.name))


@api.post("/deliveries/retry", response_model=RetryOut)
def post_retry_dead(session: DB, who: AdminChange) -> RetryOut:
    """Send every dead delivery again."""
    return RetryOut(requeued=retry_deliveries(session, None, by=who.name))


@api.post("/studies/{study_instance_uid}/retract", response_model=ResultOut,
          responses={409: {"description": "nothing to retract"}})  # fmt: skip
def post_retract(
    study_instance_uid: str, body: RetractIn, request: Request, session: DB, who: AdminChange
) -> ResultOut:
    """Retract a version's result set: a "Rejected for Quality Reasons" KOS naming it goes to every destination."""
    try:
        row = retract(session, request.app.state.files, request.app.state.destinations, study_instance_uid,
                      body.version, body.reason, who.name)  # fmt: skip
    except RetractionError as exc:
        raise HTTPException(409, str(exc)) from None
    return _found(queries.result_detail(session, row.id), "such result")


@api.get("/failures", response_model=Failures)
def get_failures(session: DB, _: Viewer) -> Failures:
    return queries.failures(session)


@api.get("/drift", response_model=list[DriftWeek])
def get_drift(session: DB, _: Viewer) -> list[DriftWeek]:
    """Per week and model version: the out-of-distribution flag rate and the mean AVN probability."""
    return queries.drift(session)


@api.get("/labels", response_model=list[LabelOut])
def get_labels(session: DB, _: Viewer, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[LabelOut]:
    rows = session.scalars(select(Label).order_by(Label.id.desc()).limit(limit))
    return [queries.label_out(row) for row in rows]


@api.post("/labels", response_model=LabelOut, responses={422: {"description": "a label the ground truth cannot hold"}})
def post_label(label: LabelIn, request: Request, session: DB) -> LabelOut:
    """Store a reviewer's reading of one radiograph (radiologist or admin); the newest per radiograph counts."""
    who = require(request, Role.RADIOLOGIST, changes=True)
    heads = [HeadLabel(Side(h.side), h.circle, FicatStage(h.stage), tuple(h.notes)) for h in label.heads]
    try:
        row = store_label(session, request.app.state.files, label.sop_instance_uid, View(label.view), heads, who.name)
    except LabelError as exc:
        raise HTTPException(422, str(exc)) from None
    return queries.label_out(row)


@health.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The web server answers."""
    return Health(status="ok")


@health.get("/readyz", response_model=Health, responses={503: {"model": Health}})
def readyz(request: Request) -> Health | JSONResponse:
    """The database answers (503 when it does not)."""
    try:
        with request.app.state.sessions() as session:
            session.execute(text("SELECT 1"))
    except Exception:  # noqa: BLE001 - any database failure means not ready
        return JSONResponse({"status": "database unavailable"}, status_code=503)
    return Health(status="ok")
