"""Seams: file keys relative to data_dir, job owner and analyzer, one job per case version, one delivery per
result and destination, event fields

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from pathlib import PurePath

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The store's layout: instances/<study>/<series>/<file>, results/<study>/<file>
KEY_PARTS = {"instances": 4, "results": 3}


def _keys_from_paths(table: str) -> None:
    """Rewrite the paths a process saw (relative to its working directory, or absolute) as keys."""
    rows = sa.table(table, sa.column("id", sa.Integer), sa.column("path", sa.Text), sa.column("file_key", sa.Text))
    connection = op.get_bind()
    for row_id, path in connection.execute(sa.select(rows.c.id, rows.c.path)).all():
        key = "/".join(PurePath(path).parts[-KEY_PARTS[table] :])
        connection.execute(sa.update(rows).where(rows.c.id == row_id).values(file_key=key))


def upgrade() -> None:
    for table in KEY_PARTS:
        with op.batch_alter_table(table) as batch_op:
            batch_op.add_column(sa.Column("file_key", sa.Text(), nullable=False, server_default=""))
        _keys_from_paths(table)
        with op.batch_alter_table(table) as batch_op:
            batch_op.drop_column("path")
    with op.batch_alter_table("instances") as batch_op:
        batch_op.add_column(sa.Column("analyzer", sa.String(32), nullable=False, server_default=""))
    op.execute("UPDATE instances SET analyzer = 'radiograph' WHERE state = 'accepted'")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.add_column(sa.Column("analyzer", sa.String(32), nullable=False, server_default="radiograph"))
        batch_op.add_column(sa.Column("worker_id", sa.String(128), nullable=False, server_default=""))
        batch_op.create_unique_constraint("uq_jobs_case_version", ["case_id", "version"])
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.create_unique_constraint("uq_deliveries_result_destination", ["result_id", "destination"])
    with op.batch_alter_table("events") as batch_op:
        batch_op.add_column(sa.Column("data", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events") as batch_op:
        batch_op.drop_column("data")
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_constraint("uq_deliveries_result_destination", type_="unique")
    with op.batch_alter_table("jobs") as batch_op:
        batch_op.drop_constraint("uq_jobs_case_version", type_="unique")
        batch_op.drop_column("worker_id")
        batch_op.drop_column("analyzer")
    with op.batch_alter_table("instances") as batch_op:
        batch_op.drop_column("analyzer")
    for table in KEY_PARTS:  # keys stay relative: the data_dir they were relative to is not in the database
        with op.batch_alter_table(table) as batch_op:
            batch_op.alter_column("file_key", new_column_name="path")
