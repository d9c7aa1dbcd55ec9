"""TLS (PS3.15 B.9): with ``tls_cert`` the node's port speaks TLS only, ``tls_ca`` demands a client certificate,
and ``tls = true`` sends results over TLS — against dcmtk's storescu and storescp, with a test CA from openssl."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import DCMTK_SCP_TIMEOUTS, free_port, require_tool
from tests.node.conftest import Archive, Node, port_open, stop_process, storescu, wait_for

RESULTS_WAIT_S = 180


@dataclass(frozen=True)
class Pki:
    """A CA and two certificates it signed, for 127.0.0.1: the node's and a modality's."""

    ca: Path
    node_cert: Path
    node_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run([require_tool("openssl"), *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"),
             "-days", "2", "-subj", "/CN=avn-node test CA")  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for name in ("node", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{name}.key"), "-out",
                 str(d / f"{name}.csr"), "-subj", f"/CN={name}")  # fmt: skip
        _openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.pem"), "-CAkey",
                 str(d / "ca.key"), "-CAcreateserial", "-out", str(d / f"{name}.pem"), "-days", "2",
                 "-extfile", str(d / "san.ext"))  # fmt: skip
    return Pki(d / "ca.pem", d / "node.pem", d / "node.key", d / "client.pem", d / "client.key")


def _one_file(phantom_set: Path) -> list[Path]:
    return sorted(phantom_set.rglob("AP.dcm"))[:1]


def _security(pki: Pki, require_client_certificate: bool) -> str:
    text = f'tls_cert = "{pki.node_cert}"\ntls_key = "{pki.node_key}"\n'
    return text + (f'tls_ca = "{pki.ca}"\n' if require_client_certificate else "")


def test_with_tls_cert_the_node_accepts_tls_and_refuses_plain_tcp(node: Node, pki: Pki, phantom_set: Path):
    node.extra = _security(pki, require_client_certificate=False)
    node.start()
    files = _one_file(phantom_set)
    tls = storescu(node.port, files, options=["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)])
    assert tls.returncode == 0, tls.stderr
    assert storescu(node.port, files).returncode != 0
    assert node.status()["instances"] == {"accepted": 1}


def test_with_tls_ca_the_node_requires_a_client_certificate_it_signed(node: Node, pki: Pki, phantom_set: Path):
    node.extra = _security(pki, require_client_certificate=True)
    node.start()
    files = _one_file(phantom_set)
    anonymous = storescu(node.port, files, options=["+tla", "+cf", str(pki.ca)])
    assert anonymous.returncode != 0
    signed = storescu(node.port, files, options=["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca)])
    assert signed.returncode == 0, signed.stderr


@pytest.fixture
def tls_archive(tmp_path: Path, pki: Pki) -> Iterator[Archive]:
    """dcmtk storescp over TLS only, demanding a certificate signed by the test CA."""
    folder = tmp_path / "tls-archive"
    folder.mkdir()
    arch = Archive(folder, free_port())
    proc = subprocess.Popen(
        [require_tool("storescp"), *DCMTK_SCP_TIMEOUTS, "-aet", arch.aet, "-od", str(folder), "+uf",
         "+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca), "-rc", str(arch.port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: port_open(arch.port) or proc.poll() is not None, 10, "storescp +tls")
        assert proc.poll() is None, f"storescp exited with {proc.returncode}"
        yield arch
    finally:
        stop_process(proc)


def test_a_tls_destination_receives_the_results_over_tls(node: Node, pki: Pki, tls_archive: Archive, phantom_set: Path):
    node.extra = _security(pki, require_client_certificate=True)  # tls_ca also checks the archive's certificate
    node.destinations = [("archive", tls_archive.aet, tls_archive.port)]
    node.destinations_tls = True
    node.start()
    files = _one_file(phantom_set)
    assert storescu(node.port, files, options=["+tls", str(pki.client_key), str(pki.client_cert),
                                               "+cf", str(pki.ca)]).returncode == 0  # fmt: skip
    wait_for(lambda: len(tls_archive.files()) >= 3, RESULTS_WAIT_S, "the results at the TLS archive")
    wait_for(lambda: node.status()["deliveries"] == {"sent": 3}, 30, "every delivery recorded as sent")
