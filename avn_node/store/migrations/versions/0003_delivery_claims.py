"""Deliveries record when and by whom a dispatcher claimed them: one claimed but never recorded is in doubt

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import avn_node.store.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(sa.Column("claimed_at", avn_node.store.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("claimed_by", sa.String(128), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_column("claimed_by")
        batch_op.drop_column("claimed_at")
