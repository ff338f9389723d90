"""The key ceremony (`hsmkm init`), status and the custody of the keys it makes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from pkcs11 import ObjectClass

from conftest import all_bytes_under, hsmkm, pkcs11_tool_objects, softhsm_env, trial_pin
from hsmkm import errors
from hsmkm.keys.pkcs11 import Pkcs11Module
from hsmkm.km import custody
from hsmkm.km.config import Home, KmConfig
from hsmkm.store.db import Database


def test_embedded_init_makes_ca_on_the_token(km_home: Path) -> None:
    cert = x509.load_der_x509_certificate((km_home / "pub" / "ca.crt").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=Test KM CA,O=hsmkm tests"
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True
    assert stat.S_IMODE((km_home / "secrets" / "km.pin").stat().st_mode) == 0o600
    assert not (km_home / "secrets" / "km-recovery.pin").exists()


def test_openssl_parses_the_ca_certificate(km_home: Path) -> None:
    out = subprocess.run(
        ["openssl", "x509", "-in", str(km_home / "pub" / "ca.crt"), "-inform", "DER", "-noout", "-text"],
        capture_output=True, text=True, check=True,
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


def test_pkcs11_tool_shows_ca_and_archive_keys_sensitive_never_extractable(km_home: Path, module_path: str) -> None:
    env = {**os.environ, **softhsm_env(km_home), "PIN": trial_pin(km_home, "km")}
    # pkcs11-tool takes the PIN only in argv; this throwaway test token's PIN is fine there.
    proc = subprocess.run(
        ["pkcs11-tool", "--module", module_path, "--token-label", "hsmkm", "--login",
         "--pin", env["PIN"], "--list-objects"],
        capture_output=True, text=True, env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert "hsmkm-ca" in text and "hsmkm-archive-1" in text
    for label in ("hsmkm-ca", "hsmkm-archive-1", "hsmkm-audit"):
        block = next(b for b in pkcs11_tool_objects(text) if f'label:      {label}' in b and ("Private Key" in b or "Secret Key" in b))
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


def test_recovery_pin_is_nowhere_and_k_officers_rebuild_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ceremony in-process, so the test can see the PIN it split and search for it."""
    from hsmkm.km import ceremony

    seen: dict[str, str] = {}
    real_split = custody.split_and_seal

    def spy(pin: str, officers, quorum: int, epoch: int):  # type: ignore[no-untyped-def]
        seen["pin"] = pin
        return real_split(pin, officers, quorum, epoch)

    monkeypatch.setattr(custody, "split_and_seal", spy)
    root = tmp_path / "home"
    ceremony.run_ceremony(
        ceremony.InitRequest(root=root, ca_subject=x509.Name.from_rfc4514_string("CN=Spy CA"),
                             ca_key_alg=ceremony.KeyAlgorithm.P256)
    )
    pin = seen["pin"].encode()
    for path, data in all_bytes_under(root):
        assert pin not in data, f"recovery PIN found in {path}"
        assert pin.hex().encode() not in data

    home = Home(root)
    config = KmConfig.load(home)
    db = Database.open(home.database)
    officers = custody.active_officers(db.conn)
    assert [o.name for o in officers] == ["officer1", "officer2", "officer3"]
    assert custody.quorum(db.conn) == 2
    module = Pkcs11Module.load(config.km_token.module, config.softhsm_config)
    from hsmkm.km import sealing, shamir

    shares = []
    for o in officers:
        ts = module.open_token(trial_pin(root, o.name), label=o.name)
        key = ts.private_key(label="hsmkm-officer")
        shares.append(sealing.unseal(key, o.sealed_share, custody.share_context(o.name, o.epoch)))
    rebuilt = custody.combine_pin(shares[:2])
    assert rebuilt == seen["pin"]
    assert custody.combine_pin([shares[0], shares[2]]) == seen["pin"]
    # The rebuilt PIN logs in to the recovery token; one share alone does not rebuild it.
    rec = module.open_token(rebuilt, label="km-recovery")
    assert rec.has_object("hsmkm-recovery")
    rec.close()
    # One share (K-1) alone rebuilds something else, which does not log in.
    one = shamir.combine([shamir.decode_share(shares[0])])
    assert one != seen["pin"].encode()
    with pytest.raises(errors.WrongPin):
        module.open_token(one.hex()[:32], label="km-recovery")


