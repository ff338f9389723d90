"""The user's messaging: sign, verify, encrypt (a lock box per recipient) and decrypt, with
keys from any keystore and revocation from the client's CRL cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography import x509

from hsmkm import errors
from hsmkm.clock import Clock, system_clock
from hsmkm.atomic import write_atomic
from hsmkm.cms import enveloped, signed, smime, stream
from hsmkm.cms.validation import ValidationContext, check_recipient
from hsmkm.keys.base import Keystore


@dataclass
class Opened:
    """A decrypted (and, when it was signed, verified) message."""

    entity: bytes
    signer: signed.VerifyResult | None
    recipient_serial: int
    warnings: list[str] = field(default_factory=list)


def sign_message(message: bytes, keystore: Keystore, detached: bool, clock: Clock = system_clock) -> bytes:
    entry = keystore.signing_entry()
    if entry is None:
        raise errors.NotFound("the keystore has no signing key")
    outer, entity = smime.entity_of(message)
    der = signed.sign(entity, entry, keystore.ca_certificates(), detached, clock())
    micalg = "sha-384" if getattr(entry.key, "key_size", 0) == 384 else "sha-256"
    if detached:
        return smime.multipart_signed(entity, der, micalg, outer)
    return smime.pkcs7_mime(der, smime.SmimeType.SIGNED_DATA, outer)


def verify_message(message: bytes, ctx: ValidationContext) -> signed.VerifyResult:
    parsed = smime.parse(message)
    return signed.verify(parsed.der, parsed.detached_content, ctx)


def encrypt_message(
    message: bytes,
    recipients: list[x509.Certificate],
    ctx: ValidationContext,
    cipher: enveloped.ContentCipher,
    transport: enveloped.KeyTransport,
    sign_with: Keystore | None = None,
) -> bytes:
    """Check every recipient (chain, validity, revocation), optionally sign first, encrypt."""
    for cert in recipients:
        check_recipient(cert, ctx)
    outer, entity = smime.entity_of(message)
    if sign_with is not None:
        signed_msg = sign_message(entity, sign_with, detached=False, clock=lambda: ctx.now)
        _, entity = smime.entity_of(signed_msg)
    der = enveloped.encrypt(entity, _unique(recipients), cipher, transport)
    kind = smime.SmimeType.AUTH_ENVELOPED_DATA if cipher is enveloped.ContentCipher.AES256_GCM else smime.SmimeType.ENVELOPED_DATA
    return smime.pkcs7_mime(der, kind, outer)


def _unique(certs: list[x509.Certificate]) -> list[x509.Certificate]:
    out: list[x509.Certificate] = []
    for c in certs:
        if c not in out:
            out.append(c)
    return out


def decrypt_message(message: bytes, keystore: Keystore, ctx: ValidationContext | None) -> Opened:
    """Open the lock box for one of the keystore's keys (current or older); verify the inner
    signature when there is one, warning (not failing) when its signer is revoked."""
    parsed = smime.parse(message)
    out = enveloped.decrypt(parsed.der, keystore.encryption_entries())
    opened = Opened(out.content, None, out.recipient.certificate.serial_number)
    if ctx is not None and smime.is_smime(out.content):
        _verify_inner(opened, out.content, ctx)
    return opened


def _verify_inner(opened: Opened, entity: bytes, ctx: ValidationContext) -> None:
    """Verify a signed message found inside an encrypted one; a revoked signer is a warning."""
    inner = smime.parse(entity)
    try:
        result = signed.verify(inner.der, inner.detached_content, ctx)
    except errors.CertificateRevoked as exc:
        opened.warnings.append(str(exc))
        no_revocation = ValidationContext(ctx.trust_anchors, ctx.now, None, ctx.extra_certs)
        result = signed.verify(inner.der, inner.detached_content, no_revocation)
    opened.signer = result
    opened.entity = result.content
    opened.warnings += result.warnings

def encrypt_file(
    src: BinaryIO,
    out: BinaryIO,
    recipients: list[x509.Certificate],
    ctx: ValidationContext,
    cipher: enveloped.ContentCipher,
    transport: enveloped.KeyTransport,
) -> None:
    """Streaming encryption, in bounded memory, after the recipients are checked."""
    for cert in recipients:
        check_recipient(cert, ctx)
    stream.encrypt_stream(src, out, _unique(recipients), cipher, transport)


def decrypt_file(src: BinaryIO, out_path: Path, keystore: Keystore, ctx: ValidationContext | None) -> Opened:
    """Streaming decryption into ``out_path``; a signed message inside is then verified and
    replaced by its content (signed messages are read into memory for that)."""
    entry = stream.decrypt_stream(src, out_path, keystore.encryption_entries())
    opened = Opened(b"", None, entry.certificate.serial_number)
    with open(out_path, "rb") as fh:
        head = fh.read(64 << 10)
    if ctx is not None and smime.is_smime(head):
        _verify_inner(opened, out_path.read_bytes(), ctx)
        write_atomic(out_path, opened.entity, 0o600)
    return opened


def sign_file(src: BinaryIO, out: BinaryIO, keystore: Keystore, detached: bool, clock: Clock = system_clock) -> None:
    """Streaming signature (opaque or clear-signed), in bounded memory."""
    entry = keystore.signing_entry()
    if entry is None:
        raise errors.NotFound("the keystore has no signing key")
    stream.sign_stream(src, out, entry, keystore.ca_certificates(), detached, clock())


def verify_file(src: BinaryIO, out_path: Path | None, ctx: ValidationContext) -> signed.VerifyResult:
    """Streaming verification of an opaque signed message (clear-signed ones are read whole)."""
    return stream.verify_stream(src, out_path, ctx)
