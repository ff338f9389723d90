"""Published artifacts kept in the database: the CA certificate and the current full and delta
CRL bytes, each with its content hash (the ETag every node serves).

An existing KM's CA certificate is taken from its certificates table; its CRLs are kept from
the next publication on.

Revision ID: 0004_published_artifacts
Revises: 0003_counters
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0004_published_artifacts"
down_revision = "0003_counters"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "published_artifacts",
        sa.Column("kind", sa.Text, primary_key=True),
        sa.Column("der", sa.LargeBinary, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("modified_at", sa.Text, nullable=False),
        sa.Column("number", sa.Integer),
        sa.Column("next_update", sa.Text),
    )
    conn = op.get_bind()
    row = conn.execute(
        sa.text("SELECT der, issued_at FROM certificates WHERE kind = 'ca' ORDER BY issued_at DESC LIMIT 1")
    ).first()
    if row is not None:
        der = bytes(row[0])
        conn.execute(
            sa.text("INSERT INTO published_artifacts(kind, der, sha256, modified_at) VALUES ('ca', :der, :h, :at)"),
            {"der": der, "h": hashlib.sha256(der).hexdigest(), "at": str(row[1])},
        )


def downgrade() -> None:
    op.drop_table("published_artifacts")
