"""Token-gated recovery: K-of-N approvals on officers' tokens, one-use quorum, export or
re-enrollment, officer changes, archive key rotation, and what an operator alone cannot do."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import all_bytes_under, hsmkm, trial_pin
from hsmkm import errors
from hsmkm.keys.epf import EpfKeystore
from hsmkm.km import custody, recovery
from hsmkm.km.manager import KeyManager

PW = "correct-horse-battery"


def _enroll(home: Path, email: str, epf: Path, update: bool = False) -> None:
    if update:
        code = hsmkm("user", "reenable", email, "--json", home=home).json()["code"]
    else:
        code = hsmkm("user", "add", email, "--json", home=home).json()["code"]
    hsmkm("enroll", "--km", str(home), "--email", email, "--code-source", "env:CODE", "--keystore", str(epf),
          "--password-source", "env:PW", *(["--update"] if update else []), env={"CODE": code, "PW": PW})


@pytest.fixture
def km_with_alice(tmp_path: Path) -> dict[str, Path]:
    """Alice enrolled twice (a current and a historical key), and a message to her old key."""
    home = tmp_path / "km"
    hsmkm("init", "--ca-subject", "CN=Recovery CA", "--ca-key", "p256", "--user-key", "rsa2048", home=home)
    epf = tmp_path / "alice.epf"
    _enroll(home, "alice@example.com", epf)
    old_cert = tmp_path / "old-enc.pem"
    old_cert.write_bytes(x509.load_der_x509_certificate((home / "pub/certs/alice@example.com.enc.crt").read_bytes())
                         .public_bytes(serialization.Encoding.PEM))
    msg = tmp_path / "before.txt"
    msg.write_text("sent before the loss\n")
    subprocess.run(["openssl", "cms", "-encrypt", "-aes-256-gcm", "-in", str(msg), "-out", str(tmp_path / "old.p7m"),
                    "-outform", "DER", "-recip", str(old_cert), "-keyopt", "rsa_padding_mode:oaep",
                    "-keyopt", "rsa_oaep_md:sha256"], check=True)
    _enroll(home, "alice@example.com", epf, update=True)
    return {"home": home, "epf": epf, "root": tmp_path}


def test_one_approval_is_not_enough_two_export_current_and_history(km_with_alice: dict[str, Path]) -> None:
    home, root = km_with_alice["home"], km_with_alice["root"]
    rid = hsmkm("recovery", "request", "alice@example.com", "--reason", "lost laptop", "--json", home=home).json()["id"]
    hsmkm("recovery", "approve", str(rid), "--officer", "officer1", home=home)
    out = root / "alice-recovered.p12"
    short = hsmkm("recovery", "complete", str(rid), "--out", str(out), "--password-source", "env:OUT",
                  home=home, env={"OUT": "export-pass"}, check=False)
    assert short.returncode == 1 and "1 of 2 approvals" in short.stderr and not out.exists()
    dup = hsmkm("recovery", "approve", str(rid), "--officer", "officer1", home=home, check=False)
    assert dup.returncode == 2 and "already approved" in dup.stderr
    nobody = hsmkm("recovery", "approve", str(rid), "--officer", "mallory", home=home, check=False)
    assert nobody.returncode == 2 and "not a recovery officer" in nobody.stderr
    hsmkm("recovery", "approve", str(rid), "--officer", "officer3", home=home)
    done = hsmkm("recovery", "complete", str(rid), "--out", str(out), "--password-source", "env:OUT", "--json",
                 home=home, env={"OUT": "export-pass"}).json()
    assert done["keys"] == 2
    store = EpfKeystore.open(out, "export-pass")
    entries = store.encryption_entries()
    assert len(entries) == 2
    for e in entries:
        assert e.key.public_key().public_numbers() == e.certificate.public_key().public_numbers()  # type: ignore[union-attr]
    # openssl, with the exported keys, opens the message sent to the old key before the loss.
    pem = root / "exported.pem"
    subprocess.run(["openssl", "pkcs12", "-in", str(out), "-passin", "pass:export-pass", "-nodes", "-out", str(pem)],
                   check=True)
    keys = [b for b in pem.read_text().split("-----END PRIVATE KEY-----") if "BEGIN PRIVATE KEY" in b]
    opened = []
    for i, block in enumerate(keys):
        kf = root / f"k{i}.pem"
        kf.write_text(block[block.index("-----BEGIN PRIVATE KEY-----"):] + "-----END PRIVATE KEY-----\n")
        proc = subprocess.run(["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(root / "old.p7m"),
                               "-inkey", str(kf)], capture_output=True)
        if proc.returncode == 0:
            opened.append(proc.stdout)
    assert opened == [b"sent before the loss\r\n"]  # openssl cms -encrypt canonicalises to CRLF
    # The quorum bought exactly one recovery: the same request, and the same approvals, are spent.
    again = hsmkm("recovery", "complete", str(rid), "--out", str(root / "again.p12"), "--password-source", "env:OUT",
                  home=home, env={"OUT": "export-pass"}, check=False)
    assert again.returncode == 2 and "completed" in again.stderr
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


def test_reenable_gives_the_user_their_archived_keys(km_with_alice: dict[str, Path]) -> None:
    home, root = km_with_alice["home"], km_with_alice["root"]
    rid = hsmkm("recovery", "request", "alice@example.com", "--reason", "forgot password", "--json", home=home).json()["id"]
    for officer in ("officer2", "officer3"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, home=home)
    code = hsmkm("recovery", "complete", str(rid), "--reenable", "--json", home=home).json()["code"]
    with sqlite3.connect(home / "km.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM recovered").fetchone()[0] == 2
    new = root / "alice-new.epf"
    out = hsmkm("enroll", "--km", str(home), "--email", "alice@example.com", "--code-source", "env:CODE",
                "--keystore", str(new), "--password-source", "env:PW", "--json", env={"CODE": code, "PW": PW}).json()
    assert out["history_keys"] == 2
    store = EpfKeystore.open(new, PW)
    assert len(store.encryption_entries()) == 3  # the new key and the two recovered ones
    with sqlite3.connect(home / "km.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM recovered").fetchone()[0] == 0


def _spy_pins(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = custody.split_and_seal

    def spy(pin, officers, quorum, epoch):  # type: ignore[no-untyped-def]
        seen.append(pin)
        return real(pin, officers, quorum, epoch)

    monkeypatch.setattr(custody, "split_and_seal", spy)
    return seen


def test_recovery_pin_never_on_disk_and_old_shares_are_dead(km_with_alice: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    home = km_with_alice["home"]
    pins = _spy_pins(monkeypatch)
    km = KeyManager.open(home, trial_pin(home, "km"))
    old_shares = {o.name: o.sealed_share for o in custody.active_officers(km.db.conn)}
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "test", email="alice@example.com")
    from hsmkm.keys.pkcs11 import Pkcs11Module

    module = Pkcs11Module.load(km.config.km_token.module, km.config.softhsm_config)
    for name in ("officer1", "officer2"):
        recovery.approve(km, req.id, name, module.open_token(trial_pin(home, name), label=name))
    done = recovery.complete_recovery(km, req.id, None, reenable=True)
    assert len(done.keys) == 2 and len(pins) == 1
    new_pin = pins[0].encode()
    for path, data in all_bytes_under(home):
        assert new_pin not in data, f"recovery PIN in {path}"
    # The old shares rebuild the old PIN, which no longer opens the recovery token.
    from hsmkm.km import sealing

    shares = [sealing.unseal(module.open_token(trial_pin(home, n), label=n).private_key(label="hsmkm-officer"),
                             old_shares[n], custody.share_context(n, 1)) for n in ("officer1", "officer3")]
    with pytest.raises(errors.WrongPin):
        module.open_token(custody.combine_pin(shares), label="km-recovery")
    # …and an approval of the finished request does not count for a new one.
    req2 = recovery.open_request(km, recovery.RequestKind.RECOVERY, "again", email="alice@example.com")
    with sqlite3.connect(home / "km.db") as conn:
        conn.execute("INSERT INTO approvals(request_id, officer, signature, sealed_share, approved_at) "
                     "SELECT ?, officer, signature, sealed_share, approved_at FROM approvals WHERE request_id = ?",
                     (req2.id, req.id))
    assert recovery.valid_approvals(km, recovery._load(km.db.conn, req2.id)) == []
    with pytest.raises(errors.QuorumNotMet):
        recovery.complete_recovery(km, req2.id, None, reenable=False)


def test_operator_with_km_pin_and_database_cannot_recover(km_with_alice: dict[str, Path]) -> None:
    """Every path an operator holding the KM token's PIN and the whole database could take."""
    home = km_with_alice["home"]
    km = KeyManager.open(home, trial_pin(home, "km"))
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "insider", email="alice@example.com")
    # 1. complete without approvals
    with pytest.raises(errors.QuorumNotMet):
        recovery.complete_recovery(km, req.id, None, reenable=False)
    # 2. forge approvals: rows whose signatures are not the officers'
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    from hsmkm.km import archive, sealing

    forger = ec.generate_private_key(ec.SECP256R1())
    with sqlite3.connect(home / "km.db") as conn:
        for name in ("officer1", "officer2"):
            conn.execute("INSERT INTO approvals(request_id, officer, signature, sealed_share, approved_at) VALUES "
                         "(?, ?, ?, ?, '2026-01-01')", (req.id, name, forger.sign(req.digest, ec.ECDSA(hashes.SHA256())),
                                                       sealing.seal(req.public_key, b"\x01\x01guess", b"x")))
    with pytest.raises(errors.QuorumNotMet):
        recovery.complete_recovery(km, req.id, None, reenable=False)
    # 3. open the officers' sealed shares with KM-token keys: they are sealed to the officers' tokens
    request_key = km.session.private_key(label=req.key_label)
    for o in custody.active_officers(km.db.conn):
        with pytest.raises((errors.SignatureInvalid, errors.MalformedInput)):
            sealing.unseal(request_key, o.sealed_share, custody.share_context(o.name, o.epoch))
    # 4. open an archive record with the KM token alone: the at-rest layer opens, the recovery
    #    layer needs the recovery key, which is on a token whose PIN nobody holds.
    rec = archive.records_for_user(km.db.conn, 1)[0]
    inner = archive.open_outer(rec, km.archive_key)
    for candidate in (km.session.private_key(label="hsmkm-ca"), request_key):
        with pytest.raises((errors.SignatureInvalid, errors.MalformedInput)):
            archive.open_inner(rec, inner, candidate)
    from hsmkm.km.manager import open_token

    with pytest.raises(errors.WrongPin):
        open_token(km.config.recovery_token, trial_pin(home, "km"), km.config.softhsm_config)


