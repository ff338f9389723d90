"""The KM home: where its files are, and its configuration (``km.json``, no secrets)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

from hsmkm import errors, keys
from hsmkm.atomic import write_atomic
from hsmkm.certnames import CERTS_FOLDER
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.uri import Pkcs11Uri

# Version 3 names tokens by RFC 7512 URIs; version 2 by module/label/serial fields, with paths
# into the home relative to it; version 1 kept those paths absolute. All three are read.
CONFIG_VERSION = 3
_KNOWN_VERSIONS = (1, 2, 3)
SOFTHSM_CONFIG_NAME = "softhsm/softhsm2.conf"

CA_KEY_LABEL = "hsmkm-ca"
AUDIT_KEY_LABEL = "hsmkm-audit"
ARCHIVE_KEY_PREFIX = "hsmkm-archive-"
RECOVERY_KEY_LABEL = "hsmkm-recovery"
OFFICER_KEY_LABEL = "hsmkm-officer"
EMBEDDED_KM_TOKEN = "hsmkm"
# Not "hsmkm-recovery": pkcs11-tool --token-label matches prefixes, so "--token-label hsmkm"
# would find the recovery token about half of the time.
EMBEDDED_RECOVERY_TOKEN = "km-recovery"


class Home:
    """Paths inside a KM home."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def config(self) -> Path:
        return self.root / "km.json"

    @property
    def database(self) -> Path:
        return self.root / "km.db"

    @property
    def pub(self) -> Path:
        return self.root / "pub"

    @property
    def ca_cert(self) -> Path:
        return self.pub / "ca.crt"

    @property
    def crl_dir(self) -> Path:
        return self.pub / "crl"

    @property
    def certs_dir(self) -> Path:
        return self.pub / CERTS_FOLDER

    @property
    def softhsm_dir(self) -> Path:
        return self.root / "softhsm"

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    def trial_pin_file(self, name: str) -> Path:
        return self.secrets_dir / f"{name}.pin"

    def exists(self) -> bool:
        return self.config.exists() or self.database.exists()

    @property
    def temp_dir(self) -> Path:
        """Temporary files of folders too large to list on every write (the directory's)."""
        return self.root / ".tmp"

    def written_dirs(self) -> list[Path]:
        """The folders this home's commands write files into (where a kill can leave a temp)."""
        return [self.root, self.temp_dir, self.pub, self.crl_dir, self.secrets_dir]

    def relative(self, path: str) -> str:
        """``path`` relative to the home when it lies inside it (else unchanged)."""
        p = Path(path)
        if p.is_absolute():
            try:
                return str(p.relative_to(self.root.absolute()))
            except ValueError:
                return path
        return path


def resolve_source(root: Path, spec: str | None, embedded: bool) -> str | None:
    """A secret source as this home means it: ``file:`` paths relative to the home.

    A first-release embedded home named its trial PIN files by absolute paths of wherever
    it was made (``.../secrets/NAME.pin``): those are mapped to this home's own files, so a
    copy never reads the original's.
    """
    if spec is None or not spec.startswith("file:"):
        return spec
    path = spec[len("file:") :]
    pure = PurePosixPath(path)
    if not pure.is_absolute():
        return f"file:{root.absolute() / path}"
    if embedded and len(pure.parts) >= 2 and pure.parent.name == "secrets" and pure.suffix == ".pin":
        return f"file:{root.absolute() / 'secrets' / pure.name}"
    return spec


def relative_source(root: Path, spec: str | None) -> str | None:
    """The inverse of ``resolve_source`` for saving: a ``file:`` inside the home made relative."""
    if spec is None or not spec.startswith("file:"):
        return spec
    return "file:" + Home(root).relative(spec[len("file:") :])


@dataclass
class TokenRef:
    """Where a token is: its module and how to find it (no PIN); an RFC 7512 URI in km.json."""

    module: str
    label: str | None = None
    serial: str | None = None

    @property
    def uri(self) -> Pkcs11Uri:
        return Pkcs11Uri(token=self.label, serial=self.serial, module_path=self.module)

    @classmethod
    def parse(cls, value: object) -> TokenRef:
        """A reference as km.json holds it: a ``pkcs11:`` URI, or (versions 1 and 2) its fields."""
        if isinstance(value, dict):
            return cls(**value)
        if not isinstance(value, str):
            raise TypeError("a token reference is a pkcs11: URI")
        uri = Pkcs11Uri.parse(value)
        if uri.module_path is None:
            raise ValueError(f"token URI {value} has no module-path")
        return cls(uri.module_path, uri.token, uri.serial)


