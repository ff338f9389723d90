"""serve: EST enrollments per second over HTTPS against ``hsmkm serve --workers 2`` on a fresh
embedded-default KM, from 16 concurrent clients, a new TLS connection per request, each
enrollment simpleenroll + serverkeygen with one code; beside the in-process KM-side
enrollment rate (bench/enroll.py's measurement) on a KM of the same kind, same run.
Also directory lookups and CRL conditional GETs per second, and what the load costs the
client and the server in CPU (the load generator shares the cores with the server)."""

from __future__ import annotations

import base64
import functools
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hsmkm.bench import loadgen
from hsmkm.bench.enroll import enroll_rate, enroll_timing
from hsmkm.bench.fixtures import make_km, open_km
from hsmkm.bench.rows import Row
from hsmkm.est import certsonly, csr, keypart, multipart, transfer
from hsmkm.est.media import MediaType
from hsmkm.keys.algorithms import KeyAlgorithm
from hsmkm.km import est_enroll
from hsmkm.km.publication import CrlKind, publish_crl
from hsmkm.km.users import import_users

CLIENTS = 16
WORKERS = 2
HOST = "127.0.0.1"
READY_TIMEOUT = 120.0
EST = "/.well-known/est"


@dataclass(frozen=True)
class _Enrollment:
    """One user's enrollment, everything client-side made before the clock starts."""

    email: str
    code: str
    key: ec.EllipticCurvePrivateKey
    key_id: bytes
    headers: tuple[tuple[str, str], ...]
    sign_body: bytes  # base64 CSR for simpleenroll
    keygen_body: bytes  # base64 CSR with the DecryptKeyIdentifier, for serverkeygen


@dataclass(frozen=True)
class _Answers:
    sign: loadgen.Response
    keygen: loadgen.Response


@dataclass(frozen=True)
class _Served:
    https: loadgen.Target
    http: loadgen.Target
    pid: int
    log: Path


def _prepare(emails_codes: list[tuple[str, str]]) -> list[_Enrollment]:
    out = []
    for email, code in emails_codes:
        key = ec.generate_private_key(ec.SECP256R1())
        key_id = secrets.token_bytes(16)
        basic = base64.b64encode(f"{email}:{code}".encode()).decode()
        out.append(
            _Enrollment(
                email,
                code,
                key,
                key_id,
                (("Authorization", f"Basic {basic}"), ("Content-Type", MediaType.PKCS10.value)),
                transfer.encode(csr.build(key, email)),
                transfer.encode(csr.build(key, email, key_id)),
            )
        )
    return out


def _expect(resp: loadgen.Response, status: int, media: str, what: str) -> loadgen.Response:
    ctype = resp.headers.get("content-type", "")
    if resp.status != status or not ctype.lower().startswith(media):
        first = resp.body[:200].decode("latin-1").splitlines()[:1]
        raise loadgen.LoadError(f"{what}: {resp.status} {ctype!r} {first}")
    return resp


def _enroll_over_https(target: loadgen.Target, e: _Enrollment) -> _Answers:
    sign = loadgen.request(target, "POST", f"{EST}/simpleenroll", e.headers, e.sign_body)
    _expect(sign, 200, MediaType.PKCS7_MIME.value, f"simpleenroll {e.email}")
    keygen = loadgen.request(target, "POST", f"{EST}/serverkeygen", e.headers, e.keygen_body)
    _expect(keygen, 200, MediaType.MULTIPART_MIXED.value, f"serverkeygen {e.email}")
    return _Answers(sign, keygen)


