"""Enrollment over EST (RFC 7030) from a client that holds nothing of the KM but its CA
certificate: cacerts (cross-checked against that CA), simpleenroll for the signing key made
in the keystore, serverkeygen for the encryption key the KM makes and archives, and the key
history after a recovery. Every certificate and key is checked before the keystore is
written, and the keystore is written once, at the end.

A request whose connection is lost on the way is sent again with the same code and the same
CSR: the KM answers a stage already done with what it answered the first time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hsmkm import errors
from hsmkm.client.certcheck import check_issued, is_for_encryption, is_for_signing
from hsmkm.client.enroll import EnrollmentTarget, EnrollResult
from hsmkm.client.https import (
    ATTEMPTS,
    MAX_BODY,
    RETRY_PAUSE,
    HttpClient,
    Response,
    basic_auth,
    refusal,
    with_retries,
)
from hsmkm.est import certsonly, csr, keypart, multipart, transfer
from hsmkm.est.media import MediaType, SmimeType, parse_content_type
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.base import PrivateKey

EST = "/.well-known/est"
KEY_HISTORY = "/hsmkm/est/keyhistory"
KEY_ID_OCTETS = 16
MAX_HISTORY_RESPONSE = multipart.MAX_RESPONSE


@dataclass(frozen=True)
class IssuedKey:
    """A key the KM made, opened with the code, and its certificate."""

    key: PrivateKey
    cert: x509.Certificate


class EstClient:
    """The EST operations of one KM, over ``http`` (an ``https://`` client trusting the profile's CA)."""

    def __init__(self, http: HttpClient, attempts: int = ATTEMPTS, pause: float = RETRY_PAUSE) -> None:
        self.http = http
        self.attempts = attempts
        self.pause = pause

    def _send(
        self,
        method: str,
        path: str,
        what: str,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        limit: int = MAX_BODY,
    ) -> Response:
        resp = with_retries(
            lambda: self.http.request(method, path, body=body, headers=headers, limit=limit), self.attempts, self.pause
        )
        if resp.status not in (200, 204):
            raise refusal(resp, what)
        return resp

    def cacerts(self) -> list[x509.Certificate]:
        resp = self._send("GET", f"{EST}/cacerts", "EST cacerts")
        _expect(resp, MediaType.PKCS7_MIME, "EST cacerts")
        return certsonly.decode(transfer.decode(resp.body, certsonly.MAX_SIZE, "EST cacerts"))

    def _post(self, path: str, what: str, email: str, code: str, csr_der: bytes, limit: int) -> Response:
        headers = {
            "Content-Type": MediaType.PKCS10.value,
            "Authorization": basic_auth(email, code),
        }
        return self._send("POST", path, what, body=transfer.encode(csr_der), headers=headers, limit=limit)

    def simple_enroll(self, email: str, code: str, csr_der: bytes) -> list[x509.Certificate]:
        what = "EST simpleenroll"
        resp = self._post(f"{EST}/simpleenroll", what, email, code, csr_der, certsonly.MAX_SIZE * 2)
        _expect(resp, MediaType.PKCS7_MIME, what)
        return certsonly.decode(transfer.decode(resp.body, certsonly.MAX_SIZE, what))

    def server_keygen(self, email: str, code: str, csr_der: bytes) -> multipart.ServerKeygenParts:
        what = "EST serverkeygen"
        resp = self._post(f"{EST}/serverkeygen", what, email, code, csr_der, multipart.MAX_RESPONSE)
        return multipart.parse(resp.header("content-type") or "", resp.body)

    def key_history(self, email: str, code: str, csr_der: bytes) -> list[multipart.ServerKeygenParts]:
        """The archived keys a recovery code releases (none: 204)."""
        what = "the key history"
        resp = self._post(KEY_HISTORY, what, email, code, csr_der, MAX_HISTORY_RESPONSE)
        if resp.status == 204:
            return []
        return multipart.parse_many(resp.header("content-type") or "", resp.body)


def _expect(resp: Response, media: MediaType, what: str) -> None:
    ctype = parse_content_type(resp.header("content-type") or "")
    if not ctype.is_(media):
        raise errors.MalformedInput(f"{what}: an answer of type {ctype.media}, not {media.value}")
    if media is MediaType.PKCS7_MIME:
        smime = ctype.params.get("smime-type", SmimeType.CERTS_ONLY.value).lower()
        if smime != SmimeType.CERTS_ONLY.value:
            raise errors.MalformedInput(f"{what}: smime-type {smime}, not certs-only")


# --- the checks on what comes back ------------------------------------------------------


def check_ca(offered: list[x509.Certificate], anchor: x509.Certificate) -> None:
    """EST cacerts must hold the profile's CA: a server with another CA is refused."""
    if anchor not in offered:
        raise errors.ValidationFailed(
            "the KM's EST cacerts do not hold the profile's CA certificate: refusing this server"
            " (a different CA is taken only with --ca-cert FILE)"
        )


def _same_key(cert: x509.Certificate, key: PrivateKey) -> bool:
    der = serialization.Encoding.DER
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    return cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)


