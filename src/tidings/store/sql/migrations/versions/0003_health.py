"""Endpoint health: alarm policies, breakers in the store, per-minute results,
suspensions and owner notices.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 19:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("alarm_policy", sa.Text(), nullable=True))
    with op.batch_alter_table("endpoints") as batch:
        batch.add_column(sa.Column("alarm_policy", sa.Text(), nullable=True))
    op.create_table(
        "breakers",
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("opened_at", sa.BigInteger(), nullable=True),
        sa.Column("cool_down_ms", sa.BigInteger(), nullable=True),
        sa.Column("changed_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["endpoint_id"], ["endpoints.id"]),
        sa.PrimaryKeyConstraint("endpoint_id"),
    )
    op.create_table(
        "endpoint_minutes",
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("minute", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("successes", sa.Integer(), nullable=False),
        sa.Column("dead", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint_id", "minute"),
    )
    op.create_index("ix_endpoint_minutes_minute", "endpoint_minutes", ["minute"], unique=False)
    op.create_table(
        "suspensions",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("suspended_at", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("suspended_by", sa.String(length=200), nullable=False),
        sa.Column("resumed_at", sa.BigInteger(), nullable=True),
        sa.Column("resumed_by", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(["endpoint_id"], ["endpoints.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_suspensions_endpoint", "suspensions", ["endpoint_id", "id"], unique=False)
    op.create_table(
        "notices",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("endpoint_id", sa.String(length=40), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("sent_at", sa.BigInteger(), nullable=False),
        sa.Column("email_id", sa.String(length=40), nullable=True),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_notices_endpoint", "notices", ["endpoint_id", "kind", "sent_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_notices_endpoint", table_name="notices")
    op.drop_table("notices")
    op.drop_index("ix_suspensions_endpoint", table_name="suspensions")
    op.drop_table("suspensions")
    op.drop_index("ix_endpoint_minutes_minute", table_name="endpoint_minutes")
    op.drop_table("endpoint_minutes")
    op.drop_table("breakers")
    with op.batch_alter_table("endpoints") as batch:
        batch.drop_column("alarm_policy")
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("alarm_policy")
