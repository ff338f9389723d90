"""Interop with NSS 3.87, Thunderbird's engine, through its own tools (certutil, pk12util,
cmsutil, modutil), beside openssl and gpgsm: what each reads of hsmkm's messages, and what
hsmkm reads of theirs. Every user here is enrolled by a real KM; NSS databases live in
temporary directories."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import hsmkm, make_token, softhsm_conf, softhsm_env
from hsmkm.cms import smime

pytestmark = pytest.mark.interop

PW = "correct-horse-battery"


@dataclass
class World:
    root: Path
    home: Path
    epf: dict[str, Path]

    def cert(self, user: str, kind: str) -> x509.Certificate:
        return x509.load_der_x509_certificate(
            (self.home / "pub" / "certs" / f"{user}@example.com.{kind}.crt").read_bytes()
        )


def run(
    *argv: str, input: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), input=input, capture_output=True, env={**os.environ, **(env or {})}, timeout=300)


def enroll(
    home: Path, user: str, key: str, client: str, keystore: str, sign_key: str, env: dict[str, str] | None = None
) -> None:
    email = f"{user}@example.com"
    code = hsmkm("--json", "user", "add", email, "--key", key, "--client", client, home=home).json()["code"]
    args = [
        "enroll",
        "--km",
        str(home),
        "--email",
        email,
        "--code-source",
        "env:CODE",
        "--keystore",
        keystore,
        "--sign-key",
        sign_key,
    ]
    if not keystore.startswith("pkcs11:"):
        args += ["--password-source", "env:PW"]
    hsmkm(*args, env={"CODE": code, "PW": PW, **(env or {})})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("nss")
    home = root / "km"
    hsmkm(
        "init", "--ca-subject", "CN=NSS Interop CA,O=hsmkm tests", "--ca-key", "p256", "--user-key", "p256", home=home
    )
    epf: dict[str, Path] = {}
    # rita and nina read mail in Thunderbird (compat), mo in an openssl-based client (modern),
    # eve has P-256 keys and a compat client.
    for user, key, client, sign in (
        ("rita", "rsa2048", "compat", "rsa2048"),
        ("nina", "rsa2048", "compat", "rsa2048"),
        ("mo", "rsa2048", "modern", "rsa2048"),
        ("eve", "p256", "compat", "p256"),
    ):
        epf[user] = root / f"{user}.epf"
        enroll(home, user, key, client, str(epf[user]), sign)
    hsmkm("crl", "publish", home=home)
    (root / "pw.txt").write_text(PW)
    return World(root, home, epf)


def nss_db(world: World, name: str, *import_users: str) -> Path:
    """A fresh NSS database trusting the KM's CA, holding these users' keystores."""
    db = world.root / name
    db.mkdir()
    assert run("certutil", "-N", "--empty-password", "-d", f"sql:{db}").returncode == 0
    assert (
        run(
            "certutil",
            "-A",
            "-n",
            "hsmkm-ca",
            "-t",
            "C,C,C",
            "-i",
            str(world.home / "pub" / "ca.crt"),
            "-d",
            f"sql:{db}",
        ).returncode
        == 0
    )
    for user in import_users:
        res = run("pk12util", "-i", str(world.epf[user]), "-d", f"sql:{db}", "-w", str(world.root / "pw.txt"), "-K", "")
        assert res.returncode == 0, res.stderr
    return db


def nickname(db: Path, pattern: str) -> str:
    listing = run("certutil", "-L", "-d", f"sql:{db}").stdout.decode()
    for line in listing.splitlines():
        m = re.match(r"^(.*?)\s+[a-zA-Z]*,[a-zA-Z]*,[a-zA-Z]*\s*$", line)
        if m and re.search(pattern, m.group(1)):
            return m.group(1).strip()
    raise AssertionError(f"no certificate like {pattern!r} in\n{listing}")


def mime_opaque(der: bytes, headers: str, kind: str = "signed-data") -> bytes:
    b64 = base64.encodebytes(der).replace(b"\n", b"\r\n")
    return (
        headers.encode()
        + b"MIME-Version: 1.0\r\nContent-Type: application/pkcs7-mime; smime-type="
        + kind.encode()
        + b"; name=smime.p7m\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64
    )


def mime_clear(content: bytes, sig: bytes, headers: str) -> bytes:
    b64 = base64.encodebytes(sig).replace(b"\n", b"\r\n")
    return (
        headers.encode()
        + b'MIME-Version: 1.0\r\nContent-Type: multipart/signed; protocol="application/pkcs7-signature";'
        b' micalg=sha-256; boundary="nss-b"\r\n\r\n--nss-b\r\n' + content + b"\r\n--nss-b\r\n"
        b"Content-Type: application/pkcs7-signature; name=smime.p7s\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64
        + b"\r\n--nss-b--\r\n"
    )


def signed_attribute_oids(der: bytes) -> str:
    return run("openssl", "cms", "-cmsout", "-print", "-inform", "DER", input=der).stdout.decode()


def key_of(world: World, user: str, cert: x509.Certificate, out: Path) -> Path:
    """The private key for ``cert`` from the user's .epf, as PEM (what openssl and gpgsm take)."""
    pem = run("openssl", "pkcs12", "-in", str(world.epf[user]), "-passin", "env:PW", "-nodes", env={"PW": PW}).stdout
    want = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    for block in re.findall(rb"-----BEGIN PRIVATE KEY-----.*?-----END PRIVATE KEY-----", pem, re.S):
        key = serialization.load_pem_private_key(block, None)
        if (
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            == want
        ):
            out.write_bytes(block)
            return out
    raise AssertionError("no matching key in the keystore")


