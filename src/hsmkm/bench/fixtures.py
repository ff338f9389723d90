"""Throwaway KMs for benchmarks, on the embedded SoftHSM2 default."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.km.ceremony import InitRequest, run_ceremony
from hsmkm.km.config import Home
from hsmkm.km.manager import KeyManager
from hsmkm.km.publishers import publisher_for


def make_km(
    root: Path,
    ca_key: KeyAlgorithm = KeyAlgorithm.RSA3072,
    user_key: KeyAlgorithm = KeyAlgorithm.P256,
    officers: int = 3,
) -> Path:
    run_ceremony(
        InitRequest(
            root=root,
            ca_subject=x509.Name.from_rfc4514_string("CN=Bench CA"),
            ca_key_alg=ca_key,
            user_key_alg=user_key,
            embedded_officers=officers,
        ),
        publisher_for(root),
    )
    return root


def open_km(root: Path) -> KeyManager:
    pin = Home(root).trial_pin_file("km").read_text().strip()
    return KeyManager.open(root, pin, actor="bench", publisher=publisher_for(root))
