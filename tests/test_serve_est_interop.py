"""An independent EST client (RFC 7030) against ``hsmkm serve``: curl and openssl only.

The client side uses no hsmkm code: curl speaks HTTPS trusting only the KM CA, openssl makes
the CSRs (the serverkeygen one, which carries the DecryptKeyIdentifier attribute that
``openssl req`` cannot write, with ``openssl asn1parse -genconf``), reads the certificates,
and opens the encrypted key part (``openssl cms -decrypt -secretkey -secretkeyid``). The one
thing the client computes itself is its KEK: HKDF-SHA256 over its code, salted with the
DecryptKeyIdentifier it chose, as the KM documents (``hsmkm.est.keypart``).
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from conftest import hsmkm
from serve_outside import Reply, curl, openssl
from server_harness import RunningServer, running_server

pytestmark = pytest.mark.interop

EST = "/.well-known/est"
OID_DECRYPT_KEY_ID = "1.2.840.113549.1.9.16.2.37"
KEK_INFO = b"hsmkm-enroll-transport-v1"


@dataclass
class Est:
    server: RunningServer
    work: Path
    serial: int = 0

    def user(self) -> tuple[str, str]:
        """A fresh user and its one-time code, made by the KM operator."""
        self.serial += 1
        email = f"est{self.serial}@example.com"
        code = hsmkm("--json", "user", "add", email, home=self.server.home).json()["code"]
        assert isinstance(code, str)
        return email, code

    def dir(self, name: str) -> Path:
        path = self.work / name
        path.mkdir()
        return path


@pytest.fixture(scope="module")
def est(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Est]:
    base = tmp_path_factory.mktemp("est-interop")
    home = base / "home"
    hsmkm("init", "--ca-subject", "CN=EST interop CA,O=hsmkm tests", "--ca-key", "p256", home=home)
    with running_server(home) as server:
        yield Est(server, base)


def shell(script: str, cwd: Path, stdin: bytes = b"") -> bytes:
    """A shell pipeline (pipefail): what the issue's one-liners are."""
    proc = subprocess.run(
        ["bash", "-o", "pipefail", "-euc", script], cwd=cwd, input=stdin, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"{script}\n{proc.stderr.decode(errors='replace')}"
    return proc.stdout


def kek(code: str, key_id: bytes) -> bytes:
    """The client's KEK: HKDF-SHA256 (32 octets, salt the DecryptKeyIdentifier) over the code
    as typed, normalised (separators dropped, upper case, 0/1/8 read as O/I/B)."""
    typed = re.sub(r"[\s-]", "", code).upper().replace("0", "O").replace("1", "I").replace("8", "B")
    return HKDF(hashes.SHA256(), 32, salt=key_id, info=KEK_INFO).derive(typed.encode())


def certificates(pem: bytes) -> list[bytes]:
    return re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", pem, re.DOTALL)


def fingerprint(pem: bytes) -> bytes:
    return openssl("x509", "-noout", "-fingerprint", "-sha256", input=pem)


def ec_key(work: Path) -> Path:
    key = work / "key.pem"
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(key))
    return key


def public_pem_of_key(key: Path) -> bytes:
    return openssl("pkey", "-in", str(key), "-pubout")


def public_pem_of_cert(cert_pem: bytes) -> bytes:
    return openssl("x509", "-noout", "-pubkey", input=cert_pem)


def test_cacerts_gives_the_km_ca_as_certs_only_pkcs7(est: Est) -> None:
    work = est.dir("cacerts")
    out = shell(
        f"curl -sS --fail --cacert {est.server.ca_pem} {est.server.url}{EST}/cacerts"
        " | openssl base64 -d | openssl pkcs7 -inform DER -print_certs",
        work,
    )
    found = certificates(out)
    assert len(found) == 1
    assert fingerprint(found[0]) == fingerprint(est.server.ca_pem.read_bytes())
    reply = curl(f"{est.server.url}{EST}/cacerts", est.server.ca_pem, workdir=work)
    assert reply.status == 200
    assert reply.header("content-type").replace(" ", "").lower() == "application/pkcs7-mime;smime-type=certs-only"


