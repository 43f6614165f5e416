"""The FS contract of DESIGN.md §3, checked on every backend and stack (see conftest)."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from aiodbox.fs import (
    FS,
    CreateMode,
    FsError,
    FsExists,
    FsNotFound,
    FsPermission,
    FsProperty,
    OpenMode,
    open_fs,
)

from .conftest import POSIX_SPECS, is_posix


async def write_file(
    fs: FS, path: str, data: bytes, mode: CreateMode = CreateMode.FAIL_IF_EXISTS
) -> None:
    h = fs.create(path, mode)
    await h.write_all(data)
    await h.acommit()
    await h.aclose()


async def run_python(code: str, *args: str) -> tuple[int, str]:
    """Run ``code`` in another Python process.

    (asyncio's own subprocess start forks on the loop thread, which can hold the loop
    past the 50 ms guard on a busy machine, so the child runs from a worker thread.)
    """
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        check=False,
    )
    return proc.returncode, proc.stdout.decode()


# ------------------------------------------------------------ visibility


async def test_nothing_visible_before_commit(fs: FS, fs_spec: str, tmp_path: Path) -> None:
    h = fs.create("box/u.1")
    await h.write_all(b"x" * 300_000)  # more than the write buffer: part is flushed
    await asyncio.sleep(0.02)
    assert not await fs.exists("box/u.1")
    other = fs.open("box/u.1")
    with pytest.raises(FsNotFound):
        await other.read(10, 0)
    assert [p async for p in fs.iterate("box")] == []
    if is_posix(fs_spec):
        code = (
            "import os,sys; d=sys.argv[1]; print(sorted(os.listdir(d)) if os.path.isdir(d) else [])"
        )
        rc, out = await run_python(code, str(tmp_path / "root" / "box"))
        assert rc == 0
        names = eval(out)  # the other process sees only temp files, never u.1
        assert "u.1" not in names
        assert all(n.startswith(".aiodbox-tmp.") for n in names)
    await h.acommit()
    assert await fs.exists("box/u.1")
    assert await fs.read_file("box/u.1") == b"x" * 300_000
    if is_posix(fs_spec):
        code = "import sys; print(len(open(sys.argv[1],'rb').read()))"
        rc, out = await run_python(code, str(tmp_path / "root" / "box" / "u.1"))
        assert (rc, out.strip()) == (0, "300000")
    await h.aclose()


async def test_commit_with_filename_names_the_file_in_the_same_directory(fs: FS) -> None:
    h = fs.create("mbox/dbox-Mails/temp-name")
    await h.write_all(b"message")
    await h.acommit("u.42")
    assert h.path == "mbox/dbox-Mails/u.42"
    await h.aclose()
    assert [p async for p in fs.iterate("mbox/dbox-Mails")] == ["mbox/dbox-Mails/u.42"]
    assert await fs.read_file("mbox/dbox-Mails/u.42") == b"message"


@pytest.mark.parametrize("bad", ["a/b", "..", "", ".aiodbox-tmp.1.x.y"])
async def test_commit_refuses_a_filename_that_is_not_a_bare_name(fs: FS, bad: str) -> None:
    h = fs.create("d/f")
    await h.write_all(b"1")
    with pytest.raises(FsError) as ei:
        await h.acommit(bad)
    assert ei.value.errno == errno.EINVAL
    await h.aclose()
    assert not await fs.exists("d/f")


async def test_fail_if_exists_race_has_exactly_one_winner(fs: FS) -> None:
    handles = [fs.create("race") for _ in range(8)]
    for i, h in enumerate(handles):
        await h.write_all(bytes([65 + i]) * 1000)

    async def commit(i: int) -> int | None:
        try:
            await handles[i].acommit()
        except FsExists:
            return None
        return i

    results = await asyncio.gather(*(commit(i) for i in range(8)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert await fs.read_file("race") == bytes([65 + winners[0]]) * 1000
    for h in handles:
        await h.aclose()
    assert [p async for p in fs.iterate("")] == ["race"]


RACE_CHILD = """
import asyncio, sys
from aiodbox.fs import open_fs, FsExists
async def main():
    fs = open_fs(sys.argv[3], root=sys.argv[1])
    h = fs.create("race")
    await h.write_all(sys.argv[2].encode() * 1000)
    try:
        await h.acommit()
        print("WON")
    except FsExists:
        print("LOST")
    await h.aclose()
    await fs.aclose()
