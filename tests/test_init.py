"""The key ceremony (`hsmkm init`), status and the custody of the keys it makes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from datetime import UTC
from pathlib import Path

import pytest
from cryptography import x509
from pkcs11 import ObjectClass

from conftest import MakeToken, all_bytes_under, hsmkm, pkcs11_tool_objects, softhsm_env, trial_pin
from hsmkm import keys
from hsmkm.keys.pkcs11 import Pkcs11Module
from hsmkm.km import custody
from hsmkm.km.config import Home, KmConfig
from hsmkm.store.database import Database


def test_embedded_init_makes_ca_on_the_token(km_home: Path) -> None:
    cert = x509.load_der_x509_certificate((km_home / "pub" / "ca.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=Test KM CA,O=hsmkm tests"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True
    assert stat.S_IMODE((km_home / "secrets" / "km.pin").stat().st_mode) == 0o600
    assert not (km_home / "secrets" / "km-recovery.pin").exists()


@pytest.mark.interop
def test_openssl_parses_the_ca_certificate(km_home: Path) -> None:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(km_home / "pub" / "ca.crt"), "-inform", "DER", "-noout", "-text"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "CA:TRUE" in out and "Certificate Sign, CRL Sign" in out


def test_pkilint_reports_nothing_on_the_ca_certificate(km_home: Path, tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    cert = x509.load_der_x509_certificate((km_home / "pub" / "ca.crt").read_bytes())
    from cryptography.hazmat.primitives.serialization import Encoding

    pem.write_bytes(cert.public_bytes(Encoding.PEM))
    lint = Path(sys.executable).parent / "lint_pkix_cert"
    proc = subprocess.run([str(lint), "lint", "-s", "WARNING", str(pem)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


@pytest.mark.interop
def test_pkcs11_tool_shows_ca_and_archive_keys_sensitive_never_extractable(km_home: Path, module_path: str) -> None:
    env = {**os.environ, **softhsm_env(km_home), "PIN": trial_pin(km_home, "km")}
    # pkcs11-tool takes the PIN only in argv; this throwaway test token's PIN is fine there.
    proc = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            module_path,
            "--token-label",
            "hsmkm",
            "--login",
            "--pin",
            env["PIN"],
            "--list-objects",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "hsmkm-ca" in text and "hsmkm-archive-1" in text
    for label in ("hsmkm-ca", "hsmkm-archive-1", "hsmkm-audit"):
        block = next(
            b
            for b in pkcs11_tool_objects(text)
            if f"label:      {label}" in b and ("Private Key" in b or "Secret Key" in b)
        )
        assert "sensitive" in block, block
        assert "never extractable" in block, block
        assert "extractable" not in block.replace("never extractable", ""), block


def test_custody_attributes_through_pkcs11(km_home: Path) -> None:
    home = Home(km_home)
    config = KmConfig.load(home)
    module = Pkcs11Module.load(config.km_token.module, config.softhsm_config)
    ts = module.open_token(trial_pin(km_home, "km"), label="hsmkm")
    for label, cls in (
        ("hsmkm-ca", ObjectClass.PRIVATE_KEY),
        ("hsmkm-archive-1", ObjectClass.SECRET_KEY),
        ("hsmkm-audit", ObjectClass.SECRET_KEY),
    ):
        a = ts.attributes(label, cls)
        assert a.sensitive is True and a.extractable is False
        assert a.always_sensitive is True and a.never_extractable is True
        assert a.token is True
    assert ts.attributes("hsmkm-ca", ObjectClass.PRIVATE_KEY).usages == ("sign",)
    assert set(ts.attributes("hsmkm-archive-1", ObjectClass.SECRET_KEY).usages) == {"encrypt", "decrypt"}


def test_init_makes_no_recovery_token_and_one_officer_key_per_officer_token(km_home: Path) -> None:
    """The archive is split among the officers' keys (share epoch 1); no recovery token or key
    exists, and each officer's key is on its own token."""
    home = Home(km_home)
    config = KmConfig.load(home)
    assert config.recovery_token is None
    db = Database.open(home.database)
    from hsmkm.km import epochs

    with db.read() as tx:
        epoch = epochs.active(tx)
    assert (epoch.number, epoch.quorum) == (1, 2)
    assert [(o.name, o.x) for o in epoch.officers] == [("officer1", 1), ("officer2", 2), ("officer3", 3)]
    assert db.get_meta("recovery_public_key") is None
    module = Pkcs11Module.load(config.km_token.module, config.softhsm_config)
    assert "km-recovery" not in module.token_labels()
    serials = set()
    for o in epoch.officers:
        ts = module.open_token(trial_pin(km_home, o.name), label=o.name)
        assert custody.public_der(ts.private_key(label="hsmkm-officer").public_key()) == custody.public_der(
            o.public_key
        )
        serials.add(ts.serial)
    assert len(serials) == 3
    db.close()


