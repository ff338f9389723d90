"""Hostile inputs, generated: the classes of tests/test_hostile.py.

Builders here make the specific attacks (a SignedData whose eContentType is 1.2.3.4, a GCM
nonce of 5,000 octets, a PKCS#12 key bag asking for 2^31-1 iterations, …) from a signer's
real key, and systematic corruptions (truncations, bit flips, length bumps) of valid inputs.
Run as a script it is the bulk worker: every generated input through the parser that reads
it, one JSON line per input with what came out and the CPU time it took.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import random
import resource
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from asn1crypto import cms, pkcs12
from cryptography.hazmat.primitives.serialization import Encoding

from hsmkm.cms import stream
from hsmkm.der import der_int, der_oid, der_time, seq, tlv
from hsmkm.keys.algorithms import signature_scheme
from hsmkm.keys.base import KeyEntry

_DER = Encoding.DER
OID_DATA = "1.2.840.113549.1.7.1"
OID_SIGNED = "1.2.840.113549.1.7.2"
OID_AUTH_ENVELOPED = "1.2.840.113549.1.9.16.1.23"

# --- signed messages built field by field --------------------------------------------------


def signed_message(
    entry: KeyEntry,
    content: bytes = b"Content-Type: text/plain\r\n\r\nhello\r\n",
    econtent_type: str = OID_DATA,
    attr_content_type: str | None = None,
    sig_alg: bytes | None = None,
    signing_time: bytes | None = None,
    trailing: bytes = b"",
    si_override: bytes | None = None,
    cert_der: bytes | None = None,
) -> bytes:
    """A DER SignedData over ``content`` signed with ``entry``'s key, with the fields an attack
    changes: the eContentType (and the signed content-type attribute, by default the same, so
    the signature itself is good), the signatureAlgorithm, the signingTime's encoding."""
    scheme = signature_scheme(entry.key)
    digest = hashlib.new(scheme.digest.value, content).digest()
    ctype_der = der_oid(attr_content_type or econtent_type)
    time_der = signing_time if signing_time is not None else der_time(datetime.now(UTC))
    attrs = sorted(
        [
            seq(der_oid("1.2.840.113549.1.9.3"), tlv(0x31, ctype_der)),
            seq(der_oid("1.2.840.113549.1.9.5"), tlv(0x31, time_der)),
            seq(der_oid("1.2.840.113549.1.9.4"), tlv(0x31, tlv(0x04, digest))),
        ]
    )
    to_sign = tlv(0x31, b"".join(attrs))
    signature = scheme.sign(entry.key, to_sign)
    default_alg = scheme.algorithm_identifier
    cert = entry.certificate
    si = (
        si_override
        if si_override is not None
        else seq(
            b"\x02\x01\x01",
            seq(cert.issuer.public_bytes(), der_int(cert.serial_number)),
            scheme.digest.algorithm_identifier,
            tlv(0xA0, b"".join(attrs)),
            sig_alg if sig_alg is not None else default_alg,
            tlv(0x04, signature),
        )
    )
    from cryptography.hazmat.primitives import serialization

    sd = seq(
        b"\x02\x01\x01",
        tlv(0x31, scheme.digest.algorithm_identifier),
        seq(der_oid(econtent_type), tlv(0xA0, tlv(0x04, content))),
        tlv(0xA0, cert_der if cert_der is not None else cert.public_bytes(serialization.Encoding.DER)),
        tlv(0x31, si),
    )
    return seq(der_oid(OID_SIGNED), tlv(0xA0, sd)) + trailing


def as_smime(der: bytes, smime_type: str = "signed-data") -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"\r\n")
    return (
        b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type="
        + smime_type.encode()
        + b"; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + body
    )


def streamed_signed_der(entry: KeyEntry) -> bytes:
    """What ``msg sign`` writes (indefinite-length BER), as bare BER."""
    out = io.BytesIO()
    stream.sign_stream(io.BytesIO(b"Subject: x\r\n\r\nhello\r\n"), out, entry, [], False, datetime.now(UTC))
    text = out.getvalue()
    return base64.b64decode(text[text.index(b"\r\n\r\n") + 4 :])


def x400_certificate(cert_der: bytes, email: bytes) -> bytes:
    """``cert_der`` with its rfc822Name turned into an x400Address, which cryptography cannot
    parse (it raises its own exception type, at the first look at the extensions)."""
    i = cert_der.index(b"\x81" + bytes([len(email)]) + email)
    return cert_der[:i] + b"\xa3" + cert_der[i + 1 :]


