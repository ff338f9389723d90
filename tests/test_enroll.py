"""Users, one-time codes, enrollment into an .epf and a token slot, and the key archive."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from conftest import all_bytes_under, hsmkm, make_token, pkcs11_tool_objects, softhsm_conf, softhsm_env, trial_pin

PW = "correct-horse-battery"


def make_user_token(home: Path, label: str, pin: str) -> None:
    """A user's own token in the KM's trial store (as CLI.md suggests for trials)."""
    make_token(label, pin, softhsm_conf(home))


def add_user(home: Path, email: str, name: str | None = None) -> str:
    args = ["user", "add", email, "--json"] + (["--name", name] if name else [])
    return str(hsmkm(*args, home=home).json()["code"])


def enroll_epf(home: Path, email: str, code: str, path: Path, *extra: str, check: bool = True):  # type: ignore[no-untyped-def]
    return hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        email,
        "--code-source",
        "env:CODE",
        "--keystore",
        str(path),
        "--password-source",
        "env:PW",
        "--json",
        *extra,
        env={"CODE": code, "PW": PW},
        check=check,
    )


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory: pytest.TempPathFactory, module_path: str) -> dict[str, Path]:
    """A KM with alice in an .epf and bob on his own token."""
    root = tmp_path_factory.mktemp("enroll")
    home = root / "km"
    hsmkm("init", "--ca-subject", "CN=Enroll CA,O=hsmkm tests", "--ca-key", "p256", "--user-key", "rsa2048", home=home)
    alice = root / "alice.epf"
    enroll_epf(home, "alice@example.com", add_user(home, "alice@example.com", "Alice"), alice)
    make_user_token(home, "bob", "bob-pin-1234")
    code = add_user(home, "bob@example.com", "Bob")
    uri = f"pkcs11:token=bob?module-path={module_path}&pin-source=env:BOB_PIN"
    hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        "bob@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        uri,
        env={"CODE": code, "BOB_PIN": "bob-pin-1234", **softhsm_env(home)},
    )
    return {"home": home, "alice": alice, "root": root}


@pytest.mark.interop
def test_openssl_pkcs12_opens_the_epf(enrolled: dict[str, Path]) -> None:
    proc = subprocess.run(
        ["openssl", "pkcs12", "-in", str(enrolled["alice"]), "-passin", "env:PW", "-nodes", "-info"],
        capture_output=True,
        text=True,
        env={**os.environ, "PW": PW},
    )
    assert proc.returncode == 0, proc.stderr
    assert "MAC: sha256" in proc.stderr and "Iteration 600000" in proc.stderr
    assert "PBES2, PBKDF2, AES-256-CBC" in proc.stderr
    assert proc.stdout.count("BEGIN PRIVATE KEY") == 2 and proc.stdout.count("BEGIN CERTIFICATE") == 3
    assert stat.S_IMODE(enrolled["alice"].stat().st_mode) == 0o600
    wrong = subprocess.run(
        ["openssl", "pkcs12", "-in", str(enrolled["alice"]), "-passin", "pass:nope", "-noout"],
        capture_output=True,
        text=True,
    )
    assert wrong.returncode != 0


@pytest.mark.interop
def test_pkcs11_tool_shows_bob_signing_key_non_extractable_and_certificates(
    enrolled: dict[str, Path], module_path: str
) -> None:
    proc = subprocess.run(
        [
            "pkcs11-tool",
            "--module",
            module_path,
            "--token-label",
            "bob",
            "--login",
            "--pin",
            "bob-pin-1234",
            "--list-objects",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **softhsm_env(enrolled["home"])},
        check=True,
    )
    objects = pkcs11_tool_objects(proc.stdout)
    sign_key = [o for o in objects if o.startswith("Private Key") and "-sign-" in o]
    assert len(sign_key) == 1
    assert "never extractable" in sign_key[0] and "sensitive" in sign_key[0]
    enc_key = [o for o in objects if o.startswith("Private Key") and "-enc-" in o]
    assert len(enc_key) == 1 and "sensitive" in enc_key[0]
    certs = [o for o in objects if o.startswith("Certificate Object")]
    assert len(certs) == 3  # signing, encryption, CA
    ids = {line.split(":", 1)[1].strip() for o in sign_key + enc_key for line in o.splitlines() if "ID:" in line}
    cert_ids = {line.split(":", 1)[1].strip() for o in certs for line in o.splitlines() if "ID:" in line}
    assert ids <= cert_ids, "each key's certificate carries the key's CKA_ID"


@pytest.mark.interop
def test_user_certificates_lint_clean_and_verify(enrolled: dict[str, Path]) -> None:
    home = enrolled["home"]
    ca_pem = enrolled["root"] / "ca.pem"
    ca_pem.write_bytes(
        x509.load_der_x509_certificate((home / "pub" / "ca.crt").read_bytes()).public_bytes(serialization.Encoding.PEM)
    )
    lint = str(Path(sys.executable).parent / "lint_pkix_cert")
    for email in ("alice@example.com", "bob@example.com"):
        for kind in ("enc", "sign"):
            der = (home / "pub" / "certs" / f"{email}.{kind}.crt").read_bytes()
            cert = x509.load_der_x509_certificate(der)
            pem = enrolled["root"] / f"{email}.{kind}.pem"
            pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
            proc = subprocess.run([lint, "lint", "-s", "WARNING", str(pem)], capture_output=True, text=True)
            assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout
            ver = subprocess.run(
                [
                    "openssl",
                    "verify",
                    "-purpose",
                    "smimesign" if kind == "sign" else "smimeencrypt",
                    "-CAfile",
                    str(ca_pem),
                    str(pem),
                ],
                capture_output=True,
                text=True,
            )
            assert ver.returncode == 0 and ": OK" in ver.stdout, ver.stdout + ver.stderr
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert san.get_values_for_type(x509.RFC822Name) == [email]
            ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            if kind == "sign":
                assert ku.digital_signature and ku.content_commitment and not ku.key_encipherment
            else:
                assert ku.key_encipherment and not ku.digital_signature


def test_directory_show_prints_both_certificates(enrolled: dict[str, Path]) -> None:
    out = hsmkm("directory", "show", "alice@example.com", home=enrolled["home"]).stdout
    certs = x509.load_pem_x509_certificates(out.encode())
    assert len(certs) == 2
    js = hsmkm("directory", "show", "alice@example.com", "--json", home=enrolled["home"]).json()
    assert set(js) == {"email", "encrypt", "sign"}


def test_no_plaintext_private_key_in_the_km_home(enrolled: dict[str, Path]) -> None:
    from hsmkm.keys.epf import EpfKeystore

    ks = EpfKeystore.open(enrolled["alice"], PW)
    forms = []
    for entry in [ks.signing_entry(), *ks.encryption_entries()]:
        assert entry is not None
        key = entry.key
        forms.append(
            key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        forms.append(
            key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
        nums = key.private_numbers()
        d = nums.d if isinstance(nums, rsa.RSAPrivateNumbers) else nums.private_value
        forms.append(d.to_bytes((d.bit_length() + 7) // 8, "big"))
    for path, data in all_bytes_under(enrolled["home"]):
        for form in forms:
            assert form not in data, f"private key material in {path}"


def test_bad_codes_and_csr_change_nothing(enrolled: dict[str, Path], tmp_path: Path) -> None:
    home = enrolled["home"]
    code = add_user(home, "carol@example.com", "Carol")
    epf = tmp_path / "carol.epf"
    wrong = enroll_epf(home, "carol@example.com", "AAAA-BBBB-CCCC-DDDD-EEEE-FFFF-GGGG-HHHH", epf, check=False)
    assert wrong.returncode == 2 and "wrong enrollment code" in wrong.stderr and "Traceback" not in wrong.stderr
    assert wrong.stderr.count("\n") == 1 and not epf.exists()
    other = enroll_epf(home, "dave@example.com", code, epf, check=False)
    assert other.returncode == 2 and "unknown user" in other.stderr and not epf.exists()
    # The code was not burnt by the failures:
    ok = enroll_epf(home, "carol@example.com", code, epf)
    assert ok.json()["email"] == "carol@example.com"
    again = enroll_epf(home, "carol@example.com", code, tmp_path / "c2.epf", check=False)
    assert again.returncode == 2 and "already used" in again.stderr and not (tmp_path / "c2.epf").exists()
    exists = enroll_epf(home, "carol@example.com", add_user(home, "erin@example.com"), epf, check=False)
    assert exists.returncode == 2 and "exists" in exists.stderr


def test_wrong_code_attempts_run_out(enrolled: dict[str, Path], tmp_path: Path) -> None:
    home = enrolled["home"]
    code = add_user(home, "frank@example.com")
    for _ in range(5):
        run = enroll_epf(
            home, "frank@example.com", "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA-AAAA", tmp_path / "f.epf", check=False
        )
        assert run.returncode == 2
    locked = enroll_epf(home, "frank@example.com", code, tmp_path / "f.epf", check=False)
    assert locked.returncode == 2 and "too many wrong attempts" in locked.stderr


def test_expired_code_is_refused(enrolled: dict[str, Path], tmp_path: Path) -> None:
    import sqlite3

    home = enrolled["home"]
    code = add_user(home, "gina@example.com")
    with sqlite3.connect(home / "km.db") as conn:
        conn.execute(
            "UPDATE enrollment_codes SET expires_at = '2000-01-01T00:00:00+00:00' WHERE user_id = "
            "(SELECT id FROM users WHERE email = 'gina@example.com')"
        )
    run = enroll_epf(home, "gina@example.com", code, tmp_path / "g.epf", check=False)
    assert run.returncode == 2 and "expired" in run.stderr and not (tmp_path / "g.epf").exists()


def test_csr_for_another_address_or_bad_signature_is_refused(enrolled: dict[str, Path]) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    from hsmkm import errors
    from hsmkm.client.enroll import build_csr
    from hsmkm.km.enroll import enroll
    from hsmkm.km.manager import KeyManager
    from hsmkm.km.publishers import publisher_for
    from hsmkm.protocol import EnrollRequest

    home = enrolled["home"]
    code = add_user(home, "hank@example.com")
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(errors.PolicyViolation, match=re.escape("not hank@example.com")):
        enroll(km, EnrollRequest("hank@example.com", code, build_csr(key, "mallory@example.com")))
    csr = bytearray(build_csr(key, "hank@example.com"))
    csr[-5] ^= 0x01  # inside the signature
    with pytest.raises((errors.SignatureInvalid, errors.MalformedInput)):
        enroll(km, EnrollRequest("hank@example.com", code, bytes(csr)))
    with pytest.raises(errors.MalformedInput):
        enroll(km, EnrollRequest("hank@example.com", code, b"garbage"))
    # None of that burnt the code.
    assert (
        enroll(km, EnrollRequest("hank@example.com", code, build_csr(key, "hank@example.com"))).email
        == "hank@example.com"
    )
    km.close()


def test_wrong_epf_password_changes_nothing(enrolled: dict[str, Path]) -> None:
    before = enrolled["alice"].read_bytes()
    run = hsmkm(
        "keystore",
        "info",
        str(enrolled["alice"]),
        "--password-source",
        "env:PW",
        env={"PW": "wrong-password"},
        check=False,
    )
    assert run.returncode == 2 and "wrong password" in run.stderr
    assert enrolled["alice"].read_bytes() == before


def test_reenable_and_update_keep_the_older_keys(enrolled: dict[str, Path], tmp_path: Path) -> None:
    home = enrolled["home"]
    epf = tmp_path / "ivy.epf"
    enroll_epf(home, "ivy@example.com", add_user(home, "ivy@example.com"), epf)
    hsmkm("user", "revoke", "ivy@example.com", "--reason", "superseded", home=home)
    code = hsmkm("user", "reenable", "ivy@example.com", "--json", home=home).json()["code"]
    enroll_epf(home, "ivy@example.com", code, epf, "--update")
    info = hsmkm("keystore", "info", str(epf), "--password-source", "env:PW", "--json", env={"PW": PW}).json()
    assert len(info["encryption"]) == 2
    shown = hsmkm("user", "show", "ivy@example.com", "--json", home=home).json()
    assert shown["archived_keys"] == 2 and sum(c["current"] for c in shown["certificates"]) == 2


def test_user_import_writes_codes_0600(enrolled: dict[str, Path], tmp_path: Path) -> None:
    csv = tmp_path / "staff.csv"
    csv.write_text("email,name\n" + "".join(f"imp{i}@example.com,Imp {i}\n" for i in range(300)))
    out = hsmkm("user", "import", str(csv), "--json", home=enrolled["home"]).json()
    codes = Path(out["codes_file"])
    assert out["users"] == 300 and stat.S_IMODE(codes.stat().st_mode) == 0o600
    assert len(codes.read_text().splitlines()) == 301
    bad = tmp_path / "bad.csv"
    bad.write_text("ok1@example.com,A\nnot-an-address,B\n")
    run = hsmkm("user", "import", str(bad), home=enrolled["home"], check=False)
    assert run.returncode == 2 and "line 2" in run.stderr
    assert "ok1@example.com" not in hsmkm("user", "list", home=enrolled["home"]).stdout


def _enroll_many(home: str, prefix: str, n: int) -> list[str]:
    """One worker process: add and enroll n users through the library (KM side + client)."""
    from hsmkm.client.enroll import enroll as client_enroll
    from hsmkm.keys.algorithms import KeyAlgorithm
    from hsmkm.keys.epf import EpfKeystore
    from hsmkm.km.enroll_endpoint import answer
    from hsmkm.km.manager import KeyManager
    from hsmkm.km.publishers import publisher_for
    from hsmkm.km.users import add_user as km_add_user

    root = Path(home)
    km = KeyManager.open(
        root, (root / "secrets" / "km.pin").read_text().strip(), actor=prefix, publisher=publisher_for(root)
    )
    serials = []
    for i in range(n):
        email = f"{prefix}{i}@load.example"
        _, code = km_add_user(km, email, None)
        target = EpfKeystore.create(root.parent / f"{prefix}{i}.epf", "password-123", iterations=1000)
        r = client_enroll(target, lambda req: answer(km, req), email, code, KeyAlgorithm.P256)
        serials += [f"{r.sign_serial:x}", f"{r.enc_serial:x}"]
    return serials


@pytest.mark.slow
def test_four_processes_enroll_1000_users_into_one_km(tmp_path: Path) -> None:
    import multiprocessing
    import sqlite3

    home = tmp_path / "km"
    hsmkm("init", "--ca-subject", "CN=Load CA", "--ca-key", "p256", home=home)
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_enroll_many, [str(home)] * 4, ["a", "b", "c", "d"], [250] * 4))
    serials = [s for r in results for s in r]
    assert len(serials) == 2000 and len(set(serials)) == 2000
    with sqlite3.connect(home / "km.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM archive").fetchone()[0] == 1000
        assert conn.execute("SELECT COUNT(DISTINCT serial) FROM certificates WHERE kind != 'ca'").fetchone()[0] == 2000
        assert conn.execute("SELECT COUNT(*) FROM users WHERE status = 'active'").fetchone()[0] == 1000
    verify = hsmkm("audit", "verify", "--json", home=home).json()
    assert verify["ok"] is True and verify["entries"] == 1 + 2000