def encrypt_to(world: World, to: str, message: bytes, out: Path, *extra: str) -> bytes:
    src = out.with_suffix(".in")
    src.write_bytes(message)
    hsmkm("msg", "encrypt", "--km", str(world.home), "--to", f"{to}@example.com", *extra, str(src), "-o", str(out))
    return smime.parse(out.read_bytes()).der


# --- NSS signs, hsmkm verifies and decrypts -------------------------------------------------

CONTENT = "Content-Type: text/plain; charset=utf-8\r\n\r\nHello from Thunderbird's engine, \u00e9t\u00e9\r\n".encode()
NINA_HEADERS = "From: Nina <nina@example.com>\r\nTo: rita@example.com\r\nSubject: from NSS\r\n"


@pytest.mark.parametrize("flags", [[], ["-G", "-P"]], ids=["cmsutil-defaults", "with-time-and-capabilities"])
def test_nss_signed_messages_verify_in_hsmkm(world: World, flags: list[str]) -> None:
    db = nss_db(world, f"nss-sign{len(flags)}", "nina")
    nick = nickname(db, r"nina.*sign")
    opaque = run("cmsutil", "-S", "-N", nick, "-d", f"sql:{db}", *flags, input=CONTENT)
    detached = run("cmsutil", "-S", "-N", nick, "-d", f"sql:{db}", "-T", *flags, input=CONTENT)
    assert opaque.returncode == 0 and detached.returncode == 0, opaque.stderr + detached.stderr
    attrs = signed_attribute_oids(opaque.stdout)
    # what made 'msg verify' fail before: NSS's encryption key preference and Microsoft's
    assert "1.3.6.1.4.1.311.16.4" in attrs and "encrypKeyPref" in attrs
    for name, message in (
        ("opaque.eml", mime_opaque(opaque.stdout, NINA_HEADERS)),
        ("clear.eml", mime_clear(CONTENT, detached.stdout, NINA_HEADERS)),
    ):
        path = world.root / f"{db.name}-{name}"
        path.write_bytes(message)
        out = path.with_suffix(".out")
        res = hsmkm(
            "--json",
            "msg",
            "verify",
            "--km",
            str(world.home),
            "--cache",
            str(world.root / "cache"),
            str(path),
            "-o",
            str(out),
        )
        assert res.json()["signer"] == "nina@example.com" and res.json()["header_mismatches"] == []
        assert out.read_bytes().startswith(NINA_HEADERS.encode()) and out.read_bytes().endswith(
            CONTENT.split(b"\r\n\r\n", 1)[1]
        )


