"""v3 codec: file header, record writer, readers at a known offset and from the tail."""

from __future__ import annotations

import hashlib
import itertools
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiodbox.dbox import (
    Corrupted,
    FileHeader,
    Metadata,
    NeedBytes,
    Record,
    RecordWriter,
    Trailer,
    V3Scan,
    body_digest,
    check_body,
    codec,
    dump_file,
    encode_file_header,
    encode_metadata,
    encode_record,
    new_separator,
    parse_file_header,
    parse_metadata,
    read_record,
    read_sdbox_tail,
    read_trailer,
    scan_v3,
)
from aiodbox.dbox.file_read import (
    DboxCorruptedError,
    _BytesHandle,
    mdbox_body_from_span,
    mdbox_message_from_span,
    memory_body_stream,
    sdbox_body_from_bytes,
    sdbox_message_from_bytes,
)
from aiodbox.dbox.format import (
    END_LEN,
    MAX_METADATA,
    SDBOX_TAIL_READ,
    TRAILER_LEN,
    is_separator,
)

SEP = b"0123456789abcdef0123456789abcdef"
GUID = "fedcba9876543210fedcba9876543210"
CTIME = 0x6B0991BE


def pread_record(file: bytes, sep: bytes, offset: int, body_size: int) -> Record | Corrupted:
    """Read a record the way a caller with non-blocking preads would."""
    want = body_size + 3 + TRAILER_LEN + 512
    for _ in range(30):
        window = file[offset : offset + want]
        result = read_record(window, sep, body_size, offset=offset, eof=offset + want >= len(file))
        if not isinstance(result, NeedBytes):
            return result
        assert result.size > len(window), "NeedBytes must ask for more than it was given"
        want = result.size
    raise AssertionError("read_record never finished")


def pread_tail(file: bytes, header: FileHeader | None = None) -> Record | Corrupted:
    """Read an sdbox file from the tail, growing the read like a storage would."""
    have = min(len(file), SDBOX_TAIL_READ)
    for _ in range(30):
        result = read_sdbox_tail(file[len(file) - have :], len(file), header=header)
        if not isinstance(result, NeedBytes):
            return result
        assert have < result.size <= len(file)
        have = result.size
    raise AssertionError("read_sdbox_tail never finished")


def sdbox_file(body: bytes, **meta: object) -> bytes:
    return encode_file_header(SEP, CTIME) + encode_record(SEP, body, guid=GUID, **meta)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- file header


def test_file_header_round_trip() -> None:
    raw = encode_file_header(SEP, CTIME)
    assert raw == b"3 S" + SEP + b" C6b0991be\n"
    parsed = parse_file_header(raw + b"\x01\x02\n...")
    assert parsed == FileHeader(sep=SEP, ctime=CTIME, length=len(raw))


def test_file_header_needs_more_bytes_then_parses() -> None:
    raw = encode_file_header(SEP, CTIME)
    short = parse_file_header(raw[:10])
    assert isinstance(short, NeedBytes) and short.size > 10
    assert isinstance(parse_file_header(raw[: short.size]), FileHeader)
    assert isinstance(parse_file_header(raw[:10], eof=True), Corrupted)


@pytest.mark.parametrize(
    "raw",
    [
        b"2 M1e C6b0991be\n",
        b"3 S" + SEP.upper() + b" C1\n",
        b"3 S" + SEP[:-1] + b" C1\n",
        b"3 S" + SEP + b" C\n",
        b"3 S" + SEP + b" C0x1\n",
        b"3 S" + SEP + b" X1\n",
        b"3 S" + SEP + b" C" + b"1" * 40 + b"\n",
    ],
)
def test_bad_file_headers_are_corrupted(raw: bytes) -> None:
    assert isinstance(parse_file_header(raw, eof=True), Corrupted)


def test_new_separator_is_random_lowercase_hex() -> None:
    seps = {new_separator() for _ in range(50)}
    assert len(seps) == 50
    assert all(is_separator(s) for s in seps)


def test_bad_header_arguments_raise() -> None:
    with pytest.raises(ValueError):
        encode_file_header(SEP.upper(), 1)
    with pytest.raises(ValueError):
        encode_file_header(SEP, -1)


# -------------------------------------------------------------------------------- writer


