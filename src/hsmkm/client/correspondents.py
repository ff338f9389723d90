"""What correspondents announced in signed messages (RFC 8551 §2.7.1): their capabilities
and the certificate to encrypt to, kept per address and replaced only by a newer signature."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from hsmkm import errors
from hsmkm.addresses import address_file
from hsmkm.atomic import write_atomic
from hsmkm.bounded import MAX_SMALL_FILE, read_regular


@dataclass(frozen=True)
class Announcement:
    email: str
    signing_time: datetime | None
    capabilities: list[str] | None
    encryption_cert: x509.Certificate | None
    signer_fingerprint: str


def _fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex()


class Correspondents:
    """A folder of one JSON file per correspondent (written atomically)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, email: str) -> Path:
        return address_file(self.folder, email, ".json")

    def get(self, email: str) -> Announcement | None:
        try:
            data = json.loads(read_regular(self._path(email), MAX_SMALL_FILE, "correspondent cache"))
            enc = data.get("encryption_cert")
            return Announcement(
                str(data["email"]),
                datetime.fromisoformat(data["signing_time"]) if data.get("signing_time") else None,
                [str(c) for c in data["capabilities"]] if isinstance(data.get("capabilities"), list) else None,
                x509.load_der_x509_certificate(base64.b64decode(enc)) if enc else None,
                str(data["signer_fingerprint"]),
            )
        except errors.NotFound:
            return None
        except (ValueError, KeyError, TypeError, errors.BadInput):
            return None  # a damaged entry counts as none; the next signed message replaces it

    def remember(
        self,
        email: str,
        signer: x509.Certificate,
        signing_time: datetime | None,
        capabilities: list[str] | None,
        encryption_cert: x509.Certificate | None,
    ) -> bool:
        """Keep what a verified signature announced, unless an entry from a later signature is
        already kept. Returns whether it was kept."""
        old = self.get(email)
        if (
            old is not None
            and old.signing_time is not None
            and (signing_time is None or signing_time < old.signing_time)
        ):
            return False
        self.folder.mkdir(parents=True, exist_ok=True)
        data = {
            "email": email,
            "signing_time": signing_time.isoformat() if signing_time else None,
            "capabilities": capabilities,
            "encryption_cert": base64.b64encode(encryption_cert.public_bytes(serialization.Encoding.DER)).decode()
            if encryption_cert is not None
            else None,
            "signer_fingerprint": _fingerprint(signer),
        }
        write_atomic(self._path(email), json.dumps(data, indent=1).encode(), 0o644, durable=False)
        return True

    def capabilities_for(self, email: str | None, cert: x509.Certificate) -> list[str] | None:
        """What the correspondent announced, if the certificate is the one they named (or
        they named none)."""
        if email is None:
            return None
        a = self.get(email)
        if a is None or a.capabilities is None:
            return None
        if a.encryption_cert is not None and a.encryption_cert != cert:
            return None
        return a.capabilities
