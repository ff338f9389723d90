"""EST CSR intake (RFC 7030 §4.2.1, §4.4.1): base64 PKCS#10 up to 64 KiB, proof of possession,
and the serverkeygen attributes (DecryptKeyIdentifier, SMIMECapabilities); openssl's CSRs are
read; whatever is malformed is MalformedInput."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from est_helpers import csr_with_attributes, ec_key, openssl, rsa_key
from hsmkm import errors
from hsmkm.der import der_oid, seq, tlv
from hsmkm.est import csr as estcsr
from hsmkm.est import transfer
from hsmkm.est.csrattrs import OID_DECRYPT_KEY_ID

KEY = ec_key()
KEY_ID = bytes(range(16))
OCTETS = tlv(0x04, KEY_ID)
KEYGEN_CSR = estcsr.build(KEY, "alice@example.com", KEY_ID)  # once: an ECDSA signature's length varies


def test_hsmkm_client_csr_carries_the_decrypt_key_identifier() -> None:
    der = estcsr.build(KEY, "alice@example.com", KEY_ID)
    req = estcsr.read(transfer.encode(der))
    assert req.der == der and req.decrypt_key_id == KEY_ID and req.key_wraps is None
    assert estcsr.for_server_keygen(req) == KEY_ID
    san = req.csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.com"]
    assert estcsr.read(transfer.encode(estcsr.build(rsa_key(), "bob@example.com"))).decrypt_key_id is None


@pytest.mark.parametrize("form", ["base64-lines", "base64-one-line", "pem"])
def test_openssl_made_csr_is_read(form: str, tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes(
        KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    out = openssl(
        "req",
        "-new",
        "-key",
        str(key),
        "-subj",
        "/emailAddress=alice@example.com",
        "-addext",
        "subjectAltName=email:alice@example.com",
        "-outform",
        "PEM" if form == "pem" else "DER",
    )
    assert out.returncode == 0, out.stderr
    body = out.stdout
    if form != "pem":
        encoded = openssl("base64", *(["-A"] if form == "base64-one-line" else []), input=body)
        body = encoded.stdout
    req = estcsr.read(body)
    assert req.csr.public_key() == KEY.public_key() and req.decrypt_key_id is None
    with pytest.raises(errors.PolicyViolation, match="DecryptKeyIdentifier"):
        estcsr.for_server_keygen(req)


def test_smime_capabilities_must_allow_aes256_wrap() -> None:
    def caps(*oids: str) -> bytes:
        return seq(*(seq(der_oid(o)) for o in oids))

    ok = estcsr.parse(
        csr_with_attributes(
            KEY,
            [
                (OID_DECRYPT_KEY_ID, [OCTETS]),
                (estcsr.OID_SMIME_CAPABILITIES, [caps("2.16.840.1.101.3.4.1.5", estcsr.OID_AES256_WRAP)]),
            ],
        )
    )
    assert ok.key_wraps == ["2.16.840.1.101.3.4.1.5", estcsr.OID_AES256_WRAP] and estcsr.for_server_keygen(ok) == KEY_ID
    aes128_only = estcsr.parse(
        csr_with_attributes(
            KEY, [(OID_DECRYPT_KEY_ID, [OCTETS]), (estcsr.OID_SMIME_CAPABILITIES, [caps("2.16.840.1.101.3.4.1.5")])]
        )
    )
    with pytest.raises(errors.UnsupportedAlgorithm, match="AES-256 key wrap"):
        estcsr.for_server_keygen(aes128_only)


def test_asymmetric_decrypt_key_is_refused_by_name() -> None:
    with pytest.raises(errors.UnsupportedAlgorithm, match="asymmetric"):
        estcsr.parse(csr_with_attributes(KEY, [(estcsr.OID_ASYMM_DECRYPT_KEY_ID, [seq(tlv(0x80, b"x"))])]))


def _tampered_signature() -> bytes:
    der = bytearray(estcsr.build(KEY, "alice@example.com"))
    der[-3] ^= 0x01
    return bytes(der)


MALFORMED = {
    "utf8-key-id": csr_with_attributes(KEY, [(OID_DECRYPT_KEY_ID, [tlv(0x0C, b"abc")])]),
    "empty-key-id": csr_with_attributes(KEY, [(OID_DECRYPT_KEY_ID, [tlv(0x04, b"")])]),
    "long-key-id": csr_with_attributes(KEY, [(OID_DECRYPT_KEY_ID, [tlv(0x04, b"k" * 65)])]),
    "two-values": csr_with_attributes(KEY, [(OID_DECRYPT_KEY_ID, [OCTETS, tlv(0x04, b"x")])]),
    "no-values": csr_with_attributes(KEY, [(OID_DECRYPT_KEY_ID, [])]),
    "twice": csr_with_attributes(KEY, [(OID_DECRYPT_KEY_ID, [OCTETS]), (OID_DECRYPT_KEY_ID, [OCTETS])]),
    "caps-not-a-sequence": csr_with_attributes(KEY, [(estcsr.OID_SMIME_CAPABILITIES, [tlv(0x04, b"x")])]),
    "trailing-octets": estcsr.build(KEY, "alice@example.com") + b"\x00",
    "a-certificate": b"\x30\x03\x02\x01\x00",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_csrs(name: str) -> None:
    with pytest.raises(errors.MalformedInput):
        estcsr.read(transfer.encode(MALFORMED[name]))


def test_proof_of_possession_checked() -> None:
    with pytest.raises(errors.SignatureInvalid, match="proof of possession"):
        estcsr.read(transfer.encode(_tampered_signature()))


def test_size_cap_is_64_kib() -> None:
    big = csr_with_attributes(KEY, [("1.2.3.4", [tlv(0x04, b"p" * (64 << 10))])])
    assert len(big) > estcsr.MAX_CSR
    with pytest.raises(errors.MalformedInput, match="larger than 65536"):
        estcsr.read(transfer.encode(big))
    with pytest.raises(errors.MalformedInput, match="larger than 65536"):
        estcsr.read(b"A" * (transfer.encoded_limit(estcsr.MAX_CSR) + 1))
    near = csr_with_attributes(KEY, [("1.2.3.4", [tlv(0x04, b"p" * (60 << 10))])])
    assert estcsr.read(transfer.encode(near)).der == near  # an unknown attribute is carried, not refused


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=500))
def test_garbage_is_malformed(body: bytes) -> None:
    with pytest.raises(errors.MalformedInput):
        estcsr.read(body)
    with pytest.raises(errors.MalformedInput):
        estcsr.read(transfer.encode(body) if body else b"")


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_csr_is_refused_by_type(data: st.DataObject) -> None:
    der = bytearray(KEYGEN_CSR)
    for _ in range(data.draw(st.integers(1, 3))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    try:
        req = estcsr.read(transfer.encode(bytes(der)))
    except (errors.MalformedInput, errors.SignatureInvalid, errors.UnsupportedAlgorithm):
        return
    assert req.der == bytes(der)


_GENCONF = """\
asn1 = SEQUENCE:{top}
[csr]
cri = SEQUENCE:cri
algorithm = SEQUENCE:sigalg
signature = FORMAT:HEX,BITSTRING:{signature}
[sigalg]
oid = OID:ecdsa-with-SHA256
[cri]
version = INTEGER:0
subject = SEQUENCE:subject
spki = SEQUENCE:spki
attributes = IMPLICIT:0,SET:attributes
[subject]
rdn = SET:rdn
[rdn]
attr = SEQUENCE:email
[email]
type = OID:emailAddress
value = IA5STRING:{email}
[spki]
algorithm = SEQUENCE:ecalg
key = FORMAT:HEX,BITSTRING:{point}
[ecalg]
oid = OID:id-ecPublicKey
curve = OID:prime256v1
[attributes]
decrypt_key_id = SEQUENCE:dkid
[dkid]
type = OID:1.2.840.113549.1.9.16.2.37
values = SET:dkid_values
[dkid_values]
value = FORMAT:HEX,OCTETSTRING:{key_id}
"""


def test_an_openssl_only_client_can_build_a_serverkeygen_csr(tmp_path: Path) -> None:
    """``openssl req`` writes attributes only as strings, so an EST client made of openssl alone
    builds the DecryptKeyIdentifier CSR with ``asn1parse -genconf``: the request info, its
    signature by ``openssl dgst -sign``, then the whole request around the same info."""
    key = tmp_path / "k.pem"
    assert openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key)).returncode == 0
    spki = openssl("pkey", "-in", str(key), "-pubout", "-outform", "DER").stdout
    fields = {"email": "alice@example.com", "point": spki[-65:].hex(), "key_id": KEY_ID.hex(), "signature": ""}
    (tmp_path / "cri.cnf").write_text(_GENCONF.format(top="cri", **fields))
    cri = openssl("asn1parse", "-genconf", str(tmp_path / "cri.cnf"), "-noout", "-out", str(tmp_path / "cri.der"))
    assert cri.returncode == 0, cri.stderr
    sig = openssl("dgst", "-sha256", "-sign", str(key), "-out", str(tmp_path / "sig.der"), str(tmp_path / "cri.der"))
    assert sig.returncode == 0, sig.stderr
    fields["signature"] = (tmp_path / "sig.der").read_bytes().hex()
    (tmp_path / "csr.cnf").write_text(_GENCONF.format(top="csr", **fields))
    out = openssl("asn1parse", "-genconf", str(tmp_path / "csr.cnf"), "-noout", "-out", str(tmp_path / "csr.der"))
    assert out.returncode == 0, out.stderr
    assert openssl("req", "-inform", "DER", "-in", str(tmp_path / "csr.der"), "-verify", "-noout").returncode == 0
    body = openssl("base64", "-in", str(tmp_path / "csr.der")).stdout
    req = estcsr.read(body)
    assert estcsr.for_server_keygen(req) == KEY_ID
    assert req.csr.subject.rfc4514_string() == "1.2.840.113549.1.9.1=alice@example.com"
