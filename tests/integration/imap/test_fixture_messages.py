"""The real Dovecot 2.3 fixture users through IMAP: BODYSTRUCTURE and ENVELOPE of every
message byte-identical to Dovecot's response lines in the manifest, ``BODY[]`` equal to
Dovecot's bytes (sha256), flags and INTERNALDATE as Dovecot reported them.

The users are imported with the Dovecot importer (UIDs, flags and dates kept), into an
sdbox and an mdbox store, then read only through the IMAP server.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from aiodbox.importers.dovecot_import import import_dovecot
from tests.integration.imap.client import RawClient
from tests.integration.imap.conftest import Env

pytestmark = pytest.mark.asyncio


def _line(value: str | dict[str, str]) -> bytes:
    if isinstance(value, dict):
        return base64.b64decode(value["base64"])
    return value.encode("utf-8")


def _manifest(fixtures_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (fixtures_dir / "dovecot-2.3" / "manifest.json").read_text("utf-8")
    )
    return data


@pytest.fixture(scope="module")
def manifest(fixtures_dir: Path) -> dict[str, Any]:
    return _manifest(fixtures_dir)


@pytest.mark.parametrize("source", ["sdbox", "mdbox"])
async def test_fixture_messages_through_imap(
    env: Env, fixtures_dir: Path, manifest: dict[str, Any], source: str
) -> None:
    user = manifest["users"][source]
    report = await import_dovecot(env.storage, "alice", fixtures_dir / "dovecot-2.3" / source)
    assert not report.problems, report.problems
    c = await env.client(login="alice")
    by_box: dict[str, list[dict[str, Any]]] = {}
    for msg in user["messages"]:
        by_box.setdefault(msg["mailbox"], []).append(msg)
    assert set(by_box) == {"INBOX", "Archive/2024"}
    for box, messages in by_box.items():
        await c.ok(f'EXAMINE "{box}"')
        await _check_box(c, messages)
    await c.logout()


async def _check_box(c: RawClient, messages: list[dict[str, Any]]) -> None:
    resp = await c.ok("UID FETCH 1:* (BODYSTRUCTURE)")
    assert resp.untagged == [_line(m["bodystructure"]) for m in messages]
    resp = await c.ok("UID FETCH 1:* (ENVELOPE)")
    assert resp.untagged == [_line(m["envelope"]) for m in messages]
    resp = await c.ok("UID FETCH 1:* (FLAGS INTERNALDATE RFC822.SIZE)")
    for line, m in zip(resp.untagged, messages, strict=True):
        flags = " ".join([*m["flags"], *m["keywords"]])  # no \\Recent (see selected.py)
        expected = (
            f"* {m['seq']} FETCH (UID {m['uid']} FLAGS ({flags}) "
            f'INTERNALDATE "{m["internaldate"]}" RFC822.SIZE {m["imap_size"]})'
        )
        assert _same_flags(line.decode(), expected), (line, expected)
    for m in messages:
        resp = await c.ok(f"UID FETCH {m['uid']} BODY.PEEK[]")
        head = b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (m["seq"], m["uid"], m["imap_size"])
        line = resp.untagged[0]
        assert line.startswith(head) and line.endswith(b")")
        body = line[len(head) : -1]
        assert hashlib.sha256(body).hexdigest() == m["imap_sha256"], m["source"]


def _same_flags(got: str, expected: str) -> bool:
    """Equal, except that the order of flags inside FLAGS (...) may differ."""

    def split(text: str) -> tuple[str, frozenset[str], str]:
        head, _, rest = text.partition("FLAGS (")
        flags, _, tail = rest.partition(")")
        return head, frozenset(flags.split()), tail

    return split(got) == split(expected)
