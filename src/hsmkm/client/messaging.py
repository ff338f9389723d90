"""The user's messaging: sign, verify, encrypt (a lock box per recipient) and decrypt, with
keys from any keystore and revocation from the client's CRL cache.

Messages go out with their header fields protected (RFC 9788) and come back as their sender
wrote them; a signer must be who the (protected) From says (RFC 8550 §3); each recipient gets
what their client reads (RFC 8551 §2.7), from what they announced or their certificate says.
"""

from __future__ import annotations

import email.utils
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from cryptography import x509

from hsmkm import errors, smimecaps
from hsmkm.addresses import normalize_email
from hsmkm.atomic import write_atomic
from hsmkm.bounded import read_regular
from hsmkm.client.correspondents import Correspondents
from hsmkm.clock import Clock, system_clock
from hsmkm.cms import enveloped, protect, sevenbit, signed, smime, stream
from hsmkm.cms.validation import ValidationContext, check_recipient
from hsmkm.keys.algorithms import digest_for_key
from hsmkm.keys.base import KeyEntry, Keystore

MAX_IN_MEMORY = stream.MAX_CLEAR_SIGNED  # a message restored or clear-signed whole


@dataclass
class Opened:
    """A decrypted (and, when it was signed, verified) message."""

    entity: bytes
    signer: signed.VerifyResult | None
    recipient_serial: int
    warnings: list[str] = field(default_factory=list)
    restored: protect.Restored | None = None


# --- what a certificate or a correspondent announces --------------------------------------


def certificate_capabilities(cert: x509.Certificate) -> list[str] | None:
    """The SMIMECapabilities extension (RFC 4262), if the certificate has a readable one."""
    try:
        ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(smimecaps.OID_SMIME_CAPABILITIES))
    except x509.ExtensionNotFound:
        return None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        return None
    try:
        return smimecaps.decode(value.value)
    except errors.MalformedInput:
        return None


def addresses_of(cert: x509.Certificate) -> list[str]:
    """Every address the certificate names (rfc822Name, else the subject's emailAddress)."""
    found: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found += [str(a) for a in san.get_values_for_type(x509.RFC822Name)]
    except x509.ExtensionNotFound:
        pass
    found += [str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)]
    return found


def plan(
    recipients: Sequence[x509.Certificate],
    correspondents: Correspondents | None,
    cipher: enveloped.ContentCipher | None = None,
    transport: enveloped.KeyTransport | None = None,
    default: smimecaps.ClientProfile = smimecaps.ClientProfile.MODERN,
) -> smimecaps.Choice:
    """The algorithms for these recipients: what each one announced in a signed message
    (cached), else what their certificate says, else the ``default`` profile."""
    known: list[list[str] | None] = []
    names: list[str] = []
    for cert in recipients:
        addrs = addresses_of(cert)
        names.append(addrs[0] if addrs else cert.subject.rfc4514_string())
        announced = correspondents.capabilities_for(addrs[0], cert) if correspondents and addrs else None
        known.append(announced if announced is not None else certificate_capabilities(cert))
    return smimecaps.choose(known, default, cipher, transport, names)


def _signing_material(keystore: Keystore) -> tuple[KeyEntry, list[x509.Certificate], x509.Certificate | None, bytes]:
    """The signing key, the certificates to send (the encryption certificate first, so a
    correspondent can reply encrypted), that certificate, and what the signer reads."""
    entry = keystore.signing_entry()
    if entry is None:
        raise errors.NotFound("the keystore has no signing key")
    enc = keystore.encryption_entries()
    enc_cert = enc[0].certificate if enc else None
    caps = (certificate_capabilities(enc_cert) if enc_cert is not None else None) or list(smimecaps.HSMKM_READS)
    extra = ([enc_cert] if enc_cert is not None else []) + keystore.ca_certificates()
    return entry, extra, enc_cert, smimecaps.encode(caps)


# --- sign and verify --------------------------------------------------------------------


def sign_message(message: bytes, keystore: Keystore, detached: bool, clock: Clock = system_clock) -> bytes:
    """Sign with the header fields protected (hp="clear"); clear-signed content is made 7-bit."""
    entry, extra, enc_cert, caps = _signing_material(keystore)
    p, payload = protect.protect(message, protect.HpMode.CLEAR)
    if detached:
        payload = sevenbit.seven_bit(payload)
    der = signed.sign(payload, entry, extra, detached, clock(), enc_cert, caps)
    if detached:
        return smime.multipart_signed(
            payload, der, digest_for_key(entry.key).micalg, sevenbit.seven_bit_fields(p.outer)
        )
    return smime.pkcs7_mime(der, smime.SmimeType.SIGNED_DATA, p.outer)


