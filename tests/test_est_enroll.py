"""EST enrollment on the KM side: one code, two stages (SIGN: simpleenroll, KEY: serverkeygen)
in either order; each stage's retry gets the same answer and never a second certificate; a
wrong code is counted exactly (also from 20 processes at once) and the code then locked; an
unknown address is refused like a wrong code; the KEY stage archives the key it sends, which
a quorum recovery opens, and a recovery code's key history comes back; a failure before the
commit leaves nothing. Real SoftHSM2 KMs, real openssl."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import downgrade_database, hsmkm, trial_pin
from custody_helpers import approve
from hsmkm import errors
from hsmkm.est import csr as est_csr
from hsmkm.est import csrattrs, keypart
from hsmkm.keys.base import PrivateKey
from hsmkm.km import archive, est_enroll, kept, recovery, users
from hsmkm.km.manager import KeyManager
from hsmkm.km.publishers import publisher_for
from hsmkm.smimecaps import ClientProfile

OID_SMIME_CAPABILITIES = x509.ObjectIdentifier("1.2.840.113549.1.9.15")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One KM for the module (each test enrolls users of its own)."""
    root = tmp_path_factory.mktemp("est-enroll") / "km"
    hsmkm("init", "--ca-subject", "CN=EST Enroll CA,O=hsmkm tests", "--ca-key", "p256", "--user-key", "p256", home=root)
    return root


def _km(home: Path, clock: Callable[[], datetime] | None = None) -> KeyManager:
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    return KeyManager.open(home, trial_pin(home, "km"), actor="test", publisher=publisher_for(home), **extra)


@pytest.fixture
def km(home: Path) -> Iterator[KeyManager]:
    k = _km(home)
    yield k
    k.close()


@pytest.fixture
def seam() -> Iterator[None]:
    original = est_enroll._before_commit
    yield
    est_enroll._before_commit = original


def _user(km: KeyManager, email: str, settings: users.UserSettings | None = None) -> str:
    _, code = users.add_user(km, email, None, settings or users.UserSettings())
    return code


def _request(email: str, key_id: bytes | None = None, key: PrivateKey | None = None) -> est_csr.EstCsr:
    return est_csr.parse(est_csr.build(key or ec.generate_private_key(ec.SECP256R1()), email, key_id))


def _keygen_request(email: str) -> tuple[est_csr.EstCsr, bytes]:
    key_id = os.urandom(16)
    return _request(email, key_id), key_id


def _open(km: KeyManager, code: str, key_id: bytes, part: bytes) -> PrivateKey:
    return keypart.open_key(part, keypart.kek(code, key_id), key_id, km.ca_cert).private_key


def _priv(key: PrivateKey) -> object:
    return key.private_numbers()


def _rows(km: KeyManager, sql: str, *args: object) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in km.db.conn.execute(sql, args).fetchall()]


def _user_id(km: KeyManager, email: str) -> int:
    with km.db.read() as tx:
        return users.find_user(tx, email).id


def _certs(km: KeyManager, email: str) -> list[tuple[str, int]]:
    """(kind, current) of every certificate of the user, in issue order."""
    uid = _user_id(km, email)
    return _rows(km, "SELECT kind, current FROM certificates WHERE user_id = ? ORDER BY issued_at, serial", uid)


def _code(km: KeyManager, email: str) -> tuple[Any, ...]:
    """The user's latest code: (attempts, used_at, sign_done_at, key_done_at)."""
    uid = _user_id(km, email)
    return _rows(
        km,
        "SELECT attempts, used_at, sign_done_at, key_done_at FROM enrollment_codes WHERE user_id = ? "
        "ORDER BY id DESC LIMIT 1",
        uid,
    )[0]


def _status(km: KeyManager, email: str) -> users.UserStatus:
    with km.db.read() as tx:
        return users.find_user(tx, email).status


def _actions(km: KeyManager) -> list[str]:
    return [r[0] for r in _rows(km, "SELECT action FROM audit ORDER BY seq")]


def _audit_ok(home: Path) -> None:
    assert hsmkm("audit", "verify", "--json", home=home).json()["ok"] is True


