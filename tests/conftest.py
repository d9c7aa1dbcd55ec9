"""Shared fixtures: a small phantom data set generated once per session."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from avn_node.config import Settings
from avn_node.phantom.generate import PhantomOptions, generate
from avn_node.receive.scp import Receiver
from avn_node.store.database import open_database

if TYPE_CHECKING:
    from tests.scaleout.servers import Postgres, Redis

ALL_SYNTAXES = {"explicit": 1.0, "j2k": 1.0, "jpegls": 1.0, "jpeg-lossless": 1.0, "rle": 1.0}
PHANTOM_SET_OPTIONS = PhantomOptions(studies=12, seed=12, syntax_mix=ALL_SYNTAXES, size_range=(600, 800))

# dcmtk's network timeouts, seconds: connection (-to), association messages (-ta), DIMSE messages (-td); a peer
# that stops answering fails the call instead of leaving it waiting forever.
DCMTK_TIMEOUTS = ["-to", "30", "-ta", "30", "-td", "60"]
DCMTK_SCP_TIMEOUTS = ["-ta", "30", "-td", "60"]
STORESCU_TIMEOUT_S = 300  # the whole call, as a last resort


DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian orthanc-dicomweb

PROGRESS_LOG = os.environ.get("AVN_TEST_PROGRESS")
"""When set, a file where each test's start and end are appended as they happen (.ci/run reads it to name
the tests still running when the whole run hits its time limit)."""


def _progress(event: str, nodeid: str) -> None:
    # The controller sees every worker's tests start and finish; a worker would write each line twice.
    if PROGRESS_LOG and "PYTEST_XDIST_WORKER" not in os.environ:
        with open(PROGRESS_LOG, "a") as log:
            log.write(f"{time.strftime('%H:%M:%S')} {event} {nodeid}\n")


def pytest_runtest_logstart(nodeid: str, location: tuple) -> None:
    _progress("start", nodeid)


def pytest_runtest_logfinish(nodeid: str, location: tuple) -> None:
    _progress("end", nodeid)


MODULE_TIMEOUTS = {
    # Seconds, fixtures included, for modules whose tests run for minutes on two cores shared with the other
    # xdist worker. Measured so: test_classifier_epochs_lower_unaugmented_training_loss 406 s; the first
    # shipped-weights test 314 s (120 s of it generating the held-out set).
    "tests/models/test_training.py": 1200,
    "tests/models/test_shipped_weights.py": 1200,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules' own timeout, unless a test or its module sets one (pyproject's ``timeout`` otherwise)."""
    for item in items:
        seconds = MODULE_TIMEOUTS.get(item.nodeid.split("::")[0])
        if seconds and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(seconds))


def pytest_timeout_set_timer(item: pytest.Item, settings) -> bool | None:
    """pytest-timeout's thread method, with the stacks on stderr when in an xdist worker.

    A worker's stdout is /dev/null (execnet's channel took it), so pytest-timeout's own dump would be lost;
    its stderr is the controller's. Like pytest-timeout, the timer then ends the worker, which xdist reports as
    a crash of that test and replaces.
    """
    if settings.method != "thread" or "PYTEST_XDIST_WORKER" not in os.environ:
        return None  # pytest-timeout's own
    timer = threading.Timer(settings.timeout, _dump_stacks_and_exit, (item, settings.timeout))
    timer.name = f"timeout {item.nodeid}"
    timer.daemon = True

    def cancel() -> None:
        timer.cancel()
        timer.join()

    item.cancel_timeout = cancel  # what pytest-timeout's pytest_timeout_cancel_timer calls
    timer.start()
    return True


def _dump_stacks_and_exit(item: pytest.Item, timeout: float) -> None:
    try:
        capman = item.config.pluginmanager.getplugin("capturemanager")
        if capman:
            capman.suspend_global_capture(item)  # gives back the real stderr
        worker = os.environ.get("PYTEST_XDIST_WORKER")
        lines = [f"\n+++++ Timeout: {item.nodeid} ran longer than {timeout:g} s (worker {worker}) +++++\n"]
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident != threading.get_ident():
                lines.append(f"~~~~~ Stack of {names.get(ident, '<unknown>')} ({ident}) ~~~~~\n")
                lines.extend(traceback.format_stack(frame))
        sys.stderr.write("".join(lines) + "+++++ Timeout +++++\n")
        sys.stderr.flush()
    finally:
        os._exit(1)


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


