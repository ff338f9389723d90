"""enroll: KM-side enrollments per second (code check, key generation, archive, two
certificates, audit), beside the raw token key-generation rate; and a 10,000-user import."""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import KeyType

from hsmkm.bench.fixtures import make_km, open_km
from hsmkm.bench.rows import Row
from hsmkm.client.enroll import build_csr
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.keys.pkcs11 import TokenSession
from hsmkm.km.enroll import enroll
from hsmkm.km.users import add_user, import_users
from hsmkm.protocol import EnrollRequest


def enroll_timing(root: Path, n: int, prefix: str = "") -> tuple[float, float]:
    """Wall and CPU seconds of ``n`` KM-side enrollments on the KM at ``root`` (km.enroll.enroll,
    one process); the users are added and the CSRs built before the clock starts."""
    km = open_km(root)
    key = ec.generate_private_key(ec.SECP256R1())
    requests = []
    for i in range(n):
        email = f"{prefix}u{i}@bench.example"
        _, code = add_user(km, email, None)
        requests.append(EnrollRequest(email, code, build_csr(key, email)))
    km.ca_key, km.ca_cert, km.audit_key, km.archive_key  # noqa: B018
    t, cpu = time.perf_counter(), time.process_time()
    for req in requests:
        enroll(km, req)
    return time.perf_counter() - t, time.process_time() - cpu


def enroll_rate(root: Path, n: int, prefix: str = "") -> float:
    """KM-side enrollments per second (``enroll_timing``)."""
    return n / enroll_timing(root, n, prefix)[0]


def _officers_rates(tmp: Path, n: int, rounds: int) -> tuple[float, float]:
    """Enrollments/s with 1 and with 5 officers (each record's key split and sealed to each),
    alternating rounds on two KMs so both meet the same moments of the host; best of each."""
    roots = {k: make_km(tmp / f"enroll-officers{k}", user_key=KeyAlgorithm.P256, officers=k) for k in (1, 5)}
    best = {1: 0.0, 5: 0.0}
    for r in range(rounds):
        for k in (1, 5) if r % 2 == 0 else (5, 1):
            best[k] = max(best[k], enroll_rate(roots[k], n, prefix=f"r{r}-"))
    return best[1], best[5]


def _raw_keygen_rate(root: Path, n: int) -> float:
    """C_GenerateKeyPair RSA-3072 (session objects) on the KM token, python-pkcs11 only."""
    km = open_km(root)
    session = cast(TokenSession, km.session).session
    t = time.perf_counter()
    with km.session.lock:
        for _ in range(n):
            pub, priv = session.generate_keypair(KeyType.RSA, 3072, store=False)
            priv.destroy()
            pub.destroy()
    return n / (time.perf_counter() - t)


def _import_seconds(root: Path, n: int) -> float:
    km = open_km(root)
    rows = [(f"imp{i}@bench.example", f"Imp {i}") for i in range(n)]
    t = time.perf_counter()
    import_users(km, rows)
    return time.perf_counter() - t


def run(tmp: Path, quick: bool) -> list[Row]:
    p256_root = make_km(tmp / "enroll-p256", user_key=KeyAlgorithm.P256)
    rsa_root = make_km(tmp / "enroll-rsa", user_key=KeyAlgorithm.RSA3072)
    n = 100 if quick else 400
    p256 = enroll_rate(p256_root, n)
    nk = 10 if quick else 40
    raw = _raw_keygen_rate(rsa_root, nk)
    rsa = enroll_rate(rsa_root, nk)
    n_import = 2000 if quick else 10_000
    imp = _import_seconds(p256_root, n_import)
    ref = f"raw RSA-3072 C_GenerateKeyPair {raw:.2f}/s on the same token"
    one, five = _officers_rates(tmp, 60 if quick else 200, 3 if quick else 5)
    return [
        Row("enroll", "p256_officers1_per_s", one, "enroll/s", "1 officer, p256 users, RSA-3072 CA"),
        Row("enroll", "p256_officers5_per_s", five, "enroll/s", "5 officers; target >= 100/s"),
        Row(
            "enroll",
            "officers5_ratio",
            five / one,
            "ratio",
            f"5 officers {five:.1f}/s vs 1 officer {one:.1f}/s, same run; target >= 0.9",
            five / one,
        ),
        Row("enroll", "p256_per_s", p256, "enroll/s", "target >= 100/s; RSA-3072 CA on SoftHSM2"),
        Row("enroll", "raw_rsa3072_keygen_per_s", raw, "keys/s", "python-pkcs11 C_GenerateKeyPair"),
        Row("enroll", "rsa3072_per_s", rsa, "enroll/s", ref),
        Row("enroll", "rsa3072_ratio", rsa / raw, "ratio", ref, rsa / raw),
        Row("enroll", f"user_import_{n_import}_s", imp, "s", f"{n_import / imp:.0f} users/s, one transaction"),
    ]
