"""The ``uring`` FS backend: fallback, confinement, fsync policies, group commit, ring use.

The whole FS contract runs on ``uring`` in tests/conformance; these tests check what is
specific to the backend.  Tests that need io_uring skip with the probe's reason where it
is unavailable; the fallback tests run everywhere (they simulate the failure with
``AIODBOX_URING_FORCE_UNAVAILABLE``).
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import resource
import stat
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from aiodbox.fs import (
    CreateMode,
    FsError,
    FsExists,
    FsNotFound,
    FsPermission,
    FsSpecError,
    FsyncPolicy,
    OpenMode,
    Perms,
    open_fs,
)
from aiodbox.fs.backends import uring as uring_mod
from aiodbox.fs.backends.local import LocalFS
from aiodbox.fs.backends.posix_threads import ThreadEngine
from aiodbox.fs.backends.uring import UringFileEngine
from aiodbox.fs.backends.uring_engine import FORCE_UNAVAILABLE_ENV, UringEngine, probe
from aiodbox.fs.paths import TEMP_PREFIX, temp_name
from aiodbox.fs.registry import FsUnavailable


def require_uring() -> None:
    reason = probe()
    if reason is not None:
        pytest.skip(f"io_uring unavailable: {reason}")


def uring(tmp_path: Path, **options: Any) -> LocalFS:
    require_uring()
    fs = open_fs("uring", root=str(tmp_path), **options)
    assert isinstance(fs, LocalFS) and isinstance(fs.engine, UringFileEngine)
    return fs


def engine_of(fs: LocalFS) -> UringFileEngine:
    assert isinstance(fs.engine, UringFileEngine)
    return fs.engine


@pytest.fixture
async def fs(tmp_path: Path) -> AsyncIterator[LocalFS]:
    (tmp_path / "root").mkdir()
    f = uring(tmp_path / "root")
    yield f
    await f.aclose()


@pytest.fixture(autouse=True)
def _short_gc_pauses() -> Iterator[None]:
    """A full GC pass over pytest's heap could trip the 50 ms guard (see test_uring_engine)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def closed(eng: UringEngine) -> bool:
    """(A call, so the type checker does not narrow the property across awaits.)"""
    return eng.closed


class FsyncSpy:
    """Records the fsyncs the backend asks the ring for: (fd, datasync)."""

    def __init__(self, eng: UringEngine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, bool]] = []
        real = eng.ring.prep_fsync

        def spy(token: Any, fd: int, *, datasync: bool = False, sqe_flags: int = 0) -> int:
            self.calls.append((fd, datasync))
            return real(token, fd, datasync=datasync, sqe_flags=sqe_flags)

        monkeypatch.setattr(eng.ring, "prep_fsync", spy)

    def kinds(self, dir_fds: set[int]) -> list[str]:
        out = []
        for fd, datasync in self.calls:
            out.append("dir" if fd in dir_fds else ("fdatasync" if datasync else "fsync"))
        return out


# --- fallback ----------------------------------------------------------------------------


def test_uring_refused_with_the_probe_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(FORCE_UNAVAILABLE_ENV, "seccomp says no (simulated)")
    with pytest.raises(FsUnavailable) as info:
        open_fs("uring", root=str(tmp_path))
    assert isinstance(info.value, FsSpecError)
    message = str(info.value)
    assert "seccomp says no (simulated)" in message and "uring" in message
    assert "auto" in message  # says how to fall back
    with pytest.raises(FsUnavailable):
        open_fs("latency:5ms:uring", root=str(tmp_path))


