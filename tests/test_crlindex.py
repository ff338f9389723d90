"""The CRL cache's revocation index: a perfect hash that answers every serial with one slot,
its overflow, its rebuild from the cached CRL, and the delta overlay; the CRL time and entry
parsers under random input."""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hsmkm import errors
from hsmkm.client import crlindex
from hsmkm.client.crlcache import CrlCache
from hsmkm.client.crlindex import MAGIC, CrlIndex, IndexOutdated, build_index
from hsmkm.der import GENERALIZED_TIME, UTC_TIME, der_time, der_time_of_iso, time_seconds
from hsmkm.x509 import profiles
from hsmkm.x509.crl import RevocationReason, RevokedEntry, build_crl
from hsmkm.x509.crlparse import parse_crl

MERSENNE = sys.hash_info.modulus
REASONS = [r for r in RevocationReason if r is not RevocationReason.REMOVE_FROM_CRL]
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def _ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = profiles.build_ca_certificate(
        x509.Name.from_rfc4514_string("CN=Index Test CA"),
        key.public_key(),
        key,
        profiles.random_serial(),
        NOW - timedelta(days=1),
        NOW + timedelta(days=30),
    )
    return key, cert


CA = _ca()

# Serials an index must hold: ordinary ones, the extremes of the 20-octet range, ones that
# RFC 5280 forbids but other CAs issue (zero, negative), and pairs whose int hashes coincide.
serials = st.one_of(
    st.integers(min_value=1, max_value=(1 << 159) - 1),
    st.integers(min_value=1, max_value=1000),
    st.sampled_from([1, (1 << 159) - 1, (1 << 160) - 1, 0, -1, -(1 << 100)]),
)
YEARS_1_TO_9999 = st.integers(
    int(datetime(1, 1, 1, tzinfo=UTC).timestamp()), int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
)
rows = st.lists(
    st.tuples(serials, YEARS_1_TO_9999, st.sampled_from([r.code for r in REASONS])),
    max_size=60,
    unique_by=lambda r: r[0],
)


@settings(max_examples=120, deadline=None)
@given(rows=rows, others=st.lists(serials, max_size=20), collide=st.booleans())
def test_every_revoked_serial_is_found_and_no_other(rows, others, collide) -> None:  # type: ignore[no-untyped-def]
    if collide and rows and 0 < rows[0][0] < (1 << 150):
        # Same int hash as the first serial: the perfect hash cannot split them; the overflow must.
        twin = rows[0][0] + MERSENNE
        if all(r[0] != twin for r in rows):
            rows = [*rows, (twin, 7, RevocationReason.SUPERSEDED.code)]
    index = CrlIndex(build_index(rows))
    assert index.count == len(rows)
    for serial, when, code in rows:
        info = index.check(serial)
        assert info is not None, serial
        assert info.revoked_at == datetime.fromtimestamp(when, UTC)
        assert info.reason.code == code
    revoked = {r[0] for r in rows}
    for serial in others + [r[0] + 1 for r in rows] + [r[0] + MERSENNE for r in rows]:
        if serial not in revoked:
            assert index.check(serial) is None, serial


def test_a_bucket_without_a_pilot_makes_the_table_roomier(monkeypatch: pytest.MonkeyPatch) -> None:
    # With pilot 0 alone, most tables have a bucket whose keys collide; the build must grow the
    # table until none does, and the index must still be exact.
    monkeypatch.setattr(crlindex, "MAX_PILOT", 0)
    rows = [(profiles.random_serial(), i, RevocationReason.SUPERSEDED.code) for i in range(40)]
    index = CrlIndex(build_index(rows))
    assert index.size > crlindex.HEADER.size + 64 + crlindex.SLOT_SIZE * 58  # grown past 40 / 0.7 slots
    assert all(index.check(s) == (datetime.fromtimestamp(i, UTC), RevocationReason.SUPERSEDED) for s, i, _ in rows)
    assert index.check(rows[0][0] + 1) is None


