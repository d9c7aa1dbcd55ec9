"""Shared fixtures: a small phantom data set generated once per session."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from avn_node.phantom.generate import PhantomOptions, generate

ALL_SYNTAXES = {"explicit": 1.0, "j2k": 1.0, "jpegls": 1.0, "jpeg-lossless": 1.0, "rle": 1.0}
PHANTOM_SET_OPTIONS = PhantomOptions(studies=12, seed=12, syntax_mix=ALL_SYNTAXES, size_range=(600, 800))


def require_tool(name: str) -> str:
    """Path of a real peer tool; the Makefile installs them, so a missing one fails the test run."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: run the tests through `make test`, which installs it")
    return path


@pytest.fixture(scope="session")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 patients at reduced detector size, every transfer syntax represented."""
    out = tmp_path_factory.mktemp("phantom")
    generate(PHANTOM_SET_OPTIONS, out, workers=2)
    return out


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dicom3tools' dciodvfy prints for a file."""
    out = subprocess.run([require_tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc on loopback: DICOM ``aet@127.0.0.1:dicom_port``, REST on ``http_port``."""

    aet: str
    dicom_port: int
    http_port: int

    def read(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as response:
            return response.read()

    def get(self, path: str) -> object:
        return json.loads(self.read(path))

    def post(self, path: str, body: object) -> object:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=json.dumps(body).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A fresh Orthanc archive (Debian package) accepting any caller, stopped after the test."""
    binary = require_tool("Orthanc")
    server = OrthancServer("ARCHIVE", free_port(), free_port())
    config = {
        "Name": "avn-node test archive",
        "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"),
        "DicomAet": server.aet,
        "DicomPort": server.dicom_port,
        "HttpPort": server.http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "Plugins": [],
    }
    config_path = tmp_path / "orthanc.json"
    config_path.write_text(json.dumps(config))
    proc = subprocess.Popen([binary, str(config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                server.get("/system")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("Orthanc did not start")
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
