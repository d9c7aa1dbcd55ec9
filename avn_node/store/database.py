"""Engine, sessions and migrations. SQLite runs in WAL mode with full sync, so a commit is durable.

Only ``serve`` and ``avn-node db upgrade`` migrate (:func:`open_database`); every other command opens an
existing database at the current schema (:func:`connect`) and creates nothing.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def _alembic(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


class DatabaseNotReadyError(RuntimeError):
    """No database at the URL, or one at another schema than this version of the node needs."""


def migrate(url: str) -> None:
    """Bring the database at ``url`` to the newest schema (Alembic ``upgrade head``)."""
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(_alembic(url), "head")


def make_engine(url: str) -> Engine:
    """An engine; for SQLite: WAL journal, synchronous FULL, a busy timeout for concurrent writers."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


def open_database(url: str) -> sessionmaker[Session]:
    """Migrate, then return a session factory."""
    migrate(url)
    return sessionmaker(make_engine(url), expire_on_commit=False)


def connect(url: str) -> sessionmaker[Session]:
    """A session factory for the existing database at ``url``; never creates or migrates it.

    Raises:
        DatabaseNotReadyError: no SQLite file there, or the schema is not the newest one.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise DatabaseNotReadyError(f"no database at {parsed.database} (`avn-node serve` creates it)")
    engine = make_engine(url)
    head = ScriptDirectory.from_config(_alembic(url)).get_current_head()
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    if current != head:
        engine.dispose()
        raise DatabaseNotReadyError(
            f"the database schema is at {current or 'nothing'}, this node needs {head}: run `avn-node db upgrade`"
        )
    return sessionmaker(engine, expire_on_commit=False)
