"""Streaming S/MIME: bounded memory for large messages, and the BER reader/writer."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hsmkm.cms import ber
from hsmkm.cms.stream import Base64Reader, Base64Writer, Canonicalizer

VEC = Path(__file__).parent / "vectors" / "smime"

CHILD = r"""
import resource, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from hsmkm.cms import stream, enveloped as E
from hsmkm.keys.base import KeyEntry, KeyRole
vec, work, which = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
cert = x509.load_pem_x509_certificate((vec / "bob.encrypt.crt").read_bytes())
key = serialization.load_pem_private_key((vec / "bob.encrypt.key").read_bytes(), None)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if which == "encrypt":
    with open(work / "in.eml", "rb") as src, open(work / "enc.eml", "wb") as out:
        stream.encrypt_stream(src, out, [cert], E.ContentCipher.AES256_GCM, E.KeyTransport.RSA_OAEP)
else:
    with open(work / "enc.eml", "rb") as src:
        stream.decrypt_stream(src, work / "out.eml", [KeyEntry(key, cert, KeyRole.ENCRYPT)])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"""


@pytest.mark.interop
def test_64_mib_message_streams_in_bounded_memory(tmp_path: Path) -> None:
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!?\n"
    with open(tmp_path / "in.eml", "wb") as fh:
        fh.write(b"Subject: big\n\n")
        block = line * 16384  # 1 MiB
        for _ in range(64):
            fh.write(block)
    growth = {}
    for which in ("encrypt", "decrypt"):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(VEC), str(tmp_path), which], capture_output=True, text=True, check=True
        )
        growth[which] = int(out.stdout.strip())  # KiB above the interpreter's baseline
    assert growth["encrypt"] < 32 * 1024 and growth["decrypt"] < 32 * 1024, growth
    body = (tmp_path / "out.eml").read_bytes()
    # the Cryptographic Payload (RFC 9788): the protected header fields, then the body
    assert body.startswith(b'Subject: big\r\nContent-Type: text/plain; charset=utf-8; hp="cipher"\r\n')
    assert body.count(line.replace(b"\n", b"\r\n")) == 64 * 16384
    proc = subprocess.run(
        [
            "openssl",
            "cms",
            "-decrypt",
            "-in",
            str(tmp_path / "enc.eml"),
            "-inkey",
            str(VEC / "bob.encrypt.key"),
            "-out",
            str(tmp_path / "ossl.eml"),
        ],
        capture_output=True,
    )
    assert proc.returncode == 0 and (tmp_path / "ossl.eml").read_bytes() == body


def _der(value: bytes, pieces: list[int], indefinite: bool) -> bytes:
    """An OCTET STRING as one primitive, or constructed from pieces, in either length form."""
    if not pieces:
        return ber.header(0x04, len(value)) + value
    parts, pos = [], 0
    for n in pieces:
        parts.append(ber.header(0x04, len(value[pos : pos + n])) + value[pos : pos + n])
        pos += n
    parts.append(ber.header(0x04, len(value[pos:])) + value[pos:])
    inner = b"".join(parts)
    if indefinite:
        return ber.header(0x24, ber.INDEFINITE) + inner + ber.EOC
    return ber.header(0x24, len(inner)) + inner


@settings(max_examples=80, deadline=None)
@given(value=st.binary(max_size=3000), pieces=st.lists(st.integers(0, 400), max_size=6), indefinite=st.booleans())
def test_ber_octet_strings_read_back_in_every_form(value: bytes, pieces: list[int], indefinite: bool) -> None:
    data = _der(value, pieces, indefinite) + b"\x05\x00"
    reader = ber.Reader(io.BytesIO(data))
    assert b"".join(reader.octet_pieces(reader.header())) == value
    assert reader.element() == b"\x05\x00"


@settings(max_examples=80, deadline=None)
@given(data=st.binary(max_size=20000), cuts=st.lists(st.integers(1, 3000), max_size=12))
def test_base64_stream_round_trips(data: bytes, cuts: list[int]) -> None:
    out = io.BytesIO()
    w = Base64Writer(out)
    pos = 0
    for n in cuts:
        w.write(data[pos : pos + n])
        pos += n
    w.write(data[pos:])
    w.close()
    assert all(len(line) <= 76 for line in out.getvalue().split(b"\r\n"))
    assert Base64Reader(io.BytesIO(out.getvalue())).read() == data
    # Exactly the MIME form the standard library writes (76-character lines), with CRLF.
    assert out.getvalue() == base64.encodebytes(data).replace(b"\n", b"\r\n")


@settings(max_examples=80, deadline=None)
@given(
    text=st.lists(st.sampled_from([b"a", b"\n", b"\r", b"\r\n", b"xyz"]), max_size=60),
    cuts=st.lists(st.integers(1, 9), max_size=10),
)
def test_canonicalisation_is_independent_of_chunking(text: list[bytes], cuts: list[int]) -> None:
    data = b"".join(text)
    whole = Canonicalizer()(data)
    canon, pos, out = Canonicalizer(), 0, b""
    for n in cuts:
        out += canon(data[pos : pos + n])
        pos += n
    out += canon(data[pos:])
    assert out == whole and b"\n" not in whole.replace(b"\r\n", b"")


@pytest.mark.interop
def test_streamed_signatures_verify_with_openssl_and_hsmkm(tmp_path: Path, km_home: Path) -> None:
    """msg sign and msg verify stream: opaque and clear-signed, a few MiB, checked both ways."""
    from conftest import hsmkm

    pw = {"PW": "stream-password-1"}
    code = hsmkm("user", "add", "sven@example.com", "--json", home=km_home).json()["code"]
    epf = tmp_path / "sven.epf"
    hsmkm(
        "enroll",
        "--km",
        str(km_home),
        "--email",
        "sven@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        env={"CODE": code, **pw},
    )
    src = tmp_path / "in.eml"
    src.write_bytes(b"Subject: long\nFrom: sven@example.com\n\n" + b"a line of text\n" * 300_000)
    ca = tmp_path / "ca.pem"
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca.write_bytes(
        x509.load_der_x509_certificate((km_home / "pub/ca.crt").read_bytes()).public_bytes(serialization.Encoding.PEM)
    )
    for detached in (False, True):
        out = tmp_path / f"signed-{detached}.eml"
        hsmkm(
            "msg",
            "sign",
            "--keystore",
            str(epf),
            "--password-source",
            "env:PW",
            *(["--detached"] if detached else []),
            str(src),
            "-o",
            str(out),
            env=pw,
        )
        head = out.read_bytes()[:400]
        assert b"Subject: long" in head and (b"multipart/signed" in head) == detached
        ossl = subprocess.run(
            ["openssl", "cms", "-verify", "-in", str(out), "-CAfile", str(ca), "-purpose", "smimesign"],
            capture_output=True,
        )
        assert ossl.returncode == 0, ossl.stderr
        content = tmp_path / f"content-{detached}.eml"
        ok = hsmkm("msg", "verify", "--km", str(km_home), str(out), "-o", str(content), "--json")
        assert ok.json()["signer"] == "sven@example.com"
        assert content.read_bytes().count(b"a line of text\r\n") == 300_000
        tampered = bytearray(out.read_bytes())
        i = len(tampered) // 2
        tampered[i] = ord("A") if tampered[i] != ord("A") else ord("B")
        bad = tmp_path / "bad.eml"
        bad.write_bytes(bytes(tampered))
        gone = tmp_path / "never.eml"
        r = hsmkm("msg", "verify", "--km", str(km_home), str(bad), "-o", str(gone), check=False)
        assert r.returncode in (1, 2) and r.stderr.startswith("hsmkm: error:") and not gone.exists()
