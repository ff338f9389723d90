"""The client profile: what a user's machine keeps of a KM it reaches over the network.

A directory (mode 0700) holding ``ca.crt`` (the trust anchor, PEM: the only thing the client
must be given), ``profile.json`` (the KM's URL, and the CRL URLs its certificates name),
``recipients/`` (correspondents' certificates, validated before they were kept) and ``crl/``
(the CRL cache, one folder per CA). Nothing of the KM's secrets, and no path into its home.
Every file is written atomically with mode 0600.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from hsmkm import errors
from hsmkm.addresses import address_file
from hsmkm.atomic import write_atomic
from hsmkm.bounded import MAX_SMALL_FILE, read_regular
from hsmkm.client.crlcache import CrlCache
from hsmkm.x509.anchor import load_ca_certificate

PROFILE_ENV = "HSMKM_PROFILE"
CA_FILE = "ca.crt"
SETTINGS_FILE = "profile.json"
RECIPIENTS_FOLDER = "recipients"
CRL_FOLDER = "crl"
DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_URL = 2048


def default_location(env: Mapping[str, str], home: Path) -> Path:
    """``$HSMKM_PROFILE``, else ``$XDG_CONFIG_HOME/hsmkm`` (when absolute, as the XDG base
    directory specification requires), else ``~/.config/hsmkm``."""
    if env.get(PROFILE_ENV):
        return Path(env[PROFILE_ENV])
    xdg = env.get("XDG_CONFIG_HOME", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "hsmkm"
    return home / ".config" / "hsmkm"


def check_km_url(url: str) -> str:
    """An ``https://HOST[:PORT][/PATH]`` URL of a KM, without credentials, query or fragment;
    returned without a trailing slash."""
    if len(url) > MAX_URL or not url.isascii() or not url.isprintable():
        raise errors.BadInput("the KM's URL: too long or not printable ASCII")
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise errors.BadInput(f"the KM's URL must be https:// (got {url!r})")
    try:
        _ = parts.port
    except ValueError:
        raise errors.BadInput(f"the KM's URL has a bad port: {url!r}") from None
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise errors.BadInput(f"the KM's URL needs a host and no user or password: {url!r}")
    if parts.query or parts.fragment:
        raise errors.BadInput(f"the KM's URL has a query or fragment: {url!r}")
    return url.rstrip("/")


def read_certificate(data: bytes, what: str) -> x509.Certificate:
    """One certificate, PEM or DER, its extensions parsed."""
    try:
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        _ = cert.extensions  # parsed lazily: a bad extension must fail here
    except errors.CERTIFICATE_PARSE_ERRORS:
        raise errors.MalformedInput(f"{what}: not a certificate") from None
    return cert


def read_ca_certificate(data: bytes, what: str) -> x509.Certificate:
    """A trust anchor: a CA certificate (basicConstraints cA), a self-signed one's signature checked."""
    cert = read_certificate(data, what)
    cert = load_ca_certificate(cert.public_bytes(serialization.Encoding.DER), what)
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    if bc is None or not bc.ca:
        raise errors.ValidationFailed(f"{what}: not a CA certificate")
    return cert


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


@dataclass(frozen=True)
class CrlUrls:
    """Where the CRLs are published, as the certificates' distribution points name them."""

    full: str | None = None
    delta: str | None = None