def signed_attacks(entry: KeyEntry) -> dict[str, tuple[bytes, int]]:
    """Named hostile signed messages from ``entry``'s key, with the exit code each must get."""
    ber_msg = streamed_signed_der(entry)
    pss_md5 = seq(der_oid("1.2.840.113549.1.1.10"), seq(tlv(0xA0, seq(der_oid("1.2.840.113549.2.5"), b"\x05\x00"))))
    out: dict[str, tuple[bytes, int]] = {
        "econtent-1.2.3.4": (signed_message(entry, econtent_type="1.2.3.4"), 2),
        "econtent-differs-from-attribute": (signed_message(entry, attr_content_type="1.2.3.4"), 1),
        "sigalg-unknown": (signed_message(entry, sig_alg=seq(der_oid("1.2.3.4.5"))), 2),
        "sigalg-pss-md5": (signed_message(entry, sig_alg=pss_md5), 2),
        "sigalg-rsa-on-ec": (signed_message(entry, sig_alg=seq(der_oid("1.2.840.113549.1.1.11"), b"\x05\x00")), 2),
        "sigalg-sha384-with-sha256": (signed_message(entry, sig_alg=seq(der_oid("1.2.840.10045.4.3.3"))), 1),
        "signing-time-garbage": (signed_message(entry, signing_time=tlv(0x17, b"99999999999999Z")), 2),
        "signing-time-integer": (signed_message(entry, signing_time=b"\x02\x01\x05"), 2),
        "signing-time-empty": (signed_message(entry, signing_time=tlv(0x18, b"")), 2),
        "signing-time-no-zone": (signed_message(entry, signing_time=tlv(0x18, b"20260101000000")), 2),
        "signer-info-empty": (signed_message(entry, si_override=b""), 2),
        "signer-info-version-only": (signed_message(entry, si_override=b"\x02\x01\x01"), 2),
        "signer-info-sid-integer": (signed_message(entry, si_override=seq(b"\x02\x01\x01", b"\x02\x01\x07")), 2),
        "signer-info-garbage": (signed_message(entry, si_override=seq(b"\x04\x03abc" * 3)), 2),
        "der-trailing-data": (signed_message(entry, trailing=b"\x00\x00junk"), 2),
        "signer-cert-x400-name": (
            signed_message(
                entry, cert_der=x400_certificate(entry.certificate.public_bytes(_DER), _email_of(entry).encode())
            ),
            2,
        ),
        "ber-trailing-data": (ber_msg + b"\x04\x01x", 2),
        "ber-missing-eoc": (ber_msg[:-2], 2),
        "ber-missing-all-eoc": (ber_msg[:-6], 2),
        "ber-eoc-as-element": (b"\x30\x80\x00\x00", 2),
        "ber-deep-100000": (b"\x30\x80" * 100_000 + b"\x00\x00" * 100_000, 2),
        "ber-deep-100000-octets": (_deep_content(100_000), 2),
        "ber-8-byte-length": (b"\x30\x88" + b"\xff" * 8 + b"\x06\x09" + der_oid(OID_SIGNED)[2:], 2),
        "ber-8-byte-length-content": (_signed_prefix() + b"\x24\x80\x04\x88" + b"\x7f" + b"\xff" * 7, 2),
        "ber-9-byte-length": (b"\x30\x89" + b"\x01" * 9, 2),
        "ber-length-past-end": (b"\x30\x82\xff\xff" + der_oid(OID_SIGNED), 2),
        "ber-piece-past-parent": (_signed_prefix() + b"\x24\x04\x04\x10" + b"x" * 16 + b"\x00\x00" * 4, 2),
        "ber-high-tag": (b"\x1f\x81\x00\x00", 2),
        "ber-indefinite-primitive": (b"\x30\x80\x06\x80", 2),
    }
    return out


def _email_of(entry: KeyEntry) -> str:
    from hsmkm.certnames import email_of

    email = email_of(entry.certificate)
    assert email is not None
    return email


def _signed_prefix() -> bytes:
    """ContentInfo, [0], SignedData, version, digests, encapContentInfo up to its [0] (all indefinite)."""
    return (
        b"\x30\x80"
        + der_oid(OID_SIGNED)
        + b"\xa0\x80\x30\x80\x02\x01\x01"
        + tlv(0x31, seq(der_oid("2.16.840.1.101.3.4.2.1")))
        + b"\x30\x80"
        + der_oid(OID_DATA)
        + b"\xa0\x80"
    )