def test_an_empty_crl_gives_an_index_that_answers_no() -> None:
    index = CrlIndex(build_index([]))
    assert index.count == 0 and index.check(1) is None and index.check(profiles.random_serial()) is None


def test_a_large_index_stays_within_its_memory_bound() -> None:
    count = 50_000
    data = build_index((profiles.random_serial(), 0, 1) for _ in range(count))
    # 32-byte slots at most 70 % full, a 2-byte pilot per 2.5 entries: about 48 bytes an entry,
    # which keeps 1,000,000 entries under 64 MiB.
    assert len(data) <= 48 * count + 4096
    assert len(data) * 1_000_000 / count <= 64 * 2**20


def test_serials_longer_than_twenty_octets_are_refused() -> None:
    with pytest.raises(errors.MalformedInput, match="longer than 20 octets"):
        build_index([(1 << 200, 0, 0)])


def _installed(tmp_path: Path, entries: list[RevokedEntry], number: int = 1) -> tuple[CrlCache, Path]:
    key, ca = CA
    cache = CrlCache(tmp_path / "cache")
    cache.update(build_crl(ca, key, entries, number, NOW, NOW + timedelta(days=1)), None, ca, NOW)
    index = next((tmp_path / "cache").glob("index-*.bin"))
    return cache, index


def test_an_index_from_another_interpreter_is_rebuilt_from_the_cached_crl(tmp_path: Path) -> None:
    entries = [RevokedEntry(profiles.random_serial(), NOW, RevocationReason.KEY_COMPROMISE) for _ in range(200)]
    _, index_path = _installed(tmp_path, entries)
    data = bytearray(index_path.read_bytes())
    data[8 + 5 * 8 + 1] ^= 0xFF  # the recorded Python minor version (after magic and five counts)
    index_path.write_bytes(bytes(data))
    with pytest.raises(IndexOutdated):
        CrlIndex(bytes(data))
    cache = CrlCache(tmp_path / "cache")
    assert cache.check(entries[42].serial) == (NOW, RevocationReason.KEY_COMPROMISE)
    assert cache.check(entries[42].serial + 1) is None
    assert CrlIndex.open(index_path).count == 200  # rebuilt in place, current again


@pytest.mark.parametrize("damage", ["truncate", "magic", "empty", "missing"])
def test_a_damaged_index_is_rebuilt_and_a_damaged_cache_says_so(tmp_path: Path, damage: str) -> None:
    entries = [RevokedEntry(profiles.random_serial(), NOW, RevocationReason.SUPERSEDED) for _ in range(30)]
    _, index_path = _installed(tmp_path, entries)
    data = index_path.read_bytes()
    if damage == "truncate":
        index_path.write_bytes(data[:-7])
    elif damage == "magic":
        index_path.write_bytes(b"HKCRLIX1" + data[len(MAGIC) :])
    elif damage == "empty":
        index_path.write_bytes(b"")
    else:
        index_path.unlink()
    assert CrlCache(tmp_path / "cache").check(entries[3].serial) is not None
    index_path.unlink()
    next((tmp_path / "cache").glob("full-*.crl")).write_bytes(b"not a crl")
    with pytest.raises(errors.MalformedInput, match="damaged CRL cache"):
        CrlCache(tmp_path / "cache").check(entries[3].serial)


