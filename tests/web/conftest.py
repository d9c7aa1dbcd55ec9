"""A node database filled by the real pipeline — receive, group, analyse (readings from the phantom's ground
truth, so no weights are needed), report, deliveries — and the dashboard app over it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from sqlalchemy import select

from avn_node.analyse.queue import JobQueue
from avn_node.analyse.worker import Worker
from avn_node.config import Destination, Settings
from avn_node.findings import CaseFinding, fuse_hips
from avn_node.ground_truth import GroundTruth
from avn_node.group.scheduler import close_stable_studies, schedule_cases
from avn_node.receive.scp import Receiver
from avn_node.receive.statuses import Status
from avn_node.report.results import ResultSet, build_result_sets
from avn_node.store.database import open_database
from avn_node.store.models import Delivery, DeliveryState, Role, Study, utcnow
from avn_node.web.app import create_app
from avn_node.web.auth import add_user
from tests.report.conftest import MODEL, finding_from_truth

TOKEN = "dashboard-admin-token-for-tests"
PASSWORD = "correct horse battery"
ARCHIVE = Destination(name="archive", ae_title="ARCHIVE", host="127.0.0.1", port=1)


class TruthAnalyzer:
    """Reads each radiograph as its ground truth says (fixed probabilities); reports with the real builders."""

    name = "radiograph"
    version = MODEL.version

    def __init__(self, truth: GroundTruth) -> None:
        self.by_sop = {r.sop_instance_uid: r for r in truth.radiographs}
        self.timings: dict[str, float] = {}

    def analyse(self, sources: Sequence[Dataset]) -> CaseFinding:
        radiographs = tuple(finding_from_truth(self.by_sop[str(ds.SOPInstanceUID)], ds) for ds in sources)
        return CaseFinding(radiographs, fuse_hips(radiographs), MODEL)

    def report(self, finding: CaseFinding, sources: Mapping[str, Dataset], case_version: int,
               predecessors: Mapping[str, Sequence[Dataset]]) -> list[ResultSet]:  # fmt: skip
        return build_result_sets(finding, sources, case_version, predecessors, True)


@dataclass
class NodeData:
    receiver: Receiver
    studies: list[str]
    patients: list[str]
    dead_delivery: int

    @property
    def settings(self) -> Settings:
        return self.receiver.settings


@pytest.fixture(scope="session")
def _node_data_once(phantom_set: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three patients received, analysed and reported; every result has a delivery to "archive", one is dead.
    Built once; each test gets a copy (:func:`node_data`)."""
    root = tmp_path_factory.mktemp("node-data")
    receiver = _receiver(root)
    truth = GroundTruth.load(phantom_set)
    patients = sorted({r.patient_id for r in truth.radiographs})[:3]
    for r in truth.radiographs:
        if r.patient_id in patients:
            incoming = receiver.settings.tmp_dir / "in.dcm"
            shutil.copyfile(phantom_set / r.file, incoming)
            assert receiver.store(incoming, "MODALITY") == Status.SUCCESS
    settings = receiver.settings.model_copy(update={"destinations": [ARCHIVE]})
    with receiver.sessions() as session:
        close_stable_studies(session, settings.pipeline, utcnow() + timedelta(hours=1))
        schedule_cases(session, settings.pipeline)
        session.commit()
    worker = Worker(settings, receiver.sessions, {"radiograph": TruthAnalyzer(truth)},
                    JobQueue(receiver.sessions, "test", 600), receiver.files)  # fmt: skip
    while worker.run_next():
        pass
    with receiver.sessions() as session:
        dead = session.scalars(select(Delivery).order_by(Delivery.id)).first()
        dead.state, dead.attempts, dead.last_error = DeliveryState.DEAD, 7, "association rejected by ARCHIVE"
        session.commit()
    receiver.sessions.kw["bind"].dispose()
    (root / "patients.txt").write_text("\n".join(patients))
    return root


def _receiver(root: Path) -> Receiver:
    settings = Settings(node={"data_dir": root / "var"}, database={"url": f"sqlite:///{root / 'db.sqlite'}"},
                        security={"min_free_disk_mb": 1})  # fmt: skip
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    return Receiver(settings, open_database(settings.database.url))


@pytest.fixture
def node_data(_node_data_once: Path, tmp_path: Path) -> Iterator[NodeData]:
    """A private copy of the filled database and data folder."""
    root = tmp_path / "node"
    shutil.copytree(_node_data_once, root)
    receiver = _receiver(root)
    with receiver.sessions() as session:
        studies = list(session.scalars(select(Study.study_instance_uid).order_by(Study.id)))
        dead = session.scalars(select(Delivery.id).where(Delivery.state == DeliveryState.DEAD)).one()
    yield NodeData(receiver, studies, (root / "patients.txt").read_text().split("\n"), dead)
    receiver.sessions.kw["bind"].dispose()


def dashboard_settings(data: NodeData, host: str) -> Settings:
    return data.settings.model_copy(update={"destinations": [ARCHIVE], "dashboard": data.settings.dashboard.model_copy(
        update={"host": host, "token": TOKEN})})  # fmt: skip


@pytest.fixture
def local_client(node_data: NodeData) -> Iterator[TestClient]:
    """The dashboard as bound to loopback: a browser without login acts as the local administrator."""
    app = create_app(dashboard_settings(node_data, "127.0.0.1"), node_data.receiver.sessions, node_data.receiver.files)
    with TestClient(app) as client:
        yield client
    app.state.unsubscribe()


@pytest.fixture
def open_app(node_data: NodeData):  # noqa: ANN201
    """The dashboard as bound to 0.0.0.0: every request needs a login or a token."""
    app = create_app(dashboard_settings(node_data, "0.0.0.0"), node_data.receiver.sessions, node_data.receiver.files)
    yield app
    app.state.unsubscribe()


def make_user(data: NodeData, name: str, role: Role) -> str:
    """Adds the user (password :data:`PASSWORD`); their API token."""
    with data.receiver.sessions() as session:
        return add_user(session, name, role, PASSWORD)


def csrf_of(client: TestClient, path: str = "/") -> str:
    """The CSRF token a page hands the browser (its meta tag)."""
    html = client.get(path).text
    marker = '<meta name="csrf-token" content="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]
