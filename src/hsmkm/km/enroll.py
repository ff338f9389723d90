"""KM-side enrollment: a request (code + CSR) in, certificates and the encryption key out."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmkm import errors
from hsmkm.certnames import CertKind
from hsmkm.keys.algorithms import algorithm_of
from hsmkm.km import archive, directory, kept, users
from hsmkm.km.audit import AuditAction
from hsmkm.km.authority import SerialTaken, record_certificate, serial_hex, sign_user_certificate
from hsmkm.km.enroll_common import (
    ISSUE_TRIES,
    Sealer,
    archive_sealer,
    check_csr_names,
    csr_addresses,
    current_record,
    profile_of,
)
from hsmkm.km.manager import KeyManager
from hsmkm.protocol import EnrollRequest, EnrollResponse, SealedKey, code_key, seal_key
from hsmkm.store.repos.enroll_responses import ResponseKind
from hsmkm.store.repos.users import UserStatus
from hsmkm.store.tx import Tx


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    try:
        csr = x509.load_der_x509_csr(der)
    except errors.CERTIFICATE_PARSE_ERRORS:
        try:
            csr = x509.load_pem_x509_csr(der)
        except errors.CERTIFICATE_PARSE_ERRORS:
            raise errors.MalformedInput("the CSR does not parse") from None
    with errors.malformed("the CSR"):
        algorithm_of(csr.public_key())  # an unknown key algorithm is refused here, by name
        csr_addresses(csr)  # parsed lazily: a bad extension must fail here
        valid = csr.is_signature_valid
    if not valid:
        raise errors.SignatureInvalid("the CSR's signature does not verify (no proof of possession)")
    return csr


def enroll(km: KeyManager, req: EnrollRequest) -> EnrollResponse:
    """Check the code and CSR, make and archive the encryption key, issue both certificates.

    The token's work (signatures, sealing) happens outside the database's write lock, so
    several KM processes enroll in parallel; the code is burnt, and the certificates and
    archive record are written, in one transaction at the end.
    """
    csr = parse_csr(req.csr_der)
    sign_alg = algorithm_of(csr.public_key())
    email = users.normalize_email(req.email)
    check_csr_names(csr, email)

    # A wrong code is a state change of its own (one attempt used), committed before refusing.
    with km.transaction() as tx:
        user = users.find_user(tx, email)
        checked = _one_call(users.check_code(km, tx, user, req.code))
        if isinstance(checked, users.CodeRefused):
            replay = replayed_response(km, tx, user, req.code, csr)
            if replay is None:
                km.audit(tx).append(km.actor, AuditAction.CODE_REJECTED, {"email": email, "reason": checked.message})
    if isinstance(checked, users.CodeRefused):
        if replay is not None:
            # The same request again (its response was lost): the same answer, nothing new.
            directory.drain_outbox(km.db, km.publisher)
            return replay
        raise errors.CodeRejected(f"{email}: {checked.message}")

    profile = profile_of(km, user.id)
    enc_alg = profile.enc_alg
    caps = profile.capabilities
    enc_key = enc_alg.generate()
    seal = archive_sealer(km, user.id, enc_key)

    for _ in range(ISSUE_TRIES):
        sign_cert = sign_user_certificate(
            km,
            csr.public_key(),  # type: ignore[arg-type]
            CertKind.SIGN,
            email,
            user.name,
            capabilities=caps,
        )
        enc_cert = sign_user_certificate(
            km, enc_key.public_key(), CertKind.ENCRYPT, email, user.name, capabilities=caps
        )
        enc_serial = serial_hex(enc_cert.serial_number)
        sealed = seal(km.archive_key, enc_serial)
        salt = os.urandom(16)
        response = EnrollResponse(
            email=email,
            sign_cert_der=sign_cert.public_bytes(serialization.Encoding.DER),
            encryption=seal_key(code_key(req.code, salt), enc_key, enc_cert.public_bytes(serialization.Encoding.DER)),
            ca_cert_der=km.ca_cert.public_bytes(serialization.Encoding.DER),
            salt=salt,
        )
        try:
            response = _commit_enrollment(
                km,
                user,
                checked,
                req.code,
                sign_cert,
                enc_cert,
                sealed,
                sign_alg.value,
                response,
                seal,
                enc_alg.value,
            )
            break
        except SerialTaken:
            continue
    else:
        raise errors.RandomSourceFailed("no unique serials after several draws")
    directory.drain_outbox(km.db, km.publisher)
    return response


def _one_call(checked: users.CodeRow | users.CodeRefused) -> users.CodeRow | users.CodeRefused:
    """A code already serving an EST enrollment (a stage done) is not for the one-call one."""
    if isinstance(checked, users.CodeRow) and checked.stages_done:
        return users.CodeRefused(users.RefusalReason.USED, "the enrollment code is in use by an EST enrollment")
    return checked


def _commit_enrollment(
    km: KeyManager,
    user: users.User,
    checked: users.CodeRow,
    code: str,
    sign_cert: x509.Certificate,
    enc_cert: x509.Certificate,
    sealed: archive.SealedRecord,
    sign_alg: str,
    response: EnrollResponse,
    reseal: Sealer,
    enc_alg: str,
) -> EnrollResponse:
    now = km.clock()
    history: list[SealedKey] = []
    _before_commit(km)
    with km.change(AuditAction.ENROLL, email=user.email) as ch:
        tx = ch.tx
        # Re-check inside the write transaction: another process may have used the code.
        again = _one_call(users.check_code(km, tx, user, code))
        if isinstance(again, users.CodeRefused) or again.id != checked.id:
            raise errors.CodeRejected(f"{user.email}: the enrollment code was already used")
        sealed = current_record(km, tx, sealed, reseal)
        users.burn_code(tx, checked.id, now)
        tx.certs.retire_current(user.id)
        record_certificate(tx, sign_cert, CertKind.SIGN, user.id, now)
        record_certificate(tx, enc_cert, CertKind.ENCRYPT, user.id, now)
        record_id = archive.store_record(tx, sealed, enc_alg, now)
        if checked.purpose is users.CodePurpose.RECOVERY:
            from hsmkm.km.recovery.held import release_recovered

            history = release_recovered(tx, checked.id, code, code_key(code, response.salt))
        tx.users.set_status(user.id, UserStatus.ACTIVE)
        response = dataclasses.replace(response, history=history)
        kept.purge(tx, now)
        kept.keep(tx, checked.id, ResponseKind.ENROLL, code, _encode_response(response), now)
        directory.queue(tx, user.email, now.isoformat())
        ch.details.update(
            sign_serial=serial_hex(sign_cert.serial_number),
            enc_serial=sealed.cert_serial,
            archive_record=record_id,
            archive_key=sealed.master_label,
            sign_key=sign_alg,
            enc_key=enc_alg,
            purpose=checked.purpose.value,
            history_keys=len(history),
        )
    return response


# A test seam: called between sealing and the commit transaction, where a rotation can run.
def _no_hook(km: KeyManager) -> None:
    pass


_before_commit: Callable[[KeyManager], None] = _no_hook


# --- a lost response, asked for again -----------------------------------------------------------
#
# The response is kept (km.kept) in the transaction that burns the code. The same code and the
# same signing key within the code's life get it back.

REPLAY_WINDOW = kept.REPLAY_WINDOW


def _encode_response(r: EnrollResponse) -> bytes:
    def sk(k: SealedKey) -> dict[str, str]:
        return {"cert": k.cert_der.hex(), "sealed": k.sealed.hex()}

    return json.dumps(
        {
            "email": r.email,
            "sign": r.sign_cert_der.hex(),
            "enc": sk(r.encryption),
            "ca": r.ca_cert_der.hex(),
            "salt": r.salt.hex(),
            "history": [sk(h) for h in r.history],
        }
    ).encode()


def _decode_response(data: bytes) -> EnrollResponse:
    d = json.loads(data)

    def sk(k: dict[str, str]) -> SealedKey:
        return SealedKey(bytes.fromhex(k["cert"]), bytes.fromhex(k["sealed"]))

    return EnrollResponse(
        email=d["email"],
        sign_cert_der=bytes.fromhex(d["sign"]),
        encryption=sk(d["enc"]),
        ca_cert_der=bytes.fromhex(d["ca"]),
        salt=bytes.fromhex(d["salt"]),
        history=[sk(h) for h in d["history"]],
    )


def replayed_response(
    km: KeyManager, tx: Tx, user: users.User, code: str, csr: x509.CertificateSigningRequest
) -> EnrollResponse | None:
    """The kept response if ``code`` is the user's latest code, used, unexpired, for this CSR's key."""
    data = kept.fetch(tx, user.id, code, ResponseKind.ENROLL, km.clock())
    if data is None:
        return None
    response = _decode_response(data)
    if x509.load_der_x509_certificate(response.sign_cert_der).public_key() != csr.public_key():
        return None
    # Still the user's current certificates (not revoked or re-keyed since).
    current = tx.certs.valid_current(user.id)
    if {der for _, der in current} != {response.sign_cert_der, response.encryption.cert_der}:
        return None
    return response
