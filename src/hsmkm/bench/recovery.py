"""recovery: archive master key rotation over many records, then every record recovered."""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from hsmkm.bench.fixtures import make_km, open_km
from hsmkm.bench.rows import Row
from hsmkm.keys.pkcs11 import Pkcs11Module
from hsmkm.km import archive, recovery
from hsmkm.km.config import Home
from hsmkm.km.rotation import rotate_archive_key
from hsmkm.km.users import add_user


def run(tmp: Path, quick: bool) -> list[Row]:
    root = make_km(tmp / "recovery")
    km = open_km(root)
    n = 1000 if quick else 10_000
    user, _ = add_user(km, "archived@bench.example", None)
    recovery_public = archive.recovery_public_key(km.db.conn)
    key = ec.generate_private_key(ec.SECP256R1())
    now = km.clock()
    with km.db.transaction() as conn:
        for i in range(n):
            serial = f"{i:040x}"
            conn.execute(
                "INSERT INTO certificates(serial, user_id, kind, der, not_before, not_after, issued_at) "
                "VALUES (?, ?, 'encrypt', x'', ?, ?, ?)",
                (serial, user.id, now.isoformat(), now.isoformat(), now.isoformat()),
            )
            archive.store_record(conn, archive.seal_record(km.archive_key, recovery_public, user.id, serial, key),
                                 "p256", now)
    t = time.perf_counter()
    result = rotate_archive_key(km)
    seconds = time.perf_counter() - t
    # Every record is still recoverable: a quorum of two officers opens them all.
    req = recovery.open_request(km, recovery.RequestKind.RECOVERY, "bench", email="archived@bench.example")
    module = Pkcs11Module.load(km.config.km_token.module, km.config.softhsm_config)
    home = Home(root)
    for name in ("officer1", "officer2"):
        session = module.open_token(home.trial_pin_file(name).read_text().strip(), label=name)
        recovery.approve(km, req.id, name, session)
    t = time.perf_counter()
    done = recovery.complete_recovery(km, req.id, None, reenable=False)
    recover_s = time.perf_counter() - t
    assert len(done.keys) == n and all(k.key.private_numbers() == key.private_numbers() for k in done.keys)
    return [
        Row("recovery", "rotate_per_s", result.records / seconds, "records/s",
            f"{result.records} records re-sealed on the token in {seconds:.2f} s"),
        Row("recovery", "recover_all_s", recover_s, "s",
            f"{len(done.keys)} records opened after the rotation (RSA-3072 recovery key on SoftHSM2)"),
    ]
