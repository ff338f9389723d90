"""DER encoding primitives, for the encoders that build large structures directly."""

from __future__ import annotations

from datetime import UTC, date, datetime

from hsmkm import errors

UTC_TIME = 0x17
GENERALIZED_TIME = 0x18
_EPOCH_DAY = date(1970, 1, 1).toordinal()


def der_length(n: int) -> bytes:
    """The length octets of a definite length (X.690 §8.1.3: short form below 128)."""
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + der_length(len(value)) + value


def seq(*parts: bytes) -> bytes:
    return tlv(0x30, b"".join(parts))


def read_tlv(data: bytes | memoryview, pos: int, what: str = "DER") -> tuple[int, int, int]:
    """(tag, start of value, end of value) of the definite-length TLV at ``pos`` (one-octet
    tags, lengths up to four octets); ``what`` names the structure in the MalformedInput."""
    try:
        tag = data[pos]
        first = data[pos + 1]
    except IndexError:
        raise errors.MalformedInput(f"{what}: truncated") from None
    pos += 2
    if first < 0x80:
        length = first
    else:
        n = first & 0x7F
        if n == 0 or n > 4 or pos + n > len(data):
            raise errors.MalformedInput(f"{what}: bad length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    end = pos + length
    if end > len(data):
        raise errors.MalformedInput(f"{what}: truncated")
    return tag, pos, end


def der_int(value: int) -> bytes:
    return tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))


def der_oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def der_time(when: datetime) -> bytes:
    """UTCTime for 1950 through 2049, GeneralizedTime otherwise (RFC 5280 §4.1.2.5)."""
    when = when.astimezone(UTC)
    if 1950 <= when.year < 2050:
        return tlv(UTC_TIME, when.strftime("%y%m%d%H%M%SZ").encode())
    return tlv(GENERALIZED_TIME, f"{when.year:04d}{when.strftime('%m%d%H%M%S')}Z".encode())


def der_time_of_iso(text: str) -> bytes:
    """der_time of an ISO 8601 text; UTC texts of 1950 through 2049 (what the KM stores) are
    rearranged directly, which is several times quicker than parsing and formatting."""
    if len(text) in (25, 32) and text.endswith("+00:00") and "1950" <= text[:4] < "2050" and text[10] == "T":
        digits = text[2:4] + text[5:7] + text[8:10] + text[11:13] + text[14:16] + text[17:19]
        if digits.isdigit() and text[4] + text[7] + text[13] + text[16] == "--::":
            return b"\x17\x0d" + digits.encode() + b"Z"
    return der_time(datetime.fromisoformat(text))


def time_seconds(tag: int, raw: bytes, days: dict[bytes, int] | None = None) -> int:
    """Seconds since 1970 of a DER UTCTime or GeneralizedTime in RFC 5280's forms
    (YYMMDDHHMMSSZ, YYYYMMDDHHMMSSZ); ``days`` memoises the date part across many calls."""
    size = len(raw)
    if (
        not ((size == 13 and tag == UTC_TIME) or (size == 15 and tag == GENERALIZED_TIME))
        or raw[-1:] != b"Z"
        or not raw[:-1].isdigit()
    ):  # bytes.isdigit: ASCII digits only
        raise errors.MalformedInput(f"bad time {bytes(raw)!r}")
    cut = size - 7
    day_part = raw[:cut]
    day = days.get(day_part) if days is not None else None
    if day is None:
        year = int(day_part[:-4])
        if cut == 6:
            year += 1900 if year >= 50 else 2000  # RFC 5280 §4.1.2.5.1
        try:
            day = date(year, int(day_part[-4:-2]), int(day_part[-2:])).toordinal() - _EPOCH_DAY
        except ValueError:
            raise errors.MalformedInput(f"bad time {bytes(raw)!r}") from None
        if days is not None:
            days[day_part] = day
    hours, rest = divmod(int(raw[cut:-1]), 10000)
    minutes, seconds = divmod(rest, 100)
    if hours > 23 or minutes > 59 or seconds > 59:
        raise errors.MalformedInput(f"bad time {bytes(raw)!r}")
    return day * 86400 + hours * 3600 + minutes * 60 + seconds