def test_a_new_delta_leaves_the_index_in_place_and_overlays_it(tmp_path: Path) -> None:
    key, ca = CA
    base = [RevokedEntry(profiles.random_serial(), NOW, RevocationReason.CERTIFICATE_HOLD) for _ in range(500)]
    cache, index_path = _installed(tmp_path, base, number=10)
    inode = index_path.stat().st_ino
    full = build_crl(ca, key, base, 10, NOW, NOW + timedelta(days=1))
    new = profiles.random_serial()
    later = NOW + timedelta(hours=3)
    delta = build_crl(
        ca,
        key,
        [
            RevokedEntry(base[0].serial, later, RevocationReason.REMOVE_FROM_CRL),
            RevokedEntry(new, later, RevocationReason.KEY_COMPROMISE),
        ],
        11,
        later,
        later + timedelta(hours=6),
        delta_of=10,
    )
    status = cache.update(full, delta, ca, later)
    assert index_path.stat().st_ino == inode  # the base's index was not rebuilt for a delta
    assert status.entries == 500 and status.delta_number == 11
    for reader in (cache, CrlCache(tmp_path / "cache")):
        assert reader.check(base[0].serial) is None  # released from hold by the delta
        assert reader.check(base[1].serial) == (NOW, RevocationReason.CERTIFICATE_HOLD)
        assert reader.check(new) == (later, RevocationReason.KEY_COMPROMISE)
    delta2 = build_crl(
        ca,
        key,
        [RevokedEntry(new, later, RevocationReason.KEY_COMPROMISE)],
        12,
        later,
        later + timedelta(hours=6),
        delta_of=10,
    )
    cache.update(full, delta2, ca, later)
    names = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert names == [".update.lock", "delta-12.crl", "full-10.crl", "index-10.bin", "meta.json"]
    assert CrlCache(tmp_path / "cache").check(base[0].serial) is not None  # delta 12 no longer releases it


utc_times = st.datetimes(min_value=datetime(1950, 1, 1), max_value=datetime(2049, 12, 31, 23, 59, 59))
any_times = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))


@settings(max_examples=300, deadline=None)
@given(when=st.one_of(utc_times, any_times))
def test_time_decoder_inverts_the_encoder(when: datetime) -> None:
    when = when.replace(microsecond=0, tzinfo=UTC)
    encoded = der_time(when)
    assert encoded[0] == (UTC_TIME if 1950 <= when.year < 2050 else GENERALIZED_TIME)
    assert time_seconds(encoded[0], encoded[2:]) == int(when.timestamp())


@settings(max_examples=300, deadline=None)
@given(
    when=st.one_of(utc_times, any_times),
    offset_minutes=st.sampled_from([0, 0, 60, -330, 14 * 60]),
    micro=st.integers(0, 999_999),
)
def test_der_time_of_the_stored_iso_text_matches_der_time(when: datetime, offset_minutes: int, micro: int) -> None:
    zone = timezone(timedelta(minutes=offset_minutes))
    when = when.replace(microsecond=micro, tzinfo=UTC)
    try:
        local = when.astimezone(zone)
    except OverflowError:
        return
    assert der_time_of_iso(local.isoformat()) == der_time(when)
    assert der_time_of_iso(local.replace(microsecond=0).isoformat()) == der_time(when)


@settings(max_examples=300, deadline=None)
@given(
    tag=st.sampled_from([UTC_TIME, GENERALIZED_TIME]),
    raw=st.one_of(st.binary(max_size=16), st.text("0123456789Z+-. ", max_size=16).map(str.encode)),
)
def test_time_decoder_takes_only_rfc5280_forms(tag: int, raw: bytes) -> None:
    try:
        seconds = time_seconds(tag, raw)
    except errors.MalformedInput:
        return
    assert raw.endswith(b"Z") and len(raw) == (13 if tag == UTC_TIME else 15)
    form = "%y%m%d%H%M%SZ" if tag == UTC_TIME else "%Y%m%d%H%M%SZ"
    parsed = datetime.strptime(raw.decode(), form).replace(tzinfo=UTC)
    if tag == UTC_TIME and parsed.year >= 2050:  # strptime's pivot is 1969, RFC 5280's 1950
        parsed = parsed.replace(year=parsed.year - 100)
    assert seconds == int(parsed.timestamp())


