"""Quorum-gated requests and what hangs off them: approvals, the completion claim, the
sub-shares of an officer change, and recovered keys held for a re-enrollment code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Select, bindparam, exists, func, select

from hsmkm.store.schema import (
    approvals,
    archive,
    certificates,
    recovered,
    recovery_requests,
    request_claims,
    reshares,
    users,
)
from hsmkm.store.upsert import upsert

r = recovery_requests

# An IN list of at most this many ids per statement (SQLite's limit on bound variables is far above).
_CHUNK = 500


class RequestKind(str, Enum):
    RECOVERY = "recovery"
    OFFICER_ADD = "officer-add"
    OFFICER_REMOVE = "officer-remove"
    POLICY = "policy"
    MIGRATE = "archive-migrate"


class RequestStatus(str, Enum):
    OPEN = "open"
    COMPLETING = "completing"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


def request_status(value: object) -> RequestStatus | None:
    """The status a column holds, or None for one that is no status (a damaged row)."""
    try:
        return RequestStatus(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class RequestRow:
    """A request as stored; ``records`` and ``params`` are the JSON the request was opened with."""

    id: int
    user_id: int | None
    email: str | None  # the user's address now (None: no such user)
    kind: RequestKind
    reason: str
    requested_by: str
    created_at: str
    expires_at: str
    status: RequestStatus
    records: str
    key_label: str
    public_key: bytes
    share_epoch: int
    params: str
    digest: bytes


@dataclass(frozen=True)
class NewRequest:
    user_id: int | None
    kind: RequestKind
    reason: str
    requested_by: str
    created_at: str
    expires_at: str
    records: str
    key_label: str
    public_key: bytes
    share_epoch: int


@dataclass(frozen=True)
class ApprovalRow:
    officer: str
    signature: bytes
    sealed_share: bytes


@dataclass(frozen=True)
class ContentRecord:
    """An archive record as a request's content names it, with its certificate (if any)."""

    user_id: int
    cert_serial: str
    cert_der: bytes | None
    cert_user_id: int | None


@dataclass(frozen=True)
class HeldKey:
    archive_id: int
    sealed: bytes
    cert_serial: str | None
    cert_der: bytes | None


_GET = (
    select(
        r.c.id,
        r.c.user_id,
        users.c.email,
        r.c.kind,
        r.c.reason,
        r.c.requested_by,
        r.c.created_at,
        r.c.expires_at,
        r.c.status,
        r.c.records,
        r.c.request_key_label,
        r.c.request_public_key,
        r.c.share_epoch,
        r.c.params,
        r.c.digest,
    )
    .select_from(r.outerjoin(users, users.c.id == r.c.user_id))
    .where(r.c.id == bindparam("rid"))
)
_IDS = select(r.c.id).order_by(r.c.id)
_ADD = r.insert().returning(r.c.id)
_SET_PARAMS = r.update().where(r.c.id == bindparam("rid")).values(params=bindparam("p"))
_SET_DIGEST = r.update().where(r.c.id == bindparam("rid")).values(digest=bindparam("d"))
_TRANSITION = (
    r.update()
    .where(r.c.id == bindparam("rid"), r.c.status == bindparam("frm"))
    .values(status=bindparam("to"))
    .returning(r.c.id)
)
_HELD_BY = exists().where(request_claims.c.request_id == r.c.id, request_claims.c.claimed_by == bindparam("me"))
_TRANSITION_CLAIMED = (
    r.update()
    .where(r.c.id == bindparam("rid"), r.c.status == bindparam("frm"), _HELD_BY)
    .values(status=bindparam("to"))
    .returning(r.c.id)
)
_CLAIM_STATE = (
    select(r.c.status, request_claims.c.claimed_by)
    .select_from(r.outerjoin(request_claims, request_claims.c.request_id == r.c.id))
    .where(r.c.id == bindparam("rid"))
)
_DROP_CLAIM = request_claims.delete().where(request_claims.c.request_id == bindparam("rid"))
_DROP_OWN_CLAIM = request_claims.delete().where(
    request_claims.c.request_id == bindparam("rid"), request_claims.c.claimed_by == bindparam("me")
)
_HAS_APPROVAL = select(approvals.c.officer).where(
    approvals.c.request_id == bindparam("rid"), approvals.c.officer == bindparam("officer")
)
_ADD_APPROVAL = approvals.insert()
_APPROVALS = (
    select(approvals.c.officer, approvals.c.signature, approvals.c.sealed_share)
    .where(approvals.c.request_id == bindparam("rid"))
    .order_by(approvals.c.approved_at, approvals.c.officer)
)
_APPROVERS = select(approvals.c.officer).where(approvals.c.request_id == bindparam("rid")).order_by(approvals.c.officer)
_SIGNATURES = (
    select(approvals.c.officer, approvals.c.signature)
    .where(approvals.c.request_id == bindparam("rid"))
    .order_by(approvals.c.officer)
)
_APPROVAL_COUNT = select(func.count()).select_from(approvals).where(approvals.c.request_id == bindparam("rid"))
_ADD_RESHARE = reshares.insert()
_RESHARE = select(reshares.c.sealed).where(
    reshares.c.request_id == bindparam("rid"),
    reshares.c.from_officer == bindparam("frm"),
    reshares.c.to_officer == bindparam("to"),
)
_DROP_RESHARES = reshares.delete().where(reshares.c.request_id == bindparam("rid"))
_HOLD = recovered.insert()
_HELD = (
    select(recovered.c.archive_id, recovered.c.sealed, archive.c.cert_serial, certificates.c.der)
    .select_from(
        recovered.outerjoin(archive, archive.c.id == recovered.c.archive_id).outerjoin(
            certificates, certificates.c.serial == archive.c.cert_serial
        )
    )
    .where(recovered.c.code_row == bindparam("code_row"))
    .order_by(recovered.c.archive_id)
)
_DROP_HELD = recovered.delete().where(recovered.c.code_row == bindparam("code_row"))


