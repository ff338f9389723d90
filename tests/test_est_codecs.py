"""EST's small codecs: base64 bodies (RFC 7030, RFC 8951), certs-only PKCS#7 (RFC 7030 §4.1.3), CSR
attributes (RFC 7030 §4.5, as RFC 8951 corrects it) and Content-Type; each round-trips, openssl reads what
we write (and we read what openssl writes), and garbage is MalformedInput, nothing else."""

from __future__ import annotations

import base64
import contextlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from est_helpers import ec_key, make_ca, openssl, pem, rsa_key
from hsmkm import errors
from hsmkm.der import der_oid, seq, tlv
from hsmkm.est import certsonly, csrattrs, media, transfer
from hsmkm.keys.algorithms import KeyAlgorithm

CAS = [make_ca(ec_key(), f"CN=CA {i}").certificate for i in range(3)] + [make_ca(rsa_key(), "CN=RSA CA").certificate]


# --- base64 bodies ---------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.data())
def test_base64_round_trips_with_any_line_breaks_and_whitespace(data: bytes, draw: st.DataObject) -> None:
    assert transfer.decode(transfer.encode(data), 4096, "t") == data
    text = base64.b64encode(data)
    if draw.draw(st.booleans()):
        text = text.rstrip(b"=")  # some clients leave the padding out
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(text)), max_size=20)))
    pieces, last = [], 0
    for cut in cuts:
        pieces.append(text[last:cut])
        last = cut
    pieces.append(text[last:])
    spaced = draw.draw(st.sampled_from([b"\r\n", b"\n", b" ", b"\t", b" \r\n "])).join(pieces)
    assert transfer.decode(spaced, 4096, "t") == data


def test_base64_encoder_writes_what_openssl_decodes() -> None:
    data = bytes(range(256)) * 9
    out = openssl("base64", "-d", input=transfer.encode(data))
    assert out.returncode == 0 and out.stdout == data
    assert all(len(line) <= transfer.LINE for line in transfer.encode(data).split(b"\r\n"))


@pytest.mark.parametrize(
    "body", [b"", b"  \r\n", b"AAA*", b"-----", b"A", b"AAAAA", b"QQ==QQ==", "ÄÖ".encode(), b"\x00AAAA"]
)
def test_base64_malformed(body: bytes) -> None:
    with pytest.raises(errors.MalformedInput):
        transfer.decode(body, 4096, "t")


def test_base64_limits_decoded_and_wire_size() -> None:
    assert transfer.decode(transfer.encode(b"x" * 100), 100, "t") == b"x" * 100
    with pytest.raises(errors.MalformedInput, match="larger than 99"):
        transfer.decode(transfer.encode(b"x" * 100), 99, "t")
    with pytest.raises(errors.MalformedInput, match="larger"):
        transfer.decode(b" " * (transfer.encoded_limit(100) + 1) + b"AAAA", 100, "t")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_base64_garbage_is_malformed_or_bytes(body: bytes) -> None:
    with contextlib.suppress(errors.MalformedInput):
        assert isinstance(transfer.decode(body, 200, "t"), bytes)


# --- certs-only ------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.lists(st.sampled_from(CAS), min_size=1, max_size=5))
def test_certs_only_round_trips(certs: list[x509.Certificate]) -> None:
    assert certsonly.decode(certsonly.encode(certs)) == certs


def test_openssl_reads_our_certs_only_through_base64(tmp_path: Path) -> None:
    body = transfer.encode(certsonly.encode(CAS[:2]))
    der = openssl("base64", "-d", input=body)
    assert der.returncode == 0
    out = openssl("pkcs7", "-inform", "DER", "-print_certs", input=der.stdout)
    assert out.returncode == 0, out.stderr
    printed = [
        x509.load_pem_x509_certificate(b"-----BEGIN CERTIFICATE-----" + block)
        for block in out.stdout.split(b"-----BEGIN CERTIFICATE-----")[1:]
    ]
    assert printed == CAS[:2]


def test_we_read_openssls_certs_only(tmp_path: Path) -> None:
    bundle = tmp_path / "certs.pem"
    bundle.write_bytes(b"".join(pem(c) for c in CAS))
    out = openssl("crl2pkcs7", "-nocrl", "-certfile", str(bundle), "-outform", "DER")
    assert out.returncode == 0, out.stderr
    assert certsonly.decode(out.stdout) == CAS


