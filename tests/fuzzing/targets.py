"""Fuzz targets over hsmkm's parsers, and the seed inputs they start from.

Each target takes bytes and runs one parser the way hsmkm runs it on a file from outside;
the only exceptions allowed out are hsmkm's own (``errors.HsmkmError``): anything else is a
crash. The seeds are valid inputs made here with software keys, so the fuzzer starts from
deep inside each format.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hsmkm import addresses, errors
from hsmkm.cms import ber, enveloped, signed, smime, stream
from hsmkm.cms.validation import ValidationContext
from hsmkm.keys.algorithms import algorithm_of
from hsmkm.keys.base import KeyEntry, KeyRole
from hsmkm.keys.epf import EpfKeystore
from hsmkm.keys.uri import Pkcs11Uri, classify_keystore_ref
from hsmkm.km import users
from hsmkm.km.enroll import parse_csr
from hsmkm.x509 import crlparse as crlmod

NOW = datetime(2026, 6, 1, tzinfo=UTC)
EPF_PASSWORD = "fuzz-password"
EPF_ITERATIONS = 16  # seeds cheap to open; the fuzzer finds the large counts itself


@dataclass
class World:
    """A CA and two users' keys, made once per fuzzing process."""

    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    signer: KeyEntry
    rsa_recipient: KeyEntry
    ec_recipient: KeyEntry
    tmp: Path

    @property
    def context(self) -> ValidationContext:
        return ValidationContext([self.ca], NOW)


def _cert(
    ca_key: object, ca: x509.Certificate | None, key: object, cn: str, ku: x509.KeyUsage, email: str | None
) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.subject if ca else subject)
        .public_key(key.public_key())  # type: ignore[attr-defined]
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(ku, critical=True)
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if email:
        b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
    return b.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]