def test_writer_output_is_the_documented_record() -> None:
    w = RecordWriter(SEP, guid=GUID, received=0x65A, extra=[("X", "x-value")])
    out = w.begin() + w.feed(b"Subject: hi\r\n\r\nbody\r\n") + w.feed(b"") + w.finish()
    body = b"Subject: hi\r\n\r\nbody\r\n"
    lines = (
        b"Z%x\n" % len(body)
        + b"G"
        + GUID.encode()
        + b"\nR65a\nH"
        + hashlib.blake2b(body, digest_size=32).hexdigest().encode()
        + b"\nXx-value\n"
    )
    check = hashlib.blake2b(lines, digest_size=8).hexdigest().encode()
    expected = (
        b"\x01\x02\n"
        + body
        + b"\n\x01\x03"
        + SEP
        + b"\n"
        + lines
        + b"K"
        + check
        + b"\n\x01\x04"
        + SEP
        + b"\n"
    )
    assert out == expected
    assert w.size == len(body)
    assert w.metadata.digest == body_digest(body)
    assert out == encode_record(SEP, body, guid=GUID, received=0x65A, extra=[("X", "x-value")])


@pytest.mark.parametrize("size", [2046, 2047, 2048, 4095, 4096, 16 * 1024, 16 * 1024 + 1, 70_000])
def test_digest_of_chunks_hashed_in_pieces_or_whole_is_the_bodys(size: int) -> None:
    # Chunks up to 16 KiB are hashed in pieces below 2048 bytes (which keep the
    # interpreter lock), larger ones in one call: the digest is the same either way.
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    w = RecordWriter(SEP, guid=GUID)
    w.begin()
    assert w.feed(body) is body
    w.feed(memoryview(body)[: size // 3])
    w.finish()
    assert w.metadata.digest == body_digest(body + body[: size // 3])


def test_writer_passes_bytes_chunks_through_without_copying() -> None:
    w = RecordWriter(SEP, guid=GUID)
    w.begin()
    chunk = b"x" * 10_000
    assert w.feed(chunk) is chunk
    assert w.feed(bytearray(b"ab")) == b"ab"
    assert w.feed(memoryview(b"cd")) == b"cd"
    w.finish()
    assert w.metadata.size == 10_004


def test_writer_call_order_is_enforced() -> None:
    w = RecordWriter(SEP, guid=GUID)
    with pytest.raises(RuntimeError):
        w.feed(b"x")
    with pytest.raises(RuntimeError):
        w.finish()
    with pytest.raises(RuntimeError):
        _ = w.metadata
    w.begin()
    with pytest.raises(RuntimeError):
        w.begin()
    w.finish()
    with pytest.raises(RuntimeError):
        w.feed(b"x")
    with pytest.raises(RuntimeError):
        w.finish()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"guid": GUID.upper()},
        {"guid": GUID[:-1]},
        {"guid": GUID, "received": -1},
        {"guid": GUID, "orig_mailbox": "IN\nBOX"},
        {"guid": GUID, "pop3_uidl": "a\nb"},
        {"guid": GUID, "pop3_order": -3},
        {"guid": GUID, "extra": [("Z", "1")]},
        {"guid": GUID, "extra": [("K", "1")]},
        {"guid": GUID, "extra": [("1", "1")]},
        {"guid": GUID, "extra": [("XY", "1")]},
        {"guid": GUID, "extra": [("X", "a\nb")]},
        {"guid": GUID, "orig_mailbox": "lone surrogate \ud800"},
    ],
)
def test_writer_rejects_values_it_cannot_write(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RecordWriter(SEP, **kwargs)  # type: ignore[arg-type]


def test_writer_rejects_a_bad_separator() -> None:
    with pytest.raises(ValueError):
        RecordWriter(SEP.upper(), guid=GUID)


def test_writer_without_digest_omits_h() -> None:
    record = encode_record(SEP, b"body", guid=GUID, digest=False)
    assert b"\nH" not in record
    found = read_record(record, SEP, 4, eof=True)
    assert isinstance(found, Record)
    assert found.metadata.digest is None
    assert check_body(found.metadata, b"body") is None
    assert isinstance(check_body(found.metadata, b"bod"), Corrupted)


# ------------------------------------------------------------------------------ metadata


def test_all_known_keys_and_unknown_keys_survive_a_copy() -> None:
    extra = (("X", "first"), ("a", "lower-case key"), ("X", "repeated"), ("Y", "\udce9 raw"))
    rec = encode_record(
        SEP,
        b"m",
        guid=GUID,
        received=1_700_000_000,
        orig_mailbox="Archive/2024 \u00e9",
        pop3_uidl="uidl-1",
        pop3_order=42,
        extra=extra,
    )
    first = read_record(rec, SEP, 1, eof=True)
    assert isinstance(first, Record)
    meta = first.metadata
    assert meta == Metadata(
        size=1,
        guid=GUID,
        received=1_700_000_000,
        digest=body_digest(b"m"),
        orig_mailbox="Archive/2024 \u00e9",
        pop3_uidl="uidl-1",
        pop3_order=42,
        extra=extra,
    )
    other_sep = new_separator()
    copied = encode_record(
        other_sep,
        b"m",
        guid=meta.guid,
        received=meta.received,
        orig_mailbox=meta.orig_mailbox,
        pop3_uidl=meta.pop3_uidl,
        pop3_order=meta.pop3_order,
        extra=meta.extra,
    )
    second = read_record(copied, other_sep, 1, eof=True)
    assert isinstance(second, Record)
    assert second.metadata == meta
    assert encode_metadata(meta) in rec and encode_metadata(meta) in copied


def _lines(body: bytes) -> bytes:
    return body + b"K" + hashlib.blake2b(body, digest_size=8).hexdigest().encode() + b"\n"


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (b"Z1\nG" + GUID.encode() + b"\n", "K line"),
        (_lines(b"Z1\nG" + GUID.encode() + b"\n")[:-2] + b"0\n", "K does not match"),
        (_lines(b"Z1\nG" + GUID.encode() + b"\n") + b"X1\n", "K line"),
        (_lines(b"Z1\nZ1\nG" + GUID.encode() + b"\n"), "twice"),
        (_lines(b"G" + GUID.encode() + b"\n"), "no Z"),
        (_lines(b"Z1\n"), "no G"),
        (_lines(b"ZA\nG" + GUID.encode() + b"\n"), "Z is not"),
        (_lines(b"Z1\nG" + GUID.upper().encode() + b"\n"), "G is not"),
        (_lines(b"Z1\nG" + GUID.encode() + b"\nR-1\n"), "R is not"),
        (_lines(b"Z1\nG" + GUID.encode() + b"\nHab\n"), "H is not"),
        (_lines(b"Z1\nG" + GUID.encode() + b"\nO0x1\n"), "O is not"),
        (_lines(b"Z1\nG" + GUID.encode() + b"\n1x\n"), "letter key"),
        (_lines(b"Z1\nG" + GUID.encode() + b"\n\n"), "letter key"),
        (b"Z1", "LF"),
        (b"X" * (MAX_METADATA + 1), "longer"),
    ],
)
def test_bad_metadata_is_corrupted(block: bytes, reason: str) -> None:
    result = parse_metadata(block)
    assert isinstance(result, Corrupted)
    assert reason in result.reason


