"""Revocation as the client knows it: its CRL cache of one CA, refreshed from a ``CrlSource``
when stale, and answering offline (with a warning) when the source cannot be reached."""

from __future__ import annotations

from collections.abc import Callable

from cryptography import x509

from hsmkm import errors
from hsmkm.client.crlcache import CacheStatus, CrlCache, RevocationInfo
from hsmkm.client.sources import CrlSource
from hsmkm.clock import Clock, system_clock
from hsmkm.cms.validation import Revoked, ValidationContext


class RevocationChecker:
    """The CRL cache of ``ca``, kept fresh from ``source``; warnings go to ``warn``."""

    def __init__(
        self,
        cache: CrlCache,
        source: CrlSource,
        ca: x509.Certificate,
        warn: Callable[[str], None],
        clock: Clock = system_clock,
    ) -> None:
        self.cache = cache
        self.source = source
        self.ca = ca
        self.warn = warn
        self.clock = clock

    def refresh(self) -> CacheStatus:
        """Fetch the CRLs and install them in the cache (each verified against the CA)."""
        crls = self.source.fetch_crls()
        return self.cache.update(crls.full, crls.delta, self.ca, self.clock())

    def status(self, serial: int) -> RevocationInfo | None:
        """Look the serial up; refresh first when the cache is stale or empty, warn when offline."""
        st = self.cache.status(self.clock())
        if st.stale:
            try:
                self.refresh()
            except errors.HsmkmError as exc:
                if st.full_number is None:
                    raise
                self.warn(f"CRL cache is stale (next update was {st.next_update}); working offline: {exc}")
        return self.cache.check(serial)


def check_own_signing_certificate(
    cert: x509.Certificate,
    checker: RevocationChecker | None,
    cached: CrlCache | None,
    warn: Callable[[str], None],
    clock: Clock = system_clock,
) -> None:
    """Refuse (``CertificateRevoked``) to sign with a certificate the CRL lists as revoked:
    through ``checker`` (refreshed from the KM when stale), else from the ``cached`` CRLs alone;
    warn when nothing is known either way."""
    info: RevocationInfo | None
    if checker is not None:
        if cert.issuer != checker.ca.subject:
            warn("your signing certificate is not from this KM's CA: its revocation is not checked")
            return
        try:
            info = checker.status(cert.serial_number)
        except errors.Unreachable as exc:
            warn(f"revocation of your signing certificate not checked: {exc}")
            return
    else:
        if cached is None:
            warn("revocation of your signing certificate not checked: the keystore holds no CA certificate")
            return
        st = cached.status(clock())
        if st.full_number is None:
            warn("revocation of your signing certificate not checked: no CRL cached (run 'hsmkm crl fetch')")
            return
        if st.stale:
            warn(f"CRL cache is stale (next update was {st.next_update}); your certificate checked against it")
        try:
            info = cached.check(cert.serial_number)
        except errors.Unreachable as exc:
            warn(f"revocation of your signing certificate not checked: {exc}")
            return
    if info is not None:
        raise errors.CertificateRevoked(
            f"your signing certificate {cert.serial_number:x} is revoked ({info.reason.value}, "
            f"{info.revoked_at.isoformat()}): not signing"
        )


def validation_context(checker: RevocationChecker) -> ValidationContext:
    """Trust in the KM's CA, revocation of its certificates from the checker; when the CRLs
    cannot be had, one warning and no revocation check."""
    ca = checker.ca
    warned: list[bool] = []

    def check(cert: x509.Certificate) -> Revoked | None:
        if cert.issuer != ca.subject:
            return None
        try:
            info = checker.status(cert.serial_number)
        except errors.Unreachable as exc:
            if not warned:
                checker.warn(f"revocation not checked: {exc}")
                warned.append(True)
            return None
        return None if info is None else Revoked(info.revoked_at, info.reason.value)

    return ValidationContext([ca], checker.clock(), check)
