"""issuance: certificates issued per second against raw C_Sign per second, same token and key."""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Mechanism

from hsmkm.bench.fixtures import make_km, open_km
from hsmkm.bench.rows import Row, rate
from hsmkm.km.authority import IssueRequest, issue_certificates
from hsmkm.x509.profiles import CertKind

_TBS = os.urandom(900)
BATCH = 50  # about the size of a user certificate's TBS


def _raw_sign_rate(root: Path, n: int) -> float:
    km = open_km(root)
    obj = km.ca_key._obj  # the raw python-pkcs11 object: C_Sign with no hsmkm code around it
    with km.session.lock:
        obj.sign(_TBS, mechanism=Mechanism.SHA256_RSA_PKCS)
        return rate(lambda: obj.sign(_TBS, mechanism=Mechanism.SHA256_RSA_PKCS), n)


def _issue_n(root: str, n: int, start_at: float, batch: int = BATCH) -> float:
    """Issue ``n`` certificates in batches (one transaction and audit entry each); seconds."""
    km = open_km(Path(root))
    pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    km.ca_key, km.ca_cert, km.audit_key  # noqa: B018  (load keys before the clock starts)
    while time.time() < start_at:
        time.sleep(0.001)
    t = time.perf_counter()
    for first in range(0, n, batch):
        issue_certificates(
            km, [IssueRequest(pub, CertKind.SIGN, f"b{i}@bench.example") for i in range(first, min(n, first + batch))]
        )
    return time.perf_counter() - t


def run(tmp: Path, quick: bool) -> list[Row]:
    root = make_km(tmp / "issuance")
    n = 100 if quick else 200
    rounds = 3 if quick else 7
    # Raw and issued rates alternate in rounds and the medians are compared, so a noisy
    # moment on the machine does not land on one side only.
    raws, singles, unbatched_rates = [], [], []
    for _ in range(rounds):
        raws.append(_raw_sign_rate(root, n))
        singles.append(n / _issue_n(str(root), n, 0))
        unbatched_rates.append(n / _issue_n(str(root), n, 0, batch=1))
    raw, single, unbatched = (statistics.median(v) for v in (raws, singles, unbatched_rates))
    workers = os.cpu_count() or 2
    ctx = multiprocessing.get_context("spawn")
    per = (n * rounds) // workers
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        start = time.time() + 3.0
        futs = [pool.submit(_issue_n, str(root), per, start) for _ in range(workers)]
        longest = max(f.result() for f in futs)
    parallel = per * workers / longest
    ref = f"raw C_Sign RSA-3072 {raw:.0f}/s (one session, median of {rounds} rounds)"
    return [
        Row("issuance", "raw_sign_per_s", raw, "ops/s", "python-pkcs11 C_Sign, CKM_SHA256_RSA_PKCS"),
        Row("issuance", "single_per_s", single, "certs/s", f"batches of {BATCH}; {ref}"),
        Row("issuance", "single_ratio", single / raw, "ratio", f"batches of {BATCH}; {ref}", single / raw),
        Row("issuance", "unbatched_per_s", unbatched, "certs/s", f"one transaction per certificate; {ref}", unbatched / raw),
        Row("issuance", "parallel_per_s", parallel, "certs/s", f"{workers} worker processes, batches of {BATCH}; {ref}"),
        Row("issuance", "parallel_ratio", parallel / raw, "ratio", ref, parallel / raw),
    ]