# ---------------------------------------------------------------- read at a known offset


def test_read_record_at_offset_in_an_mdbox_style_file() -> None:
    bodies = [b"first\r\n", b"", b"third body\r\n" * 100]
    file = encode_file_header(SEP, CTIME)
    offsets = []
    for i, body in enumerate(bodies):
        offsets.append(len(file))
        file += encode_record(SEP, body, guid=f"{i:032x}", received=i)
    for i, (offset, body) in enumerate(zip(offsets, bodies, strict=True)):
        record = pread_record(file, SEP, offset, len(body))
        assert isinstance(record, Record)
        assert record.offset == offset
        assert record.body_offset == offset + 3
        assert file[record.body_offset : record.body_offset + record.body_size] == body
        assert record.metadata.guid == f"{i:032x}"
        assert record.metadata.received == i
        assert check_body(record.metadata, body) is None
        next_offset = offsets[i + 1] if i + 1 < len(offsets) else len(file)
        assert record.end == next_offset


def test_read_record_reports_index_and_file_disagreement() -> None:
    file = encode_file_header(SEP, CTIME) + encode_record(SEP, b"hello", guid=GUID)
    offset = file.index(b"\x01\x02\n")
    assert isinstance(read_record(file[offset:], SEP, 4, eof=True), Corrupted)
    assert isinstance(read_record(file[offset:], SEP, 6, eof=True), Corrupted)
    assert isinstance(read_record(file[offset:], new_separator(), 5, eof=True), Corrupted)
    assert isinstance(read_record(file[offset + 1 :], SEP, 5, eof=True), Corrupted)
    assert isinstance(read_record(file[offset:-1], SEP, 5, eof=True), Corrupted)
    ok = read_record(file[offset:], SEP, 5, offset=offset, eof=True)
    assert isinstance(ok, Record) and ok.end == len(file)


