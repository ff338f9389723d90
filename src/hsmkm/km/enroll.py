"""KM-side enrollment: a request (code + CSR) in, certificates and the encryption key out."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmkm import errors
from hsmkm.addresses import address_file
from hsmkm.atomic import write_atomic
from hsmkm.keys.algorithms import algorithm_of
from hsmkm.km import archive, users
from hsmkm.km.audit import AuditAction
from hsmkm.km.authority import SerialTaken, record_certificate, serial_hex, sign_user_certificate
from hsmkm.km.manager import KeyManager
from hsmkm.smimecaps import PROFILE_CAPABILITIES
from hsmkm.protocol import EnrollRequest, EnrollResponse, SealedKey, code_key, seal_key
from hsmkm.x509.profiles import CertKind


def _csr_email(csr: x509.CertificateSigningRequest) -> list[str]:
    found: list[str] = []
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found += san.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        pass
    found += [str(a.value) for a in csr.subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)]
    return found


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
        _csr_email(csr)  # parsed lazily: a bad extension must fail here
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
    emails = {users.normalize_email(e) for e in _csr_email(csr) if "@" in e}
    if emails != {email}:
        raise errors.PolicyViolation(f"the CSR names {', '.join(sorted(emails)) or 'no address'}, not {email}")

    # A wrong code is a state change of its own (one attempt used), committed before refusing.
    with km.transaction() as conn:
        user = users.find_user(conn, email)
        checked = users.check_code(km, conn, user, req.code)
        if isinstance(checked, str):
            km.audit(conn).append(km.actor, AuditAction.CODE_REJECTED, {"email": email, "reason": checked})
    if isinstance(checked, str):
        raise errors.CodeRejected(f"{email}: {checked}")

    chosen = users.settings_of(km.db.conn, user.id)
    enc_alg = chosen.key_alg or km.config.user_key_alg
    caps = PROFILE_CAPABILITIES[chosen.client] if chosen.client is not None else None
    enc_key = enc_alg.generate()
    recovery_public = archive.recovery_public_key(km.db.conn)
    for _ in range(_ISSUE_TRIES):
        sign_cert = sign_user_certificate(km, csr.public_key(), CertKind.SIGN, email, user.name,  # type: ignore[arg-type]
                                          capabilities=caps)
        enc_cert = sign_user_certificate(km, enc_key.public_key(), CertKind.ENCRYPT, email, user.name,
                                         capabilities=caps)
        enc_serial = serial_hex(enc_cert.serial_number)
        sealed = archive.seal_record(km.archive_key, recovery_public, user.id, enc_serial, enc_key)
        try:
            history = _commit_enrollment(km, user, checked, req.code, sign_cert, enc_cert, sealed, sign_alg.value,
                                         enc_alg.value)
            break
        except SerialTaken:
            continue
    else:
        raise RuntimeError("no unique serials after several draws")
    salt = history.salt
    response = EnrollResponse(
        email=email,
        sign_cert_der=sign_cert.public_bytes(serialization.Encoding.DER),
        encryption=seal_key(code_key(req.code, salt), enc_key, enc_cert.public_bytes(serialization.Encoding.DER)),
        ca_cert_der=km.ca_cert.public_bytes(serialization.Encoding.DER),
        salt=salt,
        history=history.keys,
    )
    publish_user_certificates(km.home.certs_dir, email, sign_cert, enc_cert)
    return response


_ISSUE_TRIES = 4


class _History:
    def __init__(self, salt: bytes, keys: list[SealedKey]) -> None:
        self.salt = salt
        self.keys = keys


def _commit_enrollment(
    km: KeyManager,
    user: users.User,
    checked: users.CodeRow,
    code: str,
    sign_cert: x509.Certificate,
    enc_cert: x509.Certificate,
    sealed: archive.SealedRecord,
    sign_alg: str,
    enc_alg: str,
) -> _History:
    now = km.clock()
    salt = os.urandom(16)
    history: list[SealedKey] = []
    with km.change(AuditAction.ENROLL, email=user.email) as ch:
        conn = ch.conn
        # Re-check inside the write transaction: another process may have used the code.
        again = users.check_code(km, conn, user, code)
        if isinstance(again, str) or again.id != checked.id:
            raise errors.CodeRejected(f"{user.email}: the enrollment code was already used")
        users.burn_code(conn, checked.id, now)
        conn.execute("UPDATE certificates SET current = 0 WHERE user_id = ? AND current = 1", (user.id,))
        record_certificate(conn, sign_cert, CertKind.SIGN, user.id, now)
        record_certificate(conn, enc_cert, CertKind.ENCRYPT, user.id, now)
        record_id = archive.store_record(conn, sealed, enc_alg, now)
        if checked.purpose is users.CodePurpose.RECOVERY:
            from hsmkm.km.recovery import release_recovered

            history = release_recovered(conn, checked.id, code, code_key(code, salt))
        conn.execute("UPDATE users SET status = ? WHERE id = ?", (users.UserStatus.ACTIVE.value, user.id))
        ch.details.update(
            sign_serial=serial_hex(sign_cert.serial_number),
            enc_serial=sealed.cert_serial,
            archive_record=record_id,
            sign_key=sign_alg,
            enc_key=enc_alg,
            purpose=checked.purpose.value,
            history_keys=len(history),
        )
    return _History(salt, history)


def publish_user_certificates(
    certs_dir: Path, email: str, sign_cert: x509.Certificate, enc_cert: x509.Certificate
) -> None:
    """The directory's files: HOME/pub/certs/EMAIL.enc.crt and EMAIL.sign.crt (DER)."""
    # Derived from the database, so no fsync: readers still see whole files (rename).
    write_atomic(address_file(certs_dir, email, ".enc.crt"), enc_cert.public_bytes(serialization.Encoding.DER),
                 durable=False)
    write_atomic(address_file(certs_dir, email, ".sign.crt"), sign_cert.public_bytes(serialization.Encoding.DER),
                 durable=False)
