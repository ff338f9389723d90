"""Mail as clients send and read it: header protection (RFC 9788) round trips, sender binding
(RFC 8550 §3), 7-bit clear-signed content, signed attributes read leniently, per-recipient
algorithms (RFC 8551 §2.7), and the signer's own revocation."""

from __future__ import annotations

import email
import email.policy
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import hsmkm
from hsmkm import errors, smimecaps
from hsmkm.client import messaging
from hsmkm.cms import protect, sevenbit, signed, smime
from hsmkm.der import der_oid, seq, tlv
from test_cms import ALICE_SIGN, BOB, CTX, PW, VEC, Store, cert

ALICE = Store(ALICE_SIGN, [])
AT = lambda: CTX.now  # noqa: E731  (the vectors' validation time)
FROM_ALICE = "From: Alice <alice@smime.example>"


def _parsed(message: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(message, policy=email.policy.default)


def _fields(message: bytes) -> list[tuple[str, str]]:
    """The header fields a reader sees (decoded), transfer encoding aside."""
    msg = _parsed(message)
    return [
        (k.lower(), str(v)) for k, v in msg.items() if k.lower() not in ("content-transfer-encoding", "mime-version")
    ]


def _bodies(message: bytes) -> list[bytes]:
    """Each leaf part's content, transfer encoding undone, line ends made CRLF."""
    out = []
    for part in _parsed(message).walk():
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True) or b""
        assert isinstance(payload, bytes)
        out.append(smime.canonical(payload).rstrip(b"\r\n"))
    return out


