"""``audit verify``: the log checked against every witness of its head (the token's anchor and
the signed checkpoints kept elsewhere)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hsmkm.km.anchor import Anchor
from hsmkm.km.audit import AuditReport
from hsmkm.km.checkpoint import Checkpoint, read_checkpoint
from hsmkm.km.manager import KeyManager


@dataclass(frozen=True)
class AuditCheck:
    report: AuditReport
    anchor: Anchor | None  # None before the token's first anchor
    checkpoints: list[Checkpoint]


def verify_audit(km: KeyManager, checkpoints: Iterable[bytes]) -> AuditCheck:
    """Each checkpoint read (its signature checked against the CA), then the whole log
    verified against the anchor and the checkpoints."""
    cps = [read_checkpoint(data, km.ca_cert, km.clock()) for data in checkpoints]
    anchor = km.anchor.read()
    witnesses = ([anchor.witness()] if anchor is not None else []) + [cp.witness() for cp in cps]
    return AuditCheck(km.audit().verify(witnesses), anchor, cps)
