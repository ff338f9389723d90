"""Token-gated recovery: K-of-N approvals on officers' tokens opening only the shares of the
records they approve, one-use completion (also when two run at once), export or
re-enrollment, officer changes by redistribution, archive key rotation, tampered records."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from conftest import copy_km, hsmkm, make_token, softhsm_conf, trial_pin
from custody_helpers import approve
from hsmkm import errors
from hsmkm.keys.epf import EpfKeystore
from hsmkm.km import recovery
from hsmkm.km.manager import KeyManager
from hsmkm.km.publishers import publisher_for
from hsmkm.store.database import Database

PW = "correct-horse-battery"


def _enroll(home: Path, email: str, epf: Path, update: bool = False) -> None:
    if update:
        code = hsmkm("user", "reenable", email, "--json", home=home).json()["code"]
    else:
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
        *(["--update"] if update else []),
        env={"CODE": code, "PW": PW},
    )


@pytest.fixture(scope="module")
def alice_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Alice enrolled twice (a current and a historical key), and a message to her old key:
    made once per module, never used itself (each test gets a copy, ``km_with_alice``)."""
    tmp_path = tmp_path_factory.mktemp("recovery-template")
    home = tmp_path / "km"
    hsmkm("init", "--ca-subject", "CN=Recovery CA", "--ca-key", "p256", "--user-key", "rsa2048", home=home)
    epf = tmp_path / "alice.epf"
    _enroll(home, "alice@example.com", epf)
    old_cert = tmp_path / "old-enc.pem"
    old_cert.write_bytes(
        x509.load_der_x509_certificate((home / "pub/certs/alice@example.com.enc.crt").read_bytes()).public_bytes(
            serialization.Encoding.PEM
        )
    )
    msg = tmp_path / "before.txt"
    msg.write_text("sent before the loss\n")
    subprocess.run(
        [
            "openssl",
            "cms",
            "-encrypt",
            "-aes-256-gcm",
            "-in",
            str(msg),
            "-out",
            str(tmp_path / "old.p7m"),
            "-outform",
            "DER",
            "-recip",
            str(old_cert),
            "-keyopt",
            "rsa_padding_mode:oaep",
            "-keyopt",
            "rsa_oaep_md:sha256",
        ],
        check=True,
    )
    _enroll(home, "alice@example.com", epf, update=True)
    return tmp_path


@pytest.fixture
def km_with_alice(alice_template: Path, tmp_path: Path) -> dict[str, Path]:
    """A KM of the test's own in the template's state (``copy_km``)."""
    return {"home": copy_km(alice_template, tmp_path, "km"), "epf": tmp_path / "alice.epf", "root": tmp_path}


