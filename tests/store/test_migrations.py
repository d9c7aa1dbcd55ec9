"""Alembic: the newest migration upgrades a populated database made by the revision before it, on SQLite and
on PostgreSQL, and keeps every row."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Boolean, DateTime, Float, Integer, MetaData, create_engine, func, select
from sqlalchemy.types import JSON

from avn_node.analyse.queue import JobQueue
from avn_node.store.database import _alembic, connect, migrate
from avn_node.store.models import JobState
from tests.scaleout.servers import Postgres

TABLES = ["studies", "cases", "instances", "jobs", "results", "deliveries", "events"]  # parents first


def _value(column, n: int):  # noqa: ANN001, ANN202 - a reflected column
    kind = column.type
    if isinstance(kind, Boolean):
        return False
    if isinstance(kind, Integer):
        return n
    if isinstance(kind, Float):
        return 1.0
    if isinstance(kind, DateTime):
        return datetime(2026, 1, 1, tzinfo=UTC)
    if isinstance(kind, JSON):
        return {"n": n}
    return "queued" if column.name == "state" else f"{column.name}-{n}"[: getattr(kind, "length", None) or 64]


def _populate(url: str, rows_per_table: int = 3) -> dict[str, int]:
    """Rows in every table, written through the schema as the previous revision reflects it."""
    engine = create_engine(url)
    meta = MetaData()
    meta.reflect(engine)
    with engine.begin() as connection:
        for name in TABLES:
            table = meta.tables[name]
            for n in range(1, rows_per_table + 1):
                values = {c.name: _value(c, n) for c in table.columns if not c.nullable and c.server_default is None}
                values["id"] = n
                connection.execute(table.insert().values(**values))
    counts = _counts(engine)
    engine.dispose()
    return counts


def _counts(engine) -> dict[str, int]:  # noqa: ANN001
    meta = MetaData()
    meta.reflect(engine)
    with engine.connect() as connection:
        count = select(func.count())
        return {name: connection.execute(count.select_from(meta.tables[name])).scalar() for name in TABLES}


def _upgrade_populated(url: str) -> None:
    script = ScriptDirectory.from_config(_alembic(url))
    head = script.get_revision(script.get_current_head())
    command.upgrade(_alembic(url), head.down_revision)
    before = _populate(url)
    migrate(url)
    sessions = connect(url)  # refuses a database not at the newest schema
    assert _counts(sessions.kw["bind"]) == before
    job = JobQueue(sessions, "after-upgrade", 60).claim()  # the queue works on the migrated rows
    assert job is not None and job.state == JobState.RUNNING and job.enqueued_at is None


def test_newest_migration_upgrades_a_populated_sqlite_database(tmp_path: Path):
    _upgrade_populated(f"sqlite:///{tmp_path / 'old.db'}")


@pytest.mark.peers
def test_newest_migration_upgrades_a_populated_postgresql_database(postgres: Postgres):
    _upgrade_populated(postgres.url)
