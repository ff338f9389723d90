"""How a user's command reaches the KM, as the command line says: ``--km HOME`` (a KM home on
this machine, as before) or ``--km https://…`` (a ``hsmkm serve``, trusted through the client
profile's CA certificate), or, without ``--km``, the KM the profile names."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from cryptography import x509

from hsmkm import errors
from hsmkm.bounded import MAX_SMALL_FILE, read_regular
from hsmkm.cli.context import CliContext
from hsmkm.cli.revocation import default_cache_dir, km_source
from hsmkm.client.correspondents import Correspondents
from hsmkm.client.crlcache import CrlCache
from hsmkm.client.https import HttpClient
from hsmkm.client.network import HttpCrlSource, HttpsDirectory, crl_locations
from hsmkm.client.profile import Profile, check_km_url, default_location, read_ca_certificate
from hsmkm.client.revocation import RevocationChecker, validation_context
from hsmkm.client.sources import CertDirectory, CrlSource
from hsmkm.cms.validation import ValidationContext

if TYPE_CHECKING:
    from hsmkm.client.ldap_directory import LdapClient


def is_url(km: str) -> bool:
    return km.lower().startswith(("https://", "http://"))


def km_options(help_text: str, required: bool = True) -> Callable[[Any], Any]:
    """``--km HOME|URL``, ``--profile DIR`` and ``--ca-cert FILE`` of a user's command."""
    km_help = f"{help_text} A KM home on this machine, or the https:// URL of a 'hsmkm serve'" + (
        " (default: the KM the profile names)." if required else "."
    )

    def decorate(f: Any) -> Any:
        f = click.option("--km", "km", metavar="HOME|URL", help=km_help)(f)
        f = click.option(
            "--profile",
            "profile_dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="The client profile (env HSMKM_PROFILE; default $XDG_CONFIG_HOME/hsmkm or ~/.config/hsmkm).",
        )(f)
        return click.option(
            "--ca-cert",
            "ca_cert",
            type=click.Path(dir_okay=False, path_type=Path),
            help="The KM's CA certificate (PEM or DER), kept in the profile as its trust anchor: give it once.",
        )(f)

    return decorate


@dataclass
class KmAccess:
    """The KM as one command reaches it, and the client state that goes with it."""

    cli_ctx: CliContext
    home: Path | None = None
    url: str | None = None
    profile: Profile | None = None
    cache_dir: Path | None = None
    ldap_url: str | None = None  # recipients (and, without a KM, CRLs) from this LDAP directory
    _checker: RevocationChecker | None = field(default=None, repr=False)

    @property
    def remote(self) -> bool:
        return self.url is not None

    def ca(self) -> x509.Certificate:
        if self.home is not None:
            return km_source(self.home).ca_certificate()
        assert self.profile is not None
        return self.profile.require_ca()

    def http(self) -> HttpClient:
        if self.url is None:
            raise errors.BadInput("this needs the KM's URL: --km https://…")
        return HttpClient(self.url, self.ca())

    def checker(self) -> RevocationChecker:
        """The CRL cache of the KM's CA, refreshed from the KM when stale."""
        if self._checker is None:
            ca = self.ca()
            if self.home is not None:
                source = km_source(self.home)
                cache = CrlCache(self.cache_dir or default_cache_dir(ca))
                self._checker = RevocationChecker(cache, source, ca, self.cli_ctx.warn)
            else:
                assert self.profile is not None
                cache = CrlCache(self.cache_dir) if self.cache_dir else self.profile.crl_cache(ca)
                crls: CrlSource
                if self.url is None and self.ldap_url is not None:
                    from hsmkm.client.ldap_directory import LdapCrlSource

                    crls = LdapCrlSource(self._ldap())
                else:
                    crls = HttpCrlSource(crl_locations([self.profile.crl_urls()], self.url, [ca]), ca)
                self._checker = RevocationChecker(cache, crls, ca, self.cli_ctx.warn)
        return self._checker

    def context(self) -> ValidationContext:
        return validation_context(self.checker())

    def _ldap(self) -> LdapClient:
        from hsmkm.client.ldap_directory import LdapClient, LdapLocation

        assert self.ldap_url is not None
        return LdapClient(LdapLocation.parse(self.ldap_url))

    def directory(self) -> CertDirectory:
        if self.ldap_url is not None:
            from hsmkm.client.ldap_directory import LdapDirectory

            return LdapDirectory(self._ldap(), self.ca(), self.context().revocation)
        if self.home is not None:
            return km_source(self.home)
        assert self.profile is not None
        return HttpsDirectory(
            self.http(), self.ca(), self.profile.recipients(), self.context().revocation, self.cli_ctx.warn
        )

    def correspondents(self) -> Correspondents:
        """Where what correspondents announced is kept: beside the CRL cache."""
        return Correspondents(self.checker().cache.dir / "correspondents")


def km_access(
    cli_ctx: CliContext, km: str | None, profile_dir: Path | None, ca_cert: Path | None, cache: Path | None = None
) -> KmAccess:
    """The KM a command needs (see ``optional_km_access``)."""
    access = optional_km_access(cli_ctx, km, profile_dir, ca_cert, cache, required=True)
    assert access is not None  # required: named, or refused
    return access


def optional_km_access(
    cli_ctx: CliContext,
    km: str | None,
    profile_dir: Path | None,
    ca_cert: Path | None,
    cache: Path | None = None,
    required: bool = False,
) -> KmAccess | None:
    """The KM a command works with: ``--km HOME`` as before (the profile untouched); ``--km
    URL`` or none, through the profile (``--ca-cert`` stored into it first). None when the
    KM is optional, not named and no profile exists."""
    if km is not None and not is_url(km):
        if ca_cert is not None or profile_dir is not None:
            raise errors.BadInput("--ca-cert and --profile are for a KM reached by URL (--km https://…)")
        return KmAccess(cli_ctx, home=Path(km), cache_dir=cache)
    profile = Profile(profile_dir or default_location(os.environ, Path.home()))
    if ca_cert is not None:
        anchor = read_ca_certificate(read_regular(ca_cert, MAX_SMALL_FILE, "--ca-cert"), str(ca_cert))
        before = profile.ca_certificate()
        if profile.trust(anchor) and before is not None:
            cli_ctx.warn(
                f"the profile {profile.root} now trusts {anchor.subject.rfc4514_string()} "
                f"instead of {before.subject.rfc4514_string()}"
            )
    url = km if km is not None else profile.km_url()
    if url is None and profile.ca_certificate() is None:
        if not required and not profile.exists():
            return None
        raise errors.BadInput(
            "name the KM with --km HOME or --km https://URL (or use a profile that names one, --profile DIR)"
        )
    if url is not None:
        if url.lower().startswith("http://"):
            raise errors.BadInput("the KM's URL must be https:// (plain http serves only CRLs and the CA certificate)")
        url = check_km_url(url)
    access = KmAccess(cli_ctx, url=url, profile=profile, cache_dir=cache)
    access.ca()  # the trust anchor must be there before anything goes over the network
    if url is not None and profile.km_url() is None:
        profile.set_km_url(url)
    return access