# --- round trips --------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).map(str.strip).filter(bool)
_ascii_words = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9 .,!?-]{0,30}", fullmatch=True).map(str.strip).filter(bool)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """A message as a user writes it: header sets, UTF-8 subjects, plain or multipart/mixed with
    attachments, LF or CRLF line ends."""
    subject = draw(st.one_of(_ascii_words, _text))
    extra = draw(
        st.lists(
            st.sampled_from(
                [
                    ("To", "Bob <bob@smime.example>"),
                    ("Cc", "carol@example.com"),
                    ("Date", "Sat, 20 Feb 2021 10:01:02 -0500"),
                    ("Message-ID", "<m1@lhp.example>"),
                    ("Reply-To", "alice@smime.example"),
                    ("Keywords", "plans"),
                    ("User-Agent", "Sample MUA 1.0"),
                ]
            ),
            unique_by=lambda f: f[0],
            max_size=5,
        )
    )
    head = [FROM_ALICE, f"Subject: {subject}"] + [f"{k}: {v}" for k, v in extra]
    body_text = draw(st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\r\x00"), max_size=200))
    body = body_text.replace("\n", "\r\n").encode()
    if draw(st.booleans()):
        attachment = draw(st.binary(max_size=120))
        import base64

        b64 = base64.encodebytes(attachment).replace(b"\n", b"\r\n")
        head.append('Content-Type: multipart/mixed; boundary="=_b1"')
        body = (
            b"--=_b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            + body
            + b"\r\n--=_b1\r\nContent-Type: application/octet-stream; name=a.bin\r\nContent-Transfer-Encoding: base64\r\n"
            b"Content-Disposition: attachment; filename=a.bin\r\n\r\n" + b64 + b"--=_b1--\r\n"
        )
    else:
        head.append("Content-Type: text/plain; charset=utf-8")
    message = "\r\n".join(head).encode() + b"\r\n\r\n" + body
    if draw(st.booleans()):
        message = message.replace(b"\r\n", b"\n")
    return message


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.booleans())
def test_encrypt_then_decrypt_gives_back_what_the_user_wrote(message: bytes, legacy: bool) -> None:
    out = messaging.encrypt_message(
        message,
        [cert("bob.encrypt.crt")],
        CTX,
        smimecaps.Cipher.AES256_GCM,
        smimecaps.Transport.RSA_OAEP,
        legacy_display=legacy,
    )
    outer = _parsed(out)
    assert outer["Subject"] == protect.OBSCURED_SUBJECT  # hcp_baseline: the Subject travels inside only
    opened = messaging.decrypt_message(out, Store(None, [BOB]), None)
    assert _fields(opened.entity) == _fields(message)
    assert _bodies(opened.entity) == _bodies(message)
    assert opened.warnings == []


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.booleans())
def test_sign_then_verify_gives_back_what_the_user_wrote(message: bytes, detached: bool) -> None:
    out = messaging.sign_message(message, ALICE, detached, AT)
    if detached:  # RFC 8551 §3.1.2: the clear-signed entity is 7-bit
        signed_part = smime.parse(out).detached_content
        assert signed_part is not None and signed_part.isascii()
    result = messaging.verify_message(out, CTX)
    assert result.restored is not None and result.restored.mode is protect.HpMode.CLEAR
    assert _fields(result.restored.message) == _fields(message)
    assert _bodies(result.restored.message) == _bodies(message)
    assert result.warnings == []


def test_sign_then_encrypt_restores_and_binds_the_sender() -> None:
    message = (
        f"{FROM_ALICE}\r\nTo: bob@smime.example\r\nSubject: Handling the Jones contract\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\nsecret\r\n"
    ).encode()
    out = messaging.encrypt_message(
        message,
        [cert("bob.encrypt.crt")],
        CTX,
        smimecaps.Cipher.AES256_CBC,
        smimecaps.Transport.RSA_PKCS1V15,
        sign_with=ALICE,
    )
    assert _parsed(out)["Subject"] == "[...]"
    opened = messaging.decrypt_message(out, Store(None, [BOB]), CTX)
    assert opened.signer is not None and opened.signer.email == "alice@smime.example"
    assert _fields(opened.entity) == _fields(message) and opened.warnings == []


def test_no_confidentiality_policy_keeps_the_subject_outside() -> None:
    message = f"{FROM_ALICE}\r\nSubject: open plans\r\n\r\nhi\r\n".encode()
    out = messaging.encrypt_message(
        message,
        [cert("bob.encrypt.crt")],
        CTX,
        smimecaps.Cipher.AES256_GCM,
        smimecaps.Transport.RSA_OAEP,
        policy=protect.Confidentiality.NO_CONFIDENTIALITY,
    )
    assert _parsed(out)["Subject"] == "open plans"
    opened = messaging.decrypt_message(out, Store(None, [BOB]), None)
    assert opened.restored is not None and opened.restored.header("Subject") == "open plans"


def test_payload_carries_hp_and_hp_outer() -> None:
    p, payload = protect.protect(b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n", protect.HpMode.CIPHER)
    assert b'hp="cipher"' in payload and b"HP-Outer: Subject: [...]\r\n" in payload
    assert b"HP-Outer: From: a@example.com\r\n" in payload and ("Subject", "[...]") in p.outer
    _, clear = protect.protect(b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n", protect.HpMode.CLEAR)
    assert b'hp="clear"' in clear and b"HP-Outer" not in clear


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=400),
    st.lists(st.tuples(st.sampled_from(["From", "Subject", "To", "X-A"]), st.text(max_size=20)), max_size=3),
)
def test_restore_and_seven_bit_take_any_bytes(payload: bytes, outer: list[tuple[str, str]]) -> None:
    restored = protect.restore(payload, outer)
    assert isinstance(restored.message, bytes) and all(isinstance(m, str) for m in restored.mismatches)
    sevenbit.seven_bit(payload)
    protect.has_legacy_display(payload)


# --- what the outer header fields changed ---------------------------------------------------


def _replace_header(message: bytes, name: bytes, value: bytes) -> bytes:
    return re.sub(rb"(?m)^" + name + rb":[^\r\n]*", name + b": " + value, message, count=1)


def test_a_changed_outer_subject_or_from_of_a_signed_message_is_reported() -> None:
    message = f"{FROM_ALICE}\r\nTo: bob@smime.example\r\nSubject: pay 10 EUR\r\n\r\nok\r\n".encode()
    for detached in (False, True):
        out = messaging.sign_message(message, ALICE, detached, AT)
        changed = _replace_header(out, b"Subject", b"pay 1000 EUR")
        result = messaging.verify_message(changed, CTX)
        assert any("Subject" in w and "pay 1000 EUR" in w and "pay 10 EUR" in w for w in result.warnings), (
            result.warnings
        )
        assert result.restored is not None and result.restored.header("Subject") == "pay 10 EUR"
        forged_from = _replace_header(out, b"From", b"ceo@example.com")
        result = messaging.verify_message(forged_from, CTX)  # the protected From is still the signer's
        assert any("From" in w and "ceo@example.com" in w for w in result.warnings), result.warnings


def test_a_changed_outer_subject_of_an_encrypted_message_is_reported() -> None:
    message = f"{FROM_ALICE}\r\nSubject: the real subject\r\n\r\nok\r\n".encode()
    out = messaging.encrypt_message(
        message, [cert("bob.encrypt.crt")], CTX, smimecaps.Cipher.AES256_GCM, smimecaps.Transport.RSA_OAEP
    )
    changed = _replace_header(out, b"Subject", b"URGENT: open the attachment")
    opened = messaging.decrypt_message(changed, Store(None, [BOB]), None)
    assert any("URGENT" in w for w in opened.warnings), opened.warnings
    assert opened.restored is not None and opened.restored.header("Subject") == "the real subject"


def test_a_from_that_is_not_the_signer_is_refused_naming_both() -> None:
    message = b"From: The CEO <ceo@example.com>\r\nSubject: wire the money\r\n\r\nnow\r\n"
    for detached in (False, True):
        out = messaging.sign_message(message, ALICE, detached, AT)
        with pytest.raises(errors.ValidationFailed, match=r"ceo@example\.com.*alice@smime\.example"):
            messaging.verify_message(out, CTX)


def test_the_rfc9788_examples_read_with_the_header_fields_the_rfc_lists() -> None:
    """RFC 9788 appendix C: smime-one-part and smime-multipart (signed, no header protection)
    and smime-enc-signed (signed then encrypted); From, To, Subject as the RFC lists them."""
    expected = {
        "smime-one-part.eml": "smime-one-part",
        "smime-multipart.eml": "smime-multipart",
    }
    for name, subject in expected.items():
        result = messaging.verify_message((VEC / name).read_bytes(), CTX)
        assert result.restored is not None and result.restored.mode is None and result.warnings == []
        restored = _parsed(result.restored.message)
        assert restored["From"] == "Alice <alice@smime.example>" and restored["To"] == "Bob <bob@smime.example>"
        assert restored["Subject"] == subject and f"This is the {subject} message".encode() in result.restored.message
    opened = messaging.decrypt_message((VEC / "smime-enc-signed.eml").read_bytes(), Store(None, [BOB]), CTX)
    restored = _parsed(opened.entity)
    assert opened.signer is not None and opened.signer.email == "alice@smime.example"
    assert restored["Subject"] == "smime-enc-signed" and restored["From"] == "Alice <alice@smime.example>"


def test_draft_era_protected_headers_v1_are_read() -> None:
    """Thunderbird's earlier scheme (protected-headers="v1"): the inner fields are the message's."""
    inner = (
        b'Content-Type: text/plain; charset=utf-8; protected-headers="v1"\r\n'
        b"Subject: inner subject\r\nFrom: Alice <alice@smime.example>\r\n\r\nbody\r\n"
    )
    restored = protect.restore(inner, [("From", "Alice <alice@smime.example>"), ("Subject", "...")])
    assert restored.header("Subject") == "inner subject"
    assert b"protected-headers" not in restored.message and b"Subject: ...\r\n" not in restored.message


# --- 7-bit, canonical clear-signed content --------------------------------------------------


@pytest.mark.interop
def test_utf8_body_is_clear_signed_quoted_printable_and_verifies_at_openssl(tmp_path: Path) -> None:
    message = f"{FROM_ALICE}\nSubject: caf\u00e9\nContent-Type: text/plain; charset=utf-8\n\nGr\u00fc\u00dfe, \u00e9t\u00e9\n".encode()
    out = messaging.sign_message(message, ALICE, True, AT)
    entity = smime.parse(out).detached_content
    assert entity is not None and entity.isascii() and b"Content-Transfer-Encoding: quoted-printable" in entity
    assert b"\n" not in entity.replace(b"\r\n", b"")
    from test_cms import run

    (tmp_path / "s.eml").write_bytes(out.replace(b"\r\n", b"\n"))  # a transport that stores LF
    res = run(
        "openssl",
        "cms",
        "-verify",
        "-in",
        str(tmp_path / "s.eml"),
        "-CAfile",
        str(VEC / "ca.rsa.crt"),
        "-purpose",
        "smimesign",
    )
    assert res.returncode == 0, res.stderr
    assert messaging.verify_message(out.replace(b"\r\n", b"\n"), CTX).email == "alice@smime.example"


def test_seven_bit_reaches_into_multiparts() -> None:
    mp = (
        b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nh\xc3\xa9\r\n'
        b"--XX\r\nContent-Type: application/octet-stream\r\n\r\n\x00\x01\xff\r\n--XX--\r\n"
    )
    out = sevenbit.seven_bit(mp)
    assert out.isascii() and b"quoted-printable" in out and b"base64" in out
    assert _bodies(out) == [b"h\xc3\xa9", b"\x00\x01\xff"]


# --- signed attributes ----------------------------------------------------------------------


def _attr(oid: str, value: bytes) -> bytes:
    return seq(der_oid(oid), tlv(0x31, value))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    signed.OID_SMIME_CAPABILITIES,
                    signed.OID_ENC_KEY_PREF,
                    signed.OID_MS_ENC_KEY_PREF,
                    "1.3.6.1.4.1.311.16.4",
                    "1.2.3.4.5",
                    "1.2.840.113549.1.9.16.2.12",
                ]
            ),
            st.binary(max_size=40),
        ),
        max_size=4,
        unique_by=lambda t: t[0],
    )
)
def test_informative_signed_attributes_never_crash(extra: list[tuple[str, bytes]]) -> None:
    base = [
        _attr("1.2.840.113549.1.9.3", der_oid("1.2.840.113549.1.7.1")),
        _attr("1.2.840.113549.1.9.4", tlv(0x04, b"d" * 32)),
    ]
    attrs = base + [_attr(oid, tlv(0x30, raw)) for oid, raw in extra]
    read = signed.read_signed_attributes(tlv(0x31, b"".join(attrs)))
    assert read.message_digest == b"d" * 32 and read.content_type == "1.2.840.113549.1.7.1"


def test_hsmkm_signatures_carry_capabilities_and_the_encryption_certificate() -> None:
    enc = BOB  # any encryption certificate of the signer's
    out = messaging.sign_message(f"{FROM_ALICE}\r\n\r\nhi\r\n".encode(), Store(ALICE_SIGN, [enc]), False, AT)
    result = messaging.verify_message(out, CTX)
    assert result.capabilities == list(smimecaps.HSMKM_READS)
    assert result.encryption_certificate == enc.certificate


# --- per-recipient algorithms -----------------------------------------------------------------


def test_choice_is_the_strongest_every_recipient_reads() -> None:
    modern = list(smimecaps.PROFILE_CAPABILITIES[smimecaps.ClientProfile.MODERN])
    compat = list(smimecaps.PROFILE_CAPABILITIES[smimecaps.ClientProfile.COMPAT])
    both = smimecaps.choose([modern, compat])
    assert both.cipher is smimecaps.Cipher.AES256_CBC
    assert both.transports == (smimecaps.Transport.RSA_OAEP, smimecaps.Transport.RSA_PKCS1V15)
    assert smimecaps.choose([modern, modern]).cipher is smimecaps.Cipher.AES256_GCM
    assert smimecaps.choose([None]).cipher is smimecaps.Cipher.AES256_GCM  # nothing known: the default profile
    forced = smimecaps.choose([compat], cipher=smimecaps.Cipher.AES256_GCM, transport=smimecaps.Transport.RSA_OAEP)
    assert forced.cipher is smimecaps.Cipher.AES256_GCM and forced.transports == (smimecaps.Transport.RSA_OAEP,)
    odd = smimecaps.choose([["2.16.840.1.101.3.4.1.2"]], names=["old@example.com"])  # AES-128-CBC only
    assert odd.cipher is smimecaps.Cipher.AES256_CBC and "old@example.com" in odd.notes[0]


def test_user_profile_and_key_reach_the_certificate_and_the_choice(km_home: Path, tmp_path: Path) -> None:
    for user, client, key in (("cora@example.com", "compat", "rsa2048"), ("mona@example.com", "modern", "rsa2048")):
        code = hsmkm("--json", "user", "add", user, "--client", client, "--key", key, home=km_home).json()["code"]
        hsmkm(
            "enroll",
            "--km",
            str(km_home),
            "--email",
            user,
            "--code-source",
            "env:CODE",
            "--keystore",
            str(tmp_path / f"{user}.epf"),
            "--password-source",
            "env:PW",
            env={"CODE": code, "PW": PW},
        )
    from cryptography import x509 as cx509

    certs = km_home / "pub" / "certs"
    cora = cx509.load_der_x509_certificate((certs / "cora@example.com.enc.crt").read_bytes())
    assert messaging.certificate_capabilities(cora) == list(
        smimecaps.PROFILE_CAPABILITIES[smimecaps.ClientProfile.COMPAT]
    )
    cora_key = cora.public_key()
    assert (
        isinstance(cora_key, rsa.RSAPublicKey) and cora_key.key_size == 2048
    )  # the per-user key, not the KM's default (P-256 here)
    hsmkm("crl", "publish", home=km_home)
    src = tmp_path / "m.eml"
    src.write_bytes(b"From: cora@example.com\r\nSubject: s\r\n\r\nhello\r\n")

    def kinds(*to: str, extra: tuple[str, ...] = ()) -> bytes:
        out = tmp_path / "out.eml"
        args = [a for t in to for a in ("--to", t)]
        hsmkm("msg", "encrypt", "--km", str(km_home), *args, *extra, str(src), "-o", str(out))
        return out.read_bytes()

    assert b"smime-type=enveloped-data" in kinds("cora@example.com")
    assert b"smime-type=authEnveloped-data" in kinds("mona@example.com")
    assert b"smime-type=enveloped-data" in kinds("mona@example.com", "cora@example.com")
    assert b"smime-type=authEnveloped-data" in kinds("cora@example.com", extra=("--cipher", "aes256-gcm"))
    shown = hsmkm("--json", "user", "show", "cora@example.com", home=km_home).json()
    assert shown["key"] == "rsa2048" and shown["client"] == "compat"
    reenabled = hsmkm("--json", "user", "reenable", "cora@example.com", "--client", "modern", home=km_home).json()
    assert reenabled["code"]
    shown = hsmkm("--json", "user", "show", "cora@example.com", home=km_home).json()
    assert shown["key"] == "rsa2048" and shown["client"] == "modern"  # the key choice kept, the client changed


# --- the signer's own revocation --------------------------------------------------------------


def test_sign_refuses_a_revoked_signing_certificate_and_warns_on_a_stale_cache(km_home: Path, tmp_path: Path) -> None:
    user = "rex@example.com"
    code = hsmkm("--json", "user", "add", user, home=km_home).json()["code"]
    epf = tmp_path / "rex.epf"
    hsmkm(
        "enroll",
        "--km",
        str(km_home),
        "--email",
        user,
        "--code-source",
        "env:CODE",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        env={"CODE": code, "PW": PW},
    )
    src = tmp_path / "m.eml"
    src.write_bytes(f"From: {user}\r\nSubject: s\r\n\r\nhello\r\n".encode())
    cache = tmp_path / "cache"
    hsmkm("crl", "publish", home=km_home)
    hsmkm("crl", "fetch", "--km", str(km_home), "--cache", str(cache))
    ok = hsmkm(
        "msg",
        "sign",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        "--cache",
        str(cache),
        str(src),
        "-o",
        str(tmp_path / "ok.eml"),
        env={"PW": PW},
    )
    assert ok.returncode == 0 and "warning" not in ok.stderr
    hsmkm("user", "revoke", user, "--reason", "keycompromise", home=km_home)
    hsmkm("crl", "publish", home=km_home)
    hsmkm("crl", "fetch", "--km", str(km_home), "--cache", str(cache))
    out = tmp_path / "refused.eml"
    refused = hsmkm(
        "msg",
        "sign",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        "--cache",
        str(cache),
        str(src),
        "-o",
        str(out),
        env={"PW": PW},
        check=False,
    )
    assert refused.returncode == 1 and "revoked" in refused.stderr and not out.exists(), refused.stderr
    with_km = hsmkm(
        "msg",
        "sign",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        "--km",
        str(km_home),
        "--cache",
        str(cache),
        str(src),
        "-o",
        str(out),
        env={"PW": PW},
        check=False,
    )
    assert with_km.returncode == 1 and not out.exists()
    # Time passes beyond the CRL's next update (the cache's record of it is moved back).
    meta_path = cache / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["next_update"] = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    meta_path.write_text(json.dumps(meta))
    stale = hsmkm(
        "msg",
        "sign",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        "--cache",
        str(cache),
        str(src),
        "-o",
        str(out),
        env={"PW": PW},
        check=False,
    )
    assert stale.returncode == 1 and "stale" in stale.stderr, stale.stderr


def test_cli_verify_exits_1_naming_both_when_from_is_not_the_signer(km_home: Path, tmp_path: Path) -> None:
    user = "fay@example.com"
    code = hsmkm("--json", "user", "add", user, home=km_home).json()["code"]
    epf = tmp_path / "fay.epf"
    hsmkm(
        "enroll",
        "--km",
        str(km_home),
        "--email",
        user,
        "--code-source",
        "env:CODE",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        env={"CODE": code, "PW": PW},
    )
    hsmkm("crl", "publish", home=km_home)
    src = tmp_path / "m.eml"
    src.write_bytes(b"From: ceo@example.com\r\nSubject: wire the money\r\n\r\nnow\r\n")
    signed_path = tmp_path / "s.eml"
    hsmkm(
        "msg",
        "sign",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        str(src),
        "-o",
        str(signed_path),
        env={"PW": PW},
    )
    out = tmp_path / "content.eml"
    cache = tmp_path / "cache"
    res = hsmkm(
        "msg", "verify", "--km", str(km_home), "--cache", str(cache), str(signed_path), "-o", str(out), check=False
    )
    assert res.returncode == 1 and "ceo@example.com" in res.stderr and user in res.stderr, res.stderr
    assert not out.exists() and not (cache / "correspondents").exists()  # nothing learnt from a refused message
    src.write_bytes(f"From: Fay <{user}>\r\nSubject: fine\r\n\r\nnow\r\n".encode())
    hsmkm(
        "msg",
        "sign",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        str(src),
        "-o",
        str(signed_path),
        env={"PW": PW},
    )
    res = hsmkm("--json", "msg", "verify", "--km", str(km_home), str(signed_path), "-o", str(out))
    assert res.json()["protected_headers"]["Subject"] == "fine" and out.read_bytes().startswith(
        f"From: Fay <{user}>".encode()
    )


def test_cli_round_trips_give_back_the_message(km_home: Path, tmp_path: Path) -> None:
    """Through the commands (streaming paths): encrypt, with and without signing, with and
    without a legacy display element; sign opaque and clear; the output is what was written."""
    user = "gil@example.com"
    code = hsmkm("--json", "user", "add", user, home=km_home).json()["code"]
    epf = tmp_path / "gil.epf"
    hsmkm(
        "enroll",
        "--km",
        str(km_home),
        "--email",
        user,
        "--code-source",
        "env:CODE",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        env={"CODE": code, "PW": PW},
    )
    hsmkm("crl", "publish", home=km_home)
    message = (
        f"From: Gil <{user}>\nTo: {user}\nSubject: Gr\u00fc\u00dfe\nDate: Sat, 20 Feb 2021 10:01:02 -0500\n"
        "Content-Type: text/plain; charset=utf-8\n\nline one \u00e9\nline two\n"
    ).encode()
    src = tmp_path / "in.eml"
    src.write_bytes(message)
    want = smime.canonical(message)
    ks = ["--password-source", "env:PW"]
    for extra in (
        [],
        ["--legacy-display"],
        ["--sign-with", str(epf), *ks],
        ["--sign-with", str(epf), *ks, "--legacy-display"],
    ):
        enc, out = tmp_path / "enc.eml", tmp_path / "out.eml"
        hsmkm("msg", "encrypt", "--km", str(km_home), "--to", user, *extra, str(src), "-o", str(enc), env={"PW": PW})
        assert b"Subject: [...]" in enc.read_bytes()
        res = hsmkm(
            "--json",
            "msg",
            "decrypt",
            "--keystore",
            str(epf),
            *ks,
            "--km",
            str(km_home),
            str(enc),
            "-o",
            str(out),
            env={"PW": PW},
        ).json()
        assert out.read_bytes() == want, extra
        assert res["protected_headers"]["Subject"] == "Gr\u00fc\u00dfe" and res["header_mismatches"] == []
    for extra in ([], ["--detached"]):
        signed_path, out = tmp_path / "s.eml", tmp_path / "v.eml"
        hsmkm("msg", "sign", "--keystore", str(epf), *ks, *extra, str(src), "-o", str(signed_path), env={"PW": PW})
        hsmkm("msg", "verify", "--km", str(km_home), str(signed_path), "-o", str(out))
        assert _fields(out.read_bytes()) == _fields(message) and _bodies(out.read_bytes()) == _bodies(message)
        if not extra:
            assert out.read_bytes() == want  # opaque: byte for byte


def test_microsofts_encryption_key_attribute_alone_names_the_certificate() -> None:
    enc = cert("bob.encrypt.crt")
    base = [
        _attr("1.2.840.113549.1.9.3", der_oid("1.2.840.113549.1.7.1")),
        _attr("1.2.840.113549.1.9.4", tlv(0x04, b"d" * 32)),
    ]
    read = signed.read_signed_attributes(
        tlv(0x31, b"".join([*base, _attr(signed.OID_MS_ENC_KEY_PREF, signed.issuer_and_serial(enc))]))
    )
    assert read.encryption_key == signed.issuer_and_serial(enc)


def test_announcements_are_replaced_only_by_a_later_signature(tmp_path: Path) -> None:
    from hsmkm.client.correspondents import Correspondents

    store = Correspondents(tmp_path / "c")
    signer, enc = cert("alice.sign.crt"), cert("alice.encrypt.crt")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert store.remember("alice@smime.example", signer, t0, [smimecaps.AES256_GCM], enc)
    assert not store.remember("alice@smime.example", signer, t0 - timedelta(days=1), [smimecaps.AES256_CBC], enc)
    assert store.capabilities_for("alice@smime.example", enc) == [smimecaps.AES256_GCM]
    assert store.capabilities_for("alice@smime.example", cert("bob.encrypt.crt")) is None  # not the certificate named
    assert store.remember("alice@smime.example", signer, t0 + timedelta(days=1), [smimecaps.AES256_CBC], enc)
    assert store.capabilities_for("alice@smime.example", enc) == [smimecaps.AES256_CBC]
    (tmp_path / "c" / "alice@smime.example.json").write_bytes(b"{not json")
    assert store.get("alice@smime.example") is None  # a damaged entry counts as none


def test_a_long_utf8_subject_folds_with_crlf_and_the_clear_signature_verifies() -> None:
    """A UTF-8 Subject long enough to fold into two encoded words: the fold is CRLF, as the
    signed entity travels, so the signature over it still verifies (found by hypothesis)."""
    message = (
        "From: Alice <alice@smime.example>\r\nSubject: 00000" + "\u00a0" * 17 + "\U00010000\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    out = messaging.sign_message(message, ALICE, True, AT)
    signed_part = smime.parse(out).detached_content
    assert signed_part is not None and b"\n" not in signed_part.replace(b"\r\n", b"")
    result = messaging.verify_message(out, CTX)
    assert result.restored is not None and _fields(result.restored.message) == _fields(message)
