"""The KM home: where its files are, and its configuration (``km.json``, no secrets)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hsmkm import errors
from hsmkm.atomic import write_atomic
from hsmkm.keys.algorithms import KeyAlgorithm

CONFIG_VERSION = 1

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
        return self.pub / "certs"

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


@dataclass
class TokenRef:
    """Where a token is: its module and how to find it (no PIN)."""

    module: str
    label: str | None = None
    serial: str | None = None


@dataclass
class KmConfig:
    """What ``hsmkm init`` decided; read by every later command."""

    km_token: TokenRef
    recovery_token: TokenRef
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

    def save(self, home: Home) -> None:
        data = asdict(self)
        data["ca_key_alg"] = self.ca_key_alg.value
        data["user_key_alg"] = self.user_key_alg.value
        write_atomic(home.config, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), 0o644)

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
        if data.get("version") != CONFIG_VERSION:
            raise errors.MalformedInput(f"{home.config}: configuration version {data.get('version')} unknown")
        try:
            data["km_token"] = TokenRef(**data["km_token"])
            data["recovery_token"] = TokenRef(**data["recovery_token"])
            data["ca_key_alg"] = KeyAlgorithm(data["ca_key_alg"])
            data["user_key_alg"] = KeyAlgorithm(data["user_key_alg"])
            return cls(**data)
        except (KeyError, TypeError, ValueError) as exc:
            raise errors.MalformedInput(f"{home.config}: bad configuration ({exc})") from None

    @property
    def ca_cert_url(self) -> str:
        return self.base_url + "ca.crt"

    @property
    def full_crl_url(self) -> str:
        return self.base_url + "crl/full.crl"

    @property
    def delta_crl_url(self) -> str:
        return self.base_url + "crl/delta.crl"