def _deep_content(depth: int) -> bytes:
    return _signed_prefix() + b"\x24\x80" * depth + b"\x00\x00" * depth


# --- enveloped messages with hostile parameters ---------------------------------------------


def _swap_alg_params(der: bytes, params: bytes, algorithm: str | None = None) -> bytes:
    """``der`` with its content-encryption algorithm's parameters (DER) replaced, re-encoded
    by hand (asn1crypto would check the new parameters)."""
    info = cms.ContentInfo.load(der)
    ctype = info["content_type"].dotted
    body = info["content"]
    if ctype == OID_AUTH_ENVELOPED:
        body = cms.AuthEnvelopedData.load(body.contents) if not isinstance(body, cms.AuthEnvelopedData) else body
        eci = body["auth_encrypted_content_info"]
    else:
        eci = body["encrypted_content_info"]
    oid = algorithm or eci["content_encryption_algorithm"]["algorithm"].dotted
    new_eci = seq(eci["content_type"].dump(), seq(der_oid(oid), params), eci["encrypted_content"].dump())
    fields = [body["version"].dump(), body["recipient_infos"].dump(), new_eci]
    if ctype == OID_AUTH_ENVELOPED:
        fields.append(body["mac"].dump())
    return seq(der_oid(ctype), tlv(0xA0, seq(*fields)))


def _gcm(nonce: bytes, icv: int | None = 16) -> bytes:
    return seq(tlv(0x04, nonce), der_int(icv) if icv is not None else b"")


def enveloped_attacks(gcm_der: bytes, cbc_der: bytes) -> dict[str, bytes]:
    """Named hostile (Auth)EnvelopedData from valid ones; each must be refused with exit 2."""
    aes128_gcm, aes128_cbc = "2.16.840.1.101.3.4.1.6", "2.16.840.1.101.3.4.1.2"
    out = {}
    for n in (0, 1, 8, 11, 13, 16, 5000):
        out[f"gcm-nonce-{n}"] = _swap_alg_params(gcm_der, _gcm(b"\x01" * n))
    for icv in (0, 4, 11, 17, -1, 1 << 40):
        out[f"gcm-icv-{icv}"] = _swap_alg_params(gcm_der, _gcm(b"\x01" * 12, icv))
    out["gcm-params-null"] = _swap_alg_params(gcm_der, b"\x05\x00")
    out["gcm-params-octets"] = _swap_alg_params(gcm_der, tlv(0x04, b"\x00" * 12))
    out["gcm-params-empty"] = _swap_alg_params(gcm_der, b"")
    for n in (0, 8, 15, 17, 5000):
        out[f"cbc-iv-{n}"] = _swap_alg_params(cbc_der, tlv(0x04, b"\x02" * n))
    out["cbc-params-null"] = _swap_alg_params(cbc_der, b"\x05\x00")
    out["cbc-params-sequence"] = _swap_alg_params(cbc_der, seq(tlv(0x04, b"\x02" * 16)))
    out["cbc-as-aes128"] = _swap_alg_params(cbc_der, tlv(0x04, b"\x02" * 16), aes128_cbc)
    out["gcm-as-aes128"] = _swap_alg_params(gcm_der, _gcm(b"\x01" * 12), aes128_gcm)
    out["gcm-as-cbc"] = _swap_alg_params(gcm_der, tlv(0x04, b"\x02" * 16), "2.16.840.1.101.3.4.1.42")
    out["cbc-as-unknown"] = _swap_alg_params(cbc_der, tlv(0x04, b"\x02" * 16), "1.2.3.4")
    out["gcm-trailing"] = gcm_der + b"\x00"
    out["cbc-trailing"] = cbc_der + b"\x05\x00"
    out["gcm-truncated"] = gcm_der[: len(gcm_der) - 7]
    return out


# --- PKCS#12 with hostile iteration counts ---------------------------------------------------


