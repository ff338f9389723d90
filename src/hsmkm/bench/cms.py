"""cms: encryption to 1 … 1,000 recipients, and large messages encrypted and decrypted,
each beside `openssl cms` on the same input in the same run (wall time and peak RSS)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hsmkm.bench.fixtures import make_km
from hsmkm.bench.rows import Row
from hsmkm.certnames import CertKind
from hsmkm.cms import enveloped
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.x509 import profiles

_MEASURE = (
    "import resource, subprocess, sys, time\n"
    "t = time.perf_counter()\n"
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
    "e = time.perf_counter() - t\n"
    "if p.returncode: sys.exit(p.stderr.decode()[-500:])\n"
    "print(e, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
)


def _measure(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one command, measured from a fresh parent."""
    out = subprocess.run(
        [sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if out.returncode:
        raise RuntimeError(f"{argv[0]} failed: {out.stderr.strip()}")
    seconds, rss_kib = out.stdout.split()
    return float(seconds), int(rss_kib) / 1024


def _recipients(n: int, tmp: Path) -> list[x509.Certificate]:
    """n recipient certificates (one RSA-2048 key shared, to keep set-up short)."""
    ca_key = rsa.generate_private_key(65537, 2048)
    key = rsa.generate_private_key(65537, 2048)
    now = datetime.now(UTC)
    ca = profiles.build_ca_certificate(
        x509.Name.from_rfc4514_string("CN=Bench CMS CA"),
        ca_key.public_key(),
        ca_key,
        profiles.random_serial(),
        now,
        now + timedelta(days=2),
    )
    urls = profiles.PublicationUrls("http://hsmkm.localhost/")
    certs = [
        profiles.build_user_certificate(
            CertKind.ENCRYPT,
            f"r{i}@bench.example",
            None,
            key.public_key(),
            ca,
            ca_key,
            profiles.random_serial(),
            now,
            now + timedelta(days=1),
            urls,
        )
        for i in range(n)
    ]
    (tmp / "recips").mkdir(exist_ok=True)
    for i, c in enumerate(certs):
        (tmp / "recips" / f"{i}.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    return certs


def _big_file(path: Path, mib: int) -> None:
    line = b"The quick brown fox jumps over the lazy dog; 0123456789 ABCDEFGHIJ.\n"
    block = line * ((1 << 20) // len(line) + 1)
    with open(path, "wb") as fh:
        fh.write(b"Subject: large\n\n")
        for _ in range(mib):
            fh.write(block[: 1 << 20])


def run(tmp: Path, quick: bool) -> list[Row]:
    rows: list[Row] = []
    work = tmp / "cms"
    work.mkdir()
    certs = _recipients(1000, work)
    msg = b"Subject: hello\r\n\r\n" + b"A short message to many.\r\n" * 40
    (work / "small.eml").write_bytes(msg)
    for n in (1, 10, 100, 1000):
        t = time.perf_counter()
        enveloped.encrypt(msg, certs[:n])
        ours = time.perf_counter() - t
        ossl, _ = _measure(
            [
                "openssl",
                "cms",
                "-encrypt",
                "-aes-256-gcm",
                "-in",
                str(work / "small.eml"),
                "-out",
                str(work / "small.p7m"),
                *[str(work / "recips" / f"{i}.pem") for i in range(n)],
            ]
        )
        rows.append(
            Row(
                "cms",
                f"encrypt_{n}_recipients_s",
                ours,
                "s",
                f"openssl cms {ossl:.3f} s (process included); target 1000 < 1 s",
                ours / ossl,
            )
        )

    # One small message: sign, verify, decrypt (in process) beside the openssl cms commands.
    rows += _small_ops(work, msg)

    # Large messages through the real CLI, against a KM-enrolled recipient.
    root = make_km(work / "km", ca_key=KeyAlgorithm.P256, user_key=KeyAlgorithm.RSA2048)
    hsmkm = str(Path(sys.executable).parent / "hsmkm")
    env = {"CODE": "", "PW": "bench-password-1"}
    code = subprocess.run(
        [hsmkm, "--home", str(root), "--json", "user", "add", "big@bench.example"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    env["CODE"] = __import__("json").loads(code)["code"]
    epf = work / "big.epf"
    subprocess.run(
        [
            hsmkm,
            "enroll",
            "--km",
            str(root),
            "--email",
            "big@bench.example",
            "--code-source",
            "env:CODE",
            "--keystore",
            str(epf),
            "--password-source",
            "env:PW",
        ],
        check=True,
        capture_output=True,
        env={**os.environ, **env},
    )
    from hsmkm.keys.epf import EpfKeystore

    entry = EpfKeystore.open(epf, env["PW"]).encryption_entries()[0]
    (work / "big.crt").write_bytes(entry.certificate.public_bytes(serialization.Encoding.PEM))
    (work / "big.key").write_bytes(
        entry.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    for mib in [64] if quick else [256, 1024]:
        label = "1g" if mib == 1024 else f"{mib}m"
        src = work / "big.eml"
        _big_file(src, mib)
        ours_e, rss_e = _measure(
            [
                hsmkm,
                "msg",
                "encrypt",
                "--km",
                str(root),
                "--to",
                "big@bench.example",
                str(src),
                "-o",
                str(work / "big.p7m"),
            ],
            env,
        )
        ossl_e, ossl_rss_e = _measure(
            [
                "openssl",
                "cms",
                "-encrypt",
                "-aes-256-gcm",
                "-in",
                str(src),
                "-out",
                str(work / "big-ossl.p7m"),
                str(work / "big.crt"),
            ]
        )
        ours_d, rss_d = _measure(
            [
                hsmkm,
                "msg",
                "decrypt",
                "--keystore",
                str(epf),
                "--password-source",
                "env:PW",
                str(work / "big.p7m"),
                "-o",
                str(work / "big.out"),
            ],
            env,
        )
        ossl_d, ossl_rss_d = _measure(
            [
                "openssl",
                "cms",
                "-decrypt",
                "-in",
                str(work / "big.p7m"),
                "-inkey",
                str(work / "big.key"),
                "-out",
                str(work / "big-ossl.out"),
            ]
        )
        rows += [
            Row("cms", f"encrypt_{label}_s", ours_e, "s", f"openssl cms {ossl_e:.2f} s"),
            Row(
                "cms",
                f"encrypt_{label}_time_ratio",
                ours_e / ossl_e,
                "ratio",
                "hsmkm / openssl cms; target <= 1",
                ours_e / ossl_e,
            ),
            Row("cms", f"encrypt_{label}_rss_mib", rss_e, "MiB", f"openssl cms {ossl_rss_e:.0f} MiB; target <= 64"),
            Row("cms", f"decrypt_{label}_s", ours_d, "s", f"openssl cms {ossl_d:.2f} s"),
            Row(
                "cms",
                f"decrypt_{label}_time_ratio",
                ours_d / ossl_d,
                "ratio",
                "hsmkm / openssl cms; target <= 1",
                ours_d / ossl_d,
            ),
            Row("cms", f"decrypt_{label}_rss_mib", rss_d, "MiB", f"openssl cms {ossl_rss_d:.0f} MiB; target <= 64"),
        ]
        for f in ("big.eml", "big.p7m", "big-ossl.p7m", "big.out", "big-ossl.out"):
            (work / f).unlink(missing_ok=True)
    return rows


def _small_ops(work: Path, msg: bytes) -> list[Row]:
    from hsmkm.cms import signed
    from hsmkm.cms.validation import ValidationContext
    from hsmkm.keys.base import KeyEntry, KeyRole

    ca_key = rsa.generate_private_key(65537, 2048)
    key = rsa.generate_private_key(65537, 2048)
    now = datetime.now(UTC)
    ca = profiles.build_ca_certificate(
        x509.Name.from_rfc4514_string("CN=Bench sign CA"),
        ca_key.public_key(),
        ca_key,
        profiles.random_serial(),
        now,
        now + timedelta(days=2),
    )
    urls = profiles.PublicationUrls("http://hsmkm.localhost/")
    sign_cert, enc_cert = (
        profiles.build_user_certificate(
            kind,
            "s@bench.example",
            None,
            key.public_key(),
            ca,
            ca_key,
            profiles.random_serial(),
            now,
            now + timedelta(days=1),
            urls,
        )
        for kind in (CertKind.SIGN, CertKind.ENCRYPT)
    )
    pem = serialization.Encoding.PEM
    (work / "s.crt").write_bytes(sign_cert.public_bytes(pem))
    (work / "e.crt").write_bytes(enc_cert.public_bytes(pem))
    (work / "ca.crt").write_bytes(ca.public_bytes(pem))
    (work / "s.key").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    signer = KeyEntry(key, sign_cert, KeyRole.SIGN)
    ctx = ValidationContext([ca], now, None)
    n = 200

    def per_op(fn) -> float:  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t) / n

    der = signed.sign(msg, signer, [ca], False, now)
    env_der = enveloped.encrypt(msg, [enc_cert])
    (work / "signed.der").write_bytes(der)
    (work / "env.der").write_bytes(env_der)
    ours = {
        "sign": per_op(lambda: signed.sign(msg, signer, [ca], False, now)),
        "verify": per_op(lambda: signed.verify(der, None, ctx)),
        "decrypt": per_op(lambda: enveloped.decrypt(env_der, [KeyEntry(key, enc_cert, KeyRole.ENCRYPT)])),
    }
    theirs = {
        "sign": _measure(
            [
                "openssl",
                "cms",
                "-sign",
                "-nodetach",
                "-md",
                "sha256",
                "-in",
                str(work / "small.eml"),
                "-signer",
                str(work / "s.crt"),
                "-inkey",
                str(work / "s.key"),
                "-outform",
                "DER",
                "-out",
                str(work / "o.der"),
            ]
        )[0],
        "verify": _measure(
            [
                "openssl",
                "cms",
                "-verify",
                "-inform",
                "DER",
                "-in",
                str(work / "signed.der"),
                "-CAfile",
                str(work / "ca.crt"),
                "-purpose",
                "any",
                "-out",
                os.devnull,
            ]
        )[0],
        "decrypt": _measure(
            [
                "openssl",
                "cms",
                "-decrypt",
                "-inform",
                "DER",
                "-in",
                str(work / "env.der"),
                "-inkey",
                str(work / "s.key"),
                "-out",
                os.devnull,
            ]
        )[0],
    }
    return [
        Row(
            "cms",
            f"{op}_small_ms",
            ours[op] * 1000,
            "ms",
            f"in process, RSA-2048; openssl cms {theirs[op] * 1000:.1f} ms as a whole process",
            ours[op] / theirs[op],
        )
        for op in ("sign", "verify", "decrypt")
    ]
