"""Parser details beyond the rendered structures: offsets, events, caching."""

from __future__ import annotations

import pytest
from message_corpus import FixtureMessage

from aiodbox.message.parser import MessageParser, PartFlags, PartInfo, Size, parse_message
from aiodbox.message.summary import MessageSummary, find_section, summarize

_NESTED = (
    b"Content-Type: multipart/mixed; boundary=o\r\n\r\npreamble\r\n--o\r\n"
    b"Content-Type: text/plain\r\n\r\none\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=i\r\n\r\n"
    b"--i\r\n\r\ntwo\r\n--i--\r\n--o--\r\nepilogue\r\n"
)


def test_offsets_slice_the_parts() -> None:
    root = parse_message(_NESTED)
    one = root.children[0]
    assert _NESTED[one.body_offset : one.end_offset] == b"one"
    inner = root.children[1].children[0]
    assert _NESTED[inner.offset : inner.body_offset].startswith(b"Subject: inner")
    leaf = inner.children[0]
    assert _NESTED[leaf.body_offset : leaf.end_offset] == b"two"
    assert root.end_offset == len(_NESTED)
    body_len = len(_NESTED) - root.header_size.physical
    assert root.body_size == Size(body_len, body_len, _NESTED.count(b"\n") - 2)
    assert [p.flags & PartFlags.MULTIPART == PartFlags.MULTIPART for p in root.walk()] == [
        True,
        False,
        False,
        True,
        False,
    ]


def test_sections() -> None:
    root = parse_message(_NESTED)
    summary = summarize(root)
    for path in ([1], [2], [2, 1], [3], [1, 1], [1, 2], [0]):
        part = find_section(root, path)
        entry = summary.section(path)
        assert (part is None) == (entry is None), path
        if part is not None and entry is not None:
            assert (part.offset, part.body_size) == (entry.offset, entry.body_size)
    leaf = find_section(root, [2, 1])
    assert leaf is not None and _NESTED[leaf.body_offset : leaf.end_offset] == b"two"
    single = parse_message(b"Subject: x\r\n\r\nbody")
    assert find_section(single, [1]) is single
    assert find_section(single, [2]) is None


def test_summary_rejects_corrupt_bytes() -> None:
    blob = summarize(parse_message(_NESTED)).to_bytes()
    for bad in (b"", b"nope" + blob[4:], blob[:-1], blob + b"x"):
        with pytest.raises(ValueError):
            MessageSummary.from_bytes(bad)


class _Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, int, bytes]] = []

    def on_headers(self, info: PartInfo) -> None:
        self.events.append(("headers", info.index, b"%d" % len(info.headers)))

    def on_body(self, index: int, data: bytes) -> None:
        self.events.append(("body", index, data))

    def on_part_end(self, index: int) -> None:
        self.events.append(("end", index, b""))


def test_listener_sees_leaf_bodies_only() -> None:
    rec = _Recorder()
    parser = MessageParser(rec)
    for i in range(0, len(_NESTED), 5):
        parser.feed(_NESTED[i : i + 5])
    parser.finish()
    bodies: dict[int, bytes] = {}
    for kind, index, data in rec.events:
        if kind == "body":
            bodies[index] = bodies.get(index, b"") + data
    assert bodies == {1: b"one", 4: b"two"}
    assert [e[:2] for e in rec.events if e[0] != "body"] == [
        ("headers", 0),
        ("headers", 1),
        ("end", 1),
        ("headers", 2),
        ("headers", 3),
        ("headers", 4),
        ("end", 4),
        ("end", 3),
        ("end", 2),
        ("end", 0),
    ]


def test_finish_is_idempotent_and_feed_after_finish_fails() -> None:
    parser = MessageParser()
    parser.feed(b"A: b\r\n\r\nc")
    root = parser.finish()
    assert parser.finish() is root
    with pytest.raises(RuntimeError):
        parser.feed(b"more")


def test_nesting_limit_keeps_deep_mime_opaque() -> None:
    depth = 150
    data = (
        b"".join(
            # Boundaries of equal length: none is a prefix of another.
            b"Content-Type: multipart/mixed; boundary=b%04d\r\n\r\n--b%04d\r\n" % (i, i)
            for i in range(depth)
        )
        + b"\r\nleaf\r\n"
    )
    root = parse_message(data)
    assert len(root.walk()) == 100
    assert root.walk()[-1].flags & PartFlags.OVERFLOW


def test_large_base64_parses_fast(fixture_messages: list[FixtureMessage]) -> None:
    import time

    big = next(m for m in fixture_messages if m.source.startswith("messages/09")).imap
    body = big * 40  # ~12 MB of mostly base64 (one long message body)
    start = time.perf_counter()
    parser = MessageParser()
    for i in range(0, len(body), 65536):
        parser.feed(body[i : i + 65536])
    parser.finish()
    rate = len(body) / (time.perf_counter() - start) / 1e6
    assert rate > 20, f"{rate:.1f} MB/s"
