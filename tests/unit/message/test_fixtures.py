"""BODYSTRUCTURE, BODY and ENVELOPE against Dovecot 2.3's answers for real mail."""

from __future__ import annotations

import random

import pytest
from message_corpus import FixtureMessage

from aiodbox.message.envelope import envelope_bytes
from aiodbox.message.parser import MessageParser, parse_message
from aiodbox.message.structure import render_body, render_bodystructure
from aiodbox.message.summary import MessageSummary, summarize


def test_corpus_is_complete(fixture_messages: list[FixtureMessage]) -> None:
    assert len(fixture_messages) == 52
    assert {m.user for m in fixture_messages} == {"sdbox", "mdbox"}


def test_bodystructure_byte_identical(fixture_messages: list[FixtureMessage]) -> None:
    wrong = [
        (m.id, m.source)
        for m in fixture_messages
        if render_bodystructure(parse_message(m.imap)) != m.bodystructure
    ]
    assert wrong == []


def test_envelope_byte_identical(fixture_messages: list[FixtureMessage]) -> None:
    wrong = [
        (m.id, m.source)
        for m in fixture_messages
        if envelope_bytes(parse_message(m.imap).headers) != m.envelope
    ]
    assert wrong == []


def test_body_is_bodystructure_without_extensions(
    fixture_messages: list[FixtureMessage],
) -> None:
    # Dovecot's BODY for message 15 (checked against Dovecot 2.3.19.1).
    msg = next(m for m in fixture_messages if m.source.startswith("messages/15"))
    assert render_body(parse_message(msg.imap)) == (
        b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 16 0)'
        b'("message" "rfc822" NIL NIL NIL "7bit" 225 ("Mon, 01 Jan 2024 08:00:00 +0100" '
        b'"The original message" (("Alice Example" NIL "alice" "example.test")) '
        b'(("Alice Example" NIL "alice" "example.test")) '
        b'(("Alice Example" NIL "alice" "example.test")) '
        b'(("Bob Example" NIL "bob" "example.test")) NIL NIL NIL '
        b'"<fixture-15i@example.test>") ("text" "plain" ("charset" "us-ascii") '
        b'NIL NIL "7bit" 16 1) 8) "mixed")'
    )


@pytest.mark.parametrize("seed", range(8))
def test_chunked_feeding_gives_identical_results(
    fixture_messages: list[FixtureMessage], seed: int
) -> None:
    rng = random.Random(seed)
    for m in fixture_messages[:26]:
        whole = parse_message(m.imap)
        parser = MessageParser()
        pos = 0
        while pos < len(m.imap):
            step = rng.choice((1, 2, 3, 7, 64, 1000, 4096))
            parser.feed(m.imap[pos : pos + step])
            pos += step
        assert parser.finish() == whole, m.source
        assert render_bodystructure(whole) == m.bodystructure


def test_summary_roundtrip_is_byte_identical(fixture_messages: list[FixtureMessage]) -> None:
    for m in fixture_messages:
        summary = summarize(parse_message(m.imap))
        assert summary.bodystructure == m.bodystructure
        assert summary.envelope == m.envelope
        again = MessageSummary.from_bytes(summary.to_bytes())
        assert again == summary
