"""The KM database: SQLite in WAL mode, a schema version, one transaction per state change."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from hsmkm import errors

SCHEMA_VERSION = 2

# Tables added by schema version 2 (per-record K-of-N shares); Database.open adds them to a
# version-1 database, so a KM of the first release opens as it is.
SCHEMA_V2 = """
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
"""

# A first-release KM's officers become share epoch N (its PIN split's epoch), indices by name.
_V1_EPOCH = """
INSERT INTO share_epochs(epoch, quorum, status)
    SELECT CAST(e.value AS INTEGER), CAST(q.value AS INTEGER), 'active' FROM meta e, meta q
    WHERE e.key = 'share_epoch' AND q.key = 'quorum';
INSERT INTO epoch_officers(epoch, officer, x, public_key)
    SELECT share_epoch, name, ROW_NUMBER() OVER (ORDER BY name), public_key FROM officers WHERE status = 'active'
"""

SCHEMA = """
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
);
""" + SCHEMA_V2

# Tables added within schema version 1: made when missing, so older databases gain them.
ADDITIVE_SCHEMA = """
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
)
"""
_ADDITIVE_TABLES = ("enroll_responses", "directory_outbox")


class Database:
    """A connection to the KM's SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.conn = sqlite3.connect(
                str(path), timeout=60.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise errors.Unreachable(f"cannot open database {path}: {exc}") from None
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("PRAGMA foreign_keys=ON")
        self.conn.execute("PRAGMA busy_timeout=60000")

    @classmethod
    def create(cls, path: Path) -> Database:
        if path.exists():
            raise errors.AlreadyExists(f"database {path} already exists")
        db = cls(path)
        with db.transaction():
            for stmt in (SCHEMA + ";" + ADDITIVE_SCHEMA).split(";"):
                if stmt.strip():
                    db.conn.execute(stmt)
            db.conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        return db

    @classmethod
    def open(cls, path: Path) -> Database:
        if not path.exists():
            raise errors.NotFound(f"no KM database at {path} (run 'hsmkm init')")
        try:
            db = cls(path)
            version = db.get_meta("schema_version")
        except sqlite3.DatabaseError as exc:
            raise errors.MalformedInput(f"{path}: a damaged database ({exc})") from None
        if version == "1":
            db._upgrade_from_1()
        elif version != str(SCHEMA_VERSION):
            raise errors.BadInput(f"database schema version {version} is not {SCHEMA_VERSION}")
        db._add_missing_tables()
        return db

    def _upgrade_from_1(self) -> None:
        """Add the version-2 tables; idempotent, and a no-op when another process did it first."""
        with self.transaction() as conn:
            if self.get_meta("schema_version") != "1":
                return
            for stmt in (SCHEMA_V2 + ";" + _V1_EPOCH).split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            self.set_meta("schema_version", str(SCHEMA_VERSION))

    def _add_missing_tables(self) -> None:
        have = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if all(t in have for t in _ADDITIVE_TABLES):
            return
        with self.transaction():
            for stmt in ADDITIVE_SCHEMA.split(";"):
                if stmt.strip():
                    self.conn.execute(stmt)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE … COMMIT; rolled back on any exception. Writers are serialised."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")

    def get_meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def close(self) -> None:
        self.conn.close()