def check_sender(result: signed.VerifyResult, restored: protect.Restored) -> None:
    """RFC 8550 §3: each From address (the protected one when there is one) must be one the
    signer's certificate names; a NegativeAnswer otherwise."""
    from_value = restored.header("From")
    if from_value is None:
        from_value = next((v for k, v in result.outer_headers if k.lower() == "from"), None)
    if from_value is None:
        return
    named = {_norm(a) for a in addresses_of(result.signer)}
    said = [a for _n, a in email.utils.getaddresses([from_value]) if a]
    strangers = [a for a in said if _norm(a) not in named]
    if strangers or not said:
        signer = ", ".join(sorted(named)) or result.signer.subject.rfc4514_string()
        raise errors.ValidationFailed(f"the message says From: {from_value} but is signed by {signer}")


def _norm(address: str) -> str:
    try:
        return normalize_email(address)
    except errors.BadInput:
        return address.strip().lower()


def _bind(result: signed.VerifyResult, restored: protect.Restored) -> None:
    check_sender(result, restored)
    result.warnings += restored.mismatches


def remember_sender(correspondents: Correspondents | None, result: signed.VerifyResult) -> None:
    """Keep what a verified signer announced, for the next message to them."""
    if correspondents is None or result.email is None:
        return
    correspondents.remember(
        _norm(result.email), result.signer, result.signing_time, result.capabilities, result.encryption_certificate
    )


def verify_message(message: bytes, ctx: ValidationContext) -> signed.VerifyResult:
    parsed = smime.parse(message)
    result = signed.verify(parsed.der, parsed.detached_content, ctx)
    result.outer_headers = parsed.outer_headers
    restored = protect.restore(result.content, parsed.outer_headers)
    _bind(result, restored)
    result.restored = restored
    return result


# --- encrypt and decrypt ------------------------------------------------------------------


def encrypt_message(
    message: bytes,
    recipients: list[x509.Certificate],
    ctx: ValidationContext,
    cipher: enveloped.ContentCipher,
    transport: enveloped.KeyTransport | Sequence[enveloped.KeyTransport],
    sign_with: Keystore | None = None,
    policy: protect.Confidentiality = protect.Confidentiality.BASELINE,
    legacy_display: bool = False,
) -> bytes:
    """Check every recipient (chain, validity, revocation), protect the header fields
    (hp="cipher"), optionally sign, encrypt."""
    for cert in recipients:
        check_recipient(cert, ctx)
    p, payload = protect.protect(message, protect.HpMode.CIPHER, policy, legacy_display)
    if sign_with is not None:
        entry, extra, enc_cert, caps = _signing_material(sign_with)
        der = signed.sign(payload, entry, extra, False, ctx.now, enc_cert, caps)
        # the signed entity is a MIME part inside the encryption: its own header is Content-* only
        payload = smime.pkcs7_mime(der, smime.SmimeType.SIGNED_DATA, []).removeprefix(b"MIME-Version: 1.0\r\n")
    unique, transports = _unique(recipients, transport)
    der = enveloped.encrypt(payload, unique, cipher, transports)
    kind = (
        smime.SmimeType.AUTH_ENVELOPED_DATA
        if cipher is enveloped.ContentCipher.AES256_GCM
        else smime.SmimeType.ENVELOPED_DATA
    )
    return smime.pkcs7_mime(der, kind, p.outer)


def _unique(
    certs: list[x509.Certificate], transport: enveloped.KeyTransport | Sequence[enveloped.KeyTransport]
) -> tuple[list[x509.Certificate], list[enveloped.KeyTransport]]:
    each = [transport] * len(certs) if isinstance(transport, enveloped.KeyTransport) else list(transport)
    if len(each) != len(certs):
        raise errors.BadInput("one key transport per recipient")
    out: list[x509.Certificate] = []
    out_t: list[enveloped.KeyTransport] = []
    for c, t in zip(certs, each, strict=True):
        if c not in out:
            out.append(c)
            out_t.append(t)
    return out, out_t


def decrypt_message(message: bytes, keystore: Keystore, ctx: ValidationContext | None) -> Opened:
    """Open the lock box for one of the keystore's keys (current or older); verify the inner
    signature when there is one, warning (not failing) when its signer is revoked; give back
    the message as its sender wrote it."""
    parsed = smime.parse(message)
    out = enveloped.decrypt(parsed.der, keystore.encryption_entries())
    opened = Opened(out.content, None, out.recipient.certificate.serial_number)
    if ctx is not None and smime.is_smime(out.content):
        _verify_inner(opened, out.content, ctx, parsed.outer_headers)
    else:
        opened.restored = protect.restore(out.content, parsed.outer_headers)
        opened.entity = opened.restored.message
        opened.warnings += opened.restored.mismatches
    return opened


