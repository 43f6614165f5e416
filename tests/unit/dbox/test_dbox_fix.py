"""Repair scan: intact records survive damaged neighbours; damage is reported as ranges."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from aiodbox.dbox import (
    Corrupted,
    V2Scan,
    V3Scan,
    encode_file_header,
    encode_record,
    scan_file,
    scan_v3,
)

SEP = b"a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5"


def _tiles(scan: V3Scan | V2Scan, size: int) -> None:
    """Header, intact records and damaged ranges cover the file exactly, in order."""
    spans: list[tuple[int, int]] = []
    if scan.header is not None:
        spans.append((0, scan.header.length))
    spans += [(r.offset, r.end) for r in scan.records]
    spans += [(d.start, d.end) for d in scan.damaged]
    spans.sort()
    pos = 0
    for start, end in spans:
        assert start == pos, f"gap or overlap at {pos}: {spans}"
        assert end > start, f"empty span at {start}"
        pos = end
    assert pos == size


def _file(bodies: list[bytes], sep: bytes = SEP) -> tuple[bytes, list[tuple[int, int]]]:
    out = encode_file_header(sep, 1_700_000_000)
    spans = []
    for i, body in enumerate(bodies):
        start = len(out)
        out += encode_record(sep, body, guid=f"{i:032x}")
        spans.append((start, len(out)))
    return out, spans


# ----------------------------------------------------------------------- targeted cases


def test_damaged_trailer_is_bounded_by_its_intact_neighbours() -> None:
    file, spans = _file([b"one\r\n", b"two\r\n", b"three\r\n"])
    s, _ = spans[1]
    t = file.index(b"\n\x01\x03", s)
    broken = file[: t + 1] + b"\x00" + file[t + 2 :]
    scan = scan_v3(broken)
    _tiles(scan, len(broken))
    assert [r.metadata.guid for r in scan.records] == [f"{0:032x}", f"{2:032x}"]
    assert [(d.start, d.end) for d in scan.damaged] == [spans[1]]


def test_flipped_body_byte_is_caught_by_the_digest() -> None:
    file, spans = _file([b"one\r\n", b"two\r\n", b"three\r\n"])
    pos = spans[2][0] + 4
    broken = file[:pos] + bytes([file[pos] ^ 0x20]) + file[pos + 1 :]
    scan = scan_v3(broken)
    _tiles(scan, len(broken))
    assert len(scan.records) == 2
    (damage,) = scan.damaged
    assert (damage.start, damage.end) == spans[2]
    assert "BLAKE2b" in damage.reason


def test_flipped_guid_digit_is_caught_by_the_metadata_check() -> None:
    file, spans = _file([b"one\r\n", b"two\r\n"])
    pos = file.index(b"\nG", spans[0][0]) + 5
    assert file[pos : pos + 1] == b"0"
    broken = file[:pos] + b"1" + file[pos + 1 :]
    scan = scan_v3(broken)
    _tiles(scan, len(broken))
    assert [r.metadata.guid for r in scan.records] == [f"{1:032x}"]
    assert "K does not match" in scan.damaged[0].reason


def test_garbage_between_records_and_a_truncated_tail() -> None:
    file, spans = _file([b"a", b"b", b"c"])
    cut = spans[2][0] + 10
    broken = file[: spans[1][0]] + b"GARBAGE\x01\x02\n" + file[spans[1][0] : cut]
    scan = scan_v3(broken)
    _tiles(scan, len(broken))
    assert [r.metadata.guid for r in scan.records] == [f"{0:032x}", f"{1:032x}"]
    assert [(d.start, d.end) for d in scan.damaged] == [
        (spans[1][0], spans[1][0] + 10),
        (spans[2][0] + 10, len(broken)),
    ]
    assert "truncated" in scan.damaged[1].reason


def test_damaged_header_separator_is_recovered_from_the_end_markers() -> None:
    file, _ = _file([b"a", b"b"])
    wrong_sep = b"f" + file[4:35]  # still valid hex, but not the file's separator
    for broken in (file[:3] + wrong_sep + file[35:], b"X" + file[1:]):
        scan = scan_v3(broken)
        _tiles(scan, len(broken))
        assert scan.header is None and scan.header_problem is not None
        assert scan.sep == SEP
        assert len(scan.records) == 2
        assert scan.damaged[0].start == 0


def test_header_only_and_empty_files() -> None:
    header = encode_file_header(SEP, 1)
    scan = scan_v3(header)
    assert scan.records == () and scan.damaged == ()
    assert isinstance(scan_file(b""), Corrupted)
    assert isinstance(scan_file(b"hello world"), Corrupted)
    garbage = scan_v3(b"3 garbage")
    assert garbage.header is None and garbage.sep is None and garbage.records == ()
    assert garbage.header_problem is not None
    assert [(d.start, d.end) for d in garbage.damaged] == [(0, 9)]


def test_v2_fixture_truncated_and_with_garbage(fixtures_dir: Path) -> None:
    data = (fixtures_dir / "dovecot-2.3" / "mdbox" / "mdbox" / "storage" / "m.1").read_bytes()
    whole = scan_file(data)
    assert isinstance(whole, V2Scan)
    assert len(whole.records) == 14 and whole.damaged == ()
    fifth = whole.records[4]

    truncated = data[: fifth.offset + 100]
    scan = scan_file(truncated)
    assert isinstance(scan, V2Scan)
    _tiles(scan, len(truncated))
    assert [r.offset for r in scan.records] == [r.offset for r in whole.records[:4]]
    assert [(d.start, d.end) for d in scan.damaged] == [(fifth.offset, len(truncated))]

    garbage = b"\x01\x02N not a record\n" * 3
    inserted = data[: fifth.offset] + garbage + data[fifth.offset :]
    scan = scan_file(inserted)
    assert isinstance(scan, V2Scan)
    _tiles(scan, len(inserted))
    assert len(scan.records) == 14
    assert [(d.start, d.end) for d in scan.damaged] == [(fifth.offset, fifth.offset + len(garbage))]


# -------------------------------------------------------------------- corruption campaign


@dataclass
class _Original:
    start: int
    end: int
    guid: str
    raw: bytes


def _body(rng: random.Random, sep: bytes) -> bytes:
    parts = []
    for _ in range(rng.randint(0, 12)):
        kind = rng.random()
        if kind < 0.4:
            parts.append(b"Header-%d: value %d\r\n" % (rng.randrange(99), rng.randrange(10**6)))
        elif kind < 0.7:
            parts.append(rng.randbytes(rng.randint(0, 200)))
        elif kind < 0.9:
            parts.append(
                rng.choice([b"\x01\x02\n", b"\x01\x03", b"\x01\x04", b"\n\x01\x03", b"\r\n"])
            )
        else:
            parts.append(b"x" * rng.randint(1000, 8000))
    return b"".join(parts)


def _garbage(rng: random.Random, sep: bytes) -> bytes:
    return rng.choice(
        [
            rng.randbytes(rng.randint(1, 100)),
            b"\x01\x02\n",
            b"\n\x01\x03" + sep + b"\n",
            b"\x01\x04" + sep + b"\n",
            b"\n\x01\x03" + sep[:10],
            b"Zff\nG" + b"0" * 32 + b"\n",
        ]
    )


def _shifted(p: int, inserts: dict[int, bytes]) -> int:
    """Where original byte ``p`` is after the inserts (each goes before its position)."""
    return p + sum(len(g) for at, g in inserts.items() if at <= p)


def _only_in_damage(scan: V3Scan, start: int, end: int) -> bool:
    """True if ``[start, end)`` lies in damaged ranges and in no intact record."""
    if any(r.offset < end and start < r.end for r in scan.records):
        return False
    return all(any(d.start <= p < d.end for d in scan.damaged) for p in (start, end - 1))


def test_corruption_campaign() -> None:
    rng = random.Random(20240611)
    totals = dict.fromkeys(
        [
            "files",
            "records",
            "untouched",
            "untouched_found",
            "touched",
            "touched_reported",
            "touched_identical",
            "lost_to_truncation",
            "damaged_ranges",
        ],
        0,
    )
    for _ in range(600):
        sep = rng.randbytes(16).hex().encode()
        original = bytearray(encode_file_header(sep, rng.randrange(2**32)))
        records: list[_Original] = []
        for i in range(rng.randint(1, 50)):
            start = len(original)
            guid = f"{rng.getrandbits(120):030x}{i:02x}"
            original += encode_record(
                sep,
                _body(rng, sep),
                guid=guid,
                received=rng.randrange(2**32),
                orig_mailbox=rng.choice([None, "INBOX", "Archive/2024"]),
                extra=rng.choice([(), (("X", "kept"),)]),
            )
            records.append(_Original(start, len(original), guid, bytes(original[start:])))

        # Mutate: byte flips, inserted garbage (anywhere or at record boundaries), one cut.
        flips: dict[int, int] = {}
        inserts: dict[int, bytes] = {}
        truncate = False
        kinds = rng.choices(["flip", "insert", "truncate"], weights=[5, 4, 1], k=rng.randint(1, 4))
        for kind in kinds:
            if kind == "flip":
                flips[rng.randrange(len(original))] = rng.randrange(1, 256)
            elif kind == "insert":
                if rng.random() < 0.3:
                    at = rng.choice(records).start
                else:
                    at = rng.randrange(len(original) + 1)
                inserts[at] = inserts.get(at, b"") + _garbage(rng, sep)
            else:
                truncate = True
        mutated = bytearray(original)
        for pos, mask in flips.items():
            mutated[pos] ^= mask
        for at in sorted(inserts, reverse=True):
            mutated[at:at] = inserts[at]

        cut = rng.randrange(len(mutated)) if truncate else len(mutated)
        data = bytes(mutated[:cut])

        scan = scan_v3(data)
        _tiles(scan, len(data))
        by_guid = {r.metadata.guid: r for r in scan.records}
        originals = {o.guid: o for o in records}
        # Nothing damaged is ever returned as intact: every record is byte-identical to
        # one that was written.
        for r in scan.records:
            assert data[r.offset : r.end] == originals[r.metadata.guid].raw

        totals["files"] += 1
        totals["records"] += len(records)
        totals["damaged_ranges"] += len(scan.damaged)
        for o in records:
            touched = any(o.start <= p < o.end for p in flips) or any(
                o.start < at < o.end for at in inserts
            )
            new_start, new_end = _shifted(o.start, inserts), _shifted(o.end - 1, inserts) + 1
            if not touched and new_end <= cut:
                totals["untouched"] += 1
                found = by_guid.get(o.guid)
                assert found is not None, f"untouched record {o.guid} lost"
                assert (found.offset, found.end) == (new_start, new_end)
                totals["untouched_found"] += 1
                continue
            totals["touched"] += 1
            if new_start >= cut:
                totals["lost_to_truncation"] += 1
                assert o.guid not in by_guid
            elif o.guid in by_guid:
                # Only possible when the change left the record's own bytes as written
                # (e.g. a duplicate end marker inserted right at its end marker).
                totals["touched_identical"] += 1
            else:
                assert _only_in_damage(scan, new_start, min(new_end, cut)), f"{o.guid} not reported"
                totals["touched_reported"] += 1

    print("dbox corruption campaign:", totals)
    assert totals["untouched_found"] == totals["untouched"] > 5000
    assert (
        totals["touched_reported"] + totals["touched_identical"] + totals["lost_to_truncation"]
        == totals["touched"]
    )
    assert totals["touched_reported"] > 500
    assert totals["touched_identical"] <= totals["touched"] // 20
