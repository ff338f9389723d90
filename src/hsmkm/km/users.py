"""Users and their one-time enrollment codes.

A code carries 160 random bits, typed as 8 groups of 4 base32 characters. Only a SHA-256
verifier is stored (the entropy makes a slow hash pointless); a code is single use, expires,
and is burnt after a number of wrong attempts.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from hsmkm import addresses, errors
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.protocol import normalize_code
from hsmkm.smimecaps import ClientProfile

CODE_BYTES = 20


class UserStatus(str, Enum):
    PENDING = "pending"  # has a code, not yet enrolled
    ACTIVE = "active"
    REVOKED = "revoked"


class CodePurpose(str, Enum):
    ENROLL = "enroll"
    REENABLE = "reenable"
    RECOVERY = "recovery"


@dataclass(frozen=True)
class User:
    id: int
    email: str
    name: str | None
    status: UserStatus
    created_at: str


@dataclass(frozen=True)
class CodeRow:
    id: int
    user_id: int
    purpose: CodePurpose
    recovery_id: int | None


def normalize_email(email: str) -> str:
    return addresses.normalize_email(email)


def new_code() -> str:
    raw = base64.b32encode(secrets.token_bytes(CODE_BYTES)).decode()
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def code_verifier(code: str) -> bytes:
    return hashlib.sha256(b"hsmkm-code-v1\x00" + normalize_code(code).encode()).digest()


def _user_from_row(row: tuple[Any, ...]) -> User:
    return User(row[0], row[1], row[2], UserStatus(row[3]), row[4])


def find_user(conn: sqlite3.Connection, email: str) -> User:
    row = conn.execute(
        "SELECT id, email, name, status, created_at FROM users WHERE email = ?", (normalize_email(email),)
    ).fetchone()
    if row is None:
        raise errors.NotFound(f"unknown user {email}")
    return _user_from_row(row)


def list_users(conn: sqlite3.Connection) -> list[User]:
    return [
        _user_from_row(r)
        for r in conn.execute("SELECT id, email, name, status, created_at FROM users ORDER BY email")
    ]


def issue_code(
    conn: sqlite3.Connection,
    user_id: int,
    purpose: CodePurpose,
    now: datetime,
    ttl_days: int,
    max_attempts: int,
    recovery_id: int | None = None,
) -> tuple[str, int]:
    """A fresh code for the user; any earlier unused code of theirs stops working."""
    conn.execute(
        "UPDATE enrollment_codes SET used_at = ? WHERE user_id = ? AND used_at IS NULL",
        ("superseded:" + now.isoformat(), user_id),
    )
    code = new_code()
    cur = conn.execute(
        "INSERT INTO enrollment_codes(user_id, code_id, verifier, purpose, created_at, expires_at, "
        "max_attempts, recovery_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            user_id,
            secrets.token_hex(8),
            code_verifier(code),
            purpose.value,
            now.isoformat(),
            (now + timedelta(days=ttl_days)).isoformat(),
            max_attempts,
            recovery_id,
        ),
    )
    return code, int(cur.lastrowid or 0)


@dataclass(frozen=True)
class UserSettings:
    """Per-user choices over the KM-wide defaults: the encryption key algorithm and the client
    profile (what the user's mail clients decrypt, written into their certificates)."""

    key_alg: KeyAlgorithm | None = None
    client: ClientProfile | None = None


# A table of its own, made when first needed, so databases made before it need no migration.
_SETTINGS_TABLE = ("CREATE TABLE IF NOT EXISTS user_settings (user_id INTEGER PRIMARY KEY REFERENCES users(id), "
                   "key_alg TEXT, client TEXT)")


def set_settings(conn: sqlite3.Connection, user_id: int, settings: UserSettings) -> None:
    """Record the choices given (an unset one keeps its earlier value)."""
    if settings.key_alg is None and settings.client is None:
        return
    conn.execute(_SETTINGS_TABLE)
    old = settings_of(conn, user_id)
    key_alg = settings.key_alg or old.key_alg
    client = settings.client or old.client
    conn.execute(
        "INSERT OR REPLACE INTO user_settings(user_id, key_alg, client) VALUES (?, ?, ?)",
        (user_id, key_alg.value if key_alg else None, client.value if client else None),
    )


def settings_of(conn: sqlite3.Connection, user_id: int) -> UserSettings:
    exists = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'user_settings'").fetchone()
    if not exists:
        return UserSettings()
    row = conn.execute("SELECT key_alg, client FROM user_settings WHERE user_id = ?", (user_id,)).fetchone()
    if row is None:
        return UserSettings()
    try:
        return UserSettings(KeyAlgorithm(row[0]) if row[0] else None, ClientProfile(row[1]) if row[1] else None)
    except ValueError:
        raise errors.MalformedInput(f"user {user_id}: unknown settings {row[0]!r}, {row[1]!r} in the database") from None


def add_user(km: KeyManager, email: str, name: str | None,
             settings: UserSettings = UserSettings()) -> tuple[User, str]:
    """Create a user and their one-time enrollment code."""
    email = normalize_email(email)
    name = addresses.check_name(name)
    now = km.clock()
    with km.change(AuditAction.USER_ADD, email=email, name=name) as ch:
        if ch.conn.execute("SELECT 1 FROM users WHERE email = ?", (email,)).fetchone():
            raise errors.AlreadyExists(f"user {email} already exists")
        cur = ch.conn.execute(
            "INSERT INTO users(email, name, status, created_at) VALUES (?, ?, ?, ?)",
            (email, name, UserStatus.PENDING.value, now.isoformat()),
        )
        uid = int(cur.lastrowid or 0)
        set_settings(ch.conn, uid, settings)
        if settings.key_alg is not None:
            ch.details["key"] = settings.key_alg.value
        if settings.client is not None:
            ch.details["client"] = settings.client.value
        code, _ = issue_code(
            ch.conn, uid, CodePurpose.ENROLL, now, km.config.code_ttl_days, km.config.code_max_attempts
        )
    return User(uid, email, name, UserStatus.PENDING, now.isoformat()), code


def parse_user_csv(text: str) -> list[tuple[str, str | None]]:
    """Rows of ``email,name`` (a header row ``email,name`` is skipped); every row checked first."""
    with errors.malformed("CSV"):
        return _parse_user_rows(text)


def _parse_user_rows(text: str) -> list[tuple[str, str | None]]:
    rows: list[tuple[str, str | None]] = []
    seen: set[str] = set()
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not row or not "".join(row).strip():
            continue
        if lineno == 1 and row[0].strip().lower() == "email":
            continue
        try:
            email = normalize_email(row[0])
        except errors.BadInput as exc:
            raise errors.MalformedInput(f"line {lineno}: {exc}") from None
        if email in seen:
            raise errors.MalformedInput(f"line {lineno}: {email} appears twice")
        seen.add(email)
        try:
            name = addresses.check_name(row[1]) if len(row) > 1 else None
        except errors.BadInput as exc:
            raise errors.MalformedInput(f"line {lineno}: {exc}") from None
        rows.append((email, name))
    return rows


def import_users(
    km: KeyManager,
    rows: Iterable[tuple[str, str | None]],
    progress: Callable[[int], None] = lambda n: None,
    before_commit: Callable[[list[tuple[str, str]]], None] = lambda codes: None,
) -> list[tuple[str, str]]:
    """Add many users in one transaction (all or none), one audit entry per user.

    ``before_commit`` gets the codes inside the transaction: the caller writes them out
    durably there, so no committed user is without a code somebody holds.
    """
    rows = list(rows)
    now = km.clock()
    out: list[tuple[str, str]] = []
    with km.transaction() as conn:
        existing = {r[0] for r in conn.execute("SELECT email FROM users")}
        clash = [e for e, _ in rows if e in existing]
        if clash:
            raise errors.AlreadyExists(f"user {clash[0]} already exists ({len(clash)} in the file)")
        audit = km.audit(conn)
        for i, (email, name) in enumerate(rows, start=1):
            cur = conn.execute(
                "INSERT INTO users(email, name, status, created_at) VALUES (?, ?, ?, ?)",
                (email, name, UserStatus.PENDING.value, now.isoformat()),
            )
            code, _ = issue_code(
                conn, int(cur.lastrowid or 0), CodePurpose.ENROLL, now,
                km.config.code_ttl_days, km.config.code_max_attempts,
            )
            audit.append(km.actor, AuditAction.USER_ADD, {"email": email, "name": name, "bulk": True})
            out.append((email, code))
            if i % 100 == 0:
                progress(100)
        progress(len(rows) % 100)
        before_commit(out)
    return out


class CodesFileState(str, Enum):
    COMMITTED = "committed"  # every user in it exists and the codes are theirs
    VOID = "void"  # none of its users exist: an import that never committed
    MIXED = "mixed"


def codes_file_state(conn: sqlite3.Connection, pairs: list[tuple[str, str]]) -> CodesFileState:
    """What a codes file left by an earlier ``user import`` is worth now."""
    found = 0
    for email, code in pairs:
        row = conn.execute(
            "SELECT ec.verifier FROM users u JOIN enrollment_codes ec ON ec.user_id = u.id WHERE u.email = ? "
            "ORDER BY ec.id LIMIT 1",
            (email,),
        ).fetchone()
        if row is None:
            continue
        if not hmac.compare_digest(bytes(row[0]), code_verifier(code)):
            return CodesFileState.MIXED
        found += 1
    if found == 0:
        return CodesFileState.VOID
    return CodesFileState.COMMITTED if found == len(pairs) else CodesFileState.MIXED


def reenable_user(km: KeyManager, email: str, settings: UserSettings = UserSettings()) -> str:
    """A new one-time code; the next enrollment gives new certificates and a new key (of the
    algorithm and client profile given here, else the earlier ones)."""
    now = km.clock()
    with km.change(AuditAction.USER_REENABLE, email=email) as ch:
        user = find_user(ch.conn, email)
        set_settings(ch.conn, user.id, settings)
        if settings.key_alg is not None:
            ch.details["key"] = settings.key_alg.value
        if settings.client is not None:
            ch.details["client"] = settings.client.value
        code, _ = issue_code(
            ch.conn, user.id, CodePurpose.REENABLE, now, km.config.code_ttl_days, km.config.code_max_attempts
        )
        ch.details["email"] = user.email
    return code


def check_code(km: KeyManager, conn: sqlite3.Connection, user: User, code: str) -> CodeRow | str:
    """The code row if ``code`` is the user's live code, else the reason it is refused.

    A wrong code counts one attempt (the caller commits that); the code is burnt only when
    its attempts run out.
    """
    now = km.clock()
    row = conn.execute(
        "SELECT id, verifier, purpose, expires_at, attempts, max_attempts, used_at, recovery_id "
        "FROM enrollment_codes WHERE user_id = ? ORDER BY id DESC LIMIT 1",
        (user.id,),
    ).fetchone()
    if row is None:
        return "no enrollment code was issued for this user"
    cid, verifier, purpose, expires_at, attempts, max_attempts, used_at, recovery_id = row
    if used_at is not None:
        return "the enrollment code was already used or replaced"
    if attempts >= max_attempts:
        return "the enrollment code is locked after too many wrong attempts"
    if not hmac.compare_digest(bytes(verifier), code_verifier(code)):
        conn.execute("UPDATE enrollment_codes SET attempts = attempts + 1 WHERE id = ?", (cid,))
        left = max_attempts - attempts - 1
        return f"wrong enrollment code ({left} attempt{'s' if left != 1 else ''} left)"
    if now > datetime.fromisoformat(expires_at):
        return "the enrollment code has expired"
    return CodeRow(cid, user.id, CodePurpose(purpose), recovery_id)


def burn_code(conn: sqlite3.Connection, code_id: int, now: datetime) -> None:
    conn.execute("UPDATE enrollment_codes SET used_at = ? WHERE id = ?", (now.isoformat(), code_id))
