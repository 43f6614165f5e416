"""Fuzz the dbox codec: any bytes either parse or come back Corrupted (or NeedBytes).

No exception may escape a reader, the repair scan or the dump for any input bytes; a
NeedBytes must ask for more than it was given; scans must tile the file exactly.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiodbox.dbox import (
    Corrupted,
    DumpEntry,
    FileHeader,
    LfToCrlf,
    Metadata,
    NeedBytes,
    Record,
    Trailer,
    V2FileHeader,
    V2Record,
    V2Scan,
    V3Scan,
    dump_file,
    encode_file_header,
    encode_record,
    parse_file_header,
    parse_metadata,
    parse_v2_file_header,
    read_record,
    read_sdbox_tail,
    read_trailer,
    read_v2_record,
    scan_file,
)

SEP = b"0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def _v3_file() -> bytes:
    out = encode_file_header(SEP, 0x6B0991BE)
    for i, body in enumerate([b"Subject: a\r\n\r\nx\r\n", b"", b"\x01\x02\n\x01\x03\x01\x04" * 3]):
        out += encode_record(SEP, body, guid=f"{i:032x}", received=i, orig_mailbox="INBOX")
    return out


def _v2_record(body: bytes) -> bytes:
    meta = b"R6593d090\nV%x\nG%032x\nBINBOX\n" % (len(body) + body.count(b"\n"), len(body))
    return b"\x01\x02N" + b" " * 10 + b"%016X\n" % len(body) + body + b"\n\x01\x03\n" + meta + b"\n"


V3_FILE = _v3_file()
V2_FILE = (
    b"2 M1e C6b0991be\n" + _v2_record(b"Subject: a\n\nx\n") + _v2_record(b"") + _v2_record(b"y")
)


@st.composite
def _mutated(draw: st.DrawFn, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=40))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 40))]
        else:
            del data[pos:]
    return bytes(data)


INPUTS = st.one_of(
    st.binary(max_size=600),
    st.binary(max_size=300).map(lambda b: b"3 S" + SEP + b" C1\n" + b),
    st.binary(max_size=300).map(lambda b: b"2 M1e C1\n" + b),
    _mutated(V3_FILE),
    _mutated(V2_FILE),
)

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _need_or(result: object, allowed: tuple[type, ...], given_len: int, eof: bool) -> None:
    assert isinstance(result, (*allowed, NeedBytes, Corrupted)), result
    if isinstance(result, NeedBytes):
        assert not eof, "NeedBytes after EOF would loop forever"
        assert result.size > given_len, "NeedBytes must ask for more than it was given"
    if isinstance(result, Corrupted):
        assert isinstance(result.reason, str) and result.reason


@FUZZ
@given(data=INPUTS, eof=st.booleans(), size=st.integers(0, 700))
def test_readers_never_raise(data: bytes, eof: bool, size: int) -> None:
    _need_or(parse_file_header(data, eof=eof), (FileHeader,), len(data), eof)
    _need_or(parse_v2_file_header(data, eof=eof), (V2FileHeader,), len(data), eof)
    assert isinstance(parse_metadata(data), (Metadata, Corrupted))
    _need_or(read_trailer(data, SEP, eof=eof), (Trailer,), len(data), eof)
    for start in {0, 16, data.find(b"\x01\x02")}:
        if start < 0:
            continue
        window = data[start:]
        rec = read_record(window, SEP, size, offset=start, eof=eof)
        _need_or(rec, (Record,), len(window), eof)
        if isinstance(rec, Record):
            assert rec.offset == start and rec.body_offset == start + 3
            assert rec.body_offset + rec.body_size < rec.end <= start + len(window)
        v2 = read_v2_record(window, offset=start, eof=eof)
        _need_or(v2, (V2Record,), len(window), eof)
        if isinstance(v2, V2Record):
            assert v2.offset < v2.body_offset <= v2.body_offset + v2.body_size < v2.end
    convert = LfToCrlf()
    assert len(convert.feed(data)) >= len(data)


@FUZZ
@given(data=INPUTS, tail=st.integers(0, 800))
def test_sdbox_tail_never_raises(data: bytes, tail: int) -> None:
    tail = min(tail, len(data))
    result = read_sdbox_tail(data[len(data) - tail :], len(data))
    _need_or(result, (Record,), tail, eof=tail == len(data))
    if isinstance(result, Record):
        assert 0 < result.offset < result.body_offset <= result.end == len(data)


@FUZZ
@given(data=INPUTS)
def test_scan_and_dump_never_raise_and_tile_the_file(data: bytes) -> None:
    scan = scan_file(data)
    assert isinstance(scan, (V3Scan, V2Scan, Corrupted))
    if not isinstance(scan, Corrupted):
        spans = [(0, scan.header.length)] if scan.header is not None else []
        spans += [(r.offset, r.end) for r in scan.records]
        spans += [(d.start, d.end) for d in scan.damaged]
        spans.sort()
        pos = 0
        for start, end in spans:
            assert start == pos < end
            pos = end
        assert pos == len(data)
    entries = dump_file(data)
    assert isinstance(entries, (list, Corrupted))
    if isinstance(entries, list):
        for entry in entries:
            assert isinstance(entry, DumpEntry)
            assert entry.status in ("ok", "corrupted")
            assert entry.format in ("v2", "v3")
            assert (entry.reason is None) == (entry.status == "ok")
            assert set(entry.to_json()) >= {"offset", "size", "guid", "received", "sha256"}


def test_unmutated_fuzz_seeds_parse() -> None:
    for data in (V3_FILE, V2_FILE):
        scan = scan_file(data)
        assert isinstance(scan, (V3Scan, V2Scan))
        assert len(scan.records) == 3 and scan.damaged == ()
