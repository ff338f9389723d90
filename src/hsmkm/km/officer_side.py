"""What an officer's own machine computes, with nothing but the officer's token key and the
ciphertexts the KM relays: approving a request (signing its content, opening only the
shares of the records it names and sealing them to the request), and redistributing shares
to a new officer set (re-sharing one's own shares; combining what one receives).

Every share is sealed under a context that names its record (user id, certificate serial),
epoch, officer and index; the officer side computes that context itself from the record it
showed the officer, so a share row moved to another record does not open.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding

from hsmkm import errors
from hsmkm.keys.base import PrivateKey, PublicKey
from hsmkm.km import sealing, shamir


@dataclass(frozen=True)
class RecordIdentity:
    """What a record's shares are bound to."""

    record_id: int
    user_id: int
    cert_serial: str


def share_context(record: RecordIdentity, epoch: int, officer: str, x: int) -> bytes:
    return f"hsmkm-record-share-v2\x00{record.user_id}\x00{record.cert_serial}\x00{epoch}\x00{officer}\x00{x}".encode()


def content_digest(content: bytes) -> bytes:
    return hashlib.sha256(b"hsmkm-request-v2\x00" + content).digest()


def _approval_context(request_id: int, officer: str, content: bytes) -> bytes:
    return b"hsmkm-approval-v2\x00%d\x00%s\x00" % (request_id, officer.encode()) + content_digest(content)


def _reshare_context(
    request_id: int, sender: str, sender_x: int, receiver: str, receiver_x: int, new_epoch: int, content: bytes
) -> bytes:
    head = (
        f"hsmkm-reshare-v2\x00{request_id}\x00{sender}\x00{sender_x}\x00{receiver}\x00{receiver_x}\x00{new_epoch}\x00"
    )
    return head.encode() + content_digest(content)


# --- signatures over a request's content -----------------------------------------------------


def sign_content(key: PrivateKey, content: bytes) -> bytes:
    digest = content_digest(content)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(digest, ec.ECDSA(hashes.SHA256()))
    return key.sign(digest, padding.PKCS1v15(), hashes.SHA256())


def verify_content(public: PublicKey, signature: bytes, content: bytes) -> bool:
    digest = content_digest(content)
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(signature, digest, ec.ECDSA(hashes.SHA256()))
        else:
            public.verify(signature, digest, padding.PKCS1v15(), hashes.SHA256())
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


# --- the payload of an approval or a re-share: (record, index, value) entries ------------------


@dataclass(frozen=True)
class ShareEntry:
    record: RecordIdentity
    share: shamir.Share


def _encode(entries: Iterable[ShareEntry]) -> bytes:
    out = bytearray()
    for e in entries:
        serial = e.record.cert_serial.encode()
        out += struct.pack(">QQB", e.record.record_id, e.record.user_id, len(serial)) + serial
        out += struct.pack(">BB", e.share.x, len(e.share.y)) + e.share.y
    return bytes(out)


def _decode(data: bytes) -> list[ShareEntry]:
    out = []
    pos = 0
    try:
        while pos < len(data):
            rid, uid, n = struct.unpack_from(">QQB", data, pos)
            pos += 17
            serial = data[pos : pos + n].decode("ascii")
            pos += n
            x, m = struct.unpack_from(">BB", data, pos)
            pos += 2
            y = data[pos : pos + m]
            pos += m
            if len(y) != m:
                raise ValueError
            out.append(ShareEntry(RecordIdentity(rid, uid, serial), shamir.Share(x, y)))
    except (struct.error, ValueError, UnicodeDecodeError):
        raise errors.MalformedInput("a relayed share payload is malformed") from None
    return out


def _open_own(key: PrivateKey, record: RecordIdentity, epoch: int, officer: str, x: int, sealed: bytes) -> shamir.Share:
    try:
        data = sealing.unseal(key, sealed, share_context(record, epoch, officer, x))
    except errors.SignatureInvalid:
        raise errors.SignatureInvalid(
            f"{officer}'s share row for archive record {record.record_id} does not open for that record "
            "(moved or altered); nothing was approved"
        ) from None
    share = shamir.decode_share(data)
    if share.x != x:
        raise errors.SignatureInvalid(f"{officer}'s share for archive record {record.record_id} has the wrong index")
    return share


