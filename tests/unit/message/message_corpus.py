"""The Dovecot fixture corpus: IMAP bytes rebuilt from dbox plus Dovecot's answers."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

_DBOX_MSG_HEADER = 30  # "\x01\x02N" + spaces + 16 hex digits of size + "\n"


@dataclass(frozen=True)
class FixtureMessage:
    """One live message of the manifest with its IMAP bytes and Dovecot's answers."""

    user: str
    mailbox: str
    uid: int
    source: str
    imap: bytes
    bodystructure: bytes
    envelope: bytes

    @property
    def id(self) -> str:
        return f"{self.user}-{self.mailbox}-{self.uid}"


def _raw(value: str | dict[str, str]) -> bytes:
    return base64.b64decode(value["base64"]) if isinstance(value, dict) else value.encode()


def _fetch_item(line: bytes, item: bytes) -> bytes:
    m = re.match(rb"\* \d+ FETCH \(UID \d+ " + item + rb" ", line)
    assert m is not None and line.endswith(b")"), line[:80]
    return line[m.end() : -1]


def _dbox_message(data: bytes, offset: int) -> bytes:
    """The message bytes of the v2 dbox record at ``offset``, served as CRLF."""
    header = data[offset : offset + _DBOX_MSG_HEADER]
    assert header[:3] == b"\x01\x02N", header
    size = int(header[13:29], 16)
    start = offset + _DBOX_MSG_HEADER
    return re.sub(rb"(?<!\r)\n", b"\r\n", data[start : start + size])


def _imap_bytes(fixtures: Path, user: dict[str, object], msg: dict[str, object]) -> bytes:
    home = fixtures / str(user["home_dir"])
    if "file" in msg:
        path = home / str(msg["file"])
        raw = path.read_bytes()
        offset = raw.index(b"\n") + 1
    else:
        loc = msg["mdbox_location"]
        assert isinstance(loc, dict)
        raw = (home / str(loc["file"])).read_bytes()
        offset = int(loc["offset"])
    data = _dbox_message(raw, offset)
    assert hashlib.sha256(data).hexdigest() == msg["imap_sha256"], msg["source"]
    return data


def load_fixture_messages(fixtures: Path) -> list[FixtureMessage]:
    """Every live message of both users, with IMAP bytes rebuilt from dbox."""
    manifest = json.loads((fixtures / "dovecot-2.3" / "manifest.json").read_text())
    out: list[FixtureMessage] = []
    for user_name, user in manifest["users"].items():
        for msg in user["messages"]:
            out.append(
                FixtureMessage(
                    user=user_name,
                    mailbox=msg["mailbox"],
                    uid=msg["uid"],
                    source=msg["source"],
                    imap=_imap_bytes(fixtures, user, msg),
                    bodystructure=_fetch_item(_raw(msg["bodystructure"]), b"BODYSTRUCTURE"),
                    envelope=_fetch_item(_raw(msg["envelope"]), b"ENVELOPE"),
                )
            )
    return out
