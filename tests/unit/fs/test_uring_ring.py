"""The ctypes io_uring binding on its own: setup, SQE layout per opcode, wrap-around, links.

These tests drive the ring synchronously (``submit(wait_nr=...)`` blocks in the kernel), so
they need no event loop.  They skip, stating the probe's reason, only where io_uring is
unavailable; the probe and refusal tests run everywhere.
"""

from __future__ import annotations

import ctypes
import errno
import os
import random
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aiodbox.fs.backends import uring_ring
from aiodbox.fs.backends.uring_ring import (
    AT_REMOVEDIR,
    FORCE_UNAVAILABLE_ENV,
    IORING_FEAT_LINKED_FILE,
    IORING_FEAT_NODROP,
    IOSQE_FIXED_FILE,
    IOSQE_IO_HARDLINK,
    IOSQE_IO_LINK,
    REQUIRED_OPS,
    RESOLVE_BENEATH,
    RESOLVE_NO_MAGICLINKS,
    Op,
    Ring,
    RingFullError,
    UringUnavailable,
    probe,
)

BLOCK = 4096


@pytest.fixture
def ring() -> Iterator[Ring[Any]]:
    reason = probe()
    if reason is not None:
        pytest.skip(f"io_uring unavailable: {reason}")
    r: Ring[Any] = Ring(8)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def fresh_probe() -> Iterator[None]:
    """Forget the cached kernel probe before and after a test that fakes a failure."""
    uring_ring._probe_kernel.cache_clear()
    yield
    uring_ring._probe_kernel.cache_clear()


