"""Server-rendered pages (Jinja2): overview, studies, study, review, failures with retry, models, login; and the
PNGs they show (radiographs, captures, the drift plot, the model's evaluation plots)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt
from sqlalchemy import select

from avn_node.dispatch.sender import retry_deliveries
from avn_node.events import NodeEvent, emit
from avn_node.ground_truth import NOTE_STAGES, NOTES, STAGES
from avn_node.labels import circle_of_box, image_size, latest_reading
from avn_node.store.models import Delivery, DeliveryState, Instance, Label, Result, Role
from avn_node.web import queries
from avn_node.web.api import RowId
from avn_node.web.auth import Principal, check_csrf, check_password, csrf_token, principal, require
from avn_node.web.images import png, sr_tree
from avn_node.web.retraction import RetractionError, retract

TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))
TEMPLATES.env.filters["short"] = queries.short_uid
MODEL_FILES = ("roc.png", "confusion.png", "reliability.png", "training.png")
pages = APIRouter(include_in_schema=False)
Size = Annotated[int, Query(ge=32, le=2048, description="longest side in pixels")]


class LoginNeeded(Exception):  # noqa: N818 - control flow, answered by a redirect to /login
    """A page asked for without credentials off loopback."""

    def __init__(self, path: str) -> None:
        self.path = path


def _who(request: Request, role: Role = Role.VIEWER) -> Principal:
    if principal(request) is None and "authorization" not in request.headers:
        raise LoginNeeded(request.url.path)
    return require(request, role)


def _page(request: Request, name: str, who: Principal, **context: object) -> HTMLResponse:
    return TEMPLATES.TemplateResponse(request, name, {"who": who, "csrf": csrf_token(request), **context})


@pages.get("/", response_class=HTMLResponse)
def overview_page(request: Request) -> HTMLResponse:
    who = _who(request)
    with request.app.state.sessions() as session:
        overview = queries.overview(session)
        drift = queries.drift(session)
    return _page(request, "overview.html", who, overview=overview, drift=drift)


@pages.get("/studies", response_class=HTMLResponse)
def studies_page(
    request: Request,
    q: Annotated[str, Query(max_length=64)] = "",
    state: Annotated[str, Query(pattern="^(|receiving|complete)$")] = "",
    date_from: Annotated[str, Query(pattern=r"^(|\d{4}-\d{2}-\d{2})$")] = "",
    date_to: Annotated[str, Query(pattern=r"^(|\d{4}-\d{2}-\d{2})$")] = "",
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> HTMLResponse:
    """Studies by patient ID, accession or UID prefix, state and study date (inclusive days, UTC)."""
    who = _who(request)
    try:
        start = _day(date_from)
        end = _day(date_to) + timedelta(days=1, microseconds=-1) if date_to else None
    except ValueError:
        raise HTTPException(422, "dates are YYYY-MM-DD") from None
    with request.app.state.sessions() as session:
        studies = queries.list_studies(session, q, state, start, end, limit=50, offset=offset)
    return _page(request, "studies.html", who, studies=studies, q=q, state=state, date_from=date_from,
                 date_to=date_to, offset=offset)  # fmt: skip


@pages.get("/studies/{study_instance_uid}", response_class=HTMLResponse)
def study_page(request: Request, study_instance_uid: str) -> HTMLResponse:
    who = _who(request)
    with request.app.state.sessions() as session:
        detail = queries.study_detail(session, study_instance_uid)
        if detail is None:
            raise HTTPException(404, "no such study")
        srs = [r for r in detail.results if r.kind == "sr" and not r.purged]
        latest_sr = max(srs, key=lambda r: r.version) if srs else None
        tree = None
        if latest_sr is not None:
            row = session.get(Result, latest_sr.id)
            tree = sr_tree(request.app.state.files.local_path(row.file_key))
    return _page(request, "study.html", who, d=detail, tree=tree, latest_sr=latest_sr)


@pages.get("/review/{sop_instance_uid}", response_class=HTMLResponse)
def review_page(request: Request, sop_instance_uid: str) -> HTMLResponse:
    """One radiograph with the model's heads (or the newest label) as circles to correct and confirm."""
    who = _who(request)
    files = request.app.state.files
    with request.app.state.sessions() as session:
        instance = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)).first()
        if instance is None or not files.local_path(instance.file_key).is_file():
            raise HTTPException(404, "no such stored radiograph")
        columns, rows = image_size(files, instance)
        reading = latest_reading(session, sop_instance_uid)
        label = session.scalars(select(Label).where(Label.sop_instance_uid == sop_instance_uid)
                                .order_by(Label.id.desc())).first()  # fmt: skip
        if label is not None:
            view, heads, source = label.view, label.heads, f"label by {label.reviewer}"
        elif reading is not None:
            view, source = reading.view or "AP", f"model {reading.model_version}"
            heads = [{"side": h["side"], "circle": list(circle_of_box(h["box"])), "stage": h["stage"],
                      "notes": h["notes"], "refused": h["out_of_distribution"]} for h in reading.heads]  # fmt: skip
        else:
            view, heads, source = "AP", [], "not read"
        labelled = select(Label.sop_instance_uid)
        after = (select(Instance.sop_instance_uid)
                 .where(Instance.id > instance.id, Instance.state == "accepted",
                        Instance.sop_instance_uid.not_in(labelled))
                 .order_by(Instance.id))  # fmt: skip
        next_sop = session.scalars(after).first()
    state = {"sop": sop_instance_uid, "columns": columns, "rows": rows, "view": view, "heads": heads,
             "stages": [s.value for s in STAGES], "notes": {n.value: sorted(s.value for s in NOTE_STAGES[n])
                                                            for n in NOTES}}  # fmt: skip
    return _page(request, "review.html", who, state=state, source=source, study=instance.study_instance_uid,
                 next_sop=next_sop, may_label=who.may(Role.RADIOLOGIST))  # fmt: skip