# --- both orders ----------------------------------------------------------------------------------


def test_sign_then_key_issues_both_certificates_and_burns_the_code(home: Path, km: KeyManager) -> None:
    email = "sam@example.com"
    code = _user(km, email)
    sign_key = ec.generate_private_key(ec.SECP256R1())
    before = len(_actions(km))
    sign_cert = est_enroll.simple_enroll(km, email, code, _request(email, key=sign_key))
    assert sign_cert.public_key() == sign_key.public_key()
    assert sign_cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert _status(km, email) is users.UserStatus.ACTIVE  # the first stage done
    attempts, used_at, sign_at, key_at = _code(km, email)
    assert attempts == 0 and used_at is None and sign_at is not None and key_at is None
    assert _certs(km, email) == [("sign", 1)]
    published = home / "pub" / "certs"  # the directory gets the user at each stage
    assert (published / f"{email}.sign.crt").read_bytes() == sign_cert.public_bytes(serialization.Encoding.DER)
    assert not (published / f"{email}.enc.crt").exists()

    req, key_id = _keygen_request(email)
    issued = est_enroll.server_keygen(km, email, code, req)
    enc = issued.cert
    assert enc.public_key() != req.csr.public_key()  # the KM's key, not the CSR's
    key = _open(km, code, key_id, issued.key_part)
    assert key.public_key() == enc.public_key()
    assert enc.extensions.get_extension_for_class(x509.KeyUsage).value.key_agreement
    assert _code(km, email)[1] is not None  # burnt: both stages done
    assert _certs(km, email) == [("sign", 1), ("encrypt", 1)]
    assert _actions(km)[before:] == ["enroll.sign", "enroll.key"]
    details = "".join(r[0] for r in _rows(km, "SELECT details FROM audit"))
    assert code not in details and code.replace("-", "") not in details
    # the key sent is the key archived
    uid = _user_id(km, email)
    records = _rows(km, "SELECT cert_serial FROM archive WHERE user_id = ?", uid)
    assert records == [(f"{enc.serial_number:040x}",)]
    assert (published / f"{email}.enc.crt").read_bytes() == enc.public_bytes(serialization.Encoding.DER)
    assert (published / f"{email}.sign.crt").read_bytes() == sign_cert.public_bytes(serialization.Encoding.DER)
    _audit_ok(home)


def test_key_then_sign_works_too(home: Path, km: KeyManager) -> None:
    email = "kim@example.com"
    code = _user(km, email)
    req, key_id = _keygen_request(email)
    issued = est_enroll.server_keygen(km, email, code, req)
    assert _status(km, email) is users.UserStatus.ACTIVE
    _, used_at, sign_at, key_at = _code(km, email)
    assert used_at is None and sign_at is None and key_at is not None
    assert _certs(km, email) == [("encrypt", 1)]
    sign_cert = est_enroll.simple_enroll(km, email, code, _request(email))
    assert _code(km, email)[1] is not None
    assert _certs(km, email) == [("encrypt", 1), ("sign", 1)]
    assert _open(km, code, key_id, issued.key_part).public_key() == issued.cert.public_key()
    assert sign_cert.serial_number != issued.cert.serial_number


def test_a_stage_retires_only_the_current_certificate_of_its_kind(km: KeyManager) -> None:
    email = "rex@example.com"
    code = _user(km, email)
    est_enroll.simple_enroll(km, email, code, _request(email))
    est_enroll.server_keygen(km, email, code, _keygen_request(email)[0])
    again = users.reenable_user(km, email)
    est_enroll.simple_enroll(km, email, again, _request(email))
    assert _certs(km, email) == [("sign", 0), ("encrypt", 1), ("sign", 1)]
    est_enroll.server_keygen(km, email, again, _keygen_request(email)[0])
    assert _certs(km, email) == [("sign", 0), ("encrypt", 0), ("sign", 1), ("encrypt", 1)]


