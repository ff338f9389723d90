"""The KM database's tables (SQLAlchemy Core): the schema at the head revision of the migrations."""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

audit = Table(
    "audit",
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("at", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("details", Text, nullable=False),
    Column("prev_hash", LargeBinary, nullable=False),
    Column("hash", LargeBinary, nullable=False),
    Column("mac", LargeBinary, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", Text, nullable=False, unique=True),
    Column("name", Text),
    Column("status", Text, nullable=False),
    Column("created_at", Text, nullable=False),
)

enrollment_codes = Table(
    "enrollment_codes",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("code_id", Text, nullable=False, unique=True),
    Column("verifier", LargeBinary, nullable=False),
    Column("purpose", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("expires_at", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False),
    Column("used_at", Text),
    Column("recovery_id", Integer),
    # revision 0005: when each EST stage of the code was done
    Column("sign_done_at", Text),
    Column("key_done_at", Text),
)

certificates = Table(
    "certificates",
    metadata,
    Column("serial", Text, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id")),
    Column("kind", Text, nullable=False),
    Column("der", LargeBinary, nullable=False),
    Column("not_before", Text, nullable=False),
    Column("not_after", Text, nullable=False),
    Column("issued_at", Text, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'valid'")),
    Column("current", Integer, nullable=False, server_default=text("1")),
    Column("revoked_at", Text),
    Column("reason", Text),
    Column("revoked_seq", Integer),
)
Index("certificates_user", certificates.c.user_id, certificates.c.kind, certificates.c.current)
Index(
    "certificates_revoked",
    certificates.c.revoked_seq,
    sqlite_where=certificates.c.revoked_seq.isnot(None),
    postgresql_where=certificates.c.revoked_seq.isnot(None),
)

archive = Table(
    "archive",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False),
    Column("cert_serial", Text, ForeignKey("certificates.serial"), nullable=False),
    Column("algorithm", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("format_version", Integer, nullable=False),
    Column("master_label", Text, nullable=False),
    Column("sealed", LargeBinary, nullable=False),
)
Index("archive_user", archive.c.user_id)

officers = Table(
    "officers",
    metadata,
    Column("name", Text, primary_key=True),
    Column("uri", Text, nullable=False),
    Column("public_key", LargeBinary, nullable=False),
    Column("share", LargeBinary, nullable=False),
    Column("share_epoch", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("added_at", Text, nullable=False),
)

crls = Table(
    "crls",
    metadata,
    Column("number", Integer, primary_key=True, autoincrement=False),
    Column("kind", Text, nullable=False),
    Column("base", Integer),
    Column("this_update", Text, nullable=False),
    Column("next_update", Text, nullable=False),
    Column("entries", Integer, nullable=False),
    Column("revoked_seq_upto", Integer, nullable=False),
)

recovery_requests = Table(
    "recovery_requests",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id")),
    Column("reason", Text, nullable=False),
    Column("requested_by", Text, nullable=False),
    Column("created_at", Text, nullable=False),
    Column("expires_at", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("records", Text, nullable=False),
    Column("digest", LargeBinary, nullable=False),
    Column("request_key_label", Text, nullable=False),
    Column("request_public_key", LargeBinary, nullable=False),
    Column("share_epoch", Integer, nullable=False),
    Column("kind", Text, nullable=False, server_default=text("'recovery'")),
    Column("params", Text, nullable=False, server_default=text("'{}'")),
)

approvals = Table(
    "approvals",
    metadata,
    Column("request_id", Integer, ForeignKey("recovery_requests.id"), nullable=False),
    Column("officer", Text, ForeignKey("officers.name"), nullable=False),
    Column("signature", LargeBinary, nullable=False),
    Column("sealed_share", LargeBinary, nullable=False),
    Column("approved_at", Text, nullable=False),
    PrimaryKeyConstraint("request_id", "officer"),
)

recovered = Table(
    "recovered",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("code_row", Integer, ForeignKey("enrollment_codes.id"), nullable=False),
    Column("archive_id", Integer, ForeignKey("archive.id"), nullable=False),
    Column("sealed", LargeBinary, nullable=False),
)

# --- schema version 2: per-record K-of-N shares ---------------------------------------------

share_epochs = Table(
    "share_epochs",
    metadata,
    Column("epoch", Integer, primary_key=True, autoincrement=False),
    Column("quorum", Integer, nullable=False),
    Column("status", Text, nullable=False),
    Column("request_id", Integer),
)

epoch_officers = Table(
    "epoch_officers",
    metadata,
    Column("epoch", Integer, ForeignKey("share_epochs.epoch"), nullable=False),
    Column("officer", Text, nullable=False),
    Column("x", Integer, nullable=False),
    Column("public_key", LargeBinary, nullable=False),
    PrimaryKeyConstraint("epoch", "officer"),
)

archive_shares = Table(
    "archive_shares",
    metadata,
    Column("record_id", Integer, ForeignKey("archive.id"), nullable=False),
    Column("epoch", Integer, nullable=False),
    Column("officer", Text, nullable=False),
    Column("x", Integer, nullable=False),
    Column("sealed", LargeBinary, nullable=False),
    PrimaryKeyConstraint("record_id", "epoch", "officer"),
)
Index("archive_shares_officer", archive_shares.c.epoch, archive_shares.c.officer, archive_shares.c.record_id)

reshares = Table(
    "reshares",
    metadata,
    Column("request_id", Integer, ForeignKey("recovery_requests.id"), nullable=False),
    Column("from_officer", Text, nullable=False),
    Column("to_officer", Text, nullable=False),
    Column("sealed", LargeBinary, nullable=False),
    PrimaryKeyConstraint("request_id", "from_officer", "to_officer"),
)

request_claims = Table(
    "request_claims",
    metadata,
    Column("request_id", Integer, ForeignKey("recovery_requests.id"), primary_key=True, autoincrement=False),
    Column("claimed_by", Text, nullable=False),
)

epoch_attestations = Table(
    "epoch_attestations",
    metadata,
    Column("epoch", Integer, ForeignKey("share_epochs.epoch"), nullable=False),
    Column("officer", Text, nullable=False),
    Column("signature", LargeBinary, nullable=False),
    PrimaryKeyConstraint("epoch", "officer"),
)

officer_tokens = Table(
    "officer_tokens",
    metadata,
    Column("officer", Text, primary_key=True),
    Column("token_serial", Text, nullable=False),
    Column("token_label", Text, nullable=False),
)

# --- tables the release code made when missing -----------------------------------------------

enroll_responses = Table(
    "enroll_responses",
    metadata,
    Column("code_row", Integer, ForeignKey("enrollment_codes.id"), nullable=False),
    Column("stage", Text, nullable=False),  # revision 0005: one response per code and stage
    Column("kept_at", Text, nullable=False),
    Column("salt", LargeBinary, nullable=False),
    Column("sealed", LargeBinary, nullable=False),
    PrimaryKeyConstraint("code_row", "stage"),
)
Index("enroll_responses_kept_at", enroll_responses.c.kept_at)

directory_outbox = Table(
    "directory_outbox",
    metadata,
    Column("email", Text, primary_key=True),
    Column("queued_at", Text, nullable=False),
)

# --- revision 0006: the CA certificate's and CRLs' publication queued, the last failure -----

artifact_outbox = Table(
    "artifact_outbox",
    metadata,
    Column("artifact", Text, primary_key=True),  # an ArtifactKind value
    Column("queued_at", Text, nullable=False),
)

outbox_status = Table(
    "outbox_status",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("failures", Integer, nullable=False),
    Column("last_error", Text),
    Column("last_error_at", Text),
    CheckConstraint("id = 1"),
)

user_settings = Table(
    "user_settings",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True, autoincrement=False),
    Column("key_alg", Text),
    Column("client", Text),
)

# --- revision 0003: counters drawn with UPDATE … RETURNING ------------------------------------

counters = Table(
    "counters",
    metadata,
    Column("name", Text, primary_key=True),
    Column("value", Integer, nullable=False),
)

# --- revision 0004: published artifacts kept in the database -----------------------------------

published_artifacts = Table(
    "published_artifacts",
    metadata,
    Column("kind", Text, primary_key=True),
    Column("der", LargeBinary, nullable=False),
    Column("sha256", Text, nullable=False),
    Column("modified_at", Text, nullable=False),
    Column("number", Integer),
    Column("next_update", Text),
)