@pages.get("/failures", response_class=HTMLResponse)
def failures_page(request: Request) -> HTMLResponse:
    who = _who(request)
    with request.app.state.sessions() as session:
        found = queries.failures(session)
    return _page(request, "failures.html", who, f=found)


@pages.post("/failures/deliveries/{delivery_id}/retry")
def retry_page(request: Request, delivery_id: RowId, csrf: Annotated[str, Form()] = "") -> RedirectResponse:
    who = require(request, Role.ADMIN, csrf, changes=True)
    with request.app.state.sessions() as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is None:
            raise HTTPException(404, "no such delivery")
        if delivery.state != DeliveryState.SENT:
            retry_deliveries(session, [delivery_id], by=who.name)
    return RedirectResponse(request.headers.get("referer") or "/failures", status_code=303)


@pages.post("/studies/{study_instance_uid}/retract")
def retract_page(
    request: Request,
    study_instance_uid: str,
    version: Annotated[int, Form(ge=1, le=2**31 - 1)],
    reason: Annotated[str, Form(min_length=3, max_length=1024)],
    csrf: Annotated[str, Form()] = "",
) -> RedirectResponse:
    who = require(request, Role.ADMIN, csrf, changes=True)
    with request.app.state.sessions() as session:
        try:
            retract(session, request.app.state.files, request.app.state.destinations, study_instance_uid, version,
                    reason, who.name)  # fmt: skip
        except RetractionError as exc:
            raise HTTPException(409, str(exc)) from None
    return RedirectResponse(f"/studies/{study_instance_uid}", status_code=303)


