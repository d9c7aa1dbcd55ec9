"""The review page's labels: stored with what they change, refused when the ground truth cannot hold them, and
exported as a DESIGN §5 training set with the model-against-reviewer agreement."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from avn_node.ground_truth import GroundTruth
from avn_node.labels import box_of_circle, circle_of_box
from avn_node.store.models import Event, Result, Role
from tests.conftest import dciodvfy_errors
from tests.web.conftest import NodeData, csrf_of, make_user


def _reading(client: TestClient, data: NodeData) -> dict:
    detail = client.get(f"/api/v1/studies/{data.studies[0]}").json()
    return next(r for r in detail["readings"] if len(r["heads"]) == 2)


def _corrected(reading: dict) -> dict:
    """The model's reading with the first head moved by a quarter radius and set to stage II with cysts."""
    heads = []
    for i, h in enumerate(reading["heads"]):
        cx, cy, r = circle_of_box(h["box"])
        if i == 0:
            heads.append({"side": h["side"], "circle": [cx + r / 4, cy, r], "stage": "II", "notes": ["cysts"]})
        else:
            heads.append({"side": h["side"], "circle": [cx, cy, r], "stage": h["stage"], "notes": h["notes"]})
    return {"sop_instance_uid": reading["sop_instance_uid"], "view": reading["view"], "heads": heads}


def _post(client: TestClient, body: dict):  # noqa: ANN202
    return client.post("/api/v1/labels", json=body, headers={"X-CSRF-Token": csrf_of(client)})


def test_a_label_records_who_and_what_changed_against_the_model(local_client: TestClient, node_data: NodeData):
    reading = _reading(local_client, node_data)
    first = reading["heads"][0]
    response = _post(local_client, _corrected(reading))
    assert response.status_code == 200, response.text
    label = response.json()
    assert label["reviewer"] == "local" and label["model_version"] == "test-v0"
    side = first["side"]
    assert any(c.startswith(f"{side}: circle moved") for c in label["changes"]), label["changes"]
    if first["stage"] != "II":
        assert f"{side}: stage {first['stage']} → II" in label["changes"]
    confirmed = {**_corrected(reading)}
    confirmed["heads"] = [{"side": h["side"], "circle": list(circle_of_box(h["box"])), "stage": h["stage"],
                           "notes": h["notes"]} for h in reading["heads"]]  # fmt: skip
    assert _post(local_client, confirmed).json()["changes"] == []
    assert len(local_client.get("/api/v1/labels").json()) == 2


def test_labels_the_ground_truth_cannot_hold_are_refused_naming_the_field(local_client: TestClient, node_data):  # noqa: ANN001
    body = _corrected(_reading(local_client, node_data))
    side = body["heads"][0]["side"]
    body["heads"][0]["notes"] = ["joint_space_narrowing"]  # a stage IV note on a stage II head
    refused = _post(local_client, body)
    assert refused.status_code == 422 and f"heads.{side}" in refused.json()["detail"]
    body["heads"][0]["notes"] = []
    body["heads"][1]["side"] = side
    assert "one head per side" in _post(local_client, body).json()["detail"]
    body = _corrected(_reading(local_client, node_data))
    body["heads"][0]["circle"] = [-500, 10, 40]
    assert "lies off" in _post(local_client, body).json()["detail"]
    body = _corrected(_reading(local_client, node_data))
    body["heads"][0]["stage"] = "I"
    assert _post(local_client, body).status_code == 422
    body["sop_instance_uid"] = "1.2.3"
    body["heads"] = []
    assert "no stored radiograph" in _post(local_client, body).json()["detail"]


def test_a_viewer_may_open_the_review_page_but_not_store_a_label(open_app, node_data: NodeData):  # noqa: ANN001
    token = make_user(node_data, "vic", Role.VIEWER)
    with TestClient(open_app, headers={"Authorization": f"Bearer {token}"}) as client:
        reading = _reading(client, node_data)
        page = client.get(f"/review/{reading['sop_instance_uid']}")
        assert page.status_code == 200 and "Viewers cannot store labels" in page.text
        assert client.post("/api/v1/labels", json=_corrected(reading)).status_code == 403


def test_review_page_starts_from_the_models_heads_as_circles(local_client: TestClient, node_data: NodeData):
    reading = _reading(local_client, node_data)
    html = local_client.get(f"/review/{reading['sop_instance_uid']}").text
    state = json.loads(html.split('<script id="state" type="application/json">')[1].split("</script>")[0])
    assert [h["side"] for h in state["heads"]] == [h["side"] for h in reading["heads"]]
    assert state["heads"][0]["circle"] == pytest.approx(list(circle_of_box(reading["heads"][0]["box"])))
    assert state["notes"]["acetabular_deformation"] == ["IV"]


