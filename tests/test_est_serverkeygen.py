"""The serverkeygen response (RFC 7030 §4.4.2): the key as an AsymmetricKeyPackage in a
SignedData by the KM, enveloped for a KEKRecipientInfo named by the CSR's DecryptKeyIdentifier
under the KEK derived from the code; openssl opens it with the KEK and reads the key; the
hsmkm client's parser opens the multipart; a wrong code, request or signer is refused; garbage
is MalformedInput."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from est_helpers import ec_key, make_ca, openssl, pem, rsa_key
from hsmkm import errors
from hsmkm.der import der_oid, seq, tlv
from hsmkm.est import certsonly, keypart, multipart, transfer
from hsmkm.keys.base import KeyEntry, KeyRole, PrivateKey
from hsmkm.protocol import code_key

CODE = "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567"  # 160 bits as users.new_code() writes them
KEY_ID = bytes.fromhex("00112233445566778899aabbccddeeff")
EC_CA = make_ca(ec_key())
RSA_CA = make_ca(rsa_key(3072), "CN=RSA EST CA")
USER_KEYS: dict[str, PrivateKey] = {"p256": ec_key(), "p384": ec_key(ec.SECP384R1()), "rsa2048": rsa_key()}
KEK = keypart.kek(CODE, KEY_ID)
SEALED = keypart.seal(USER_KEYS["p256"], EC_CA, KEK, KEY_ID)  # once: ECDSA signatures vary in length


def _same(a: PrivateKey, b: PrivateKey) -> bool:
    return a.private_numbers() == b.private_numbers()


def test_kek_is_todays_code_key_salted_with_the_key_id() -> None:
    assert code_key(CODE, KEY_ID) == KEK and len(KEK) == 32
    assert keypart.kek(CODE.lower().replace("-", ""), KEY_ID) == KEK  # the code as people type it
    assert keypart.kek(CODE, KEY_ID[::-1]) != KEK


@pytest.mark.parametrize("ca", [EC_CA, RSA_CA], ids=["ec-ca", "rsa-ca"])
@pytest.mark.parametrize("user", sorted(USER_KEYS))
def test_openssl_opens_the_key_part_with_the_kek(ca: KeyEntry, user: str, tmp_path: Path) -> None:
    key = USER_KEYS[user]
    (tmp_path / "env.der").write_bytes(keypart.seal(key, ca, KEK, KEY_ID))
    (tmp_path / "ca.pem").write_bytes(pem(ca.certificate))
    dec = openssl(
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-in",
        str(tmp_path / "env.der"),
        "-secretkey",
        KEK.hex(),
        "-secretkeyid",
        KEY_ID.hex(),
    )
    assert dec.returncode == 0, dec.stderr
    # the decrypted content is a SignedData (its type named by encryptedContentInfo); openssl's
    # verifier reads a ContentInfo, so it is given one around it
    (tmp_path / "signed.der").write_bytes(seq(der_oid(keypart.OID_SIGNED_DATA), tlv(0xA0, dec.stdout)))
    ver = openssl(
        "cms",
        "-verify",
        "-inform",
        "DER",
        "-in",
        str(tmp_path / "signed.der"),
        "-CAfile",
        str(tmp_path / "ca.pem"),
        "-purpose",
        "any",
        "-out",
        str(tmp_path / "package.der"),
    )
    assert ver.returncode == 0 and b"Verification successful" in ver.stderr, ver.stderr
    printed = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", str(tmp_path / "signed.der")).stdout
    assert re.search(
        rb"eContentType: .*\(?" + keypart.OID_KEY_PACKAGE.encode().replace(b".", rb"\.") + rb"\)?", printed
    )
    # the AsymmetricKeyPackage holds one OneAsymmetricKey: cut its SEQUENCE header with asn1parse
    top = openssl("asn1parse", "-inform", "DER", "-in", str(tmp_path / "package.der"))
    m = re.match(rb"\s*0:d=0\s+hl=(\d+)", top.stdout)
    assert m is not None and top.stdout.count(b"d=1 ") == 1, top.stdout
    cut = openssl(
        "asn1parse",
        "-inform",
        "DER",
        "-in",
        str(tmp_path / "package.der"),
        "-offset",
        m.group(1).decode(),
        "-noout",
        "-out",
        str(tmp_path / "key.der"),
    )
    assert cut.returncode == 0, cut.stderr
    out = openssl("pkey", "-inform", "DER", "-in", str(tmp_path / "key.der"), "-outform", "DER")
    assert out.returncode == 0, out.stderr
    assert _same(serialization.load_der_private_key(out.stdout, None), key)  # type: ignore[arg-type]


def test_openssl_refuses_a_wrong_kek(tmp_path: Path) -> None:
    (tmp_path / "env.der").write_bytes(SEALED)
    wrong = keypart.kek("ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4568", KEY_ID)
    dec = openssl(
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-in",
        str(tmp_path / "env.der"),
        "-secretkey",
        wrong.hex(),
        "-secretkeyid",
        KEY_ID.hex(),
    )
    assert dec.returncode != 0 and dec.stdout == b""


@pytest.mark.parametrize("user", sorted(USER_KEYS))
def test_client_opens_what_the_km_sealed(user: str) -> None:
    key = USER_KEYS[user]
    opened = keypart.open_key(keypart.seal(key, RSA_CA, KEK, KEY_ID), KEK, KEY_ID, RSA_CA.certificate)
    assert _same(opened.private_key, key)
    assert opened.pkcs8 == key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_wrong_code_request_or_signer_is_refused() -> None:
    with pytest.raises(errors.SignatureInvalid, match="does not open with this code"):
        keypart.open_key(
            SEALED, keypart.kek("ZZZZ-EFGH-IJKL-MNOP-QRST-UVWX-YZ23-4567", KEY_ID), KEY_ID, EC_CA.certificate
        )
    with pytest.raises(errors.MalformedInput, match="DecryptKeyIdentifier"):
        keypart.open_key(SEALED, KEK, KEY_ID[:-1], EC_CA.certificate)
    # another CA with the same name and serial cannot pass for the KM
    impostor = make_ca(ec_key())
    forged = keypart.seal(USER_KEYS["p256"], impostor, KEK, KEY_ID)
    with pytest.raises(errors.SignatureInvalid):
        keypart.open_key(forged, KEK, KEY_ID, EC_CA.certificate)


def test_a_key_part_signed_with_another_key_under_the_kms_name_is_refused() -> None:
    twin = make_ca(ec_key())

    forged = keypart.seal(USER_KEYS["p256"], KeyEntry(twin.key, EC_CA.certificate, KeyRole.CA), KEK, KEY_ID)
    with pytest.raises(errors.SignatureInvalid, match="signature does not verify"):
        keypart.open_key(forged, KEK, KEY_ID, EC_CA.certificate)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_key_part_garbage_is_malformed(der: bytes) -> None:
    with pytest.raises(errors.MalformedInput):
        keypart.open_key(der, KEK, KEY_ID, EC_CA.certificate)


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_key_part_mutations_are_refused_by_type(data: st.DataObject) -> None:
    der = bytearray(SEALED)
    for _ in range(data.draw(st.integers(1, 3))):
        der[data.draw(st.integers(0, len(der) - 1))] ^= data.draw(st.integers(1, 255))
    try:
        opened = keypart.open_key(bytes(der), KEK, KEY_ID, EC_CA.certificate)
    except (errors.MalformedInput, errors.SignatureInvalid, errors.UnsupportedAlgorithm):
        return
    assert _same(opened.private_key, USER_KEYS["p256"])  # a change where nothing is trusted (the embedded certificate)


# --- the multipart ---------------------------------------------------------------------------

CERTS = certsonly.encode([EC_CA.certificate])
PARTS = multipart.ServerKeygenParts(SEALED, CERTS)
ENCODED = multipart.encode(PARTS)


def test_multipart_round_trip_and_shape() -> None:
    assert multipart.parse(ENCODED.content_type, ENCODED.body) == PARTS
    boundary = ENCODED.content_type.split("boundary=")[1]
    assert ENCODED.content_type.startswith("multipart/mixed; boundary=est-")
    text = ENCODED.body.decode()
    assert text.count(f"--{boundary}\r\n") == 2 and text.endswith(f"--{boundary}--\r\n")
    assert "Content-Type: application/pkcs7-mime; smime-type=server-generated-key\r\n\r\n" in text
    assert "Content-Type: application/pkcs7-mime; smime-type=certs-only\r\n\r\n" in text
    assert "application/pkcs8" not in text and "Content-Transfer-Encoding" not in text


def test_openssl_reads_the_parts_as_mime(tmp_path: Path) -> None:
    """The body with its Content-Type is a MIME entity; each part's base64 decodes with openssl."""
    boundary = ENCODED.content_type.split("boundary=")[1].encode()
    chunks = ENCODED.body.split(b"--" + boundary)
    key_b64 = chunks[1].split(b"\r\n\r\n", 1)[1]
    certs_b64 = chunks[2].split(b"\r\n\r\n", 1)[1]
    assert openssl("base64", "-d", input=key_b64).stdout == SEALED
    out = openssl(
        "pkcs7", "-inform", "DER", "-print_certs", "-noout", input=openssl("base64", "-d", input=certs_b64).stdout
    )
    assert out.returncode == 0 and b"EST test CA" in out.stdout