def pkcs12_with_iterations(legacy_key: bytes, where: str, count: int) -> bytes:
    """A copy of a legacy PKCS#12 (as cryptography or openssl -legacy write it) with one
    iteration count set: ``mac``, ``key`` (the shrouded key bag's PBE) or ``content`` (the
    encrypted certificates). The MAC is left as is: a file must be refused before any
    key derivation runs at the count it names, MAC check included."""
    pfx = pkcs12.Pfx.load(legacy_key)
    if where == "mac":
        pfx["mac_data"]["iterations"] = count
        return pfx.dump(force=True)
    safe = pkcs12.AuthenticatedSafe.load(pfx["auth_safe"]["content"].native)
    infos = []
    for ci in safe:
        if ci["content_type"].native == "data" and where == "key":
            bags = pkcs12.SafeContents.load(ci["content"].native)
            for bag in bags:
                if bag["bag_id"].native == "pkcs8_shrouded_key_bag":
                    bag["bag_value"]["encryption_algorithm"]["parameters"]["iterations"] = count
            ci = cms.ContentInfo({"content_type": "data", "content": bags.dump(force=True)})
        elif ci["content_type"].native == "encrypted_data" and where == "content":
            ci["content"]["encrypted_content_info"]["content_encryption_algorithm"]["parameters"]["iterations"] = count
        infos.append(ci)
    pfx["auth_safe"] = cms.ContentInfo(
        {"content_type": "data", "content": pkcs12.AuthenticatedSafe(infos).dump(force=True)}
    )
    return pfx.dump(force=True)


# --- systematic corruptions ------------------------------------------------------------------


def corruptions(valid: bytes, n: int, seed: int) -> Iterator[bytes]:
    """``n`` damaged copies of ``valid``: truncations, bit flips, length-octet bumps, splices."""
    rng = random.Random(seed)
    for i in range(n):
        buf = bytearray(valid)
        kind = i % 4
        if kind == 0:
            yield bytes(buf[: rng.randrange(len(buf))])
        elif kind == 1:
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            yield bytes(buf)
        elif kind == 2:
            # a length octet early in the structure made long-form and huge
            pos = rng.randrange(1, min(len(buf), 200))
            buf[pos : pos + 1] = rng.choice([b"\x84\xff\xff\xff\xff", b"\x88" + b"\xff" * 8, b"\x80", b"\x81\x00"])
            yield bytes(buf)
        else:
            a, b = sorted(rng.randrange(len(buf)) for _ in range(2))
            yield bytes(buf[:a] + buf[b:] + buf[a:b])


def address_cases() -> tuple[list[str], list[str]]:
    """(valid addresses, hostile ones)."""
    good = [
        "alice@example.com",
        "a.b-c+d@sub-1.example.co.uk",
        "jürgen@bücher.example",
        "x" * 64 + "@example.com",
        "o'brien@example.ie",
        "user=tag@example.com",
        "u@" + ".".join(["a" * 63] * 3) + ".com",
    ]
    bad = [
        "../../../../PWNED/evil@example.com",
        "../evil@example.com",
        "evil@../../etc",
        "a/b@example.com",
        "evil@example.com/..",
        "evil@exa/mple.com",
        "a\\b@example.com",
        "..@example.com",
        ".@example.com",
        ".alice@example.com",
        "alice.@example.com",
        "a..b@example.com",
        "alice@.example.com",
        "alice@example.com.",
        "alice@example..com",
        "alice@-example.com",
        "alice@example-.com",
        "alice@example",
        "alice",
        "@example.com",
        "alice@",
        "a@b@example.com",
        '"a b"@example.com',
        "alice@[127.0.0.1]",
        "x" * 65 + "@example.com",
        "a@" + "b" * 64 + ".com",
        "a@" + ".".join(["b" * 63] * 4) + ".com",
        "a" * 64 + "@" + ".".join(["b" * 60] * 4) + ".com",
        "alice bob@example.com",
        "alice@exa mple.com",
        "alice@example.com\x00.evil",
        "ali(c)e@example.com",
        "alice<x>@example.com",
        "ali,ce@example.com",
        "ali:ce@example.com",
        "ali;ce@example.com",
        "ali[ce@example.com",
        "",
        " ",
        "@",
        "..",
        "\u202ealice@example.com",
        "al\u200bice@example.com",
        "alice@exam\u200dple.com",
        "alice\ufeff@example.com",
        "alice\x85@example.com",
        "alice@example.com\u2028",
    ]
    bad += [f"al{chr(c)}ice@example.com" for c in [*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0)]]
    bad += [f"alice@exa{chr(c)}mple.com" for c in (0x00, 0x09, 0x0A, 0x1B, 0x7F, 0x2F, 0x5C, 0x5F, 0x21, 0x2B)]
    return good, bad


