"""The one-origin proxy on its own: what the browser gets when Orthanc does not answer."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from tests.conftest import free_port
from viewer.proxy import create_app
from viewer.stack import APP_CONFIG


def test_proxy_answers_bad_gateway_when_orthanc_is_down(tmp_path: Path):
    (tmp_path / "index.html").write_text("<html></html>")
    app = create_app(tmp_path, APP_CONFIG, f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with TestClient(app) as client:
        response = client.get("/dicom-web/studies")
        assert response.status_code == 502 and "Orthanc did not answer" in response.text
        assert client.get("/viewer?StudyInstanceUIDs=1.2.3").text == "<html></html>"  # single-page-app fallback