def test_certs_only_refuses_signed_data_with_signers_or_content(tmp_path: Path) -> None:
    ca = make_ca(ec_key())
    (tmp_path / "c.pem").write_bytes(pem(ca.certificate))
    (tmp_path / "k.pem").write_bytes(
        ca.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    signed = openssl(
        "cms",
        "-sign",
        "-nodetach",
        "-signer",
        str(tmp_path / "c.pem"),
        "-inkey",
        str(tmp_path / "k.pem"),
        "-outform",
        "DER",
        input=b"hello",
    )
    assert signed.returncode == 0, signed.stderr
    with pytest.raises(errors.MalformedInput, match="signers"):
        certsonly.decode(signed.stdout)
    with pytest.raises(errors.BadInput):
        certsonly.encode([])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_certs_only_garbage_is_malformed(der: bytes) -> None:
    with pytest.raises(errors.MalformedInput):
        certsonly.decode(der)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_certs_only_mutations_are_malformed_or_certificates(data: st.DataObject) -> None:
    der = bytearray(certsonly.encode(CAS[:2]))
    for _ in range(data.draw(st.integers(1, 4))):
        der[data.draw(st.integers(0, len(der) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(errors.MalformedInput):
        assert all(isinstance(c, x509.Certificate) for c in certsonly.decode(bytes(der)))


# --- CSR attributes --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(list(KeyAlgorithm)), min_size=1, max_size=4, unique=True), st.booleans())
def test_csrattrs_name_what_the_km_accepts(algs: list[KeyAlgorithm], keygen: bool) -> None:
    decoded = csrattrs.decode(csrattrs.encode(algs, server_keygen=keygen))
    assert sorted(decoded.key_algorithms()) == sorted(algs)
    assert csrattrs.OID_EMAIL_ADDRESS in decoded.oids
    assert decoded.values_of(csrattrs.OID_EXTENSION_REQUEST) == [b"\x06\x03\x55\x1d\x11"]  # subjectAltName
    assert (csrattrs.OID_DECRYPT_KEY_ID in decoded.oids) is keygen
    if KeyAlgorithm.P256 in algs:
        assert csrattrs.OID_ECDSA_SHA256 in decoded.oids
    if any(a.is_rsa for a in algs):
        assert csrattrs.OID_SHA256_RSA in decoded.oids
    assert "1.2.840.113549.1.9.7" not in decoded.oids  # no challengePassword: the code is HTTP Basic


def test_openssl_parses_our_csrattrs() -> None:
    out = openssl("asn1parse", "-inform", "DER", input=csrattrs.encode([KeyAlgorithm.P256, KeyAlgorithm.RSA3072]))
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    for name in (
        "ecdsa-with-SHA256",
        "id-ecPublicKey",
        "prime256v1",
        "rsaEncryption",
        "emailAddress",
        "Extension Request",
        "X509v3 Subject Alternative Name",
        "sha256WithRSAEncryption",
    ):
        assert name in text, name
    assert ":0C00" in text.replace(" ", "")  # INTEGER 3072


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_csrattrs_garbage_is_malformed(der: bytes) -> None:
    with contextlib.suppress(errors.MalformedInput):
        csrattrs.decode(der)


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"\x30\x03\x06\x01",
        b"\x30\x04\x30\x02\x06\x00",
        b"\x30\x05\x30\x03\x06\x01\x01",
        b"\x30\x07\x30\x05\x06\x01\x01\x31\x00",
        b"\x31\x00",
        b"\x30\x02\x02\x01",
    ],
)
def test_csrattrs_malformed(der: bytes) -> None:
    with pytest.raises(errors.MalformedInput):
        csrattrs.decode(der)


# --- Content-Type ------------------------------------------------------------------------------


def test_content_type_parses_parameters() -> None:
    ct = media.parse_content_type('Application/PKCS7-MIME ; smime-type="certs-only"; x=1')
    assert ct.is_(media.MediaType.PKCS7_MIME) and ct.params == {"smime-type": "certs-only", "x": "1"}
    assert media.parse_content_type(ct.format()) == ct
    assert (
        media.parse_content_type(media.pkcs7(media.SmimeType.SERVER_GENERATED_KEY)).params["smime-type"]
        == "server-generated-key"
    )


@pytest.mark.parametrize(
    "header",
    [
        "",
        "pkcs10",
        "application/",
        "application/pkcs10;",
        "a/b; x",
        "a/b; x=1; x=2",
        'a/b; x="open',
        "a/b; x=1 y=2",
        "a/b\r\nX: y",
        "a/b; " + "x" * 600 + "=1",
        "ä/b",
    ],
)
def test_content_type_malformed(header: str) -> None:
    with pytest.raises(errors.MalformedInput):
        media.parse_content_type(header)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_content_type_garbage_is_malformed_or_parsed(header: str) -> None:
    try:
        ct = media.parse_content_type(header)
    except errors.MalformedInput:
        return
    assert "/" in ct.media and media.parse_content_type(ct.format()) == ct


def _signed_data(*fields: bytes) -> bytes:
    return seq(der_oid("1.2.840.113549.1.7.2"), tlv(0xA0, seq(*fields)))


_V1, _NO_DIGESTS, _NO_SIGNERS = b"\x02\x01\x01", tlv(0x31, b""), tlv(0x31, b"")
_DATA = seq(der_oid("1.2.840.113549.1.7.1"))


@pytest.mark.parametrize(
    "der",
    [
        _signed_data(_V1, _NO_DIGESTS, _DATA, _NO_SIGNERS),  # no certificates
        _signed_data(
            _V1,
            _NO_DIGESTS,
            seq(der_oid("1.2.840.113549.1.7.1"), tlv(0xA0, tlv(0x04, b"x"))),
            tlv(0xA0, CAS[0].public_bytes(serialization.Encoding.DER)),
            _NO_SIGNERS,
        ),  # with content
        _signed_data(
            _V1, _NO_DIGESTS, _DATA, tlv(0xA0, tlv(0xA1, b"\x30\x00")), _NO_SIGNERS
        ),  # an attribute certificate
        _signed_data(_V1, _NO_DIGESTS, _DATA, tlv(0xA0, b"\x30\x03\x02\x01\x00"), _NO_SIGNERS),  # not a certificate
        seq(der_oid("1.2.840.113549.1.7.3"), tlv(0xA0, seq())),  # an EnvelopedData
        certsonly.encode(CAS[:1]) + b"\x00",  # trailing octets
    ],
)
def test_certs_only_malformed(der: bytes) -> None:
    with pytest.raises(errors.MalformedInput):
        certsonly.decode(der)
