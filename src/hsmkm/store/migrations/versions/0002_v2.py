"""Schema version 2 (per-record K-of-N shares) and the tables the release made when missing.

A first-release database's officers become share epoch N (its PIN split's epoch), indices by
name. Written to run on a database the release code already brought to version 2 as well
(every statement IF NOT EXISTS, the epoch step only on version 1): such a database may lack
the tables that code made only when first needed (user_settings).

Revision ID: 0002_v2
Revises: 0001_v1
"""

from __future__ import annotations

from alembic import op
from sqlalchemy import text

revision = "0002_v2"
down_revision = "0001_v1"
branch_labels = None
depends_on = None

V2_SCHEMA = """
CREATE TABLE IF NOT EXISTS share_epochs (
    epoch      INTEGER PRIMARY KEY,
    quorum     INTEGER NOT NULL,
    status     TEXT NOT NULL,
    request_id INTEGER
);
CREATE TABLE IF NOT EXISTS epoch_officers (
    epoch      INTEGER NOT NULL REFERENCES share_epochs(epoch),
    officer    TEXT NOT NULL,
    x          INTEGER NOT NULL,
    public_key BLOB NOT NULL,
    PRIMARY KEY (epoch, officer)
);
CREATE TABLE IF NOT EXISTS archive_shares (
    record_id INTEGER NOT NULL REFERENCES archive(id),
    epoch     INTEGER NOT NULL,
    officer   TEXT NOT NULL,
    x         INTEGER NOT NULL,
    sealed    BLOB NOT NULL,
    PRIMARY KEY (record_id, epoch, officer)
);
CREATE INDEX IF NOT EXISTS archive_shares_officer ON archive_shares(epoch, officer, record_id);
CREATE TABLE IF NOT EXISTS reshares (
    request_id   INTEGER NOT NULL REFERENCES recovery_requests(id),
    from_officer TEXT NOT NULL,
    to_officer   TEXT NOT NULL,
    sealed       BLOB NOT NULL,
    PRIMARY KEY (request_id, from_officer, to_officer)
);
CREATE TABLE IF NOT EXISTS request_claims (
    request_id INTEGER PRIMARY KEY REFERENCES recovery_requests(id),
    claimed_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS epoch_attestations (
    epoch     INTEGER NOT NULL REFERENCES share_epochs(epoch),
    officer   TEXT NOT NULL,
    signature BLOB NOT NULL,
    PRIMARY KEY (epoch, officer)
);
CREATE TABLE IF NOT EXISTS officer_tokens (
    officer      TEXT PRIMARY KEY,
    token_serial TEXT NOT NULL,
    token_label  TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS enroll_responses (
    code_row    INTEGER PRIMARY KEY REFERENCES enrollment_codes(id),
    kept_at     TEXT NOT NULL,
    salt        BLOB NOT NULL,
    sealed      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS enroll_responses_kept_at ON enroll_responses(kept_at);
CREATE TABLE IF NOT EXISTS directory_outbox (
    email       TEXT PRIMARY KEY,
    queued_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS user_settings (user_id INTEGER PRIMARY KEY REFERENCES users(id), key_alg TEXT, client TEXT)
"""

V1_EPOCH = """
INSERT INTO share_epochs(epoch, quorum, status)
    SELECT CAST(e.value AS INTEGER), CAST(q.value AS INTEGER), 'active' FROM meta e, meta q
    WHERE e.key = 'share_epoch' AND q.key = 'quorum';
INSERT INTO epoch_officers(epoch, officer, x, public_key)
    SELECT share_epoch, name, ROW_NUMBER() OVER (ORDER BY name), public_key FROM officers WHERE status = 'active'
"""


def upgrade() -> None:
    conn = op.get_bind()
    version = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
    for stmt in V2_SCHEMA.split(";"):
        if stmt.strip():
            op.execute(stmt)
    if version == "1":
        for stmt in V1_EPOCH.split(";"):
            if stmt.strip():
                op.execute(stmt)
    # Kept for readers of the release's marker; the revision itself is in alembic_version.
    op.execute(
        "INSERT INTO meta(key, value) VALUES ('schema_version', '2') "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
    )


def downgrade() -> None:
    raise NotImplementedError("schema version 2 is not undone")
