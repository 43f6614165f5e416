"""Dovecot 2.3 (v2) reader on synthetic records, and the LF to CRLF converter."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiodbox.dbox import (
    Corrupted,
    LfToCrlf,
    NeedBytes,
    V2FileHeader,
    V2Metadata,
    V2Record,
    V2Scan,
    crlf_size,
    lf_to_crlf,
    parse_v2_file_header,
    read_v2_record,
    scan_v2,
)

GUID = "1963971fbe91096b5d55000083ecc375"


def v2_record(body: bytes, meta: bytes = b"", size: int | None = None) -> bytes:
    """One v2 record as Dovecot 2.3 writes it (30-byte header, body, metadata)."""
    n = len(body) if size is None else size
    header = b"\x01\x02N" + b" " * 10 + b"%016X" % n + b"\n"
    assert len(header) == 30
    if not meta:
        meta = b"R6593d090\nV%x\nG%s\nBINBOX\n" % (crlf_size(body), GUID.encode())
    return header + body + b"\n\x01\x03\n" + meta + b"\n"


HEADER = b"2 M1e C6b0991be\n"


def _reference_crlf(data: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


# ---------------------------------------------------------------------------- LF to CRLF


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\n\n", b"xyz"])).map(b"".join),
    cuts=st.lists(st.integers(0, 64), max_size=8),
)
def test_lf_to_crlf_any_chunking_matches_the_reference(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    convert = LfToCrlf()
    out = b"".join(convert.feed(data[a:b]) for a, b in itertools.pairwise(bounds))
    expected = _reference_crlf(data)
    assert out == expected
    assert lf_to_crlf(data) == expected
    assert convert.size == len(expected) == crlf_size(data)


def test_lf_to_crlf_keeps_a_crlf_split_across_chunks() -> None:
    convert = LfToCrlf()
    assert convert.feed(b"a\r") == b"a\r"
    assert convert.feed(b"") == b""
    assert convert.feed(b"\nb\n") == b"\nb\r\n"
    assert convert.feed(b"\n") == b"\r\n"
    assert convert.feed(b"\r\r\n") == b"\r\r\n"


# --------------------------------------------------------------------------- file header


def test_v2_file_header() -> None:
    assert parse_v2_file_header(HEADER) == V2FileHeader(
        msg_header_size=30, ctime=0x6B0991BE, length=len(HEADER)
    )
    assert parse_v2_file_header(b"2 C1 X9 M1E\n") == V2FileHeader(30, 1, 12)
    assert isinstance(parse_v2_file_header(b"2 M1e"), NeedBytes)
    for bad in (b"3 M1e\n", b"2 C1\n", b"2 M1d\n", b"2 Mzz\n", b"2 M1e Cq\n", b"22 M1e\n"):
        assert isinstance(parse_v2_file_header(bad, eof=True), Corrupted), bad


# -------------------------------------------------------------------------------- record


def test_v2_record_fields_and_offsets() -> None:
    body = b"Subject: x\n\nhello\n"
    rec = v2_record(body)
    record = read_v2_record(rec, offset=16)
    assert isinstance(record, V2Record)
    assert record.offset == 16
    assert record.body_offset == 46
    assert record.body_size == len(body)
    assert record.length == len(rec)
    assert record.metadata == V2Metadata(
        guid=GUID, received=0x6593D090, virtual_size=crlf_size(body), orig_mailbox="INBOX"
    )


def test_v2_metadata_first_value_wins_unknown_keys_ignored_space_line_ends() -> None:
    meta = b"GAAA\nGBBB\nQunknown\nP uidl\nO12\nZ1F\n"
    rec = v2_record(b"x", meta=meta)[:-1] + b"    \n"
    record = read_v2_record(rec, eof=True)
    assert isinstance(record, V2Record)
    assert record.metadata == V2Metadata(
        guid="AAA", pop3_uidl=" uidl", pop3_order=12, physical_size=0x1F
    )
    assert record.end == len(rec)


def test_v2_record_uppercase_and_lowercase_hex_size() -> None:
    rec = v2_record(b"x" * 0xF4)
    assert b"00000000000000F4" in rec
    assert isinstance(read_v2_record(rec), V2Record)
    lower = rec.replace(b"F4\n", b"f4\n", 1)
    assert isinstance(read_v2_record(lower), V2Record)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda r: b"\x01\x03" + r[2:], "magic"),
        (lambda r: r[:2] + b"M" + r[3:], "magic"),
        (lambda r: r[:29] + b" " + r[30:], "LF"),
        (lambda r: r[:13] + b"000000000000000G" + r[29:], "size"),
        (lambda r: r.replace(b"\n\x01\x03\n", b"\n\x01\x05\n"), "metadata block"),
        (lambda r: r[:-1], "end-of-metadata"),
        (lambda r: r[:20], "truncated"),
        (lambda r: r[:33], "truncated"),
        (lambda r: r.replace(b"\nR6593d090", b"\nRxyz"), "R is not"),
        (lambda r: r.replace(b"\nV", b"\nVq"), "V is not"),
        (lambda r: r.replace(b"BINBOX", b"Oabc"), "O is not"),
    ],
)
def test_v2_damage_is_corrupted(damage: object, reason: str) -> None:
    rec = damage(v2_record(b"hello\n"))  # type: ignore[operator]
    result = read_v2_record(rec, eof=True)
    assert isinstance(result, Corrupted)
    assert reason in result.reason


def test_v2_need_bytes_grows_until_complete() -> None:
    rec = v2_record(b"line\n" * 1000)
    have = 5
    while True:
        result = read_v2_record(rec[:have])
        if not isinstance(result, NeedBytes):
            break
        assert result.size > have
        have = result.size
    assert isinstance(result, V2Record)
    assert result.end == len(rec)


# ---------------------------------------------------------------------------------- scan


def test_v2_scan_resynchronises_after_a_damaged_record() -> None:
    records = [v2_record(b"message %d\n" % i) for i in range(5)]
    file = HEADER + b"".join(records)
    starts = [len(HEADER) + sum(len(r) for r in records[:i]) for i in range(5)]
    damaged = bytearray(file)
    damaged[starts[2] + 13] = ord("x")  # size field of record 2
    scan = scan_v2(bytes(damaged))
    assert isinstance(scan, V2Scan)
    assert [r.offset for r in scan.records] == [starts[0], starts[1], starts[3], starts[4]]
    assert len(scan.damaged) == 1
    assert (scan.damaged[0].start, scan.damaged[0].end) == (starts[2], starts[3])
    assert "size" in scan.damaged[0].reason


def test_v2_scan_checks_virtual_size() -> None:
    rec = v2_record(b"a\nb\n", meta=b"G%s\nV5\n" % GUID.encode())
    scan = scan_v2(HEADER + rec)
    assert scan.records == ()
    assert "V" in scan.damaged[0].reason


def test_v2_scan_with_a_damaged_file_header() -> None:
    rec = v2_record(b"x\n")
    scan = scan_v2(b"2 Mzz\n" + rec)
    assert scan.header is None
    assert scan.header_problem is not None
    assert [r.offset for r in scan.records] == [6]
    assert [(d.start, d.end) for d in scan.damaged] == [(0, 6)]
