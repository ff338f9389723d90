"""The first release's schema (its schema_version 1), as that release made it.

Revision ID: 0001_v1
Revises:
"""

from __future__ import annotations

from alembic import op

revision = "0001_v1"
down_revision = None
branch_labels = None
depends_on = None

# Frozen: the DDL of the first release, statement by statement.
V1_SCHEMA = """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY,
    at        TEXT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    details   TEXT NOT NULL,
    prev_hash BLOB NOT NULL,
    hash      BLOB NOT NULL,
    mac       BLOB NOT NULL
);
CREATE TABLE users (
    id         INTEGER PRIMARY KEY,
    email      TEXT NOT NULL UNIQUE,
    name       TEXT,
    status     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE enrollment_codes (
    id           INTEGER PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users(id),
    code_id      TEXT NOT NULL UNIQUE,
    verifier     BLOB NOT NULL,
    purpose      TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL,
    attempts     INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    used_at      TEXT,
    recovery_id  INTEGER
);
CREATE TABLE certificates (
    serial      TEXT PRIMARY KEY,
    user_id     INTEGER REFERENCES users(id),
    kind        TEXT NOT NULL,
    der         BLOB NOT NULL,
    not_before  TEXT NOT NULL,
    not_after   TEXT NOT NULL,
    issued_at   TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'valid',
    current     INTEGER NOT NULL DEFAULT 1,
    revoked_at  TEXT,
    reason      TEXT,
    revoked_seq INTEGER
);
CREATE INDEX certificates_user ON certificates(user_id, kind, current);
CREATE INDEX certificates_revoked ON certificates(revoked_seq) WHERE revoked_seq IS NOT NULL;
CREATE TABLE archive (
    id             INTEGER PRIMARY KEY,
    user_id        INTEGER NOT NULL REFERENCES users(id),
    cert_serial    TEXT NOT NULL REFERENCES certificates(serial),
    algorithm      TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    format_version INTEGER NOT NULL,
    master_label   TEXT NOT NULL,
    sealed         BLOB NOT NULL
);
CREATE INDEX archive_user ON archive(user_id);
CREATE TABLE officers (
    name        TEXT PRIMARY KEY,
    uri         TEXT NOT NULL,
    public_key  BLOB NOT NULL,
    share       BLOB NOT NULL,
    share_epoch INTEGER NOT NULL,
    status      TEXT NOT NULL,
    added_at    TEXT NOT NULL
);
CREATE TABLE crls (
    number     INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL,
    base       INTEGER,
    this_update TEXT NOT NULL,
    next_update TEXT NOT NULL,
    entries    INTEGER NOT NULL,
    revoked_seq_upto INTEGER NOT NULL
);
CREATE TABLE recovery_requests (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER REFERENCES users(id),
    reason      TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    expires_at  TEXT NOT NULL,
    status      TEXT NOT NULL,
    records     TEXT NOT NULL,
    digest      BLOB NOT NULL,
    request_key_label TEXT NOT NULL,
    request_public_key BLOB NOT NULL,
    share_epoch INTEGER NOT NULL,
    kind        TEXT NOT NULL DEFAULT 'recovery',
    params      TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE approvals (
    request_id  INTEGER NOT NULL REFERENCES recovery_requests(id),
    officer     TEXT NOT NULL REFERENCES officers(name),
    signature   BLOB NOT NULL,
    sealed_share BLOB NOT NULL,
    approved_at TEXT NOT NULL,
    PRIMARY KEY (request_id, officer)
);
CREATE TABLE recovered (
    id          INTEGER PRIMARY KEY,
    code_row    INTEGER NOT NULL REFERENCES enrollment_codes(id),
    archive_id  INTEGER NOT NULL REFERENCES archive(id),
    sealed      BLOB NOT NULL
)
"""


def upgrade() -> None:
    for stmt in V1_SCHEMA.split(";"):
        if stmt.strip():
            op.execute(stmt)


def downgrade() -> None:
    raise NotImplementedError("the baseline is not undone")
