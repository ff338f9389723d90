"""The audit log against a database writer: each edit, deletion, reordering, cut and rollback
is found by `audit verify` (the head anchored on the KM token) and by `audit verify
--checkpoint` (a signed checkpoint kept elsewhere); no ordinary state change writes over a
cut; after a rollback no CRL number is drawn twice. And the limit: whoever holds the KM PIN
can re-MAC the log and rewrite the anchor, and a checkpoint held elsewhere bounds that.

The attacks act as a database writer would: sqlite3 on km.db, no token, no PIN.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Run, hsmkm, softhsm_env
from hsmkm.x509.crlparse import parse_crl

PW = "correct-horse-battery"


@dataclass
class History:
    """A KM with five ordinary changes, a checkpoint (entry 6) and what a writer kept earlier."""

    home: Path
    checkpoint: Path
    codes: dict[str, str]
    head_after_3: str  # the MAC'd head row as it was after entry 3 (from an earlier copy)


def db(home: Path) -> sqlite3.Connection:
    return sqlite3.connect(home / "km.db", isolation_level=None)


def entries(home: Path) -> list[int]:
    with db(home) as conn:
        return [r[0] for r in conn.execute("SELECT seq FROM audit ORDER BY seq")]


def verify(home: Path, *checkpoints: Path) -> tuple[Run, dict[str, Any]]:
    args = ["audit", "verify", "--json"]
    for cp in checkpoints:
        args += ["--checkpoint", str(cp)]
    run = hsmkm(*args, home=home, check=False)
    return run, run.json()


def found_by(result: dict[str, Any]) -> set[str]:
    return {f["by"] for f in result["findings"]}


def assert_found(home: Path, checkpoint: Path, first_bad: int, by_token: set[str]) -> None:
    """Found by the plain verify with the token's anchor among the finders, and found by the
    checkpoint; one line on stderr naming the first bad entry; exit 1."""
    run, result = verify(home)
    assert run.returncode == 1, run.stderr
    assert result["ok"] is False and result["first_bad"] == first_bad
    assert by_token <= found_by(result) and "anchor" in found_by(result)
    assert run.stderr.startswith(f"hsmkm: error: audit chain broken at entry {first_bad}: ")
    assert len(run.stderr.strip().splitlines()) == 1
    run, result = verify(home, checkpoint)
    assert run.returncode == 1
    assert "checkpoint" in found_by(result), result


def add_user_code(home: Path, email: str) -> str:
    return str(hsmkm("user", "add", email, "--json", home=home).json()["code"])


@pytest.fixture
def history(fresh_home: Path, tmp_path: Path) -> History:
    home = fresh_home
    hsmkm("init", "--ca-subject", "CN=Audit CA,O=hsmkm tests", "--ca-key", "p256", home=home)  # 1
    codes = {"alice": add_user_code(home, "alice@example.com")}  # 2
    codes["bob"] = add_user_code(home, "bob@example.com")  # 3
    with db(home) as conn:
        head_after_3 = conn.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()[0]
    codes["carol"] = add_user_code(home, "carol@example.com")  # 4
    hsmkm("crl", "publish", home=home)  # 5
    cp = tmp_path / "checkpoint.p7m"
    assert hsmkm("audit", "checkpoint", "-o", str(cp), "--json", home=home).json()["seq"] == 6  # 6
    run, result = verify(home, cp)
    assert run.returncode == 0 and result["ok"] and result["anchor"]["seq"] == 6
    assert result["checked"] == ["chain", "head", "anchor", "checkpoint"]
    return History(home, cp, codes, head_after_3)


# --- a database writer's edits, each found ------------------------------------------------


def test_an_edited_entry_is_found(history: History) -> None:
    with db(history.home) as conn:
        conn.execute("""UPDATE audit SET details = '{"email":"mallory@example.com","name":null}' WHERE seq = 2""")
    assert_found(history.home, history.checkpoint, 2, {"chain"})


def test_an_edited_entry_with_its_hash_recomputed_is_found(history: History) -> None:
    """SHA-256 needs no key: the writer fixes the entry's hash and the next entry's link, and
    still cannot make the MAC (chain), nor the anchored and checkpointed hashes."""
    from hsmkm.km.audit import _entry_hash

    with db(history.home) as conn:
        seq, at, actor, action, _details, prev = conn.execute(
            "SELECT seq, at, actor, action, details, prev_hash FROM audit WHERE seq = 2"
        ).fetchone()
        forged = '{"email":"mallory@example.com","name":null}'
        digest = _entry_hash(bytes(prev), seq, at, actor, action, forged)
        conn.execute("UPDATE audit SET details = ?, hash = ? WHERE seq = 2", (forged, digest))
        conn.execute("UPDATE audit SET prev_hash = ? WHERE seq = 3", (digest,))
    _run, result = verify(history.home)
    assert result["findings"][0] == {"entry": 2, "problem": "entry 2 has a bad MAC", "by": "chain"}
    assert_found(history.home, history.checkpoint, 2, {"chain"})


def test_a_deleted_entry_is_found(history: History) -> None:
    with db(history.home) as conn:
        conn.execute("DELETE FROM audit WHERE seq = 3")
    assert_found(history.home, history.checkpoint, 3, {"chain"})


def test_reordered_entries_are_found(history: History) -> None:
    with db(history.home) as conn:
        conn.execute("UPDATE audit SET seq = -1 WHERE seq = 3")
        conn.execute("UPDATE audit SET seq = 3 WHERE seq = 4")
        conn.execute("UPDATE audit SET seq = 4 WHERE seq = -1")
    assert_found(history.home, history.checkpoint, 3, {"chain"})


def test_a_truncated_tail_is_found(history: History) -> None:
    with db(history.home) as conn:
        conn.execute("DELETE FROM audit WHERE seq > 3")
    assert_found(history.home, history.checkpoint, 4, {"head"})


def test_a_truncated_tail_with_its_older_head_restored_is_found_by_the_anchor_alone(history: History) -> None:
    """The cut made consistent inside the database (the head row from an earlier copy): the
    chain and the database's head agree; the token's anchor and the checkpoint do not."""
    with db(history.home) as conn:
        conn.execute("DELETE FROM audit WHERE seq > 3")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (history.head_after_3,))
    _run, result = verify(history.home)
    assert found_by(result) == {"anchor"}
    assert result["findings"][0]["problem"].startswith("the log ends at entry 3 but the token's anchor names entry 6")
    assert_found(history.home, history.checkpoint, 4, set())


def test_the_chain_head_edited_is_found(history: History) -> None:
    with db(history.home) as conn:
        value = conn.execute("SELECT value FROM meta WHERE key = 'audit_head'").fetchone()[0]
        _seq, digest, mac = value.split(":")
        conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (f"5:{digest}:{mac}",))
    run, result = verify(history.home)
    assert run.returncode == 1 and result["findings"] == [
        {"entry": 5, "problem": "the audit head has a bad MAC", "by": "head"}
    ]
    with db(history.home) as conn:
        conn.execute("DELETE FROM meta WHERE key = 'audit_head'")
    run, result = verify(history.home)
    assert run.returncode == 1 and result["findings"][0]["problem"] == "the audit head is missing"


@pytest.mark.slow
def test_a_crl_number_set_back_is_found_and_no_number_is_drawn_twice(history: History) -> None:
    crl_before = (history.home / "pub/crl/full.crl").read_bytes()
    with db(history.home) as conn:
        conn.execute("UPDATE meta SET value = '0' WHERE key = 'crl_number'")
        conn.execute("DELETE FROM crls")
    run, result = verify(history.home, history.checkpoint)
    assert run.returncode == 1 and found_by(result) == {"anchor", "checkpoint"}
    assert "the database's last CRL number is 0 but the token's anchor says 1 was drawn" in run.stderr
    run = hsmkm("crl", "publish", home=history.home, check=False)
    assert run.returncode == 1 and "rolled back" in run.stderr
    assert (history.home / "pub/crl/full.crl").read_bytes() == crl_before


def test_the_first_entry_deleted_is_found(history: History) -> None:
    with db(history.home) as conn:
        conn.execute("DELETE FROM audit WHERE seq = 1")
    assert_found(history.home, history.checkpoint, 1, {"chain"})


def test_an_entry_replayed_over_another_is_found(history: History) -> None:
    """Entry 2's whole row (its own valid hash and MAC) copied over entry 4: each MAC is
    genuine, but for another place in the chain."""
    with db(history.home) as conn:
        conn.execute("""UPDATE audit SET (at, actor, action, details, prev_hash, hash, mac) =
                        (SELECT at, actor, action, details, prev_hash, hash, mac FROM audit WHERE seq = 2)
                        WHERE seq = 4""")
    assert_found(history.home, history.checkpoint, 4, {"chain"})


def test_an_entry_appended_beyond_the_head_is_found(history: History) -> None:
    """A forged entry 7 linked to entry 6, carrying entry 6's genuine MAC: the writer has no
    MAC key for a new one, nor for a head that would name it."""
    with db(history.home) as conn:
        conn.execute("""INSERT INTO audit (seq, at, actor, action, details, prev_hash, hash, mac)
                        SELECT 7, at, actor, 'user.revoke', details, hash, hash, mac FROM audit WHERE seq = 6""")
    run, result = verify(history.home)
    assert run.returncode == 1 and result["first_bad"] == 7 and "chain" in found_by(result), result
    assert run.stderr.startswith("hsmkm: error: audit chain broken at entry 7: ")
    assert verify(history.home, history.checkpoint)[0].returncode == 1


def test_the_head_set_back_with_the_entries_kept_is_found(history: History) -> None:
    """The head row from an earlier copy (entry 3, genuinely MAC'd) while entries 4-6 stay."""
    with db(history.home) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (history.head_after_3,))
    run, result = verify(history.home)
    assert run.returncode == 1 and "head" in found_by(result), result
    assert run.stderr.startswith("hsmkm: error: audit chain broken at entry ")
    assert verify(history.home, history.checkpoint)[0].returncode == 1