def test_expired_and_mismatched_approvals_are_refused(km_with_alice: dict[str, Path]) -> None:
    from datetime import timedelta

    home = km_with_alice["home"]
    km = KeyManager.open(home, trial_pin(home, "km"))
    from hsmkm.keys.pkcs11 import Pkcs11Module

    module = Pkcs11Module.load(km.config.km_token.module, km.config.softhsm_config)
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "x", email="alice@example.com")
    officer1 = module.open_token(trial_pin(home, "officer1"), label="officer1")
    officer2 = module.open_token(trial_pin(home, "officer2"), label="officer2")
    with pytest.raises(errors.PolicyViolation, match="registered key"):
        recovery.approve(km, req.id, "officer1", officer2)  # officer2's token for officer1
    later = KeyManager.open(home, trial_pin(home, "km"),
                            clock=lambda: km.clock() + timedelta(hours=km.config.recovery_request_hours + 1))
    with pytest.raises(errors.PolicyViolation, match="expired"):
        recovery.approve(later, req.id, "officer1", officer1)
    before = sqlite3.connect(home / "km.db").execute("SELECT COUNT(*) FROM approvals").fetchone()[0]
    assert before == 0


def test_crash_between_steps_of_complete_can_be_rerun(km_with_alice: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    home = km_with_alice["home"]
    km = KeyManager.open(home, trial_pin(home, "km"))
    from hsmkm.keys.pkcs11 import Pkcs11Module, TokenSession

    module = Pkcs11Module.load(km.config.km_token.module, km.config.softhsm_config)
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "crash", email="alice@example.com")
    for name in ("officer1", "officer2"):
        recovery.approve(km, req.id, name, module.open_token(trial_pin(home, name), label=name))

    class Crash(Exception):
        pass

    # Crash right after the token's PIN was changed, before the new split is active.
    real_set_pin = TokenSession.set_pin

    def set_pin_then_crash(self, old, new):  # type: ignore[no-untyped-def]
        real_set_pin(self, old, new)
        raise Crash()

    monkeypatch.setattr(TokenSession, "set_pin", set_pin_then_crash)
    with pytest.raises(Crash):
        recovery.complete_recovery(km, req.id, None, reenable=False)
    monkeypatch.setattr(TokenSession, "set_pin", real_set_pin)
    assert recovery._load(km.db.conn, req.id).status is recovery.RequestStatus.OPEN
    done = recovery.complete_recovery(km, req.id, None, reenable=False)
    assert len(done.keys) == 2
    # The new split works: two officers rebuild the new PIN for the next request.
    req2 = recovery.open_request(km, recovery.RequestKind.RECOVERY, "after", email="alice@example.com")
    for name in ("officer2", "officer3"):
        recovery.approve(km, req2.id, name, module.open_token(trial_pin(home, name), label=name))
    assert len(recovery.complete_recovery(km, req2.id, None, reenable=False).keys) == 2


