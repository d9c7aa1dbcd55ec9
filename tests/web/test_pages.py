"""The server-rendered pages and the images they show."""

from __future__ import annotations

import subprocess
import sys
from io import BytesIO
from pathlib import Path

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from avn_node.store.models import Delivery, DeliveryState, Result
from tests.web.conftest import NodeData, csrf_of


def _png(client: TestClient, url: str) -> Image.Image:
    response = client.get(url)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png", url
    return Image.open(BytesIO(response.content))


def test_overview_page_shows_queue_counts_drift_and_recent_studies(local_client: TestClient, node_data: NodeData):
    html = local_client.get("/").text
    assert "deliveries dead" in html and "Recent studies" in html
    assert node_data.patients[0] in html
    assert "test-v0" in html, "the drift table names the model version"
    assert _png(local_client, "/images/drift.png").size[0] > 300


def test_study_page_shows_thumbnails_readings_sr_tree_and_deliveries(local_client: TestClient, node_data: NodeData):
    uid = node_data.studies[0]
    html = local_client.get(f"/studies/{uid}").text
    assert uid in html and "Structured report" in html
    assert "Finding site" in html or "Imaging Measurements" in html, "the SR's content items are listed"
    detail = local_client.get(f"/api/v1/studies/{uid}").json()
    sop = detail["instances"][0]["sop_instance_uid"]
    thumb = _png(local_client, f"/images/instances/{sop}.png?size=128")
    assert max(thumb.size) == 128 and thumb.mode == "L"
    cam = next(r for r in detail["results"] if r["kind"] == "cam")
    assert _png(local_client, f"/images/results/{cam['id']}.png").mode == "RGB"
    sr = next(r for r in detail["results"] if r["kind"] == "sr")
    assert local_client.get(f"/images/results/{sr['id']}.png").status_code == 404


def test_failures_page_retry_button_requeues_the_dead_delivery(local_client: TestClient, node_data: NodeData):
    html = local_client.get("/failures").text
    assert "association rejected by ARCHIVE" in html and "Retry now" in html
    url = f"/failures/deliveries/{node_data.dead_delivery}/retry"
    assert local_client.post(url, data={"csrf": "forged"}).status_code == 403
    done = local_client.post(url, data={"csrf": csrf_of(local_client, "/failures")}, follow_redirects=False)
    assert done.status_code == 303
    with node_data.receiver.sessions() as session:
        assert session.get(Delivery, node_data.dead_delivery).state == DeliveryState.PENDING


def test_studies_page_searches_by_patient_id(local_client: TestClient, node_data: NodeData):
    patient = node_data.patients[1]
    html = local_client.get("/studies", params={"q": patient}).text
    assert patient in html and node_data.patients[0] not in html


def test_models_page_shows_the_model_card_and_its_plots(local_client: TestClient):
    html = local_client.get("/models").text
    assert "<table>" in html and "NOT FOR CLINICAL USE" in html
    assert _png(local_client, "/models/files/roc.png").size[0] > 100
    assert local_client.get("/models/files/model.json").status_code == 404


def test_purged_file_gives_404_not_a_server_error(local_client: TestClient, node_data: NodeData):
    with node_data.receiver.sessions() as session:
        cam = session.scalars(select(Result).where(Result.kind == "cam")).first()
        node_data.receiver.files.local_path(cam.file_key).unlink()
    assert local_client.get(f"/images/results/{cam.id}.png").status_code == 404


def test_users_add_prints_a_token_once_and_refuses_a_duplicate(tmp_path: Path, node_data: NodeData):
    config = tmp_path / "users.toml"
    config.write_text(f'[node]\ndata_dir = "{node_data.settings.node.data_dir}"\n'
                      f'[database]\nurl = "{node_data.settings.database.url}"\n')  # fmt: skip
    command = [sys.executable, "-m", "avn_node", "users", "add", "rita", "--role", "radiologist",
               "--config", str(config)]  # fmt: skip
    first = subprocess.run(command, input="long enough pw\nlong enough pw\n", capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert first.returncode == 0, first.stderr
    assert "API token (shown once):" in first.stdout
    again = subprocess.run(command, input="long enough pw\nlong enough pw\n", capture_output=True, text=True,
                           timeout=120)  # fmt: skip
    assert again.returncode == 2 and "exists already" in again.stderr
    bad_role = subprocess.run([*command[:5], "rita2", "--role", "god", "--config", str(config)],
                              input="x\nx\n", capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad_role.returncode == 2


def test_studies_page_filters_by_study_date(local_client: TestClient, node_data: NodeData):
    studies = local_client.get("/api/v1/studies").json()
    day = studies[0]["study_datetime"][:10]
    html = local_client.get("/studies", params={"date_from": day, "date_to": day}).text
    shown = {s["study_instance_uid"] for s in studies if s["study_datetime"][:10] == day}
    hidden = {s["study_instance_uid"] for s in studies} - shown
    assert all(uid in html for uid in shown) and not any(uid in html for uid in hidden)
    assert local_client.get("/studies", params={"date_from": "2026-13-45"}).status_code == 422
    assert local_client.get("/studies", params={"date_from": "yesterday"}).status_code == 422