def test_csrattrs_names_the_key_types_the_address_and_the_decrypt_key_identifier(est: Est) -> None:
    work = est.dir("csrattrs")
    reply = curl(f"{est.server.url}{EST}/csrattrs", est.server.ca_pem, workdir=work)
    assert reply.status == 200
    assert reply.header("content-type").lower().startswith("application/csrattrs")
    der = openssl("base64", "-d", input=reply.body)
    listing = openssl("asn1parse", "-inform", "DER", input=der).decode()
    assert listing.splitlines()[0].split(":")[-1].strip().startswith("SEQUENCE")
    for wanted in ("emailAddress", "Extension Request", "X509v3 Subject Alternative Name", OID_DECRYPT_KEY_ID):
        assert wanted in listing, listing
    assert "id-ecPublicKey" in listing and "prime256v1" in listing, listing


def test_simpleenroll_as_the_issue_writes_it_gives_a_signing_certificate_for_the_csr_key(est: Est) -> None:
    email, code = est.user()
    work = est.dir("simpleenroll")
    key = ec_key(work)
    shell(
        f"openssl req -new -key key.pem -subj /emailAddress={email} -addext subjectAltName=email:{email}"
        " -outform DER | openssl base64 > csr.b64",
        work,
    )
    # curl -u EMAIL:CODE, with the credentials read from stdin (-K -) so the code is in no argv
    out = shell(
        f"curl -sS --fail -K - --cacert {est.server.ca_pem} --data-binary @csr.b64"
        f" -H 'Content-Type: application/pkcs10' {est.server.url}{EST}/simpleenroll"
        " | openssl base64 -d | openssl pkcs7 -inform DER -print_certs",
        work,
        stdin=f'user = "{email}:{code}"\n'.encode(),
    )
    found = certificates(out)
    assert len(found) == 1
    cert = found[0]
    (work / "cert.pem").write_bytes(cert)
    assert openssl("verify", "-CAfile", str(est.server.ca_pem), str(work / "cert.pem")).strip().endswith(b": OK")
    text = openssl("x509", "-noout", "-text", input=cert).decode()
    assert f"email:{email}" in text, text
    usage = _key_usage(text)
    assert "Digital Signature" in usage and "Key Agreement" not in usage and "Key Encipherment" not in usage, usage
    assert "E-mail Protection" in text, text
    assert public_pem_of_cert(cert) == public_pem_of_key(key)

    # The same request again (its answer lost, say): the same certificate, nothing new issued.
    again = curl(
        f"{est.server.url}{EST}/simpleenroll",
        est.server.ca_pem,
        "-H",
        "Content-Type: application/pkcs10",
        user=f"{email}:{code}",
        body=work / "csr.b64",
        workdir=work,
    )
    assert again.status == 200, again
    pem = shell("openssl base64 -d | openssl pkcs7 -inform DER -print_certs", work, stdin=again.body)
    assert [fingerprint(c) for c in certificates(pem)] == [fingerprint(cert)]


