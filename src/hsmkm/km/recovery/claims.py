"""One-use completion: a conditional transition open -> completing -> completed, held by one
process, so however many completions of one request run at once, one completes; a claim left
by a dead process is taken over."""

from __future__ import annotations

import os
import socket
import sqlite3

from hsmkm import errors
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.km.recovery.requests import Request, RequestStatus


def _start_time(pid: int) -> str:
    """The process's start time (Linux /proc), so a reused pid is not taken for the claimant."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "-"


def _me() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _alive(claimant: str) -> bool:
    host, pid, started = (claimant.split(":") + ["", "", ""])[:3]
    if host != socket.gethostname():
        return True  # another machine's process: assume it runs
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return started in ("-", _start_time(int(pid)))


def claim(km: KeyManager, req: Request) -> str:
    """open -> completing, for this process only; a claim left by a dead process is taken over."""
    me = _me()
    with km.change(AuditAction.RECOVERY_COMPLETE, id=req.id, stage="claim") as ch:
        row = ch.conn.execute(
            "SELECT r.status, c.claimed_by FROM recovery_requests r LEFT JOIN request_claims c ON c.request_id = r.id "
            "WHERE r.id = ?", (req.id,)
        ).fetchone()
        status, holder = RequestStatus(row[0]), row[1]
        if status is RequestStatus.COMPLETING and holder is not None and _alive(str(holder)):
            raise errors.PolicyViolation(f"request {req.id} is being completed by another process")
        if status not in (RequestStatus.OPEN, RequestStatus.COMPLETING):
            raise errors.PolicyViolation(f"request {req.id} is {status.value}")
        cur = ch.conn.execute(
            "UPDATE recovery_requests SET status = ? WHERE id = ? AND status = ?",
            (RequestStatus.COMPLETING.value, req.id, status.value),
        )
        if cur.rowcount != 1:
            raise errors.PolicyViolation(f"request {req.id} is being completed by another process")
        ch.conn.execute(
            "INSERT INTO request_claims(request_id, claimed_by) VALUES (?, ?) "
            "ON CONFLICT(request_id) DO UPDATE SET claimed_by = excluded.claimed_by",
            (req.id, me),
        )
        ch.details["taken_over"] = holder if status is RequestStatus.COMPLETING else None
    return me


def release(km: KeyManager, req: Request, me: str) -> None:
    """completing -> open after a failed completion of ours."""
    with km.change(AuditAction.RECOVERY_COMPLETE, id=req.id, stage="released") as ch:
        conn = ch.conn
        conn.execute(
            "UPDATE recovery_requests SET status = ? WHERE id = ? AND status = ? AND "
            "EXISTS (SELECT 1 FROM request_claims WHERE request_id = ? AND claimed_by = ?)",
            (RequestStatus.OPEN.value, req.id, RequestStatus.COMPLETING.value, req.id, me),
        )
        conn.execute("DELETE FROM request_claims WHERE request_id = ? AND claimed_by = ?", (req.id, me))


def finish(conn: sqlite3.Connection, req: Request, me: str) -> None:
    """completing -> completed, only for the holder of the claim (inside the final transaction)."""
    cur = conn.execute(
        "UPDATE recovery_requests SET status = ? WHERE id = ? AND status = ? AND "
        "EXISTS (SELECT 1 FROM request_claims WHERE request_id = ? AND claimed_by = ?)",
        (RequestStatus.COMPLETED.value, req.id, RequestStatus.COMPLETING.value, req.id, me),
    )
    if cur.rowcount != 1:
        raise errors.PolicyViolation(f"request {req.id} was taken over by another completion; nothing was committed")
    conn.execute("DELETE FROM request_claims WHERE request_id = ?", (req.id,))
    conn.execute("DELETE FROM reshares WHERE request_id = ?", (req.id,))



def no_pause() -> None:
    """The default of the ``after_claim`` seam: nothing between the claim and the work."""
