"""A completed recovery's keys for an administrator: a PKCS#12 written under a password, and
recognised again when a killed run is re-run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from hsmkm import errors
from hsmkm.keys.epf import EpfKeystore
from hsmkm.km import recovery
from hsmkm.km.authority import serial_hex
from hsmkm.km.manager import KeyManager


def request_status(km: KeyManager, request_id: int) -> recovery.RequestStatus:
    return recovery.get(km, request_id).status


def export_writer(km: KeyManager, path: Path, password: str) -> Callable[[list[recovery.RecoveredKey]], None]:
    """What delivers the recovered keys: a PKCS#12 at ``path`` with each key, its certificate
    and the CA certificate."""

    def deliver(keys: list[recovery.RecoveredKey]) -> None:
        store = EpfKeystore.create(path, password)
        for k in keys:
            store.add_entry(k.key, x509.load_der_x509_certificate(k.cert_der))
        store.add_entry(None, km.ca_cert, "hsmkm CA")
        store.save()

    return deliver


def holds_this_export(km: KeyManager, request_id: int, path: Path, password: str) -> bool:
    """Whether ``path`` is the PKCS#12 this request's completion writes, under this password."""
    try:
        store = EpfKeystore.open(path, password)
    except errors.HsmkmError:
        return False
    held = {serial_hex(e.certificate.serial_number) for e in store.encryption_entries()}
    return held == recovery.record_serials(km, request_id)