asyncio.run(main())
"""


@pytest.mark.parametrize("fs_spec", POSIX_SPECS)
async def test_fail_if_exists_race_across_processes(fs_spec: str, tmp_path: Path) -> None:
    root = str(tmp_path / "xproc")
    backend = fs_spec.rsplit(":", 1)[-1]  # the children use the same backend
    results = await asyncio.gather(*(run_python(RACE_CHILD, root, c, backend) for c in "ABCDEF"))
    outs = [out.strip() for rc, out in results]
    assert all(rc == 0 for rc, _ in results), outs
    assert outs.count("WON") == 1 and outs.count("LOST") == 5
    winner = "ABCDEF"[outs.index("WON")]
    data = await open_fs("posix", root=root).read_file("race")
    assert data == winner.encode() * 1000
    assert os.listdir(root) == ["race"]


async def test_reader_during_replace_sees_old_or_new_never_a_mix(fs: FS) -> None:
    size = 100_000
    await write_file(fs, "f", bytes([0]) * size)
    seen: set[int] = set()
    done = False

    async def reader() -> None:
        while not done:
            data = await fs.read_file("f")
            assert len(data) == size
            assert data == bytes([data[0]]) * size, "a mix of two versions"
            seen.add(data[0])
            await asyncio.sleep(0)

    task = asyncio.create_task(reader())
    for i in range(1, 20):
        await write_file(fs, "f", bytes([i]) * size, CreateMode.REPLACE_IF_EXISTS)
        await asyncio.sleep(0)
    done = True
    await task
    assert await fs.read_file("f") == bytes([19]) * size
    assert len(seen) >= 2


async def test_replace_keeps_open_readers_on_the_old_file(fs: FS) -> None:
    await write_file(fs, "f", b"old" * 10)
    r = fs.open("f")
    await r.wait_open()
    await write_file(fs, "f", b"new" * 10, CreateMode.REPLACE_IF_EXISTS)
    assert await r.read(30, 0) == b"old" * 10
    await r.aclose()


# ------------------------------------------------------- rollback / close


async def test_rollback_discards_writes_since_last_commit(fs: FS) -> None:
    h = fs.create("f")
    await h.write_all(b"discard me" * 40_000)
    await asyncio.sleep(0.01)
    h.rollback()
    await h.write_all(b"keep")
    await h.acommit()
    await h.write_all(b"-and-not-this")
    h.rollback()
    await h.aclose()
    assert await fs.read_file("f") == b"keep"


async def test_close_without_commit_leaves_no_file_and_no_temp(
    fs: FS, fs_spec: str, tmp_path: Path
) -> None:
    h = fs.create("dir/f")
    await h.write_all(b"z" * 500_000)
    await asyncio.sleep(0.01)
    await h.aclose()
    assert not await fs.exists("dir/f")
    if is_posix(fs_spec):
        d = tmp_path / "root" / "dir"
        assert not d.exists() or os.listdir(d) == []


async def test_close_before_open_finished_cleans_up(fs: FS, fs_spec: str, tmp_path: Path) -> None:
    h = fs.create("f")
    h.write(b"abc")
    await h.aclose()
    assert not await fs.exists("f")
    if is_posix(fs_spec):
        assert os.listdir(tmp_path / "root") == []


# ------------------------------------------------------ errors and EAGAIN


async def test_missing_file_surfaces_on_first_read(fs: FS) -> None:
    h = fs.open("no/such/file")
    with pytest.raises(FsNotFound) as ei:
        await h.read(10, 0)
    err = ei.value
    assert isinstance(err, FileNotFoundError)
    assert (err.op, err.path, err.errno) == ("open", "no/such/file", errno.ENOENT)
    await h.aclose()


async def test_open_callback_reports_the_error(fs: FS) -> None:
    h = fs.open("missing")
    fired = asyncio.Event()
    h.set_open_callback(fired.set)
    await asyncio.wait_for(fired.wait(), 2)
    assert h.opened
    assert isinstance(h.open_error, FsNotFound)
    with pytest.raises(FileNotFoundError):
        h.pread(1, 0)
    await h.aclose()


async def test_pread_raises_eagain_then_input_callback_fires(fs: FS) -> None:
    await write_file(fs, "f", b"0123456789" * 1000)
    h = fs.open("f")
    with pytest.raises(BlockingIOError):
        h.pread(10, 0)  # the open cannot have finished synchronously
    ready = asyncio.Event()
    h.set_input_callback(ready.set)
    data = b""
    for _ in range(100):
        try:
            data = h.pread(10, 5)
            break
        except BlockingIOError:
            await asyncio.wait_for(ready.wait(), 2)
            ready.clear()
    assert data == b"5678901234"
    assert await h.read(10, 10_000) == b""  # EOF
    await h.aclose()


async def test_try_lock_while_open_in_flight_raises_blocking(fs: FS) -> None:
    await write_file(fs, "m.1", b"data")
    h = fs.open("m.1", OpenMode.APPEND)
    with pytest.raises(BlockingIOError):
        h.try_lock()
    await h.wait_open()
    assert h.try_lock() is True
    await h.aclose()


async def test_write_back_pressure_and_output_callback(make_fs: Callable[..., FS]) -> None:
    fs = make_fs(write_buffer_size=4096)
    h = fs.create("big")
    payload = bytes(range(256)) * 1000  # 256 kB through a 4 kB buffer
    view = memoryview(payload)
    blocked = 0
    drained = asyncio.Event()
    h.set_output_callback(drained.set)
    while view:
        try:
            n = h.write(view)
        except BlockingIOError:
            blocked += 1
            drained.clear()
            await asyncio.wait_for(drained.wait(), 5)
            continue
        assert 0 <= n <= 4096
        view = view[n:]
    assert blocked > 0
    await h.acommit()
    await h.aclose()
    assert await fs.read_file("big") == payload
    await fs.aclose()


async def test_errors_carry_op_path_errno(fs: FS) -> None:
    with pytest.raises(FsNotFound) as ei:
        await fs.stat("nope")
    assert (ei.value.op, ei.value.path, ei.value.errno) == ("stat", "nope", errno.ENOENT)
    with pytest.raises(FsNotFound) as ei:
        await fs.delete("nope")
    assert (ei.value.op, ei.value.errno) == ("delete", errno.ENOENT)
    await write_file(fs, "x", b"1")
    with pytest.raises(FsExists) as ex:
        await write_file(fs, "x", b"2")
    assert (ex.value.op, ex.value.path, ex.value.errno) == ("commit", "x", errno.EEXIST)
    assert isinstance(ex.value, FileExistsError)


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd", "a/../../b", "a\x00b"])
async def test_paths_outside_the_root_are_refused(fs: FS, path: str) -> None:
    with pytest.raises(FsPermission) as ei:
        await fs.stat(path)
    assert isinstance(ei.value, PermissionError)
    h = fs.open(path)
    with pytest.raises(FsPermission):
        await h.read(1, 0)
    h = fs.create(path)
    with pytest.raises(FsPermission):
        await h.acommit()
    await h.aclose()


@pytest.mark.parametrize("fs_spec", POSIX_SPECS)
async def test_symlink_leading_out_of_the_root_is_refused(fs_spec: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    fs = open_fs(fs_spec, root=str(root))
    with pytest.raises(FsPermission):
        await fs.read_file("link/secret")
    h = fs.create("link/new")
    await h.write_all(b"x")
    with pytest.raises(FsPermission):
        await h.acommit()
    await h.aclose()
    assert not (outside / "new").exists()
    await fs.aclose()


async def test_write_file_creates_replaces_and_refuses_a_taken_name(
    fs: FS, fs_spec: str, tmp_path: Path
) -> None:
    await fs.write_file("d/e/f", b"one", CreateMode.FAIL_IF_EXISTS)  # parents made
    assert await fs.read_file("d/e/f") == b"one"
    with pytest.raises(FsExists):
        await fs.write_file("d/e/f", b"two", CreateMode.FAIL_IF_EXISTS)
    assert await fs.read_file("d/e/f") == b"one"
    await fs.write_file("d/e/f", b"three")  # REPLACE_IF_EXISTS
    assert await fs.read_file("d/e/f") == b"three"
    assert [n async for n in fs.iterate("d/e")] == ["d/e/f"]
    if is_posix(fs_spec):  # and no temp file behind, not even one iterate would hide
        assert os.listdir(tmp_path / "root" / "d" / "e") == ["f"]


async def test_stage_file_is_named_only_when_published(
    fs: FS, fs_spec: str, tmp_path: Path
) -> None:
    await fs.write_file("d/u.1", b"taken", CreateMode.FAIL_IF_EXISTS)
    staged = await fs.stage_file("d", b"staged data")
    if staged is None:  # the backend cannot stage: then it wrote nothing
        assert fs_spec != "posix", "the posix backend stages files"
        assert [n async for n in fs.iterate("d")] == ["d/u.1"]
        if is_posix(fs_spec):
            assert os.listdir(tmp_path / "root" / "d") == ["u.1"]
        return
    assert staged.directory == "d" and staged.size == len(b"staged data")
    assert [n async for n in fs.iterate("d")] == ["d/u.1"]  # nothing visible yet
    # The naming calls block: a worker thread makes them (an index job in the store).
    with pytest.raises(FileExistsError):
        await asyncio.to_thread(staged.publish_blocking, "u.1")
    assert await fs.read_file("d/u.1") == b"taken"  # a taken name is never replaced
    await asyncio.to_thread(staged.publish_blocking, "u.2")
    await asyncio.to_thread(staged.sync_directory_blocking)
    assert await fs.read_file("d/u.2") == b"staged data"
    await staged.discard()  # published: nothing to discard
    assert sorted([n async for n in fs.iterate("d")]) == ["d/u.1", "d/u.2"]
    if is_posix(fs_spec):  # no temp name left behind
        assert sorted(os.listdir(tmp_path / "root" / "d")) == ["u.1", "u.2"]
    await asyncio.to_thread(staged.unpublish_blocking, "u.2")
    assert not await fs.exists("d/u.2")

    other = await fs.stage_file("d/new", b"x")  # missing parents are made
    assert other is not None
    await other.discard()
    await other.discard()  # idempotent
    assert [n async for n in fs.iterate("d/new")] == []
    if is_posix(fs_spec):
        assert os.listdir(tmp_path / "root" / "d" / "new") == []


# --------------------------------------------------------------- locks


async def test_try_lock_is_exclusive_between_handles(fs: FS) -> None:
    assert FsProperty.LOCKS in fs.properties  # every stack in FS_SPECS has locks
    await write_file(fs, "m.1", b"")
    a, b = fs.open("m.1", OpenMode.APPEND), fs.open("m.1", OpenMode.APPEND)
    await a.wait_open()
    await b.wait_open()
    assert a.try_lock() is True
    assert b.try_lock() is False
    a.unlock()
    assert b.try_lock() is True
    await b.aclose()
    assert a.try_lock() is True
    await a.aclose()


async def test_size_under_lock_sees_other_appends_and_a_deletion(fs: FS) -> None:
    await write_file(fs, "m.1", b"HEAD")
    a, b = fs.open("m.1", OpenMode.APPEND), fs.open("m.1", OpenMode.APPEND)
    await a.wait_open()
    await b.wait_open()
    assert a.size_under_lock() is None  # not locked
    assert b.try_lock()
    await b.write_all(b"-more")
    await b.acommit()
    b.unlock()
    assert a.try_lock()
    assert a.size_under_lock() == 9  # b's append, which a's open did not see
    a.unlock()
    await fs.delete("m.1")
    assert a.try_lock()
    with pytest.raises(FsNotFound):  # appending through a would be lost
        a.size_under_lock()
    await a.aclose()
    await b.aclose()


LOCK_CHILD = """
import asyncio, sys
from aiodbox.fs import open_fs, OpenMode
async def main():
    fs = open_fs(sys.argv[2], root=sys.argv[1])
    h = fs.open("m.1", OpenMode.APPEND)
    await h.wait_open()
    print("LOCKED" if h.try_lock() else "BUSY", flush=True)
    await h.aclose()
    await fs.aclose()
