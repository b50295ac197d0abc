"""Endpoint secrets are kept sealed: their columns take the longer ciphertext.

A sealed secret (``enc:v1:<key id>:<base64url>``) is about 104 characters for a
38-character ``whsec_`` secret: more than the 100 the columns held. Only
PostgreSQL enforces a VARCHAR length (and widening one there rewrites nothing);
SQLite's columns take any length, so its tables are left as they are. The
secrets themselves are sealed at the first start with a key, not here: a
migration runs without one (``tidings migrate``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

COLUMNS = ("secret", "previous_secret")


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for column in COLUMNS:
        op.alter_column("endpoints", column, type_=sa.Text(), existing_type=sa.String(100))


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for column in COLUMNS:
        op.alter_column("endpoints", column, type_=sa.String(100), existing_type=sa.Text())
