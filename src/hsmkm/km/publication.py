"""Publishing CRLs: numbered, signed on the token and kept in the database in one transaction,
then handed to the KM's publisher.

CRL numbers are drawn from a counter row, so they strictly increase across crashes and
concurrent publishers; the last one drawn is anchored on the KM token with the audit head,
so a database rolled back to an earlier number is refused (``km.anchor``) rather than
drawing a number twice. The CRL's bytes are the database's current artifact of its kind
unless a newer one is there, and the publisher likewise keeps an older CRL from replacing a
newer one; the result says so when that happened.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from hsmkm import errors
from hsmkm.der import der_time_of_iso
from hsmkm.km.artifacts import ARTIFACT_OF
from hsmkm.km.audit import AuditAction
from hsmkm.km.manager import KeyManager
from hsmkm.km.publisher import CrlKind, Deferred
from hsmkm.store.repos.crls import CrlRow
from hsmkm.x509.crl import RevocationReason, encode_rows, sign_crl

__all__ = ["CrlKind", "Published", "publish_crl"]


@dataclass(frozen=True)
class Published:
    kind: CrlKind
    number: int
    base: int | None
    entries: int
    where: str  # where the publisher put it (a file, an entry)
    this_update: datetime
    next_update: datetime
    size: int
    installed: bool = True  # False: a CRL with a number at least this one's was there already


_REASONS = {r.value: r for r in RevocationReason}


def _rows(
    batches: Iterable[Sequence[tuple[str, str, str]]],
) -> Iterator[tuple[int, bytes, RevocationReason]]:
    """The encoder's (serial, DER revocation time, reason) from the store's streamed batches."""
    reasons = _REASONS
    for batch in batches:
        for serial, at, reason in batch:
            yield int(serial, 16), der_time_of_iso(at), reasons[reason]


def publish_crl(km: KeyManager, kind: CrlKind = CrlKind.FULL, next_update_hours: int | None = None) -> Published:
    """Build, sign on the token and publish a full or delta CRL."""
    now = km.clock().replace(microsecond=0)
    next_update = now + timedelta(hours=next_update_hours or km.config.crl_next_update_hours)
    ca = km.ca_cert  # a damaged CA certificate is refused before anything is committed
    with km.change(AuditAction.CRL_PUBLISH, kind=kind.value) as ch:
        crls = ch.tx.crls
        number = crls.draw_number()
        upto = crls.revoked_upto()
        base = None
        after = 0
        if kind is CrlKind.DELTA:
            last = crls.last(CrlKind.FULL)
            if last is None:
                raise errors.BadInput("publish a full CRL before a delta CRL")
            base, after = last.number, last.revoked_seq_upto
        count = crls.count_revoked(after, upto)
        crls.record(CrlRow(number, kind, base, now.isoformat(), next_update.isoformat(), count, upto))
        # Signed inside the transaction: the number, the row and the bytes commit together.
        der = sign_crl(
            ca,
            km.ca_key,
            b"".join(encode_rows(_rows(crls.revoked(after, upto)))),
            number,
            now,
            next_update,
            delta_of=base,
            freshest_url=km.config.delta_crl_url if kind is CrlKind.FULL else None,
        )
        stored = ch.tx.artifacts.put(ARTIFACT_OF[kind], der, now.isoformat(), number, next_update.isoformat())
        ch.tx.outbox.queue_artifact(ARTIFACT_OF[kind], now.isoformat())
        ch.details.update(number=number, base=base, entries=count, next_update=next_update.isoformat())
    # Committed: the publisher is given what the database now holds; a directory that is
    # down gets it from the queued row on a later drain.
    try:
        installed = stored and km.publisher.crl(kind, number, der)
    except Deferred:
        installed = stored
    except errors.Unreachable as exc:
        installed = stored
        with km.db.write() as tx:
            tx.outbox.failed(str(exc), now.isoformat())
    else:
        with km.db.write() as tx:
            tx.outbox.artifact_done(ARTIFACT_OF[kind], now.isoformat())
    return Published(kind, number, base, count, km.publisher.crl_location(kind), now, next_update, len(der), installed)