def test_the_certificates_carry_the_users_client_profile(km: KeyManager) -> None:
    from hsmkm.client.enroll import build_csr
    from hsmkm.km import enroll as km_enroll
    from hsmkm.protocol import EnrollRequest

    settings = users.UserSettings(client=ClientProfile.COMPAT)
    code = _user(km, "cleo@example.com", settings)
    sign = est_enroll.simple_enroll(km, "cleo@example.com", code, _request("cleo@example.com"))
    enc = est_enroll.server_keygen(km, "cleo@example.com", code, _keygen_request("cleo@example.com")[0]).cert
    # the one-call enrollment of a user with the same profile: the same SMIMECapabilities
    other = _user(km, "cato@example.com", settings)
    key = ec.generate_private_key(ec.SECP256R1())
    response = km_enroll.enroll(km, EnrollRequest("cato@example.com", other, build_csr(key, "cato@example.com")))
    reference = x509.load_der_x509_certificate(response.sign_cert_der)
    caps = reference.extensions.get_extension_for_oid(OID_SMIME_CAPABILITIES).value
    for cert in (sign, enc):
        assert cert.extensions.get_extension_for_oid(OID_SMIME_CAPABILITIES).value == caps
    plain = _user(km, "cora@example.com")
    cert = est_enroll.simple_enroll(km, "cora@example.com", plain, _request("cora@example.com"))
    with pytest.raises(x509.ExtensionNotFound):  # no profile chosen: none, as the one-call enrollment
        cert.extensions.get_extension_for_oid(OID_SMIME_CAPABILITIES)


# --- retries -------------------------------------------------------------------------------------


def test_each_stage_asked_again_gets_the_same_answer_never_a_second_certificate(home: Path, km: KeyManager) -> None:
    email = "ria@example.com"
    code = _user(km, email)
    sign_key = ec.generate_private_key(ec.SECP256R1())
    first = est_enroll.simple_enroll(km, email, code, _request(email, key=sign_key))
    # half done (KEY not yet): the same certificate for the same key, a new CSR by it
    assert est_enroll.simple_enroll(km, email, code, _request(email, key=sign_key)) == first
    with pytest.raises(errors.CodeRejected):
        est_enroll.simple_enroll(km, email, code, _request(email))  # another key
    req1, id1 = _keygen_request(email)
    issued1 = est_enroll.server_keygen(km, email, code, req1)
    req2, id2 = _keygen_request(email)
    issued2 = est_enroll.server_keygen(km, email, code, req2)  # burnt now, within the window
    assert issued2.cert == issued1.cert and issued2.key_part != issued1.key_part
    key1, key2 = _open(km, code, id1, issued1.key_part), _open(km, code, id2, issued2.key_part)
    assert _priv(key1) == _priv(key2)
    with pytest.raises(errors.MalformedInput):
        _open(km, code, id1, issued2.key_part)  # each part names its own request's identifier
    # after both stages, the signing stage again
    assert est_enroll.simple_enroll(km, email, code, _request(email, key=sign_key)) == first
    with pytest.raises(errors.CodeRejected):
        est_enroll.simple_enroll(km, email, code, _request(email))
    assert _certs(km, email) == [("sign", 1), ("encrypt", 1)]
    assert len(_rows(km, "SELECT id FROM archive WHERE user_id = ?", _user_id(km, email))) == 1
    assert _code(km, email)[0] == 0  # the right code is never counted as a wrong attempt


def test_a_stage_recorded_meanwhile_by_another_request_is_that_requests_answer(
    home: Path, km: KeyManager, seam: None
) -> None:
    """Two requests for one stage at once: the one that commits second gets the first's answer."""
    email = "zed@example.com"
    code = _user(km, email)
    other = _km(home)
    sign_key = ec.generate_private_key(ec.SECP256R1())
    won: list[x509.Certificate] = []
    req, key_id = _keygen_request(email)
    won_key: list[est_enroll.KeyIssued] = []

    def race(k: KeyManager) -> None:
        est_enroll._before_commit = est_enroll._no_hook
        won.append(est_enroll.simple_enroll(other, email, code, _request(email, key=sign_key)))

    est_enroll._before_commit = race
    assert est_enroll.simple_enroll(km, email, code, _request(email, key=sign_key)) == won[0]

    def race_key(k: KeyManager) -> None:
        est_enroll._before_commit = est_enroll._no_hook
        won_key.append(est_enroll.server_keygen(other, email, code, req))

    est_enroll._before_commit = race_key
    req2, id2 = _keygen_request(email)
    mine = est_enroll.server_keygen(km, email, code, req2)
    assert mine.cert == won_key[0].cert
    assert _certs(km, email) == [("sign", 1), ("encrypt", 1)]
    assert len(_rows(km, "SELECT id FROM archive WHERE user_id = ?", _user_id(km, email))) == 1
    assert _priv(_open(km, code, id2, mine.key_part)) == _priv(_open(km, code, key_id, won_key[0].key_part))
    other.close()
    _audit_ok(home)


