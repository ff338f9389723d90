"""Custody against the KM's own operator (custody rule 4), acted out on real tokens.

The insider holds the KM token's PIN, the whole database and the KM token; K officers have
approved a recovery of alice. Every path they try opens alice's approved records and
nothing else; a changed request is refused at completion in one line; one person cannot be
two officers.
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, timedelta
from pathlib import Path

import pytest

from conftest import hsmkm, trial_pin
from custody_helpers import approve, officer_key
from hsmkm import errors
from hsmkm.km import archive, officer_side, recovery, request_content, sealing, shamir
from hsmkm.km.manager import KeyManager
from hsmkm.km.publishers import publisher_for

PW = "insider-test-pw"


def _enroll(home: Path, email: str, epf: Path) -> None:
    code = hsmkm("user", "add", email, "--json", home=home).json()["code"]
    hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        email,
        "--code-source",
        "env:CODE",
        "--keystore",
        str(epf),
        "--password-source",
        "env:PW",
        env={"CODE": code, "PW": PW},
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """alice and bob enrolled; each test works on a copy."""
    root = tmp_path_factory.mktemp("custody")
    home = root / "km"
    hsmkm("init", "--ca-subject", "CN=Custody CA", "--ca-key", "p256", home=home)
    _enroll(home, "alice@example.com", root / "alice.epf")
    _enroll(home, "bob@example.com", root / "bob.epf")
    return home


@pytest.fixture
def insider(template: Path, tmp_path: Path) -> dict[str, object]:
    """A copy of the KM where officer1 and officer2 approved a recovery of alice."""
    home = tmp_path / "km"
    shutil.copytree(template, home, symlinks=True)
    # the copy's paths point into the copy (its token store and trial PINs)
    for f in (home / "km.json", home / "softhsm" / "softhsm2.conf"):
        f.write_text(f.read_text().replace(str(template), str(home)))
    with sqlite3.connect(home / "km.db") as conn:
        conn.execute("UPDATE officers SET uri = replace(uri, ?, ?)", (str(template), str(home)))
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "lost laptop", email="alice@example.com")
    approve(km, home, req.id, "officer1", "officer2")
    return {"home": home, "km": km, "req": req}


def _records(km: KeyManager, email: str) -> list[archive.ArchiveRecord]:
    uid = km.db.conn.execute("SELECT id FROM users WHERE email = ?", (email,)).fetchone()[0]
    return archive.records_for_user(km.db.reader(), uid)


def _km_token_private_keys(km: KeyManager) -> list[object]:
    return [km.session.private_key(label=label) for label, _ in km.session.private_key_labels()]


def _opens(km: KeyManager, rec: archive.ArchiveRecord, record_key: bytes) -> bool:
    inner = archive.open_outer(rec, km.archive_key_by_label(rec.master_label))
    try:
        archive.open_inner(rec, inner, record_key)
        return True
    except errors.Tampered:
        return False


def test_the_request_key_opens_alices_approved_shares_and_nothing_else(insider: dict[str, object]) -> None:
    km, req = insider["km"], insider["req"]
    assert isinstance(km, KeyManager) and isinstance(req, recovery.Request)
    with km.db.read() as tx:
        content = request_content.build(tx, req.id, None)
    request_key = km.session.private_key(label=req.key_label)
    got: dict[int, list[shamir.Share]] = {}
    for officer, blob in km.db.conn.execute(
        "SELECT officer, sealed_share FROM approvals WHERE request_id = ?", (req.id,)
    ):
        for e in officer_side.open_approval(request_key, bytes(blob), req.id, officer, content.canonical):
            got.setdefault(e.record.record_id, []).append(e.share)
    alice, bob = _records(km, "alice@example.com"), _records(km, "bob@example.com")
    assert set(got) == {r.id for r in alice}
    keys = {rid: shamir.combine(shares) for rid, shares in got.items()}
    assert all(_opens(km, r, keys[r.id]) for r in alice)
    # alice's record keys open none of bob's records
    assert not any(_opens(km, b, k) for b in bob for k in keys.values())
    # every key on the KM token (CA, request key) against every share row of bob's: nothing opens
    for b in bob:
        for officer, x, epoch, sealed in km.db.conn.execute(
            "SELECT officer, x, epoch, sealed FROM archive_shares WHERE record_id = ?", (b.id,)
        ).fetchall():
            ctx = officer_side.share_context(archive.identity(b), epoch, officer, x)
            for key in _km_token_private_keys(km):
                with pytest.raises((errors.SignatureInvalid, errors.MalformedInput, errors.UnsupportedAlgorithm)):
                    sealing.unseal(key, bytes(sealed), ctx)  # type: ignore[arg-type]


def test_one_officer_alone_rebuilds_no_record_key(insider: dict[str, object]) -> None:
    """officer1 with their own token and the database: their share of every record, K-1 of K."""
    km, home = insider["km"], insider["home"]
    assert isinstance(km, KeyManager) and isinstance(home, Path)
    key = officer_key(km, home, "officer1")
    for rec in _records(km, "bob@example.com") + _records(km, "alice@example.com"):
        x, sealed = km.db.conn.execute(
            "SELECT x, sealed FROM archive_shares WHERE record_id = ? AND officer = 'officer1'", (rec.id,)
        ).fetchone()
        share = shamir.decode_share(
            sealing.unseal(key, bytes(sealed), officer_side.share_context(archive.identity(rec), 1, "officer1", x))
        )
        assert not _opens(km, rec, shamir.combine([share]))


def _complete_cli(home: Path, rid: int, tmp: Path) -> tuple[int, str, bool]:
    out = tmp / f"out-{rid}.p12"
    run = hsmkm(
        "recovery",
        "complete",
        str(rid),
        "--out",
        str(out),
        "--password-source",
        "env:OUT",
        home=home,
        env={"OUT": "export-pw-1"},
        check=False,
    )
    return run.returncode, run.stderr, out.exists()


def _one_line(stderr: str) -> bool:
    return stderr.startswith("hsmkm: error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr


def test_records_swapped_after_approval_are_refused(insider: dict[str, object], tmp_path: Path) -> None:
    km, req, home = insider["km"], insider["req"], insider["home"]
    assert isinstance(km, KeyManager) and isinstance(req, recovery.Request) and isinstance(home, Path)
    bob = [r.id for r in _records(km, "bob@example.com")]
    alice_first = _records(km, "alice@example.com")[0]
    bob_rec = _records(km, "bob@example.com")[0]
    attacks = [
        ("UPDATE recovery_requests SET records = ?, user_id = ? WHERE id = ?", (f"{bob}", bob_rec.user_id, req.id)),
        ("UPDATE recovery_requests SET records = ? WHERE id = ?", (f"{[alice_first.id, *bob]}", req.id)),
        (
            "UPDATE archive SET user_id = ?, cert_serial = ? WHERE id = ?",
            (bob_rec.user_id, bob_rec.cert_serial, alice_first.id),
        ),
        ("UPDATE recovery_requests SET reason = 'routine' WHERE id = ?", (req.id,)),
    ]
    db = home / "km.db"
    for sql, args in attacks:
        backup = sqlite3.connect(":memory:")
        with sqlite3.connect(db) as conn:
            conn.backup(backup)
            conn.execute(sql, args)
        code, stderr, written = _complete_cli(home, req.id, tmp_path)
        assert code == 1 and _one_line(stderr) and not written, (sql, stderr)
        assert "is not what officer1 approved" in stderr or "does not belong to" in stderr, stderr
        with sqlite3.connect(db) as conn:
            backup.backup(conn)
    # restored, the approved request completes with alice's keys only
    code, stderr, written = _complete_cli(home, req.id, tmp_path)
    assert code == 0 and written, stderr


def test_an_edited_expiry_does_not_revive_a_request(insider: dict[str, object]) -> None:
    km, req, home = insider["km"], insider["req"], insider["home"]
    assert isinstance(km, KeyManager) and isinstance(req, recovery.Request) and isinstance(home, Path)
    later = KeyManager.open(
        home,
        trial_pin(home, "km"),
        clock=lambda: km.clock() + timedelta(hours=km.config.recovery_request_hours + 1),
        publisher=publisher_for(home),
    )
    with pytest.raises(errors.PolicyViolation, match="expired"):
        recovery.complete_recovery(later, req.id, None, reenable=False)
    revived = (later.clock() + timedelta(days=30)).isoformat()
    with sqlite3.connect(home / "km.db") as conn:
        conn.execute("UPDATE recovery_requests SET expires_at = ? WHERE id = ?", (revived, req.id))
    with pytest.raises(errors.Tampered, match="is not what officer1 approved"):
        recovery.complete_recovery(later, req.id, None, reenable=False)
    assert recovery.get(km, req.id).status is recovery.RequestStatus.OPEN


def test_share_rows_swapped_between_records_open_nothing(template: Path, insider: dict[str, object]) -> None:
    """Before approval, alice's share rows are replaced by bob's: the officer's side unseals
    each share under the record it showed, so bob's shares do not open and nothing is signed."""
    km, home = insider["km"], insider["home"]
    assert isinstance(km, KeyManager) and isinstance(home, Path)
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "again", email="alice@example.com")
    alice_rec, bob_rec = _records(km, "alice@example.com")[0], _records(km, "bob@example.com")[0]
    with sqlite3.connect(home / "km.db") as conn:
        conn.execute("DELETE FROM archive_shares WHERE record_id = ?", (alice_rec.id,))
        conn.execute(
            "INSERT INTO archive_shares(record_id, epoch, officer, x, sealed) SELECT ?, epoch, officer, x, "
            "sealed FROM archive_shares WHERE record_id = ?",
            (alice_rec.id, bob_rec.id),
        )
    before = km.db.conn.execute("SELECT COUNT(*) FROM approvals").fetchone()[0]
    with pytest.raises(errors.SignatureInvalid, match="does not open for that record"):
        approve(km, home, req.id, "officer1")
    run = hsmkm("recovery", "approve", str(req.id), "--officer", "officer2", "--yes", home=home, check=False)
    lines = run.stderr.splitlines()  # the request as shown, then one error line
    assert run.returncode == 1 and "does not open for that record" in lines[-1]
    assert [line for line in lines if line.startswith("hsmkm:")] == [lines[-1]] and "Traceback" not in run.stderr
    assert km.db.conn.execute("SELECT COUNT(*) FROM approvals").fetchone()[0] == before