@pytest.mark.parametrize("head", ["head-left", "head-deleted"])
def test_the_whole_log_deleted_is_found(history: History, head: str) -> None:
    with db(history.home) as conn:
        conn.execute("DELETE FROM audit")
        if head == "head-deleted":
            conn.execute("DELETE FROM meta WHERE key = 'audit_head'")
    run, result = verify(history.home)
    assert run.returncode == 1 and result["ok"] is False and "anchor" in found_by(result), result
    assert run.stderr.startswith("hsmkm: error: audit chain broken at entry 1: ")
    assert len(run.stderr.strip().splitlines()) == 1
    run, result = verify(history.home, history.checkpoint)
    assert run.returncode == 1 and "checkpoint" in found_by(result)


# --- no ordinary state change writes over a cut --------------------------------------------


@pytest.mark.parametrize("restore_head", [False, True], ids=["head-left", "older-head-restored"])
def test_a_change_after_a_cut_is_refused_and_changes_nothing(history: History, restore_head: bool) -> None:
    with db(history.home) as conn:
        conn.execute("DELETE FROM audit WHERE seq > 3")
        if restore_head:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'", (history.head_after_3,))
    run = hsmkm("user", "add", "dave@example.com", home=history.home, check=False)
    assert run.returncode == 1
    assert run.stderr.startswith("hsmkm: error: ") and len(run.stderr.strip().splitlines()) == 1
    assert ("token's anchor" if restore_head else "its head names entry 6") in run.stderr
    assert "Traceback" not in run.stderr
    assert entries(history.home) == [1, 2, 3]
    with db(history.home) as conn:
        assert conn.execute("SELECT COUNT(*) FROM users WHERE email = 'dave@example.com'").fetchone()[0] == 0
    assert_found(history.home, history.checkpoint, 4, set())