@pytest.mark.slow
@pytest.mark.interop
def test_one_approval_is_not_enough_two_export_current_and_history(km_with_alice: dict[str, Path]) -> None:
    home, root = km_with_alice["home"], km_with_alice["root"]
    rid = hsmkm("recovery", "request", "alice@example.com", "--reason", "lost laptop", "--json", home=home).json()["id"]
    hsmkm("recovery", "approve", str(rid), "--officer", "officer1", "--yes", home=home)
    out = root / "alice-recovered.p12"
    short = hsmkm(
        "recovery",
        "complete",
        str(rid),
        "--out",
        str(out),
        "--password-source",
        "env:OUT",
        home=home,
        env={"OUT": "export-pass"},
        check=False,
    )
    assert short.returncode == 1 and "1 of 2 approvals" in short.stderr and not out.exists()
    dup = hsmkm("recovery", "approve", str(rid), "--officer", "officer1", "--yes", home=home, check=False)
    assert dup.returncode == 2 and "already approved" in dup.stderr
    nobody = hsmkm("recovery", "approve", str(rid), "--officer", "mallory", "--yes", home=home, check=False)
    assert nobody.returncode == 2 and "not a recovery officer" in nobody.stderr
    # Without --yes and without a terminal, the officer is shown the request and nothing is signed.
    unasked = hsmkm("recovery", "approve", str(rid), "--officer", "officer3", home=home, check=False)
    assert unasked.returncode == 2 and "give --yes" in unasked.stderr
    assert "user:    alice@example.com" in unasked.stderr and "signature checked against the KM CA" in unasked.stderr
    assert unasked.stderr.count("record ") == 2 and "reason:  lost laptop" in unasked.stderr
    hsmkm("recovery", "approve", str(rid), "--officer", "officer3", "--yes", home=home)
    done = hsmkm(
        "recovery",
        "complete",
        str(rid),
        "--out",
        str(out),
        "--password-source",
        "env:OUT",
        "--json",
        home=home,
        env={"OUT": "export-pass"},
    ).json()
    assert done["keys"] == 2
    store = EpfKeystore.open(out, "export-pass")
    entries = store.encryption_entries()
    assert len(entries) == 2
    for e in entries:
        assert e.key.public_key().public_numbers() == e.certificate.public_key().public_numbers()  # type: ignore[union-attr]
    # openssl, with the exported keys, opens the message sent to the old key before the loss.
    pem = root / "exported.pem"
    subprocess.run(
        ["openssl", "pkcs12", "-in", str(out), "-passin", "pass:export-pass", "-nodes", "-out", str(pem)], check=True
    )
    keys = [b for b in pem.read_text().split("-----END PRIVATE KEY-----") if "BEGIN PRIVATE KEY" in b]
    opened = []
    for i, block in enumerate(keys):
        kf = root / f"k{i}.pem"
        kf.write_text(block[block.index("-----BEGIN PRIVATE KEY-----") :] + "-----END PRIVATE KEY-----\n")
        proc = subprocess.run(
            ["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(root / "old.p7m"), "-inkey", str(kf)],
            capture_output=True,
        )
        if proc.returncode == 0:
            opened.append(proc.stdout)
    assert opened == [b"sent before the loss\r\n"]  # openssl cms -encrypt canonicalises to CRLF
    # The quorum bought exactly one recovery: the same request, and the same approvals, are spent.
    again = hsmkm(
        "recovery",
        "complete",
        str(rid),
        "--out",
        str(root / "again.p12"),
        "--password-source",
        "env:OUT",
        home=home,
        env={"OUT": "export-pass"},
        check=False,
    )
    assert again.returncode == 2 and "completed" in again.stderr
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


@pytest.mark.slow
def test_reenable_gives_the_user_their_archived_keys(km_with_alice: dict[str, Path]) -> None:
    home, root = km_with_alice["home"], km_with_alice["root"]
    rid = hsmkm("recovery", "request", "alice@example.com", "--reason", "forgot password", "--json", home=home).json()[
        "id"
    ]
    for officer in ("officer2", "officer3"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", home=home)
    code_file = root / "alice.code"
    done = hsmkm(
        "recovery", "complete", str(rid), "--reenable", "--code-out", str(code_file), "--json", home=home
    ).json()
    assert "code" not in done and done["code_out"] == str(code_file)
    assert code_file.stat().st_mode & 0o777 == 0o600
    code = code_file.read_text().strip()
    with sqlite3.connect(home / "km.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM recovered").fetchone()[0] == 2
    new = root / "alice-new.epf"
    out = hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        "alice@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        str(new),
        "--password-source",
        "env:PW",
        "--json",
        env={"CODE": code, "PW": PW},
    ).json()
    assert out["history_keys"] == 2
    store = EpfKeystore.open(new, PW)
    assert len(store.encryption_entries()) == 3  # the new key and the two recovered ones
    with sqlite3.connect(home / "km.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM recovered").fetchone()[0] == 0


def test_code_out_is_on_disk_before_the_commit(km_with_alice: dict[str, Path]) -> None:
    """--code-out: the code is written (fsynced, renamed) inside the completion, before its
    commit; a commit that fails afterwards leaves a code that the database never knew."""
    home, root = km_with_alice["home"], km_with_alice["root"]
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "code", email="alice@example.com")
    approve(km, home, req.id, "officer1", "officer2")
    seen: dict[str, object] = {}

    class Crash(Exception):
        pass

    target = root / "code.txt"

    def write_then_crash(code: str) -> None:
        from hsmkm.atomic import write_atomic

        write_atomic(target, code.encode(), mode=0o600)
        seen["status"] = (
            sqlite3.connect(home / "km.db")
            .execute("SELECT status FROM recovery_requests WHERE id = ?", (req.id,))
            .fetchone()[0]
        )
        raise Crash()

    with pytest.raises(Crash):
        recovery.complete_recovery(km, req.id, None, True, before_commit=write_then_crash)
    assert target.read_text() and seen["status"] == "completing"  # written while uncommitted
    # The commit did not happen: the request is open again and the written code is void.
    assert recovery.get(km, req.id).status is recovery.RequestStatus.OPEN
    assert km.db.conn.execute("SELECT COUNT(*) FROM recovered").fetchone()[0] == 0
    done = recovery.complete_recovery(km, req.id, None, True, before_commit=lambda code: seen.update(code=code))
    assert done.code == seen["code"] and len(done.keys) == 2


