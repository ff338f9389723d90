"""What the one-call enrollment and EST's stages share: the CSR's addresses, the user's
certificate profile, and the encryption key's archive record, sealed outside the write lock
and made current again at commit."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509

from hsmkm import errors
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.base import PrivateKey
from hsmkm.keys.token import SecretKey
from hsmkm.km import archive, epochs, users
from hsmkm.km.manager import KeyManager
from hsmkm.smimecaps import PROFILE_CAPABILITIES
from hsmkm.store.tx import Tx

# Serial draws before giving up (a clash is about 2**-150 per draw).
ISSUE_TRIES = 4


def csr_addresses(csr: x509.CertificateSigningRequest) -> list[str]:
    """The addresses a CSR names: SAN rfc822Names and subject emailAddress attributes."""
    found: list[str] = []
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found += san.get_values_for_type(x509.RFC822Name)
    except x509.ExtensionNotFound:
        pass
    found += [str(a.value) for a in csr.subject.get_attributes_for_oid(x509.NameOID.EMAIL_ADDRESS)]
    return found


def check_csr_names(csr: x509.CertificateSigningRequest, email: str) -> None:
    """The CSR must name exactly ``email`` (normalised), else PolicyViolation."""
    emails = {users.normalize_email(e) for e in csr_addresses(csr) if "@" in e}
    if emails != {email}:
        raise errors.PolicyViolation(f"the CSR names {', '.join(sorted(emails)) or 'no address'}, not {email}")


@dataclass(frozen=True)
class Profile:
    """The user's certificates: the encryption key algorithm and the SMIMECapabilities of
    their client profile (None: the KM's default)."""

    enc_alg: KeyAlgorithm
    capabilities: Sequence[str] | None


def profile_of(km: KeyManager, user_id: int) -> Profile:
    with km.db.read() as tx:
        chosen = users.settings_of(tx, user_id)  # the user's own key algorithm and client profile
    caps = PROFILE_CAPABILITIES[chosen.client] if chosen.client is not None else None
    return Profile(chosen.key_alg or km.config.user_key_alg, caps)


Sealer = Callable[[SecretKey, str], archive.SealedRecord]


def archive_sealer(km: KeyManager, user_id: int, key: PrivateKey) -> Sealer:
    """Seal ``key``'s archive record under a master key for a certificate serial, split for
    the officer sets current at that moment (read again at commit)."""

    def seal(master: SecretKey, cert_serial: str) -> archive.SealedRecord:
        with km.db.read() as tx:
            sharing = epochs.sharing(tx)
        return archive.seal_record(master, sharing, user_id, cert_serial, key)

    return seal


def current_record(km: KeyManager, tx: Tx, sealed: archive.SealedRecord, seal: Sealer) -> archive.SealedRecord:
    """Inside the commit transaction: ``sealed``, or sealed again if a rotation or an officer
    change began since. The record must be under the master key current now, which rotation
    never destroys while it is, and split for the epochs current now."""
    current = km.archive_key
    if current.label != sealed.master_label or epochs.sharing_numbers(tx) != sealed.epochs:
        return seal(current, sealed.cert_serial)
    return sealed
