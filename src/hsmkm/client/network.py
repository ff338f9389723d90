"""The KM reached over the network: its directory over HTTPS (a ``CertDirectory`` whose answers
are validated and cached in the profile) and its CRLs over HTTP(S) (a ``CrlSource``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from cryptography import x509

from hsmkm import errors
from hsmkm.addresses import normalize_email
from hsmkm.client.certcheck import check_recipient
from hsmkm.client.https import HttpClient, refusal
from hsmkm.client.profile import CrlUrls, RecipientCache
from hsmkm.client.sources import CrlSet
from hsmkm.clock import Clock, system_clock
from hsmkm.cms.validation import RevocationCheck

MAX_CERT = 64 << 10
MAX_CRL = 256 << 20
PKIX_CERT = "application/pkix-cert"
PKIX_CRL = "application/pkix-crl"


def _media(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


class HttpsDirectory:
    """``GET /directory/{email}`` of a KM: each answer validated (chain to the profile's CA,
    for encryption, the address named, valid, not revoked per the CRL cache) before it is
    used and kept in the profile; when the KM cannot be reached, the kept certificate, still
    valid, is used with a warning."""

    def __init__(
        self,
        http: HttpClient,
        ca: x509.Certificate,
        cache: RecipientCache,
        revocation: RevocationCheck | None,
        warn: Callable[[str], None],
        clock: Clock = system_clock,
    ) -> None:
        self.http = http
        self.ca = ca
        self.cache = cache
        self.revocation = revocation
        self.warn = warn
        self.clock = clock

    def encryption_certificate(self, email: str) -> x509.Certificate:
        email = normalize_email(email)
        what = f"the directory's answer for {email}"
        try:
            resp = self.http.request(
                "GET",
                f"/directory/{quote(email, safe='@')}?use=encryption",
                headers={"Accept": PKIX_CERT},
                limit=MAX_CERT,
            )
        except errors.Unreachable as exc:
            return self._cached(email, exc)
        if resp.status >= 500:
            return self._cached(email, refusal(resp, what))
        if resp.status == 404:
            self.cache.forget(email)
            raise errors.NotFound(
                f"no encryption certificate for {email} in the KM's directory (revoked or not enrolled)"
            )
        if resp.status != 200:
            raise refusal(resp, what)
        if _media(resp.header("content-type")) != PKIX_CERT:
            raise errors.MalformedInput(f"{what}: of type {_media(resp.header('content-type'))}, not {PKIX_CERT}")
        try:
            cert = x509.load_der_x509_certificate(resp.body)
            _ = cert.extensions  # parsed lazily: a bad extension must fail here
        except errors.CERTIFICATE_PARSE_ERRORS:
            raise errors.MalformedInput(f"{what}: not a DER certificate") from None
        check_recipient(cert, self.ca, email, self.clock(), self.revocation)
        self.cache.put(email, cert)
        return cert

    def _cached(self, email: str, exc: errors.HsmkmError) -> x509.Certificate:
        cert = self.cache.get(email)
        if cert is None:
            raise errors.Unreachable(f"{exc}; and no certificate of {email} is cached in the profile") from None
        check_recipient(cert, self.ca, email, self.clock(), self.revocation)
        self.warn(f"the KM's directory cannot be reached; encrypting to the cached certificate of {email}")
        return cert


@dataclass(frozen=True)
class CrlLocation:
    """Where a full CRL and its delta are published."""

    full: str
    delta: str | None


def crl_locations(
    urls: Sequence[CrlUrls], km_url: str | None, certs: Sequence[x509.Certificate] = ()
) -> list[CrlLocation]:
    """Where to look, in order: the distribution points the certificates name (RFC 5280
    §4.2.1.13, freshestCRL §4.2.1.15), those the profile noted, then the KM's own paths."""
    found: list[CrlLocation] = []
    for cert in certs:
        full, delta = distribution_points(cert)
        if full:
            found.append(CrlLocation(full, delta))
    found += [CrlLocation(u.full, u.delta) for u in urls if u.full]
    if km_url is not None:
        found.append(CrlLocation(f"{km_url}/crl/full.crl", f"{km_url}/crl/delta.crl"))
    return list(dict.fromkeys(found))


def distribution_points(cert: x509.Certificate) -> tuple[str | None, str | None]:
    """The first http(s) URL of the certificate's CRL distribution point and of its freshestCRL."""

    def first(ext_class: type[x509.CRLDistributionPoints] | type[x509.FreshestCRL]) -> str | None:
        try:
            points = cert.extensions.get_extension_for_class(ext_class).value
        except x509.ExtensionNotFound:
            return None
        for point in points:
            for name in point.full_name or []:
                if isinstance(name, x509.UniformResourceIdentifier) and urlsplit(name.value).scheme in (
                    "http",
                    "https",
                ):
                    return str(name.value)
        return None

    return first(x509.CRLDistributionPoints), first(x509.FreshestCRL)


class HttpCrlSource:
    """The CRLs fetched by URL (plain http:// allowed: CRLs are signed, and the cache verifies
    each against the CA before installing it); the first location that answers is used."""

    def __init__(self, locations: Sequence[CrlLocation], ca: x509.Certificate) -> None:
        self.locations = list(locations)
        self.ca = ca

    def _get(self, url: str, what: str) -> bytes | None:
        """The CRL at ``url``; None when the server has none (404)."""
        parts = urlsplit(url)
        client = HttpClient(f"{parts.scheme}://{parts.netloc}", self.ca)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        resp = client.request("GET", path, headers={"Accept": PKIX_CRL}, limit=MAX_CRL)
        if resp.status == 404:
            return None
        if resp.status != 200:
            raise refusal(resp, what)
        return resp.body

    def fetch_crls(self) -> CrlSet:
        if not self.locations:
            raise errors.Unreachable("no CRL distribution point known: name the KM with --km URL")
        failures: list[str] = []
        for loc in self.locations:
            try:
                full = self._get(loc.full, f"the full CRL at {loc.full}")
            except errors.HsmkmError as exc:  # this location fails; another may answer
                failures.append(str(exc))
                continue
            if full is None:
                failures.append(f"{loc.full}: no CRL there")
                continue
            delta = None
            if loc.delta is not None:
                try:
                    delta = self._get(loc.delta, f"the delta CRL at {loc.delta}")
                except errors.HsmkmError:
                    delta = None  # the full CRL alone is still a correct answer
            return CrlSet(full, delta)
        raise errors.Unreachable("no CRL could be fetched: " + "; ".join(failures))