def test_serverkeygen_key_part_opens_with_openssl_and_the_kek_from_the_code(est: Est) -> None:
    email, code = est.user()
    work = est.dir("serverkeygen")
    key = ec_key(work)
    key_id = os.urandom(16)
    csr = _csr_with_decrypt_key_id(work, key, email, key_id)
    # openssl itself checks the CSR it made: the attribute is there, the signature verifies
    shown = subprocess.run(
        ["openssl", "req", "-inform", "DER", "-in", str(csr), "-verify", "-noout", "-text"],
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert b"verify OK" in shown.stdout + shown.stderr
    assert OID_DECRYPT_KEY_ID.encode() in shown.stdout
    (work / "csr.b64").write_bytes(openssl("base64", "-in", str(csr)))

    reply = curl(
        f"{est.server.url}{EST}/serverkeygen",
        est.server.ca_pem,
        "-H",
        "Content-Type: application/pkcs10",
        user=f"{email}:{code}",
        body=work / "csr.b64",
        workdir=work,
    )
    assert reply.status == 200, reply
    parts = split_multipart(reply)
    types = [t for t, _ in parts]
    assert len(parts) == 2, types
    assert not any(t.startswith("application/pkcs8") for t in types), types  # never a plain key
    by_type = {t.replace(" ", "").lower(): body for t, body in parts}
    key_part = by_type["application/pkcs7-mime;smime-type=server-generated-key"]
    certs_part = by_type["application/pkcs7-mime;smime-type=certs-only"]

    cert_pem = shell("openssl base64 -d | openssl pkcs7 -inform DER -print_certs", work, stdin=certs_part)
    found = certificates(cert_pem)
    assert len(found) == 1
    cert = found[0]
    (work / "enc.pem").write_bytes(cert)
    assert openssl("verify", "-CAfile", str(est.server.ca_pem), str(work / "enc.pem")).strip().endswith(b": OK")
    text = openssl("x509", "-noout", "-text", input=cert).decode()
    assert f"email:{email}" in text, text
    usage = _key_usage(text)
    assert "Key Agreement" in usage and "Digital Signature" not in usage, usage

    (work / "keypart.der").write_bytes(openssl("base64", "-d", input=key_part))
    # the EnvelopedData names the client's DecryptKeyIdentifier as its KEK identifier
    listing = openssl("cms", "-cmsout", "-print", "-inform", "DER", "-in", str(work / "keypart.der")).decode()
    assert listing.count("d.kekri:") == 1 and "d.ktri:" not in listing, listing
    assert "id-aes256-wrap" in listing and "aes-256-cbc" in listing, listing
    assert _hex_dump_after("keyIdentifier:", listing) == key_id
    # a wrong KEK does not open it
    wrong = subprocess.run(
        [
            *("openssl", "cms", "-decrypt", "-inform", "DER", "-in", str(work / "keypart.der")),
            *("-secretkey", os.urandom(32).hex(), "-secretkeyid", key_id.hex(), "-out", str(work / "nothing")),
        ],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert wrong.returncode != 0
    inner = work / "signed.der"
    openssl(
        "cms",
        "-decrypt",
        "-inform",
        "DER",
        "-in",
        str(work / "keypart.der"),
        "-secretkey",
        kek(code, key_id).hex(),
        "-secretkeyid",
        key_id.hex(),
        "-out",
        str(inner),
    )
    # inside: a SignedData by the KM CA over an AsymmetricKeyPackage (RFC 5958) of one key
    (work / "signed-ci.der").write_bytes(_content_info_signed_data(inner.read_bytes()))
    package = work / "package.der"
    openssl(
        "cms",
        "-verify",
        "-inform",
        "DER",
        "-in",
        str(work / "signed-ci.der"),
        "-CAfile",
        str(est.server.ca_pem),
        "-purpose",
        "any",
        "-binary",
        "-out",
        str(package),
    )
    top = openssl("asn1parse", "-inform", "DER", "-in", str(package)).decode().splitlines()
    keys = [line for line in top if ":d=1 " in line]
    assert len(keys) == 1, top
    offset = keys[0].split(":", 1)[0].strip()
    private = work / "private.der"
    openssl("asn1parse", "-inform", "DER", "-in", str(package), "-strparse", offset, "-noout", "-out", str(private))
    opened_public = openssl("pkey", "-inform", "DER", "-in", str(private), "-pubout")
    assert opened_public == public_pem_of_cert(cert)
    assert opened_public != public_pem_of_key(key)  # the KM made the key; the CSR's key only signed


def _hex_dump_after(label: str, listing: str) -> bytes:
    """The octets of the hex dump ``openssl cms -print`` writes under ``label``."""
    lines = listing.split(label, 1)[1].splitlines()[1:]
    out = b""
    for line in lines:
        m = re.match(r"\s*[0-9a-f]{4} - ((?:[0-9a-f]{2}[ -]){1,16})", line)
        if m is None:
            break
        out += bytes.fromhex(m.group(1).replace("-", " "))
    return out


def _key_usage(text: str) -> str:
    m = re.search(r"X509v3 Key Usage:.*?\n\s+(.+)\n", text)
    assert m is not None, text
    return m.group(1)


def split_multipart(reply: Reply) -> list[tuple[str, bytes]]:
    """The parts of a multipart/mixed body (RFC 2046 §5.1.1), each as (Content-Type, body)."""
    ctype = reply.header("content-type")
    assert ctype.lower().startswith("multipart/mixed"), ctype
    m = re.search(r'boundary="?([^";]+)"?', ctype)
    assert m is not None, ctype
    delimiter = b"--" + m.group(1).encode()
    text = reply.body.replace(b"\r\n", b"\n")
    assert delimiter + b"--" in text
    sections = text.split(delimiter + b"--")[0].split(delimiter + b"\n")[1:]
    parts: list[tuple[str, bytes]] = []
    for section in sections:
        head, _, body = section.partition(b"\n\n")
        fields = dict(
            (name.strip().lower(), value.strip())
            for name, _, value in (line.decode().partition(":") for line in head.split(b"\n") if line)
        )
        parts.append((fields.get("content-type", ""), body))
    return parts


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    octets = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(octets)]) + octets