def test_the_kept_answers_hold_no_key_in_the_clear(home: Path, km: KeyManager) -> None:
    email = "tom@example.com"
    code = _user(km, email)
    req, key_id = _keygen_request(email)
    issued = est_enroll.server_keygen(km, email, code, req)
    der = _open(km, code, key_id, issued.key_part).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    kept_rows = _rows(km, "SELECT stage, sealed FROM enroll_responses")
    assert "key" in {r[0] for r in kept_rows}
    assert all(der not in bytes(r[1]) and der.hex().encode() not in bytes(r[1]) for r in kept_rows)
    assert der[-32:] not in (home / "km.db").read_bytes()


# --- refusals ------------------------------------------------------------------------------------


def _wrong(code: str) -> str:
    return ("B" if code[0] != "B" else "C") + code[1:]


def test_a_wrong_code_is_counted_up_to_the_limit_then_even_the_right_code_is_refused(km: KeyManager) -> None:
    email = "wes@example.com"
    code = _user(km, email)
    limit = km.config.code_max_attempts
    for n in range(1, limit + 1):
        with pytest.raises(errors.CodeRejected, match="^" + est_enroll.REFUSED + "$"):
            est_enroll.simple_enroll(km, email, _wrong(code), _request(email))
        assert _code(km, email)[0] == n
    with pytest.raises(errors.CodeRejected):
        est_enroll.server_keygen(km, email, _wrong(code), _keygen_request(email)[0])
    assert _code(km, email)[0] == limit  # locked: no count beyond the limit
    for stage in (est_enroll.simple_enroll, est_enroll.server_keygen):
        with pytest.raises(errors.CodeRejected):
            stage(km, email, code, _keygen_request(email)[0])
    assert _certs(km, email) == []


def test_wrong_codes_after_one_stage_are_counted_too(km: KeyManager) -> None:
    email = "una@example.com"
    code = _user(km, email)
    est_enroll.simple_enroll(km, email, code, _request(email))
    with pytest.raises(errors.CodeRejected):
        est_enroll.server_keygen(km, email, _wrong(code), _keygen_request(email)[0])
    with pytest.raises(errors.CodeRejected):
        est_enroll.simple_enroll(km, email, _wrong(code), _request(email))
    assert _code(km, email)[0] == 2
    est_enroll.server_keygen(km, email, code, _keygen_request(email)[0])


def _wrong_code_child(home: str, email: str, code: str, barrier: Any, results: Any) -> None:
    km = _km(Path(home))
    req = _request(email)
    barrier.wait(300)
    try:
        est_enroll.simple_enroll(km, email, code, req)
        results.put("enrolled")
    except errors.CodeRejected as exc:
        results.put(str(exc))
    finally:
        km.close()