def test_an_approval_replayed_on_another_request_does_not_count(insider: dict[str, object]) -> None:
    km, req, home = insider["km"], insider["req"], insider["home"]
    assert isinstance(km, KeyManager) and isinstance(req, recovery.Request) and isinstance(home, Path)
    other = recovery.open_request(km, recovery.RequestKind.RECOVERY, "replay", email="alice@example.com")
    with km.db.transaction() as conn:
        conn.execute(
            "INSERT INTO approvals(request_id, officer, signature, sealed_share, approved_at) "
            "SELECT ?, officer, signature, sealed_share, approved_at FROM approvals WHERE request_id = ?",
            (other.id, req.id),
        )
    with pytest.raises(errors.Tampered, match="is not what officer1 approved"):
        recovery.complete_recovery(km, other.id, None, reenable=False)
    # nor do the blobs open under the other request's key and context
    with km.db.read() as tx:
        content = request_content.build(tx, other.id, None)
    blob = km.db.conn.execute(
        "SELECT sealed_share FROM approvals WHERE request_id = ? AND officer = 'officer1'", (req.id,)
    ).fetchone()[0]
    with pytest.raises(errors.SignatureInvalid):
        officer_side.open_approval(
            km.session.private_key(label=other.key_label), bytes(blob), other.id, "officer1", content.canonical
        )


