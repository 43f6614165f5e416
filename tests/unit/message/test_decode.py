"""Transfer and charset decoding, chunk by chunk."""

from __future__ import annotations

import base64
import quopri

from hypothesis import given, settings
from hypothesis import strategies as st

from aiodbox.message.decode import PartTextDecoder, decode_text, lookup_charset, transfer_decoder


def _feed(cte: str, data: bytes, splits: list[int]) -> bytes:
    dec = transfer_decoder(cte)
    out = bytearray()
    pos = i = 0
    while pos < len(data):
        step = splits[i % len(splits)]
        out += dec.feed(data[pos : pos + step])
        pos += step
        i += 1
    return bytes(out + dec.finish())


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(1, 80), min_size=1, max_size=10))
def test_base64_any_split(payload: bytes, splits: list[int]) -> None:
    encoded = base64.encodebytes(payload).replace(b"\n", b"\r\n")
    assert _feed("base64", encoded, splits) == payload
    assert _feed("BASE64", encoded.replace(b"\r\n", b" \t\r\n!"), splits) == payload


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(1, 80), min_size=1, max_size=10))
def test_quoted_printable_any_split(payload: bytes, splits: list[int]) -> None:
    encoded = quopri.encodestring(payload).replace(b"\n", b"\r\n")
    assert _feed("quoted-printable", encoded, splits) == quopri.decodestring(encoded)


def test_lenient_base64_and_identity() -> None:
    assert _feed("base64", b"YW\r\nJj", [1]) == b"abc"  # missing padding
    assert _feed("base64", b"Y", [5]) == b""
    assert _feed("7bit", b"as is=3D", [3]) == b"as is=3D"
    assert _feed("x-unknown", b"raw", [1]) == b"raw"


def test_charsets_never_raise() -> None:
    assert lookup_charset(b"ISO-8859-1") == "iso8859-1"
    assert lookup_charset("us-ascii") == "utf-8"
    assert lookup_charset(None) == lookup_charset("no-such") == lookup_charset("rot13") == "utf-8"
    assert lookup_charset("undefined") == "utf-8"
    assert decode_text(b"caf\xe9", "iso-8859-1") == "café"
    assert decode_text(b"caf\xe9", "utf-8") == "caf\ufffd"
    assert decode_text(b"\x80", "windows-1252") == "€"


def test_part_text_decoder_splits_multibyte_characters() -> None:
    dec = PartTextDecoder("base64", "utf-8")
    encoded = base64.b64encode("Grüße 👋".encode())
    text = "".join(dec.feed(encoded[i : i + 1]) for i in range(len(encoded))) + dec.finish()
    assert text == "Grüße 👋"