def name_cases() -> tuple[list[str], list[str]]:
    """(valid display names, hostile ones)."""
    good = ["Alice", "Alice Liddell", "Jürgen Müller", "李小龍", "n" * 64, "O'Brien, Pat (ops)"]
    bad = [
        "n" * 65,
        "n" * 1000,
        "Bob\x1b[31mRED",
        "\x1b]0;pwned\x07",
        "a\nb",
        "a\rb",
        "tab\there",
        "nul\x00",
        "bidi\u202eevil",
        "zero\u200bwidth",
        "c1\x9b31m",
        "del\x7f",
        "\u2028line",
        "bell\x07",
    ]
    return good, bad


# --- the bulk worker ---------------------------------------------------------------------------


def _bulk_inputs() -> Iterator[tuple[str, str, bytes, str]]:
    """(parser, label, input, expected outcome: ok, refused or any) for every generated input."""
    sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzzing"))
    import targets
    from hsmkm.cms import smime as smime_mod

    w = targets.world()
    good, bad = address_cases()
    for text in good:
        yield "address", "valid address", text.encode(), "ok"
    for text in bad:
        yield "address", f"hostile address {text!r}", text.encode("utf-8", "surrogatepass"), "refused"
    ngood, nbad = name_cases()
    for text in ngood:
        yield "name", "valid name", text.encode(), "ok"
    for text in nbad:
        yield "name", f"hostile name {text[:20]!r}", text.encode(), "refused"
    for name, (data, _code) in signed_attacks(w.signer).items():
        yield "signed", name, data, "refused"
        yield "ber", name, data, "any"
    for i, data in enumerate(corruptions(targets.seeds("signed")[0], 60, 1)):
        yield "signed", f"corrupt-{i}", data, "any"
    for i, data in enumerate(corruptions(smime_mod.parse(targets.seeds("signed")[1]).der, 40, 2)):
        yield "signed", f"corrupt-ber-{i}", data, "any"
    env = [s for s in targets.seeds("enveloped") if s[:1] == b"\x30"]
    gcm = next(s for s in env if _ctype(s) == OID_AUTH_ENVELOPED)
    cbc = next(s for s in env if _ctype(s) == "1.2.840.113549.1.7.3")
    for name, data in enveloped_attacks(gcm, cbc).items():
        yield "enveloped", name, data, "refused"
    for i, data in enumerate(corruptions(gcm, 40, 3)):
        yield "enveloped", f"corrupt-{i}", data, "any"
    seeds12 = targets.seeds("pkcs12")
    for where in ("mac", "key", "content"):
        for count in (0, -1, 2**31 - 1, 2**63, 2**70):
            yield "pkcs12", f"{where}-iterations-{count}", pkcs12_with_iterations(seeds12[2], where, count), "refused"
    for i, data in enumerate(corruptions(seeds12[0], 30, 4)):
        yield "pkcs12", f"corrupt-{i}", data, "any"
    for i, data in enumerate(corruptions(targets.seeds("crl")[0], 40, 5)):
        yield "crl", f"corrupt-{i}", data, "any"
    csr_seeds = targets.seeds("csr")
    for i, seed in enumerate((csr_seeds[0], csr_seeds[2])):
        for j, data in enumerate(corruptions(seed, 20, 6 + i)):
            yield "csr", f"corrupt-{i}-{j}", data, "any"
    for name, data in unknown_key_csrs().items():
        yield "csr", name, data, "refused"
    bad_uris, odd_uris = uri_cases()
    for text in bad_uris:
        yield "uri", f"uri {text[:30]!r}", text.encode(), "refused"
    for text in odd_uris:
        yield "uri", f"uri {text[:30]!r}", text.encode(), "any"
    for name, data in csv_cases().items():
        yield "csv", name, data, "any" if name == "only-commas" else "refused"


def _ctype(der: bytes) -> str | None:
    try:
        return str(cms.ContentInfo.load(der)["content_type"].dotted)
    except ValueError:
        return None


def _parser(name: str):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(Path(__file__).resolve().parent / "fuzzing"))
    import targets
    from hsmkm import addresses

    if name == "address":
        return lambda data: addresses.address_file(
            Path("/srv/km/pub/certs"), data.decode("utf-8", "surrogatepass"), ".enc.crt"
        )
    if name == "name":
        return lambda data: addresses.check_name(data.decode())
    return targets.TARGETS[name]