def test_forged_approvals_and_no_approvals_open_nothing(insider: dict[str, object]) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    km = insider["km"]
    assert isinstance(km, KeyManager)
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "forge", email="bob@example.com")
    with pytest.raises(errors.QuorumNotMet):
        recovery.complete_recovery(km, req.id, None, reenable=False)
    with km.db.read() as tx:
        content = request_content.build(tx, req.id, None)
    forger = ec.generate_private_key(ec.SECP256R1())
    with km.db.transaction() as conn:
        for name in ("officer1", "officer2"):
            conn.execute(
                "INSERT INTO approvals(request_id, officer, signature, sealed_share, approved_at) VALUES "
                "(?, ?, ?, ?, '2026-01-01')",
                (req.id, name, officer_side.sign_content(forger, content.canonical), b"\x01"),
            )
    with pytest.raises(errors.Tampered, match="is not what officer1 approved"):
        recovery.complete_recovery(km, req.id, None, reenable=False)


def test_one_person_cannot_be_two_officers(insider: dict[str, object], module_path: str) -> None:
    km, home = insider["km"], insider["home"]
    assert isinstance(km, KeyManager) and isinstance(home, Path)
    same = f"pkcs11:token=officer1?module-path={module_path}&pin-source=file:{home}/secrets/officer1.pin"
    run = hsmkm("officer", "add", "mallory", "--token", same, home=home, check=False)
    assert run.returncode == 2 and _one_line(run.stderr) and "already holds another officer's key" in run.stderr
    on_km = f"pkcs11:token=hsmkm?module-path={module_path}&pin-source=file:{home}/secrets/km.pin"
    run = hsmkm("officer", "add", "mallory", "--token", on_km, home=home, check=False)
    assert run.returncode == 2 and _one_line(run.stderr) and "is the KM token" in run.stderr
    assert km.db.conn.execute("SELECT COUNT(*) FROM recovery_requests WHERE kind = 'officer-add'").fetchone()[0] == 0


