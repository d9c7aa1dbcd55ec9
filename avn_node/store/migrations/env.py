"""Alembic environment: migrates the URL it is given to the metadata of avn_node.store.models."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from avn_node.store.models import Base

url = context.config.get_main_option("sqlalchemy.url")
engine = create_engine(url)
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
