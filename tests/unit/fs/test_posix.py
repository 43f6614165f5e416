"""posix backend specifics: permissions, temp files, fsync policies, batching, fast path."""

from __future__ import annotations

import asyncio
import os
import stat
import time
from pathlib import Path

import pytest

from aiodbox.fs import CreateMode, FsyncPolicy, OpenMode, Perms, open_fs
from aiodbox.fs.backends.local import LocalFS
from aiodbox.fs.backends.posix_threads import ThreadEngine
from aiodbox.fs.paths import TEMP_PREFIX, temp_name


def posix(tmp_path: Path, **options: object) -> LocalFS:
    fs = open_fs("posix", root=str(tmp_path), **options)
    assert isinstance(fs, LocalFS)
    return fs


async def test_created_files_get_mode_and_group(tmp_path: Path) -> None:
    fs = posix(tmp_path)
    gid = 4242 if os.geteuid() == 0 else os.getegid()
    await fs.write_file("d/f", b"x", CreateMode.FAIL_IF_EXISTS, Perms(mode=0o640, gid=gid))
    st = os.stat(tmp_path / "d" / "f")
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_gid == gid
    dst = os.stat(tmp_path / "d")
    assert stat.S_IMODE(dst.st_mode) == 0o750  # search bits follow the read bits
    assert dst.st_gid == gid
    await fs.aclose()


