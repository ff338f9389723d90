"""recovery: archive master key rotation over many records; a recovery of them all with two
officers' approvals; an officer added to the KM holding them (redistribution included)."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from hsmkm import keys
from hsmkm.bench.fixtures import make_km, open_km
from hsmkm.bench.rows import Row
from hsmkm.certnames import CertKind
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.base import PrivateKey
from hsmkm.keys.token import TokenModule
from hsmkm.km import archive, custody, epochs, recovery
from hsmkm.km.authority import record_certificate, serial_hex, sign_user_certificate
from hsmkm.km.config import OFFICER_KEY_LABEL, Home
from hsmkm.km.manager import KeyManager
from hsmkm.km.officer_policy import OFFICER_KEY_ALG
from hsmkm.km.rotation import rotate_archive_key
from hsmkm.km.users import add_user

EMAIL = "archived@bench.example"


def _fill(km: KeyManager, n: int, key: ec.EllipticCurvePrivateKey) -> None:
    """``n`` archive records of one user, each with its own certificate signed on the token."""
    user, _ = add_user(km, EMAIL, None)
    now = km.clock()
    with km.db.read() as tx:
        sharing = epochs.sharing(tx)
    done = 0
    while done < n:
        with km.db.write() as tx:
            for _ in range(min(1000, n - done)):
                cert = sign_user_certificate(km, key.public_key(), CertKind.ENCRYPT, EMAIL, None)
                record_certificate(tx, cert, CertKind.ENCRYPT, user.id, now)
                sealed = archive.seal_record(km.archive_key, sharing, user.id, serial_hex(cert.serial_number), key)
                archive.store_record(tx, sealed, "p256", now)
                done += 1


def _officer_key(module: TokenModule, home: Home, name: str) -> PrivateKey:
    session = module.open_token(home.trial_pin_file(name).read_text().strip(), label=name)
    return session.private_key(label=OFFICER_KEY_LABEL)


def run(tmp: Path, quick: bool) -> list[Row]:
    # A P-256 CA, so that signing the records' certificates in the setup stays short.
    root = make_km(tmp / "recovery", ca_key=KeyAlgorithm.P256)
    km = open_km(root)
    home = Home(root)
    n = 1000 if quick else 10_000
    size = f"{n // 1000}k"
    key = ec.generate_private_key(ec.SECP256R1())
    _fill(km, n, key)
    module = keys.load_module(km.config.km_token.module, km.config.softhsm_config)

    # The reference: one token ECDH derive per share opened, on an officer's token.
    officer1 = _officer_key(module, home, "officer1")
    assert isinstance(officer1, ec.EllipticCurvePrivateKey)
    peers = [ec.generate_private_key(ec.SECP256R1()).public_key() for _ in range(2000)]
    t = time.perf_counter()
    for peer in peers:
        officer1.exchange(ec.ECDH(), peer)
    ecdh_rate = len(peers) / (time.perf_counter() - t)

    t = time.perf_counter()
    result = rotate_archive_key(km)
    rotate_s = time.perf_counter() - t

    # A recovery of every record: request, two officers' approvals (each shown the request,
    # its certificates checked), completion.
    t = time.perf_counter()
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "bench", email=EMAIL)
    for name in ("officer1", "officer2"):
        shown = recovery.content_for_officer(km, req.id)
        recovery.approve(km, req.id, name, _officer_key(module, home, name), shown)
    done = recovery.complete_recovery(km, req.id, None, reenable=False)
    recover_s = time.perf_counter() - t
    assert len(done.keys) == n and all(k.key.private_numbers() == key.private_numbers() for k in done.keys)

    # An officer added: a key on a new token, two approvals re-sharing every record, and each
    # of the four officers of the new set combining its new shares.
    pin = custody.random_pin(16)
    keys.token_provisioner().init_token(module, "officer4", custody.random_pin(), pin)
    home.trial_pin_file("officer4").write_text(pin)
    t = time.perf_counter()
    session = module.open_token(pin, label="officer4")
    new_key = session.generate_keypair(
        OFFICER_KEY_ALG, OFFICER_KEY_LABEL, b"hsmkm-officer", sign=True, decrypt=False, derive=True
    )
    params = {
        "name": "officer4",
        "uri": "pkcs11:token=officer4",
        "public_key": custody.public_der(new_key.public_key()).hex(),
    }
    change = recovery.open_request(km, recovery.RequestKind.OFFICER_ADD, "bench", params=params)
    for name in ("officer1", "officer3"):
        shown = recovery.content_for_officer(km, change.id)
        recovery.approve(km, change.id, name, _officer_key(module, home, name), shown)
    recovery.complete_change(km, change.id, lambda name: _officer_key(module, home, name))
    add_s = time.perf_counter() - t
    shares = km.db.reader().archive.count_shares()
    assert shares == 4 * n, shares
    floor = 2 * n / ecdh_rate
    return [
        Row(
            "recovery",
            "officer_ecdh_per_s",
            ecdh_rate,
            "derive/s",
            "C_DeriveKey ECDH1 (null KDF) on an officer's token",
        ),
        Row(
            "recovery",
            "rotate_per_s",
            result.records / rotate_s,
            "records/s",
            f"{result.records} records re-sealed on the token in {rotate_s:.2f} s",
        ),
        Row(
            "recovery",
            f"recover_{size}_s",
            recover_s,
            "s",
            f"{n} records: request, 2 officers' approvals (one token ECDH per share: {floor:.1f} s of it), "
            "completion; target <= 30 s",
        ),
        Row(
            "recovery",
            f"officer_add_{size}_s",
            add_s,
            "s",
            f"{n} records re-shared by 2 officers to 4, each combining its shares; target <= 120 s",
        ),
    ]