def _ku(sign: bool = False, encipher: bool = False, agree: bool = False, ca: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(sign, sign, encipher, False, agree, ca, ca, False, False)


_WORLD: World | None = None


def world() -> World:
    global _WORLD
    if _WORLD is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _cert(ca_key, None, ca_key, "Fuzz CA", _ku(ca=True), None)
        sk = ec.generate_private_key(ec.SECP256R1())
        rk = rsa.generate_private_key(65537, 2048)
        ek = ec.generate_private_key(ec.SECP256R1())
        _WORLD = World(
            ca_key,
            ca,
            KeyEntry(sk, _cert(ca_key, ca, sk, "alice", _ku(sign=True), "alice@example.com"), KeyRole.SIGN),
            KeyEntry(rk, _cert(ca_key, ca, rk, "bob", _ku(encipher=True), "bob@example.com"), KeyRole.ENCRYPT),
            KeyEntry(ek, _cert(ca_key, ca, ek, "carol", _ku(agree=True), "carol@example.com"), KeyRole.ENCRYPT),
            Path(tempfile.mkdtemp(prefix="hsmkm-fuzz-")),
        )
    return _WORLD


# --- targets --------------------------------------------------------------------------------


def fuzz_ber(data: bytes) -> None:
    """The streaming BER reader: every element of the input, and OCTET STRING pieces."""
    reader = ber.Reader(io.BytesIO(data))
    for _ in range(64):
        hdr = reader.header()
        if hdr.tag in (0x04, 0x24):
            for _piece in reader.octet_pieces(hdr):
                pass
        else:
            reader.element(hdr)
        if reader.pos >= len(data):
            return


def fuzz_signed(data: bytes) -> None:
    """Verifying a signed message, in memory and streamed."""
    w = world()
    with contextlib.suppress(errors.HsmkmError):
        signed.verify(data, None, w.context)
    stream.verify_stream(io.BytesIO(data), None, w.context)


def fuzz_enveloped(data: bytes) -> None:
    """Decrypting a message, in memory and streamed."""
    w = world()
    candidates = [w.rsa_recipient, w.ec_recipient]
    with contextlib.suppress(errors.HsmkmError):
        enveloped.decrypt(data, candidates)
    stream.decrypt_stream(io.BytesIO(data), w.tmp / "plain", candidates)


def fuzz_smime(data: bytes) -> None:
    """The MIME framing: parse, the streamed CMS opener, the entity splitter."""
    smime.is_smime(data)
    smime.entity_of(data)
    with contextlib.suppress(errors.HsmkmError):
        smime.parse(data)
    stream.open_cms_stream(io.BytesIO(data)).read()


def fuzz_pkcs12(data: bytes) -> None:
    """Opening an .epf (PKCS#12) and listing what it holds."""
    path = world().tmp / "fuzz.epf"
    path.write_bytes(data)
    ks = EpfKeystore.open(path, EPF_PASSWORD)
    ks.signing_entry()
    ks.encryption_entries()
    ks.ca_certificates()
    ks.info()


def fuzz_crl(data: bytes) -> None:
    """The CRL parser the client cache uses, every entry, and the signature check."""
    parsed = crlmod.parse_crl(data)
    for _entry in parsed.entries():
        pass
    crlmod.verify_crl_signature(parsed, world().ca.public_key())  # type: ignore[arg-type]


def fuzz_csr(data: bytes) -> None:
    """The KM's CSR intake: parse, proof of possession, key algorithm, addresses."""
    csr = parse_csr(data)
    algorithm_of(csr.public_key())
    from hsmkm.km.enroll_common import csr_addresses

    for email in csr_addresses(csr):
        if "@" in email:
            users.normalize_email(email)


def fuzz_uri(data: bytes) -> None:
    """RFC 7512 URIs and keystore names; a parsed URI prints and re-parses to itself."""
    text = data.decode("utf-8", "replace")
    ref = classify_keystore_ref(text)
    if isinstance(ref, Pkcs11Uri):
        again = Pkcs11Uri.parse(ref.to_uri())
        assert again == ref, (ref, again)


def fuzz_csv(data: bytes) -> None:
    """`user import`'s CSV: every row's address and name checked."""
    rows = users.parse_user_csv(data.decode("utf-8", "replace"))
    for email, name in rows:
        assert addresses.normalize_email(email) == email
        assert addresses.check_name(name) == name


def fuzz_address(data: bytes) -> None:
    """Addresses and names: normal forms are fixed points and file names stay in their folder."""
    text = data.decode("utf-8", "replace")
    folder = Path("/srv/km/pub/certs")
    try:
        email = addresses.normalize_email(text)
    except errors.HsmkmError:
        email = None
    if email is not None:
        assert addresses.normalize_email(email) == email
        path = addresses.address_file(folder, email, ".enc.crt")
        assert path.parent == folder and os.path.normpath(path) == str(path), path
        assert len(email.encode()) <= addresses.MAX_ADDRESS_OCTETS
    name = addresses.check_name(text)
    if name is not None:
        assert name.isprintable() and len(name) <= addresses.MAX_NAME_CHARS


TARGETS: dict[str, Callable[[bytes], None]] = {
    "ber": fuzz_ber,
    "signed": fuzz_signed,
    "enveloped": fuzz_enveloped,
    "smime": fuzz_smime,
    "pkcs12": fuzz_pkcs12,
    "crl": fuzz_crl,
    "csr": fuzz_csr,
    "uri": fuzz_uri,
    "csv": fuzz_csv,
    "address": fuzz_address,
}


# --- seeds ----------------------------------------------------------------------------------

_MESSAGE = b"From: alice@example.com\r\nTo: bob@example.com\r\nSubject: hi\r\n\r\nHello, Bob.\r\n"


def _streamed(fn: Callable[[io.BytesIO, io.BytesIO], None]) -> bytes:
    out = io.BytesIO()
    fn(io.BytesIO(_MESSAGE), out)
    return out.getvalue()


def _signed_seeds(w: World) -> list[bytes]:
    der = signed.sign(b"Content-Type: text/plain\r\n\r\nhello\r\n", w.signer, [], False, NOW)
    opaque = _streamed(lambda i, o: stream.sign_stream(i, o, w.signer, [], False, NOW))
    detached = _streamed(lambda i, o: stream.sign_stream(i, o, w.signer, [], True, NOW))
    return [der, opaque, detached, smime.parse(opaque).der]


def _enveloped_seeds(w: World) -> list[bytes]:
    rcpts = [w.rsa_recipient.certificate, w.ec_recipient.certificate]
    out = [enveloped.encrypt(b"hello", rcpts, c, t) for c in enveloped.ContentCipher for t in enveloped.KeyTransport]
    for c in enveloped.ContentCipher:
        enc = functools.partial(
            stream.encrypt_stream, recipients=rcpts, cipher=c, transport=enveloped.KeyTransport.RSA_OAEP
        )
        msg = _streamed(enc)
        out += [msg, smime.parse(msg).der]
    return out


def _crl_seed(w: World) -> bytes:
    b = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(w.ca.subject)
        .last_update(NOW)
        .next_update(NOW + timedelta(days=1))
        .add_extension(x509.CRLNumber(7), critical=False)
    )
    for serial in (1, 2**64 + 5, 2**158):
        b = b.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW)
            .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
            .build()
        )
    return b.sign(w.ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def _csr_seeds(w: World) -> list[bytes]:
    out = []
    for key in (w.signer.key, w.rsa_recipient.key):
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "alice@example.com")]))
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("alice@example.com")]), critical=False)
            .sign(key, hashes.SHA256())
        )
        out += [csr.public_bytes(serialization.Encoding.DER), csr.public_bytes(serialization.Encoding.PEM)]
    return out