asyncio.run(main())
"""


@pytest.mark.parametrize("fs_spec", POSIX_SPECS)
async def test_try_lock_is_exclusive_across_processes(fs: FS, fs_spec: str, tmp_path: Path) -> None:
    await write_file(fs, "m.1", b"")
    h = fs.open("m.1", OpenMode.APPEND)
    await h.wait_open()
    assert h.try_lock()
    root = str(tmp_path / "root")
    backend = fs_spec.rsplit(":", 1)[-1]
    assert (await run_python(LOCK_CHILD, root, backend))[1].strip() == "BUSY"
    await h.aclose()
    assert (await run_python(LOCK_CHILD, root, backend))[1].strip() == "LOCKED"


# -------------------------------------------------------------- append


async def test_append_is_invisible_until_commit(fs: FS) -> None:
    await write_file(fs, "m.1", b"HEAD")
    h = fs.open("m.1", OpenMode.APPEND)
    await h.wait_open()
    assert h.try_lock()
    await h.write_all(b"-one" * 100_000)
    await asyncio.sleep(0.01)
    assert (await fs.stat("m.1")).size == 4
    assert await h.read(100, 0) == b"HEAD"
    await h.acommit()
    assert (await fs.stat("m.1")).size == 4 + 400_000
    await h.write_all(b"-rolled-back")
    h.rollback()
    await h.write_all(b"-two")
    await h.acommit()
    await h.aclose()
    assert await fs.read_file("m.1") == b"HEAD" + b"-one" * 100_000 + b"-two"


async def test_created_handle_keeps_appending_after_commit(fs: FS) -> None:
    h = fs.create("storage/m.tmp")
    await h.wait_open()
    assert h.try_lock()
    await h.write_all(b"first")
    await h.acommit("m.7")
    await h.write_all(b"+second")
    assert await fs.read_file("storage/m.7") == b"first"
    await h.acommit()
    assert await h.read(100, 0) == b"first+second"
    await h.aclose()
    assert await fs.read_file("storage/m.7") == b"first+second"


async def test_readonly_handle_refuses_writes(fs: FS) -> None:
    await write_file(fs, "f", b"1")
    h = fs.open("f")
    await h.wait_open()
    with pytest.raises(FsError) as ei:
        h.write(b"x")
    assert ei.value.errno == errno.EBADF
    await h.aclose()


# ----------------------------------------------------------- metadata


async def test_metadata_operations(fs: FS) -> None:
    await write_file(fs, "a/b/one", b"1")
    await write_file(fs, "a/b/two", b"22")
    await fs.mkdir("a/b/sub")
    assert sorted([p async for p in fs.iterate("a/b")]) == ["a/b/one", "a/b/two"]
    assert [p async for p in fs.iterate("a/b", dirs=True)] == ["a/b/sub"]
    assert [p async for p in fs.iterate("does/not/exist")] == []
    st = await fs.stat("a/b/two")
    assert (st.size, st.is_dir) == (2, False)
    assert (await fs.stat("a/b")).is_dir
    await fs.rename("a/b/two", "a/c/moved")
    assert not await fs.exists("a/b/two")
    assert await fs.read_file("a/c/moved") == b"22"
    await fs.rename("a/b/one", "a/c/moved")  # replaces atomically
    assert await fs.read_file("a/c/moved") == b"1"
    with pytest.raises(FsError):
        await fs.rmdir("a/c")  # not empty
    await fs.delete("a/c/moved")
    await fs.rmdir("a/c")
    assert not await fs.exists("a/c")
    await fs.mkdir("a/b/sub")  # exists: no error


async def test_copy_and_link(fs: FS) -> None:
    await write_file(fs, "src", b"payload")
    await fs.copy("src", "dir/dst")
    assert await fs.read_file("dir/dst") == b"payload"
    with pytest.raises(FsExists):
        await fs.copy("src", "dir/dst")
    if FsProperty.LINK in fs.properties:
        await fs.link("src", "hard")
        await fs.delete("src")
        assert await fs.read_file("hard") == b"payload"


# ---------------------------------------------------------- randomfail


@pytest.mark.parametrize("inner", ["memory", "posix"])
async def test_randomfail_never_makes_a_partial_file_visible(inner: str, tmp_path: Path) -> None:
    fs = open_fs(f"randomfail:0.1,seed=1234:{inner}", root=str(tmp_path / "rf"))
    committed: dict[str, bytes] = {}
    failures = 0
    for i in range(150):
        payload = bytes([i % 251]) * (1000 + i * 997)
        h = fs.create(f"f{i}")
        try:
            await h.write_all(payload)
            await h.acommit()
            committed[f"f{i}"] = payload
        except FsError as e:
            assert e.errno == errno.EIO
            failures += 1
        finally:
            await h.aclose()
    assert failures > 5, "the 10 % failure rate did not show up"
    plain = open_fs(inner, root=str(tmp_path / "rf")) if inner == "posix" else fs.inner
    assert plain is not None
    visible = sorted([p async for p in plain.iterate("")])
    assert visible == sorted(committed)
    for name in visible:
        assert await plain.read_file(name) == committed[name]
    if inner == "posix":
        assert sorted(os.listdir(tmp_path / "rf")) == sorted(committed)  # no temp files
    await fs.aclose()


async def test_randomfail_is_replayable_with_its_seed(tmp_path: Path) -> None:
    async def run() -> list[bool]:
        fs = open_fs("randomfail:0.3,seed=99:memory")
        outcome = []
        for i in range(40):
            try:
                await fs.stat(f"x{i}")
            except FsNotFound:
                outcome.append(True)
            except FsError:
                outcome.append(False)
        return outcome

    first, second = await run(), await run()
    assert first == second
    assert False in first and True in first
