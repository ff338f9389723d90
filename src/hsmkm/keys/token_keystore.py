"""A user's keystore on their own PKCS#11 token (a smart card; a SoftHSM2 token in tests).

Keys and certificates are paired by CKA_ID (the key's SHA-1 key identifier), as other
PKCS#11 software expects. The signing key is generated on the token and never leaves it;
encryption keys the KM made are imported as sensitive, non-extractable objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pkcs11 import ObjectClass

from hsmkm import errors
from hsmkm.keys.algorithms import KeyAlgorithm, algorithm_of
from hsmkm.keys.base import EntriesByRole, KeyEntry, KeyRole, PrivateKey, PublicKey, role_of
from hsmkm.keys.pkcs11 import Pkcs11Module, TokenECPrivateKey, TokenPrivateKey, TokenRSAPrivateKey, TokenSession
from hsmkm.keys.uri import Pkcs11Uri

CA_CERT_ID = b"hsmkm-ca"


def key_id_of(public_key: PublicKey) -> bytes:
    """The CKA_ID for a key: the SHA-1 of its subjectPublicKey (RFC 5280 §4.2.1.2 method 1)."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest


@dataclass
class TokenKeystoreInfo:
    uri: str
    token: str
    signing: str | None
    encryption: list[str]
    ca: list[str]


class TokenKeystore(EntriesByRole):
    """The Keystore interface over one token."""

    def __init__(self, uri: Pkcs11Uri, session: TokenSession) -> None:
        self.uri = uri
        self.session = session

    @classmethod
    def open(cls, uri: Pkcs11Uri, pin: str, module_path: str | None = None) -> TokenKeystore:
        path = uri.module_path or module_path
        if not path:
            raise errors.BadInput("the keystore URI needs ?module-path=")
        module = Pkcs11Module.load(path)
        slot = int(uri.slot_id) if uri.slot_id is not None else None
        session = module.open_token(pin, label=uri.token, serial=uri.serial, slot_id=slot)
        return cls(uri, session)

    @property
    def prefix(self) -> str:
        return self.uri.object or self.session.label

    # --- reading -----------------------------------------------------------------------

    def _pairs(self) -> list[tuple[x509.Certificate, bytes]]:
        out = []
        for _label, cid, der in self.session.certificates():
            try:
                out.append((x509.load_der_x509_certificate(der), bytes(cid)))
            except ValueError:
                continue
        return out

    def _entries(self, role: KeyRole) -> list[KeyEntry]:
        key_ids = {bytes(kid) for _l, kid in self.session.private_key_labels()}
        entries = []
        for cert, cid in self._pairs():
            if cid in key_ids and role_of(cert) is role:
                entries.append(KeyEntry(self.session.private_key(key_id=cid), cert, role))
        entries.sort(key=lambda e: e.certificate.not_valid_before_utc, reverse=True)
        return entries

    def ca_certificates(self) -> list[x509.Certificate]:
        return [c for c, _cid in self._pairs() if role_of(c) is KeyRole.CA]

    def info(self) -> TokenKeystoreInfo:
        def name(e: KeyEntry) -> str:
            return f"{e.certificate.serial_number:x} until {e.certificate.not_valid_after_utc.date()}"

        s = self.signing_entry()
        return TokenKeystoreInfo(
            uri=self.uri.to_uri(),
            token=self.session.label,
            signing=name(s) if s else None,
            encryption=[name(e) for e in self.encryption_entries()],
            ca=[c.subject.rfc4514_string() for c in self.ca_certificates()],
        )

    # --- writing -----------------------------------------------------------------------

    def generate_signing_key(self, alg: KeyAlgorithm) -> TokenPrivateKey:
        """A signing key pair on the token (non-extractable); label ``<object>-sign-…``.

        A key that an enrollment cut short left without its certificate is taken up again,
        so the retried enrollment sends the same key and the KM can give the same answer.
        """
        waiting = self._waiting_signing_key(alg)
        if waiting is not None:
            return waiting
        key_id = os.urandom(20)
        label = f"{self.prefix}-sign-{key_id[:4].hex()}"
        return self.session.generate_keypair(alg, label, key_id, sign=True, decrypt=False)

    def _waiting_signing_key(self, alg: KeyAlgorithm) -> TokenPrivateKey | None:
        with_cert = {cid for _c, cid in self._pairs()}
        for label, kid in self.session.private_key_labels():
            if not str(label).startswith(f"{self.prefix}-sign-") or bytes(kid) in with_cert:
                continue
            key = self.session.private_key(key_id=bytes(kid))
            if algorithm_of(key.public_key()) is alg:
                return key
        return None

    def discard_key(self, key: PrivateKey) -> None:
        """Remove a key made for an enrollment that failed."""
        if isinstance(key, (TokenRSAPrivateKey, TokenECPrivateKey)):
            self.session.destroy(key.label, ObjectClass.PRIVATE_KEY)
            self.session.destroy(key.label, ObjectClass.PUBLIC_KEY)

    def store(
        self,
        signing: tuple[PrivateKey, x509.Certificate] | None,
        encryption: list[tuple[PrivateKey, x509.Certificate]],
        ca_certs: list[x509.Certificate],
    ) -> None:
        """Store certificates (and import encryption keys) on the token; certificate objects
        written by earlier versions are repaired on the way (``enroll --update``)."""
        self.session.repair_certificates()
        if signing is not None:
            key, cert = signing
            kid = getattr(key, "key_id", b"") or key_id_of(cert.public_key())  # type: ignore[arg-type]
            self._store_cert(cert, f"{self.prefix}-sign", kid)
        present = {bytes(c) for _l, c, _d in self.session.certificates()}
        for key, cert in encryption:
            kid = key_id_of(cert.public_key())  # type: ignore[arg-type]
            if kid in present:
                continue
            label = f"{self.prefix}-enc-{cert.serial_number:x}"[:64]
            self.session.import_private_key(key, label, kid)
            self._store_cert(cert, label, kid)
        for ca in ca_certs:
            cid = CA_CERT_ID + key_id_of(ca.public_key())[:8]  # type: ignore[arg-type]
            if cid not in present:
                self._store_cert(ca, "hsmkm CA", cid)

    def commit(
        self,
        signing: tuple[PrivateKey, x509.Certificate],
        encryption: list[tuple[PrivateKey, x509.Certificate]],
        ca_certs: list[x509.Certificate],
    ) -> None:
        self.store(signing, encryption, ca_certs)

    def repair(self) -> int:
        """Give certificate objects written by earlier versions the attributes NSS needs."""
        return self.session.repair_certificates()

    def _store_cert(self, cert: x509.Certificate, label: str, kid: bytes) -> None:
        self.session.store_certificate(
            cert.public_bytes(serialization.Encoding.DER),
            label,
            kid,
            cert.subject.public_bytes(),
        )