def _pkcs12_seeds(w: World) -> list[bytes]:
    path = w.tmp / "seed.epf"
    path.unlink(missing_ok=True)
    ks = EpfKeystore.create(path, EPF_PASSWORD, iterations=EPF_ITERATIONS)
    ks.set_signing_entry(w.signer.key, w.signer.certificate)
    ks.add_encryption_entry(w.rsa_recipient.key, w.rsa_recipient.certificate)
    ks.add_ca_certificate(w.ca)
    ks.save()
    ours = path.read_bytes()
    from cryptography.hazmat.primitives.serialization import pkcs12

    legacy = pkcs12.serialize_key_and_certificates(
        b"seed",
        w.signer.key,
        w.signer.certificate,
        [w.ca],
        serialization.BestAvailableEncryption(EPF_PASSWORD.encode()),
    )
    enc = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(EPF_ITERATIONS)
        .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
        .hmac_hash(hashes.SHA1())
        .build(EPF_PASSWORD.encode())
    )
    triple_des = pkcs12.serialize_key_and_certificates(b"seed", w.signer.key, w.signer.certificate, None, enc)
    return [ours, legacy, triple_des]


def _csv_seed() -> bytes:
    buf = io.StringIO()
    wr = csv.writer(buf)
    wr.writerow(["email", "name"])
    for row in (
        ["alice@example.com", "Alice Liddell"],
        ["bob.smith+km@mail.example.org", ""],
        ["jürgen@bücher.example", "Jürgen Müller"],
        ["carol@example.com", 'Carol, "the" Admin'],
    ):
        wr.writerow(row)
    return buf.getvalue().encode()


def seeds(target: str) -> list[bytes]:
    """Valid inputs for ``target``."""
    w = world()
    if target == "signed":
        return _signed_seeds(w)
    if target == "enveloped":
        return _enveloped_seeds(w)
    if target == "ber":
        return [smime.parse(s).der if not s.startswith(b"\x30") else s for s in _signed_seeds(w)[:2]] + [
            smime.parse(_enveloped_seeds(w)[-2]).der
        ]
    if target == "smime":
        return _signed_seeds(w)[1:3] + _enveloped_seeds(w)[4:5] + [_MESSAGE]
    if target == "pkcs12":
        return _pkcs12_seeds(w)
    if target == "crl":
        return [_crl_seed(w)]
    if target == "csr":
        return _csr_seeds(w)
    if target == "uri":
        return [
            b"pkcs11:token=alice;object=alice-sign;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=env:PIN",
            b"pkcs11:model=SoftHSM%20v2;manufacturer=SoftHSM%20project;serial=1234;id=%01%02?pin-value=",
            b"pkcs11:slot-id=3;library-version=2.6",
            b"alice.epf",
            b"PKCS11:token=a%2Fb",
        ]
    if target == "csv":
        return [_csv_seed()]
    if target == "address":
        return [
            b"alice@example.com",
            "jürgen@bücher.example".encode(),
            b"a.b-c+d@sub-1.example.co.uk",
            b"Alice Liddell",
            b"../../x@example.com",
        ]
    raise KeyError(target)