def _officer_add_request(km: KeyManager, key_der: bytes) -> recovery.Request:
    params = {"name": "mallory", "uri": "pkcs11:token=mallory", "public_key": key_der.hex()}
    return recovery.open_request(km, recovery.RequestKind.OFFICER_ADD, "add mallory", params=params)


def test_an_officer_key_swapped_in_the_database_is_refused_by_the_officers(insider: dict[str, object]) -> None:
    """The operator replaces officer2's key by one of their own (in the active set, or only in
    the new set a change would re-share to): officer1's side finds it and re-shares nothing."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from hsmkm.km import custody

    km, home = insider["km"], insider["home"]
    assert isinstance(km, KeyManager) and isinstance(home, Path)
    mine = custody.public_der(ec.generate_private_key(ec.SECP256R1()).public_key())
    # 1. only in the new officer set (the request's parameters and the pending epoch)
    req = _officer_add_request(km, mine)
    with km.db.transaction() as conn:
        params = recovery.get(km, req.id).params
        params["officers"] = [[n, x, mine.hex() if n == "officer2" else p] for n, x, p in params["officers"]]
        conn.execute("UPDATE recovery_requests SET params = ? WHERE id = ?", (__import__("json").dumps(params), req.id))
        conn.execute(
            "UPDATE epoch_officers SET public_key = ? WHERE epoch = ? AND officer = 'officer2'", (mine, params["epoch"])
        )
    with pytest.raises(errors.Tampered, match="officer2's key in the new officer set is not their key now"):
        approve(km, home, req.id, "officer1")
    assert km.db.conn.execute("SELECT COUNT(*) FROM reshares").fetchone()[0] == 0
    # 2. in the active set itself (so the new set "keeps" the swapped key)
    req2 = _officer_add_request(km, mine)
    with km.db.transaction() as conn:
        conn.execute("UPDATE epoch_officers SET public_key = ? WHERE officer = 'officer2'", (mine,))
        conn.execute("UPDATE officers SET public_key = ? WHERE name = 'officer2'", (mine,))
    run = hsmkm("recovery", "approve", str(req2.id), "--officer", "officer1", "--yes", home=home, check=False)
    assert run.returncode == 1 and "carries officer1's own attestation" in run.stderr.splitlines()[-1]
    # even a recovery approval refuses to work with an altered officer set
    recovery_req = insider["req"]
    assert isinstance(recovery_req, recovery.Request)
    with pytest.raises(errors.Tampered):
        approve(km, home, recovery_req.id, "officer3")
    assert km.db.conn.execute("SELECT COUNT(*) FROM reshares").fetchone()[0] == 0


def test_a_deleted_attestation_needs_the_officers_explicit_trust(insider: dict[str, object]) -> None:
    km, home = insider["km"], insider["home"]
    assert isinstance(km, KeyManager) and isinstance(home, Path)
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "x", email="bob@example.com")
    with km.db.transaction() as conn:
        conn.execute("DELETE FROM epoch_attestations WHERE officer = 'officer3'")
    run = hsmkm("recovery", "approve", str(req.id), "--officer", "officer3", "--yes", home=home, check=False)
    assert run.returncode == 2 and "--trust-officer-set" in run.stderr.splitlines()[-1]
    assert km.db.conn.execute("SELECT COUNT(*) FROM approvals WHERE request_id = ?", (req.id,)).fetchone()[0] == 0


def test_a_completed_request_reopened_in_the_database_opens_nothing(insider: dict[str, object], tmp_path: Path) -> None:
    """One quorum buys one recovery: the request's key is destroyed at completion."""
    km, req, home = insider["km"], insider["req"], insider["home"]
    assert isinstance(km, KeyManager) and isinstance(req, recovery.Request) and isinstance(home, Path)
    assert len(recovery.complete_recovery(km, req.id, None, reenable=False).keys) == 1
    with km.db.transaction() as conn:
        conn.execute("UPDATE recovery_requests SET status = 'open' WHERE id = ?", (req.id,))
    code, stderr, written = _complete_cli(home, req.id, tmp_path)
    assert code == 2 and _one_line(stderr) and not written
    assert "key is gone from the KM token" in stderr
    # and a forged claim of a dead process does not get past the expiry either
    later = KeyManager.open(
        home,
        trial_pin(home, "km"),
        clock=lambda: km.clock() + timedelta(hours=km.config.recovery_request_hours + 1),
        publisher=publisher_for(home),
    )
    other = recovery.open_request(km, recovery.RequestKind.RECOVERY, "old", email="alice@example.com")
    approve(km, home, other.id, "officer1", "officer2")
    with km.db.transaction() as conn:
        conn.execute("UPDATE recovery_requests SET status = 'completing' WHERE id = ?", (other.id,))
        conn.execute("INSERT INTO request_claims(request_id, claimed_by) VALUES (?, 'gone:1:00')", (other.id,))
    with pytest.raises(errors.PolicyViolation, match="expired"):
        recovery.complete_recovery(later, other.id, None, reenable=False)


