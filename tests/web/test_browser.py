"""The dashboard in headless Chromium (Debian's, driven by Playwright): overview, study page, a retry, a correction
on the review page, and the export that carries it.

Screenshots go to ``$AVN_DASHBOARD_SCREENSHOTS`` when set (`make viewer-screenshots` puts them in docs/img).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from avn_node.ground_truth import GroundTruth
from avn_node.labels import export
from avn_node.store.models import Delivery, DeliveryState, Label
from avn_node.web.server import Dashboard
from tests.conftest import require_tool
from tests.viewer.conftest import CHROMIUM_ARGS
from tests.web.conftest import NodeData

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]


@pytest.fixture
def dashboard(node_data: NodeData) -> Iterator[Dashboard]:
    settings = node_data.settings.model_copy(update={"dashboard": node_data.settings.dashboard.model_copy(
        update={"port": 0})})  # fmt: skip
    served = Dashboard(settings, node_data.receiver.sessions, node_data.receiver.files)
    served.start()
    yield served
    served.stop()


@pytest.fixture
def page(dashboard: Dashboard) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=require_tool("chromium"), args=CHROMIUM_ARGS)
        tab = chromium.new_page(viewport={"width": 1500, "height": 950}, base_url=dashboard.url)
        errors: list[str] = []
        tab.on("pageerror", lambda e: errors.append(str(e)))
        tab.errors = errors
        yield tab
        chromium.close()


def _shot(page, tmp_path: Path, name: str) -> None:  # noqa: ANN001
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=False)
    if target := os.environ.get("AVN_DASHBOARD_SCREENSHOTS"):
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / name)


def test_overview_study_retry_review_and_export_in_a_browser(page, node_data: NodeData, tmp_path: Path):  # noqa: ANN001
    page.goto("/")
    page.get_by_text("Recent studies").wait_for()
    _shot(page, tmp_path, "dashboard-overview.png")

    uid = node_data.studies[0]
    page.goto(f"/studies/{uid}")
    page.get_by_text("Structured report").wait_for()
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth > 0)")
    _shot(page, tmp_path, "dashboard-study.png")

    page.goto("/failures")
    page.get_by_role("button", name="Retry now").click()
    page.wait_for_url("**/failures")
    with node_data.receiver.sessions() as session:
        assert session.get(Delivery, node_data.dead_delivery).state == DeliveryState.PENDING

    page.goto(f"/studies/{uid}")
    page.get_by_role("link", name="review").first.click()
    page.wait_for_url("**/review/**")
    sop = page.url.rsplit("/", 1)[1]
    ring = page.locator("circle.head").first
    ring.wait_for()
    box = ring.bounding_box()
    start = (box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.2)  # on the ring's upper stroke area
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(start[0] + 30, start[1] + 12, steps=5)
    page.mouse.up()
    page.keyboard.press("2")  # stage II for the selected (first) head
    page.get_by_role("button", name="Confirm (Enter)").click()
    page.get_by_text("Saved (label").wait_for()
    _shot(page, tmp_path, "dashboard-review.png")
    assert page.errors == []

    with node_data.receiver.sessions() as session:
        label = session.scalars(select(Label).where(Label.sop_instance_uid == sop)).one()
        assert any("circle moved" in c for c in label.changes), label.changes
        moved_side = label.heads[0]["side"]
        out = tmp_path / "export"
        export(session, node_data.receiver.files, out)
    [record] = GroundTruth.load(out).radiographs
    head = next(h for h in record.heads if h.side.value == moved_side)
    assert head.stage.value == "II"
