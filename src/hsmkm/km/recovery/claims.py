"""One-use completion: a conditional transition open -> completing -> completed, held by one
process, so however many completions of one request run at once, one completes; a claim left
by a dead process is taken over."""

from __future__ import annotations

import os
import socket

from hsmkm import errors
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.km.recovery.requests import Request, RequestStatus
from hsmkm.store.tx import Tx


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
    host, pid, started = [*claimant.split(":"), "", "", ""][:3]
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
        state = ch.tx.recovery.claim_state(req.id)
        if state is None:
            raise errors.NotFound(f"no request {req.id}")
        status, holder = state
        if status is RequestStatus.COMPLETING and holder is not None and _alive(holder):
            raise errors.PolicyViolation(f"request {req.id} is being completed by another process")
        if status not in (RequestStatus.OPEN, RequestStatus.COMPLETING):
            raise errors.PolicyViolation(f"request {req.id} is {status.value}")
        # Conditional on the status just read: of two claimants, one moves it.
        if not ch.tx.recovery.transition(req.id, status, RequestStatus.COMPLETING):
            raise errors.PolicyViolation(f"request {req.id} is being completed by another process")
        ch.tx.recovery.set_claim(req.id, me)
        ch.details["taken_over"] = holder if status is RequestStatus.COMPLETING else None
    return me


def release(km: KeyManager, req: Request, me: str) -> None:
    """completing -> open after a failed completion of ours."""
    with km.change(AuditAction.RECOVERY_COMPLETE, id=req.id, stage="released") as ch:
        ch.tx.recovery.transition_claimed(req.id, RequestStatus.COMPLETING, RequestStatus.OPEN, me)
        ch.tx.recovery.drop_claim(req.id, me)


def finish(tx: Tx, req: Request, me: str) -> None:
    """completing -> completed, only for the holder of the claim (inside the final transaction)."""
    if not tx.recovery.transition_claimed(req.id, RequestStatus.COMPLETING, RequestStatus.COMPLETED, me):
        raise errors.PolicyViolation(f"request {req.id} was taken over by another completion; nothing was committed")
    tx.recovery.drop_claim(req.id)
    tx.recovery.drop_reshares(req.id)


def no_pause() -> None:
    """The default of the ``after_claim`` seam: nothing between the claim and the work."""