@pytest.mark.slow
def test_a_whole_database_rollback_is_found_and_no_crl_number_is_reused(history: History, tmp_path: Path) -> None:
    """The writer keeps a copy of km.db, bob is enrolled and revoked and a CRL published, and
    the copy is put back (bob un-revoked). Found by the anchor and the later checkpoint; every
    state change, CRL publication first, is refused, so no CRL number is drawn twice."""
    home = history.home
    aside = tmp_path / "km-copy.db"
    with db(home) as src, sqlite3.connect(aside) as dst:
        src.backup(dst)
    hsmkm(
        "enroll",
        "--km",
        str(home),
        "--email",
        "bob@example.com",
        "--code-source",
        "env:CODE",
        "--keystore",
        str(tmp_path / "bob.epf"),
        "--password-source",
        "env:PW",
        env={"CODE": history.codes["bob"], "PW": PW},
    )
    hsmkm("user", "revoke", "bob@example.com", "--reason", "keyCompromise", home=home)
    published = hsmkm("crl", "publish", "--json", home=home).json()
    assert published["number"] == 2
    later = tmp_path / "later.p7m"
    hsmkm("audit", "checkpoint", "-o", str(later), home=home)
    crl_before = (home / "pub/crl/full.crl").read_bytes()

    with sqlite3.connect(aside) as src, db(home) as dst:
        src.backup(dst)
    with db(home) as conn:  # bob is valid again in the database
        assert conn.execute("SELECT COUNT(*) FROM certificates WHERE status = 'revoked'").fetchone()[0] == 0

    run, result = verify(home)
    assert run.returncode == 1 and result["first_bad"] == 7 and found_by(result) == {"anchor"}
    problems = " | ".join(f["problem"] for f in result["findings"])
    assert "the log ends at entry 6 but the token's anchor names entry" in problems
    assert "the database's last CRL number is 1 but the token's anchor says 2 was drawn" in problems
    run, result = verify(home, later)
    assert run.returncode == 1 and "checkpoint" in found_by(result)
    # The earlier checkpoint (entry 6) is still held by the rolled-back log: it bounds rewrites
    # at or below it, not a rollback to it.
    assert "checkpoint" not in found_by(verify(home, history.checkpoint)[1])

    run = hsmkm("crl", "publish", "--json", home=home, check=False)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.startswith("hsmkm: error: ") and "rolled back" in run.stderr
    assert (home / "pub/crl/full.crl").read_bytes() == crl_before
    assert parse_crl(crl_before).number == 2
    for args in (
        ["user", "revoke", "alice@example.com"],
        ["user", "add", "eve@example.com"],
        ["audit", "checkpoint", "-o", str(tmp_path / "refused.p7m")],
    ):
        run = hsmkm(*args, home=home, check=False)
        assert run.returncode == 1 and "hsmkm: error: " in run.stderr, args
    assert not (tmp_path / "refused.p7m").exists()
    assert entries(home) == [1, 2, 3, 4, 5, 6]