@pytest.mark.slow
def test_an_export_or_code_out_cut_short_is_finished_by_the_same_command(km_with_alice: dict[str, Path]) -> None:
    """A run that wrote its export (or its --code-out file) and died before or after its
    commit is finished by running the same command again; a file that is not this request's
    export stays untouched and is refused."""
    home, root = km_with_alice["home"], km_with_alice["root"]
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "export", email="alice@example.com")
    approve(km, home, req.id, "officer1", "officer2")
    out = root / "alice-keys.p12"

    class Crash(Exception):
        pass

    def write_then_crash(keys: list[recovery.RecoveredKey]) -> None:
        store = EpfKeystore.create(out, "p12-pass")
        for k in keys:
            store.add_entry(k.key, x509.load_der_x509_certificate(k.cert_der))
        store.save()
        raise Crash()

    with pytest.raises(Crash):
        recovery.complete_recovery(km, req.id, write_then_crash, False)
    km.close()
    with Database.open(home / "km.db").read() as tx:  # a connection of its own: what was committed
        assert out.exists() and recovery.load(tx, req.id).status is recovery.RequestStatus.OPEN
    argv = ("recovery", "complete", str(req.id), "--out", str(out), "--password-source", "env:P")
    wrong = hsmkm(*argv, env={"P": "another-pass"}, home=home, check=False)
    assert wrong.returncode == 2 and f"{out} exists" in wrong.stderr
    done = hsmkm(*argv, "--json", env={"P": "p12-pass"}, home=home).json()
    assert done["keys"] == 2 and "already" not in done
    again = hsmkm(*argv, "--json", env={"P": "p12-pass"}, home=home).json()
    assert again["already"] is True
    assert len(EpfKeystore.open(out, "p12-pass").encryption_entries()) == 2

    # --code-out: after the commit the code in the file is the live one; re-running says so.
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))
    req2 = recovery.open_request(km, recovery.RequestKind.RECOVERY, "code", email="alice@example.com")
    approve(km, home, req2.id, "officer1", "officer2")
    km.close()
    code_file = root / "alice.code"
    code_file.write_text("not a code\n")
    refused = hsmkm(
        "recovery", "complete", str(req2.id), "--reenable", "--code-out", str(code_file), home=home, check=False
    )
    assert refused.returncode == 2 and code_file.read_text() == "not a code\n"
    code_file.unlink()
    hsmkm("recovery", "complete", str(req2.id), "--reenable", "--code-out", str(code_file), home=home)
    code = code_file.read_text()
    rerun = hsmkm(
        "recovery", "complete", str(req2.id), "--reenable", "--code-out", str(code_file), "--json", home=home
    ).json()
    assert rerun["already"] is True and code_file.read_text() == code


def sqlite3_conn(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "km.db")