def _content_records(ids: Sequence[int]) -> Select[Any]:
    return (
        select(archive.c.id, archive.c.user_id, archive.c.cert_serial, certificates.c.der, certificates.c.user_id)
        .select_from(archive.outerjoin(certificates, certificates.c.serial == archive.c.cert_serial))
        .where(archive.c.id.in_(ids))
    )


def _request(row: Any) -> RequestRow:
    return RequestRow(
        int(row[0]),
        None if row[1] is None else int(row[1]),
        None if row[2] is None else str(row[2]),
        RequestKind(row[3]),
        str(row[4]),
        str(row[5]),
        str(row[6]),
        str(row[7]),
        RequestStatus(row[8]),
        str(row[9]),
        str(row[10]),
        bytes(row[11]),
        int(row[12]),
        str(row[13]),
        bytes(row[14]),
    )


class RecoveryRepo:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # --- requests ----------------------------------------------------------------------------

    def get(self, request_id: int) -> RequestRow | None:
        """The request, or None; a kind or status the enums do not know is a ValueError."""
        row = self._conn.execute(_GET, {"rid": request_id}).first()
        return None if row is None else _request(row)

    def ids(self) -> list[int]:
        return [int(x[0]) for x in self._conn.execute(_IDS)]

    def add(self, new: NewRequest) -> int:
        """An open request with empty params and digest; returns its id."""
        return int(
            self._conn.execute(
                _ADD,
                {
                    "user_id": new.user_id,
                    "reason": new.reason,
                    "requested_by": new.requested_by,
                    "created_at": new.created_at,
                    "expires_at": new.expires_at,
                    "status": RequestStatus.OPEN.value,
                    "records": new.records,
                    "digest": b"",
                    "request_key_label": new.key_label,
                    "request_public_key": new.public_key,
                    "share_epoch": new.share_epoch,
                    "kind": new.kind.value,
                    "params": "{}",
                },
            ).scalar_one()
        )

    def set_params(self, request_id: int, params: str) -> None:
        self._conn.execute(_SET_PARAMS, {"rid": request_id, "p": params})

    def set_digest(self, request_id: int, digest: bytes) -> None:
        self._conn.execute(_SET_DIGEST, {"rid": request_id, "d": digest})

    def transition(self, request_id: int, frm: RequestStatus, to: RequestStatus) -> bool:
        """``frm`` -> ``to`` if the request is in ``frm`` now (one conditional UPDATE); whether it was."""
        row = self._conn.execute(_TRANSITION, {"rid": request_id, "frm": frm.value, "to": to.value}).first()
        return row is not None

    # --- the completion claim -----------------------------------------------------------------

    def claim_state(self, request_id: int) -> tuple[RequestStatus, str | None] | None:
        row = self._conn.execute(_CLAIM_STATE, {"rid": request_id}).first()
        if row is None:
            return None
        return RequestStatus(row[0]), None if row[1] is None else str(row[1])

    def set_claim(self, request_id: int, claimant: str) -> None:
        upsert(self._conn, request_claims, ("request_id",), {"request_id": request_id, "claimed_by": claimant})

    def transition_claimed(self, request_id: int, frm: RequestStatus, to: RequestStatus, claimant: str) -> bool:
        """``frm`` -> ``to`` only while ``claimant`` holds the claim (one conditional UPDATE)."""
        row = self._conn.execute(
            _TRANSITION_CLAIMED, {"rid": request_id, "frm": frm.value, "to": to.value, "me": claimant}
        ).first()
        return row is not None

    def drop_claim(self, request_id: int, claimant: str | None = None) -> None:
        """The claim gone (only ``claimant``'s, when given)."""
        if claimant is None:
            self._conn.execute(_DROP_CLAIM, {"rid": request_id})
        else:
            self._conn.execute(_DROP_OWN_CLAIM, {"rid": request_id, "me": claimant})

    # --- approvals ----------------------------------------------------------------------------

    def has_approval(self, request_id: int, officer: str) -> bool:
        return self._conn.execute(_HAS_APPROVAL, {"rid": request_id, "officer": officer}).first() is not None

    def add_approval(self, request_id: int, officer: str, signature: bytes, sealed_share: bytes, at: str) -> None:
        """One officer's approval; a second one by the same officer is a Conflict."""
        self._conn.execute(
            _ADD_APPROVAL,
            {
                "request_id": request_id,
                "officer": officer,
                "signature": signature,
                "sealed_share": sealed_share,
                "approved_at": at,
            },
        )

    def approvals(self, request_id: int) -> list[ApprovalRow]:
        """In the order they were made."""
        return [
            ApprovalRow(str(a[0]), bytes(a[1]), bytes(a[2]))
            for a in self._conn.execute(_APPROVALS, {"rid": request_id})
        ]

    def approvers(self, request_id: int) -> list[str]:
        return [str(a[0]) for a in self._conn.execute(_APPROVERS, {"rid": request_id})]

    def signatures(self, request_id: int) -> list[tuple[str, bytes]]:
        return [(str(a[0]), bytes(a[1])) for a in self._conn.execute(_SIGNATURES, {"rid": request_id})]

    def approval_count(self, request_id: int) -> int:
        return int(self._conn.execute(_APPROVAL_COUNT, {"rid": request_id}).scalar_one())

    # --- an officer change's sub-shares ---------------------------------------------------------

    def add_reshares(self, request_id: int, from_officer: str, sealed: Mapping[str, bytes]) -> None:
        if sealed:
            self._conn.execute(
                _ADD_RESHARE,
                [
                    {"request_id": request_id, "from_officer": from_officer, "to_officer": to, "sealed": s}
                    for to, s in sealed.items()
                ],
            )

    def reshare(self, request_id: int, from_officer: str, to_officer: str) -> bytes | None:
        value = self._conn.execute(_RESHARE, {"rid": request_id, "frm": from_officer, "to": to_officer}).scalar()
        return None if value is None else bytes(value)

    def drop_reshares(self, request_id: int) -> None:
        self._conn.execute(_DROP_RESHARES, {"rid": request_id})

    # --- what a request's content is rebuilt from ------------------------------------------------

    def content_records(self, record_ids: Sequence[int]) -> dict[int, ContentRecord]:
        """The named archive records (those that exist), each with its certificate if there is one."""
        out: dict[int, ContentRecord] = {}
        ids = list(record_ids)
        for i in range(0, len(ids), _CHUNK):
            for row in self._conn.execute(_content_records(ids[i : i + _CHUNK])):
                out[int(row[0])] = ContentRecord(
                    int(row[1]),
                    str(row[2]),
                    None if row[3] is None else bytes(row[3]),
                    None if row[4] is None else int(row[4]),
                )
        return out

    # --- recovered keys held for a re-enrollment code ---------------------------------------------

    def hold(self, code_row: int, held: Sequence[tuple[int, bytes]]) -> None:
        """(archive id, sealed key) pairs kept for the code ``code_row``."""
        if held:
            self._conn.execute(_HOLD, [{"code_row": code_row, "archive_id": a, "sealed": s} for a, s in held])

    def held(self, code_row: int) -> list[HeldKey]:
        return [
            HeldKey(int(h[0]), bytes(h[1]), None if h[2] is None else str(h[2]), None if h[3] is None else bytes(h[3]))
            for h in self._conn.execute(_HELD, {"code_row": code_row})
        ]

    def drop_held(self, code_row: int) -> None:
        self._conn.execute(_DROP_HELD, {"code_row": code_row})
