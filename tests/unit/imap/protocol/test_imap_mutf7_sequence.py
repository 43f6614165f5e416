"""Modified UTF-7 mailbox names and sequence sets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiodbox.imap.protocol import SequenceSet
from aiodbox.imap.protocol import mutf7 as m7

EXAMPLES = [
    ("INBOX", b"INBOX"),
    ("~peter/mail/台北/日本語", b"~peter/mail/&U,BTFw-/&ZeVnLIqe-"),
    ("Entwürfe", b"Entw&APw-rfe"),
    ("a&b", b"a&-b"),
    ("&", b"&-"),
    ("Ä&Ö", b"&AMQ-&-&ANY-"),
    ("😀", b"&2D3eAA-"),
    ("", b""),
    ("tab\there", b"tab&AAk-here"),
]


@pytest.mark.parametrize(("text", "wire"), EXAMPLES)
def test_known_encodings(text: str, wire: bytes) -> None:
    assert m7.encode(text) == wire
    assert m7.decode(wire) == text


@pytest.mark.parametrize(
    "wire",
    [
        b"Entw&APw",  # unterminated shift
        b"&AGE-",  # printable ASCII ("a") must not be encoded
        b"&APx-",  # non-zero padding bits
        b"&2D0-",  # unpaired high surrogate
        b"&A-",  # truncated base64
        b"&AP*-",  # invalid base64 character
        b"caf\xc3\xa9",  # raw 8-bit
        b"a\tb",  # raw control character
        b"&Jjo!",
    ],
)
def test_invalid_encodings_are_refused(wire: bytes) -> None:
    with pytest.raises(ValueError):
        m7.decode(wire)


def test_lone_surrogate_cannot_be_encoded() -> None:
    with pytest.raises(ValueError):
        m7.encode("\ud800")


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",))))
def test_round_trip(text: str) -> None:
    wire = m7.encode(text)
    assert all(0x20 <= b <= 0x7E for b in wire)
    assert m7.decode(wire) == text


def test_sequence_set_parse_and_render() -> None:
    s = SequenceSet.parse("1:3,5,7:*,*:9")
    assert s.ranges == ((1, 3), (5, 5), (7, None), (None, 9))
    assert str(s) == "1:3,5,7:*,*:9"
    assert s.to_bytes() == b"1:3,5,7:*,*:9"
    assert str(SequenceSet.parse("$")) == "$"


def test_sequence_set_resolve() -> None:
    s = SequenceSet.parse("1:3,5,7:*")
    assert s.resolve(10) == [(1, 3), (5, 5), (7, 10)]
    assert s.resolve(4) == [(1, 7)]  # "7:*" with * = 4 is 4:7, merged with the rest
    assert SequenceSet.parse("*").resolve(0) == []
    assert SequenceSet.parse("5:2").resolve(10) == [(2, 5)]
    assert list(SequenceSet.parse("2,4:5").iter_numbers(9)) == [2, 4, 5]
    assert SequenceSet.parse("2,4:*").contains(7, 9)
    assert not SequenceSet.parse("2,4:6").contains(3, 9)
    with pytest.raises(ValueError):
        SequenceSet(saved=True).resolve(5)


@pytest.mark.parametrize("text", ["", "0", "1:", ":1", "1,,2", "a", "4294967296", "1:2:3"])
def test_sequence_set_parse_errors(text: str) -> None:
    with pytest.raises(ValueError):
        SequenceSet.parse(text)


@given(st.sets(st.integers(min_value=1, max_value=500), max_size=60))
def test_from_numbers_round_trip(numbers: set[int]) -> None:
    s = SequenceSet.from_numbers(numbers)
    assert set(s.iter_numbers(500)) == numbers
    if numbers:
        assert SequenceSet.parse(str(s)) == s