def test_read_trailer_after_a_streamed_body() -> None:
    body = b"x" * 5000
    record = encode_record(SEP, body, guid=GUID, received=7)
    after = record[3 + len(body) :]
    assert isinstance(read_trailer(after[:10], SEP), NeedBytes)
    trailer = read_trailer(after, SEP, offset=1000, eof=True)
    assert isinstance(trailer, Trailer)
    assert trailer.metadata.size == 5000
    assert trailer.end == 1000 + len(after)
    assert isinstance(read_trailer(b"junk" + after, SEP, eof=True), Corrupted)


def test_metadata_longer_than_the_limit_is_corrupted_not_requested_forever() -> None:
    record = encode_record(SEP, b"x", guid=GUID, extra=[("X", "v" * (MAX_METADATA + 10))])
    result = pread_record(record, SEP, 0, 1)
    assert isinstance(result, Corrupted)


# ------------------------------------------------------------------------ sdbox from tail


def test_sdbox_tail_small_file_is_checked_whole() -> None:
    file = sdbox_file(b"Subject: x\r\n\r\nhi\r\n", received=5)
    assert len(file) < SDBOX_TAIL_READ
    record = read_sdbox_tail(file, len(file))
    assert isinstance(record, Record)
    header = parse_file_header(file)
    assert isinstance(header, FileHeader)
    assert record.offset == header.length
    assert record.body_offset == header.length + 3
    assert file[record.body_offset : record.body_offset + record.body_size].endswith(b"hi\r\n")
    assert record.end == len(file)


def test_sdbox_tail_large_body_one_read() -> None:
    body = b"line\r\n" * 100_000
    file = sdbox_file(body)
    tail = file[-SDBOX_TAIL_READ:]
    record = read_sdbox_tail(tail, len(file))
    assert isinstance(record, Record)
    assert record.body_size == len(body)
    assert file[record.body_offset : record.body_offset + record.body_size] == body
    header = parse_file_header(file[:64])
    assert isinstance(header, FileHeader)
    assert isinstance(read_sdbox_tail(tail, len(file), header=header), Record)
    wrong = FileHeader(sep=SEP, ctime=1, length=header.length + 1)
    assert isinstance(read_sdbox_tail(tail, len(file), header=wrong), Corrupted)
    other = FileHeader(sep=new_separator(), ctime=1, length=header.length)
    assert isinstance(read_sdbox_tail(tail, len(file), header=other), Corrupted)


def test_sdbox_tail_grows_when_metadata_is_long() -> None:
    body = b"b" * 10_000
    file = sdbox_file(body, orig_mailbox="M" * 3000)
    first = read_sdbox_tail(file[-SDBOX_TAIL_READ:], len(file))
    assert isinstance(first, NeedBytes) and first.size > SDBOX_TAIL_READ
    record = pread_tail(file)
    assert isinstance(record, Record)
    assert record.metadata.orig_mailbox == "M" * 3000
    assert record.body_size == len(body)


def test_sdbox_tail_asks_for_512_bytes_first() -> None:
    file = sdbox_file(b"z" * 2000)
    result = read_sdbox_tail(file[-40:], len(file))
    assert result == NeedBytes(SDBOX_TAIL_READ)


