"""The dashboard application: pages, JSON API, health and ``/metrics`` over the node's database and files."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.orm import Session, sessionmaker
from starlette.middleware.sessions import SessionMiddleware

from avn_node import __version__
from avn_node.config import Settings
from avn_node.events import subscribe
from avn_node.store.files import LocalFileStore
from avn_node.store.models import Role
from avn_node.web.api import api, health
from avn_node.web.auth import is_loopback, require
from avn_node.web.metrics import counting_associations, registry
from avn_node.web.pages import LoginNeeded, pages

SECRET_FILE = "dashboard.secret"


def session_secret(data_dir: Path) -> str:
    """The key that signs session cookies: made once per data folder (mode 0600), so logins survive a restart
    and every serve over the same folder accepts them."""
    path = data_dir / SECRET_FILE
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def create_app(settings: Settings, sessions: sessionmaker[Session], files: LocalFileStore) -> FastAPI:
    """The app for ``settings``' ``[dashboard]``; off loopback every request needs a login or a token."""
    app = FastAPI(
        title="avn-node",
        version=__version__,
        description="AVN-net hip radiograph node: studies, readings, results, deliveries, labels.",
        openapi_url="/api/v1/openapi.json",
        docs_url="/api/v1/docs",
        redoc_url=None,
    )
    app.state.sessions = sessions
    app.state.files = files
    app.state.destinations = [d.name for d in settings.destinations]
    app.state.token = settings.dashboard.token
    app.state.loopback = is_loopback(settings.dashboard.host)
    app.state.weights = Path(settings.models.dir) if settings.models.dir else None
    metrics, accepted = registry(sessions)
    app.state.unsubscribe = subscribe(counting_associations(accepted))
    app.add_middleware(
        SessionMiddleware,
        secret_key=session_secret(Path(settings.node.data_dir)),
        session_cookie="avn_session",
        same_site="strict",
        https_only=False,
    )
    app.include_router(api)
    app.include_router(health)
    app.include_router(pages)
    app.mount("/static", StaticFiles(directory=Path(__file__).with_name("static")), name="static")

    @app.get("/metrics", include_in_schema=False)
    def prometheus(request: Request) -> Response:
        require(request, Role.VIEWER)
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.exception_handler(LoginNeeded)
    def login_needed(request: Request, exc: LoginNeeded) -> RedirectResponse:
        return RedirectResponse(f"/login?next={quote(exc.path)}", status_code=303)

    return app
