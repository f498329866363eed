"""Index the rows in flight, so that resuming a big run finds them without a scan.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    sending = sa.text("status = 'sending'")
    op.create_index(
        "ix_deliveries_sending",
        "deliveries",
        ["run_id"],
        sqlite_where=sending,
        postgresql_where=sending,
    )


def downgrade() -> None:
    op.drop_index("ix_deliveries_sending", table_name="deliveries")