def _body(
    *parts: tuple[str, bytes],
    boundary: str = "b1",
    eol: bytes = b"\r\n",
    close: bool = True,
    preamble: bytes = b"",
    epilogue: bytes = b"",
) -> bytes:
    out = preamble
    for headers, content in parts:
        out += b"--" + boundary.encode() + eol + headers.encode().replace(b"\n", eol) + eol + eol + content
    if close:
        out += b"--" + boundary.encode() + b"--" + eol
    return out + epilogue


KEY_HDR = "Content-Type: application/pkcs7-mime; smime-type=server-generated-key"
CERT_HDR = "Content-Type: application/pkcs7-mime; smime-type=certs-only"


@pytest.mark.parametrize(
    "variant", ["lf", "cte-base64", "preamble-epilogue", "certs-first", "quoted-boundary", "one-line-base64"]
)
def test_multipart_tolerates_what_rfc_2046_allows(variant: str) -> None:
    key_b64, cert_b64 = transfer.encode(SEALED), transfer.encode(CERTS)
    parts = [(KEY_HDR, key_b64), (CERT_HDR, cert_b64)]
    kwargs: dict[str, object] = {}
    ctype = "multipart/mixed; boundary=b1"
    if variant == "lf":
        kwargs["eol"] = b"\n"
        parts = [(h, c.replace(b"\r\n", b"\n")) for h, c in parts]
    elif variant == "cte-base64":
        parts = [(h + "\nContent-Transfer-Encoding: BASE64", c) for h, c in parts]
    elif variant == "preamble-epilogue":
        kwargs.update(preamble=b"This is a multipart message.\r\n", epilogue=b"trailing words\r\n")
    elif variant == "certs-first":
        parts.reverse()
    elif variant == "quoted-boundary":
        ctype = 'Multipart/Mixed; boundary="b1:x"'
        kwargs["boundary"] = "b1:x"
    elif variant == "one-line-base64":
        parts = [(h, c.replace(b"\r\n", b"") + b"\r\n") for h, c in parts]
    assert multipart.parse(ctype, _body(*parts, **kwargs)) == PARTS  # type: ignore[arg-type]