def _verify_inner(opened: Opened, entity: bytes, ctx: ValidationContext, outer: list[tuple[str, str]]) -> None:
    """Verify a signed message found inside an encrypted one; a revoked signer is a warning;
    a signer who is not the (protected) From is refused."""
    inner = smime.parse(entity)
    try:
        result = signed.verify(inner.der, inner.detached_content, ctx)
    except errors.CertificateRevoked as exc:
        opened.warnings.append(str(exc))
        no_revocation = ValidationContext(ctx.trust_anchors, ctx.now, None, ctx.extra_certs)
        result = signed.verify(inner.der, inner.detached_content, no_revocation)
    result.outer_headers = outer
    restored = protect.restore(result.content, outer)
    _bind(result, restored)
    result.restored = restored
    opened.signer = result
    opened.restored = restored
    opened.entity = restored.message
    opened.warnings += result.warnings


def encrypt_file(
    src: BinaryIO,
    out: BinaryIO,
    recipients: list[x509.Certificate],
    ctx: ValidationContext,
    cipher: enveloped.ContentCipher,
    transport: enveloped.KeyTransport | Sequence[enveloped.KeyTransport],
    policy: protect.Confidentiality = protect.Confidentiality.BASELINE,
    legacy_display: bool = False,
) -> None:
    """Streaming encryption, in bounded memory, after the recipients are checked."""
    for cert in recipients:
        check_recipient(cert, ctx)
    unique, transports = _unique(recipients, transport)
    stream.encrypt_stream(src, out, unique, cipher, transports, policy, legacy_display)


class _Restorer:
    """The head filter that restores the sender's header fields as the plaintext is written."""

    def __init__(self, outer: list[tuple[str, str]]) -> None:
        self.outer = outer
        self.restored: protect.Restored | None = None
        self.later = False  # a signed message inside, or a legacy display element: done whole

    def __call__(self, head: bytes) -> bytes:
        if smime.is_smime(head) or protect.has_legacy_display(head):
            self.later = True
            return head
        self.restored = protect.restore(head, self.outer)
        return self.restored.message


def decrypt_file(src: BinaryIO, out_path: Path, keystore: Keystore, ctx: ValidationContext | None) -> Opened:
    """Streaming decryption into ``out_path``; a signed message inside is then verified and
    replaced by its content, read into memory for that, as is a message whose legacy display
    element is to be removed."""
    outer: list[tuple[str, str]] = []
    restorer = _Restorer(outer)
    entry = stream.decrypt_stream(src, out_path, keystore.encryption_entries(), outer=outer, head_filter=restorer)
    opened = Opened(b"", None, entry.certificate.serial_number, restored=restorer.restored)
    if restorer.later:
        with open(out_path, "rb") as fh:
            inner_signed = smime.is_smime(fh.read(64 << 10))
        if inner_signed:
            if ctx is None:
                return opened  # a signed message inside, left as it is: nothing to verify it with
            _verify_inner(opened, out_path.read_bytes(), ctx, outer)  # signed messages are read whole
        else:
            whole = read_regular(out_path, MAX_IN_MEMORY, "decrypted message")
            opened.restored = protect.restore(whole, outer)
            opened.entity = opened.restored.message
            opened.warnings += opened.restored.mismatches
        write_atomic(out_path, opened.entity, 0o600)
        opened.entity = b""
    elif opened.restored is not None:
        opened.warnings += opened.restored.mismatches
    return opened


def sign_file(src: BinaryIO, out: BinaryIO, keystore: Keystore, detached: bool, clock: Clock = system_clock) -> None:
    """Streaming signature of an opaque message, in bounded memory; a clear-signed one is
    read whole (at most MAX_IN_MEMORY octets), to be made 7-bit."""
    if detached:
        data = src.read(MAX_IN_MEMORY + 1)
        if len(data) > MAX_IN_MEMORY:
            raise errors.BadInput(f"a clear-signed message over {MAX_IN_MEMORY >> 20} MiB is refused; sign it opaque")
        out.write(sign_message(data, keystore, True, clock))
        return
    entry, extra, enc_cert, caps = _signing_material(keystore)
    stream.sign_stream(src, out, entry, extra, False, clock(), enc_cert, caps)


def verify_file(src: BinaryIO, out_path: Path | None, ctx: ValidationContext) -> signed.VerifyResult:
    """Streaming verification of an opaque signed message (clear-signed ones are read whole);
    ``out_path`` gets the message as its sender wrote it, once the signature, the signer and
    the sender binding check out."""
    outer: list[tuple[str, str]] = []
    restorer = _Restorer(outer)

    def check(result: signed.VerifyResult) -> None:
        restored = restorer.restored or protect.restore(b"", result.outer_headers)
        _bind(result, restored)
        result.restored = restored

    return stream.verify_stream(src, out_path, ctx, head_filter=restorer, check=check, outer_out=outer)