# --- a recovery approval -------------------------------------------------------------------------


def approve_recovery(
    key: PrivateKey,
    officer: str,
    x: int,
    epoch: int,
    request_id: int,
    content: bytes,
    shares: Sequence[tuple[RecordIdentity, bytes]],
    request_public: PublicKey,
) -> tuple[bytes, bytes]:
    """(signature over the content, the named records' shares sealed to the request)."""
    signature = sign_content(key, content)
    entries = [ShareEntry(rec, _open_own(key, rec, epoch, officer, x, sealed)) for rec, sealed in shares]
    blob = sealing.seal(request_public, _encode(entries), _approval_context(request_id, officer, content))
    del entries
    return signature, blob


def open_approval(
    request_key: PrivateKey, blob: bytes, request_id: int, officer: str, content: bytes
) -> list[ShareEntry]:
    """At completion, with the request's key: one officer's shares of the approved records."""
    return _decode(sealing.unseal(request_key, blob, _approval_context(request_id, officer, content)))


# --- redistribution ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NewOfficer:
    name: str
    x: int
    public_key: PublicKey


def reshare(
    key: PrivateKey,
    officer: str,
    x: int,
    epoch: int,
    request_id: int,
    content: bytes,
    shares: Sequence[tuple[RecordIdentity, bytes]],
    new_epoch: int,
    new_officers: Sequence[NewOfficer],
    new_quorum: int,
) -> dict[str, bytes]:
    """A current officer's part of an officer change: each of its shares split afresh for the
    new officer set, the sub-shares for each new officer sealed to that officer in one blob."""
    new_xs = [o.x for o in new_officers]
    per_receiver: list[list[ShareEntry]] = [[] for _ in new_officers]
    for rec, sealed in shares:
        own = _open_own(key, rec, epoch, officer, x, sealed)
        for i, sub in enumerate(shamir.reshare(own, new_quorum, new_xs)):
            per_receiver[i].append(ShareEntry(rec, shamir.Share(x, sub.y)))
    out = {
        o.name: sealing.seal(
            o.public_key, _encode(entries), _reshare_context(request_id, officer, x, o.name, o.x, new_epoch, content)
        )
        for o, entries in zip(new_officers, per_receiver, strict=True)
    }
    del per_receiver
    return out


def combine_received(
    key: PrivateKey,
    me: NewOfficer,
    new_epoch: int,
    request_id: int,
    content: bytes,
    received: Sequence[tuple[str, int, bytes]],
) -> list[tuple[RecordIdentity, bytes]]:
    """A new officer's part: from K senders' blobs (sender, sender index, blob), its new share of
    every record they all covered, sealed to itself for the new epoch."""
    by_record: dict[int, tuple[RecordIdentity, list[tuple[int, bytes]]]] = {}
    for sender, sender_x, blob in received:
        ctx = _reshare_context(request_id, sender, sender_x, me.name, me.x, new_epoch, content)
        for e in _decode(sealing.unseal(key, blob, ctx)):
            if e.share.x != sender_x:
                raise errors.SignatureInvalid(f"a sub-share from {sender} carries another officer's index")
            rec, subs = by_record.setdefault(e.record.record_id, (e.record, []))
            if rec != e.record:
                raise errors.SignatureInvalid(f"senders disagree about archive record {e.record.record_id}")
            subs.append((sender_x, e.share.y))
    out = []
    eph = _ephemeral(me.public_key)
    for rec, subs in by_record.values():
        if len(subs) != len(received):
            continue  # not every sender covered it: the caller finds it missing
        share = shamir.combine_subshares(me.x, subs)
        out.append(
            (
                rec,
                sealing.seal(
                    me.public_key, shamir.encode_share(share), share_context(rec, new_epoch, me.name, me.x), eph
                ),
            )
        )
    return out


def _ephemeral(public: PublicKey) -> sealing.Ephemeral | None:
    return sealing.new_ephemeral(public.curve) if isinstance(public, ec.EllipticCurvePublicKey) else None


# --- the first release's PIN share, for one last use of the recovery token ------------------------


def _pin_share_context(officer: str, epoch: int) -> bytes:
    return f"hsmkm-share\x00{officer}\x00{epoch}".encode()  # as the first release sealed it