def test_init_refuses_an_existing_home(km_home: Path) -> None:
    before = {p: d for p, d in all_bytes_under(km_home) if "tokens" not in p.parts}
    run = hsmkm("init", "--ca-subject", "CN=Again", home=km_home, check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("hsmkm: error: ") and run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr
    after = {p: d for p, d in all_bytes_under(km_home) if "tokens" not in p.parts}
    assert before == after


def test_init_with_missing_module_is_exit_3_and_leaves_nothing(fresh_home: Path) -> None:
    run = hsmkm(
        "init",
        "--ca-subject",
        "CN=X",
        "--module",
        "/nonexistent/libpkcs11.so",
        "--pin-source",
        "env:P",
        home=fresh_home,
        env={"P": "1234"},
        check=False,
    )
    assert run.returncode == 3, run.stderr
    assert run.stderr.startswith("hsmkm: error: ") and "Traceback" not in run.stderr
    assert not fresh_home.exists()


def _external_store(user_token: MakeToken, labels: list[str], pin: str) -> dict[str, str]:
    """A SoftHSM2 store with the named tokens, all with ``pin`` (test tokens)."""
    confs = {user_token(label, pin) for label in labels}
    assert len(confs) == 1  # one store holds them all
    env = {"SOFTHSM2_CONF": str(confs.pop())}
    slots = subprocess.run(
        ["softhsm2-util", "--show-slots"], env={**os.environ, **env}, capture_output=True, text=True, check=True
    ).stdout
    made = [line.split(":", 1)[1].strip() for line in slots.splitlines() if line.strip().startswith("Label:")]
    assert sorted(label for label in made if label) == sorted(labels)
    return env


def test_init_on_external_tokens_wrong_pin_unknown_token(
    tmp_path: Path, module_path: str, user_token: MakeToken
) -> None:
    env = _external_store(user_token, ["km", "rec", "ann", "bo", "cy"], "1234")
    env.update({"PIN": "1234", "BAD": "9999"})
    officers = []
    for name in ("ann", "bo", "cy"):
        officers += ["--officer", f"{name}=pkcs11:token={name}?module-path={module_path}&pin-source=env:PIN"]
    base = [
        "init",
        "--ca-subject",
        "CN=External CA",
        "--ca-key",
        "p256",
        "--module",
        module_path,
        "--token",
        "km",
        "--quorum",
        "2",
    ]
    home = tmp_path / "ext"

    wrong = hsmkm(*base, "--pin-source", "env:BAD", *officers, home=home, env=env, check=False)
    assert wrong.returncode == 2 and "wrong PIN" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not home.exists()

    unknown = hsmkm(
        *base[:-4],
        "--token",
        "nope",
        "--quorum",
        "2",
        "--pin-source",
        "env:PIN",
        *officers,
        home=home,
        env=env,
        check=False,
    )
    assert unknown.returncode == 3 and "no token" in unknown.stderr, unknown.stderr
    assert not home.exists()

    literal = hsmkm(*base, "--pin-source", "1234", *officers, home=home, env=env, check=False)
    assert literal.returncode == 2 and "literal secrets are refused" in literal.stderr
    assert "1234" not in literal.stderr

    # One person, one officer: two officers on one token, or an officer on the KM token, are refused.
    twice = hsmkm(
        *base,
        "--pin-source",
        "env:PIN",
        *officers[:4],
        "--officer",
        f"cy=pkcs11:token=bo?module-path={module_path}&pin-source=env:PIN",
        home=home,
        env=env,
        check=False,
    )
    assert twice.returncode == 2 and "already holds another officer's key" in twice.stderr, twice.stderr
    assert twice.stderr.count("\n") == 1 and not home.exists()
    on_km = hsmkm(
        *base,
        "--pin-source",
        "env:PIN",
        *officers[:4],
        "--officer",
        f"cy=pkcs11:token=km?module-path={module_path}&pin-source=env:PIN",
        home=home,
        env=env,
        check=False,
    )
    assert on_km.returncode == 2 and "is the KM token" in on_km.stderr, on_km.stderr
    assert not home.exists()

    # --recovery-token is accepted for older scripts, with a warning; no recovery key is made.
    ok = hsmkm(*base, "--recovery-token", "rec", "--pin-source", "env:PIN", *officers, "--json", home=home, env=env)
    assert ok.json()["officers"] == ["ann", "bo", "cy"] and ok.json()["quorum"] == 2
    assert "deprecated and ignored" in ok.stderr
    rec = keys.open_token(f"pkcs11:token=rec?module-path={module_path}", "1234", softhsm_config=env["SOFTHSM2_CONF"])
    assert rec.has_object("hsmkm-recovery") is False
    st = hsmkm("status", "--json", "--pin-source", "env:PIN", home=home, env=env).json()
    assert st["officers"] == ["ann", "bo", "cy"] and st["token"]["label"] == "km"


def test_status_reports_keys_counts_and_officers(km_home: Path) -> None:
    st = hsmkm("status", "--json", home=km_home).json()
    assert st["token"]["reachable"] is True and st["embedded"] is True
    labels = {k["label"]: k for k in st["keys"]}
    assert labels["hsmkm-ca"]["sensitive"] is True and labels["hsmkm-ca"]["extractable"] is False
    assert st["officers"] == ["officer1", "officer2", "officer3"] and st["quorum"] == 2
    assert st["counts"]["audit_entries"] >= 1


def test_status_with_wrong_pin_is_one_line_exit_2(km_home: Path) -> None:
    run = hsmkm("status", "--pin-source", "env:BAD", home=km_home, env={"BAD": "wrong-pin"}, check=False)
    assert run.returncode == 2
    assert run.stderr.strip().startswith("hsmkm: error:") and "wrong PIN" in run.stderr
    assert run.stderr.count("\n") == 1 and "wrong-pin" not in run.stderr


def test_no_home_is_a_clear_error(tmp_path: Path) -> None:
    run = hsmkm("status", home=tmp_path / "nothing", check=False)
    assert run.returncode == 2 and "hsmkm init" in run.stderr


def test_subordinate_ca_csr_then_import(tmp_path: Path) -> None:
    home = tmp_path / "sub"
    out = hsmkm("init", "--ca-subject", "CN=Sub CA", "--ca-key", "p256", "--csr", "--json", home=home).json()
    csr = x509.load_pem_x509_csr(Path(out["csr"]).read_bytes())
    assert csr.is_signature_valid
    # A parent CA (software, for the test) issues the subordinate certificate.
    from datetime import datetime, timedelta

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    parent_key = ec.generate_private_key(ec.SECP256R1())
    parent = x509.Name.from_rfc4514_string("CN=Parent")
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(parent)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
        .sign(parent_key, hashes.SHA256())
    )
    pem = tmp_path / "sub.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(b"not a certificate")
    bad = hsmkm("ca", "import", str(wrong), home=home, check=False)
    assert bad.returncode == 2 and not (home / "pub" / "ca.crt").exists()
    hsmkm("ca", "import", str(pem), home=home)
    assert x509.load_der_x509_certificate((home / "pub" / "ca.crt").read_bytes()) == cert
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True
    shutil.rmtree(home)