def test_an_operators_restore_is_accepted_on_the_record_and_crl_numbers_go_on(history: History, tmp_path: Path) -> None:
    """km.db restored from a backup: refused like any rollback until the KM PIN holder accepts
    it; the acceptance is an audit entry, the next CRL is numbered above every one drawn,
    and a checkpoint from before the loss still shows what was lost."""
    home = history.home
    run = hsmkm("audit", "accept-rollback", "--yes", home=home, check=False)
    assert run.returncode == 2 and "there is no rollback to accept" in run.stderr
    aside = tmp_path / "backup.db"
    with db(home) as src, sqlite3.connect(aside) as dst:
        src.backup(dst)
    hsmkm("user", "add", "dave@example.com", home=home)  # 7
    assert hsmkm("crl", "publish", "--json", home=home).json()["number"] == 2  # 8
    later = tmp_path / "later.p7m"
    hsmkm("audit", "checkpoint", "-o", str(later), home=home)  # 9
    with sqlite3.connect(aside) as src, db(home) as dst:
        src.backup(dst)
    assert hsmkm("user", "add", "erin@example.com", home=home, check=False).returncode == 1

    run = hsmkm("audit", "accept-rollback", home=home, check=False)  # no terminal, no --yes
    assert run.returncode == 2 and "--yes" in run.stderr
    done = hsmkm("audit", "accept-rollback", "--yes", "--json", home=home).json()
    assert done == {"log_ended_at": 6, "anchored_entry": 9, "entry": 7, "crl_number": 2}
    run, result = verify(home, history.checkpoint)
    assert run.returncode == 0 and result["anchor"]["seq"] == 7
    assert verify(home, later)[0].returncode == 1  # what was lost stays visible to the witness
    assert hsmkm("crl", "publish", "--json", home=home).json()["number"] == 3
    hsmkm("user", "add", "erin@example.com", home=home)
    with db(home) as conn:
        action, details = conn.execute("SELECT action, details FROM audit WHERE seq = 7").fetchone()
    assert action == "audit.rollback-accepted" and '"anchored_entry":9' in details