class Profile:
    """A client profile directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def ca_path(self) -> Path:
        return self.root / CA_FILE

    @property
    def settings_path(self) -> Path:
        return self.root / SETTINGS_FILE

    @property
    def recipients_dir(self) -> Path:
        return self.root / RECIPIENTS_FOLDER

    def exists(self) -> bool:
        return self.ca_path.exists() or self.settings_path.exists()

    def ensure_folder(self, folder: Path | None = None) -> None:
        for path in (self.root, folder) if folder is not None else (self.root,):
            if not path.is_dir():
                path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
                os.chmod(path, DIR_MODE)  # mkdir's mode is cut by the umask

    # --- the trust anchor ---------------------------------------------------------------

    def ca_certificate(self) -> x509.Certificate | None:
        """The profile's CA certificate, or None when it has none yet."""
        try:
            data = read_regular(self.ca_path, MAX_SMALL_FILE, "the profile's CA certificate")
        except errors.NotFound:
            return None
        return read_ca_certificate(data, str(self.ca_path))

    def require_ca(self) -> x509.Certificate:
        ca = self.ca_certificate()
        if ca is None:
            raise errors.NotFound(f"the profile {self.root} has no CA certificate: give it once with --ca-cert FILE")
        return ca

    def trust(self, cert: x509.Certificate) -> bool:
        """Make ``cert`` the trust anchor (the user named it with ``--ca-cert``). Returns whether
        the anchor changed; the CRL cache of another CA is kept in its own folder, and cached
        recipients are validated against the anchor each time they are used."""
        current = self.ca_certificate()
        if current == cert:
            return False
        self.ensure_folder()
        write_atomic(self.ca_path, cert.public_bytes(serialization.Encoding.PEM), FILE_MODE)
        return True

    # --- profile.json -------------------------------------------------------------------

    def _settings(self) -> dict[str, object]:
        try:
            data = json.loads(read_regular(self.settings_path, MAX_SMALL_FILE, "the profile's settings"))
        except errors.NotFound:
            return {}
        except (ValueError, UnicodeDecodeError):
            raise errors.MalformedInput(f"{self.settings_path}: not JSON") from None
        if not isinstance(data, dict):
            raise errors.MalformedInput(f"{self.settings_path}: not a JSON object")
        return data

    def _save(self, settings: dict[str, object]) -> None:
        self.ensure_folder()
        write_atomic(self.settings_path, json.dumps(settings, indent=1, sort_keys=True).encode(), FILE_MODE)

    def km_url(self) -> str | None:
        """The URL of the KM this profile works with, if it names one."""
        url = self._settings().get("km")
        if url is None:
            return None
        if not isinstance(url, str):
            raise errors.MalformedInput(f"{self.settings_path}: 'km' is not a string")
        return check_km_url(url)

    def set_km_url(self, url: str) -> None:
        settings = self._settings()
        url = check_km_url(url)
        if settings.get("km") != url:
            settings["km"] = url
            self._save(settings)

    def directory_url(self) -> str | None:
        """The LDAP directory (``ldap://HOST/BASE``) recipients are looked up in, if named."""
        url = self._settings().get("directory")
        if url is not None and not isinstance(url, str):
            raise errors.MalformedInput(f"{self.settings_path}: 'directory' is not a string")
        return url

    def set_directory_url(self, url: str) -> None:
        settings = self._settings()
        if settings.get("directory") != url:
            settings["directory"] = url
            self._save(settings)

    def crl_urls(self) -> CrlUrls:
        crl = self._settings().get("crl")
        if not isinstance(crl, dict):
            return CrlUrls()
        full, delta = crl.get("full"), crl.get("delta")
        return CrlUrls(full if isinstance(full, str) else None, delta if isinstance(delta, str) else None)

    def set_crl_urls(self, urls: CrlUrls) -> None:
        settings = self._settings()
        value = {"full": urls.full, "delta": urls.delta}
        if settings.get("crl") != value:
            settings["crl"] = value
            self._save(settings)

    # --- caches -------------------------------------------------------------------------

    def crl_cache(self, ca: x509.Certificate) -> CrlCache:
        """The CRL cache of ``ca`` (a folder per CA: another anchor never reads this one's CRLs)."""
        folder = self.root / CRL_FOLDER / fingerprint(ca)[:16]
        self.ensure_folder(self.root / CRL_FOLDER)
        self.ensure_folder(folder)
        return CrlCache(folder)

    def recipients(self) -> RecipientCache:
        return RecipientCache(self.recipients_dir, self)


class RecipientCache:
    """Correspondents' encryption certificates, one DER file per address: only ever written
    after validation, and validated again by whoever reads them."""

    def __init__(self, folder: Path, profile: Profile) -> None:
        self.folder = folder
        self.profile = profile

    def _path(self, email: str) -> Path:
        return address_file(self.folder, email, ".enc.crt")

    def get(self, email: str) -> x509.Certificate | None:
        try:
            data = read_regular(self._path(email), MAX_SMALL_FILE, "cached recipient")
        except errors.NotFound:
            return None
        try:
            return read_certificate(data, "cached recipient")
        except errors.MalformedInput:
            return None  # a damaged entry counts as none; the next lookup replaces it

    def put(self, email: str, cert: x509.Certificate) -> None:
        path = self._path(email)
        self.profile.ensure_folder(self.folder)
        write_atomic(path, cert.public_bytes(serialization.Encoding.DER), FILE_MODE)

    def forget(self, email: str) -> None:
        self._path(email).unlink(missing_ok=True)