@pytest.mark.parametrize(
    "damage",
    [
        lambda f: f + b"\n",  # trailing garbage: no end marker at the end
        lambda f: f[:-1],  # truncated end marker
        lambda f: f.replace(b"\x01\x03", b"\x01\x05"),  # trailer gone
        lambda f: f.replace(b"\x01\x02\n", b"\x01\x02\r"),  # record start gone
        lambda f: f.replace(b"\nZ", b"\nQ"),  # Z gone (and K mismatch)
        lambda f: f[:3] + f[4:],  # header shortened: Z disagrees with the header
        lambda f: b"X" + f[1:],  # header not v3
    ],
)
def test_sdbox_tail_damage_is_corrupted(damage: object) -> None:
    file = damage(sdbox_file(b"hello\r\n"))  # type: ignore[operator]
    assert isinstance(pread_tail(file), Corrupted)


def test_sdbox_tail_too_short_file_is_corrupted() -> None:
    assert isinstance(read_sdbox_tail(b"", 0), Corrupted)
    assert isinstance(read_sdbox_tail(b"3 S", 3), Corrupted)
    with pytest.raises(ValueError):
        read_sdbox_tail(b"abc", 2)


# ------------------------------------------------------------------- round trip (hypothesis)

# File separators start with 8-f and fake ones in bodies with 0-7: a body never holds its
# own file's separator (DESIGN §4: it is random per file and never shown to clients).
_hex_sep = st.binary(min_size=16, max_size=16).map(lambda b: bytes([b[0] | 0x80]) + b[1:])
_file_sep = _hex_sep.map(lambda b: b.hex().encode())
_other_sep = _hex_sep.map(lambda b: bytes([b[0] & 0x7F]) + b[1:]).map(lambda b: b.hex().encode())
_guid = st.binary(min_size=16, max_size=16).map(lambda b: b.hex())
_fake_trailer = _other_sep.map(
    lambda s: (
        b"\n\x01\x03"
        + s
        + b"\nZ5\nG"
        + GUID.encode()
        + b"\nK0123456789abcdef\n\x01\x04"
        + s
        + b"\n"
    )
)
_fake_record = st.tuples(_other_sep, st.binary(max_size=20)).map(
    lambda t: encode_record(t[0], t[1], guid=GUID)
)
_tokens = st.sampled_from(
    [b"\x01\x02", b"\x01\x03", b"\x01\x04", b"\x01\x02\n", b"\n\x01\x03", b"\r\n", b"\n", b"\r"]
)
BODIES = st.lists(
    st.one_of(st.binary(max_size=48), _tokens, _fake_trailer, _fake_record), max_size=10
).map(b"".join)


def _chunks(data: st.DataObject, body: bytes) -> list[bytes | bytearray | memoryview]:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=6)))
    bounds = [0, *cuts, len(body)]
    kinds = data.draw(
        st.lists(st.sampled_from([bytes, bytearray, memoryview]), min_size=len(bounds))
    )
    return [kinds[i](body[a:b]) for i, (a, b) in enumerate(itertools.pairwise(bounds))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bodies=st.lists(
        st.tuples(BODIES, _guid, st.none() | st.integers(0, 2**40)), min_size=1, max_size=5
    ),
    sep=_file_sep,
    data=st.data(),
)
def test_round_trip_any_body_any_chunking(
    bodies: list[tuple[bytes, str, int | None]], sep: bytes, data: st.DataObject
) -> None:
    file = encode_file_header(sep, CTIME)
    offsets = []
    for body, guid, received in bodies:
        w = RecordWriter(sep, guid=guid, received=received, extra=[("X", "kept")])
        offsets.append(len(file))
        parts = [w.begin(), *(w.feed(c) for c in _chunks(data, body)), w.finish()]
        assert w.size == len(body)
        assert w.metadata.digest == body_digest(body)
        file += b"".join(parts)

    # Read each record at its known offset, as mdbox does with its map.
    for offset, (body, guid, received) in zip(offsets, bodies, strict=True):
        record = pread_record(file, sep, offset, len(body))
        assert isinstance(record, Record), record
        assert file[record.body_offset : record.body_offset + record.body_size] == body
        assert record.metadata.guid == guid
        assert record.metadata.received == received
        assert record.metadata.extra == (("X", "kept"),)
        assert check_body(record.metadata, body) is None

    # The repair scan and the dump find every record and nothing damaged.
    scan = scan_v3(file)
    assert isinstance(scan, V3Scan)
    assert scan.damaged == ()
    assert [r.offset for r in scan.records] == offsets
    entries = dump_file(file)
    assert isinstance(entries, list)
    assert [e.sha256 for e in entries] == [hashlib.sha256(b).hexdigest() for b, _, _ in bodies]
    assert all(e.status == "ok" and e.format == "v3" for e in entries)

    # A single-record file read from its tail (sdbox).
    body, guid, _ = bodies[0]
    single = encode_file_header(sep, CTIME) + encode_record(sep, body, guid=guid)
    record = pread_tail(single)
    assert isinstance(record, Record), record
    assert single[record.body_offset : record.body_offset + record.body_size] == body
    assert record.offset + 3 == record.body_offset
    assert record.metadata.guid == guid