def test_no_rollback_is_accepted_onto_a_broken_log(history: History) -> None:
    with db(history.home) as conn:
        conn.execute("DELETE FROM audit WHERE seq > 3")
    run = hsmkm("audit", "accept-rollback", "--yes", home=history.home, check=False)
    assert run.returncode == 1 and "only a rollback onto an intact log can be accepted" in run.stderr
    assert entries(history.home) == [1, 2, 3]


# --- what an honest crash leaves is no finding ------------------------------------------------


def _last_seq(home: Path) -> int:
    with sqlite3.connect(home / "km.db") as conn:
        return int(conn.execute("SELECT MAX(seq) FROM audit").fetchone()[0])


def km_python(home: Path, code: str, *args: str) -> str:
    """Python with the KM opened on its trial PIN (the KM operator's own tools)."""
    prologue = (
        "import sys\nfrom pathlib import Path\nfrom hsmkm.km.config import Home\n"
        "from hsmkm.km.manager import KeyManager\nfrom hsmkm.km.publishers import publisher_for\nhome = Path(sys.argv[1])\n"
        "km = KeyManager.open(home, Home(home).trial_pin_file('km').read_text().strip(), publisher=publisher_for(home))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", prologue + code, str(home), *args],
        capture_output=True,
        env={**os.environ, **softhsm_env(home)},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()


def test_a_commit_whose_anchor_a_crash_prevented_is_no_finding(history: History) -> None:
    """The anchor is written after the commit: a crash between the two leaves the database
    one entry ahead of the anchor, which is allowed; the next change anchors again."""
    km_python(
        history.home,
        (
            "from hsmkm.km.audit import AuditAction, AuditLog\n"
            "with km.db.write() as tx:\n"
            "    AuditLog(tx, km.audit_key.hmac_sha256, km.clock).append('operator', AuditAction.USER_ADD, {'email': 'x'})\n"
        ),
    )
    run, result = verify(history.home, history.checkpoint)
    assert run.returncode == 0 and result["entries"] == 7 and result["anchor"]["seq"] == 6
    hsmkm("user", "add", "dave@example.com", home=history.home)
    run, result = verify(history.home)
    assert run.returncode == 0 and result["anchor"]["seq"] == 8


def _anchor_slot_files(home: Path) -> tuple[Path, Path]:
    """(the slot written last, the other one): after init only the slots are rewritten among
    the KM token's objects (token.object aside), and init makes them last."""
    newest = max((home / "softhsm").rglob("*.object"), key=lambda p: p.stat().st_mtime_ns)
    objects = sorted(
        (p for p in newest.parent.glob("*.object") if p.name != "token.object"), key=lambda p: p.stat().st_mtime_ns
    )
    return objects[-1], objects[-2]


def test_a_kill_9_during_an_anchor_write_leaves_the_previous_anchor(history: History) -> None:
    """SoftHSM2 rewrites an object in place (truncate, then write): a real kill -9 between the
    two (strace's fault injection, at the write into the slot being replaced) empties that
    slot. The other slot still holds the anchor before it, the committed change is no finding,
    and the next change makes the lost slot again."""
    _, older = _anchor_slot_files(history.home)
    proc = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-o",
            os.devnull,
            "-P",
            str(older),
            "-e",
            "trace=write",
            "-e",
            "inject=write:signal=KILL:when=1",
            str(Path(sys.executable).parent / "hsmkm"),
            "--home",
            str(history.home),
            "user",
            "add",
            "dave@example.com",
        ],
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -9 or proc.returncode == 137, proc.stderr
    assert older.stat().st_size == 0  # what the kill left
    run, result = verify(history.home, history.checkpoint)
    assert run.returncode == 0 and result["anchor"]["seq"] == 6 and result["entries"] == 7  # dave committed
    hsmkm("user", "add", "erin@example.com", home=history.home)
    # 8, or 9 when opening the KM restored the emptied token file from its verified copy,
    # which is a change of its own (audited as a token repair) before erin's
    erin = _last_seq(history.home)
    assert erin in (8, 9)
    slots = km_python(history.home, "print(*sorted(a.seq for a, _ in km.anchor._slots()[0]))").split()
    # two whole slots again: the new one, and one from before the kill (a restored token file
    # may bring back an older copy of the lost slot; either is a whole anchor)
    assert len(slots) == 2 and int(slots[1]) == erin and int(slots[0]) <= 6
    hsmkm("user", "add", "frank@example.com", home=history.home)  # replaces the older slot
    frank = _last_seq(history.home)
    out = km_python(history.home, "print(sorted(a.seq for a, _ in km.anchor._slots()[0]))")
    assert out.strip() == f"[{erin}, {frank}]" and frank == erin + 1
    assert verify(history.home)[1]["ok"] is True


