"""Secure messaging: S/MIME sign, verify, encrypt and decrypt, interoperable with openssl and
gpgsm, with public vectors (RFC 9216 / RFC 9788, see tests/vectors/smime/README.txt)."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import MakeToken, hsmkm
from hsmkm import errors
from hsmkm.client import messaging
from hsmkm.cms import enveloped, signed, smime
from hsmkm.cms.validation import ValidationContext
from hsmkm.keys.base import KeyEntry, KeyRole

VEC = Path(__file__).parent / "vectors" / "smime"
PW = "correct-horse-battery"


def cert(name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((VEC / name).read_bytes())


def key(name: str):  # type: ignore[no-untyped-def]
    return serialization.load_pem_private_key((VEC / name).read_bytes(), None)


BOB = KeyEntry(key("bob.encrypt.key"), cert("bob.encrypt.crt"), KeyRole.ENCRYPT)
ALICE_SIGN = KeyEntry(key("alice.sign.key"), cert("alice.sign.crt"), KeyRole.SIGN)
CTX = ValidationContext(
    [cert("ca.rsa.crt")], datetime(2026, 11, 24, tzinfo=UTC), None, [cert("alice.sign.crt"), cert("carlos.sign.crt")]
)


class Store:
    """A keystore of vector keys (the Keystore interface, in memory)."""

    def __init__(self, sign: KeyEntry | None, enc: list[KeyEntry]) -> None:
        self.sign, self.enc = sign, enc

    def signing_entry(self) -> KeyEntry | None:
        return self.sign

    def encryption_entries(self) -> list[KeyEntry]:
        return self.enc

    def ca_certificates(self) -> list[x509.Certificate]:
        return [cert("ca.rsa.crt")]


def run(
    *argv: str, input: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), input=input, capture_output=True, env={**os.environ, **(env or {})})


# --- the public vectors -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["encryptedForBobRSAOaep.p7m", "encryptedForBobAndDana.p7m"])
def test_rfc9216_examples_decrypt(name: str) -> None:
    assert enveloped.decrypt((VEC / name).read_bytes(), [BOB]).content == b"This is some sample content."


@pytest.mark.parametrize("name", ["signedByAliceRSA.p7m", "signedByAliceRSAPSS.p7m"])
def test_rfc9216_examples_verify(name: str) -> None:
    result = signed.verify((VEC / name).read_bytes(), None, CTX)
    assert result.email == "alice@smime.example" and result.content == b"This is some sample content."


@pytest.mark.parametrize("name", ["smime-one-part.eml", "smime-multipart.eml"])
def test_rfc9788_signed_messages_verify(name: str) -> None:
    assert messaging.verify_message((VEC / name).read_bytes(), CTX).email == "alice@smime.example"


def test_rfc9788_encrypted_and_signed_message_opens() -> None:
    opened = messaging.decrypt_message((VEC / "smime-enc-signed.eml").read_bytes(), Store(None, [BOB]), CTX)
    assert opened.signer is not None and opened.signer.email == "alice@smime.example"
    assert b"Content-Type: text/plain" in opened.entity


@pytest.mark.parametrize(
    "name",
    [
        "to-bob_gpgsm_rsa-pkcs1v15_aes128cbc.p7m",
        "to-bob_openssl_rsa-oaep-sha256_aes256cbc.p7m",
        "to-bob_openssl_rsa-pkcs1v15_aes128gcm_authenveloped.p7m",
    ],
)
def test_messages_from_openssl_and_gpgsm_decrypt(name: str) -> None:
    der = smime.parse((VEC / name).read_bytes()).der
    assert enveloped.decrypt(der, [BOB]).content == b"hello bob\r\n"


def test_gpgsm_and_openssl_signatures_verify() -> None:
    content = smime.canonical((VEC / "hello.txt").read_bytes())
    gpg = signed.verify(smime.parse((VEC / "from-alice_gpgsm_detached_sha512.p7s").read_bytes()).der, content, CTX)
    assert gpg.email == "alice@smime.example"
    ossl = signed.verify(
        smime.parse((VEC / "from-alice_openssl-softhsm_opaque_sha256.p7m").read_bytes()).der, None, CTX
    )
    assert ossl.email == "alice@smime.example"


def test_unsupported_algorithms_say_so() -> None:
    dana = KeyEntry(key("dana.encrypt.key"), cert("dana.encrypt.crt"), KeyRole.ENCRYPT)  # X25519
    for name, entries in (
        ("authEnvelopedForBobChaCha20Poly1305.p7m", [BOB]),
        ("authEnvelopedForDanaX25519HKDF.p7m", [dana]),
        ("encryptedKekri.p7m", [BOB]),
    ):
        with pytest.raises(errors.UnsupportedAlgorithm, match="unsupported algorithm"):
            enveloped.decrypt((VEC / name).read_bytes(), entries)
    ctx = ValidationContext([cert("ca.rsa.crt"), cert("ca.25519.crt")], CTX.now, None, [cert("carlos.sign.crt")])
    with pytest.raises(errors.UnsupportedAlgorithm, match="unsupported algorithm"):
        signed.verify((VEC / "signedByCarlosEd25519.p7m").read_bytes(), None, ctx)


# --- round trips with openssl and gpgsm ---------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cms")
    for name in ("bob.encrypt.crt", "bob.encrypt.key", "ca.rsa.crt", "alice.sign.crt", "alice.sign.key"):
        (d / name).write_bytes((VEC / name).read_bytes())
    return d


@pytest.mark.interop
@pytest.mark.parametrize(
    "cipher,transport",
    [
        (enveloped.ContentCipher.AES256_GCM, enveloped.KeyTransport.RSA_OAEP),
        (enveloped.ContentCipher.AES256_CBC, enveloped.KeyTransport.RSA_OAEP),
        (enveloped.ContentCipher.AES256_CBC, enveloped.KeyTransport.RSA_PKCS1V15),
    ],
)
def test_openssl_decrypts_what_hsmkm_encrypts(files: Path, cipher, transport) -> None:  # type: ignore[no-untyped-def]
    msg = messaging.encrypt_message(
        b"Subject: hi\r\n\r\nfor bob\r\n", [cert("bob.encrypt.crt")], CTX, cipher, transport
    )
    (files / "m.eml").write_bytes(msg)
    out = run(
        "openssl",
        "cms",
        "-decrypt",
        "-in",
        str(files / "m.eml"),
        "-inkey",
        str(files / "bob.encrypt.key"),
        "-recip",
        str(files / "bob.encrypt.crt"),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.endswith(b"\r\n\r\nfor bob\r\n")


def test_a_key_transport_list_not_one_per_recipient_is_refused() -> None:
    two = [enveloped.KeyTransport.RSA_OAEP, enveloped.KeyTransport.RSA_PKCS1V15]
    with pytest.raises(errors.BadInput, match="one key transport per recipient"):
        messaging.encrypt_message(
            b"Subject: hi\r\n\r\nfor bob\r\n", [cert("bob.encrypt.crt")], CTX, enveloped.ContentCipher.AES256_GCM, two
        )


@pytest.mark.interop
def test_gpgsm_decrypts_cbc_pkcs1v15(files: Path) -> None:
    home = files / "gnupg"
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "gpg-agent.conf").write_text("allow-loopback-pinentry\n")
    (home / "gpgsm.conf").write_text("disable-crl-checks\n")
    env = {"GNUPGHOME": str(home)}
    p12 = files / "bob-legacy.p12"
    # gpgsm 2.2 imports only the traditional PKCS#12 encryption.
    assert (
        run(
            "openssl",
            "pkcs12",
            "-export",
            "-legacy",
            "-inkey",
            str(files / "bob.encrypt.key"),
            "-in",
            str(files / "bob.encrypt.crt"),
            "-passout",
            "pass:bob",
            "-out",
            str(p12),
        ).returncode
        == 0
    )
    # The agent is started and answering before gpgsm needs it: on a loaded machine, gpgsm's
    # own start of the agent can lose the loopback passphrase, and the import then fails with
    # "error parsing or decrypting the PKCS#12 file".
    assert run("gpgconf", "--launch", "gpg-agent", env=env).returncode == 0
    assert run("gpg-connect-agent", "--no-autostart", "/bye", env=env).returncode == 0
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
            input=b"bob\n",
            env=env,
        )
        assert b"secret keys imported: 1" in imp.stderr, imp.stderr
        der = enveloped.encrypt(
            b"hello gpgsm\r\n",
            [cert("bob.encrypt.crt")],
            enveloped.ContentCipher.AES256_CBC,
            enveloped.KeyTransport.RSA_PKCS1V15,
        )
        (files / "g.p7m").write_bytes(der)
        out = run(
            "gpgsm",
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase-fd",
            "0",
            "--decrypt",
            str(files / "g.p7m"),
            input=b"bob\n",
            env=env,
        )
    finally:
        run("gpgconf", "--homedir", str(home), "--kill", "all")  # the gpg-agent and dirmngr of this home, no other
    assert out.returncode == 0 and out.stdout == b"hello gpgsm\r\n", out.stderr


@pytest.mark.interop
@pytest.mark.parametrize(
    "opts",
    [
        ["-aes-256-gcm"],
        ["-aes-256-cbc"],
        ["-aes-256-cbc", "-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"],
    ],
)
def test_hsmkm_decrypts_what_openssl_encrypts_to_several(files: Path, opts: list[str]) -> None:
    out = run(
        "openssl",
        "cms",
        "-encrypt",
        "-outform",
        "DER",
        *opts[:1],
        "-recip",
        str(files / "alice.sign.crt"),
        "-recip",
        str(files / "bob.encrypt.crt"),
        *opts[1:],
        input=b"from openssl\n",
    )
    assert out.returncode == 0, out.stderr
    assert enveloped.decrypt(out.stdout, [BOB]).content == b"from openssl\r\n"


@pytest.mark.interop
@pytest.mark.parametrize("detached", [False, True])
def test_openssl_verifies_what_hsmkm_signs(files: Path, detached: bool) -> None:
    msg = messaging.sign_message(b"Subject: signed\r\n\r\nsigned text\r\n", Store(ALICE_SIGN, []), detached)
    (files / "s.eml").write_bytes(msg)
    out = run(
        "openssl",
        "cms",
        "-verify",
        "-in",
        str(files / "s.eml"),
        "-CAfile",
        str(files / "ca.rsa.crt"),
        "-purpose",
        "smimesign",
    )
    assert out.returncode == 0, out.stderr
    assert b"signed text" in out.stdout
    assert messaging.verify_message(msg, CTX).email == "alice@smime.example"


@pytest.mark.interop
@pytest.mark.parametrize("flags", [[], ["-nodetach"]])
def test_hsmkm_verifies_what_openssl_signs(files: Path, flags: list[str]) -> None:
    out = run(
        "openssl",
        "cms",
        "-sign",
        "-md",
        "sha256",
        "-signer",
        str(files / "alice.sign.crt"),
        "-inkey",
        str(files / "alice.sign.key"),
        *flags,
        input=b"Content-Type: text/plain\r\n\r\nby openssl\r\n",
    )
    assert out.returncode == 0, out.stderr
    result = messaging.verify_message(out.stdout, CTX)
    assert result.email == "alice@smime.example" and result.content.endswith(b"by openssl\r\n")


# --- tampering and bad input --------------------------------------------------------------


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def test_tampered_ciphertext_tag_or_lock_box_is_refused() -> None:
    der = enveloped.encrypt(b"secret text " * 10, [cert("bob.encrypt.crt")])
    # The tag, the ciphertext, and bytes across the lock box: whatever a flip hits, it is
    # refused with an exit-1 or exit-2 error, never plaintext.
    for at in [len(der) - 3, len(der) - 40, *range(60, 600, 37)]:
        with pytest.raises(
            (errors.SignatureInvalid, errors.MalformedInput, errors.UnsupportedAlgorithm, errors.NotFound)
        ):
            enveloped.decrypt(_flip(der, at), [BOB])
    with pytest.raises(errors.MalformedInput):
        enveloped.decrypt(der[:-30], [BOB])
    with pytest.raises(errors.MalformedInput):
        enveloped.decrypt(b"\x30\x03garbage", [BOB])
    alice_enc = KeyEntry(key("alice.sign.key"), cert("alice.encrypt.crt"), KeyRole.ENCRYPT)
    with pytest.raises(errors.NotFound, match="not addressed"):
        enveloped.decrypt(der, [alice_enc])


def test_tampered_signature_attributes_or_content_is_refused() -> None:
    der = signed.sign(b"Content-Type: text/plain\r\n\r\noriginal\r\n", ALICE_SIGN, [], False, CTX.now)
    i = der.find(b"original")
    with pytest.raises(errors.SignatureInvalid):
        signed.verify(der[:i] + b"0riginal" + der[i + 8 :], None, CTX)
    with pytest.raises(errors.SignatureInvalid):
        signed.verify(_flip(der, len(der) - 5), None, CTX)  # the signature
    t = der.find(bytes.fromhex("06092a864886f70d010905"))  # signingTime attribute
    with pytest.raises(errors.SignatureInvalid):
        signed.verify(_flip(der, t + 20), None, CTX)
    other = ValidationContext([cert("ca.25519.crt")], CTX.now, None, [])
    with pytest.raises(errors.ValidationFailed, match="does not chain"):
        signed.verify(der, None, other)


def test_cli_tampering_leaves_no_plaintext_and_exits_per_contract(
    tmp_path: Path, km_home: Path, module_path: str
) -> None:
    """Through the CLI, with keys the KM issued: bad input exits 2, a bad tag or signature 1."""
    code = hsmkm("user", "add", "tess@example.com", "--json", home=km_home).json()["code"]
    epf = tmp_path / "tess.epf"
    hsmkm(
        "enroll",
        "--km",
        str(km_home),
        "--email",
        "tess@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        env={"CODE": code, "PW": PW},
    )
    src = tmp_path / "in.eml"
    src.write_bytes(b"Subject: t\r\n\r\n" + b"line of text\r\n" * 200)
    enc = tmp_path / "enc.eml"
    hsmkm(
        "msg",
        "encrypt",
        "--km",
        str(km_home),
        "--to",
        "tess@example.com",
        "--sign-with",
        str(epf),
        "--password-source",
        "env:PW",
        str(src),
        "-o",
        str(enc),
        env={"PW": PW},
    )
    out = tmp_path / "out.eml"
    ok = hsmkm(
        "msg",
        "decrypt",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        "--km",
        str(km_home),
        str(enc),
        "-o",
        str(out),
        "--json",
        env={"PW": PW},
    )
    assert ok.json()["signed_by"] == "tess@example.com" and out.read_bytes().count(b"line of text") == 200
    out.unlink()
    body = smime.parse(enc.read_bytes()).der
    bad = tmp_path / "bad.p7m"
    bad.write_bytes(_flip(body, len(body) - 2))
    r = hsmkm(
        "msg",
        "decrypt",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        str(bad),
        "-o",
        str(out),
        env={"PW": PW},
        check=False,
    )
    assert r.returncode == 1 and "altered" in r.stderr and r.stderr.count("\n") == 1 and not out.exists()
    bad.write_bytes(body[: len(body) // 2])
    r = hsmkm(
        "msg",
        "decrypt",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        str(bad),
        "-o",
        str(out),
        env={"PW": PW},
        check=False,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and not out.exists()
    bad.write_bytes(b"not a message at all")
    r = hsmkm("msg", "verify", "--km", str(km_home), str(bad), check=False)
    assert r.returncode == 2 and r.stderr.startswith("hsmkm: error:")
    assert list(tmp_path.glob(".out.eml.*")) == []


@pytest.mark.slow
@pytest.mark.interop
def test_revoked_signer_fails_verify_and_recipient_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "km"
    hsmkm("init", "--ca-subject", "CN=Msg CA", "--ca-key", "p256", "--user-key", "rsa2048", home=home)
    hsmkm("crl", "publish", home=home)
    epfs = {}
    for name in ("rita", "sam"):
        code = hsmkm("user", "add", f"{name}@example.com", "--json", home=home).json()["code"]
        epfs[name] = tmp_path / f"{name}.epf"
        hsmkm(
            "enroll",
            "--km",
            str(home),
            "--email",
            f"{name}@example.com",
            "--code-source",
            "env:CODE",
            "--keystore",
            str(epfs[name]),
            "--password-source",
            "env:PW",
            env={"CODE": code, "PW": PW},
        )
    src = tmp_path / "in.eml"
    src.write_bytes(b"Subject: before\r\n\r\nsigned before the revocation\r\n")
    sig = tmp_path / "signed.eml"
    hsmkm(
        "msg",
        "sign",
        "--keystore",
        str(epfs["rita"]),
        "--password-source",
        "env:PW",
        str(src),
        "-o",
        str(sig),
        env={"PW": PW},
    )
    cache = ["--cache", str(tmp_path / "cache")]
    assert hsmkm("msg", "verify", "--km", str(home), *cache, str(sig), "--json", home=home).json()["valid"]
    hsmkm("user", "revoke", "rita@example.com", "--reason", "keyCompromise", home=home)
    hsmkm("crl", "publish", home=home)
    hsmkm("crl", "fetch", "--km", str(home), *cache)
    r = hsmkm("msg", "verify", "--km", str(home), *cache, str(sig), check=False)
    assert r.returncode == 1 and "revoked on" in r.stderr and "keyCompromise" in r.stderr
    # openssl agrees, with the same CRL.
    ca = x509.load_der_x509_certificate((home / "pub/ca.crt").read_bytes())
    crl = x509.load_der_x509_crl((home / "pub/crl/full.crl").read_bytes())
    # openssl cms takes CRLs from the CAfile.
    (tmp_path / "ca+crl.pem").write_bytes(
        ca.public_bytes(serialization.Encoding.PEM) + crl.public_bytes(serialization.Encoding.PEM)
    )
    o = run(
        "openssl",
        "cms",
        "-verify",
        "-in",
        str(sig),
        "-CAfile",
        str(tmp_path / "ca+crl.pem"),
        "-crl_check",
        "-purpose",
        "smimesign",
    )
    assert o.returncode != 0 and b"certificate revoked" in o.stderr
    # Rita is revoked: nobody encrypts to her; her certificate left the directory.
    r = hsmkm(
        "msg",
        "encrypt",
        "--km",
        str(home),
        *cache,
        "--to",
        "rita@example.com",
        str(src),
        "-o",
        str(tmp_path / "x.eml"),
        check=False,
    )
    assert r.returncode == 2 and "rita@example.com" in r.stderr
    assert not (tmp_path / "x.eml").exists()


@pytest.mark.interop
def test_token_slot_opens_openssl_oaep_sha256_and_ecdh(tmp_path: Path, module_path: str, user_token: MakeToken) -> None:
    """A token key opens an OAEP-SHA256 lock box (SoftHSM2 does OAEP only with SHA-1) and an ECDH one."""
    from conftest import softhsm_conf, softhsm_env

    for user_key in ("rsa2048", "p256"):
        home = tmp_path / user_key
        hsmkm("init", "--ca-subject", "CN=Token CA", "--ca-key", "p256", "--user-key", user_key, home=home)
        env = {**softhsm_env(home), "UPIN": "user-pin-1"}
        user_token("uma", "user-pin-1", store=softhsm_conf(home))
        code = hsmkm("user", "add", "uma@example.com", "--json", home=home).json()["code"]
        uri = f"pkcs11:token=uma?module-path={module_path}&pin-source=env:UPIN"
        hsmkm(
            "enroll",
            "--km",
            str(home),
            "--email",
            "uma@example.com",
            "--code-source",
            "env:CODE",
            "--keystore",
            uri,
            env={**env, "CODE": code},
        )
        enc = x509.load_der_x509_certificate((home / "pub/certs/uma@example.com.enc.crt").read_bytes())
        (tmp_path / "uma.pem").write_bytes(enc.public_bytes(serialization.Encoding.PEM))
        opts = ["-keyopt", "rsa_padding_mode:oaep", "-keyopt", "rsa_oaep_md:sha256"] if user_key == "rsa2048" else []
        o = run(
            "openssl",
            "cms",
            "-encrypt",
            "-aes-256-gcm",
            "-recip",
            str(tmp_path / "uma.pem"),
            *opts,
            input=b"Subject: x\r\n\r\nto the token\r\n",
        )
        assert o.returncode == 0, o.stderr
        (tmp_path / "in.eml").write_bytes(o.stdout)
        out = tmp_path / f"out-{user_key}.eml"
        hsmkm("msg", "decrypt", "--keystore", uri, str(tmp_path / "in.eml"), "-o", str(out), env=env)
        assert out.read_bytes().endswith(b"to the token\r\n")