def test_init_refuses_an_existing_home(km_home: Path) -> None:
    before = {p: d for p, d in all_bytes_under(km_home) if "tokens" not in p.parts}
    run = hsmkm("init", "--ca-subject", "CN=Again", home=km_home, check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("hsmkm: error: ") and run.stderr.count("\n") == 1
    assert "Traceback" not in run.stderr
    after = {p: d for p, d in all_bytes_under(km_home) if "tokens" not in p.parts}
    assert before == after


def test_init_with_missing_module_is_exit_3_and_leaves_nothing(fresh_home: Path) -> None:
    run = hsmkm("init", "--ca-subject", "CN=X", "--module", "/nonexistent/libpkcs11.so",
                "--pin-source", "env:P", "--recovery-token", "r", "--recovery-pin-source", "env:P",
                home=fresh_home, env={"P": "1234"}, check=False)
    assert run.returncode == 3, run.stderr
    assert run.stderr.startswith("hsmkm: error: ") and "Traceback" not in run.stderr
    assert not fresh_home.exists()


def _external_store(tmp_path: Path, labels: list[str], pin: str) -> dict[str, str]:
    """A SoftHSM2 store with the named tokens, all with ``pin`` (test tokens)."""
    from hsmkm.keys.softhsm import find_softhsm_module, init_token, write_store_config

    conf = write_store_config(tmp_path / "store")
    env = {"SOFTHSM2_CONF": str(conf)}
    script = (
        "import sys; from hsmkm.keys.pkcs11 import Pkcs11Module; "
        "from hsmkm.keys.softhsm import find_softhsm_module, init_token; "
        "m = Pkcs11Module.load(find_softhsm_module()); "
        "[init_token(m, l, 'so-pin-1234', sys.argv[1]) for l in sys.argv[2:]]"
    )
    subprocess.run([__import__("sys").executable, "-c", script, pin, *labels],
                   env={**os.environ, **env}, check=True)
    assert find_softhsm_module() and init_token and conf.exists()
    return env


def test_init_on_external_tokens_wrong_pin_unknown_token(tmp_path: Path, module_path: str) -> None:
    env = _external_store(tmp_path, ["km", "rec", "ann", "bo", "cy"], "1234")
    env.update({"PIN": "1234", "BAD": "9999"})
    officers = []
    for name in ("ann", "bo", "cy"):
        officers += ["--officer", f"{name}=pkcs11:token={name}?module-path={module_path}&pin-source=env:PIN"]
    base = ["init", "--ca-subject", "CN=External CA", "--ca-key", "p256", "--module", module_path,
            "--token", "km", "--recovery-token", "rec", "--recovery-pin-source", "env:PIN", "--quorum", "2"]
    home = tmp_path / "ext"

    wrong = hsmkm(*base, "--pin-source", "env:BAD", *officers, home=home, env=env, check=False)
    assert wrong.returncode == 2 and "wrong PIN" in wrong.stderr and "Traceback" not in wrong.stderr
    assert not home.exists()

    unknown = hsmkm(*base[:-6], "--token", "nope", "--recovery-token", "rec", "--recovery-pin-source",
                    "env:PIN", "--pin-source", "env:PIN", *officers, home=home, env=env, check=False)
    assert unknown.returncode == 3 and "no token" in unknown.stderr, unknown.stderr
    assert not home.exists()

    literal = hsmkm(*base, "--pin-source", "1234", *officers, home=home, env=env, check=False)
    assert literal.returncode == 2 and "literal secrets are refused" in literal.stderr
    assert "1234" not in literal.stderr

    ok = hsmkm(*base, "--pin-source", "env:PIN", *officers, "--json", home=home, env=env)
    assert ok.json()["officers"] == ["ann", "bo", "cy"] and ok.json()["quorum"] == 2
    # The recovery token's PIN was replaced: the old one no longer logs in.
    script = (
        "import sys; from hsmkm.keys.pkcs11 import Pkcs11Module; from hsmkm.keys.softhsm import find_softhsm_module\n"
        "m = Pkcs11Module.load(find_softhsm_module())\n"
        "try:\n    m.open_token('1234', label='rec'); print('opened')\n"
        "except Exception as e:\n    print(type(e).__name__)\n"
    )
    out = subprocess.run([__import__("sys").executable, "-c", script], env={**os.environ, **env},
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "WrongPin"
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
    from datetime import datetime, timedelta, timezone

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    parent_key = ec.generate_private_key(ec.SECP256R1())
    parent = x509.Name.from_rfc4514_string("CN=Parent")
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(csr.subject).issuer_name(parent)
        .public_key(csr.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(days=30))
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