@pytest.fixture
def blocks_file(tmp_path: Path) -> Path:
    """64 blocks of 4 KiB; block i is the 8-byte big-endian i, repeated."""
    path = tmp_path / "blocks"
    path.write_bytes(b"".join(struct.pack(">Q", i) * (BLOCK // 8) for i in range(64)))
    return path


def run(ring: Ring[Any], wait_nr: int) -> list[tuple[Any, int, int]]:
    ring.submit(wait_nr=wait_nr)
    return ring.reap()


# --- setup ---------------------------------------------------------------------------------


def test_setup_reports_the_kernel_geometry(ring: Ring[Any]) -> None:
    assert ring.sq_entries == 8
    assert ring.cq_entries == 16
    assert ring.features & IORING_FEAT_NODROP
    assert not os.get_inheritable(ring.fd)
    assert ring.in_flight == 0 and ring.sq_space == 8 and ring.unsubmitted == 0


def test_entries_round_up_to_a_power_of_two(ring: Ring[Any]) -> None:
    r: Ring[Any] = Ring(5)
    try:
        assert r.sq_entries == 8
    finally:
        r.close()


@pytest.mark.parametrize("entries", [0, -1, 32769])
def test_entries_out_of_range_are_rejected(ring: Ring[Any], entries: int) -> None:
    with pytest.raises(ValueError, match="entries"):
        Ring(entries)


def test_kernel_supports_every_required_opcode(ring: Ring[Any]) -> None:
    supported = ring.probe_opcodes()
    assert set(REQUIRED_OPS) <= supported
    assert Op.NOP in supported


def test_close_is_idempotent_and_final(ring: Ring[Any]) -> None:
    fd = ring.fd
    ring.close()
    ring.close()
    assert ring.closed
    with pytest.raises(OSError):
        os.fstat(fd)
    with pytest.raises(ValueError, match="closed"):
        ring.prep_nop("x")
    assert ring.reap() == []


# --- submission and completion -------------------------------------------------------------


def test_nop_hands_back_its_token(ring: Ring[Any]) -> None:
    ring.prep_nop("first")
    ring.prep_nop("second")
    assert ring.unsubmitted == 2 and ring.in_flight == 2
    done = run(ring, 2)
    assert sorted((token, res) for token, res, _ in done) == [("first", 0), ("second", 0)]
    assert ring.in_flight == 0 and ring.unsubmitted == 0


def test_full_ring_refuses_instead_of_overwriting(ring: Ring[Any]) -> None:
    for i in range(8):
        ring.prep_nop(i)
    with pytest.raises(RingFullError):
        ring.prep_nop("one too many")
    assert sorted(token for token, _, _ in run(ring, 8)) == list(range(8))
    ring.prep_nop("again")
    assert [t for t, _, _ in run(ring, 1)] == ["again"]


def test_wraps_around_thousands_of_times_without_losing_or_zeroing(
    blocks_file: Path,
) -> None:
    """Random batch sizes walk head and tail across the index mask again and again."""
    reason = probe()
    if reason is not None:
        pytest.skip(f"io_uring unavailable: {reason}")
    r: Ring[Any] = Ring(4)
    fd = os.open(blocks_file, os.O_RDONLY)
    rng = random.Random(7)
    total = 0
    try:
        while total < 4 * 2000:  # 2000 times the ring size
            batch = rng.randint(1, 4)
            bufs = {}
            for _ in range(batch):
                block = rng.randrange(64)
                buf = ctypes.create_string_buffer(BLOCK)
                key = (total, block)
                bufs[key] = buf
                r.prep_read(key, fd, buf, block * BLOCK)
                total += 1
            done = run(r, batch)
            assert len(done) == batch
            for key, res, _flags in done:
                assert isinstance(key, tuple)
                assert res == BLOCK
                data = bufs.pop(key).raw
                assert data == struct.pack(">Q", key[1]) * (BLOCK // 8)
            assert not bufs
        assert r.in_flight == 0
        assert r.cq_overflow == 0
        assert r.peak_in_flight == 4
    finally:
        os.close(fd)
        r.close()


def test_completion_queue_overflow_is_flushed_not_dropped(ring: Ring[Any]) -> None:
    """24 completions into a 16-entry CQ: the kernel parks 8 and reap() fetches them."""
    for round_ in range(3):
        for i in range(8):
            ring.prep_nop((round_, i))
        ring.submit(wait_nr=0 if round_ < 2 else 8)
    done = ring.reap()
    assert sorted(token for token, _, _ in done) == [(r, i) for r in range(3) for i in range(8)]
    assert ring.cq_overflow == 0 and ring.in_flight == 0


def test_eventfd_is_signalled_on_completion(ring: Ring[Any]) -> None:
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    try:
        ring.register_eventfd(efd)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(efd)
        ring.prep_nop("n")
        run(ring, 1)
        assert os.eventfd_read(efd) >= 1
        ring.unregister_eventfd()
        ring.prep_nop("m")
        run(ring, 1)
        with pytest.raises(BlockingIOError):
            os.eventfd_read(efd)
    finally:
        os.close(efd)


# --- operations ----------------------------------------------------------------------------


def test_file_operations_through_the_ring(ring: Ring[Any], tmp_path: Path) -> None:
    path = bytes(tmp_path / "f")
    ring.prep_openat("open", path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o640)
    [(_, fd, _)] = run(ring, 1)
    assert fd >= 0
    try:
        ring.prep_write("w", fd, b"hello ring", 0, sqe_flags=IOSQE_IO_LINK)
        ring.prep_fsync("s", fd, datasync=True)
        assert sorted((t, r) for t, r, _ in run(ring, 2)) == [("s", 0), ("w", 10)]
        buf = bytearray(32)
        ring.prep_read("r", fd, buf, 6)
        assert run(ring, 1)[0][1] == 4
        assert bytes(buf[:4]) == b"ring"
        statx = ctypes.create_string_buffer(256)
        ring.prep_statx("st", path, statx)
        assert run(ring, 1)[0][1] == 0
        assert struct.unpack_from("=Q", statx, 0x28)[0] == 10  # stx_size
        assert struct.unpack_from("=H", statx, 0x1C)[0] & 0o777 == 0o640  # stx_mode
    finally:
        ring.prep_close("c", fd)
        assert run(ring, 1)[0][1] == 0
    other, sub = bytes(tmp_path / "g"), bytes(tmp_path / "d")
    ring.prep_linkat("l", path, other)
    ring.prep_mkdirat("m", sub, 0o700)
    assert sorted(r for _, r, _ in run(ring, 2)) == [0, 0]
    ring.prep_linkat("l2", path, other)
    assert run(ring, 1)[0][1] == -errno.EEXIST
    ring.prep_renameat("mv", other, bytes(tmp_path / "h"))
    ring.prep_unlinkat("rm", path)
    ring.prep_unlinkat("rmdir", sub, flags=AT_REMOVEDIR)
    assert sorted(r for _, r, _ in run(ring, 3)) == [0, 0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h"]
    ring.prep_unlinkat("gone", path)
    assert run(ring, 1)[0][1] == -errno.ENOENT


def test_linked_chain_failure_cancels_the_rest(ring: Ring[Any]) -> None:
    buf = bytearray(8)
    ring.prep_read("bad", -1, buf, 0, sqe_flags=IOSQE_IO_LINK)
    ring.prep_nop("second", sqe_flags=IOSQE_IO_LINK)
    ring.prep_nop("third")
    results = {t: r for t, r, _ in run(ring, 3)}
    assert results == {"bad": -errno.EBADF, "second": -errno.ECANCELED, "third": -errno.ECANCELED}


def test_hardlink_continues_after_a_failure(ring: Ring[Any]) -> None:
    buf = bytearray(8)
    ring.prep_read("bad", -1, buf, 0, sqe_flags=IOSQE_IO_HARDLINK)
    ring.prep_nop("after")
    results = {t: r for t, r, _ in run(ring, 2)}
    assert results == {"bad": -errno.EBADF, "after": 0}


def test_name_operations_do_not_break_links(ring: Ring[Any], tmp_path: Path) -> None:
    """What the kernel does (Linux 6.18): failed name operations do not sever a link.

    The ``uring`` backend is written not to depend on this either way (nothing
    destructive ever follows a name operation in a chain); if a kernel changes it, only
    the explanations in uring_engine.py and uring.py need updating.
    """
    (tmp_path / "a").write_bytes(b"")
    (tmp_path / "b").write_bytes(b"")
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ring.prep_linkat("link", b"a", b"b", old_dfd=dfd, new_dfd=dfd, sqe_flags=IOSQE_IO_LINK)
        ring.prep_nop("after-link")
        ring.prep_renameat(
            "rename", b"missing", b"b", old_dfd=dfd, new_dfd=dfd, sqe_flags=IOSQE_IO_LINK
        )
        ring.prep_nop("after-rename")
        ring.prep_fsync("fsync", 1 << 20, sqe_flags=IOSQE_IO_LINK)  # EBADF: a real failure
        ring.prep_nop("after-fsync")
        results = {t: r for t, r, _ in run(ring, 6)}
    finally:
        os.close(dfd)
    assert results == {
        "link": -errno.EEXIST,
        "after-link": 0,
        "rename": -errno.ENOENT,
        "after-rename": 0,
        "fsync": -errno.EBADF,
        "after-fsync": -errno.ECANCELED,
    }


def test_openat2_stays_beneath_its_directory(ring: Ring[Any], tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "in").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (root / "in" / "f").write_bytes(b"inside")
    (root / "up").symlink_to("../outside")
    (root / "abs").symlink_to(outside)
    (root / "rel").symlink_to("in")
    resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS
    dfd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in (b"../outside/secret", b"up/secret", b"abs/secret", b"/etc/passwd"):
            ring.prep_openat2(name, name, os.O_RDONLY | os.O_CLOEXEC, 0, resolve, dfd=dfd)
        ring.prep_openat2("ok", b"rel/f", os.O_RDONLY | os.O_CLOEXEC, 0, resolve, dfd=dfd)
        ring.prep_openat2(
            "new", b"in/new", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640,
            resolve, dfd=dfd,
        )  # fmt: skip
        ring.prep_openat2("bad-mode", b"in/f", os.O_RDONLY, 0o600, resolve, dfd=dfd)
        results = {t: r for t, r, _ in run(ring, 7)}
    finally:
        os.close(dfd)
    for name in (b"../outside/secret", b"up/secret", b"abs/secret", b"/etc/passwd"):
        assert results[name] == -errno.EXDEV, name
    assert results["bad-mode"] == -errno.EINVAL  # openat2 refuses a mode without O_CREAT
    try:
        assert os.pread(results["ok"], 10, 0) == b"inside"
        assert (root / "in" / "new").stat().st_mode & 0o777 == 0o640 & ~_umask()
    finally:
        os.close(results["ok"])
        os.close(results["new"])


def _umask() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return next(int(ln.split()[1], 8) for ln in f if ln.startswith("Umask:"))


def test_name_operations_relative_to_directory_fds(ring: Ring[Any], tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "dst").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"data")
    sfd = os.open(tmp_path / "src", os.O_RDONLY | os.O_DIRECTORY)
    dfd = os.open(tmp_path / "dst", os.O_RDONLY | os.O_DIRECTORY)
    statbuf = ctypes.create_string_buffer(256)
    try:
        ring.prep_linkat("link", b"f", b"g", old_dfd=sfd, new_dfd=dfd)
        ring.prep_mkdirat("mkdir", b"sub", 0o700, dfd=dfd)
        assert {t: r for t, r, _ in run(ring, 2)} == {"link": 0, "mkdir": 0}
        noreplace = 1  # RENAME_NOREPLACE
        ring.prep_renameat("taken", b"f", b"g", old_dfd=sfd, new_dfd=dfd, flags=noreplace)
        ring.prep_statx("statx", b"g", statbuf, dfd=dfd)
        assert {t: r for t, r, _ in run(ring, 2)} == {"taken": -errno.EEXIST, "statx": 0}
        ring.prep_renameat("rename", b"f", b"h", old_dfd=sfd, new_dfd=dfd, flags=noreplace)
        ring.prep_unlinkat("rmdir", b"sub", dfd=dfd, flags=AT_REMOVEDIR)
        assert {t: r for t, r, _ in run(ring, 2)} == {"rename": 0, "rmdir": 0}
        ring.prep_unlinkat("unlink", b"g", dfd=dfd)
        assert run(ring, 1)[0][1] == 0
    finally:
        os.close(sfd)
        os.close(dfd)
    assert struct.unpack_from("=Q", statbuf, 0x28)[0] == 4  # stx_size of "g"
    assert os.listdir(tmp_path / "src") == [] and os.listdir(tmp_path / "dst") == ["h"]


def test_ftruncate_where_the_kernel_has_it(ring: Ring[Any], tmp_path: Path) -> None:
    if Op.FTRUNCATE not in ring.probe_opcodes():
        pytest.skip("IORING_OP_FTRUNCATE needs Linux 6.9")
    path = tmp_path / "t"
    path.write_bytes(b"x" * 1000)
    fd = os.open(path, os.O_RDWR)
    try:
        ring.prep_ftruncate("trunc", fd, 10)
        assert run(ring, 1)[0][1] == 0
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 10


def test_direct_descriptor_chain_open_read_close(ring: Ring[Any], tmp_path: Path) -> None:
    if not ring.features & IORING_FEAT_LINKED_FILE:
        pytest.skip("kernel before 5.18: no deferred file assignment for linked requests")
    assert ring.register_files_sparse(4)
    path = tmp_path / "small"
    path.write_bytes(b"direct descriptors")
    buf = bytearray(100)
    ring.prep_openat("o", bytes(path), os.O_RDONLY, 0, file_slot=2, sqe_flags=IOSQE_IO_LINK)
    ring.prep_read("r", 2, buf, 0, sqe_flags=IOSQE_FIXED_FILE | IOSQE_IO_HARDLINK)
    ring.prep_close_direct("c", 2)
    assert {t: r for t, r, _ in run(ring, 3)} == {"o": 0, "r": 18, "c": 0}
    assert bytes(buf[:18]) == b"direct descriptors"


def test_buffers_stay_pinned_until_their_completion_is_reaped(ring: Ring[Any]) -> None:
    r, w = os.pipe()
    try:
        buf = bytearray(16)
        ring.prep_read("pipe", r, buf, -1)
        ring.submit()
        with pytest.raises(BufferError):  # the ring holds an export of the buffer
            buf.extend(b"x")
        del buf  # the caller's reference goes; the ring's keeps the memory alive
        os.write(w, b"late data")
        ring.submit(wait_nr=1)
        [(token, res, _)] = ring.reap()
        assert (token, res) == ("pipe", 9)
        assert ring.in_flight == 0
    finally:
        os.close(r)
        os.close(w)


def test_paths_with_nul_bytes_are_refused_before_queueing(ring: Ring[Any]) -> None:
    with pytest.raises(ValueError, match="null"):
        ring.prep_openat("x", b"/tmp/a\0b", os.O_RDONLY, 0)
    assert ring.in_flight == 0 and ring.unsubmitted == 0


def test_read_only_views_are_copied_for_writes(ring: Ring[Any], tmp_path: Path) -> None:
    fd = os.open(tmp_path / "v", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        ring.prep_write("w", fd, memoryview(b"0123456789")[3:7], 0)
        assert run(ring, 1)[0][1] == 4
        assert os.pread(fd, 10, 0) == b"3456"
    finally:
        os.close(fd)


# --- availability --------------------------------------------------------------------------


def test_forced_unavailability_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(FORCE_UNAVAILABLE_ENV, "testing the fallback")
    reason = probe()
    assert reason is not None
    assert "testing the fallback" in reason and FORCE_UNAVAILABLE_ENV in reason


def test_refuses_other_architectures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FORCE_UNAVAILABLE_ENV, raising=False)
    monkeypatch.setattr("platform.machine", lambda: "aarch64")
    reason = probe()
    assert reason is not None and "aarch64" in reason and "memory" in reason
    with pytest.raises(UringUnavailable, match="aarch64"):
        Ring(4)


@pytest.mark.parametrize(
    ("err", "words"),
    [(errno.EPERM, ["EPERM", "io_uring_disabled", "seccomp"]), (errno.ENOSYS, ["ENOSYS"])],
    ids=["EPERM", "ENOSYS"],
)
def test_setup_refused_by_the_kernel_is_reported(
    monkeypatch: pytest.MonkeyPatch, fresh_probe: None, err: int, words: list[str]
) -> None:
    monkeypatch.delenv(FORCE_UNAVAILABLE_ENV, raising=False)
    monkeypatch.setattr(uring_ring._Syscalls, "setup", lambda self, entries, addr: -err)
    reason = probe()
    assert reason is not None
    for word in words:
        assert word in reason
    with pytest.raises(UringUnavailable) as info:
        Ring(4)
    assert info.value.errno == err


def test_missing_opcodes_are_named(monkeypatch: pytest.MonkeyPatch, fresh_probe: None) -> None:
    reason = probe()
    if reason is not None:
        pytest.skip(f"io_uring unavailable: {reason}")
    without_link = frozenset(set(REQUIRED_OPS) - {Op.LINKAT})
    monkeypatch.setattr(Ring, "probe_opcodes", lambda self: without_link)
    reason = probe(refresh=True)
    assert reason is not None and "LINKAT" in reason and "5.15" in reason