async def test_umask_does_not_narrow_the_requested_mode(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        fs = posix(tmp_path)
        await fs.write_file("f", b"x", perms=Perms(mode=0o644))
        assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o644
        await fs.aclose()
    finally:
        os.umask(old)


async def test_temp_files_are_recognisable_and_hidden(tmp_path: Path) -> None:
    fs = posix(tmp_path)
    h = fs.create("box/u.1")
    await h.write_all(b"y" * 300_000)
    await h.wait_open()
    names = os.listdir(tmp_path / "box")
    assert len(names) == 1 and names[0].startswith(TEMP_PREFIX + str(os.getpid()) + ".")
    assert names[0].endswith(".u.1")
    assert [p async for p in fs.iterate("box")] == []
    await h.aclose()
    await fs.aclose()


async def test_stale_temp_files_are_cleaned(tmp_path: Path) -> None:
    fs = posix(tmp_path)
    (tmp_path / "box").mkdir()
    dead = tmp_path / "box" / temp_name("u.1", 2**22 + 12345)  # no such pid
    dead.write_bytes(b"left by a crashed process")
    old_own = tmp_path / "box" / temp_name("u.2", os.getpid())
    old_own.write_bytes(b"old")
    os.utime(old_own, (time.time() - 7200, time.time() - 7200))
    fresh_own = tmp_path / "box" / temp_name("u.3", os.getpid())
    fresh_own.write_bytes(b"in use")
    (tmp_path / "box" / "u.4").write_bytes(b"a real file")
    removed = await fs.clean_temp("box", older_than=3600)
    assert sorted(removed) == sorted([f"box/{dead.name}", f"box/{old_own.name}"])
    assert sorted(os.listdir(tmp_path / "box")) == sorted([fresh_own.name, "u.4"])
    await fs.aclose()


@pytest.mark.parametrize("policy", list(FsyncPolicy))
async def test_every_fsync_policy_commits(tmp_path: Path, policy: FsyncPolicy) -> None:
    fs = posix(tmp_path, fsync=policy)
    await fs.write_file("a/f", b"data")
    h = fs.open("a/f", OpenMode.APPEND)
    await h.write_all(b"+more")
    await h.acommit()
    await h.aclose()
    await fs.rename("a/f", "b/g")
    assert (tmp_path / "b" / "g").read_bytes() == b"data+more"
    await fs.aclose()


async def test_completions_are_delivered_in_batches(tmp_path: Path) -> None:
    fs = posix(tmp_path, io_threads=4)

    def make_files() -> None:
        for i in range(200):
            (tmp_path / f"f{i}").write_bytes(b"x" * 100)

    await asyncio.to_thread(make_files)
    # (Debug mode makes task creation slow: 100 at once stay under the 50 ms guard.)
    await asyncio.gather(*(fs.stat(f"f{i}") for i in range(100)))
    pool = fs.stats()["posix"]["pool"]
    assert pool["completed"] == pool["submitted"] == 100
    assert pool["wakeups"] < 100, pool  # several completions per loop wake-up
    await fs.aclose()


async def test_cached_reads_take_the_inline_path(tmp_path: Path) -> None:
    data = os.urandom(2 << 20)
    (tmp_path / "big").write_bytes(data)
    fs = posix(tmp_path)
    h = fs.open("big")
    await h.wait_open()
    got = await h.read(4096, 1 << 20)
    assert got == data[1 << 20 : (1 << 20) + 4096]
    stats = fs.stats()["posix"]
    assert stats["inline_hits"] >= 1 and stats["engine_reads"] == 0
    await h.aclose()
    await fs.aclose()


async def test_inline_reads_yield_to_the_loop(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(os.urandom(1 << 20))
    fs = posix(tmp_path, inline_reads_per_tick=8)
    h = fs.open("big")
    await h.wait_open()
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    t = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    start = ticks
    for i in range(200):  # each read is a page-cache hit
        assert len(await h.read(4096, i * 4096)) == 4096
    stop = True
    await t
    assert ticks - start >= 200 // 8 - 1  # the reader gave way at least every 8 hits
    await h.aclose()
    await fs.aclose()


async def test_cold_reads_go_to_the_workers(tmp_path: Path) -> None:
    fs = posix(tmp_path, nowait_reads=False)
    (tmp_path / "big").write_bytes(os.urandom(1 << 20))
    h = fs.open("big")
    assert len(await h.read(4096, 8192)) == 4096
    assert fs.stats()["posix"]["engine_reads"] == 1
    await h.aclose()
    await fs.aclose()


@pytest.mark.parametrize("backend", ["posix", "uring"])
async def test_a_cancelled_reader_does_not_strand_others_at_its_offset(
    tmp_path: Path, backend: str
) -> None:
    # The reader that starts an engine read awaits it directly; one that asks for the
    # same offset meanwhile waits for the input notification.  Cancelling the first must
    # neither strand the second nor lose the data for a later reader.
    fs = open_fs(backend, root=str(tmp_path), nowait_reads=False)
    data = os.urandom(1 << 20)
    (tmp_path / "big").write_bytes(data)
    h = fs.open("big")
    await h.wait_open()
    first = asyncio.ensure_future(h.read(4096, 8192))
    await asyncio.sleep(0)  # the first read is started and awaited
    second = asyncio.ensure_future(h.read(4096, 8192))  # finds it in progress: waits
    first.cancel()  # (cancels the engine read at once, before it can complete)
    assert await asyncio.wait_for(second, 5) == data[8192 : 8192 + 4096]
    assert first.cancelled()
    assert await h.read(4096, 8192) == data[8192 : 8192 + 4096]
    assert await h.read(100, len(data) - 50) == data[-50:]
    await h.aclose()
    await fs.aclose()


async def test_small_files_are_read_whole_by_the_open(tmp_path: Path) -> None:
    (tmp_path / "small").write_bytes(b"s" * 1000)
    fs = posix(tmp_path)
    h = fs.open("small")
    await h.wait_open()
    assert h.fileno() is None  # read whole and closed by the open job
    assert h.pread(5000, 0) == b"s" * 1000
    assert fs.stats()["posix"]["pool"]["submitted"] == 1
    await h.aclose()
    await fs.aclose()


async def test_large_files_keep_a_descriptor_for_sendfile(tmp_path: Path) -> None:
    (tmp_path / "large").write_bytes(b"L" * 200_000)
    fs = posix(tmp_path)
    h = fs.open("large")
    await h.wait_open()
    fd = h.fileno()
    assert fd is not None and os.fstat(fd).st_size == 200_000
    await h.aclose()
    await fs.aclose()


def test_append_commit_failure_leaves_the_file_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "m.1"
    path.write_bytes(b"base")
    fd = os.open(path, os.O_RDWR)
    bad_spill = os.open(tmp_path, os.O_RDONLY)  # a directory: copying from it fails
    try:
        with pytest.raises(OSError):
            ThreadEngine._commit_append(fd, bad_spill, 10, [b"tail"], FsyncPolicy.NEVER)
    finally:
        os.close(fd)
        os.close(bad_spill)
    assert path.read_bytes() == b"base"


async def test_realpath_fallback_without_openat2(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "escape").symlink_to(outside)
    fs = open_fs("posix", root=str(root), use_openat2=False)
    assert isinstance(fs, LocalFS)
    await fs.write_file("a/b", b"ok")
    assert await fs.read_file("a/b") == b"ok"
    with pytest.raises(PermissionError):
        await fs.read_file("escape/anything")
    assert fs.engine.beneath.use_openat2 is False  # type: ignore[attr-defined]
    await fs.aclose()


async def test_concurrent_commits_share_directory_fsyncs(tmp_path: Path) -> None:
    fs = posix(tmp_path, fsync="optimized")
    await asyncio.gather(*(fs.write_file(f"box/u.{i}", b"m" * 100) for i in range(40)))
    stats = fs.stats()["posix"]
    assert stats["dir_fsync_requests"] == 40
    assert 1 <= stats["dir_fsyncs"] <= 40
    assert len(os.listdir(tmp_path / "box")) == 40
    await fs.aclose()