def unknown_key_csrs() -> dict[str, bytes]:
    """CSRs whose keys hsmkm does not issue for: each must be refused by name, exit 2."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
    from cryptography.x509.oid import NameOID

    keys: dict[str, object] = {
        "csr-ed25519": ed25519.Ed25519PrivateKey.generate(),
        "csr-ed448": ed448.Ed448PrivateKey.generate(),
        "csr-dsa": dsa.generate_private_key(2048),
        "csr-rsa1024": rsa.generate_private_key(65537, 1024),
        "csr-p521": ec.generate_private_key(ec.SECP521R1()),
        "csr-secp256k1": ec.generate_private_key(ec.SECP256K1()),
        "csr-brainpool": ec.generate_private_key(ec.BrainpoolP256R1()),
    }
    out = {}
    for name, key in keys.items():
        algorithm = None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "alice@example.com")]))
            .sign(key, algorithm)  # type: ignore[arg-type]
        )
        out[name] = csr.public_bytes(serialization.Encoding.DER)
    # an unknown algorithm OID in the SubjectPublicKeyInfo (cryptography cannot load the key)
    der = out["csr-p521"]
    out["csr-unknown-oid"] = der.replace(der_oid("1.2.840.10045.2.1")[2:], der_oid("1.2.840.10045.2.9")[2:], 1)
    return out


def uri_cases() -> tuple[list[str], list[str]]:
    """(malformed keystore names and URIs, odd ones RFC 7512 allows and a later step judges)."""
    base = "pkcs11:token=alice;object=alice-sign"
    bad = [
        "pkcs11:token",
        "pkcs11:token=%",
        "pkcs11:token=%zz",
        "pkcs11:token=%0",
        "pkcs11:token=a;token=b",
        "pkcs11:unknown=1",
        "pkcs11:token=a?pin-value=1234",
        "pkcs11:slot-id=x",
        "pkcs11:library-version=1.2.3",
        "pkcs11:type=bogus",
        "pkcs11:id=%ZZ",
        "pkcs11:token=a\x00b",
        "pkcs11:token=a b",
        "pkcs11:token=a/b",
        "pkcs11:token=%ff%fe",
        "pkcs11:?&&&",
        "pkcs11:;;;",
        "pkcs11:token=a?module-path=/x&module-path=/y",
        "pkcs11:token=\u202eevil",
        "pkcs11:token=a#frag",
        "",
        " ",
        "\x00",
        "a\x00b.epf",
    ] + [base + c for c in ("%", "\x1b")]
    odd = [
        "pkcs11:",
        "pkcs11:token=a?module-path=",
        "pkcs11:slot-id=" + "9" * 40,
        "pkcs11:token=" + "a" * 100_000,
        "pkcs11:token=a?pin-source=literal-pin",
    ] + [base + c for c in (";", "?", "&", "#", "=", "?pin-source=env:")]
    return bad, odd


def csv_cases() -> dict[str, bytes]:
    good_row = "alice@example.com,Alice\n"
    out = {
        "nul-byte": ("email,name\n" + "al\x00ice@example.com,A\n").encode(),
        "unterminated-quote": b'email,name\n"alice@example.com,Alice\n',
        "huge-field": ("email,name\n" + "a" * 200_000 + "@example.com,A\n").encode(),
        "bad-address": (b"email,name\n../../x@example.com,A\n"),
        "name-65": ("email,name\nalice@example.com," + "n" * 65 + "\n").encode(),
        "name-escape": b"email,name\nalice@example.com,\x1b[2J\n",
        "duplicate": ("email,name\n" + good_row * 2).encode(),
        "quote-in-field": b'email,name\nal"ice@example.com,A\n',
        "binary": bytes(range(256)),
        "newline-in-quoted-name": b'email,name\nalice@example.com,"A\nB"\n',
        "carriage-return": b"email,name\ralice@example.com,A\r",
        "only-commas": b",,,,\n,,,\n",
    }
    return out


def main() -> int:
    """The bulk worker: one JSON line per input (parser, label, outcome, error type, CPU s)."""
    import warnings

    warnings.simplefilter("ignore")
    from hsmkm import errors

    for parser, label, data, expect in _bulk_inputs():
        fn = _parser(parser)
        before = resource.getrusage(resource.RUSAGE_SELF)
        outcome, kind = "ok", ""
        try:
            fn(data)
        except errors.HsmkmError as exc:
            outcome, kind = "refused", type(exc).__name__
        except BaseException as exc:
            outcome, kind = "crash", f"{type(exc).__name__}: {exc}"[:300]
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        print(
            json.dumps(
                {
                    "parser": parser,
                    "label": label,
                    "outcome": outcome,
                    "expect": expect,
                    "error": kind,
                    "cpu_s": round(cpu, 3),
                    "size": len(data),
                }
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
