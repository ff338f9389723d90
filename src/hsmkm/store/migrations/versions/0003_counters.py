"""Counters drawn with UPDATE … RETURNING (not MAX()+1 under a single writer), seeded from the data.

Revision ID: 0003_counters
Revises: 0002_v2
"""

from __future__ import annotations

from alembic import op

revision = "0003_counters"
down_revision = "0002_v2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE counters (name TEXT NOT NULL PRIMARY KEY, value INTEGER NOT NULL)")
    op.execute(
        "INSERT INTO counters(name, value) SELECT 'revoked_seq', COALESCE(MAX(revoked_seq), 0) FROM certificates"
    )


def downgrade() -> None:
    op.execute("DROP TABLE counters")
