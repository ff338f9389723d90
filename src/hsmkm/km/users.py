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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from hsmkm import addresses, errors
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.protocol import normalize_code
from hsmkm.smimecaps import ClientProfile
from hsmkm.store.repos.codes import CodePurpose, CodeStage, NewCode
from hsmkm.store.repos.settings import SettingsRow
from hsmkm.store.repos.users import NewUser, User, UserStatus
from hsmkm.store.tx import Tx

__all__ = ["CodePurpose", "CodeStage", "User", "UserStatus"]  # the store's, named here as well

CODE_BYTES = 20


@dataclass(frozen=True)
class CodeRow:
    id: int
    user_id: int
    purpose: CodePurpose
    recovery_id: int | None
    stages_done: frozenset[CodeStage] = frozenset()  # EST stages done with this code


class RefusalReason(str, Enum):
    NONE_ISSUED = "none-issued"
    USED = "used"
    LOCKED = "locked"
    WRONG = "wrong"
    EXPIRED = "expired"


@dataclass(frozen=True)
class CodeRefused:
    """Why a code is not the user's live code; ``message`` for people and the audit entry."""

    reason: RefusalReason
    message: str


def normalize_email(email: str) -> str:
    return addresses.normalize_email(email)


def new_code() -> str:
    raw = base64.b32encode(secrets.token_bytes(CODE_BYTES)).decode()
    return "-".join(raw[i : i + 4] for i in range(0, len(raw), 4))


def code_verifier(code: str) -> bytes:
    return hashlib.sha256(b"hsmkm-code-v1\x00" + normalize_code(code).encode()).digest()


def find_user(tx: Tx, email: str) -> User:
    user = tx.users.by_email(normalize_email(email))
    if user is None:
        raise errors.NotFound(f"unknown user {email}")
    return user


def list_users(tx: Tx) -> list[User]:
    return tx.users.all()


def _new_code(
    user_id: int, purpose: CodePurpose, now: datetime, ttl_days: int, max_attempts: int, recovery_id: int | None = None
) -> tuple[str, NewCode]:
    code = new_code()
    return code, NewCode(
        user_id,
        secrets.token_hex(8),
        code_verifier(code),
        purpose,
        now.isoformat(),
        (now + timedelta(days=ttl_days)).isoformat(),
        max_attempts,
        recovery_id,
    )


def issue_code(
    tx: Tx,
    user_id: int,
    purpose: CodePurpose,
    now: datetime,
    ttl_days: int,
    max_attempts: int,
    recovery_id: int | None = None,
) -> tuple[str, int]:
    """A fresh code for the user; any earlier unused code of theirs stops working."""
    tx.codes.supersede(user_id, "superseded:" + now.isoformat())
    code, row = _new_code(user_id, purpose, now, ttl_days, max_attempts, recovery_id)
    return code, tx.codes.add(row)


@dataclass(frozen=True)
class UserSettings:
    """Per-user choices over the KM-wide defaults: the encryption key algorithm and the client
    profile (what the user's mail clients decrypt, written into their certificates)."""

    key_alg: KeyAlgorithm | None = None
    client: ClientProfile | None = None


def set_settings(tx: Tx, user_id: int, settings: UserSettings) -> None:
    """Record the choices given (an unset one keeps its earlier value)."""
    if settings.key_alg is None and settings.client is None:
        return
    old = settings_of(tx, user_id)
    key_alg = settings.key_alg or old.key_alg
    client = settings.client or old.client
    tx.settings.put(user_id, SettingsRow(key_alg.value if key_alg else None, client.value if client else None))


def settings_of(tx: Tx, user_id: int) -> UserSettings:
    row = tx.settings.get(user_id)
    if row is None:
        return UserSettings()
    try:
        return UserSettings(
            KeyAlgorithm(row.key_alg) if row.key_alg else None, ClientProfile(row.client) if row.client else None
        )
    except ValueError:
        raise errors.MalformedInput(
            f"user {user_id}: unknown settings {row.key_alg!r}, {row.client!r} in the database"
        ) from None