def test_a_certificate_not_signed_by_the_ca_is_refused_before_anything_is_signed(insider: dict[str, object]) -> None:
    """The operator puts a certificate of their own making (alice's address, the record's
    serial) under alice's record: the officer's side checks it against the CA's signature."""
    from datetime import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    km, home = insider["km"], insider["home"]
    assert isinstance(km, KeyManager) and isinstance(home, Path)
    rec = _records(km, "alice@example.com")[0]
    fake_ca = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    fake = (
        x509.CertificateBuilder()
        .subject_name(km.ca_cert.subject)
        .issuer_name(km.ca_cert.subject)
        .public_key(fake_ca.public_key())
        .serial_number(int(rec.cert_serial, 16))
        .not_valid_before(now)
        .not_valid_after(now)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name("alice@example.com")]), critical=False)
        .sign(fake_ca, hashes.SHA256())
    )
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "fake cert", email="alice@example.com")
    with km.db.transaction() as conn:
        conn.execute(
            "UPDATE certificates SET der = ? WHERE serial = ?",
            (fake.public_bytes(serialization.Encoding.DER), rec.cert_serial),
        )
    run = hsmkm("recovery", "approve", str(req.id), "--officer", "officer1", "--yes", home=home, check=False)
    assert run.returncode == 1 and _one_line(run.stderr) and "is not signed by the KM's CA" in run.stderr
    assert km.db.conn.execute("SELECT COUNT(*) FROM approvals WHERE request_id = ?", (req.id,)).fetchone()[0] == 0
