"""The v2 reader and the dump against real Dovecot 2.3 files (fixtures/dovecot-2.3).

manifest.json is the oracle: every sdbox ``u.*`` and mdbox ``m.*`` file must dump to
exactly its GUIDs, offsets, sizes, received times and IMAP SHA-256, the unpurged dead
record in ``m.1`` included.
"""

from __future__ import annotations

import calendar
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import pytest

from aiodbox.dbox import (
    DumpEntry,
    LfToCrlf,
    NeedBytes,
    V2FileHeader,
    V2Record,
    crlf_size,
    dump_file,
    lf_to_crlf,
    parse_v2_file_header,
    read_v2_record,
)


@pytest.fixture(scope="module")
def fixtures(fixtures_dir: Path) -> Path:
    return fixtures_dir


@pytest.fixture(scope="module")
def manifest(fixtures_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((fixtures_dir / "dovecot-2.3" / "manifest.json").read_text())
    return data


def _unix(utc: str) -> int:
    return calendar.timegm(time.strptime(utc, "%Y-%m-%d %H:%M:%S"))


def _dump(path: Path) -> list[DumpEntry]:
    entries = dump_file(path.read_bytes())
    assert isinstance(entries, list), entries
    return entries


def test_every_sdbox_file_dumps_to_the_manifest(fixtures: Path, manifest: dict[str, Any]) -> None:
    user = manifest["users"]["sdbox"]
    home = fixtures / user["home_dir"]
    by_file = {msg["file"]: msg for msg in user["messages"]}
    on_disk = {str(p.relative_to(home)) for p in home.rglob("u.*")}
    assert on_disk == set(by_file), "every u.* file is in the manifest and vice versa"
    assert len(on_disk) == 26
    for name, msg in by_file.items():
        data = (home / name).read_bytes()
        entries = _dump(home / name)
        assert len(entries) == 1, name
        (entry,) = entries
        assert entry.status == "ok", (name, entry.reason)
        assert entry.format == "v2"
        assert entry.offset == data.index(b"\n") + 1 == 16, "the record follows the header"
        assert entry.offset + entry.length == len(data)
        assert entry.guid == msg["guid"]
        assert entry.size == msg["size_physical"]
        assert entry.sha256 == msg["imap_sha256"]
        assert entry.received == _unix(msg["date_received"])


def test_every_mdbox_file_dumps_to_the_manifest(fixtures: Path, manifest: dict[str, Any]) -> None:
    user = manifest["users"]["mdbox"]
    home = fixtures / user["home_dir"]
    storage = home / "mdbox" / "storage"
    files = sorted(p.name for p in storage.glob("m.*"))
    assert files == sorted(user["storage_files"]) == ["m.1", "m.2", "m.3", "m.4"]

    expected: dict[tuple[str, int], dict[str, Any]] = {}
    for msg in user["messages"]:
        loc = msg["mdbox_location"]
        expected[(Path(loc["file"]).name, loc["offset"])] = {
            "guid": msg["guid"],
            "size": msg["size_physical"],
            "length": loc["size"],
            "sha256": msg["imap_sha256"],
            "received": _unix(msg["date_received"]),
        }
    (dead,) = user["dead_messages_not_purged"]
    source = (fixtures / dead["source"]).read_bytes()
    expected[(Path(dead["file"]).name, dead["offset"])] = {
        "guid": dead["guid"],
        "size": len(source.replace(b"\r\n", b"\n")),
        "length": dead["size"],
        "sha256": hashlib.sha256(lf_to_crlf(source)).hexdigest(),
        "received": None,  # the manifest has no date for it; checked below
    }
    assert len(expected) == 26, "25 distinct live records (03 is shared by COPY) + 1 dead"

    seen: set[tuple[str, int]] = set()
    for name in files:
        for entry in _dump(storage / name):
            key = (name, entry.offset)
            assert key in expected, f"unexpected record {key}"
            want = expected[key]
            assert entry.status == "ok", (key, entry.reason)
            assert entry.format == "v2"
            assert entry.guid == want["guid"], key
            assert entry.size == want["size"], key
            assert entry.length == want["length"], key
            assert entry.sha256 == want["sha256"], key
            if want["received"] is not None:
                assert entry.received == want["received"], key
            else:
                assert isinstance(entry.received, int)
            seen.add(key)
    assert seen == set(expected), f"records missing from the dump: {set(expected) - seen}"


def test_v2_record_at_map_offset_serves_imap_bytes(
    fixtures: Path, manifest: dict[str, Any]
) -> None:
    user = manifest["users"]["mdbox"]
    home = fixtures / user["home_dir"]
    for msg in user["messages"]:
        loc = msg["mdbox_location"]
        data = (home / loc["file"]).read_bytes()
        header = parse_v2_file_header(data[:64])
        assert isinstance(header, V2FileHeader)
        assert header.msg_header_size == 0x1E
        # The map's size is the whole record: exactly enough bytes, no EOF needed.
        window = data[loc["offset"] : loc["offset"] + loc["size"]]
        record = read_v2_record(window, offset=loc["offset"], msg_header_size=0x1E)
        assert isinstance(record, V2Record), (msg["uid"], record)
        assert record.length == loc["size"]
        assert record.body_offset == loc["offset"] + 30
        assert record.metadata.guid == msg["guid"]
        assert record.metadata.virtual_size == msg["imap_size"] == msg["size_virtual"]
        assert record.metadata.orig_mailbox == msg["mailbox"] or msg["saved_via"] == "imap-copy"
        body = data[record.body_offset : record.body_offset + record.body_size]
        assert crlf_size(body) == msg["imap_size"]
        for chunk_size in (1, 2, 7, 4096):
            convert = LfToCrlf()
            out = b"".join(
                convert.feed(body[i : i + chunk_size]) for i in range(0, len(body), chunk_size)
            )
            assert convert.size == msg["imap_size"]
            assert hashlib.sha256(out).hexdigest() == msg["imap_sha256"], (msg["uid"], chunk_size)


def test_v2_record_grows_its_reads_until_complete(fixtures: Path) -> None:
    data = (fixtures / "dovecot-2.3" / "mdbox" / "mdbox" / "storage" / "m.2").read_bytes()
    offset, have, calls = 16, 10, 0
    while True:
        calls += 1
        result = read_v2_record(data[offset : offset + have], offset=offset)
        if not isinstance(result, NeedBytes):
            break
        assert result.size > have, "each request asks for more than it was given"
        have = result.size
    assert isinstance(result, V2Record)
    assert result.body_size == 297700
    assert result.end == len(data)
    assert calls <= 4