def _check_answers(e: _Enrollment, a: _Answers, ca: x509.Certificate) -> None:
    """After the clock: each answer holds the user's certificates, and the key part opens
    with the code to the key of the encryption certificate."""
    (sign_cert,) = certsonly.decode(transfer.decode(a.sign.body, certsonly.MAX_SIZE, "simpleenroll"))
    parts = multipart.parse(a.keygen.headers["content-type"], a.keygen.body)
    (enc_cert,) = certsonly.decode(parts.certs_part)
    opened = keypart.open_key(parts.key_part, keypart.kek(e.code, e.key_id), e.key_id, ca)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if sign_cert.public_key().public_bytes(der, spki) != e.key.public_key().public_bytes(der, spki):
        raise loadgen.LoadError(f"{e.email}: the signing certificate is not for the CSR's key")
    if enc_cert.public_key().public_bytes(der, spki) != opened.private_key.public_key().public_bytes(der, spki):
        raise loadgen.LoadError(f"{e.email}: the key part's key is not the encryption certificate's")
    for cert in (sign_cert, enc_cert):
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if san.get_values_for_type(x509.RFC822Name) != [e.email]:
            raise loadgen.LoadError(f"{e.email}: a certificate for another address")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and every process below it (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
        stack += [int(c) for c in children]
    return total


@contextmanager
def _serving(root: Path, ca_pem: Path) -> Iterator[_Served]:
    """``hsmkm serve --workers 2`` on ``root``, HTTPS and plain HTTP on free loopback ports,
    until the block ends (SIGTERM, then kill)."""
    port, http_port = _free_port(), _free_port()
    hsmkm = Path(sys.executable).with_name("hsmkm")
    log = root.parent / f"{root.name}-serve.log"
    env = {k: v for k, v in os.environ.items() if k != "HSMKM_HOME"}
    args = [str(hsmkm), "--home", str(root), "serve", "--workers", str(WORKERS)]
    args += ["--listen", f"{HOST}:{port}", "--listen-http", f"{HOST}:{http_port}"]
    with log.open("wb") as out:
        # A session of its own, as a service runs: where the scheduler shares the CPU between
        # sessions (autogroups), the server does not share one session's share with the bench.
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=env, start_new_session=True)
    served = _Served(
        loadgen.Target(HOST, port, loadgen.client_context(ca_pem)), loadgen.Target(HOST, http_port, None), proc.pid, log
    )
    try:
        _wait_ready(proc, served)
        yield served
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], served: _Served) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = served.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"hsmkm serve exited with {proc.returncode}:\n{tail}")
        try:
            if loadgen.request(served.https, "GET", "/hsmkm/health").status == 200:
                return
        except loadgen.LoadError:
            pass
        time.sleep(0.2)
    raise RuntimeError("hsmkm serve did not become ready")


def _users(root: Path, n: int) -> list[tuple[str, str]]:
    """``n`` users on the KM to be served, and a first CRL for the conditional GETs."""
    km = open_km(root)
    try:
        codes = import_users(km, [(f"s{i}@bench.example", None) for i in range(n)])
        publish_crl(km, CrlKind.FULL)
        return codes
    finally:
        km.close()


def _est_stages(root: Path, n: int, prefix: str) -> tuple[float, float]:
    """The KM side of EST alone, in this process: km.est_enroll's simple_enroll and
    server_keygen for ``n`` users (added, CSRs built and parsed before the clock); wall and
    CPU seconds."""
    km = open_km(root)
    try:
        codes = import_users(km, [(f"{prefix}e{i}@bench.example", None) for i in range(n)])
        jobs = [(e, csr.read(e.sign_body), csr.read(e.keygen_body)) for e in _prepare(codes)]
        km.ca_key, km.ca_cert, km.audit_key, km.archive_key  # noqa: B018
        t, cpu = time.perf_counter(), time.process_time()
        for e, sign, keygen in jobs:
            est_enroll.simple_enroll(km, e.email, e.code, sign)
            est_enroll.server_keygen(km, e.email, e.code, keygen)
        return time.perf_counter() - t, time.process_time() - cpu
    finally:
        km.close()


def _ms(seconds: float) -> float:
    return seconds * 1000.0