_SAMPLE = build_crl(
    CA[1],
    CA[0],
    [RevokedEntry(profiles.random_serial(), NOW - timedelta(days=i), r) for i, r in enumerate(REASONS * 3)],
    3,
    NOW,
    NOW + timedelta(days=1),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(st.tuples(st.integers(0, len(_SAMPLE) - 1), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.integers(0, len(_SAMPLE)),
)
def test_the_crl_parser_refuses_damage_with_malformed_input_only(edits, cut) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(_SAMPLE)
    for at, value in edits:
        data[at] = value
    try:
        crl = parse_crl(bytes(data[:cut] if cut < len(_SAMPLE) // 2 else data))
        rows = list(crl.revocations())
    except errors.MalformedInput:
        return
    for serial, seconds, code in rows:
        assert RevocationReason.from_code(code) in RevocationReason and isinstance(serial, int)
        assert isinstance(seconds, int)


def test_concurrent_updaters_leave_one_consistent_cache(tmp_path: Path) -> None:
    import multiprocessing

    key, ca = CA
    entries = [RevokedEntry(profiles.random_serial(), NOW, RevocationReason.KEY_COMPROMISE) for _ in range(3000)]
    crls = [build_crl(ca, key, entries[: 1000 * (n + 1)], n + 1, NOW, NOW + timedelta(days=1)) for n in range(3)]
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_update_quietly, args=(tmp_path / "cache", crls[n % 3], ca)) for n in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0] * 6
    cache = CrlCache(tmp_path / "cache")
    status = cache.status(NOW)
    assert status.full_number == 3 and status.entries == 3000  # the newest won, whatever the order
    assert all(cache.check(e.serial) is not None for e in entries[::97])
    assert sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")) == [
        "full-3.crl",
        "index-3.bin",
        "meta.json",
    ]


def _update_quietly(directory: Path, der: bytes, ca: x509.Certificate) -> None:
    with contextlib.suppress(errors.ValidationFailed):  # an older CRL than the one another process installed
        CrlCache(directory).update(der, None, ca, NOW)


EARLIER_LAYOUT = {
    "full_number": 4,
    "delta_number": None,
    "entries": 1,
    "index": "index-4-0.bin",
    "this_update": NOW.isoformat(),
    "next_update": NOW.isoformat(),
}


@pytest.mark.parametrize(
    "meta",
    [
        json.dumps(EARLIER_LAYOUT),
        json.dumps({**EARLIER_LAYOUT, "full": "full-4.crl", "full_number": "four"}),
        json.dumps({**EARLIER_LAYOUT, "full": "full-4.crl", "next_update": "tomorrow"}),
        '{"full": ',
        "[]",
    ],
    ids=["earlier layout", "wrong type", "bad time", "truncated", "not an object"],
)
def test_a_cache_it_cannot_read_counts_as_empty_and_the_next_update_replaces_it(tmp_path: Path, meta: str) -> None:
    key, ca = CA
    directory = tmp_path / "cache"
    directory.mkdir()
    (directory / "meta.json").write_text(meta)
    (directory / "index-4-0.bin").write_bytes(b"HKCRLIX2" + bytes(100))
    (directory / "full.crl").write_bytes(b"old")
    cache = CrlCache(directory)
    assert cache.status(NOW).full_number is None and cache.status(NOW).stale
    with pytest.raises(errors.Unreachable, match="crl fetch"):
        cache.check(1)
    serial = profiles.random_serial()
    cache.update(build_crl(ca, key, [RevokedEntry(serial, NOW)], 2, NOW, NOW + timedelta(days=1)), None, ca, NOW)
    assert cache.check(serial) == (NOW, RevocationReason.UNSPECIFIED)
    assert sorted(p.name for p in directory.iterdir()) == [".update.lock", "full-2.crl", "index-2.bin", "meta.json"]


def test_the_index_record_layouts_have_their_fixed_sizes() -> None:
    # the file format: 32-octet slots (and overflow records), a 64-octet header
    assert crlindex.SLOT_SIZE == 32 and crlindex.OVERFLOW.size == 32 and crlindex.HEADER.size == 64