def add_user(km: KeyManager, email: str, name: str | None, settings: UserSettings = UserSettings()) -> tuple[User, str]:
    """Create a user and their one-time enrollment code."""
    email = normalize_email(email)
    name = addresses.check_name(name)
    now = km.clock()
    with km.change(AuditAction.USER_ADD, email=email, name=name) as ch:
        if ch.tx.users.by_email(email) is not None:
            raise errors.AlreadyExists(f"user {email} already exists")
        uid = ch.tx.users.add(NewUser(email, name, UserStatus.PENDING, now.isoformat()))
        set_settings(ch.tx, uid, settings)
        if settings.key_alg is not None:
            ch.details["key"] = settings.key_alg.value
        if settings.client is not None:
            ch.details["client"] = settings.client.value
        code, _ = issue_code(ch.tx, uid, CodePurpose.ENROLL, now, km.config.code_ttl_days, km.config.code_max_attempts)
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
    with km.transaction() as tx:
        existing = tx.users.emails()
        clash = [e for e, _ in rows if e in existing]
        if clash:
            raise errors.AlreadyExists(f"user {clash[0]} already exists ({len(clash)} in the file)")
        audit = km.audit(tx)
        # Batched by the hundred (one statement each for users, codes and audit entries); new
        # users have no earlier code to supersede.
        for at in range(0, len(rows), 100):
            batch = rows[at : at + 100]
            ids = tx.users.add_many([NewUser(e, n, UserStatus.PENDING, now.isoformat()) for e, n in batch])
            made = [
                _new_code(uid, CodePurpose.ENROLL, now, km.config.code_ttl_days, km.config.code_max_attempts)
                for uid in ids
            ]
            tx.codes.add_many([row for _, row in made])
            audit.append_many(
                [(km.actor, AuditAction.USER_ADD, {"email": e, "name": n, "bulk": True}) for e, n in batch]
            )
            out += [(e, code) for (e, _), (code, _) in zip(batch, made, strict=True)]
            if len(batch) == 100:
                progress(100)
        progress(len(rows) % 100)
        before_commit(out)
    return out


class CodesFileState(str, Enum):
    COMMITTED = "committed"  # every user in it exists and the codes are theirs
    VOID = "void"  # none of its users exist: an import that never committed
    MIXED = "mixed"


def codes_file_state(tx: Tx, pairs: list[tuple[str, str]]) -> CodesFileState:
    """What a codes file left by an earlier ``user import`` is worth now."""
    found = 0
    for email, code in pairs:
        verifier = tx.codes.first_verifier(email)
        if verifier is None:
            continue
        if not hmac.compare_digest(verifier, code_verifier(code)):
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
        user = find_user(ch.tx, email)
        set_settings(ch.tx, user.id, settings)
        if settings.key_alg is not None:
            ch.details["key"] = settings.key_alg.value
        if settings.client is not None:
            ch.details["client"] = settings.client.value
        code, _ = issue_code(
            ch.tx, user.id, CodePurpose.REENABLE, now, km.config.code_ttl_days, km.config.code_max_attempts
        )
        ch.details["email"] = user.email
    return code


def check_code(km: KeyManager, tx: Tx, user: User, code: str) -> CodeRow | CodeRefused:
    """The code row if ``code`` is the user's live code, else why it is refused.

    A wrong code counts one attempt (the caller commits that); the code is burnt only when
    its attempts run out.
    """
    now = km.clock()
    row = tx.codes.latest(user.id)
    if row is None:
        return CodeRefused(RefusalReason.NONE_ISSUED, "no enrollment code was issued for this user")
    if row.used_at is not None:
        return CodeRefused(RefusalReason.USED, "the enrollment code was already used or replaced")
    if row.attempts >= row.max_attempts:
        return CodeRefused(RefusalReason.LOCKED, "the enrollment code is locked after too many wrong attempts")
    if not hmac.compare_digest(row.verifier, code_verifier(code)):
        tx.codes.count_attempt(row.id)
        left = row.max_attempts - row.attempts - 1
        return CodeRefused(
            RefusalReason.WRONG, f"wrong enrollment code ({left} attempt{'s' if left != 1 else ''} left)"
        )
    if now > datetime.fromisoformat(row.expires_at):
        return CodeRefused(RefusalReason.EXPIRED, "the enrollment code has expired")
    return CodeRow(row.id, user.id, row.purpose, row.recovery_id, row.stages_done)


def burn_code(tx: Tx, code_id: int, now: datetime) -> None:
    tx.codes.burn(code_id, now.isoformat())
