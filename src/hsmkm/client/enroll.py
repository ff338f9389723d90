"""Client-side enrollment: make the signing key in the keystore, send a CSR with the code,
store what comes back. The request and response travel as bytes (``enroll_wire``) through a
``Transport``, so the carrier (the KM in this process, HTTPS) is the caller's choice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from hsmkm.enroll_wire import decode_response, encode_request
from hsmkm.keys.algorithms import KeyAlgorithm, digest_for_key
from hsmkm.keys.base import PrivateKey
from hsmkm.protocol import EnrollRequest, open_key


class Transport(Protocol):
    """Carries one encoded enrollment request to the KM and brings back its encoded response;
    a refusal by the KM (a wrong code, a bad CSR) is raised as the hsmkm error it is."""

    def __call__(self, request: bytes, /) -> bytes: ...


class EnrollmentTarget(Protocol):
    """A keystore being enrolled into: it makes the signing key and stores the result."""

    def generate_signing_key(self, alg: KeyAlgorithm) -> PrivateKey: ...

    def discard_key(self, key: PrivateKey) -> None: ...

    def commit(
        self,
        signing: tuple[PrivateKey, x509.Certificate],
        encryption: list[tuple[PrivateKey, x509.Certificate]],
        ca_certs: list[x509.Certificate],
    ) -> None: ...


@dataclass(frozen=True)
class EnrollResult:
    email: str
    sign_serial: int
    enc_serial: int
    history_keys: int


def build_csr(key: PrivateKey, email: str) -> bytes:
    """A CSR with the address in subjectAltName, signed by the new key (proof of possession)."""
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.EMAIL_ADDRESS, email)]))
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .sign(key, digest_for_key(key).builder_hash())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def enroll(
    target: EnrollmentTarget, transport: Transport, email: str, code: str, sign_alg: KeyAlgorithm
) -> EnrollResult:
    """The whole client flow; on any failure the new signing key is discarded."""
    key = target.generate_signing_key(sign_alg)
    try:
        request = EnrollRequest(email=email, code=code, csr_der=build_csr(key, email))
        response = decode_response(transport(encode_request(request)))
        sign_cert = x509.load_der_x509_certificate(response.sign_cert_der)
        enc_cert = x509.load_der_x509_certificate(response.encryption.cert_der)
        enc_key = open_key(code, response, response.encryption)
        history = [
            (open_key(code, response, item), x509.load_der_x509_certificate(item.cert_der)) for item in response.history
        ]
        ca_cert = x509.load_der_x509_certificate(response.ca_cert_der)
        target.commit((key, sign_cert), [(enc_key, enc_cert), *history], [ca_cert])
    except BaseException:
        target.discard_key(key)
        raise
    return EnrollResult(response.email, sign_cert.serial_number, enc_cert.serial_number, len(history))