def _content_info_signed_data(signed_data: bytes) -> bytes:
    """ContentInfo { id-signedData, [0] EXPLICIT SignedData }: the wrapper ``openssl cms``
    wants around the bare SignedData an EnvelopedData's content decrypts to."""
    oid = bytes.fromhex("06092a864886f70d010702")
    explicit = b"\xa0" + _der_length(len(signed_data)) + signed_data
    body = oid + explicit
    return b"\x30" + _der_length(len(body)) + body


_CRI = """\
[cri]
version = INTEGER:0
subject = SEQUENCE:subject
spki = SEQUENCE:spki
attrs = IMPLICIT:0,SET:attrs
[subject]
rdn = SET:rdn
[rdn]
atv = SEQUENCE:atv
[atv]
type = OID:emailAddress
value = IA5STRING:{email}
[spki]
alg = SEQUENCE:ecalg
key = FORMAT:HEX,BITSTRING:{point}
[ecalg]
alg = OID:id-ecPublicKey
curve = OID:prime256v1
[attrs]
decrypt_key_id = SEQUENCE:dkid
extension_request = SEQUENCE:extreq
[dkid]
type = OID:{dkid_oid}
values = SET:dkid_values
[dkid_values]
value = FORMAT:HEX,OCTETSTRING:{key_id}
[extreq]
type = OID:extReq
values = SET:extreq_values
[extreq_values]
extensions = SEQUENCE:extensions
[extensions]
san = SEQUENCE:san
[san]
id = OID:subjectAltName
value = OCTWRAP,SEQUENCE:san_names
[san_names]
email = IMPLICIT:1,IA5STRING:{email}
"""


def _csr_with_decrypt_key_id(work: Path, key: Path, email: str, key_id: bytes) -> Path:
    """A PKCS#10 request made by openssl alone: the CertificationRequestInfo written with
    ``asn1parse -genconf`` (subject and SAN the address, the DecryptKeyIdentifier attribute as
    an OCTET STRING), signed with ``openssl dgst -sign``, then the whole request written the
    same way around the same info."""
    spki = openssl("pkey", "-in", str(key), "-pubout", "-outform", "DER")
    point = spki[-65:]  # an uncompressed P-256 point closes the SubjectPublicKeyInfo
    assert point[0] == 4
    cri = _CRI.format(email=email, point=point.hex(), dkid_oid=OID_DECRYPT_KEY_ID, key_id=key_id.hex())
    (work / "cri.cnf").write_text("asn1 = SEQUENCE:cri\n" + cri)
    openssl("asn1parse", "-genconf", str(work / "cri.cnf"), "-noout", "-out", str(work / "cri.der"))
    signature = openssl("dgst", "-sha256", "-sign", str(key), str(work / "cri.der"))
    whole = (
        "asn1 = SEQUENCE:csr\n"
        "[csr]\ncri = SEQUENCE:cri\nalg = SEQUENCE:sigalg\n"
        f"signature = FORMAT:HEX,BITSTRING:{signature.hex()}\n"
        "[sigalg]\nalg = OID:ecdsa-with-SHA256\n" + cri
    )
    (work / "csr.cnf").write_text(whole)
    out = work / "csr.der"
    openssl("asn1parse", "-genconf", str(work / "csr.cnf"), "-noout", "-out", str(out))
    return out