def _signing_certificate(
    certs: list[x509.Certificate], key: PrivateKey, ca: x509.Certificate, email: str
) -> x509.Certificate:
    what = "the signing certificate"
    leaf = [c for c in certs if c != ca]
    if len(leaf) != 1:
        raise errors.MalformedInput(f"{what}: {len(leaf)} certificates in the answer (one expected)")
    cert = leaf[0]
    check_issued(cert, ca, email, what)
    if not _same_key(cert, key):
        raise errors.ValidationFailed(f"{what}: it certifies another key than the one in your keystore")
    if not is_for_signing(cert):
        raise errors.ValidationFailed(f"{what}: not for signing")
    return cert


def open_issued(
    parts: multipart.ServerKeygenParts, code: str, key_id: bytes, ca: x509.Certificate, email: str, what: str
) -> IssuedKey:
    """The key in a key part (it must name ``key_id``, open with the code's KEK and be signed
    by the CA) and its certificate (issued by the CA for ``email``, for encryption, of that key)."""
    opened = keypart.open_key(parts.key_part, keypart.kek(code, key_id), key_id, ca)
    leaf = [c for c in certsonly.decode(parts.certs_part) if c != ca]
    if len(leaf) != 1:
        raise errors.MalformedInput(f"{what}: {len(leaf)} certificates in the answer (one expected)")
    cert = leaf[0]
    check_issued(cert, ca, email, what)
    if not is_for_encryption(cert):
        raise errors.ValidationFailed(f"{what}: not for encryption")
    if not _same_key(cert, opened.private_key):
        raise errors.ValidationFailed(f"{what}: the certificate is not of the key sent with it")
    return IssuedKey(opened.private_key, cert)


def enroll(
    target: EnrollmentTarget,
    est: EstClient,
    ca: x509.Certificate,
    email: str,
    code: str,
    sign_alg: KeyAlgorithm,
    random: Callable[[int], bytes] = os.urandom,
) -> EnrollResult:
    """The whole EST enrollment into ``target``. On a refusal the new signing key is discarded
    and the keystore is left as it was; when the KM cannot be reached after it certified the
    signing key, the key is kept waiting in the keystore, so the same command with the same
    code sends it again and the KM answers as the first time."""
    check_ca(est.cacerts(), ca)
    key = target.generate_signing_key(sign_alg)
    certified = False
    try:
        sign_cert = _signing_certificate(est.simple_enroll(email, code, csr.build(key, email)), key, ca, email)
        certified = True
        key_id = random(KEY_ID_OCTETS)
        parts = est.server_keygen(email, code, csr.build(key, email, key_id))
        current = open_issued(parts, code, key_id, ca, email, "the encryption certificate")
        history_id = random(KEY_ID_OCTETS)
        history = [
            open_issued(p, code, history_id, ca, email, "an archived key's certificate")
            for p in est.key_history(email, code, csr.build(key, email, history_id))
        ]
        if any(h.cert.serial_number == current.cert.serial_number for h in history):
            raise errors.MalformedInput("the key history holds the current encryption certificate again")
        target.commit((key, sign_cert), [(current.key, current.cert)] + [(h.key, h.cert) for h in history], [ca])
    except errors.Unreachable as exc:
        if not certified:
            target.discard_key(key)
            raise
        raise errors.Unreachable(
            f"{exc}; your signing key is kept: run the same command again with the same code"
        ) from None
    except BaseException:
        target.discard_key(key)
        raise
    return EnrollResult(email, sign_cert.serial_number, current.cert.serial_number, len(history))