@dataclass
class LdapConfig:
    """The LDAP directory the KM publishes into (``directory ldap``); its password stays in
    its source (``env:``, ``file:``), read when a bind needs it."""

    url: str
    base_dn: str
    bind_dn: str | None = None
    password_source: str | None = None
    ca_cert: str | None = None  # the operator's CA for the directory's TLS certificate (PEM path)

    @classmethod
    def parse(cls, value: object) -> LdapConfig:
        if not isinstance(value, dict):
            raise TypeError("ldap is an object")
        return cls(**value)


@dataclass
class KmConfig:
    """What ``hsmkm init`` decided; read by every later command."""

    km_token: TokenRef
    # Only a KM of the first release has one, until 'archive migrate' destroys its key.
    recovery_token: TokenRef | None
    ca_key_alg: KeyAlgorithm
    user_key_alg: KeyAlgorithm
    cert_days: int
    base_url: str
    embedded: bool
    softhsm_config: str | None = None
    km_pin_source: str | None = None
    archive_key_label: str = ARCHIVE_KEY_PREFIX + "1"
    code_ttl_days: int = 7
    code_max_attempts: int = 5
    crl_next_update_hours: int = 24
    recovery_request_hours: int = 72
    subordinate: bool = False
    version: int = CONFIG_VERSION
    extra: dict[str, str] = field(default_factory=dict)
    ldap: LdapConfig | None = None
    # Where this configuration was loaded from (not saved): paths resolve against it.
    root: Path | None = field(default=None, repr=False, compare=False)

    def save(self, home: Home) -> None:
        data = asdict(self)
        data.pop("root")
        data["ca_key_alg"] = self.ca_key_alg.value
        data["user_key_alg"] = self.user_key_alg.value
        data["version"] = CONFIG_VERSION
        data["km_token"] = self.km_token.uri.to_uri()
        data["recovery_token"] = self.recovery_token.uri.to_uri() if self.recovery_token else None
        if self.softhsm_config is not None:
            data["softhsm_config"] = home.relative(self.softhsm_config)
        data["km_pin_source"] = relative_source(home.root, self.km_pin_source)
        if data["ldap"] is None:
            data.pop("ldap")  # a home without a directory keeps the file it always had
        write_atomic(home.config, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o644)

    def resolve_source(self, spec: str | None) -> str | None:
        """A secret source (e.g. an officer URI's pin-source) as this home means it."""
        if self.root is None:
            return spec
        return resolve_source(self.root, spec, self.embedded)

    @classmethod
    def load(cls, home: Home) -> KmConfig:
        try:
            data = json.loads(home.config.read_text())
        except FileNotFoundError:
            raise errors.NotFound(f"no KM at {home.root} (run 'hsmkm init')") from None
        except (OSError, ValueError) as exc:
            raise errors.MalformedInput(f"{home.config}: unreadable configuration ({exc})") from None
        if not isinstance(data, dict):
            raise errors.MalformedInput(f"{home.config}: damaged configuration (not a JSON object)")
        if data.get("version") not in _KNOWN_VERSIONS:
            raise errors.MalformedInput(f"{home.config}: configuration version {data.get('version')} unknown")
        try:
            data["km_token"] = TokenRef.parse(data["km_token"])
            rec = data.get("recovery_token")
            data["recovery_token"] = TokenRef.parse(rec) if rec else None
            data["ca_key_alg"] = KeyAlgorithm(data["ca_key_alg"])
            data["user_key_alg"] = KeyAlgorithm(data["user_key_alg"])
            data.pop("root", None)
            ldap = data.get("ldap")
            data["ldap"] = LdapConfig.parse(ldap) if ldap is not None else None
            config = cls(**data)
        except (KeyError, TypeError, ValueError, errors.MalformedInput) as exc:
            raise errors.MalformedInput(f"{home.config}: bad configuration ({exc})") from None
        root = home.root.absolute()
        config.root = root
        if config.embedded:
            # The embedded layout is fixed: its store is this home's, wherever it was made.
            config.softhsm_config = str(root / SOFTHSM_CONFIG_NAME)
            keys.token_provisioner().ensure_config(Path(config.softhsm_config))
        elif config.softhsm_config is not None and not Path(config.softhsm_config).is_absolute():
            config.softhsm_config = str(root / config.softhsm_config)
        if isinstance(config.km_pin_source, str):
            config.km_pin_source = resolve_source(root, config.km_pin_source, config.embedded)
        return config

    @property
    def delta_crl_url(self) -> str:
        return self.base_url + "crl/delta.crl"  # as PublicationUrls.delta_crl, unchecked