def test_body_containing_the_own_trailer_shape_with_other_separator_stays_intact() -> None:
    other = new_separator()
    body = b"before\n\x01\x03" + other + b"\nZ0\n\x01\x04" + other + b"\nafter"
    file = sdbox_file(body)
    record = pread_tail(file)
    assert isinstance(record, Record)
    assert file[record.body_offset : record.body_offset + record.body_size] == body
    assert file.count(b"\x01\x04") == 2  # the fake one and the real one
    assert END_LEN == 35 and TRAILER_LEN == 36


def test_known_offset_and_tail_readers_ignore_a_forged_record_in_the_body() -> None:
    # Even a body holding a complete record with the file's own separator (which a client
    # cannot know) does not mislead the readers that know Z or search from the end.
    forged = encode_record(SEP, b"forged", guid="0" * 32)
    body = b"head\r\n" + forged + b"tail\r\n"
    file = sdbox_file(body)
    header = parse_file_header(file)
    assert isinstance(header, FileHeader)
    at_offset = pread_record(file, SEP, header.length, len(body))
    from_tail = pread_tail(file)
    for record in (at_offset, from_tail):
        assert isinstance(record, Record)
        assert record.metadata.guid == GUID
        assert file[record.body_offset : record.body_offset + record.body_size] == body


def test_read_record_rejects_a_negative_size_argument() -> None:
    with pytest.raises(ValueError):
        read_record(b"\x01\x02\n", SEP, -1)


# ------------------------------------------------------------- fast paths = general paths