@pages.get("/models", response_class=HTMLResponse)
def models_page(request: Request) -> HTMLResponse:
    who = _who(request)
    folder = request.app.state.weights
    card = folder / "model_card.md" if folder else None
    html = ""
    if card is not None and card.is_file():
        html = MarkdownIt("commonmark", {"html": False}).enable("table").render(card.read_text(encoding="utf-8"))
    metrics = {}
    if folder and (folder / "metrics.json").is_file():
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    plots = [name for name in MODEL_FILES if folder and (folder / name).is_file()]
    return _page(request, "models.html", who, card=html, metrics=metrics, plots=plots, folder=folder)


@pages.get("/models/files/{name}")
def model_file(request: Request, name: str) -> Response:
    _who(request)
    folder = request.app.state.weights
    if name not in MODEL_FILES or not folder or not (folder / name).is_file():
        raise HTTPException(404, "no such file")
    return Response((folder / name).read_bytes(), media_type="image/png")


def _png(request: Request, key: str, size: int) -> Response:
    path = request.app.state.files.local_path(key)
    if not path.is_file():
        raise HTTPException(404, "the file is gone (purged)")
    return Response(png(path, size), media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@pages.get("/images/instances/{sop_instance_uid}.png")
def instance_png(request: Request, sop_instance_uid: str, size: Size = 256) -> Response:
    _who(request)
    with request.app.state.sessions() as session:
        row = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid)).first()
    if row is None:
        raise HTTPException(404, "no such instance")
    return _png(request, row.file_key, size)


@pages.get("/images/results/{result_id}.png")
def result_png(request: Request, result_id: RowId, size: Size = 256) -> Response:
    _who(request)
    with request.app.state.sessions() as session:
        row = session.get(Result, result_id)
    if row is None or row.kind == "sr":
        raise HTTPException(404, "no such image result")
    return _png(request, row.file_key, size)


@pages.get("/images/drift.png")
def drift_png(request: Request) -> Response:
    _who(request)
    with request.app.state.sessions() as session:
        weeks = queries.drift(session)
    return Response(_drift_plot(weeks), media_type="image/png")


def _drift_plot(weeks: list) -> bytes:  # noqa: ANN001 - DriftWeek rows
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 2.6), dpi=100)
    ax = fig.add_subplot()
    for version in sorted({w.model_version for w in weeks}):
        mine = [w for w in weeks if w.model_version == version]
        labels = [w.week for w in mine]
        ax.plot(labels, [w.ood_flag_rate for w in mine], "o-", label=f"{version}: heads refused (OOD)")
        ax.plot(labels, [w.mean_presence_probability or 0.0 for w in mine], "s--", label=f"{version}: mean p(AVN)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share / probability")
    ax.grid(alpha=0.3)
    if weeks:
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    out = BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


@pages.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/", failed: bool = False) -> HTMLResponse:  # noqa: A002
    return TEMPLATES.TemplateResponse(
        request, "login.html", {"who": None, "csrf": csrf_token(request), "next": _local(next), "failed": failed}
    )


@pages.post("/login")
def login(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    csrf: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",  # noqa: A002
) -> RedirectResponse:
    check_csrf(request, csrf)
    with request.app.state.sessions() as session:
        user = check_password(session, username, password)
        kind = "user.login" if user is not None else "user.login_failed"
        emit(session, NodeEvent(kind, username[:64], data={"user": username[:64],
                                                          "address": request.client.host if request.client else ""}))
        session.commit()
    if user is None:
        return RedirectResponse(f"/login?failed=1&next={quote(_local(next))}", status_code=303)
    request.session.clear()  # a new session (and CSRF token) for the logged-in user
    request.session["user"] = user.name
    return RedirectResponse(_local(next), status_code=303)


@pages.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> RedirectResponse:
    check_csrf(request, csrf)
    request.session.clear()
    return RedirectResponse("/login", status_code=303)


def _day(text: str) -> datetime | None:
    """Midnight UTC of a ``YYYY-MM-DD`` day ("" → None)."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC) if text else None


def _local(path: str) -> str:
    """Only a path on this server may follow a login (no open redirect)."""
    return path if path.startswith("/") and not path.startswith("//") else "/"
