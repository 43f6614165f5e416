"""aiodbox.dbox.file, reading: real Dovecot 2.3 files and v2 line-end conversion over the FS.

The fixtures are read through a posix FS rooted at the shared fixtures directory
(read-only use), through ``latency:2ms:posix`` on the same root, and from a memory FS
loaded with their bytes. manifest.json is the oracle: every message streams to exactly
its ``imap_sha256`` / ``imap_size``, whole and in ranges.
"""

from __future__ import annotations

import asyncio
import calendar
import errno
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aiodbox.dbox import (
    DboxCorruptedError,
    DboxMessage,
    V2FileHeader,
    crlf_size,
    lf_to_crlf,
    open_mdbox_message,
    open_sdbox_message,
    read_file_header,
    verify_body,
)
from aiodbox.dbox.file import BodyStream
from aiodbox.fs import FS, FsError, FsNotFound, open_fs
from aiodbox.fs.backends.memory import MemoryFS

FIXTURE_SPECS = ["memory", "posix", "latency:2ms:posix"]


def _unix(utc: str) -> int:
    return calendar.timegm(time.strptime(utc, "%Y-%m-%d %H:%M:%S"))


@pytest.fixture(scope="module")
def manifest(fixtures_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((fixtures_dir / "dovecot-2.3" / "manifest.json").read_text())
    return data


@pytest.fixture(scope="module")
def dbox_files(fixtures_dir: Path) -> dict[str, bytes]:
    """Every u.* and m.* file, by path relative to the fixtures dir (for the memory FS)."""
    root = fixtures_dir / "dovecot-2.3"
    found = [*root.rglob("u.*"), *root.rglob("m.*")]
    return {str(p.relative_to(fixtures_dir)): p.read_bytes() for p in found}


@pytest.fixture(params=FIXTURE_SPECS)
async def fixture_fs(
    request: pytest.FixtureRequest, fixtures_dir: Path, dbox_files: dict[str, bytes]
) -> AsyncIterator[FS]:
    """The fixtures behind an FS: posix stacks read them in place; memory holds copies."""
    spec: str = request.param
    fs = open_fs(spec, root=str(fixtures_dir))
    if isinstance(fs, MemoryFS):
        for rel, data in dbox_files.items():
            await fs.write_file(rel, data)
    yield fs
    await fs.aclose()


def _sdbox_messages(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    user = manifest["users"]["sdbox"]
    return [(f"{user['home_dir']}/{m['file']}", m) for m in user["messages"]]


def _mdbox_messages(manifest: dict[str, Any]) -> list[tuple[str, int, dict[str, Any]]]:
    user = manifest["users"]["mdbox"]
    return [
        (f"{user['home_dir']}/{m['mdbox_location']['file']}", m["mdbox_location"]["offset"], m)
        for m in user["messages"]
    ]


async def _stream_sha256(stream: BodyStream, readahead: int) -> tuple[str, int]:
    digest = hashlib.sha256()
    total = 0
    async for chunk in stream:
        assert 0 < len(chunk) <= max(readahead, 2)
        assert stream.buffered <= max(readahead, 2)
        digest.update(chunk)
        total += len(chunk)
    assert stream.eof
    assert await stream.aread() == b""
    return digest.hexdigest(), total


def _check_message(msg: DboxMessage, expected: dict[str, Any]) -> None:
    assert msg.format == "v2"
    assert msg.guid == expected["guid"]
    assert msg.received == _unix(expected["date_received"])
    assert msg.stored_size == expected["size_physical"]
    assert msg.imap_size == expected["imap_size"] == expected["size_virtual"]


# --------------------------------------------------------------------- whole messages


async def test_every_sdbox_fixture_streams_to_its_imap_bytes(
    fixture_fs: FS, manifest: dict[str, Any]
) -> None:
    messages = _sdbox_messages(manifest)
    assert len(messages) == 26
    for path, expected in messages:
        async with await open_sdbox_message(fixture_fs, path) as msg:
            _check_message(msg, expected)
            assert msg.offset == 16
            sha, size = await _stream_sha256(msg.open_body(), 64 * 1024)
            assert (sha, size) == (expected["imap_sha256"], expected["imap_size"]), path
            assert await verify_body(msg) is None


async def test_every_mdbox_fixture_streams_to_its_imap_bytes(
    fixture_fs: FS, manifest: dict[str, Any]
) -> None:
    messages = _mdbox_messages(manifest)
    assert len(messages) == 26
    handles = {path: fixture_fs.open(path) for path in {p for p, _, _ in messages}}
    try:
        headers = {path: await read_file_header(h) for path, h in handles.items()}
        for path, offset, expected in messages:
            header = headers[path]
            assert isinstance(header, V2FileHeader)
            msg = await open_mdbox_message(handles[path], offset, header=header)
            _check_message(msg, expected)
            assert msg.offset == offset
            assert msg.end - msg.offset == expected["mdbox_location"]["size"], "the map's size"
            sha, size = await _stream_sha256(msg.open_body(readahead=4096), 4096)
            assert (sha, size) == (expected["imap_sha256"], expected["imap_size"]), (path, offset)
            assert await verify_body(msg) is None
            await msg.aclose()  # does not own the shared handle
        # The handles still work after the messages were closed; the header is optional.
        path, offset, expected = messages[0]
        again = await open_mdbox_message(handles[path], offset)
        assert again.guid == expected["guid"]
    finally:
        for h in handles.values():
            await h.aclose()


async def test_the_dead_unpurged_mdbox_record_still_opens(
    fixture_fs: FS, manifest: dict[str, Any]
) -> None:
    user = manifest["users"]["mdbox"]
    (dead,) = user["dead_messages_not_purged"]
    handle = fixture_fs.open(f"{user['home_dir']}/{dead['file']}")
    try:
        msg = await open_mdbox_message(handle, dead["offset"], body_size=None)
        assert msg.guid == dead["guid"]
        assert msg.end - msg.offset == dead["size"]
        body = await msg.open_body().read_all(1 << 20)
        assert b"X-Fixture-Id: 12" in body
    finally:
        await handle.aclose()


# ---------------------------------------------------------------------- partial ranges


def _ranges(size: int, rng: random.Random) -> list[tuple[int, int | None]]:
    out: list[tuple[int, int | None]] = [
        (100, 200),
        (0, 1),
        (0, None),
        (max(size - 1, 0), None),
        (size, None),
        (size + 5, size + 10),
        (7, 7),
        (size // 2, size + 1000),
    ]
    for _ in range(3):
        a = rng.randrange(size + 1)
        out.append((a, a + rng.randrange(1, 3000)))
    return out


async def _full_bytes(msg: DboxMessage) -> bytes:
    return await msg.open_body().read_all(1 << 20)


async def test_partial_ranges_equal_slices_of_the_imap_bytes(
    fixture_fs: FS, manifest: dict[str, Any]
) -> None:
    rng = random.Random(7)
    for path, expected in _sdbox_messages(manifest):
        async with await open_sdbox_message(fixture_fs, path) as msg:
            full = await _full_bytes(msg)
            assert hashlib.sha256(full).hexdigest() == expected["imap_sha256"]
            for start, end in _ranges(len(full), rng):
                stream = msg.open_body(start, end, readahead=32 * 1024)
                want = full[start:end]
                assert stream.size == len(want)
                assert await stream.read_all(1 << 20) == want, (path, start, end)
                assert stream.position == min(start, len(full)) + len(want)


async def test_partial_ranges_of_mdbox_records(fixture_fs: FS, manifest: dict[str, Any]) -> None:
    rng = random.Random(11)
    messages = _mdbox_messages(manifest)
    by_file: dict[str, Any] = {}
    try:
        for path, offset, expected in messages:
            if path not in by_file:
                by_file[path] = fixture_fs.open(path)
            msg = await open_mdbox_message(by_file[path], offset)
            full = await _full_bytes(msg)
            assert hashlib.sha256(full).hexdigest() == expected["imap_sha256"]
            for start, end in _ranges(len(full), rng)[:5]:
                got = await msg.open_body(start, end, readahead=3000).read_all(1 << 20)
                assert got == full[start:end], (path, offset, start, end)
    finally:
        for h in by_file.values():
            await h.aclose()


async def test_tiny_readaheads_split_every_crlf(fixture_fs: FS, manifest: dict[str, Any]) -> None:
    """Small fixtures with chunk boundaries everywhere (raw chunks of readahead // 2)."""
    small = [(p, m) for p, m in _sdbox_messages(manifest) if m["fixture_id"] in ("07", "14", "25")]
    assert len(small) == 3
    # Every tiny read is a round trip on the latency stack: fewer there.
    readaheads = (5, 13) if fixture_fs.name.startswith("latency") else (1, 2, 3, 8)
    for path, expected in small:
        async with await open_sdbox_message(fixture_fs, path) as msg:
            assert msg.converts_line_ends
            full = await _full_bytes(msg)
            for readahead in readaheads:
                sha, size = await _stream_sha256(msg.open_body(readahead=readahead), readahead)
                assert (sha, size) == (expected["imap_sha256"], expected["imap_size"])
                for start in (1, 2, 3, len(full) // 2, len(full) - 2):
                    part = msg.open_body(start, start + 9, readahead=readahead)
                    assert await part.read_all(100) == full[start : start + 9]


# ------------------------------------------------------------- synthetic v2 line ends


def v2_record(body: bytes, *, guid: str = "ab" * 16, received: int = 0x65000000) -> bytes:
    """One Dovecot 2.3 style record (30-byte message header, body, metadata block)."""
    header = b"\x01\x02N" + b" " * 10 + b"%016x" % len(body) + b"\n"
    assert len(header) == 30
    meta = b"\n\x01\x03\nG%s\nR%x\nV%x\n\n" % (guid.encode(), received, crlf_size(body))
    return header + body + meta


def v2_file(*bodies: bytes) -> bytes:
    return b"2 M1e C65000000\n" + b"".join(v2_record(b) for b in bodies)


MIXED = b"a\r\nb\nc\r\n\r\n\n\rd\r\r\n\n\r\nlast line\r"


async def test_v2_conversion_at_every_boundary_and_range(tmp_path: Path) -> None:
    """A stored body mixing CRLF, bare LF and bare CR: every range, several chunkings."""
    fs = open_fs("posix", root=str(tmp_path))  # small files are served from memory: fast
    await fs.write_file("u.1", v2_file(MIXED))
    expected = lf_to_crlf(MIXED)
    async with await open_sdbox_message(fs, "u.1") as msg:
        assert msg.converts_line_ends
        assert msg.imap_size == len(expected)
        for readahead in (1, 2, 3, 4, 7):
            assert await msg.open_body(readahead=readahead).read_all(1000) == expected
            for start in range(len(expected) + 1):
                await asyncio.sleep(0)  # many tiny streams served from memory: let others run
                ends = range(start, len(expected) + 2) if readahead in (2, 3) else [start + 5]
                for end in ends:
                    got = await msg.open_body(start, end, readahead=readahead).read_all(1000)
                    assert got == expected[start:end], (readahead, start, end)
        assert msg.open_body(3, 9).file_range is None, "converted bytes cannot go to sendfile"
    await fs.aclose()


async def test_v2_body_with_only_crlf_is_passed_through(tmp_path: Path) -> None:
    body = b"Subject: x\r\n\r\nhello\r\n"
    fs = open_fs("posix", root=str(tmp_path))
    try:
        await fs.write_file("u.1", v2_file(body))
        async with await open_sdbox_message(fs, "u.1") as msg:
            assert not msg.converts_line_ends
            stream = msg.open_body(5)
            file_range = stream.file_range
            assert file_range is not None
            _handle, offset, length = file_range
            assert (offset, length) == (16 + 30 + 5, len(body) - 5)
            assert await stream.read_all(100) == body[5:]
    finally:
        await fs.aclose()


async def test_v2_record_without_v_counts_the_imap_size() -> None:
    body = b"a\nb\r\nc"
    record = v2_record(body).replace(b"V%x\n" % crlf_size(body), b"")
    fs = MemoryFS()
    await fs.write_file("u.1", b"2 M1e C1\n" + record)
    async with await open_sdbox_message(fs, "u.1") as msg:
        assert msg.imap_size == len(lf_to_crlf(body))
        assert await msg.open_body().read_all(100) == lf_to_crlf(body)


# ------------------------------------------------------------------ the stream contract


async def test_body_stream_is_non_blocking_with_a_readable_callback() -> None:
    fs = MemoryFS()
    await fs.write_file("u.1", v2_file(b"line one\nline two\n"))
    msg = await open_sdbox_message(fs, "u.1")
    assert msg.open_body().read() == b"line one\r\nline two\r\n"  # served from the head read
    msg.preload = None  # without the bytes read while locating it, the stream reads:
    stream = msg.open_body()
    with pytest.raises(BlockingIOError):
        stream.read()  # memory FS reads always complete on a later loop iteration
    ready = asyncio.Event()
    stream.set_readable_callback(ready.set)
    await asyncio.wait_for(ready.wait(), 5)
    assert stream.read(4) == b"line"
    assert stream.buffered > 0
    await stream.wait_readable()  # buffered data: returns at once
    rest = await stream.read_all(100)
    assert b"line" + rest == b"line one\r\nline two\r\n"
    assert stream.eof
    await msg.aclose()
    with pytest.raises(FsError):  # the message owned the handle
        msg.open_body().read()


# ---------------------------------------------------------------------- errors


async def test_missing_sdbox_file_is_an_fs_error(tmp_path: Path) -> None:
    for fs in (MemoryFS(), open_fs("posix", root=str(tmp_path))):
        with pytest.raises(FsNotFound):
            await open_sdbox_message(fs, "box/u.404")
        await fs.aclose()


async def test_read_failure_is_an_fs_error_not_corruption() -> None:
    fs = MemoryFS()
    await fs.write_file("u.1", v2_file(b"x\n" * 100))
    fs.faults.fail("pread", errno.EIO)
    with pytest.raises(FsError) as info:
        await open_sdbox_message(fs, "u.1")
    assert not isinstance(info.value, DboxCorruptedError)
    assert info.value.errno == errno.EIO

    msg = await open_sdbox_message(fs, "u.1")
    msg.preload = None  # the body is read again, not served from the bytes already read
    fs.faults.fail("pread", errno.EIO)
    with pytest.raises(FsError):
        await msg.open_body().read_all(1000)
    await msg.aclose()


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        (b"", 0),
        (b"hello world, not a dbox file\n", 0),
        (b"2 M1e C1\n", 9),  # header only
        (v2_file(b"abc\n")[:-3], 16),  # metadata cut short
        (v2_file(b"abc\n").replace(b"\x01\x02N", b"\x01\x02X"), 16),
        (v2_file(b"abc\n").replace(b"\n\x01\x03\n", b"\n\x01\x05\n"), 16),
    ],
)
async def test_damaged_sdbox_files_are_corruption(data: bytes, offset: int) -> None:
    fs = MemoryFS()
    await fs.write_file("box/u.1", data)
    with pytest.raises(DboxCorruptedError) as info:
        await open_sdbox_message(fs, "box/u.1")
    assert info.value.path == "box/u.1"
    assert info.value.offset == offset
    assert info.value.reason


async def test_wrong_mdbox_locations_are_corruption(
    fixture_fs: FS, manifest: dict[str, Any]
) -> None:
    path, offset, expected = _mdbox_messages(manifest)[1]
    handle = fixture_fs.open(path)
    try:
        with pytest.raises(DboxCorruptedError):
            await open_mdbox_message(handle, offset + 1)
        with pytest.raises(DboxCorruptedError):
            await open_mdbox_message(handle, offset, body_size=expected["size_physical"] + 1)
        with pytest.raises(DboxCorruptedError):
            await open_mdbox_message(handle, 10_000_000)
        with pytest.raises(ValueError):
            await open_mdbox_message(handle, -1)
        msg = await open_mdbox_message(handle, offset, body_size=expected["size_physical"])
        assert msg.guid == expected["guid"]
    finally:
        await handle.aclose()
