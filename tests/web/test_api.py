"""The JSON API, health, metrics and access control of the dashboard (httpx through Starlette's test client)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select
from sqlalchemy.orm import sessionmaker

from avn_node.audit import AuditLog
from avn_node.events import subscribe
from avn_node.store.models import Delivery, DeliveryState, Event, Role
from avn_node.web.app import create_app
from tests.web.conftest import PASSWORD, TOKEN, NodeData, csrf_of, make_user

BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_overview_counts_every_stage_and_lists_recent_studies(local_client: TestClient, node_data: NodeData):
    body = local_client.get("/api/v1/overview").json()
    assert body["counts"]["studies"] == {"complete": len(node_data.studies)}
    assert body["counts"]["jobs"] == {"done": 3}
    assert body["queue"]["deliveries_dead"] == 1
    assert {s["study_instance_uid"] for s in body["recent"]} == set(node_data.studies)


def test_studies_search_by_patient_id_accession_and_uid_prefix(local_client: TestClient, node_data: NodeData):
    patient = node_data.patients[0]
    found = local_client.get("/api/v1/studies", params={"q": patient}).json()
    assert found and {s["patient_id"] for s in found} == {patient}
    accession = found[0]["accession_number"]
    assert accession, "the receiver keeps the Accession Number"
    assert [s["accession_number"] for s in local_client.get("/api/v1/studies", params={"q": accession}).json()] == [
        accession
    ]
    uid = node_data.studies[1]
    assert [s["study_instance_uid"] for s in local_client.get("/api/v1/studies", params={"q": uid[:30]}).json()] == [
        uid
    ]
    assert local_client.get("/api/v1/studies", params={"state": "receiving"}).json() == []
    assert local_client.get("/api/v1/studies", params={"limit": 0}).status_code == 422


def test_study_detail_has_readings_results_and_deliveries(local_client: TestClient, node_data: NodeData):
    uid = node_data.studies[0]
    body = local_client.get(f"/api/v1/studies/{uid}").json()
    assert body["summary"]["version"] == 1 and body["summary"]["hips"]
    assert body["readings"] and all(r["model_version"] == "test-v0" for r in body["readings"])
    head = body["readings"][0]["heads"][0]
    assert len(head["box"]) == 4 and 0.0 <= head["presence_probability"] <= 1.0
    kinds = sorted({r["kind"] for r in body["results"]})
    assert "sr" in kinds and "cam" in kinds
    assert all(len(r["deliveries"]) == 1 for r in body["results"])
    assert local_client.get("/api/v1/studies/1.2.3.4").status_code == 404


def test_case_result_and_delivery_endpoints(local_client: TestClient, node_data: NodeData):
    study = local_client.get(f"/api/v1/studies/{node_data.studies[0]}").json()
    case = local_client.get(f"/api/v1/cases/{study['summary']['case_id']}").json()
    assert node_data.studies[0] in case["studies"] and case["jobs"][0]["state"] == "done"
    result = study["results"][0]
    assert local_client.get(f"/api/v1/results/{result['id']}").json()["sop_instance_uid"] == result["sop_instance_uid"]
    dead = local_client.get("/api/v1/deliveries", params={"state": "dead"}).json()
    assert [d["id"] for d in dead] == [node_data.dead_delivery]
    failures = local_client.get("/api/v1/failures").json()
    assert [d["id"] for d in failures["deliveries"]] == [node_data.dead_delivery]
    assert local_client.get("/api/v1/cases/999999").status_code == 404
    assert local_client.get("/api/v1/results/999999").status_code == 404


def test_drift_reports_the_week_model_and_mean_probability(local_client: TestClient):
    weeks = local_client.get("/api/v1/drift").json()
    assert len(weeks) == 1 and weeks[0]["model_version"] == "test-v0"
    assert weeks[0]["heads"] > 0 and weeks[0]["ood_flag_rate"] == 0.0
    assert 0.0 < weeks[0]["mean_presence_probability"] < 1.0


def test_a_browser_retry_needs_the_pages_csrf_token(local_client: TestClient, node_data: NodeData):
    url = f"/api/v1/deliveries/{node_data.dead_delivery}/retry"
    refused = local_client.post(url)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    assert local_client.post(url, headers={"X-CSRF-Token": "forged"}).status_code == 403
    done = local_client.post(url, headers={"X-CSRF-Token": csrf_of(local_client)})
    assert done.status_code == 200 and done.json() == {"requeued": 1}
    with node_data.receiver.sessions() as session:
        assert session.get(Delivery, node_data.dead_delivery).state == DeliveryState.PENDING
        event = session.scalars(select(Event).where(Event.kind == "delivery.retry")).one()
        assert event.data["user"] == "local"


def test_off_loopback_every_request_needs_a_token_or_a_login(open_app, node_data: NodeData):  # noqa: ANN001
    with TestClient(open_app) as client:
        for path in ("/api/v1/overview", "/api/v1/studies", "/metrics", f"/api/v1/studies/{node_data.studies[0]}"):
            assert client.get(path).status_code == 401, path
        assert client.get("/api/v1/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/api/v1/overview", headers={"Authorization": "Basic abc"}).status_code == 401
        page = client.get("/studies", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"].startswith("/login")
        assert client.get("/api/v1/overview", headers=BEARER).status_code == 200
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json() == {"status": "ok"}


def test_a_users_api_token_acts_with_that_users_role(open_app, node_data: NodeData):  # noqa: ANN001
    viewer = make_user(node_data, "vera", Role.VIEWER)
    admin = make_user(node_data, "adam", Role.ADMIN)
    url = f"/api/v1/deliveries/{node_data.dead_delivery}/retry"
    with TestClient(open_app) as client:
        assert client.get("/api/v1/overview", headers={"Authorization": f"Bearer {viewer}"}).status_code == 200
        forbidden = client.post(url, headers={"Authorization": f"Bearer {viewer}"})
        assert forbidden.status_code == 403 and "vera" in forbidden.json()["detail"]
        assert client.post(url, headers={"Authorization": f"Bearer {admin}"}).json() == {"requeued": 1}
        assert client.post(url, headers={"Authorization": f"Bearer {admin}"}).status_code == 200  # pending: again
    with node_data.receiver.sessions() as session:
        users = [e.data.get("user") for e in session.scalars(select(Event).where(Event.kind == "delivery.retry"))]
    assert users == ["adam", "adam"]


def test_login_gives_a_session_whose_forms_need_its_csrf_token(open_app, node_data: NodeData):  # noqa: ANN001
    make_user(node_data, "rita", Role.RADIOLOGIST)
    with TestClient(open_app) as client:
        login_csrf = csrf_of(client, "/login")
        wrong = client.post("/login", data={"username": "rita", "password": "nope", "csrf": login_csrf},
                            follow_redirects=False)  # fmt: skip
        assert wrong.status_code == 303 and "failed=1" in wrong.headers["location"]
        assert client.post("/login", data={"username": "rita", "password": PASSWORD}).status_code == 403  # no CSRF
        ok = client.post("/login", data={"username": "rita", "password": PASSWORD, "csrf": login_csrf,
                                         "next": "/studies"}, follow_redirects=False)  # fmt: skip
        assert ok.status_code == 303 and ok.headers["location"] == "/studies"
        page = client.get("/studies")
        assert page.status_code == 200 and "rita (radiologist)" in page.text
        csrf = csrf_of(client, "/studies")
        assert csrf != login_csrf, "a login starts a new session"
        assert client.post(f"/api/v1/deliveries/{node_data.dead_delivery}/retry",
                           headers={"X-CSRF-Token": csrf}).status_code == 403  # a radiologist may not retry
        client.post("/logout", data={"csrf": csrf})
        assert client.get("/api/v1/overview").status_code == 401


def test_login_follows_only_local_paths(open_app):  # noqa: ANN001
    with TestClient(open_app) as client:
        html = client.get("/login", params={"next": "https://evil.example/"}).text
        assert 'name="next" value="/"' in html


def test_metrics_count_state_from_the_database(local_client: TestClient, node_data: NodeData):
    text = local_client.get("/metrics").text
    assert re.search(r'^avn_jobs\{state="done"\} 3\.0$', text, re.M)
    assert re.search(r'^avn_deliveries\{destination="archive",state="dead"\} 1\.0$', text, re.M)
    assert re.search(r'^avn_instances_received_total\{state="accepted"\} \d+\.0$', text, re.M)
    assert re.search(r'^avn_job_seconds_count 3\.0$', text, re.M)
    assert re.search(r'^avn_readings_total\{model_version="test-v0",out_of_distribution="false"\} \d+\.0$', text, re.M)
    assert re.search(r"^avn_received_bytes_total [1-9]", text, re.M)


def test_readyz_says_503_when_the_database_does_not_answer(node_data: NodeData, tmp_path):  # noqa: ANN001
    gone = sessionmaker(create_engine(f"sqlite:///{tmp_path / 'no-such-folder' / 'db.sqlite'}"))
    app = create_app(node_data.settings, gone, node_data.receiver.files)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 503
    app.state.unsubscribe()


def test_metrics_carry_the_stage_durations_of_the_jobs_this_process_ran(local_client: TestClient):
    text = local_client.get("/metrics").text
    counts = dict(re.findall(r'^avn_stage_seconds_count\{stage="(\w+)"\} (\d+)\.0$', text, re.M))
    assert int(counts["report"]) >= 3 and int(counts["store"]) >= 3, counts


def test_worker_processes_stage_durations_add_up_in_multiprocess_mode(tmp_path: Path):
    """Two processes observe one job each; a third (the dashboard's side) reads both from the shared folder."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    observe = "from avn_node.metrics import observe_job; observe_job({'detect': 0.3, 'classify': 0.7})"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", observe], env=env, check=True, timeout=60)
    read = ("from prometheus_client import CollectorRegistry, generate_latest; from avn_node import metrics; "
            "r = CollectorRegistry(); metrics.add_to(r); print(generate_latest(r).decode())")  # fmt: skip
    text = subprocess.run([sys.executable, "-c", read], env=env, check=True, timeout=60, capture_output=True,
                          text=True).stdout  # fmt: skip
    assert re.search(r'^avn_stage_seconds_count\{stage="detect"\} 2\.0$', text, re.M), text
    assert re.search(r'^avn_stage_seconds_sum\{stage="classify"\} 1\.4', text, re.M), text


def test_retry_of_every_dead_delivery_requeues_them_all(local_client: TestClient, node_data: NodeData):
    done = local_client.post("/api/v1/deliveries/retry", headers={"X-CSRF-Token": csrf_of(local_client)})
    assert done.json() == {"requeued": 1}
    assert local_client.get("/api/v1/deliveries", params={"state": "dead"}).json() == []


def test_dashboard_actions_reach_the_audit_log_naming_the_user(open_app, node_data: NodeData, tmp_path: Path):  # noqa: ANN001
    admin = make_user(node_data, "adam", Role.ADMIN)
    log = tmp_path / "audit.jsonl"
    unsubscribe = subscribe(AuditLog(log, "AVN_NODE"))
    try:
        with TestClient(open_app) as client:
            csrf = csrf_of(client, "/login")
            client.post("/login", data={"username": "adam", "password": "wrong", "csrf": csrf})
            client.post("/login", data={"username": "adam", "password": PASSWORD, "csrf": csrf})
            bearer = {"Authorization": f"Bearer {admin}"}
            client.post(f"/api/v1/deliveries/{node_data.dead_delivery}/retry", headers=bearer)
            client.post(f"/api/v1/studies/{node_data.studies[0]}/retract", headers=bearer,
                        json={"version": 1, "reason": "wrong side marker"})  # fmt: skip
    finally:
        unsubscribe()
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = {e["EventTypeText"]: e for e in entries}
    assert kinds["user.login_failed"]["EventOutcomeIndicator"] == 4
    for kind in ("user.login", "user.login_failed", "delivery.retry", "result.retracted"):
        assert kinds[kind]["Detail"]["user"] == "adam", kind
    assert "wrong" not in json.dumps(kinds["user.login_failed"]), "a password never reaches the audit log"
