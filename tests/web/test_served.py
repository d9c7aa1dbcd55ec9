"""The dashboard inside ``avn-node serve``: bound to every address it needs the token; it stops with the node."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.node.conftest import ROOT, Node, port_open

pytestmark = [pytest.mark.xdist_group("node"), pytest.mark.peers, pytest.mark.timeout(300)]
TOKEN = "a-token-for-the-served-dashboard"


def _get(url: str, token: str = "") -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_binds_the_dashboard_to_every_address_behind_its_token(tmp_path: Path):
    node = Node(tmp_path / "node", dashboard_host="0.0.0.0", dashboard_token=TOKEN)
    node.root.mkdir()
    node.start()
    try:
        base = f"http://127.0.0.1:{node.dashboard_port}"
        assert _get(f"{base}/api/v1/overview")[0] == 401
        assert _get(f"{base}/metrics")[0] == 401
        status, body = _get(f"{base}/api/v1/overview", TOKEN)
        assert status == 200 and json.loads(body)["queue"]["jobs_queued"] == 0
        assert _get(f"{base}/healthz")[0] == 200
        status, body = _get(f"{base}/metrics", TOKEN)
        assert status == 200 and b"avn_jobs" in body
        shown = subprocess.run([sys.executable, "-m", "avn_node", "status", "--config", str(node.config)],
                               capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
        assert shown.returncode == 0 and "Queue depth" in shown.stdout
    finally:
        assert node.stop() == 0
    assert not port_open(node.dashboard_port)


def test_serve_exits_2_naming_the_dashboard_port_when_it_is_taken(tmp_path: Path):
    node = Node(tmp_path / "node")
    node.root.mkdir()
    node.write_config()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", node.dashboard_port))
        taken.listen()
        proc = subprocess.run([sys.executable, "-m", "avn_node", "serve", "--config", str(node.config)],
                              capture_output=True, text=True, timeout=240, cwd=ROOT)  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert '"dashboard.port"' in proc.stderr and str(node.dashboard_port) in proc.stderr
    assert not port_open(node.port), "the SCP never started"