def test_the_newest_anchor_slot_lost_leaves_the_one_before(history: History) -> None:
    newest, _ = _anchor_slot_files(history.home)
    newest.write_bytes(b"")
    run, result = verify(history.home)
    assert run.returncode == 0 and result["anchor"]["seq"] == 5
    hsmkm("user", "add", "dave@example.com", home=history.home)
    assert verify(history.home, history.checkpoint)[1]["anchor"]["seq"] == 7


@pytest.mark.slow
def test_concurrent_changes_never_move_the_anchor_backwards(history: History) -> None:
    procs = [
        subprocess.Popen(
            [
                str(Path(sys.executable).parent / "hsmkm"),
                "--home",
                str(history.home),
                "user",
                "add",
                f"u{i}@example.com",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(8)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    run, result = verify(history.home, history.checkpoint)
    assert run.returncode == 0 and result["entries"] == 14 and result["anchor"]["seq"] == 14


@pytest.mark.slow
def test_verify_during_concurrent_changes_finds_nothing(history: History) -> None:
    """Readers see one snapshot, read after the anchor: commits and anchor writes going on
    meanwhile are never a finding."""
    exe = str(Path(sys.executable).parent / "hsmkm")
    writers = [
        subprocess.Popen(
            [exe, "--home", str(history.home), "user", "add", f"w{i}@example.com"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(6)
    ]
    readers = [
        subprocess.Popen(
            [exe, "--home", str(history.home), "audit", "verify", "--checkpoint", str(history.checkpoint)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(6)
    ]
    for p in writers + readers:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
    assert verify(history.home)[1]["anchor"]["seq"] == 12


# --- the limit: the KM PIN holder, bounded by checkpoints held elsewhere -------------------

_REWRITE = """
import json, sqlite3
from hsmkm.km.audit import GENESIS, Head, _entry_hash, _head_bytes
target = int(sys.argv[2])
mac = km.audit_key.hmac_sha256
conn = sqlite3.connect(home / "km.db", isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
prev = GENESIS
for seq, at, actor, action, details in conn.execute(
        "SELECT seq, at, actor, action, details FROM audit ORDER BY seq").fetchall():
    if seq == target:
        details = json.dumps({"email": "mallory@example.com", "name": None}, sort_keys=True, separators=(",", ":"))
    digest = _entry_hash(prev, seq, at, actor, action, details)
    conn.execute("UPDATE audit SET details = ?, prev_hash = ?, hash = ?, mac = ? WHERE seq = ?",
                 (details, prev, digest, mac(digest), seq))
    prev = digest
conn.execute("UPDATE meta SET value = ? WHERE key = 'audit_head'",
             (f"{seq}:{digest.hex()}:{mac(_head_bytes(seq, digest)).hex()}",))
conn.execute("COMMIT")
km.anchor.start(Head(seq, digest))
"""


def test_the_km_pin_holder_can_rewrite_the_log_but_not_below_a_checkpoint_held_elsewhere(history: History) -> None:
    """Inherent: with the KM PIN the audit key MACs anything and the anchor is rewritten, so
    `audit verify` alone passes. A checkpoint kept by an officer finds every rewrite at or
    below its entry; what came after it only a later checkpoint can vouch for."""
    home = history.home
    hsmkm("user", "add", "dave@example.com", home=home)  # 7, after the checkpoint (6)
    km_python(home, _REWRITE, "7")  # dave's entry, after the checkpoint: beyond what it bounds
    assert verify(home, history.checkpoint)[0].returncode == 0
    km_python(home, _REWRITE, "2")  # alice's entry, below the checkpoint
    run, result = verify(home)
    assert run.returncode == 0, "the PIN holder's rewrite passes without a checkpoint (the inherent limit)"
    run, result = verify(home, history.checkpoint)
    assert run.returncode == 1 and found_by(result) == {"checkpoint"}
    assert result["first_bad"] == 6
    assert "the log up to entry 6 differs from the checkpoint of" in run.stderr


# --- checkpoints: standard, outsider-verifiable, and refused when not this KM's --------------


@pytest.mark.interop
def test_openssl_verifies_a_checkpoint_with_the_ca_certificate_alone(history: History, tmp_path: Path) -> None:
    import json

    ca_pem = tmp_path / "ca.pem"
    subprocess.run(
        ["openssl", "x509", "-inform", "DER", "-in", str(history.home / "pub/ca.crt"), "-out", str(ca_pem)], check=True
    )
    proc = subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "DER", "-in", str(history.checkpoint), "-CAfile", str(ca_pem)],
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert b"Verification successful" in proc.stderr
    statement = json.loads(proc.stdout)
    with db(history.home) as conn:
        digest = bytes(conn.execute("SELECT hash FROM audit WHERE seq = 6").fetchone()[0])
    assert statement["type"] == "hsmkm-audit-checkpoint" and statement["seq"] == 6
    assert statement["hash"] == digest.hex() and statement["crl_number"] == 1
    assert statement["ca_subject"] == "CN=Audit CA,O=hsmkm tests"
    # and a PEM copy verifies the same way, in openssl and in hsmkm
    pem = tmp_path / "cp.pem"
    hsmkm("audit", "checkpoint", "-o", str(pem), "--pem", home=history.home)
    assert pem.read_text().startswith("-----BEGIN CMS-----")
    proc = subprocess.run(
        ["openssl", "cms", "-verify", "-inform", "PEM", "-in", str(pem), "-CAfile", str(ca_pem), "-out", os.devnull],
        capture_output=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert verify(history.home, pem, history.checkpoint)[0].returncode == 0


@pytest.mark.slow
def test_a_tampered_or_foreign_checkpoint_is_refused_in_one_line(
    history: History, km_home: Path, tmp_path: Path
) -> None:
    data = history.checkpoint.read_bytes()
    at = data.index(b'"seq": 6')
    tampered = tmp_path / "tampered.p7m"
    tampered.write_bytes(data[:at] + b'"seq": 5' + data[at + 8 :])
    foreign = tmp_path / "foreign.p7m"
    hsmkm("audit", "checkpoint", "-o", str(foreign), home=km_home)
    garbage = tmp_path / "garbage.p7m"
    garbage.write_bytes(b"\x30\x03\x02\x01")
    for path, code in ((tampered, 1), (foreign, 1), (garbage, 2), (tmp_path, 2), (tmp_path / "absent", 2)):
        run = hsmkm("audit", "verify", "--checkpoint", str(path), home=history.home, check=False)
        assert run.returncode == code, (path, run.stderr)
        assert run.stderr.startswith("hsmkm: error: ") and len(run.stderr.strip().splitlines()) == 1, run.stderr
        assert "internal error" not in run.stderr


def test_no_checkpoint_is_signed_for_a_broken_log(history: History, tmp_path: Path) -> None:
    with db(history.home) as conn:
        conn.execute("UPDATE audit SET actor = 'nobody' WHERE seq = 4")
    out = tmp_path / "cp.p7m"
    run = hsmkm("audit", "checkpoint", "-o", str(out), home=history.home, check=False)
    assert run.returncode == 1 and "not signing a checkpoint: audit chain broken at entry 4" in run.stderr
    assert not out.exists()
    assert entries(history.home) == [1, 2, 3, 4, 5, 6]


def test_help_shows_checkpoint_and_verify_examples() -> None:
    group = hsmkm("audit", "--help").stdout
    assert "checkpoint" in group and "verify" in group
    text = hsmkm("audit", "checkpoint", "--help").stdout
    assert "hsmkm --home ./km audit checkpoint -o" in text and "openssl cms -verify" in text
    text = hsmkm("audit", "verify", "--help").stdout
    assert "--checkpoint" in text and "audit verify --checkpoint" in text


# --- properties: any writer's mutation below a witness is found; anchors round-trip ---------


def _software_log(n: int, where: Path) -> tuple[Any, Any]:
    """A log of n entries in a throwaway database in ``where``, MAC'd with a software key (the
    token's HMAC does the same sums)."""
    import hashlib
    import hmac as hmac_mod
    from datetime import datetime, timedelta

    from hsmkm.km.audit import AuditAction, AuditLog
    from hsmkm.store.database import Database

    db = Database.create(where / "km.db")
    key = b"k" * 32

    def mac(data: bytes) -> bytes:
        return hmac_mod.new(key, data, hashlib.sha256).digest()

    start = datetime(2026, 1, 1, tzinfo=UTC)
    ticks = iter(range(10_000))
    log = AuditLog(db.reader(), mac, lambda: start + timedelta(seconds=next(ticks)))
    for i in range(n):
        log.append("operator", AuditAction.USER_ADD, {"email": f"u{i}@example.com"})
    return db, mac


_MUTATIONS = st.sampled_from(["edit", "delete", "swap", "truncate", "rewrite_hash"])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 12), data=st.data(), kind=_MUTATIONS)
def test_any_writer_mutation_at_or_below_a_witness_is_found(
    tmp_path_factory: pytest.TempPathFactory, n: int, data: st.DataObject, kind: str
) -> None:
    from hsmkm.km.audit import AuditLog, FindingSource, Witness, _entry_hash

    db, mac = _software_log(n, tmp_path_factory.mktemp("audit-log"))
    conn = db.conn  # the database writer's raw access
    w_seq = data.draw(st.integers(1, n), label="witnessed entry")
    digest = bytes(conn.execute("SELECT hash FROM audit WHERE seq = ?", (w_seq,)).fetchone()[0])
    witness = Witness(FindingSource.CHECKPOINT, w_seq, digest, 0, "the checkpoint")
    target = data.draw(st.integers(1, w_seq), label="mutated entry")
    if kind == "edit":
        conn.execute("UPDATE audit SET details = details || ' ' WHERE seq = ?", (target,))
    elif kind == "delete":
        conn.execute("DELETE FROM audit WHERE seq = ?", (target,))
    elif kind == "swap":
        other = data.draw(st.integers(1, n).filter(lambda s: s != target), label="swapped with")
        conn.execute("UPDATE audit SET seq = -1 WHERE seq = ?", (target,))
        conn.execute("UPDATE audit SET seq = ? WHERE seq = ?", (target, other))
        conn.execute("UPDATE audit SET seq = ? WHERE seq = -1", (other,))
    elif kind == "truncate":
        conn.execute("DELETE FROM audit WHERE seq >= ?", (target,))
    else:  # the writer recomputes the keyless hashes from the target on (no MAC key)
        rows = conn.execute(
            "SELECT seq, at, actor, action, details, prev_hash FROM audit WHERE seq >= ? ORDER BY seq", (target,)
        ).fetchall()
        prev = bytes(rows[0][5])
        for seq, at, actor, action, details, _ in rows:
            details = details + " " if seq == target else details
            d = _entry_hash(prev, seq, at, actor, action, details)
            conn.execute("UPDATE audit SET details = ?, prev_hash = ?, hash = ? WHERE seq = ?", (details, prev, d, seq))
            prev = d
    from hsmkm.clock import system_clock

    report = AuditLog(db.reader(), mac, system_clock).verify([witness])
    db.close()
    shutil.rmtree(db.path.parent)
    assert not report.ok
    assert any(f.source is FindingSource.CHECKPOINT for f in report.findings), report
    assert report.first_bad is not None and report.first_bad <= w_seq + 1


@settings(max_examples=100, deadline=None)
@given(
    seq=st.integers(1, 2**63 - 1),
    digest=st.binary(min_size=32, max_size=32),
    crl=st.integers(0, 2**63 - 1),
    flip=st.integers(0, 10_000),
)
def test_anchor_labels_round_trip_and_any_changed_character_is_refused(
    seq: int, digest: bytes, crl: int, flip: int
) -> None:
    import hashlib
    import hmac as hmac_mod

    from hsmkm.km.anchor import Anchor, _decode, _encode

    def mac(data: bytes) -> bytes:
        return hmac_mod.new(b"a" * 32, data, hashlib.sha256).digest()

    anchor = Anchor(seq, digest, crl)
    label = _encode(anchor, mac)
    assert _decode(label, mac) == anchor
    i = flip % len(label)
    changed = label[:i] + ("0" if label[i] != "0" else "1") + label[i + 1 :]
    assert _decode(changed, mac) is None
    assert _decode(label.upper(), mac) is None and _decode(label.replace(" ", "  ", 1), mac) is None