def test_nss_sign_then_encrypt_decrypts_in_hsmkm(world: World) -> None:
    db = nss_db(world, "nss-sign-enc", "nina")
    assert (
        run(
            "certutil",
            "-A",
            "-n",
            "rita-enc",
            "-t",
            ",,",
            "-i",
            str(world.home / "pub" / "certs" / "rita@example.com.enc.crt"),
            "-d",
            f"sql:{db}",
        ).returncode
        == 0
    )
    signed_der = run("cmsutil", "-S", "-N", nickname(db, r"nina.*sign"), "-d", f"sql:{db}", input=CONTENT).stdout
    inner = mime_opaque(signed_der, "")
    env = run("cmsutil", "-E", "-r", "rita-enc", "-d", f"sql:{db}", input=inner)
    assert env.returncode == 0, env.stderr
    path = world.root / "nss-sign-enc.eml"
    path.write_bytes(mime_opaque(env.stdout, NINA_HEADERS, "enveloped-data"))
    out = world.root / "nss-sign-enc.out"
    res = hsmkm(
        "--json",
        "msg",
        "decrypt",
        "--keystore",
        str(world.epf["rita"]),
        "--password-source",
        "env:PW",
        "--km",
        str(world.home),
        str(path),
        "-o",
        str(out),
        env={"PW": PW},
    )
    assert res.json()["signed_by"] == "nina@example.com"
    assert out.read_bytes().endswith(CONTENT.split(b"\r\n\r\n", 1)[1])


def test_capabilities_a_correspondent_announced_are_used_for_the_next_message(world: World) -> None:
    """mo's certificate says modern (GCM, OAEP), but mo's NSS client announced AES-CBC and
    PKCS#1 v1.5 only: once that signed message is verified, mail to mo is what NSS reads."""
    cache = world.root / "cache-announce"
    plain = b"From: rita@example.com\r\nSubject: s\r\n\r\nhello\r\n"
    before = encrypt_to(world, "mo", plain, world.root / "to-mo-1.eml", "--cache", str(cache))
    assert "id-smime-ct-authEnvelopedData" in signed_attribute_oids(before) or "authEnveloped" in signed_attribute_oids(
        before
    )
    db = nss_db(world, "nss-mo", "mo")
    signed_der = run(
        "cmsutil", "-S", "-N", nickname(db, r"mo.*sign"), "-d", f"sql:{db}", "-G", "-P", input=CONTENT
    ).stdout
    path = world.root / "from-mo.eml"
    path.write_bytes(mime_opaque(signed_der, "From: mo@example.com\r\n"))
    hsmkm("msg", "verify", "--km", str(world.home), "--cache", str(cache), str(path))
    after = signed_attribute_oids(encrypt_to(world, "mo", plain, world.root / "to-mo-2.eml", "--cache", str(cache)))
    assert "aes-256-cbc" in after and "rsaEncryption" in after and "rsaesOaep" not in after


# --- hsmkm encrypts, the clients decrypt ----------------------------------------------------