def test_auto_picks_posix_and_says_why(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(FORCE_UNAVAILABLE_ENV, "kernel.io_uring_disabled=2 (simulated)")
    with caplog.at_level(logging.INFO, logger="aiodbox.fs"):
        fs = open_fs("auto", root=str(tmp_path), io_threads=3, uring_entries=64)
    assert isinstance(fs, LocalFS) and isinstance(fs.engine, ThreadEngine)
    assert fs.name == "posix" and fs.engine.pool.size == 3
    records = [r for r in caplog.records if r.name == "aiodbox.fs"]
    assert len(records) == 1
    assert "posix" in records[0].getMessage()
    assert "kernel.io_uring_disabled=2 (simulated)" in records[0].getMessage()


def test_auto_picks_uring_when_it_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(FORCE_UNAVAILABLE_ENV, raising=False)
    require_uring()
    with caplog.at_level(logging.INFO, logger="aiodbox.fs"):
        fs = open_fs("auto", root=str(tmp_path), use_openat2=True, uring_entries=64)
    assert isinstance(fs, LocalFS) and isinstance(fs.engine, UringFileEngine)
    assert fs.name == "uring"
    assert any("uring" in r.getMessage() for r in caplog.records if r.name == "aiodbox.fs")


def test_uring_needs_a_root_and_checks_options(tmp_path: Path) -> None:
    require_uring()
    with pytest.raises(FsSpecError, match="needs a root"):
        open_fs("uring")
    with pytest.raises(FsSpecError, match="colour"):
        open_fs("uring", root=str(tmp_path), colour="blue")
    fs = open_fs(f"stats:latency:1ms:uring:{tmp_path}")
    assert fs.name == "stats:latency:uring"


# --- reads go through the ring -----------------------------------------------------------


async def test_page_cache_fast_path_then_the_ring(fs: LocalFS, tmp_path: Path) -> None:
    """By default cached data is copied by preadv(RWF_NOWAIT); a miss is a ring read."""
    data = os.urandom(1 << 20)
    path = tmp_path / "root" / "big"

    def write() -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    await asyncio.to_thread(write)
    h = fs.open("big")
    await h.wait_open()
    fd = h.fileno()
    assert fd is not None
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
    assert await h.read(4096, 4096 * 7) == data[4096 * 7 : 4096 * 8]  # cold: the ring
    assert fs.stats()["uring"]["ring_reads"] == 1
    hits = fs.stats()["uring"]["inline_hits"]
    again = fs.open("big")  # a second handle: nothing of its own cached
    await again.wait_open()
    assert await again.read(4096, 4096 * 7) == data[4096 * 7 : 4096 * 8]  # page cache
    stats = fs.stats()["uring"]
    assert stats["ring_reads"] == 1 and stats["inline_hits"] == hits + 1
    await again.aclose()
    await h.aclose()


async def test_reads_go_through_the_ring_never_preadv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the fast path, cached data comes back from the ring synchronously
    (read_now), not via preadv."""
    (tmp_path / "root").mkdir()
    fs = uring(tmp_path / "root", uring_page_cache_fast_path=False)
    data = os.urandom(1 << 20)
    (tmp_path / "root" / "big").write_bytes(data)

    def no_preadv(*args: object) -> int:
        raise AssertionError("preadv on the loop thread")

    monkeypatch.setattr(os, "preadv", no_preadv)
    h = fs.open("big")
    await h.wait_open()
    ring = engine_of(fs).ring_engine()
    sqes, submits = ring.stats.sqes, ring.stats.submits
    assert await h.read(4096, 4096 * 7) == data[4096 * 7 : 4096 * 8]
    assert await h.read(100, 500_000) == data[500_000:500_100]
    stats = fs.stats()["uring"]
    assert stats["ring_reads"] == 2
    assert stats["inline_hits"] + stats["engine_reads"] == 2
    assert ring.stats.sqes - sqes == 2 and ring.stats.submits - submits == 2
    assert await h.read(10, len(data)) == b""  # EOF is reported (once per read)
    await h.aclose()
    await fs.aclose()


async def test_without_immediate_reads_every_read_is_a_batched_submission(
    tmp_path: Path,
) -> None:
    data = os.urandom(1 << 20)
    (tmp_path / "big").write_bytes(data)
    fs = uring(tmp_path, nowait_reads=False)
    h = fs.open("big")
    await h.wait_open()
    ring = engine_of(fs).ring_engine()
    submits = ring.stats.submits
    offsets = [4096 * i for i in range(0, 256, 16)]
    got = await asyncio.gather(*(h.read(4096, off) for off in offsets))
    assert got == [data[off : off + 4096] for off in offsets]
    stats = fs.stats()["uring"]
    assert stats["inline_hits"] == 0 and stats["engine_reads"] == len(offsets)
    assert ring.stats.submits - submits < len(offsets)  # reads of one iteration share one
    assert await h.read(10, len(data)) == b""
    await h.aclose()
    await fs.aclose()


async def test_a_read_the_page_cache_cannot_serve_stays_in_flight(tmp_path: Path) -> None:
    """read_now submits at once; a miss is the background read itself, not a retry."""
    data = os.urandom(256 * 1024)
    path = tmp_path / "cold"
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fs = uring(tmp_path, uring_page_cache_fast_path=False)
    h = fs.open("cold")
    await h.wait_open()
    fd = h.fileno()
    assert fd is not None
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # clean pages: dropped
    ring = engine_of(fs).ring_engine()
    sqes = ring.stats.sqes
    for i in range(8):
        assert await h.read(4096, i * 32768) == data[i * 32768 : i * 32768 + 4096]
    stats = fs.stats()["uring"]
    assert stats["ring_reads"] == 8 and ring.stats.sqes - sqes == 8  # one SQE per read
    assert stats["inline_hits"] + stats["engine_reads"] == 8
    assert stats["engine_reads"] >= 1  # at least the first read went to the disk
    await h.aclose()
    await fs.aclose()


async def test_small_file_is_one_chain_and_one_submission(fs: LocalFS, tmp_path: Path) -> None:
    (tmp_path / "root" / "small").write_bytes(b"s" * 1000)
    await fs.stat("")  # the root fd is open now
    eng = engine_of(fs).ring_engine()
    if not eng.direct_descriptors:
        pytest.skip("the kernel has no direct descriptors (Linux < 5.19)")
    fds = open_fds()
    submits, sqes = eng.stats.submits, eng.stats.sqes
    h = fs.open("small")
    await h.wait_open()
    assert eng.stats.submits - submits == 1
    assert eng.stats.sqes - sqes == 3  # openat2 -> read -> close
    assert h.fileno() is None  # no fd ever existed in the process
    assert open_fds() == fds
    assert h.pread(5000, 0) == b"s" * 1000
    await h.aclose()


async def test_large_file_keeps_a_descriptor_and_its_size(fs: LocalFS, tmp_path: Path) -> None:
    (tmp_path / "root" / "large").write_bytes(b"L" * 200_000)
    h = fs.open("large")
    await h.wait_open()
    fd = h.fileno()
    assert fd is not None and os.fstat(fd).st_size == 200_000
    assert h.size == 200_000
    assert await h.read_exactly(10, 199_990) == b"L" * 10
    await h.aclose()


async def test_directories_cannot_be_read_or_appended(fs: LocalFS, tmp_path: Path) -> None:
    (tmp_path / "root" / "d").mkdir()
    for mode in (OpenMode.READONLY, OpenMode.APPEND):
        h = fs.open("d", mode)
        with pytest.raises(FsError) as info:
            await h.read(1, 0)
        assert info.value.errno == errno.EISDIR
        await h.aclose()


# --- confinement -------------------------------------------------------------------------


async def test_symlinks_leading_out_are_refused_everywhere(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret").write_bytes(b"secret")
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    (root / "inside" / "ok").write_bytes(b"ok")
    (root / "out").symlink_to(outside)
    (root / "out-file").symlink_to(outside / "secret")
    (root / "in").symlink_to("inside")  # relative, stays within the root: fine
    (root / "abs").symlink_to(root / "inside")  # absolute: refused, as openat2 does for posix
    fs = uring(root)
    try:
        assert await fs.read_file("in/ok") == b"ok"
        assert (await fs.stat("in")).is_dir
        with pytest.raises(FsPermission):
            await fs.read_file("abs/ok")
        for path in ("out/secret", "out-file"):
            with pytest.raises(FsPermission):
                await fs.read_file(path)
            with pytest.raises(FsPermission):
                await fs.stat(path)
            h = fs.open(path, OpenMode.APPEND)
            with pytest.raises(FsPermission):
                await h.wait_open()
            await h.aclose()
        with pytest.raises(FsPermission):
            await fs.write_file("out/new", b"x")
        with pytest.raises(FsPermission):
            await fs.mkdir("out/sub/deeper")
        with pytest.raises(FsPermission):
            await fs.delete("out/secret")
        with pytest.raises(FsPermission):
            await fs.rename("inside/ok", "out/stolen")
        with pytest.raises(FsPermission):
            await fs.rmdir("out/sub")
        with pytest.raises(FsPermission):
            [p async for p in fs.iterate("out")]
        for bad in ("../outside/secret", "inside/../../outside/secret", "/etc/passwd"):
            with pytest.raises(FsPermission):
                await fs.read_file(bad)
    finally:
        await fs.aclose()
    assert sorted(os.listdir(outside)) == ["secret", "sub"]
    assert os.listdir(outside / "sub") == []
    assert (root / "inside" / "ok").read_bytes() == b"ok"


# --- creating: permissions, temp files, commits ------------------------------------------


async def test_created_files_get_mode_and_group(tmp_path: Path) -> None:
    fs = uring(tmp_path)
    gid = 4242 if os.geteuid() == 0 else os.getegid()
    await fs.write_file("d/f", b"x", CreateMode.FAIL_IF_EXISTS, Perms(mode=0o640, gid=gid))
    st = os.stat(tmp_path / "d" / "f")
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == gid
    dst = os.stat(tmp_path / "d")
    assert stat.S_IMODE(dst.st_mode) == 0o750 and dst.st_gid == gid
    await fs.aclose()


async def test_umask_does_not_narrow_the_requested_mode(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        fs = uring(tmp_path)
        await fs.write_file("f", b"x", perms=Perms(mode=0o644))
        await fs.write_file("g", b"y", perms=Perms(mode=0o600))
        assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o644
        assert stat.S_IMODE(os.stat(tmp_path / "g").st_mode) == 0o600
        assert engine_of(fs).helper_jobs == 1  # only the mode the umask narrowed
        await fs.aclose()
    finally:
        os.umask(old)


async def test_temp_files_are_recognisable_hidden_and_cleaned(fs: LocalFS, tmp_path: Path) -> None:
    box = tmp_path / "root" / "box"
    h = fs.create("box/u.1")
    await h.write_all(b"y" * 300_000)
    await h.wait_open()
    names = os.listdir(box)
    assert len(names) == 1 and names[0].startswith(f"{TEMP_PREFIX}{os.getpid()}.")
    assert [p async for p in fs.iterate("box")] == []
    await h.aclose()
    assert os.listdir(box) == []
    dead = box / temp_name("u.2", 2**22 + 12345)  # no such pid
    dead.write_bytes(b"left by a crashed process")
    fresh = box / temp_name("u.3", os.getpid())
    fresh.write_bytes(b"in use")
    (box / "u.4").write_bytes(b"real")
    assert await fs.clean_temp("box") == [f"box/{dead.name}"]
    assert sorted(os.listdir(box)) == sorted([fresh.name, "u.4"])


async def test_failed_fail_if_exists_commit_keeps_the_data_for_another_name(
    fs: LocalFS, tmp_path: Path
) -> None:
    """A failed rename must not be followed by anything destructive in the chain."""
    await fs.write_file("taken", b"old")
    h = fs.create("new")
    await h.write_all(b"payload")
    with pytest.raises(FsExists):
        await h.acommit("taken")
    assert [n for n in os.listdir(tmp_path / "root") if n.startswith(TEMP_PREFIX)]
    await h.acommit("free")
    await h.aclose()
    assert await fs.read_file("free") == b"payload"
    assert await fs.read_file("taken") == b"old"
    assert sorted(os.listdir(tmp_path / "root")) == ["free", "taken"]


async def test_without_rename_noreplace_the_commit_links(
    fs: LocalFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A filesystem refusing RENAME_NOREPLACE (EINVAL) falls back to link + unlink."""
    monkeypatch.setattr(uring_mod, "_RENAME_NOREPLACE", 1 << 30)  # EINVAL from the kernel
    await fs.write_file("taken", b"old")
    h = fs.create("f")
    await h.write_all(b"first")
    await h.acommit()
    await h.aclose()
    assert engine_of(fs)._noreplace is False
    with pytest.raises(FsExists):
        await fs.write_file("taken", b"new", CreateMode.FAIL_IF_EXISTS)
    await fs.write_file("g", b"second", CreateMode.FAIL_IF_EXISTS)
    assert await fs.read_file("f") == b"first"
    assert await fs.read_file("g") == b"second"
    assert await fs.read_file("taken") == b"old"
    assert sorted(os.listdir(tmp_path / "root")) == ["f", "g", "taken"]


async def test_short_write_fails_the_commit_and_shows_nothing(fs: LocalFS, tmp_path: Path) -> None:
    """RLIMIT_FSIZE makes the kernel write only part: the chain stops before the rename."""
    await fs.stat("")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    limit = 64 * 1024
    h = fs.create("big")
    await h.wait_open()
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        h.write(b"z" * 100_000)  # under half the write buffer: all goes in the commit
        with pytest.raises(FsError) as info:
            await h.acommit()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert info.value.errno == errno.EFBIG
    assert not await fs.exists("big")
    await h.aclose()
    assert os.listdir(tmp_path / "root") == []


async def test_a_staged_file_is_one_chain_and_one_submission(
    fs: LocalFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    await fs.write_file("d/first", b"1")  # the root is open and the umask known now
    eng = engine_of(fs).ring_engine()
    if not eng.direct_descriptors:
        pytest.skip("the kernel has no direct descriptors (Linux < 5.19)")
    spy = FsyncSpy(eng, monkeypatch)
    fds = open_fds()
    submits, sqes = eng.stats.submits, eng.stats.sqes
    staged = await fs.stage_file("d", b"staged")
    assert staged is not None
    assert eng.stats.submits - submits == 1
    assert eng.stats.sqes - sqes == 4  # openat2 -> write -> fsync -> close
    assert len(spy.calls) == 1  # the file's own fsync (the directory's comes at naming)
    assert open_fds() == fds  # no fd ever existed in the process
    await asyncio.to_thread(staged.publish_blocking, "u.1")
    await asyncio.to_thread(staged.sync_directory_blocking)
    assert (tmp_path / "root" / "d" / "u.1").read_bytes() == b"staged"
    # A missing directory: the chain's open finds none, and the steps make it.
    other = await fs.stage_file("e/f", b"x")
    assert other is not None
    await other.discard()
    assert os.listdir(tmp_path / "root" / "e" / "f") == []


async def test_a_staged_file_written_short_fails_and_leaves_nothing(
    fs: LocalFS, tmp_path: Path
) -> None:
    """RLIMIT_FSIZE makes the kernel write only part: the chain's fsync is skipped, the
    file removed, and the steps' own write fails with EFBIG."""
    await fs.write_file("d/first", b"1")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
    try:
        with pytest.raises(FsError) as info:
            await fs.stage_file("d", b"z" * 100_000)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert info.value.errno == errno.EFBIG
    assert os.listdir(tmp_path / "root" / "d") == ["first"]


# --- fsync policies and group commit -----------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (FsyncPolicy.ALWAYS, ["fsync", "dir"]),
        (FsyncPolicy.OPTIMIZED, ["fdatasync", "dir"]),
        (FsyncPolicy.NEVER, []),
    ],
)
async def test_fsync_policy_of_a_create(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policy: FsyncPolicy, expected: list[str]
) -> None:
    fs = uring(tmp_path, fsync=policy)
    await fs.mkdir("a")
    eng = engine_of(fs)
    spy = FsyncSpy(eng.ring_engine(), monkeypatch)
    h = fs.create("a/f")
    await h.write_all(b"data")
    await h.wait_open()
    dir_fd = eng._temp_dirs[h._fd]  # type: ignore[attr-defined]
    await h.acommit()
    assert spy.kinds({dir_fd}) == expected
    await h.aclose()
    assert (tmp_path / "a" / "f").read_bytes() == b"data"
    await fs.aclose()


