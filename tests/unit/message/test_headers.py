"""Header fields, HEADER.FIELDS selection, encoded words and dates."""

from __future__ import annotations

import datetime as dt

import pytest

from aiodbox.message.dates import parse_date, sent_date
from aiodbox.message.headers import find_values, make_field, parse_header_block, select_fields
from aiodbox.message.parser import parse_message
from aiodbox.message.rfc2047 import decode_header_value

# Dovecot 2.3.19.1's answers for these messages were recorded with a real imap
# process (BODY.PEEK[HEADER.FIELDS (Subject X-A)] and .NOT (Subject)).
_MSG_FOLDED = (
    b"Subject: a\r\nsubject : b\r\nX-A: 1\r\n  cont\r\nNoColonLine\r\nFrom: f@g\r\n\r\nbody\r\n"
)
_MSG_NO_EOH = b"Subject: a\r\nX-A: 1\r\n"
_MSG_NO_NEWLINE = b"Subject: a\r\nX-A: 1"


@pytest.mark.parametrize(
    ("message", "fields", "fields_not"),
    [
        (
            _MSG_FOLDED,
            b"Subject: a\r\nsubject : b\r\nX-A: 1\r\n  cont\r\n\r\n",
            b"X-A: 1\r\n  cont\r\nNoColonLine\r\nFrom: f@g\r\n\r\n",
        ),
        (_MSG_NO_EOH, b"Subject: a\r\nX-A: 1\r\n\r\n", b"X-A: 1\r\n"),
        (_MSG_NO_NEWLINE, b"Subject: a\r\nX-A: 1\r\n\r\n", b"X-A: 1"),
        (b"Subject: one\r\nSubject: two\r\n\r\n", b"Subject: one\r\nSubject: two\r\n\r\n", b"\r\n"),
    ],
)
def test_header_fields_selection_like_dovecot(
    message: bytes, fields: bytes, fields_not: bytes
) -> None:
    root = parse_message(message)
    got = select_fields(root.headers, [b"Subject", "x-a"])
    assert got == fields
    got_not = select_fields(root.headers, ["SUBJECT"], exclude=True, has_eoh=bool(root.eoh))
    assert got_not == fields_not


def test_missing_field_gives_empty_line_and_no_colon_never_matches() -> None:
    root = parse_message(_MSG_FOLDED)
    assert select_fields(root.headers, ["NoColonLine"]) == b"\r\n"
    assert select_fields(root.headers, ["x-none"]) == b"\r\n"


def test_unfolding_follows_dovecot() -> None:
    f = make_field([b"Subject:  \t hello\r\n", b" world\r\n", b"\tagain\r\n"])
    assert (f.name, f.value) == (b"Subject", b"hello\n world\n\tagain")
    assert f.raw == b"Subject:  \t hello\r\n world\r\n\tagain\r\n"
    assert make_field([b"X-Empty:   \r\n"]).value == b"  "  # only white space: one byte skipped
    assert make_field([b"Name  :v\n"]).name == b"Name"
    nocolon = make_field([b"garbage line\r\n"])
    assert (nocolon.name, nocolon.value, nocolon.has_colon) == (b"garbage line", b"", False)


def test_parse_header_block_and_find_values() -> None:
    fields, eoh = parse_header_block(_MSG_FOLDED)
    assert eoh
    assert [f.name for f in fields] == [b"Subject", b"subject", b"X-A", b"NoColonLine", b"From"]
    assert find_values(fields, "SUBJECT") == [b"a", b"b"]
    assert parse_header_block(b"A: b\r\n c")[1] is False


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"=?UTF-8?B?R3LDvMOfZSDwn5GL?= and =?ISO-8859-1?Q?caf=E9?=", "Grüße 👋 and café"),
        (
            b"=?UTF-8?Q?Ren=C3=A9e_Fran=C3=A7ois?= <renee@example.test>",
            "Renée François <renee@example.test>",
        ),
        (b"=?utf-8?b?w6k=?= =?utf-8?b?w6k=?=", "éé"),  # space between words dropped
        (b"=?utf-8?q?=C3?= =?utf-8?q?=A9?=", "é"),  # a character split across words
        (b"=?iso-8859-2?q?=B1?=", "ą"),
        (b"=?windows-1252?q?=80?=", "€"),
        (b"=?utf-8*en?q?x?=", "x"),  # RFC 2231 language suffix
        (b"=?no-such-charset?q?abc?=", "abc"),  # unknown charset: UTF-8
        (b"=?base64?b?YWJj?=", "abc"),  # a Python codec that is no charset
        (b"=?utf-8?x?y?=", "=?utf-8?x?y?="),  # unknown encoding kept
        (b"a =?utf-8?q?b?=\n c", "a b c"),  # folding removed
        (b"caf\xe9 \xc3\xa9", "caf\ufffd é"),  # raw 8-bit: UTF-8, invalid replaced
        (b"=?utf-8?b?!!!?=", ""),
    ],
)
def test_encoded_words(raw: bytes, text: str) -> None:
    assert decode_header_value(raw) == text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"Tue, 02 Jan 2024 09:00:00 +0000", dt.datetime(2024, 1, 2, 9, tzinfo=dt.UTC)),
        (
            b"Fri, 29 Mar 2024 23:59:59 -1130",
            dt.datetime(
                2024, 3, 29, 23, 59, 59, tzinfo=dt.timezone(-dt.timedelta(hours=11, minutes=30))
            ),
        ),
        (
            b"2 Jan 24 09:00 EST",
            dt.datetime(2024, 1, 2, 9, tzinfo=dt.timezone(-dt.timedelta(hours=5))),
        ),
        (b"garbage", None),
        (b"", None),
        (b"Mon, 1 Jan 2024 25:61:00 +0000", None),
    ],
)
def test_parse_date(value: bytes, expected: dt.datetime | None) -> None:
    assert parse_date(value) == expected


def test_sent_date_is_the_date_as_written() -> None:
    assert sent_date(b"Fri, 29 Mar 2024 23:59:59 -1130") == dt.date(2024, 3, 29)


def test_header_bytes_rebuilds_the_header() -> None:
    from aiodbox.message.headers import header_bytes

    root = parse_message(_MSG_FOLDED)
    assert header_bytes(root.headers, root.eoh) == _MSG_FOLDED[: root.body_offset]
    bare = parse_message(_MSG_NO_NEWLINE)
    assert header_bytes(bare.headers, bare.eoh) == _MSG_NO_NEWLINE