def test_mail_to_a_compat_recipient_is_read_by_cmsutil_and_gpgsm(world: World) -> None:
    message = b"From: rita@example.com\r\nTo: nina@example.com\r\nSubject: for NSS and gpgsm\r\n\r\nhello nina\r\n"
    der = encrypt_to(world, "nina", message, world.root / "to-nina.eml")
    printed = signed_attribute_oids(der)
    assert "aes-256-cbc" in printed and "rsaEncryption" in printed  # chosen from nina's certificate
    db = nss_db(world, "nss-nina", "nina")
    dec = run("cmsutil", "-D", "-d", f"sql:{db}", input=der)
    assert dec.returncode == 0, dec.stderr
    assert b"Subject: for NSS and gpgsm" in dec.stdout and dec.stdout.endswith(b"hello nina\r\n")
    # gpgsm 2.2 imports only the traditional PKCS#12 encryption: nina's encryption key, re-wrapped
    gpg = world.root / "gnupg"
    gpg.mkdir(mode=0o700)
    (gpg / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
    (gpg / "gpgsm.conf").write_text("disable-crl-checks\n")
    genv = {"GNUPGHOME": str(gpg)}
    enc_cert = world.cert("nina", "enc")
    (world.root / "nina-enc.crt").write_bytes(enc_cert.public_bytes(serialization.Encoding.PEM))
    key = key_of(world, "nina", enc_cert, world.root / "nina-enc.key")
    p12 = world.root / "nina-legacy.p12"
    assert (
        run(
            "openssl",
            "pkcs12",
            "-export",
            "-legacy",
            "-inkey",
            str(key),
            "-in",
            str(world.root / "nina-enc.crt"),
            "-passout",
            "pass:nina",
            "-out",
            str(p12),
        ).returncode
        == 0
    )
    assert run("gpgconf", "--launch", "gpg-agent", env=genv).returncode == 0
    assert run("gpg-connect-agent", "--no-autostart", "/bye", env=genv).returncode == 0
    try:
        imp = run(
            "gpgsm",
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase-fd",
            "0",
            "--import",
            str(p12),
            input=b"nina\n",
            env=genv,
        )
        assert b"secret keys imported: 1" in imp.stderr, imp.stderr
        (world.root / "to-nina.p7m").write_bytes(der)
        out = run(
            "gpgsm",
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase-fd",
            "0",
            "--decrypt",
            str(world.root / "to-nina.p7m"),
            input=b"nina\n",
            env=genv,
        )
    finally:
        run("gpgconf", "--homedir", str(gpg), "--kill", "all")  # the gpg-agent and dirmngr of this home, no other
    assert out.returncode == 0 and out.stdout.endswith(b"hello nina\r\n"), out.stderr


def test_mail_to_a_modern_recipient_is_read_by_openssl(world: World) -> None:
    der = encrypt_to(
        world, "mo", b"From: rita@example.com\r\nSubject: GCM\r\n\r\nhello mo\r\n", world.root / "to-mo.eml"
    )
    printed = signed_attribute_oids(der)
    assert "rsaesOaep" in printed and "aes-256-gcm" in printed.lower()
    enc_cert = world.cert("mo", "enc")
    (world.root / "mo-enc.crt").write_bytes(enc_cert.public_bytes(serialization.Encoding.PEM))
    key = key_of(world, "mo", enc_cert, world.root / "mo-enc.key")
    out = run(
        "openssl",
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-inkey",
        str(key),
        "-recip",
        str(world.root / "mo-enc.crt"),
        input=der,
    )
    assert out.returncode == 0 and out.stdout.endswith(b"hello mo\r\n"), out.stderr


def test_clear_signed_lf_input_verifies_at_nss(world: World) -> None:
    src = world.root / "lf.eml"
    src.write_bytes("From: rita@example.com\nSubject: caf\u00e9\n\nGr\u00fc\u00dfe\nfrom LF input\n".encode())
    out = world.root / "lf-signed.eml"
    hsmkm(
        "msg",
        "sign",
        "--keystore",
        str(world.epf["rita"]),
        "--password-source",
        "env:PW",
        "--detached",
        str(src),
        "-o",
        str(out),
        env={"PW": PW},
    )
    parsed = smime.parse(out.read_bytes())
    assert parsed.detached_content is not None and parsed.detached_content.isascii()
    db = nss_db(world, "nss-lf")
    (world.root / "lf.content").write_bytes(parsed.detached_content)
    res = run(
        "cmsutil", "-D", "-d", f"sql:{db}", "-c", str(world.root / "lf.content"), "-n", "-h", "1", input=parsed.der
    )
    assert res.returncode == 0 and b"GoodSignature" in res.stdout, res.stdout + res.stderr


# --- replies: NSS learns the encryption certificate from a signed message -----------------


def _nss_reads_signed(world: World, db: Path, user: str) -> bytes:
    src = world.root / f"{user}-note.eml"
    src.write_bytes(
        f"From: {user}@example.com\r\nTo: nina@example.com\r\nSubject: reply to me\r\n\r\nplease reply encrypted\r\n".encode()
    )
    out = world.root / f"{user}-note-signed.eml"
    hsmkm(
        "msg",
        "sign",
        "--keystore",
        str(world.epf[user]),
        "--password-source",
        "env:PW",
        str(src),
        "-o",
        str(out),
        env={"PW": PW},
    )
    der = smime.parse(out.read_bytes()).der
    # -k keeps the message's certificates; -u 5 (certUsageEmailRecipient) keeps those good for
    # encryption, as a mail client does when it files a correspondent's certificates
    # (the signer's own check then fails for that usage, which is expected: the next pass verifies)
    run("cmsutil", "-D", "-k", "-u", "5", "-d", f"sql:{db}", "-n", "-h", "1", input=der)
    verified = run("cmsutil", "-D", "-d", f"sql:{db}", "-n", "-h", "1", input=der)
    assert b"GoodSignature" in verified.stdout, verified.stdout + verified.stderr
    return der


def _nss_serials(db: Path, email: str) -> set[int]:
    pem = run("certutil", "-L", "-d", f"sql:{db}", "-n", email, "-a").stdout
    return {
        x509.load_pem_x509_certificate(b).serial_number
        for b in re.findall(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
    }


def test_nss_replies_encrypted_to_an_rsa_user_after_reading_their_signed_message(world: World) -> None:
    db = nss_db(world, "nss-reply-rsa", "nina")
    _nss_reads_signed(world, db, "rita")
    enc = world.cert("rita", "enc")
    assert enc.serial_number in _nss_serials(db, "rita@example.com")
    reply = run(
        "cmsutil",
        "-E",
        "-r",
        "rita@example.com",
        "-d",
        f"sql:{db}",
        input=b"Content-Type: text/plain\r\n\r\nan encrypted reply from NSS\r\n",
    )
    assert reply.returncode == 0, reply.stderr
    path = world.root / "reply-rsa.p7m"
    path.write_bytes(reply.stdout)
    res = hsmkm(
        "--json",
        "msg",
        "decrypt",
        "--keystore",
        str(world.epf["rita"]),
        "--password-source",
        "env:PW",
        str(path),
        "-o",
        str(world.root / "reply-rsa.out"),
        env={"PW": PW},
    )
    assert res.json()["key_serial"] == f"{enc.serial_number:x}"
    assert (world.root / "reply-rsa.out").read_bytes().endswith(b"an encrypted reply from NSS\r\n")


def test_nss_387_limits_with_an_ec_user(world: World) -> None:
    """NSS 3.87 holds an EC user's encryption certificate after reading their signed message,
    but makes no ECDH lock box for it, and cannot open hsmkm's ECDH lock box (openssl can)."""
    db = nss_db(world, "nss-reply-ec", "eve")
    _nss_reads_signed(world, db, "eve")
    enc = world.cert("eve", "enc")
    assert enc.serial_number in _nss_serials(db, "eve@example.com")
    reply = run(
        "cmsutil", "-E", "-r", "eve@example.com", "-d", f"sql:{db}", input=b"Content-Type: text/plain\r\n\r\nx\r\n"
    )
    assert reply.returncode != 0 and b"SEC_ERROR_INVALID_ALGORITHM" in reply.stderr, reply.stderr
    der = encrypt_to(
        world, "eve", b"From: rita@example.com\r\nSubject: ECDH\r\n\r\nfor eve\r\n", world.root / "to-eve.eml"
    )
    assert "dhSinglePass-stdDH-sha256kdf-scheme" in signed_attribute_oids(
        der
    ) and "aes-256-cbc" in signed_attribute_oids(der)
    nss = run("cmsutil", "-D", "-d", f"sql:{db}", input=der)
    assert nss.returncode != 0, nss.stdout
    (world.root / "eve-enc.crt").write_bytes(enc.public_bytes(serialization.Encoding.PEM))
    key = key_of(world, "eve", enc, world.root / "eve-enc.key")
    ossl = run(
        "openssl",
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-inkey",
        str(key),
        "-recip",
        str(world.root / "eve-enc.crt"),
        input=der,
    )
    assert ossl.returncode == 0 and ossl.stdout.endswith(b"for eve\r\n"), ossl.stderr


# --- a token enrolled by hsmkm, as Thunderbird with a smart card sees it ---------------------


_OLD_STYLE = """
import sys
from pkcs11 import Attribute, ObjectClass
from hsmkm.keys.pkcs11 import Pkcs11Module
from hsmkm.keys.softhsm import find_softhsm_module
s = Pkcs11Module.load(find_softhsm_module()).open_token(sys.argv[2], label=sys.argv[1])
for obj in list(s.session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE})):
    t = {a: obj[a] for a in (Attribute.CLASS, Attribute.CERTIFICATE_TYPE, Attribute.TOKEN, Attribute.PRIVATE,
                             Attribute.LABEL, Attribute.ID, Attribute.SUBJECT, Attribute.VALUE)}
    obj.destroy()
    s.session.create_object(t)
"""


def test_nss_lists_the_token_certificates_and_decrypts_with_the_token(world: World, module_path: str) -> None:
    env = softhsm_env(world.home)
    token, pin = "tia", "tia-pin-1234"
    make_token(token, pin, softhsm_conf(world.home))
    uri = f"pkcs11:token={token}?module-path={module_path}&pin-source=env:TIA_PIN"
    enroll(world.home, "tia", "rsa2048", "compat", uri, "rsa2048", env={"TIA_PIN": pin, **env})
    db = nss_db(world, "nss-token")
    assert (
        run(
            "modutil", "-add", "softhsm", "-libfile", module_path, "-dbdir", f"sql:{db}", "-force", input=b"\n", env=env
        ).returncode
        == 0
    )
    pinfile = world.root / "tia.pin"
    pinfile.write_text(pin)

    def listed() -> str:
        res = run("certutil", "-L", "-h", token, "-d", f"sql:{db}", "-f", str(pinfile), env=env)
        return res.stdout.decode()  # (exit 1 when it lists nothing)

    names = listed()
    enc = world.cert("tia", "enc")
    assert (
        f"{token}:tia-sign" in names
        and f"{token}:tia-enc-{enc.serial_number:x}" in names
        and f"{token}:hsmkm CA" in names
    )
    der = encrypt_to(
        world,
        "tia",
        b"From: rita@example.com\r\nSubject: to the card\r\n\r\nfor the smart card\r\n",
        world.root / "to-tia.eml",
    )
    dec = run("cmsutil", "-D", "-d", f"sql:{db}", "-f", str(pinfile), input=der, env=env)
    assert dec.returncode == 0 and dec.stdout.endswith(b"for the smart card\r\n"), dec.stderr
    # A token enrolled by an earlier version: certificate objects without CKA_ISSUER and
    # CKA_SERIAL_NUMBER, which NSS does not list; 'keystore repair' gives them back.
    subprocess.run([sys.executable, "-c", _OLD_STYLE, token, pin], env={**os.environ, **env}, check=True)
    assert f"{token}:" not in listed()
    repaired = hsmkm("--json", "keystore", "repair", uri, env={"TIA_PIN": pin, **env}).json()
    assert repaired["repaired"] == 3
    assert f"{token}:tia-enc-{enc.serial_number:x}" in listed()
    dec = run("cmsutil", "-D", "-d", f"sql:{db}", "-f", str(pinfile), input=der, env=env)
    assert dec.returncode == 0 and dec.stdout.endswith(b"for the smart card\r\n"), dec.stderr
    # ... and so does the next enrollment into that token ('enroll --update').
    subprocess.run([sys.executable, "-c", _OLD_STYLE, token, pin], env={**os.environ, **env}, check=True)
    assert f"{token}:" not in listed()
    code = hsmkm("--json", "user", "reenable", "tia@example.com", home=world.home).json()["code"]
    hsmkm(
        "enroll",
        "--km",
        str(world.home),
        "--email",
        "tia@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        uri,
        "--sign-key",
        "rsa2048",
        "--update",
        env={"CODE": code, "TIA_PIN": pin, **env},
    )
    assert f"{token}:tia-enc-{enc.serial_number:x}" in listed()
    dec = run("cmsutil", "-D", "-d", f"sql:{db}", "-f", str(pinfile), input=der, env=env)
    assert dec.returncode == 0 and dec.stdout.endswith(b"for the smart card\r\n"), dec.stderr


def test_nss_387_limits_with_oaep_gcm_and_delta_crls(world: World) -> None:
    """What NSS 3.87 refuses (the reason for the compat profile): RSA-OAEP, AES-GCM, delta CRLs."""
    db = nss_db(world, "nss-limits", "nina")
    plain = b"From: rita@example.com\r\nSubject: s\r\n\r\nhello\r\n"
    for opts, error in (
        (("--cipher", "aes256-cbc", "--key-transport", "rsa-oaep"), b"SEC_ERROR_UNSUPPORTED_KEYALG"),
        (("--cipher", "aes256-gcm", "--key-transport", "rsa-pkcs1v15"), b"SEC_ERROR_UNRECOGNIZED_OID"),
    ):
        der = encrypt_to(world, "nina", plain, world.root / "limit.eml", *opts)
        res = run("cmsutil", "-D", "-d", f"sql:{db}", input=der)
        assert res.returncode != 0 and error in res.stderr, res.stderr
    hsmkm("user", "revoke", "eve@example.com", "--reason", "superseded", home=world.home)
    hsmkm("crl", "publish", "--delta", home=world.home)
    crl = world.home / "pub" / "crl"
    full = run("crlutil", "-I", "-i", str(crl / "full.crl"), "-d", f"sql:{db}", "-B")
    assert full.returncode == 0, full.stderr
    delta = run("crlutil", "-I", "-i", str(crl / "delta.crl"), "-d", f"sql:{db}", "-B")
    assert delta.returncode != 0 and b"SEC_ERROR_CRL_UNKNOWN_CRITICAL_EXTENSION" in delta.stderr, delta.stderr
