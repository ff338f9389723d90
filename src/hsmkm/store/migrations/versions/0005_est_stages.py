"""EST enrollment in two stages: a code records when its signing (SIGN) and encryption (KEY)
stage was done, and a kept response is one per code and stage.

Responses kept by the one-call enrollment become that code's 'enroll' response. SQLite cannot
change a primary key in place: the table is made again and its rows copied.

Revision ID: 0005_est_stages
Revises: 0004_published_artifacts
"""

from __future__ import annotations

from alembic import op

revision = "0005_est_stages"
down_revision = "0004_published_artifacts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE enrollment_codes ADD COLUMN sign_done_at TEXT")
    op.execute("ALTER TABLE enrollment_codes ADD COLUMN key_done_at TEXT")
    op.execute(
        """CREATE TABLE enroll_responses_new (
    code_row INTEGER NOT NULL REFERENCES enrollment_codes(id),
    stage    TEXT NOT NULL,
    kept_at  TEXT NOT NULL,
    salt     BLOB NOT NULL,
    sealed   BLOB NOT NULL,
    PRIMARY KEY (code_row, stage)
)"""
    )
    op.execute(
        "INSERT INTO enroll_responses_new(code_row, stage, kept_at, salt, sealed) "
        "SELECT code_row, 'enroll', kept_at, salt, sealed FROM enroll_responses"
    )
    op.execute("DROP INDEX IF EXISTS enroll_responses_kept_at")
    op.execute("DROP TABLE enroll_responses")
    op.execute("ALTER TABLE enroll_responses_new RENAME TO enroll_responses")
    op.execute("CREATE INDEX enroll_responses_kept_at ON enroll_responses(kept_at)")


def downgrade() -> None:
    op.execute(
        """CREATE TABLE enroll_responses_old (
    code_row INTEGER PRIMARY KEY REFERENCES enrollment_codes(id),
    kept_at  TEXT NOT NULL,
    salt     BLOB NOT NULL,
    sealed   BLOB NOT NULL
)"""
    )
    op.execute(
        "INSERT INTO enroll_responses_old(code_row, kept_at, salt, sealed) "
        "SELECT code_row, kept_at, salt, sealed FROM enroll_responses WHERE stage = 'enroll'"
    )
    op.execute("DROP INDEX IF EXISTS enroll_responses_kept_at")
    op.execute("DROP TABLE enroll_responses")
    op.execute("ALTER TABLE enroll_responses_old RENAME TO enroll_responses")
    op.execute("CREATE INDEX enroll_responses_kept_at ON enroll_responses(kept_at)")
    op.execute("ALTER TABLE enrollment_codes DROP COLUMN key_done_at")
    op.execute("ALTER TABLE enrollment_codes DROP COLUMN sign_done_at")
