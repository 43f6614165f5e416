"""Fixtures for the storage unit tests: storages over counted FS stacks, fixture mail."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from aiodbox.dbox.file import open_mdbox_message, open_sdbox_message, read_file_header
from aiodbox.fs import open_fs
from aiodbox.storage import Storage

from .storage_testlib import CountingFS, make_storage


@dataclass(frozen=True)
class FixtureMail:
    """One live message of the Dovecot fixtures: IMAP bytes and Dovecot's answers."""

    user: str
    mailbox: str
    uid: int
    imap: bytes
    bodystructure: bytes
    envelope: bytes


def _raw(value: str | dict[str, str]) -> bytes:
    return base64.b64decode(value["base64"]) if isinstance(value, dict) else value.encode()


def fetch_item(line: bytes, item: bytes) -> bytes:
    """The value of ``item`` in a ``* n FETCH (UID n ITEM value)`` line."""
    m = re.match(rb"\* \d+ FETCH \(UID \d+ " + item + rb" ", line)
    assert m is not None and line.endswith(b")"), line[:80]
    return line[m.end() : -1]


async def load_fixture_mail(fixtures: Path) -> list[FixtureMail]:
    """Every live message of both Dovecot users, read through aiodbox's dbox reader."""
    manifest = json.loads((fixtures / "dovecot-2.3" / "manifest.json").read_text())
    fs = open_fs("posix", root=str(fixtures / "dovecot-2.3"))
    out: list[FixtureMail] = []
    try:
        for user_name, user in manifest["users"].items():
            home = user["home_dir"].removeprefix("dovecot-2.3/")
            for m in user["messages"]:
                if "file" in m:
                    msg = await open_sdbox_message(fs, f"{home}/{m['file']}")
                else:
                    loc = m["mdbox_location"]
                    handle = fs.open(f"{home}/{loc['file']}")
                    header = await read_file_header(handle)
                    msg = await open_mdbox_message(handle, loc["offset"], header=header)
                async with msg:
                    data = await msg.open_body().read_all(1 << 22)
                if "file" not in m:
                    await msg.handle.aclose()
                assert hashlib.sha256(data).hexdigest() == m["imap_sha256"], m["source"]
                out.append(
                    FixtureMail(
                        user_name,
                        m["mailbox"],
                        m["uid"],
                        data,
                        fetch_item(_raw(m["bodystructure"]), b"BODYSTRUCTURE"),
                        fetch_item(_raw(m["envelope"]), b"ENVELOPE"),
                    )
                )
    finally:
        await fs.aclose()
    return out


@pytest.fixture
def storage_factory(
    tmp_path: Path,
) -> Callable[..., tuple[Storage, CountingFS]]:
    """``factory(fmt, spec, **options)`` -> (storage, counting FS); closed by the test."""
    made = 0

    def factory(fmt: str, spec: str, **options: int) -> tuple[Storage, CountingFS]:
        nonlocal made
        made += 1
        return make_storage(tmp_path / f"s{made}", fmt, spec, **options)

    return factory


@pytest.fixture
async def closing() -> AsyncIterator[list[Storage]]:
    """Storages appended here are closed after the test."""
    storages: list[Storage] = []
    yield storages
    for s in storages:
        await s.close()
