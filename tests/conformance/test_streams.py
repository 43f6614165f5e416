"""Input and output streams, on every backend and stack (see conftest)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from aiodbox.fs import FS, FsExists
from aiodbox.streams import InputStream, OutputStream, UnexpectedEOF, window

DATA = os.urandom(300_000)


async def put(fs: FS, path: str, data: bytes) -> None:
    await fs.write_file(path, data)


async def test_stream_reads_the_whole_file_in_readahead_chunks(fs: FS) -> None:
    await put(fs, "f", DATA)
    h = fs.open("f")
    stream = InputStream(h, readahead=16_384)
    chunks = [c async for c in stream]
    assert b"".join(chunks) == DATA
    assert max(len(c) for c in chunks) <= 16_384
    assert stream.read() == b""
    await h.aclose()


async def test_stream_created_before_open_finishes_and_uses_callbacks(fs: FS) -> None:
    await put(fs, "f", DATA)
    h = fs.open("f")
    stream = InputStream(h)
    with pytest.raises(BlockingIOError):
        stream.read()
    readable = asyncio.Event()
    stream.set_readable_callback(readable.set)
    got = bytearray()
    while True:
        try:
            chunk = stream.read(1000)
        except BlockingIOError:
            await asyncio.wait_for(readable.wait(), 5)
            readable.clear()
            continue
        if not chunk:
            break
        assert len(chunk) <= 1000
        got += chunk
    assert bytes(got) == DATA
    await h.aclose()


async def test_missing_file_surfaces_as_file_not_found_on_read(fs: FS) -> None:
    h = fs.open("missing")
    stream = InputStream(h)
    with pytest.raises(FileNotFoundError):
        await stream.aread()
    await h.aclose()


async def test_window_reads_exactly_one_message_inside_a_file(fs: FS) -> None:
    await put(fs, "m.1", DATA)
    h = fs.open("m.1")
    streams = [window(h, off, 5000, readahead=1024) for off in (0, 77_777, 294_999)]
    results = await asyncio.gather(*(s.read_all(10_000) for s in streams))
    assert results == [DATA[0:5000], DATA[77_777:82_777], DATA[294_999:299_999]]
    assert all(s.eof for s in streams)
    await h.aclose()


async def test_window_past_the_end_of_file_is_unexpected_eof(fs: FS) -> None:
    await put(fs, "short", b"0123456789")
    h = fs.open("short")
    with pytest.raises(UnexpectedEOF):
        await window(h, 5, 100).read_all(1000)
    await h.aclose()


async def test_read_all_refuses_more_than_its_limit(fs: FS) -> None:
    await put(fs, "f", DATA)
    h = fs.open("f")
    with pytest.raises(ValueError):
        await InputStream(h).read_all(1000)
    await h.aclose()


async def test_unread_pushes_bytes_back(fs: FS) -> None:
    await put(fs, "f", b"abcdef")
    h = fs.open("f")
    s = InputStream(h)
    first = await s.aread()
    s.unread(first[2:])
    assert s.offset == 2
    assert await s.read_all(100) == b"cdef"
    await h.aclose()


async def test_output_stream_back_pressure_finish_with_name(make_fs: Callable[..., FS]) -> None:
    fs = make_fs(write_buffer_size=8192)
    h = fs.create("box/tmp")
    out = OutputStream(h)
    flushed = asyncio.Event()
    out.set_flush_callback(flushed.set)
    view = memoryview(DATA)
    blocked = 0
    while view:
        try:
            n = out.write(view)
        except BlockingIOError:
            blocked += 1
            await asyncio.wait_for(flushed.wait(), 5)
            flushed.clear()
            continue
        view = view[n:]
    assert blocked > 0
    assert out.bytes_written == len(DATA)
    await out.finish("u.1")
    await h.aclose()
    assert await fs.read_file("box/u.1") == DATA
    await fs.aclose()


async def test_output_stream_abort_and_finish_conflict(fs: FS) -> None:
    await put(fs, "taken", b"x")
    h = fs.create("tmp")
    out = OutputStream(h)
    await out.write_all(b"discarded")
    out.abort()
    await out.write_all(b"kept")
    await out.drain()
    with pytest.raises(FsExists):
        await out.finish("taken")
    await out.finish("free")
    await h.aclose()
    assert await fs.read_file("free") == b"kept"
    assert await fs.read_file("taken") == b"x"