@dataclass
class _Rounds:
    """What the alternating enrollment rounds measured."""

    inprocess: list[float]  # enroll/s, bench.enroll's measurement
    inprocess_cpu: float  # CPU seconds of those
    est: list[float]  # enroll/s, the EST stages in-process
    est_cpu: float  # CPU seconds of those
    https: list[float]  # enroll/s over HTTPS
    latencies: list[float]
    client_cpu: float
    server_cpu: float


def _enroll_rounds(
    served: _Served, ref_root: Path, enrollments: list[_Enrollment], ca: x509.Certificate, sizes: tuple[int, int, int]
) -> _Rounds:
    """Rounds of the in-process reference, the EST stages in-process and EST over HTTPS, one
    after the other, so the machine's busy moments fall on each alike."""
    rounds, n_https, n_ref = sizes
    out = _Rounds([], 0.0, [], 0.0, [], [], 0.0, 0.0)
    enroll = functools.partial(_enroll_over_https, served.https)
    loadgen.drive(CLIENTS, enrollments[:CLIENTS], enroll)  # each worker's first requests, untimed
    for r in range(rounds):
        wall, cpu = enroll_timing(ref_root, n_ref, prefix=f"r{r}-")
        out.inprocess.append(n_ref / wall)
        out.inprocess_cpu += cpu
        wall, cpu = _est_stages(ref_root, n_ref, prefix=f"r{r}-")
        out.est.append(n_ref / wall)
        out.est_cpu += cpu
        batch = enrollments[CLIENTS + r * n_https : CLIENTS + (r + 1) * n_https]
        cpu0 = _cpu_seconds(served.pid)
        run_ = loadgen.drive(CLIENTS, batch, enroll)
        out.server_cpu += _cpu_seconds(served.pid) - cpu0
        out.client_cpu += run_.client_cpu
        out.https.append(len(batch) / run_.seconds)
        out.latencies += run_.latencies
        for e, answers in zip(batch, run_.results, strict=True):
            _check_answers(e, answers, ca)
    return out


def _get_rate(
    target: loadgen.Target, paths: list[str], headers: tuple[tuple[str, str], ...], status: int, media: str
) -> float:
    """GETs per second of ``paths`` from the clients, each answer's status and type checked."""
    run_ = loadgen.drive(
        CLIENTS, paths, lambda path: _expect(loadgen.request(target, "GET", path, headers), status, media, path)
    )
    return len(paths) / run_.seconds