@pytest.mark.parametrize(
    ("policy", "append", "delete", "rename"),
    [
        (FsyncPolicy.ALWAYS, ["fsync"], 1, 2),
        (FsyncPolicy.OPTIMIZED, ["fdatasync"], 0, 1),
        (FsyncPolicy.NEVER, [], 0, 0),
    ],
)
async def test_fsync_policy_of_appends_deletes_and_renames(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    policy: FsyncPolicy,
    append: list[str],
    delete: int,
    rename: int,
) -> None:
    """Same rules as posix: directory fsyncs for new names; deletes only with ALWAYS;
    the source directory of a cross-directory rename only with ALWAYS."""
    fs = uring(tmp_path, fsync=policy)
    await fs.write_file("a/f", b"data")
    await fs.write_file("a/g", b"gone")
    eng = engine_of(fs)
    spy = FsyncSpy(eng.ring_engine(), monkeypatch)
    h = fs.open("a/f", OpenMode.APPEND)
    await h.wait_open()
    await h.write_all(b"+more")
    await h.acommit()
    assert spy.kinds(set()) == append
    await h.aclose()
    before = eng.dirsync.fsyncs
    await fs.delete("a/g")
    assert eng.dirsync.fsyncs - before == delete
    before = eng.dirsync.fsyncs
    await fs.rename("a/f", "b/h")
    assert eng.dirsync.fsyncs - before == rename
    assert (tmp_path / "b" / "h").read_bytes() == b"data+more"
    await fs.aclose()


