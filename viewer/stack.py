"""Orthanc (with DICOMweb), the node and OHIF on loopback: a PACS that auto-forwards hip radiographs to the
node, receives its results into the same study, and shows them in a browser.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import uvicorn

from viewer.proxy import create_app

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
APP_CONFIG = Path(__file__).with_name("app-config.js")
NPM_TIMEOUT_S = 600  # one download of the OHIF tarball; a stalled registry fails instead of waiting forever
PACS_AET = "PACS"
NODE_AET = "AVN_NODE"

# The PACS routing rule: every radiograph series, once stable, goes to the node instance by instance (an
# Orthanc job per instance; one job for a whole series stops at the first instance the node refuses).
FORWARD_LUA = """
function OnStableSeries(seriesId, tags, metadata)
  local modality = tags['Modality']
  if modality == 'CR' or modality == 'DX' then
    for _, instance in pairs(ParseJson(RestApiGet('/series/' .. seriesId .. '/instances'))) do
      SendToModality(instance['ID'], 'avn')
    end
  end
end
"""


def ohif_dist(cache: Path) -> Path:
    """OHIF's prebuilt viewer (npm ``@ohif/app``), unpacked once into ``cache`` after checking its sha512."""
    target = cache / f"ohif-{OHIF_VERSION}"
    if (target / "dist" / "index.html").is_file():
        return target / "dist"
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found: install Node.js and npm to fetch the OHIF viewer")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        subprocess.run(
            [npm, "pack", f"{OHIF_PACKAGE}@{OHIF_VERSION}", "--silent", "--pack-destination", tmp],
            check=True, stdout=subprocess.DEVNULL, timeout=NPM_TIMEOUT_S,
        )  # fmt: skip
        tarball = next(Path(tmp).glob("*.tgz"))
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != OHIF_INTEGRITY:
            raise RuntimeError(f"{tarball.name}: integrity {digest} differs from the pinned {OHIF_INTEGRITY}")
        with tarfile.open(tarball) as archive:
            archive.extractall(tmp, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(Path(tmp) / "package", target)
    return target / "dist"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class ViewerStack:
    """The three services under ``root`` (``orthanc/``, ``node/``, a log per service), on loopback."""

    root: Path
    dist: Path
    weights: Path
    viewer_port: int = 3000
    orthanc_http_port: int = 8042
    orthanc_dicom_port: int = 4242
    node_port: int = 11112
    dashboard_port: int = 8080
    stable_seconds: int = 3
    _processes: list[subprocess.Popen] = field(default_factory=list, init=False)
    _server: uvicorn.Server | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.viewer_port}/"

    @property
    def orthanc_url(self) -> str:
        return f"http://127.0.0.1:{self.orthanc_http_port}"

    @property
    def pacs(self) -> str:
        """Where modalities send: ``AET@HOST:PORT`` of the PACS."""
        return f"{PACS_AET}@127.0.0.1:{self.orthanc_dicom_port}"

    def __enter__(self) -> ViewerStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self._start_orthanc()
            self._start_node()
            self._start_proxy()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            assert self._thread is not None
            self._thread.join(timeout=10)
        for process in reversed(self._processes):
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()

    def _spawn(self, name: str, argv: list[str], port: int) -> None:
        log = self.root / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._processes.append(process)
        deadline = time.monotonic() + 60
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not start listening on port {port}; {log}:\n{tail}")
            time.sleep(0.1)

    def _start_orthanc(self) -> None:
        binary = shutil.which("Orthanc")
        if binary is None or not DICOMWEB_PLUGIN.is_file():
            raise RuntimeError("Orthanc with its DICOMweb plugin is needed: Debian packages orthanc, orthanc-dicomweb")
        storage = self.root / "orthanc"
        (self.root / "forward.lua").write_text(FORWARD_LUA)
        config = {
            "Name": "avn-node viewer PACS", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "DicomAet": PACS_AET, "DicomPort": self.orthanc_dicom_port, "HttpPort": self.orthanc_http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpCompressionEnabled": False,
            "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False, "StableAge": self.stable_seconds,
            "DicomModalities": {"avn": [NODE_AET, "127.0.0.1", self.node_port]},
            "LuaScripts": [str(self.root / "forward.lua")], "Plugins": [str(DICOMWEB_PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full",
                         "SeriesMetadata": "Full"},
        }  # fmt: skip
        (self.root / "orthanc.json").write_text(json.dumps(config, indent=2))
        self._spawn("orthanc", [binary, str(self.root / "orthanc.json")], self.orthanc_http_port)

    def _start_node(self) -> None:
        data = self.root / "node"
        (self.root / "avn-node.toml").write_text(f"""
[node]
ae_title = "{NODE_AET}"
host = "127.0.0.1"
port = {self.node_port}
data_dir = "{data}"
[database]
url = "sqlite:///{data}/avn-node.db"
[pipeline]
study_idle_seconds = {self.stable_seconds}
[models]
dir = "{self.weights.resolve()}"
[security]
allowed_peer_ips = ["127.0.0.1"]
min_free_disk_mb = 64
[dashboard]
port = {self.dashboard_port}
[[destinations]]
name = "pacs"
ae_title = "{PACS_AET}"
host = "127.0.0.1"
port = {self.orthanc_dicom_port}
""")
        argv = [sys.executable, "-m", "avn_node", "serve", "--config", str(self.root / "avn-node.toml")]
        self._spawn("node", argv, self.node_port)

    def _start_proxy(self) -> None:
        app = create_app(self.dist, APP_CONFIG, self.orthanc_url)
        config = uvicorn.Config(app, host="127.0.0.1", port=self.viewer_port, log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="viewer-proxy", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the viewer could not listen on 127.0.0.1:{self.viewer_port}")
            time.sleep(0.05)
