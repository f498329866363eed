"""The ledger: runs, deliveries, suppressions, settings.

Revision ID: 0001
Revises:
Create Date: 2026-05-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("campaign", sa.String(200), nullable=False),
        sa.Column("segment_hash", sa.String(64), nullable=False),
        sa.Column("template_hash", sa.String(64), nullable=False),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("recipients", sa.Integer, nullable=False, server_default="0"),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
    )
    op.create_index("ix_runs_campaign", "runs", ["campaign", "started_at"])
    op.create_table(
        "deliveries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column(
            "run_id",
            sa.String(64),
            sa.ForeignKey("runs.run_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("contact_id", sa.Text, nullable=False),
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("first_attempt_at", TS, nullable=True),
        sa.Column("next_attempt_at", TS, nullable=True),
        sa.Column("last_code", sa.Integer, nullable=True),
        sa.Column("last_reply", sa.Text, nullable=True),
        sa.Column("queue_id", sa.Text, nullable=True),
        sa.Column("tls_version", sa.String(16), nullable=True),
        sa.Column("tls_cipher", sa.String(100), nullable=True),
        sa.Column("tls_bits", sa.Integer, nullable=True),
        sa.Column("tls_trust", sa.String(16), nullable=True),
        sa.Column("tls_host", sa.Text, nullable=True),
        sa.Column("tls_ip", sa.String(64), nullable=True),
        sa.Column("blocked_reason", sa.Text, nullable=True),
        sa.Column("fields", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.UniqueConstraint("run_id", "address", name="uq_deliveries_run_address"),
    )
    # Partial indexes over the rows still to send: claiming walks only those, and a row leaves
    # the index when it is claimed, so finished rows cost the queue nothing.
    queued = sa.text("status = 'queued'")
    deferred = sa.text("status = 'deferred'")
    op.create_index(
        "ix_deliveries_queued",
        "deliveries",
        ["run_id", "id"],
        sqlite_where=queued,
        postgresql_where=queued,
    )
    op.create_index(
        "ix_deliveries_deferred",
        "deliveries",
        ["run_id", "next_attempt_at"],
        sqlite_where=deferred,
        postgresql_where=deferred,
    )
    op.create_table(
        "suppressions",
        sa.Column("address", sa.Text, primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("settings")
    op.drop_table("suppressions")
    op.drop_index("ix_deliveries_deferred", table_name="deliveries")
    op.drop_index("ix_deliveries_queued", table_name="deliveries")
    op.drop_table("deliveries")
    op.drop_index("ix_runs_campaign", table_name="runs")
    op.drop_table("runs")
