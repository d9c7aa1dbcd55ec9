"""Deliveries record their storage commitment: the latest request's Transaction UID and when it was committed

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import avn_node.store.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.add_column(sa.Column("commitment_uid", sa.String(length=64), nullable=False, server_default=""))
        batch_op.add_column(sa.Column("committed_at", avn_node.store.models.UTCDateTime(), nullable=True))
        batch_op.create_index("ix_deliveries_commitment_uid", ["commitment_uid"])


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch_op:
        batch_op.drop_index("ix_deliveries_commitment_uid")
        batch_op.drop_column("committed_at")
        batch_op.drop_column("commitment_uid")
