"""issuance: certificates issued per second against raw C_Sign per second, same token and key."""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import cast

from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Mechanism

from hsmkm.bench.fixtures import make_km, open_km
from hsmkm.bench.rows import Row, rate
from hsmkm.certnames import CertKind
from hsmkm.keys.pkcs11 import TokenPrivateKey
from hsmkm.km.authority import IssueRequest, issue_certificates

_TBS = os.urandom(900)
BATCH = 50  # about the size of a user certificate's TBS


def _raw_sign_rate(root: Path, n: int) -> float:
    km = open_km(root)
    obj = cast(TokenPrivateKey, km.ca_key)._obj  # the raw python-pkcs11 object: C_Sign with no hsmkm code around it
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
    rounds = 4 if quick else 12
    # Raw signing and issuance alternate in short rounds (one batch each), so the machine's
    # slow moments fall on both sides alike; the rates compare the summed times.
    raw_t = single_t = unbatched_t = 0.0
    for _ in range(rounds):
        raw_t += BATCH / _raw_sign_rate(root, BATCH)
        single_t += _issue_n(str(root), BATCH, 0)
        unbatched_t += _issue_n(str(root), BATCH, 0, batch=1)
    n = BATCH * rounds
    raw, single, unbatched = n / raw_t, n / single_t, n / unbatched_t
    workers = os.cpu_count() or 2
    ctx = multiprocessing.get_context("spawn")
    per = n // workers
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        start = time.time() + 3.0
        futs = [pool.submit(_issue_n, str(root), per, start) for _ in range(workers)]
        longest = max(f.result() for f in futs)
    parallel = per * workers / longest
    ref = f"raw C_Sign RSA-3072 {raw:.0f}/s (one session, {rounds} alternating rounds)"
    return [
        Row("issuance", "raw_sign_per_s", raw, "ops/s", "python-pkcs11 C_Sign, CKM_SHA256_RSA_PKCS"),
        Row("issuance", "single_per_s", single, "certs/s", f"batches of {BATCH}; {ref}"),
        Row("issuance", "single_ratio", single / raw, "ratio", f"batches of {BATCH}; {ref}", single / raw),
        Row(
            "issuance",
            "unbatched_per_s",
            unbatched,
            "certs/s",
            f"one transaction per certificate; {ref}",
            unbatched / raw,
        ),
        Row(
            "issuance", "parallel_per_s", parallel, "certs/s", f"{workers} worker processes, batches of {BATCH}; {ref}"
        ),
        Row("issuance", "parallel_ratio", parallel / raw, "ratio", ref, parallel / raw),
    ]
