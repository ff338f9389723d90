"""KM-side enrollment: a request (code + CSR) in, certificates and the encryption key out."""

from __future__ import annotations

import dataclasses
import functools
import hmac
import json
import os
from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from hsmkm import errors
from hsmkm.certnames import CertKind
from hsmkm.keys.algorithms import algorithm_of
from hsmkm.keys.token import SecretKey
from hsmkm.km import archive, directory, epochs, users
from hsmkm.km.audit import AuditAction
from hsmkm.km.authority import SerialTaken, record_certificate, serial_hex, sign_user_certificate
from hsmkm.km.manager import KeyManager
from hsmkm.protocol import EnrollRequest, EnrollResponse, SealedKey, code_key, normalize_code, seal_key
from hsmkm.smimecaps import PROFILE_CAPABILITIES
from hsmkm.store.repos.users import UserStatus
from hsmkm.store.tx import Tx


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
    with km.transaction() as tx:
        user = users.find_user(tx, email)
        checked = users.check_code(km, tx, user, req.code)
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

    with km.db.read() as tx:
        chosen = users.settings_of(tx, user.id)  # the user's own key algorithm and client profile
    enc_alg = chosen.key_alg or km.config.user_key_alg
    caps = PROFILE_CAPABILITIES[chosen.client] if chosen.client is not None else None
    enc_key = enc_alg.generate()

    def seal(master: SecretKey, enc_serial: str) -> archive.SealedRecord:
        # split for the officer sets current at this moment (read again at commit)
        with km.db.read() as tx:
            sharing = epochs.sharing(tx)
        return archive.seal_record(master, sharing, user.id, enc_serial, enc_key)

    for _ in range(_ISSUE_TRIES):
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
                functools.partial(seal, enc_serial=enc_serial),
                enc_alg.value,
            )
            break
        except SerialTaken:
            continue
    else:
        raise errors.RandomSourceFailed("no unique serials after several draws")
    directory.drain_outbox(km.db, km.publisher)
    return response


_ISSUE_TRIES = 4


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
    reseal: Callable[[SecretKey], archive.SealedRecord],
    enc_alg: str,
) -> EnrollResponse:
    now = km.clock()
    history: list[SealedKey] = []
    _before_commit(km)
    with km.change(AuditAction.ENROLL, email=user.email) as ch:
        tx = ch.tx
        # Re-check inside the write transaction: another process may have used the code.
        again = users.check_code(km, tx, user, code)
        if isinstance(again, users.CodeRefused) or again.id != checked.id:
            raise errors.CodeRejected(f"{user.email}: the enrollment code was already used")
        # A rotation may have started since the record was sealed: the record must be under
        # the master key that is current now, which rotation never destroys while it is.
        current = km.archive_key
        # Likewise an officer change may have opened or ended: split for the epochs current now.
        if current.label != sealed.master_label or epochs.sharing_numbers(tx) != sealed.epochs:
            sealed = reseal(current)
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
        purge_responses(tx, now)
        _store_response(tx, checked.id, code, response, now)
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
# The response is kept, sealed under a key derived from the code (which the KM knows only as
# a hash), in the transaction that burns the code. The same code and the same signing key
# within the code's life get it back; a code replaced by a newer one gets nothing.


# How long after its use a code still fetches its response: long enough for a client to try
# again, short, since whoever learnt the code could open the kept response meanwhile.
REPLAY_WINDOW = timedelta(hours=24)


def _replay_key(code: str, salt: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt=salt, info=b"hsmkm-enroll-replay-v1").derive(normalize_code(code).encode())


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


def _store_response(tx: Tx, code_row: int, code: str, response: EnrollResponse, now: datetime) -> None:
    salt = os.urandom(16)
    nonce = os.urandom(12)
    aad = f"hsmkm-enroll-replay\x00{code_row}".encode()
    sealed = nonce + AESGCM(_replay_key(code, salt)).encrypt(nonce, _encode_response(response), aad)
    tx.enroll_responses.keep(code_row, now.isoformat(), salt, sealed)


def purge_responses(tx: Tx, now: datetime) -> None:
    """Drop kept responses whose replay window has passed (an index range, however many users)."""
    tx.enroll_responses.purge_before((now - REPLAY_WINDOW).isoformat())


def replayed_response(
    km: KeyManager, tx: Tx, user: users.User, code: str, csr: x509.CertificateSigningRequest
) -> EnrollResponse | None:
    """The stored response if ``code`` is the user's latest code, used, unexpired, for this CSR's key."""
    row = tx.enroll_responses.for_latest_code(user.id)
    if row is None:
        return None
    cid, verifier, expires_at, used_at, salt, sealed = (
        row.code_row,
        row.verifier,
        row.expires_at,
        row.used_at,
        row.salt,
        row.sealed,
    )
    if used_at is None or used_at.startswith("superseded:"):
        return None
    now = km.clock()
    if now > datetime.fromisoformat(expires_at) or now > datetime.fromisoformat(used_at) + REPLAY_WINDOW:
        return None
    if not hmac.compare_digest(bytes(verifier), users.code_verifier(code)):
        return None
    blob = bytes(sealed)
    try:
        data = AESGCM(_replay_key(code, bytes(salt))).decrypt(
            blob[:12], blob[12:], f"hsmkm-enroll-replay\x00{cid}".encode()
        )
    except (InvalidTag, ValueError):
        return None
    response = _decode_response(data)
    if x509.load_der_x509_certificate(response.sign_cert_der).public_key() != csr.public_key():
        return None
    # Still the user's current certificates (not revoked or re-keyed since).
    current = tx.certs.valid_current(user.id)
    if {der for _, der in current} != {response.sign_cert_der, response.encryption.cert_der}:
        return None
    return response