def test_crash_during_complete_can_be_rerun(km_with_alice: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure inside the completion hands the request back; a completion killed outright
    leaves a claim of a dead process, which the next run takes over."""
    home = km_with_alice["home"]
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "crash", email="alice@example.com")
    approve(km, home, req.id, "officer1", "officer2")

    class Crash(Exception):
        pass

    def crash() -> None:
        raise Crash()

    with pytest.raises(Crash):
        recovery.complete_recovery(km, req.id, None, reenable=False, after_claim=crash)
    assert recovery.get(km, req.id).status is recovery.RequestStatus.OPEN
    # kill -9 after the claim: the row says completing, claimed by a process that is gone.
    dead = subprocess.Popen([os.sys.executable, "-c", "pass"])  # type: ignore[attr-defined]
    dead.wait()
    with km.db.transaction() as conn:
        conn.execute("UPDATE recovery_requests SET status = 'completing' WHERE id = ?", (req.id,))
        conn.execute(
            "INSERT INTO request_claims(request_id, claimed_by) VALUES (?, ?)",
            (req.id, f"{__import__('socket').gethostname()}:{dead.pid}:00"),
        )

    # A completion whose claim another run took over meanwhile commits nothing.
    def taken_over() -> None:
        with sqlite3.connect(home / "km.db") as conn:
            conn.execute("UPDATE request_claims SET claimed_by = 'elsewhere:1:00' WHERE request_id = ?", (req.id,))

    with pytest.raises(errors.PolicyViolation, match="taken over by another completion"):
        recovery.complete_recovery(km, req.id, None, reenable=True, after_claim=taken_over)
    assert km.db.conn.execute("SELECT COUNT(*) FROM recovered").fetchone()[0] == 0
    with km.db.transaction() as conn:
        conn.execute(
            "UPDATE request_claims SET claimed_by = ? WHERE request_id = ?",
            (f"{__import__('socket').gethostname()}:{dead.pid}:00", req.id),
        )
    done = recovery.complete_recovery(km, req.id, None, reenable=False)
    assert len(done.keys) == 2
    assert recovery.get(km, req.id).status is recovery.RequestStatus.COMPLETED


def test_tampered_archive_record_is_a_tamper_error(km_with_alice: dict[str, Path]) -> None:
    home, root = km_with_alice["home"], km_with_alice["root"]
    rid = hsmkm("recovery", "request", "alice@example.com", "--reason", "x", "--json", home=home).json()["id"]
    for officer in ("officer1", "officer2"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", home=home)
    with sqlite3.connect(home / "km.db") as conn:
        sealed = bytearray(conn.execute("SELECT sealed FROM archive ORDER BY id LIMIT 1").fetchone()[0])
        sealed[40] ^= 1
        conn.execute("UPDATE archive SET sealed = ? WHERE id = (SELECT MIN(id) FROM archive)", (bytes(sealed),))
    out = root / "t.p12"
    run = hsmkm(
        "recovery",
        "complete",
        str(rid),
        "--out",
        str(out),
        "--password-source",
        "env:OUT",
        home=home,
        env={"OUT": "pw-123456"},
        check=False,
    )
    assert run.returncode == 1, run.stderr
    assert run.stderr.startswith("hsmkm: error: ") and run.stderr.count("\n") == 1
    assert "was altered" in run.stderr and "GeneralError" not in run.stderr and not out.exists()
    # The token is fine, and the request is still open for when the record is restored.
    assert hsmkm("status", home=home).returncode == 0
    assert hsmkm("recovery", "list", "--json", home=home).json()["requests"][-1]["status"] == "open"


@pytest.mark.slow
def test_officer_changes_need_a_quorum_and_reshare(km_with_alice: dict[str, Path], module_path: str) -> None:
    home = km_with_alice["home"]
    env = {"SOFTHSM2_CONF": str(home / "softhsm" / "softhsm2.conf"), "DANA_PIN": "dana-pin-1"}
    make_token("dana", "dana-pin-1", softhsm_conf(home))
    uri = f"pkcs11:token=dana?module-path={module_path}&pin-source=env:DANA_PIN"
    opened = hsmkm("officer", "add", "dana", "--token", uri, "--json", home=home, env=env).json()
    rid = opened["id"]
    early = hsmkm("officer", "add", "dana", "--token", uri, "--request", str(rid), home=home, env=env, check=False)
    assert early.returncode == 1 and "0 of 2" in early.stderr
    for officer in ("officer1", "officer2"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", home=home, env=env)
    hsmkm("officer", "add", "dana", "--token", uri, "--request", str(rid), home=home, env=env)
    with sqlite3.connect(home / "km.db") as conn:
        # every record has a share for each of the four officers of the new epoch, and only those
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT epoch) FROM archive_shares").fetchone() == (8, 1)
    listed = hsmkm("officer", "list", "--json", home=home).json()
    assert [o["name"] for o in listed["officers"]] == ["dana", "officer1", "officer2", "officer3"]
    # officer3 lost their token: the others remove them.
    rid = hsmkm("officer", "remove", "officer3", "--json", home=home).json()["id"]
    for officer in ("dana", "officer1"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", home=home, env=env)
    hsmkm("officer", "remove", "officer3", "--request", str(rid), home=home, env=env)
    with sqlite3.connect(home / "km.db") as conn:
        # the removed officer's shares went with the old epoch
        assert {r[0] for r in conn.execute("SELECT DISTINCT officer FROM archive_shares")} == {
            "dana",
            "officer1",
            "officer2",
        }
    rid = hsmkm("recovery", "policy", "--quorum", "3", "--json", home=home).json()["id"]
    for officer in ("dana", "officer2"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", home=home, env=env)
    hsmkm("recovery", "policy", "--quorum", "3", "--request", str(rid), home=home, env=env)
    listed = hsmkm("officer", "list", "--json", home=home).json()
    assert [o["name"] for o in listed["officers"]] == ["dana", "officer1", "officer2"] and listed["quorum"] == 3
    # A recovery now needs all three.
    rid = hsmkm("recovery", "request", "alice@example.com", "--reason", "x", "--json", home=home).json()["id"]
    for officer in ("dana", "officer1"):
        hsmkm("recovery", "approve", str(rid), "--officer", officer, "--yes", home=home, env=env)
    short = hsmkm("recovery", "complete", str(rid), "--reenable", home=home, check=False)
    assert short.returncode == 1 and "2 of 3" in short.stderr
    hsmkm("recovery", "approve", str(rid), "--officer", "officer2", "--yes", home=home)
    assert hsmkm("recovery", "complete", str(rid), "--reenable", "--json", home=home).json()["keys"] == 2
    too_big = hsmkm("recovery", "policy", "--quorum", "5", home=home, check=False)
    assert too_big.returncode == 2


def test_archive_rotate_keeps_every_record_recoverable(
    km_with_alice: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hsmkm.km import rotation

    home = km_with_alice["home"]
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))
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

    with km.db.write() as tx:
        conn = km.db.conn  # the database writer's raw access, inside the same transaction
        rec = arc.records_for_user(tx, 1)[0]
        for _ in range(25):
            new_id = conn.execute(
                "INSERT INTO archive(user_id, cert_serial, algorithm, created_at, format_version, master_label, "
                "sealed) SELECT user_id, cert_serial, algorithm, created_at, format_version, master_label, sealed "
                "FROM archive WHERE id = ?",
                (rec.id,),
            ).lastrowid
            # shares are bound to the record's user and serial, so a copy's shares are the same
            conn.execute(
                "INSERT INTO archive_shares(record_id, epoch, officer, x, sealed) "
                "SELECT ?, epoch, officer, x, sealed FROM archive_shares WHERE record_id = ?",
                (new_id, rec.id),
            )
    monkeypatch.setattr(km, "change", crash_on_second_batch)
    with pytest.raises(Crash):
        rotation.rotate_archive_key(km, batch=10)
    monkeypatch.setattr(km, "change", real)
    result = rotation.rotate_archive_key(km, batch=10)
    assert result.old_label == "hsmkm-archive-1" and result.new_label == "hsmkm-archive-2"
    with sqlite3.connect(home / "km.db") as conn:
        assert {r[0] for r in conn.execute("SELECT master_label FROM archive")} == {"hsmkm-archive-2"}
    assert not km.session.has_object("hsmkm-archive-1", __import__("pkcs11").ObjectClass.SECRET_KEY)
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "after rotation", email="alice@example.com")
    approve(km, home, req.id, "officer1", "officer3")
    assert len(recovery.complete_recovery(km, req.id, None, reenable=False).keys) == 27
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


def _two_requests(home: Path) -> tuple[int, int]:
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))
    ids = []
    for reason in ("first", "second"):
        req = recovery.open_request(km, recovery.RequestKind.RECOVERY, reason, email="alice@example.com")
        approve(km, home, req.id, "officer1", "officer2")
        ids.append(req.id)
    km.close()
    return ids[0], ids[1]


def test_concurrent_completions_of_one_request_complete_once(km_with_alice: dict[str, Path]) -> None:
    """Two processes complete the same request; the second arrives while the first holds it
    (paused right after its claim): one completes, the other is refused in one line."""
    import multiprocessing

    from custody_helpers import complete_in_child

    home = km_with_alice["home"]
    rid, _ = _two_requests(home)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    claimed = [ctx.Event(), ctx.Event()]
    go = [ctx.Event(), ctx.Event()]
    first = ctx.Process(target=complete_in_child, args=(str(home), rid, claimed[0], go[0], results))
    first.start()
    assert claimed[0].wait(120)
    second = ctx.Process(target=complete_in_child, args=(str(home), rid, claimed[1], go[1], results))
    second.start()
    second.join(120)
    assert results.get(timeout=60) == (rid, "refused", f"request {rid} is being completed by another process")
    assert not claimed[1].is_set()
    go[0].set()
    first.join(120)
    assert results.get(timeout=60) == (rid, "completed", 2)
    with sqlite3.connect(home / "km.db") as conn:
        done = conn.execute(
            "SELECT COUNT(*) FROM audit WHERE action = 'recovery.complete' AND details LIKE ?",
            (f'%"id":{rid}%"mode"%',),
        ).fetchone()[0]
        assert done == 1
        assert conn.execute("SELECT status FROM recovery_requests WHERE id = ?", (rid,)).fetchone()[0] == "completed"
    late = hsmkm("recovery", "complete", str(rid), "--reenable", home=home, check=False)
    assert late.returncode == 2 and f"request {rid} is completed" in late.stderr
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


def test_two_different_requests_complete_side_by_side(km_with_alice: dict[str, Path]) -> None:
    """Both processes hold their claims at the same moment, then both finish."""
    import multiprocessing

    from custody_helpers import complete_in_child

    home = km_with_alice["home"]
    ids = _two_requests(home)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    claimed = [ctx.Event(), ctx.Event()]
    go = ctx.Event()
    procs = [
        ctx.Process(target=complete_in_child, args=(str(home), rid, claimed[i], go, results))
        for i, rid in enumerate(ids)
    ]
    for p in procs:
        p.start()
    assert claimed[0].wait(120) and claimed[1].wait(120)  # both in flight at once
    with sqlite3.connect(home / "km.db") as conn:
        assert [r[0] for r in conn.execute("SELECT status FROM recovery_requests ORDER BY id")] == ["completing"] * 2
    go.set()
    for p in procs:
        p.join(120)
    assert sorted([results.get(timeout=60), results.get(timeout=60)]) == [
        (ids[0], "completed", 2),
        (ids[1], "completed", 2),
    ]
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


def test_records_enrolled_during_a_change_are_split_for_both_epochs(km_with_alice: dict[str, Path]) -> None:
    """An enrollment while an officer change is pending is split for the current and the
    pending epoch; after the change, two officers of the new set recover it; an expired
    change stops receiving shares."""
    from datetime import timedelta

    from hsmkm.km import epochs

    home, root = km_with_alice["home"], km_with_alice["root"]
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))
    change = recovery.open_request(km, recovery.RequestKind.POLICY, "quorum 3", params={"quorum": 3})
    with km.db.read() as tx:
        assert [e.number for e in epochs.sharing(tx)] == [1, 2]
    approve(km, home, change.id, "officer1", "officer2")  # re-shares alice's two records
    _enroll(home, "bob@example.com", root / "bob.epf")  # after the approvals: only direct shares
    with sqlite3.connect(home / "km.db") as conn:
        bob_record = conn.execute("SELECT MAX(id) FROM archive").fetchone()[0]
        assert conn.execute(
            "SELECT epoch, COUNT(*) FROM archive_shares WHERE record_id = ? GROUP BY epoch", (bob_record,)
        ).fetchall() == [(1, 3), (2, 3)]
    from custody_helpers import officer_key

    recovery.complete_change(km, change.id, lambda name: officer_key(km, home, name))
    with km.db.read() as tx:
        assert epochs.active(tx).quorum == 3
    with sqlite3.connect(home / "km.db") as conn:
        assert conn.execute("SELECT DISTINCT epoch FROM archive_shares").fetchall() == [(2,)]
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "bob", email="bob@example.com")
    approve(km, home, req.id, "officer1", "officer2", "officer3")
    assert len(recovery.complete_recovery(km, req.id, None, reenable=False).keys) == 1
    # A change left to expire: the next request retires its pending epoch.
    stale = recovery.open_request(km, recovery.RequestKind.POLICY, "quorum 2", params={"quorum": 2})
    later = KeyManager.open(
        home,
        trial_pin(home, "km"),
        clock=lambda: km.clock() + timedelta(hours=km.config.recovery_request_hours + 1),
        publisher=publisher_for(home),
    )
    recovery.open_request(later, recovery.RequestKind.RECOVERY, "later", email="bob@example.com")
    with km.db.read() as tx:
        assert [e.number for e in epochs.sharing(tx)] == [epochs.active(tx).number]
        assert stale.params["epoch"] not in [e.number for e in epochs.sharing(tx)]


def test_a_change_opened_between_sealing_and_commit_still_gets_the_new_record(
    km_with_alice: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race as a deterministic test: the enrollment seals its record for epoch 1, then an
    officer change opens (epoch 2) before the enrollment commits; the commit re-splits the
    record for both, so the change loses nothing."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from hsmkm.client.enroll import build_csr
    from hsmkm.km import archive, enroll, users
    from hsmkm.protocol import EnrollRequest

    home = km_with_alice["home"]
    km = KeyManager.open(home, trial_pin(home, "km"), publisher=publisher_for(home))
    _, code = users.add_user(km, "carol@example.com", None)
    real = archive.seal_record
    opened: list[int] = []

    def seal_then_change(*args, **kwargs):  # type: ignore[no-untyped-def]
        sealed = real(*args, **kwargs)
        if not opened:  # between this seal and the enrollment's commit
            opened.append(recovery.open_request(km, recovery.RequestKind.POLICY, "race", params={"quorum": 3}).id)
        return sealed

    monkeypatch.setattr(archive, "seal_record", seal_then_change)
    key = ec.generate_private_key(ec.SECP256R1())
    enroll.enroll(km, EnrollRequest("carol@example.com", code, build_csr(key, "carol@example.com")))
    record = km.db.conn.execute("SELECT MAX(id) FROM archive").fetchone()[0]
    assert km.db.conn.execute(
        "SELECT epoch, COUNT(*) FROM archive_shares WHERE record_id = ? GROUP BY epoch", (record,)
    ).fetchall() == [(1, 3), (2, 3)]
    monkeypatch.setattr(archive, "seal_record", real)
    approve(km, home, opened[0], "officer1", "officer3")
    from custody_helpers import officer_key

    recovery.complete_change(km, opened[0], lambda name: officer_key(km, home, name))
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "carol", email="carol@example.com")
    approve(km, home, req.id, "officer1", "officer2", "officer3")
    assert len(recovery.complete_recovery(km, req.id, None, reenable=False).keys) == 1
