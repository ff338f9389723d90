"""The publication outbox beyond users' entries: the CA certificate and the CRLs are queued in
the transaction that changes them (a directory that is down receives them later), and the
outcome of the last drain that failed, for ``status``.

Revision ID: 0006_publication_outbox
Revises: 0005_est_stages
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_publication_outbox"
down_revision = "0005_est_stages"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "artifact_outbox",
        sa.Column("artifact", sa.Text, primary_key=True),
        sa.Column("queued_at", sa.Text, nullable=False),
    )
    op.create_table(
        "outbox_status",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("last_error_at", sa.Text),
        sa.CheckConstraint("id = 1"),
    )


def downgrade() -> None:
    op.drop_table("outbox_status")
    op.drop_table("artifact_outbox")
