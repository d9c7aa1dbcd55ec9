"""The `make viewer` stack (Orthanc + DICOMweb, the node, OHIF behind one origin) and headless Chromium."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_ports, require_tool
from tests.node.conftest import WEIGHTS
from viewer.stack import DICOMWEB_PLUGIN, ViewerStack, ohif_dist

ROOT = Path(__file__).resolve().parents[2]
# Chromium as root, offline: no sandbox, software WebGL, and none of its calls home (DICOM-NOTES).
CHROMIUM_ARGS = [
    "--no-sandbox", "--enable-unsafe-swiftshader", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
]  # fmt: skip


def qido(origin: str, path: str) -> list[dict]:
    """A QIDO-RS answer from the DICOMweb service under ``origin`` (ending in ``/``)."""
    request = urllib.request.Request(origin + "dicom-web/" + path, headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read()
    return json.loads(body) if body else []


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerStack]:
    require_tool("Orthanc")
    if not DICOMWEB_PLUGIN.is_file():
        pytest.fail("Orthanc's DICOMweb plugin is missing: run the tests through `make test`, which installs it")
    root = tmp_path_factory.mktemp("viewer")
    viewer, orthanc_http, orthanc_dicom, node, dashboard = free_ports(5)
    with ViewerStack(
        root, ohif_dist(ROOT / "build"), WEIGHTS, viewer_port=viewer, orthanc_http_port=orthanc_http,
        orthanc_dicom_port=orthanc_dicom, node_port=node, dashboard_port=dashboard, stable_seconds=1,
    ) as running:  # fmt: skip
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=require_tool("chromium"), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