def test_export_writes_the_corrected_ground_truth_and_the_agreement(local_client, node_data: NodeData, tmp_path):  # noqa: ANN001
    reading = _reading(local_client, node_data)
    body = _corrected(reading)
    assert _post(local_client, body).status_code == 200
    out = tmp_path / "labels"
    _export(node_data, tmp_path, "--out", str(out))
    truth = GroundTruth.load(out)
    [record] = truth.radiographs
    ds = pydicom.dcmread(out / record.file)
    assert str(ds.SOPInstanceUID) == reading["sop_instance_uid"] == record.sop_instance_uid
    moved = next(h for h in record.heads if h.side.value == body["heads"][0]["side"])
    assert moved.stage.value == "II" and [n.value for n in moved.notes] == ["cysts"]
    expected = box_of_circle(tuple(body["heads"][0]["circle"]), int(ds.Columns), int(ds.Rows))
    assert moved.box == pytest.approx(expected, abs=0.2)  # circles and boxes are stored to 0.1 px
    agreement = json.loads((out / "agreement.json").read_text())
    assert agreement["heads_paired"] == 2 and agreement["heads_added_by_reviewers"] == 0
    assert 0.3 < agreement["box_iou_median"] < 1.0
    assert "| model \\ reviewer |" in (out / "agreement.md").read_text()


def test_deidentified_export_replaces_identifiers_and_keeps_the_key_outside(local_client, node_data, tmp_path):  # noqa: ANN001
    reading = _reading(local_client, node_data)
    assert _post(local_client, _corrected(reading)).status_code == 200
    out = tmp_path / "labels"
    _export(node_data, tmp_path, "--out", str(out), "--deidentify")
    [record] = GroundTruth.load(out).radiographs
    ds = pydicom.dcmread(out / record.file)
    assert str(ds.SOPInstanceUID) != reading["sop_instance_uid"]
    assert str(ds.PatientID) not in node_data.patients and str(ds.PatientName) not in ("", "Smith^John")
    key = tmp_path / "labels-key.csv"
    assert not any(p.name.endswith("key.csv") for p in out.rglob("*"))
    [row] = list(csv.DictReader(key.open()))
    assert row["sop_instance_uid"] == reading["sop_instance_uid"]
    assert row["new_sop_instance_uid"] == record.sop_instance_uid
    assert row["patient_id"] in node_data.patients


def _export(data: NodeData, tmp_path: Path, *args: str) -> None:
    config = tmp_path / "export.toml"
    config.write_text(f'[node]\ndata_dir = "{data.settings.node.data_dir}"\n'
                      f'[database]\nurl = "{data.settings.database.url}"\n')  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "avn_node", "labels", "export", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "1 radiographs, 2 heads" in proc.stdout


def test_retracting_a_version_sends_a_rejection_note_naming_its_results(local_client, node_data, tmp_path):  # noqa: ANN001
    uid = node_data.studies[0]
    detail = local_client.get(f"/api/v1/studies/{uid}").json()
    named = {r["sop_instance_uid"] for r in detail["results"]}
    url = f"/api/v1/studies/{uid}/retract"
    body = {"version": 1, "reason": "wrong patient: images of another hip"}
    assert local_client.post(url, json=body).status_code == 403  # a browser needs its CSRF token
    response = local_client.post(url, json=body, headers={"X-CSRF-Token": csrf_of(local_client)})
    assert response.status_code == 200, response.text
    note = response.json()
    assert note["kind"] == "kos" and [d["destination"] for d in note["deliveries"]] == ["archive"]
    with node_data.receiver.sessions() as session:
        row = session.get(Result, note["id"])
        path = node_data.receiver.files.local_path(row.file_key)
    ds = pydicom.dcmread(path)
    assert ds.ConceptNameCodeSequence[0].CodeValue == "113001"  # Rejected for Quality Reasons
    assert str(ds.StudyInstanceUID) == uid and ds.PatientID == detail["summary"]["patient_id"]
    referenced = {ref.ReferencedSOPInstanceUID for study in ds.CurrentRequestedProcedureEvidenceSequence
                  for series in study.ReferencedSeriesSequence for ref in series.ReferencedSOPSequence}  # fmt: skip
    assert referenced == named
    assert dciodvfy_errors(path) == []
    shown = local_client.get(f"/api/v1/studies/{uid}").json()["retractions"]
    assert shown[0]["user"] == "local" and shown[0]["reason"] == body["reason"]
    again = local_client.post(url, json=body, headers={"X-CSRF-Token": csrf_of(local_client)})
    assert again.status_code == 409 and "already" in again.json()["detail"]
    assert local_client.post(url, json={**body, "version": 7},
                             headers={"X-CSRF-Token": csrf_of(local_client)}).status_code == 409  # fmt: skip


def test_a_stored_label_is_an_event_naming_the_reviewer(local_client: TestClient, node_data: NodeData):
    assert _post(local_client, _corrected(_reading(local_client, node_data))).status_code == 200
    with node_data.receiver.sessions() as session:
        event = session.scalars(select(Event).where(Event.kind == "label.stored")).one()
    assert event.data["user"] == "local" and "circle moved" in event.detail
