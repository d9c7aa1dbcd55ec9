"""The node with ``[queue] backend = "celery"`` on PostgreSQL and Redis (fixtures of tests/conftest.py), and its
workers as processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.node.conftest import Node
from tests.reliability.conftest import _remove_decompressed_copies, archive  # noqa: F401 - fixtures
from tests.scaleout.servers import Postgres, Redis, Worker

LEASE_SECONDS = 6  # a lost worker's job is handed out again this long after its last heartbeat


@pytest.fixture
def celery_node(tmp_path: Path, redis: Redis, postgres: Postgres) -> Iterator[Node]:
    """A node (not started) on PostgreSQL that sends its jobs to Redis; ``workers`` run them."""
    node = Node(tmp_path / "node", database_url=postgres.url)
    node.sections = {"queue": f'backend = "celery"\nbroker_url = "{redis.url}"\nlease_seconds = {LEASE_SECONDS}'}
    node.root.mkdir()
    yield node
    if node.process is not None and node.process.poll() is None:
        node.stop()


@pytest.fixture
def workers(celery_node: Node) -> Iterator[list[Worker]]:
    """Two workers (not started) named w1 and w2."""
    pool = [Worker(celery_node.config, f"w{i}") for i in (1, 2)]
    yield pool
    for w in pool:
        w.stop()