def test_officer_changes_need_a_quorum_and_resplit(km_with_alice: dict[str, Path], module_path: str) -> None:
    home = km_with_alice["home"]
    env = {"SOFTHSM2_CONF": str(home / "softhsm" / "softhsm2.conf"), "DANA_PIN": "dana-pin-1"}
    script = ("import sys; from hsmkm.keys.pkcs11 import Pkcs11Module; from hsmkm.keys.softhsm import "
              "find_softhsm_module, init_token; init_token(Pkcs11Module.load(find_softhsm_module()), 'dana', 'so-dana-1', 'dana-pin-1')")
    subprocess.run([os.sys.executable, "-c", script], env={**os.environ, **env}, check=True)  # type: ignore[attr-defined]
    uri = f"pkcs11:token=dana?module-path={module_path}&pin-source=env:DANA_PIN"
    opened = hsmkm("officer", "add", "dana", "--token", uri, "--json", home=home, env=env).json()
    rid = opened["id"]
    early = hsmkm("officer", "add", "dana", "--token", uri, "--request", str(rid), home=home, env=env, check=False)
    assert early.returncode == 1 and "0 of 2" in early.stderr
    for officer in ("officer1", "officer2"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, home=home, env=env)
    hsmkm("officer", "add", "dana", "--token", uri, "--request", str(rid), home=home, env=env)
    listed = hsmkm("officer", "list", "--json", home=home).json()
    assert [o["name"] for o in listed["officers"]] == ["dana", "officer1", "officer2", "officer3"]
    # officer3 lost their token: the others remove them.
    rid = hsmkm("officer", "remove", "officer3", "--json", home=home).json()["id"]
    for officer in ("dana", "officer1"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, home=home, env=env)
    hsmkm("officer", "remove", "officer3", "--request", str(rid), home=home)
    rid = hsmkm("recovery", "policy", "--quorum", "3", "--json", home=home).json()["id"]
    for officer in ("dana", "officer2"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, home=home, env=env)
    hsmkm("recovery", "policy", "--quorum", "3", "--request", str(rid), home=home)
    listed = hsmkm("officer", "list", "--json", home=home).json()
    assert [o["name"] for o in listed["officers"]] == ["dana", "officer1", "officer2"] and listed["quorum"] == 3
    # A recovery now needs all three.
    rid = hsmkm("recovery", "request", "alice@example.com", "--reason", "x", "--json", home=home).json()["id"]
    for officer in ("dana", "officer1"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, home=home, env=env)
    short = hsmkm("recovery", "complete", str(rid), "--reenable", home=home, check=False)
    assert short.returncode == 1 and "2 of 3" in short.stderr
    hsmkm("recovery", "approve", str(rid), "--officer", "officer2", home=home)
    assert hsmkm("recovery", "complete", str(rid), "--reenable", "--json", home=home).json()["keys"] == 2
    too_big = hsmkm("recovery", "policy", "--quorum", "5", home=home, check=False)
    assert too_big.returncode == 2


