"""Differential vectors recorded from a real Dovecot 2.3.19.1 ``imap`` process.

``dovecot_vectors.json`` holds, for each message, the bytes Dovecot served as
``BODY[]`` and its BODYSTRUCTURE, BODY and ENVELOPE answers: Dovecot's own
message-parser unit-test messages, hand-written edge cases (broken
Content-Type, RFC 2231 sections, odd addresses, folded fields) and randomly
generated nasty MIME (nested and unclosed multiparts, prefix boundaries,
message/rfc822 and digest parts, 8-bit, bare LF, unbalanced quotes).
"""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import pytest

from aiodbox.message.envelope import envelope_bytes
from aiodbox.message.parser import MessageParser, parse_message
from aiodbox.message.structure import render_body, render_bodystructure

_DATA = json.loads((Path(__file__).with_name("dovecot_vectors.json")).read_text())
VECTORS = [{k: base64.b64decode(v) for k, v in vec.items()} for vec in _DATA["vectors"]]


def test_vector_count() -> None:
    assert len(VECTORS) > 150


@pytest.mark.parametrize("index", range(len(VECTORS)))
def test_matches_dovecot(index: int) -> None:
    vec = VECTORS[index]
    root = parse_message(vec["message"])
    assert render_bodystructure(root) == vec["bodystructure"]
    assert render_body(root) == vec["body"]
    assert envelope_bytes(root.headers) == vec["envelope"]


def test_matches_dovecot_when_fed_byte_by_byte_or_randomly() -> None:
    rng = random.Random(7)
    for vec in VECTORS:
        data = vec["message"]
        parser = MessageParser()
        pos = 0
        while pos < len(data):
            step = rng.randint(1, 9)
            parser.feed(data[pos : pos + step])
            pos += step
        assert render_bodystructure(parser.finish()) == vec["bodystructure"]