async def test_concurrent_commits_share_directory_fsyncs(tmp_path: Path) -> None:
    fs = uring(tmp_path, fsync="optimized")
    await fs.mkdir("box")
    n = 40
    handles = []
    for i in range(n):
        h = fs.create(f"box/u.{i}")
        h.write(b"m" * 100)
        handles.append(h)
    for h in handles:
        await h.wait_open()
    await asyncio.gather(*(h.acommit() for h in handles))
    for h in handles:
        await h.aclose()
    stats = fs.stats()["uring"]
    assert stats["dir_fsync_requests"] == n
    assert 1 <= stats["dir_fsyncs_chained"] <= stats["dir_fsyncs"]
    assert stats["dir_fsyncs"] <= n // 4, stats  # commits in flight together share them
    assert len(os.listdir(tmp_path / "box")) == n
    await fs.aclose()


async def test_group_commit_never_serves_a_request_with_an_earlier_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request made while an fsync runs waits for the next one (started after it)."""
    fs = uring(tmp_path)
    await fs.mkdir("d")
    eng = engine_of(fs)
    ring = eng.ring_engine()
    order: list[str] = []
    spy = FsyncSpy(ring, monkeypatch)
    dfd = await eng._open_dir("test", "d")
    first = eng.dirsync.sync("d", dfd)
    order.append("requested-2")
    second = eng.dirsync.sync("d", dfd)
    third = eng.dirsync.sync("d", dfd)
    first.add_done_callback(lambda _f: order.append("done-1"))
    second.add_done_callback(lambda _f: order.append("done-2"))
    await asyncio.gather(first, second, third)
    # One fsync served the first request; the two made while it ran share a second one.
    assert len(spy.calls) == 2
    assert order == ["requested-2", "done-1", "done-2"]
    assert eng.dirsync.requests == 3 and eng.dirsync.fsyncs == 2
    ring.close_soon(dfd)
    await fs.aclose()


# --- append handles: spill file, rollback ------------------------------------------------


async def test_append_spill_commit_and_rollback(tmp_path: Path) -> None:
    fs = uring(tmp_path, write_buffer_size=4096)
    await fs.write_file("m.1", b"HEAD")
    h = fs.open("m.1", OpenMode.APPEND)
    await h.wait_open()
    assert h.try_lock()
    await h.write_all(b"a" * 50_000)  # most of it goes to the O_TMPFILE spill file
    await h.acommit()
    assert (tmp_path / "m.1").read_bytes() == b"HEAD" + b"a" * 50_000
    await h.write_all(b"b" * 50_000)
    await asyncio.sleep(0.01)
    h.rollback()  # truncates the spill file (IORING_OP_FTRUNCATE or a helper)
    await h.write_all(b"c" * 10)
    await h.acommit()
    await h.aclose()
    assert (tmp_path / "m.1").read_bytes() == b"HEAD" + b"a" * 50_000 + b"c" * 10
    assert os.listdir(tmp_path) == ["m.1"]
    await fs.aclose()


# --- lifecycle ---------------------------------------------------------------------------


async def test_filesystems_on_one_loop_share_one_ring_and_aclose_releases(
    tmp_path: Path,
) -> None:
    fds = open_fds()
    a = uring(tmp_path / "a", uring_entries=64)
    b = uring(tmp_path / "b", uring_entries=128)  # the first FS on the loop sized the ring
    await a.write_file("x", b"1")
    await b.write_file("y", b"2")
    ring = engine_of(a).ring_engine()
    assert engine_of(b).ring_engine() is ring and ring.ring.sq_entries == 64
    h = a.create("left-open")  # its temp file's directory fd is closed by aclose
    await h.wait_open()
    await a.aclose()
    assert not closed(ring)  # b still uses it
    assert await b.read_file("y") == b"2"
    await b.aclose()
    assert closed(ring)
    await h.aclose()  # after its FS: the descriptor is closed without a ring
    assert open_fds() == fds
    with pytest.raises(FsError):
        await a.read_file("x")


async def test_cancelled_operations_leak_no_descriptors(fs: LocalFS, tmp_path: Path) -> None:
    (tmp_path / "root" / "d").mkdir()
    (tmp_path / "root" / "d" / "f").write_bytes(b"x")
    await fs.stat("d/f")
    fds = open_fds()
    for i in range(30):  # cancel after 0..5 loop iterations: at every step of the ops
        for coro in (fs.stat("d/f"), fs.rename("d/f", "d/f"), fs.read_file("d/f")):
            task = asyncio.ensure_future(coro)
            for _ in range(i % 6):
                await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
    await engine_of(fs).ring_engine().drain()
    await asyncio.sleep(0.01)
    await engine_of(fs).ring_engine().drain()
    assert open_fds() == fds


async def test_errors_carry_op_path_errno(fs: LocalFS) -> None:
    with pytest.raises(FsNotFound) as info:
        await fs.stat("nope/x")
    assert (info.value.op, info.value.path, info.value.errno) == ("stat", "nope/x", errno.ENOENT)
    with pytest.raises(FsNotFound):
        await fs.rmdir("nope")
    await fs.mkdir("full")
    await fs.write_file("full/f", b"")
    with pytest.raises(FsError) as full:
        await fs.rmdir("full")
    assert full.value.errno == errno.ENOTEMPTY
    with pytest.raises(FsExists):
        await fs.link("full/f", "full/f")


def test_a_ring_of_a_closed_loop_is_torn_down_by_the_next_loop(tmp_path: Path) -> None:
    require_uring()
    rings: list[UringEngine] = []

    async def use_without_closing(name: str) -> None:
        fs = open_fs("uring", root=str(tmp_path))
        await fs.write_file(name, b"x")
        assert isinstance(fs, LocalFS)
        rings.append(engine_of(fs).ring_engine())

    asyncio.run(use_without_closing("one"))
    assert not closed(rings[0])  # nobody closed it; its loop is gone
    asyncio.run(use_without_closing("two"))
    assert closed(rings[0]) and rings[1] is not rings[0]
    assert sorted(os.listdir(tmp_path)) == ["one", "two"]
    rings[1].abandon()


async def test_a_forked_child_gets_a_ring_of_its_own(fs: LocalFS, tmp_path: Path) -> None:
    """``--workers``: an FS bound to the parent's ring keeps working in a forked child."""
    await fs.write_file("f", b"parent")
    parent_ring = engine_of(fs).ring_engine()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # the child: a new loop, never return into pytest
        code = 1
        try:

            async def child() -> int:
                assert await fs.read_file("f") == b"parent"
                await fs.write_file("g", b"child")
                ring = engine_of(fs).ring_engine()
                ok = ring is not parent_ring and not ring.forked and parent_ring.forked
                await fs.aclose()
                return 0 if ok else 4

            code = asyncio.run(child())
        finally:
            os._exit(code)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not parent_ring.forked and not parent_ring.closed
    assert await fs.read_file("g") == b"child"  # the parent's ring still works


