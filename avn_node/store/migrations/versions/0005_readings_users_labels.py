"""Readings (the model's per-radiograph findings), dashboard users, reviewers' labels; studies keep their
Accession Number for the study search

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import avn_node.store.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("studies") as batch_op:
        batch_op.add_column(sa.Column("accession_number", sa.String(16), nullable=False, server_default=""))
        batch_op.create_index("ix_studies_accession_number", ["accession_number"])
    op.create_table(
        "readings",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("case_id", sa.Integer(), sa.ForeignKey("cases.id"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("view", sa.String(8), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("out_of_distribution", sa.Boolean(), nullable=False),
        sa.Column("refused_heads", sa.Integer(), nullable=False),
        sa.Column("heads", sa.JSON(), nullable=False),
        sa.Column("created_at", avn_node.store.models.UTCDateTime(), nullable=False),
    )
    for column in ("case_id", "study_instance_uid", "sop_instance_uid", "created_at"):
        op.create_index(f"ix_readings_{column}", "readings", [column])
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("created_at", avn_node.store.models.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_users_token_sha256", "users", ["token_sha256"])
    op.create_table(
        "labels",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sop_instance_uid", sa.String(64), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("reading_id", sa.Integer(), sa.ForeignKey("readings.id"), nullable=True),
        sa.Column("model_version", sa.String(64), nullable=False),
        sa.Column("reviewer", sa.String(64), nullable=False),
        sa.Column("view", sa.String(8), nullable=False),
        sa.Column("heads", sa.JSON(), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.Column("created_at", avn_node.store.models.UTCDateTime(), nullable=False),
    )
    op.create_index("ix_labels_sop_instance_uid", "labels", ["sop_instance_uid"])
    op.create_index("ix_labels_study_instance_uid", "labels", ["study_instance_uid"])


def downgrade() -> None:
    op.drop_table("labels")
    op.drop_table("users")
    op.drop_table("readings")
    with op.batch_alter_table("studies") as batch_op:
        batch_op.drop_index("ix_studies_accession_number")
        batch_op.drop_column("accession_number")
