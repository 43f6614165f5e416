"""Fuzz: any bytes parse (the parser is total) and render well-formed IMAP."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aiodbox.message.envelope import envelope_bytes
from aiodbox.message.parser import MessageParser, parse_message
from aiodbox.message.search import BodyMatcher, SearchField, SearchKey
from aiodbox.message.structure import render_bodystructure
from aiodbox.message.summary import MessageSummary, summarize


def _well_formed(data: bytes) -> bool:
    """A balanced, fully consumed IMAP value: lists, quoted strings, literals, atoms."""
    depth = 0
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
            if depth < 0:
                return False
        elif c == 0x22:
            i += 1
            while i < n and data[i] != 0x22:
                if data[i] in (0x0D, 0x0A) or data[i] >= 0x80:
                    return False
                i += 2 if data[i] == 0x5C else 1
            if i >= n:
                return False
        elif c == 0x7B:
            close = data.find(b"}\r\n", i)
            if close < 0:
                return False
            i = close + 3 + int(data[i + 1 : close])
            if i > n:
                return False
            continue
        elif c in (0x0D, 0x0A) or c >= 0x80:
            return False
        i += 1
    return depth == 0 and data.startswith(b"(") and data.endswith(b")")


_PIECES = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=b\r\n",
        b"Content-Type: message/rfc822\r\n",
        b'Content-Type: text/plain; charset="x\\"y"; a*0=1; a*1*=2\r\n',
        b"MIME-Version: 1.0\r\n",
        b'From: "q" <a@b>, g: c@d;, (x) e\r\n',
        b"Subject: =?utf-8?q?x?= \xff\x00\r\n",
        b"\r\n",
        b"\n",
        b"--b\r\n",
        b"--b--\r\n",
        b" folded\r\n",
        b"body\r\n",
        b"\x00\r",
        b"-",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=600), st.lists(_PIECES, max_size=40).map(b"".join)))
def test_any_bytes_parse_and_render(data: bytes) -> None:
    root = parse_message(data)
    assert root.end_offset == len(data)
    bodystructure = render_bodystructure(root)
    envelope = envelope_bytes(root.headers)
    assert _well_formed(bodystructure), bodystructure
    assert _well_formed(envelope), envelope
    summary = summarize(root)
    assert MessageSummary.from_bytes(summary.to_bytes()) == summary


@settings(max_examples=100, deadline=None)
@given(
    st.lists(_PIECES, max_size=40).map(b"".join),
    st.lists(st.integers(1, 30), min_size=1, max_size=8),
)
def test_chunking_never_changes_the_result(data: bytes, splits: list[int]) -> None:
    parser = MessageParser()
    pos = i = 0
    while pos < len(data):
        step = splits[i % len(splits)]
        parser.feed(data[pos : pos + step])
        pos += step
        i += 1
    assert parser.finish() == parse_message(data)
    m = BodyMatcher([SearchKey(field, "b", header="from") for field in SearchField])
    m.feed(data)
    assert len(m.finish()) == len(SearchField)