def approve_pin_share(
    key: PrivateKey,
    officer: str,
    pin_epoch: int,
    sealed_pin_share: bytes,
    request_id: int,
    content: bytes,
    request_public: PublicKey,
) -> tuple[bytes, bytes]:
    """(signature over the content, this officer's share of the recovery PIN sealed to the request)."""
    signature = sign_content(key, content)
    share = sealing.unseal(key, sealed_pin_share, _pin_share_context(officer, pin_epoch))
    blob = sealing.seal(request_public, share, _approval_context(request_id, officer, content))
    del share
    return signature, blob


def open_pin_share(request_key: PrivateKey, blob: bytes, request_id: int, officer: str, content: bytes) -> bytes:
    return sealing.unseal(request_key, blob, _approval_context(request_id, officer, content))


# --- the officer set: attested by its members, each change approved by K of the set before ------


def epoch_statement(number: int, quorum: int, officers: Sequence[tuple[str, int, bytes]]) -> bytes:
    """What a member of a share epoch attests: the epoch, its quorum, each officer's index and key."""
    body = {"epoch": number, "quorum": quorum, "officers": [[n, x, der.hex()] for n, x, der in officers]}
    return b"hsmkm-epoch-v1\x00" + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def attest(key: PrivateKey, statement: bytes) -> bytes:
    return sign_content(key, statement)


@dataclass(frozen=True)
class EpochRecord:
    """One share epoch as stored, with what vouches for it."""

    number: int
    quorum: int
    officers: tuple[tuple[str, int, bytes], ...]  # name, index, public key (DER)
    attestations: dict[str, bytes]
    # the completed change that made it: (base epoch, its content, [(officer, signature)])
    made_by: tuple[int, bytes, tuple[tuple[str, bytes], ...]] | None


def _load_public(der: bytes) -> PublicKey:
    from cryptography.hazmat.primitives import serialization

    return serialization.load_der_public_key(der)  # type: ignore[return-value]


def _attested_by(rec: EpochRecord, name: str, der: bytes) -> bool:
    sig = rec.attestations.get(name)
    return sig is not None and verify_content(
        _load_public(der), sig, epoch_statement(rec.number, rec.quorum, rec.officers)
    )


def verify_officer_set(my_name: str, my_key: bytes, chain: Sequence[EpochRecord], active: int) -> None:
    """Refuse unless the active epoch descends, by changes each approved by K members of the
    epoch before (continuing officers keeping their keys) and attested by all its members,
    from an epoch this officer attested itself. ``chain``: every epoch that was ever active."""
    by_number = {r.number: r for r in chain}
    anchor = next(
        (
            r
            for r in chain
            if (my_name, my_key) in {(n, d) for n, _, d in r.officers} and _attested_by(r, my_name, my_key)
        ),
        None,
    )
    if anchor is None:
        raise errors.Tampered(f"no officer set of this KM carries {my_name}'s own attestation; refused")
    current = anchor
    while current.number != active:
        nxt = next((r for r in chain if r.made_by is not None and r.made_by[0] == current.number), None)
        if nxt is None or nxt.made_by is None:
            raise errors.Tampered(
                f"the officer set changed from epoch {current.number} without an approved change; refused"
            )
        _, content, approvals = nxt.made_by
        params = json.loads(content).get("params", {})
        if [[n, x, d.hex()] for n, x, d in nxt.officers] != params.get("officers") or params.get(
            "quorum"
        ) != nxt.quorum:
            raise errors.Tampered(f"officer set {nxt.number} is not the one its change request named; refused")
        keys = {n: d for n, _, d in current.officers}
        good = {n for n, sig in approvals if n in keys and verify_content(_load_public(keys[n]), sig, content)}
        if len(good) < current.quorum:
            raise errors.Tampered(
                f"the change to officer set {nxt.number} lacks {current.quorum} valid approvals; refused"
            )
        for n, _, d in nxt.officers:
            if n in keys and keys[n] != d:
                raise errors.Tampered(f"{n}'s key changed in officer set {nxt.number}; refused")
            if not _attested_by(nxt, n, d):
                raise errors.Tampered(f"{n} did not attest officer set {nxt.number}; refused")
        current = nxt
    if current.number not in by_number:
        raise errors.Tampered("the active officer set is unknown; refused")
