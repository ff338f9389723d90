"""KM-side EST enrollment (RFC 7030): one code, two stages — SIGN (simpleenroll: the signing
certificate for the CSR's key) and KEY (serverkeygen: the KM makes, archives and certifies the
encryption key) — in either order, and the archived key history of a recovery code.

Each stage is one write transaction and one audit entry: it marks the stage done on the code
(the code is burnt when both are), retires the user's current certificate of its own kind,
records the new one (KEY: and the archive record, and releases a recovery code's history) and
keeps its answer sealed under the code. The token's work happens before, outside the lock.
The same stage asked again with the same code within the replay window gets the kept answer:
the same certificate, and for KEY the same key in a new key part.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmkm import errors
from hsmkm.certnames import CertKind
from hsmkm.est import csr as est_csr
from hsmkm.est import csrattrs, keypart
from hsmkm.est.csr import EstCsr
from hsmkm.keys.algorithms import KeyAlgorithm, algorithm_of
from hsmkm.keys.base import KeyEntry, KeyRole, PrivateKey
from hsmkm.km import archive, directory, kept, users
from hsmkm.km.audit import AuditAction
from hsmkm.km.authority import SerialTaken, record_certificate, serial_hex, sign_user_certificate
from hsmkm.km.enroll_common import ISSUE_TRIES, archive_sealer, check_csr_names, current_record, profile_of
from hsmkm.km.manager import KeyManager
from hsmkm.km.recovery.held import take_recovered
from hsmkm.store.repos.codes import CodeStage
from hsmkm.store.repos.enroll_responses import ResponseKind
from hsmkm.store.repos.users import UserStatus
from hsmkm.store.tx import Tx

# One refusal for an unknown address and for a wrong, used, expired or locked code: the
# answer must not tell which, so that addresses cannot be probed (the audit entry says why).
REFUSED = "enrollment refused: the address or the enrollment code is not accepted"

_KIND = {CodeStage.SIGN: CertKind.SIGN, CodeStage.KEY: CertKind.ENCRYPT}
_KEPT = {CodeStage.SIGN: ResponseKind.SIGN, CodeStage.KEY: ResponseKind.KEY}
_ACTION = {CodeStage.SIGN: AuditAction.ENROLL_SIGN, CodeStage.KEY: AuditAction.ENROLL_KEY}


@dataclass(frozen=True)
class KeyIssued:
    """A key the KM sends: its certificate, and the key in a key part (est.keypart.seal) under
    the KEK ``est.keypart.kek(code, req.decrypt_key_id)`` whose kekid is that identifier."""

    cert: x509.Certificate
    key_part: bytes  # DER ContentInfo(EnvelopedData)


def simple_enroll(km: KeyManager, email: str, code: str, req: EstCsr) -> x509.Certificate:
    """The SIGN stage: the signing certificate for the CSR's key.

    A wrong code or unknown address is ``CodeRejected`` (one attempt counted); the CSR must
    name exactly ``email``. Asked again with the same code within the replay window: the same
    certificate, if the CSR names the same public key (a different one is refused).
    """
    csr = req.csr
    public = csr.public_key()
    sign_alg = algorithm_of(public)  # an unsupported key is refused by name
    address = _address(email)
    check_csr_names(csr, address)

    def same_key(answer: _Answer) -> bool:
        return x509.load_der_x509_certificate(answer.cert_der).public_key() == public

    admitted = _admit(km, address, code, CodeStage.SIGN, same_key)
    if isinstance(admitted, _Answer):
        return x509.load_der_x509_certificate(admitted.cert_der)
    profile = profile_of(km, admitted.user.id)
    for _ in range(ISSUE_TRIES):
        cert = sign_user_certificate(
            km,
            public,  # type: ignore[arg-type]
            CertKind.SIGN,
            address,
            admitted.user.name,
            capabilities=profile.capabilities,
        )

        def inside(tx: Tx, now: datetime, details: dict[str, Any], cert: x509.Certificate = cert) -> _Answer:
            details.update(sign_key=sign_alg.value)
            return _Answer(cert.public_bytes(serialization.Encoding.DER))

        try:
            answer = _commit_stage(km, admitted, code, CodeStage.SIGN, cert, inside, same_key)
        except SerialTaken:
            continue
        return x509.load_der_x509_certificate(answer.cert_der)
    raise errors.RandomSourceFailed("no unique serials after several draws")


def server_keygen(km: KeyManager, email: str, code: str, req: EstCsr) -> KeyIssued:
    """The KEY stage: a new encryption key, archived double-wrapped in the transaction that
    records the stage, its certificate, and the key sealed for the CSR's DecryptKeyIdentifier.

    The CSR's own key is not certified (its signature was checked by the caller); its
    address must be the user's. Asked again with the same code within the replay window: the
    same certificate and key in a new key part for the new DecryptKeyIdentifier.
    """
    key_id = est_csr.for_server_keygen(req)
    address = _address(email)
    check_csr_names(req.csr, address)
    admitted = _admit(km, address, code, CodeStage.KEY, _any_answer)
    if isinstance(admitted, _Answer):
        return _issued(km, code, key_id, admitted.cert_der, admitted.key)
    user, checked = admitted.user, admitted.code
    profile = profile_of(km, user.id)
    enc_alg = profile.enc_alg
    key = enc_alg.generate()
    pkcs8 = _pkcs8(key)
    seal = archive_sealer(km, user.id, key)
    for _ in range(ISSUE_TRIES):
        cert = sign_user_certificate(
            km, key.public_key(), CertKind.ENCRYPT, address, user.name, capabilities=profile.capabilities
        )
        serial = serial_hex(cert.serial_number)
        sealed = seal(km.archive_key, serial)

        def inside(
            tx: Tx,
            now: datetime,
            details: dict[str, Any],
            cert: x509.Certificate = cert,
            sealed: archive.SealedRecord = sealed,
        ) -> _Answer:
            record = current_record(km, tx, sealed, seal)
            record_id = archive.store_record(tx, record, enc_alg.value, now)
            history: list[tuple[PrivateKey, bytes]] = []
            if checked.purpose is users.CodePurpose.RECOVERY:
                history = take_recovered(tx, checked.id, code)
            details.update(
                archive_record=record_id,
                archive_key=record.master_label,
                enc_key=enc_alg.value,
                history_keys=len(history),
            )
            return _Answer(
                cert.public_bytes(serialization.Encoding.DER),
                pkcs8,
                tuple((der, _pkcs8(k)) for k, der in history),
            )

        try:
            answer = _commit_stage(km, admitted, code, CodeStage.KEY, cert, inside, _any_answer)
        except SerialTaken:
            continue
        return _issued(km, code, key_id, answer.cert_der, answer.key)
    raise errors.RandomSourceFailed("no unique serials after several draws")


def key_history(km: KeyManager, email: str, code: str, req: EstCsr) -> list[KeyIssued]:
    """The archived keys released by a recovery code's KEY stage, each for the request's
    DecryptKeyIdentifier; ``[]`` for an ordinary code; refused before the KEY stage
    (PolicyViolation) and after its replay window (CodeRejected)."""
    key_id = est_csr.for_server_keygen(req)
    address = _address(email)
    check_csr_names(req.csr, address)
    admitted = _admit(km, address, code, CodeStage.KEY, _any_answer)
    if not isinstance(admitted, _Answer):
        raise errors.PolicyViolation("the key history follows the serverkeygen stage of this code, not done yet")
    return [_issued(km, code, key_id, der, pkcs8) for der, pkcs8 in admitted.history]


def ca_certificates(km: KeyManager) -> list[x509.Certificate]:
    """The certificates of EST cacerts: the KM CA."""
    return [km.ca_cert]


def csr_attributes(km: KeyManager) -> bytes:
    """The DER CsrAttrs of EST csrattrs: the key types the KM accepts, the address, and the
    DecryptKeyIdentifier for serverkeygen."""
    return csrattrs.encode(list(KeyAlgorithm), server_keygen=True)


# --- the code: admitted for a stage, or the stage's kept answer ---------------------------------


@dataclass(frozen=True)
class _Answer:
    """A stage's answer as kept for a retry: the certificate, and for KEY the key (PKCS#8) and
    the history released with it (certificate DER, PKCS#8)."""

    cert_der: bytes
    key: bytes = b""
    history: tuple[tuple[bytes, bytes], ...] = ()


def _encode(a: _Answer) -> bytes:
    return json.dumps(
        {"cert": a.cert_der.hex(), "key": a.key.hex(), "history": [[c.hex(), k.hex()] for c, k in a.history]}
    ).encode()


def _decode(data: bytes) -> _Answer:
    d = json.loads(data)
    return _Answer(
        bytes.fromhex(d["cert"]),
        bytes.fromhex(d["key"]),
        tuple((bytes.fromhex(c), bytes.fromhex(k)) for c, k in d["history"]),
    )


def _any_answer(answer: _Answer) -> bool:
    return True


@dataclass(frozen=True)
class _Admitted:
    user: users.User
    code: users.CodeRow


class _StageTaken(Exception):
    """At commit the code no longer admits the stage (another request recorded it meanwhile)."""


def _address(email: str) -> str:
    try:
        return users.normalize_email(email)
    except errors.BadInput:
        raise errors.CodeRejected(REFUSED) from None  # no such user can exist


def _admit(
    km: KeyManager, email: str, code: str, stage: CodeStage, accept: Callable[[_Answer], bool]
) -> _Admitted | _Answer:
    """The user's live code if it admits ``stage``, or the stage's kept answer (a retry) if
    ``accept`` takes it; else CodeRejected. A wrong code's attempt is committed first."""
    with km.transaction() as tx:
        outcome = _admission(km, tx, email, code, stage, accept)
    if outcome is None:
        raise errors.CodeRejected(REFUSED)
    if isinstance(outcome, _Answer):
        # The same request again (its response was lost): the same answer, nothing new; a
        # publication the first one did not finish is finished now.
        directory.drain_outbox(km.db, km.publisher)
    return outcome


def _admission(
    km: KeyManager, tx: Tx, email: str, code: str, stage: CodeStage, accept: Callable[[_Answer], bool]
) -> _Admitted | _Answer | None:
    user = tx.users.by_email(email)
    if user is None:
        return None  # nothing to count, nothing recorded
    checked = users.check_code(km, tx, user, code)
    if isinstance(checked, users.CodeRow) and stage not in checked.stages_done:
        return _Admitted(user, checked)
    answer = _kept_answer(km, tx, user, code, stage)
    if answer is not None and accept(answer):
        return answer
    reason = checked.message if isinstance(checked, users.CodeRefused) else f"the {stage.value} stage was done"
    km.audit(tx).append(km.actor, AuditAction.CODE_REJECTED, {"email": email, "stage": stage.value, "reason": reason})
    return None


def _kept_answer(km: KeyManager, tx: Tx, user: users.User, code: str, stage: CodeStage) -> _Answer | None:
    data = kept.fetch(tx, user.id, code, _KEPT[stage], km.clock())
    if data is None:
        return None
    answer = _decode(data)
    # Still the user's current certificate of its kind (not revoked or replaced since).
    if tx.certs.current_of_kind(user.id, _KIND[stage].value) != answer.cert_der:
        return None
    return answer


def _commit_stage(
    km: KeyManager,
    admitted: _Admitted,
    code: str,
    stage: CodeStage,
    cert: x509.Certificate,
    inside: Callable[[Tx, datetime, dict[str, Any]], _Answer],
    accept: Callable[[_Answer], bool],
) -> _Answer:
    """Record the stage: one transaction, one audit entry. If another request recorded it
    meanwhile, that request's answer (a retry), else CodeRejected."""
    user = admitted.user
    _before_commit(km)
    try:
        with km.change(_ACTION[stage], email=user.email) as ch:
            answer = _record_stage(km, ch.tx, admitted, code, stage, cert, inside, ch.details)
    except _StageTaken:
        again = _admit(km, user.email, code, stage, accept)
        if isinstance(again, _Admitted):
            raise errors.CodeRejected(REFUSED) from None
        answer = again
    directory.drain_outbox(km.db, km.publisher)
    return answer


def _record_stage(
    km: KeyManager,
    tx: Tx,
    admitted: _Admitted,
    code: str,
    stage: CodeStage,
    cert: x509.Certificate,
    inside: Callable[[Tx, datetime, dict[str, Any]], _Answer],
    details: dict[str, Any],
) -> _Answer:
    now = km.clock()
    user = admitted.user
    # Re-checked inside the write transaction: another process may have used the code.
    again = users.check_code(km, tx, user, code)
    if isinstance(again, users.CodeRefused) or again.id != admitted.code.id or stage in again.stages_done:
        raise _StageTaken
    if not tx.codes.mark_stage(again.id, stage, now.isoformat()):
        raise _StageTaken
    burnt = again.stages_done | {stage} == frozenset(CodeStage)
    if burnt:
        users.burn_code(tx, again.id, now)
    kind = _KIND[stage]
    tx.certs.retire_current_of_kind(user.id, kind.value)
    record_certificate(tx, cert, kind, user.id, now)
    answer = inside(tx, now, details)
    tx.users.set_status(user.id, UserStatus.ACTIVE)
    kept.purge(tx, now)
    kept.keep(tx, again.id, _KEPT[stage], code, _encode(answer), now)
    directory.queue(tx, user.email, now.isoformat())
    details.update(
        stage=stage.value,
        serial=serial_hex(cert.serial_number),
        purpose=again.purpose.value,
        code_burnt=burnt,
    )
    return answer


def _issued(km: KeyManager, code: str, key_id: bytes, cert_der: bytes, pkcs8: bytes) -> KeyIssued:
    key = serialization.load_der_private_key(pkcs8, None)
    signer = KeyEntry(km.ca_key, km.ca_cert, KeyRole.CA)
    part = keypart.seal(key, signer, keypart.kek(code, key_id), key_id)  # type: ignore[arg-type]
    return KeyIssued(x509.load_der_x509_certificate(cert_der), part)


def _pkcs8(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# A test seam: called between sealing and the commit transaction, where a rotation can run.
def _no_hook(km: KeyManager) -> None:
    pass


_before_commit: Callable[[KeyManager], None] = _no_hook