@pytest.fixture
def receiver(tmp_path: Path) -> Receiver:
    """The C-STORE handler's store step over a fresh database and data folder under ``tmp_path``."""
    settings = Settings(node={"data_dir": tmp_path / "var"}, database={"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
                        security={"min_free_disk_mb": 1})  # fmt: skip
    settings.tmp_dir.mkdir(parents=True)
    return Receiver(settings, open_database(settings.database.url))


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dicom3tools' dciodvfy prints for a file."""
    out = subprocess.run([require_tool("dciodvfy"), "-new", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


_HANDED_OUT: set[int] = set()


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on loopback right now, none handed out before in this process.

    Every socket stays bound until all ``n`` are picked, so the kernel cannot give the same port twice, and a
    port picked for one fixture is never picked again for another in the same run.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            s = socket.socket()
            held.append(s)
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
            if port not in _HANDED_OUT:
                ports.append(port)
                _HANDED_OUT.add(port)
    finally:
        for s in held:
            s.close()
    return ports


def free_port() -> int:
    """One TCP port free on loopback right now (see ``free_ports``)."""
    return free_ports(1)[0]


_TORCH_GLOBALS = (
    ("get_num_threads", "set_num_threads"),
    ("get_default_dtype", "set_default_dtype"),
    ("is_grad_enabled", "set_grad_enabled"),
    ("get_float32_matmul_precision", "set_float32_matmul_precision"),
)


@pytest.fixture(autouse=True)
def _restore_torch_globals() -> Iterator[None]:
    """Undo a test's changes to torch's process-wide settings (threads, determinism, dtype, grad, RNG).

    Only where torch is already imported, so tests that do not need torch do not pay for its import; in a
    whole-suite run the test modules that use torch import it at collection, before any test runs.
    """
    torch = sys.modules.get("torch")
    if torch is None:
        yield
        return
    saved = [(setter, getattr(torch, getter)()) for getter, setter in _TORCH_GLOBALS]
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = torch.random.get_rng_state()
    yield
    for setter, value in saved:
        getattr(torch, setter)(value)
    torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
    torch.random.set_rng_state(rng)


@dataclass(frozen=True)
class OrthancServer:
    """A running Orthanc on loopback: DICOM ``aet@127.0.0.1:dicom_port``, REST on ``http_port`` (with basic
    ``auth`` when it has users)."""

    aet: str
    dicom_port: int
    http_port: int
    auth: tuple[str, str] | None = None

    def _request(self, path: str, body: object = None, method: str = "") -> bytes:
        request = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                         data=None if body is None else json.dumps(body).encode(),
                                         method=method or ("GET" if body is None else "POST"))  # fmt: skip
        if self.auth is not None:
            token = base64.b64encode(":".join(self.auth).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read()

    def read(self, path: str) -> bytes:
        return self._request(path)

    def get(self, path: str) -> object:
        return json.loads(self.read(path))

    def post(self, path: str, body: object) -> object:
        return json.loads(self._request(path, body))

    def add_modality(self, name: str, aet: str, port: int) -> None:
        """Make ``aet`` on loopback ``port`` known (Orthanc sends storage commitment reports only to those)."""
        self._request(f"/modalities/{name}", {"AET": aet, "Host": "127.0.0.1", "Port": port}, "PUT")


def _orthanc(tmp_path: Path, dicomweb_user: tuple[str, str] | None = None) -> Iterator[OrthancServer]:
    """A fresh Orthanc archive (Debian package) accepting any DICOM caller; with ``dicomweb_user`` also its
    DICOMweb plugin at ``/dicom-web/``, and every HTTP request needs that user."""
    binary = require_tool("Orthanc")
    server = OrthancServer("ARCHIVE", *free_ports(2), auth=dicomweb_user)
    config = {
        "Name": "avn-node test archive",
        "StorageDirectory": str(tmp_path / "orthanc-db"),
        "IndexDirectory": str(tmp_path / "orthanc-db"),
        "DicomAet": server.aet,
        "DicomPort": server.dicom_port,
        "HttpPort": server.http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": dicomweb_user is not None,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomCheckCalledAet": False,
        "Plugins": [],
    }
    if dicomweb_user is not None:
        config["Plugins"] = [require_file(DICOMWEB_PLUGIN)]
        config["RegisteredUsers"] = dict([dicomweb_user])
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
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


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[OrthancServer]:
    """A fresh Orthanc archive accepting any caller, stopped after the test."""
    yield from _orthanc(tmp_path)


@pytest.fixture
def orthanc_dicomweb(tmp_path: Path) -> Iterator[OrthancServer]:
    """A fresh Orthanc with its DICOMweb plugin, HTTP only for the user ``avn`` (password ``secret``)."""
    yield from _orthanc(tmp_path, ("avn", "secret"))


def require_file(path: Path) -> str:
    """A file a Debian package installs (the Makefile installs them), or the test run fails saying so."""
    if not path.is_file():
        pytest.fail(f"{path} not found: run the tests through `make test`, which installs it")
    return str(path)


def race_between_read_and_write(
    monkeypatch: pytest.MonkeyPatch, owner: type, write: str, claimers: list[Callable[[], object]]
) -> list[object]:
    """Run ``claimers`` in threads that all pass their read before any makes its first ``owner.write`` call
    (a barrier), as two workers racing for one row would; returns what each claimer returned."""
    barrier = threading.Barrier(len(claimers), timeout=30)
    original = getattr(owner, write)
    waited: set[int] = set()

    def gated(*args: object, **kwargs: object) -> object:
        if threading.get_ident() not in waited:
            waited.add(threading.get_ident())
            barrier.wait()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, write, staticmethod(gated))
    results: list[object] = [None] * len(claimers)

    def run(i: int) -> None:
        results[i] = claimers[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(claimers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(t.is_alive() for t in threads), "a claimer did not finish"
    return results


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    """redis-server on a free loopback port, without persistence."""
    from tests.scaleout.servers import Redis

    server = Redis(tmp_path / "redis")
    server.root.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    """A PostgreSQL cluster of its own on a free loopback port, with an empty database ``avn``."""
    from tests.scaleout.servers import Postgres

    # not under tmp_path: pytest makes that readable by the test's user only, and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="avn-node-postgres-"))
    server = Postgres(root)
    try:
        server.init()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
