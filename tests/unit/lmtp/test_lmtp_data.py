"""The sans-IO DATA decoder: dot-stuffing undone in any split, the end found exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiodbox.lmtp.data import DotDecoder, dot_stuff
from aiodbox.lmtp.trace import trace_headers


def decode_all(wire: bytes, splits: list[int]) -> tuple[bytes, int]:
    d = DotDecoder()
    out = bytearray()
    pos = 0
    for cut in [*sorted(splits), len(wire)]:
        if d.done or cut <= pos:
            continue
        payload, used = d.feed(wire[pos:cut])
        out += payload
        pos += used
        if d.done:
            break
    assert d.done
    assert d.size == len(out)
    return bytes(out), pos


def test_plain_message() -> None:
    assert decode_all(b"a\r\nb\r\n.\r\n", []) == (b"a\r\nb\r\n", 9)


def test_empty_message() -> None:
    assert decode_all(b".\r\n", []) == (b"", 3)


def test_stuffed_dots_are_removed() -> None:
    wire = b"..hidden\r\n...\r\nx.y\r\n.\r\n"
    assert decode_all(wire, [1, 2, 3, 11, 12])[0] == b".hidden\r\n..\r\nx.y\r\n"


def test_pipelined_bytes_after_the_dot_are_not_consumed() -> None:
    d = DotDecoder()
    payload, used = d.feed(b"hi\r\n.\r\nQUIT\r\n")
    assert (payload, used, d.done) == (b"hi\r\n", 7, True)
    with pytest.raises(ValueError):
        d.feed(b"more")


def test_bare_lf_does_not_start_a_line() -> None:
    # ".\r\n" after a bare LF is data (RFC 5321 ends DATA only at CRLF.CRLF).
    d = DotDecoder()
    payload, _ = d.feed(b"a\n.\r\n")
    assert payload == b"a\n.\r\n" and not d.done


def test_dot_cr_without_lf_keeps_the_cr() -> None:
    assert decode_all(b".\rx\r\n.\r\n", [1, 2])[0] == b"\rx\r\n"


def test_crlf_split_across_feeds() -> None:
    assert decode_all(b"abc\r\n.\r\n", [4, 5, 6])[0] == b"abc\r\n"


@given(
    st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))),
    st.lists(st.integers(min_value=0, max_value=2000), max_size=20),
)
def test_roundtrip_any_split(lines: list[bytes], splits: list[int]) -> None:
    message = b"".join(line + b"\r\n" for line in lines)
    wire = dot_stuff(message)
    out, used = decode_all(wire + b"NEXT", splits)
    assert out == message
    assert used == len(wire)


def test_trace_headers_single_and_multiple_recipients() -> None:
    one = trace_headers(
        mail_from="alice@example.test",
        recipients=["bob"],
        helo="[127.0.0.1]",
        remote_ip="127.0.0.1",
        hostname="vm",
        transaction_id="ID",
    ).decode()
    lines = one.split("\r\n")
    assert lines[:6] == [
        "Return-Path: <alice@example.test>",
        "Delivered-To: bob",
        "Received: from [127.0.0.1] ([127.0.0.1])",
        "\tby vm with LMTP",
        "\tid ID",
        "\t(envelope-from <alice@example.test>)",
    ]
    assert lines[6].startswith("\tfor <bob>; ") and lines[7] == ""
    many = trace_headers(
        mail_from="",
        recipients=["bob", "carol"],
        helo=None,
        remote_ip=None,
        hostname="vm",
        transaction_id="ID",
    ).decode()
    assert "Delivered-To" not in many and "for <" not in many
    assert many.startswith("Return-Path: <>\r\nReceived: from unknown ([unknown])\r\n")
    assert "\t(envelope-from <>); " in many
