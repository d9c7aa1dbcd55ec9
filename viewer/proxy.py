"""One origin for OHIF and Orthanc's DICOMweb: the viewer's static files plus a reverse proxy.

Orthanc sends no CORS headers, so the browser must get viewer and DICOMweb from one origin. Orthanc's
DICOMweb plugin 1.7 ignores an escaped comma in ``includefield`` (which OHIF sends), so the proxy unescapes
``%2C``; a ``Forwarded`` header (RFC 7239) makes Orthanc write bulk-data URIs under this origin.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, PlainTextResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}


class SinglePageApp(StaticFiles):
    """Static files, with ``index.html`` for any other path (OHIF routes such as ``/viewer?…``)."""

    async def get_response(self, path: str, scope):
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            return await super().get_response("index.html", scope)


def create_app(dist: Path, app_config: Path, orthanc_url: str) -> FastAPI:
    """The viewer at ``/``, its configuration at ``/app-config.js``, Orthanc's DICOMweb at ``/dicom-web/``."""
    # No reused connections: Orthanc closes idle keep-alive connections after a second, and a request sent on
    # one it just closed fails ("Server disconnected without sending a response").
    client = httpx.AsyncClient(base_url=orthanc_url, timeout=120, limits=httpx.Limits(max_keepalive_connections=0))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    app = FastAPI(title="avn-node viewer", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.get("/dicom-web/{path:path}")
    async def dicomweb(path: str, request: Request) -> Response:
        """QIDO-RS and WADO-RS only: the viewer reads, it never stores or deletes."""
        query = request.url.query.replace("%2C", ",").replace("%2c", ",")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["forwarded"] = f"host={request.url.netloc};proto={request.url.scheme}"
        upstream = client.build_request("GET", f"/dicom-web/{path}" + (f"?{query}" if query else ""), headers=headers)
        try:
            response = await client.send(upstream, stream=True)
        except httpx.TransportError as exc:
            return PlainTextResponse(f"Orthanc did not answer: {exc!r}", status_code=502)
        return StreamingResponse(
            response.aiter_raw(),
            status_code=response.status_code,
            headers={k: v for k, v in response.headers.items() if k.lower() not in HOP_BY_HOP},
            background=BackgroundTask(response.aclose),
        )

    @app.get("/app-config.js")
    async def config() -> FileResponse:
        return FileResponse(app_config, media_type="text/javascript", headers={"cache-control": "no-store"})

    app.mount("/", SinglePageApp(directory=dist, html=True), name="ohif")
    return app