def run(tmp: Path, quick: bool) -> list[Row]:
    rounds = 1 if quick else 3
    n_https = 160 if quick else 400
    n_ref = 60 if quick else 200
    n_get = 400 if quick else 2000
    served_root = make_km(tmp / "serve-km", user_key=KeyAlgorithm.P256)
    ref_root = make_km(tmp / "serve-ref", user_key=KeyAlgorithm.P256)
    ca_der = (served_root / "pub" / "ca.crt").read_bytes()
    ca = x509.load_der_x509_certificate(ca_der)
    ca_pem = tmp / "serve-ca.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    enrollments = _prepare(_users(served_root, CLIENTS + rounds * n_https))
    # The in-process measurements open the other KM's token store first, so nothing of the
    # served KM's store stays open in this process while the server's workers use it.
    enroll_rate(ref_root, CLIENTS, prefix="warm-")
    with _serving(served_root, ca_pem) as served:
        m = _enroll_rounds(served, ref_root, enrollments, ca, (rounds, n_https, n_ref))
        health = _get_rate(served.https, ["/hsmkm/health"] * n_get, (), 200, "")
        emails = [e.email for e in enrollments[CLIENTS:]]
        directory = _get_rate(
            served.https,
            [f"/directory/{emails[i % len(emails)]}" for i in range(n_get)],
            (("Accept", "application/pkix-cert"),),
            200,
            "application/pkix-cert",
        )
        first = _expect(loadgen.request(served.http, "GET", "/crl/full.crl"), 200, "application/pkix-crl", "crl")
        crl = _get_rate(served.http, ["/crl/full.crl"] * n_get, (("If-None-Match", first.headers["etag"]),), 304, "")
    n_done = rounds * n_https
    server_cpu, client_cpu = m.server_cpu / n_done, m.client_cpu / n_done
    inproc_cpu = m.inprocess_cpu / (rounds * n_ref)
    cost = server_cpu + client_cpu
    https, ref, est = max(m.https), max(m.inprocess), max(m.est)
    how = (
        f"{WORKERS} workers, {CLIENTS} client threads in the bench process, a new TCP+TLS connection per "
        f"request (no resumption), simpleenroll + serverkeygen per code, best of {rounds} x {n_https}"
    )
    get_how = f"{CLIENTS} clients, a new connection per request, {n_get} requests"
    return [
        Row("serve", "enroll_https_per_s", https, "enroll/s", how),
        Row(
            "serve",
            "enroll_inprocess_per_s",
            ref,
            "enroll/s",
            f"in-process KM-side enroll (bench.enroll), a KM of the same kind, best of {rounds} x {n_ref}",
        ),
        Row(
            "serve",
            "enroll_https_ratio",
            https / ref,
            "ratio",
            f"HTTPS {https:.1f}/s vs in-process {ref:.1f}/s, same run; target >= 0.8",
            https / ref,
        ),
        Row("serve", "enroll_p50_ms", _ms(median(m.latencies)), "ms", f"one whole enrollment (both calls), {n_done}"),
        Row(
            "serve",
            "enroll_p99_ms",
            _ms(loadgen.percentile(m.latencies, 99)),
            "ms",
            f"same; target <= 250 ms at {CLIENTS} clients",
        ),
        Row(
            "serve",
            "enroll_inprocess_cpu_ms_per_enroll",
            _ms(inproc_cpu),
            "ms",
            "CPU of the in-process reference, per enrollment",
        ),
        Row(
            "serve",
            "est_stages_inprocess_per_s",
            est,
            "enroll/s",
            f"the KM side of EST alone (est_enroll.simple_enroll + server_keygen), one process, best of {rounds} x {n_ref};"
            " ratio: / in-process enroll",
            est / ref,
        ),
        Row(
            "serve",
            "est_stages_cpu_ms_per_enroll",
            _ms(m.est_cpu / (rounds * n_ref)),
            "ms",
            "CPU of those, per enrollment",
        ),
        Row(
            "serve",
            "server_cpu_ms_per_enroll",
            _ms(server_cpu),
            "ms",
            f"hsmkm serve's CPU per enrollment over HTTPS (supervisor + {WORKERS} workers)",
        ),
        Row(
            "serve",
            "client_cpu_ms_per_enroll",
            _ms(client_cpu),
            "ms",
            "the load generator's CPU per enrollment (connections, handshakes, requests; CSRs made before)",
        ),
        Row(
            "serve",
            "enroll_https_cpu_cost_ratio",
            cost / inproc_cpu,
            "ratio",
            f"CPU per enrollment over HTTPS (server {_ms(server_cpu):.1f} + load generator {_ms(client_cpu):.1f} ms)"
            f" / in-process ({_ms(inproc_cpu):.1f} ms): with {WORKERS} workers on 2 idle cores the HTTPS rate is"
            " bounded by 2 / this x the in-process CPU-bound rate",
            cost / inproc_cpu,
        ),
        Row("serve", "health_per_s", health, "req/s", f"GET /hsmkm/health over HTTPS, {get_how}"),
        Row(
            "serve",
            "directory_per_s",
            directory,
            "req/s",
            f"GET /directory/EMAIL Accept application/pkix-cert over HTTPS, {get_how}",
        ),
        Row(
            "serve",
            "crl_304_per_s",
            crl,
            "req/s",
            f"GET /crl/full.crl If-None-Match -> 304 on the plain HTTP listener, {get_how}",
        ),
    ]
