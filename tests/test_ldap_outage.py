"""Nothing lost while the directory is down: slapd stopped while 100 users enroll, 10 are
revoked and 10 earlier users enroll again; started again, one drain makes the directory equal
the database, and slapd's own change log shows no entry ever went backwards."""

from __future__ import annotations

import base64
from collections import defaultdict
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import hsmkm, trial_pin
from hsmkm import errors
from hsmkm.bench.slapd import Slapd
from hsmkm.client.enroll import build_csr
from hsmkm.km.config import LdapConfig
from hsmkm.km.enroll import enroll
from hsmkm.km.manager import KeyManager
from hsmkm.km.publishers import publisher_for
from hsmkm.km.publishers.ldap_conn import LdapConnection
from hsmkm.km.revocation import revoke_user
from hsmkm.km.users import add_user, reenable_user
from hsmkm.protocol import EnrollRequest
from hsmkm.x509.crl import RevocationReason
from ldap_helpers import configure, values

pytestmark = pytest.mark.slow


def _read_file_secret(spec: str, what: str) -> str:
    assert spec.startswith("file:"), what
    return Path(spec[len("file:") :]).read_text()


def _open(home: Path) -> KeyManager:
    return KeyManager.open(home, trial_pin(home, "km"), actor="test", publisher=publisher_for(home, _read_file_secret))


def _enroll(km: KeyManager, email: str, code: str, key: ec.EllipticCurvePrivateKey) -> None:
    enroll(km, EnrollRequest(email, code, build_csr(key, email)))


def _history(audit_log: Path) -> dict[str, list[set[bytes]]]:
    """Per entry DN, the ``userCertificate;binary`` values each change left (empty: deleted)."""
    out: dict[str, list[set[bytes]]] = defaultdict(list)
    for record in audit_log.read_text().split("\n\n"):
        lines = record.replace("\n ", "").splitlines()
        dn = next((line[4:] for line in lines if line.startswith("dn: ")), None)
        if dn is None or not dn.startswith("mail="):
            continue
        if "changetype: delete" in lines:
            out[dn].append(set())
            continue
        certs = {
            base64.b64decode(line.split(":: ", 1)[1]) for line in lines if line.startswith("userCertificate;binary:: ")
        }
        out[dn].append(certs)
    return out


def test_a_directory_down_during_100_enrollments_and_10_revocations_ends_equal_to_the_database(
    tmp_path: Path, slapd: Slapd, ldap_base: str
) -> None:
    home = tmp_path / "km"
    hsmkm("init", "--ca-subject", "CN=Outage CA,O=hsmkm tests", "--ca-key", "p256", home=home)
    configure(home, slapd, ldap_base)
    key = ec.generate_private_key(ec.SECP256R1())
    early = [f"early{i}@example.com" for i in range(10)]
    km = _open(home)
    for email in early:
        _enroll(km, email, add_user(km, email, None)[1], key)
    first_generation = {
        e: set(values(slapd.search(ldap_base, f"(mail={e})", "userCertificate;binary"), "userCertificate;binary"))
        for e in early
    }
    assert all(len(c) == 2 for c in first_generation.values())

    slapd.stop()
    try:
        fresh = [f"user{i}@example.com" for i in range(100)]
        for email in fresh:
            _enroll(km, email, add_user(km, email, None)[1], key)
        for email in fresh[:10]:
            revoke_user(km, email, RevocationReason.KEY_COMPROMISE)
        for email in early:
            _enroll(km, email, reenable_user(km, email), key)
        with km.db.read() as tx:
            state = tx.outbox.state()
        assert state.depth >= 110 and state.last_error is not None and "unreachable" in state.last_error
        # The files did not wait for the directory.
        assert (home / "pub" / "certs" / f"{fresh[-1]}.enc.crt").exists()
        assert not (home / "pub" / "certs" / f"{fresh[0]}.enc.crt").exists()
        down = hsmkm("directory", "sync", home=home, check=False)
        assert down.returncode == errors.ExitCode.UNREACHABLE and down.stderr.startswith("hsmkm: error: ")
        assert len(down.stderr.strip().splitlines()) == 1
        assert "queued" in hsmkm("status", home=home).stdout
    finally:
        slapd.start()

    # Any command drains what is queued when it starts; sync then finds nothing left.
    assert hsmkm("directory", "sync", "--json", home=home).json()["pending"] == 0

    with km.db.read() as tx:
        expected = {e: set(tx.certs.directory_entry(e).values()) for e in sorted(tx.users.emails())}
        order = {e: [r.der for r in tx.certs.of_user(tx.users.by_email(e).id)] for e in early}  # type: ignore[union-attr]
        assert tx.outbox.state().depth == 0
    listing = slapd.search(ldap_base, "(objectClass=pkiUser)", "mail", "userCertificate;binary")
    in_ldap: dict[str, set[bytes]] = {}
    for record in listing.strip().split("\n\n"):
        mail = next(line[6:] for line in record.splitlines() if line.startswith("mail: "))
        in_ldap[mail] = set(values(record, "userCertificate;binary"))
    assert in_ldap == {e: c for e, c in expected.items() if c}
    assert all(e not in in_ldap for e in fresh[:10])
    for e in early:
        assert in_ldap[e].isdisjoint(first_generation[e])  # the re-enrollment's certificates

    history = _history(slapd.audit_log)
    for email in early:
        rank = {der: i for i, der in enumerate(order[email])}
        seen = [max(rank[d] for d in written) for written in history[f"mail={email},{ldap_base}"] if written]
        assert seen == sorted(seen) and seen[-1] == len(order[email]) - 1, email
    for email in fresh[10:]:
        (only,) = [w for w in history[f"mail={email},{ldap_base}"] if w]  # written once, the current pair
        assert only == expected[email]


def test_the_connection_backs_off_while_the_directory_is_down(slapd: Slapd) -> None:
    """After a failed connect the next tries are refused at once until the backoff has passed,
    and the backoff doubles up to its bound."""
    now = [0.0]
    conn = LdapConnection(LdapConfig("ldap://127.0.0.1:1", "dc=example,dc=com"), None, monotonic=lambda: now[0])
    with pytest.raises(errors.Unreachable, match="unreachable"):
        conn.get()
    with pytest.raises(errors.Unreachable, match="retrying later"):
        conn.get()  # inside the first second: not even tried
    delays = []
    for _ in range(8):
        now[0] = conn._retry_at
        with pytest.raises(errors.Unreachable):
            conn.get()
        delays.append(conn._delay)
    assert delays == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]
    good = LdapConnection(LdapConfig(slapd.url, slapd.suffix), None)
    assert good.get() is good.get()  # connected once, reused