@pytest.mark.slow
def test_a_wrong_code_from_20_processes_at_once_is_counted_exactly(home: Path, km: KeyManager) -> None:
    email = "pax@example.com"
    code = _user(km, email)
    limit = km.config.code_max_attempts
    before = _actions(km).count("code.rejected")
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(20), ctx.Queue()
    procs = [
        ctx.Process(target=_wrong_code_child, args=(str(home), email, _wrong(code), barrier, results))
        for _ in range(20)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert outcomes == [est_enroll.REFUSED] * 20
    assert _code(km, email)[0] == limit  # exactly the limit, however many raced
    assert _actions(km).count("code.rejected") == before + 20
    with pytest.raises(errors.CodeRejected):
        est_enroll.simple_enroll(km, email, code, _request(email))
    assert _certs(km, email) == []
    _audit_ok(home)


def test_an_unknown_address_is_refused_like_a_wrong_code_and_changes_nothing(km: KeyManager) -> None:
    code = _user(km, "val@example.com")
    with pytest.raises(errors.CodeRejected) as wrong:
        est_enroll.simple_enroll(km, "val@example.com", _wrong(code), _request("val@example.com"))
    before = _rows(km, "SELECT seq FROM audit"), _rows(km, "SELECT * FROM enrollment_codes")
    for email in ("nobody@example.com", "not an address"):
        for call in (est_enroll.simple_enroll, est_enroll.server_keygen, est_enroll.key_history):
            with pytest.raises(errors.CodeRejected) as unknown:
                call(km, email, code, _keygen_request("nobody@example.com")[0])
            assert str(unknown.value) == str(wrong.value) == est_enroll.REFUSED
    assert (_rows(km, "SELECT seq FROM audit"), _rows(km, "SELECT * FROM enrollment_codes")) == before


def test_an_expired_code_is_refused(home: Path, km: KeyManager) -> None:
    email = "eve@example.com"
    code = _user(km, email)
    later = _km(home, clock=lambda: km.clock() + timedelta(days=km.config.code_ttl_days, minutes=1))
    try:
        for call in (est_enroll.simple_enroll, est_enroll.server_keygen):
            with pytest.raises(errors.CodeRejected):
                call(later, email, code, _keygen_request(email)[0])
    finally:
        later.close()
    assert _certs(km, email) == [] and _code(km, email)[0] == 0


def test_a_burnt_code_is_refused_for_every_stage_after_the_replay_window(home: Path, km: KeyManager) -> None:
    email = "bea@example.com"
    code = _user(km, email)
    sign_key = ec.generate_private_key(ec.SECP256R1())
    est_enroll.simple_enroll(km, email, code, _request(email, key=sign_key))
    req, _ = _keygen_request(email)
    est_enroll.server_keygen(km, email, code, req)
    # within the window a retry still answers; just after it nothing does
    at = km.clock() + kept.REPLAY_WINDOW - timedelta(minutes=1)
    within = _km(home, clock=lambda: at)
    est_enroll.simple_enroll(within, email, code, _request(email, key=sign_key))
    within.close()
    after = _km(home, clock=lambda: at + timedelta(minutes=2))
    try:
        with pytest.raises(errors.CodeRejected):
            est_enroll.simple_enroll(after, email, code, _request(email, key=sign_key))
        for call in (est_enroll.server_keygen, est_enroll.key_history):
            with pytest.raises(errors.CodeRejected):
                call(after, email, code, req)
    finally:
        after.close()
    assert _certs(km, email) == [("sign", 1), ("encrypt", 1)]


def test_a_half_done_code_loses_its_retry_after_the_window_but_keeps_the_other_stage(
    home: Path, km: KeyManager
) -> None:
    email = "ida@example.com"
    code = _user(km, email)
    sign_key = ec.generate_private_key(ec.SECP256R1())
    est_enroll.simple_enroll(km, email, code, _request(email, key=sign_key))
    later = _km(home, clock=lambda: km.clock() + kept.REPLAY_WINDOW + timedelta(minutes=1))
    try:
        with pytest.raises(errors.CodeRejected):
            est_enroll.simple_enroll(later, email, code, _request(email, key=sign_key))
        est_enroll.server_keygen(later, email, code, _keygen_request(email)[0])
    finally:
        later.close()
    assert _certs(km, email) == [("sign", 1), ("encrypt", 1)]


def test_the_csr_must_name_the_address_and_serverkeygen_needs_a_decrypt_key_id(km: KeyManager) -> None:
    email = "ned@example.com"
    code = _user(km, email)
    with pytest.raises(errors.PolicyViolation):
        est_enroll.simple_enroll(km, email, code, _request("other@example.com"))
    with pytest.raises(errors.PolicyViolation):
        est_enroll.server_keygen(km, email, code, _keygen_request("other@example.com")[0])
    with pytest.raises(errors.PolicyViolation, match="DecryptKeyIdentifier"):
        est_enroll.server_keygen(km, email, code, _request(email))
    assert _certs(km, email) == [] and _code(km, email)[0] == 0


def test_one_call_enrollment_and_est_do_not_share_a_code(km: KeyManager) -> None:
    from hsmkm.client.enroll import build_csr
    from hsmkm.km import enroll as km_enroll
    from hsmkm.protocol import EnrollRequest

    email = "oda@example.com"
    code = _user(km, email)
    est_enroll.simple_enroll(km, email, code, _request(email))
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(errors.CodeRejected, match="EST"):
        km_enroll.enroll(km, EnrollRequest(email, code, build_csr(key, email)))
    other = "ola@example.com"
    code2 = _user(km, other)
    km_enroll.enroll(km, EnrollRequest(other, code2, build_csr(key, other)))
    with pytest.raises(errors.CodeRejected):
        est_enroll.server_keygen(km, other, code2, _keygen_request(other)[0])
    assert _certs(km, email) == [("sign", 1)]


# --- a failure before the commit -------------------------------------------------------------------


class Crash(Exception):
    pass


def _crash(k: KeyManager) -> None:
    raise Crash()


def test_a_failure_between_sealing_and_commit_leaves_nothing_and_the_retry_succeeds(
    home: Path, km: KeyManager, seam: None
) -> None:
    email = "fay@example.com"
    code = _user(km, email)
    uid = _user_id(km, email)
    before = _rows(km, "SELECT seq FROM audit"), len(_rows(km, "SELECT id FROM archive"))
    est_enroll._before_commit = _crash
    with pytest.raises(Crash):
        est_enroll.server_keygen(km, email, code, _keygen_request(email)[0])
    with pytest.raises(Crash):
        est_enroll.simple_enroll(km, email, code, _request(email))
    assert _certs(km, email) == [] and _rows(km, "SELECT id FROM archive WHERE user_id = ?", uid) == []
    assert _code(km, email) == (0, None, None, None)
    assert _status(km, email) is users.UserStatus.PENDING
    assert (_rows(km, "SELECT seq FROM audit"), len(_rows(km, "SELECT id FROM archive"))) == before
    assert _rows(km, "SELECT COUNT(*) FROM enroll_responses r JOIN enrollment_codes c ON c.id = r.code_row "
                 "WHERE c.user_id = ?", uid) == [(0,)]  # fmt: skip
    est_enroll._before_commit = est_enroll._no_hook
    req, key_id = _keygen_request(email)
    issued = est_enroll.server_keygen(km, email, code, req)
    est_enroll.simple_enroll(km, email, code, _request(email))
    assert _open(km, code, key_id, issued.key_part).public_key() == issued.cert.public_key()
    assert _certs(km, email) == [("encrypt", 1), ("sign", 1)]
    _audit_ok(home)


# --- the key part and the archive ----------------------------------------------------------------


@pytest.mark.interop
def test_openssl_opens_the_key_part_with_the_kek_from_the_code(km: KeyManager, tmp_path: Path) -> None:
    email = "ora@example.com"
    code = _user(km, email)
    req, key_id = _keygen_request(email)
    issued = est_enroll.server_keygen(km, email, code, req)
    part = tmp_path / "key.der"
    part.write_bytes(issued.key_part)
    kek = keypart.kek(code, key_id)
    dec = subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(part), "-secretkey", kek.hex(), "-secretkeyid",
         key_id.hex()],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert dec.returncode == 0, dec.stderr
    key = _open(km, code, key_id, issued.key_part)
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    assert pkcs8 in dec.stdout  # the AsymmetricKeyPackage inside the KM's SignedData
    wrong = subprocess.run(
        ["openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(part), "-secretkey",
         keypart.kek(_wrong(code), key_id).hex(), "-secretkeyid", key_id.hex()],
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert wrong.returncode != 0 and pkcs8 not in wrong.stdout


@pytest.mark.slow
def test_a_quorum_recovery_opens_the_served_key_and_a_recovery_code_brings_the_history_back(
    home: Path, km: KeyManager
) -> None:
    email = "rue@example.com"
    code = _user(km, email)
    req, key_id = _keygen_request(email)
    served = est_enroll.server_keygen(km, email, code, req)
    served_key = _open(km, code, key_id, served.key_part)
    est_enroll.simple_enroll(km, email, code, _request(email))
    assert est_enroll.key_history(km, email, code, _keygen_request(email)[0]) == []  # an ordinary code

    # the archive record of the served key: a quorum of officers opens it
    uid = _user_id(km, email)
    (record,) = archive.records_for_user(km.db.reader(), uid)
    assert record.cert_serial == f"{served.cert.serial_number:040x}"
    rid = recovery.open_request(km, recovery.RequestKind.RECOVERY, "lost laptop", email=email).id
    approve(km, home, rid, "officer1", "officer2")
    done = recovery.complete_recovery(km, rid, None, reenable=True)
    assert done.code is not None
    assert [_priv(k.key) for k in done.keys] == [_priv(served_key)]

    new_code = done.code
    with pytest.raises(errors.PolicyViolation):  # before the KEY stage
        est_enroll.key_history(km, email, new_code, _keygen_request(email)[0])
    est_enroll.simple_enroll(km, email, new_code, _request(email))
    req2, _ = _keygen_request(email)
    fresh = est_enroll.server_keygen(km, email, new_code, req2)
    assert fresh.cert != served.cert
    assert _rows(km, "SELECT COUNT(*) FROM recovered") == [(0,)]  # released in the KEY stage
    for _ in range(2):  # and again (a lost response): the same keys
        hreq, hid = _keygen_request(email)
        (back,) = est_enroll.key_history(km, email, new_code, hreq)
        assert back.cert == served.cert
        assert _priv(_open(km, new_code, hid, back.key_part)) == _priv(served_key)
    with pytest.raises(errors.CodeRejected):
        est_enroll.key_history(km, email, _wrong(new_code), _keygen_request(email)[0])
    _audit_ok(home)


# --- cacerts and csrattrs -------------------------------------------------------------------------


def test_cacerts_is_the_km_ca_and_csrattrs_asks_for_the_decrypt_key_id(km: KeyManager) -> None:
    assert est_enroll.ca_certificates(km) == [km.ca_cert]
    attrs = csrattrs.decode(est_enroll.csr_attributes(km))
    assert csrattrs.OID_DECRYPT_KEY_ID in attrs.oids and csrattrs.OID_EMAIL_ADDRESS in attrs.oids
    assert set(attrs.key_algorithms()) >= {km.config.user_key_alg}


# --- the schema ---------------------------------------------------------------------------------


def test_a_kept_one_call_response_survives_the_upgrade_to_stages(tmp_path: Path) -> None:
    """Revision 0005 moves kept responses to (code, stage) rows: one kept before it still answers."""
    from hsmkm.client.enroll import build_csr
    from hsmkm.km import enroll as km_enroll
    from hsmkm.protocol import EnrollRequest

    home = tmp_path / "km"
    hsmkm("init", "--ca-subject", "CN=Upgrade CA", "--ca-key", "p256", "--user-key", "p256", home=home)
    km = _km(home)
    code = _user(km, "uma@example.com")
    req = EnrollRequest("uma@example.com", code, build_csr(ec.generate_private_key(ec.SECP256R1()), "uma@example.com"))
    first = km_enroll.enroll(km, req)
    km.close()
    downgrade_database(home / "km.db", "0004_published_artifacts")
    with sqlite3.connect(home / "km.db") as conn:
        assert "stage" not in {r[1] for r in conn.execute("PRAGMA table_info(enroll_responses)")}
    assert hsmkm("status", home=home, check=False).returncode == 2  # refused until upgraded
    hsmkm("db", "upgrade", home=home)
    with sqlite3.connect(home / "km.db") as conn:
        assert conn.execute("SELECT stage FROM enroll_responses").fetchall() == [("enroll",)]
    km = _km(home)
    assert km_enroll.enroll(km, req) == first
    km.close()
    _audit_ok(home)