async def test_small_files_are_read_together_in_one_submission(fs: LocalFS, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "d").mkdir()
    (root / "d" / "a").write_bytes(b"a" * 100)
    (root / "d" / "b").write_bytes(b"")
    (root / "d" / "big").write_bytes(b"B" * 5000)
    await fs.stat("")
    eng = engine_of(fs)
    ring = eng.ring_engine()
    if not ring.direct_descriptors:
        pytest.skip("the kernel has no direct descriptors (Linux < 5.19)")
    fds, submits = open_fds(), ring.stats.submits
    got = await eng.read_small(["d/a", "d/b", "d/big", "d/missing", "d"], 4096)
    assert got[:3] == [b"a" * 100, b"", None]
    assert isinstance(got[3], FileNotFoundError)
    assert isinstance(got[4], IsADirectoryError)
    assert ring.stats.submits - submits == 1  # five chains, one io_uring_enter
    assert open_fds() == fds


async def test_a_create_whose_directory_appeared_meanwhile_keeps_its_temp_file(
    fs: LocalFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A create opens its directory and creates the temp file in one submission, two
    # unlinked operations.  When another create makes the missing directory between them,
    # the directory open fails (ENOENT) but the file is created: the retry must keep that
    # file, not create the same temp name again (EEXIST: the create failed, and with it
    # the first save of four sessions appending to a new mdbox user).
    (tmp_path / "root" / "d").mkdir()
    await fs.write_file("first", b"")  # the root is open: creates take the one-submission way
    eng = engine_of(fs).ring_engine()
    real = eng.ring.prep_openat2
    raced = []

    def directory_not_yet_there(token: Any, path: bytes, flags: int, *a: Any, **k: Any) -> int:
        op, step = token
        chain = step == 0 and len(op.results) == 2
        if chain and path == b"d" and flags & os.O_DIRECTORY and not raced:
            raced.append(path)
            path = b"not-yet"  # as if the directory did not exist when this step ran
        return real(token, path, flags, *a, **k)

    monkeypatch.setattr(eng.ring, "prep_openat2", directory_not_yet_there)
    await fs.write_file("d/f", b"data")
    assert raced == [b"d"]
    assert (tmp_path / "root" / "d" / "f").read_bytes() == b"data"
    assert os.listdir(tmp_path / "root" / "d") == ["f"]  # no temp file left behind