def test_archive_rotate_keeps_every_record_recoverable(km_with_alice: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    from hsmkm.km import rotation

    home = km_with_alice["home"]
    km = KeyManager.open(home, trial_pin(home, "km"))
    calls = {"n": 0}
    real = km.change

    class Crash(Exception):
        pass

    def crash_on_second_batch(action, **details):  # type: ignore[no-untyped-def]
        if details.get("stage") == "batch":
            calls["n"] += 1
            if calls["n"] == 2:
                raise Crash()
        return real(action, **details)

    # Pad the archive so the rotation runs in several batches.
    from hsmkm.km import archive as arc

    with km.db.transaction() as conn:
        rec = arc.records_for_user(conn, 1)[0]
        for _ in range(25):
            conn.execute("INSERT INTO archive(user_id, cert_serial, algorithm, created_at, format_version, master_label, "
                         "sealed) SELECT user_id, cert_serial, algorithm, created_at, format_version, master_label, sealed "
                         "FROM archive WHERE id = ?", (rec.id,))
    monkeypatch.setattr(km, "change", crash_on_second_batch)
    with pytest.raises(Crash):
        rotation.rotate_archive_key(km, batch=10)
    monkeypatch.setattr(km, "change", real)
    result = rotation.rotate_archive_key(km, batch=10)
    assert result.old_label == "hsmkm-archive-1" and result.new_label == "hsmkm-archive-2"
    with sqlite3.connect(home / "km.db") as conn:
        assert {r[0] for r in conn.execute("SELECT master_label FROM archive")} == {"hsmkm-archive-2"}
    assert not km.session.has_object("hsmkm-archive-1", __import__("pkcs11").ObjectClass.SECRET_KEY)
    from hsmkm.keys.pkcs11 import Pkcs11Module

    module = Pkcs11Module.load(km.config.km_token.module, km.config.softhsm_config)
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "after rotation", email="alice@example.com")
    for name in ("officer1", "officer3"):
        recovery.approve(km, req.id, name, module.open_token(trial_pin(home, name), label=name))
    assert len(recovery.complete_recovery(km, req.id, None, reenable=False).keys) == 27
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True