_NEVER = re.compile(rb"(?!)")
_texts = st.text(st.characters(blacklist_characters="\n", blacklist_categories=["Cs"]), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=64),
    received=st.none() | st.integers(0, 2**40),
    orig=st.none() | _texts,
    uidl=st.none() | _texts,
    order=st.none() | st.integers(0, 2**40),
    extra=st.lists(st.tuples(st.sampled_from("XYa"), _texts), max_size=2),
    digest=st.booleans(),
    damage=st.none() | st.tuples(st.integers(0, 400), st.integers(1, 255)),
)
def test_fast_readers_agree_with_the_general_ones(
    body: bytes,
    received: int | None,
    orig: str | None,
    uidl: str | None,
    order: int | None,
    extra: list[tuple[str, str]],
    digest: bool,
    damage: tuple[int, int] | None,
) -> None:
    """The one-regex paths for the usual header, trailer and metadata (and the sdbox
    record located by the index's size) give exactly what the general code gives, for
    intact and damaged records alike."""
    header = encode_file_header(SEP, CTIME)
    record = encode_record(
        SEP,
        body,
        guid=GUID,
        received=received,
        orig_mailbox=orig,
        pop3_uidl=uidl,
        pop3_order=order,
        extra=[(k, v) for k, v in dict(extra).items()],
        digest=digest,
    )
    file = bytearray(header + record)
    if damage is not None:  # one byte changed somewhere after the body
        at = len(header) + 3 + len(body) + damage[0] % (len(record) - 3 - len(body))
        file[at] ^= damage[1]
    data = bytes(file)

    def read_all(size_hint: int | None) -> tuple[object, ...]:
        block_at = len(header) + 3 + len(body) + TRAILER_LEN
        known = FileHeader(sep=SEP, ctime=CTIME, length=len(header))
        return (
            parse_file_header(data),
            read_record(data[len(header) :], SEP, len(body), offset=len(header), eof=True),
            read_trailer(data[len(header) + 3 + len(body) :], SEP, eof=True),
            read_sdbox_tail(data, len(data)),
            read_sdbox_tail(data, len(data), header=known, body_size=size_hint),
            parse_metadata(data[block_at : len(data) - END_LEN]),
        )

    def bodies() -> tuple[object, object]:
        """What FETCH's small-body readers give: mdbox (the record at the header's end)
        and sdbox (the whole file)."""
        known = FileHeader(sep=SEP, ctime=CTIME, length=len(header))
        got: list[object] = []
        for read in (
            lambda: mdbox_body_from_span(
                _BytesHandle("m.1", data), known, len(header), len(body), data, 0
            ),
            lambda: sdbox_body_from_bytes("u.1", data, len(body)),
        ):
            try:
                got.append(read())
            except DboxCorruptedError:
                got.append("corrupted")
        return got[0], got[1]

    fast = read_all(len(body))
    fast_bodies = bodies()
    saved = (codec._CANONICAL_TRAILER, codec._CANONICAL_METADATA, codec._FILE_HEADER)
    codec._CANONICAL_TRAILER = codec._CANONICAL_METADATA = codec._FILE_HEADER = _NEVER
    try:
        general = read_all(None)
        general_bodies = bodies()
    finally:
        codec._CANONICAL_TRAILER, codec._CANONICAL_METADATA, codec._FILE_HEADER = saved
    assert fast == general
    # The body readers slice the usual record and parse any other: the same answer.
    assert fast_bodies == general_bodies
    if isinstance(general[1], Record):
        assert fast_bodies[0] == body
    else:
        assert fast_bodies[0] in ("corrupted", None)
    assert fast_bodies[1] == (body if isinstance(general[3], Record) else "corrupted")

    # The spans FETCH locates small bodies by (an mdbox record, a whole sdbox file) are
    # found only where the general readers find the same record, and the messages built
    # from them decode the same metadata when asked.
    known = FileHeader(sep=SEP, ctime=CTIME, length=len(header))
    rec = general[1]
    end = codec.record_span(data, len(header), SEP, len(body))
    if end is not None:
        assert isinstance(rec, Record)
        assert end == rec.end
        assert codec.record_metadata(data, len(header), SEP, len(body)) == rec.metadata
        handle = _BytesHandle("m.1", data)
        mdbox_msg = mdbox_message_from_span(handle, known, len(header), len(body), data, 0)
        assert mdbox_msg is not None
        assert (mdbox_msg.body_offset, mdbox_msg.end) == (rec.body_offset, rec.end)
        assert mdbox_msg.preloaded_body() == body
        assert mdbox_msg.metadata == rec.metadata
    elif isinstance(rec, Corrupted):  # never a message: an error, or None (read it whole)
        try:
            got = mdbox_message_from_span(
                _BytesHandle("m.1", data), known, len(header), len(body), data, 0
            )
        except DboxCorruptedError:
            got = None
        assert got is None
    span = codec.sdbox_body_span(data, len(body))
    tail = general[3]
    if span is None:
        return
    assert isinstance(tail, Record)
    assert (tail.body_offset, tail.body_offset + tail.body_size) == span
    msg = sdbox_message_from_bytes("u.1", data, body_size=len(body))
    assert msg is not None
    assert (msg.offset, msg.body_offset, msg.end) == (tail.offset, tail.body_offset, tail.end)
    assert msg.preloaded_body() == body
    assert msg.metadata == tail.metadata
    assert (msg.guid, msg.received) == (tail.metadata.guid, tail.metadata.received)


async def test_memory_body_stream_serves_ranges() -> None:
    """A body held in memory streams like a preloaded message's (FETCH's small bodies)."""
    data = b"Subject: x\r\n\r\nhello world\r\n"
    assert await memory_body_stream(data).read_all(1000) == data
    assert await memory_body_stream(data, 3, 9).read_all(1000) == data[3:9]
    assert await memory_body_stream(data, 20, None).read_all(1000) == data[20:]
    assert await memory_body_stream(data, 500, 600).read_all(1000) == b""
    stream = memory_body_stream(data, 4, 8)
    assert (stream.size, stream.position) == (4, 4)
    with pytest.raises(ValueError):
        memory_body_stream(data, 5, 4)
    with pytest.raises(ValueError):
        memory_body_stream(data, -1)