BAD_MULTIPART: dict[str, tuple[str, bytes]] = {
    "plain-pkcs8": (
        "multipart/mixed; boundary=b1",
        _body(("Content-Type: application/pkcs8", transfer.encode(b"\x30\x00")), (CERT_HDR, transfer.encode(CERTS))),
    ),
    "three-parts": (
        "multipart/mixed; boundary=b1",
        _body((KEY_HDR, b"AA=="), (CERT_HDR, b"AA=="), (CERT_HDR, b"AA==")),
    ),
    "one-part": ("multipart/mixed; boundary=b1", _body((KEY_HDR, transfer.encode(SEALED)))),
    "two-key-parts": ("multipart/mixed; boundary=b1", _body((KEY_HDR, b"AA=="), (KEY_HDR, b"AA=="))),
    "no-close": ("multipart/mixed; boundary=b1", _body((KEY_HDR, b"AA=="), (CERT_HDR, b"AA=="), close=False)),
    "no-boundary": ("multipart/mixed", ENCODED.body),
    "wrong-boundary": ("multipart/mixed; boundary=b2", _body((KEY_HDR, b"AA=="), (CERT_HDR, b"AA=="))),
    "bad-boundary-chars": ('multipart/mixed; boundary="a b\u00e9"', b""),
    "not-multipart": ("application/pkcs7-mime", ENCODED.body),
    "cte-binary": (
        "multipart/mixed; boundary=b1",
        _body((KEY_HDR + "\nContent-Transfer-Encoding: binary", b"AA=="), (CERT_HDR, b"AA==")),
    ),
    "no-part-type": ("multipart/mixed; boundary=b1", _body(("X-Other: 1", b"AA=="), (CERT_HDR, b"AA=="))),
    "smime-type-other": (
        "multipart/mixed; boundary=b1",
        _body(("Content-Type: application/pkcs7-mime; smime-type=enveloped-data", b"AA=="), (CERT_HDR, b"AA==")),
    ),
    "bad-header": ("multipart/mixed; boundary=b1", _body(("no colon here", b"AA=="), (CERT_HDR, b"AA=="))),
    "repeated-header": (
        "multipart/mixed; boundary=b1",
        _body((KEY_HDR + "\n" + KEY_HDR, b"AA=="), (CERT_HDR, b"AA==")),
    ),
    "bad-base64": ("multipart/mixed; boundary=b1", _body((KEY_HDR, b"!!!!"), (CERT_HDR, b"AA=="))),
    "headers-only": ("multipart/mixed; boundary=b1", b"--b1\r\n" + KEY_HDR.encode() + b"\r\n--b1--\r\n"),
    "too-large": ("multipart/mixed; boundary=b1", b"A" * (multipart.MAX_RESPONSE + 1)),
}


@pytest.mark.parametrize("name", sorted(BAD_MULTIPART))
def test_multipart_malformed(name: str) -> None:
    ctype, body = BAD_MULTIPART[name]
    with pytest.raises(errors.MalformedInput):
        multipart.parse(ctype, body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_multipart_garbage_is_malformed(body: bytes) -> None:
    with pytest.raises(errors.MalformedInput):
        multipart.parse("multipart/mixed; boundary=est", body)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_multipart_mutations_are_malformed_or_parts(data: st.DataObject) -> None:
    body = bytearray(ENCODED.body)
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    try:
        parts = multipart.parse(ENCODED.content_type, bytes(body))
    except errors.MalformedInput:
        return
    assert isinstance(parts.key_part, bytes) and isinstance(parts.certs_part, bytes)
