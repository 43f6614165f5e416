"""``FS.read_small_files`` / ``read_small_file_now``: whole small files, together or at once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aiodbox.fs import FS, FsNotFound, FsPermission, open_fs
from aiodbox.fs.backends.local import LocalFS
from aiodbox.fs.backends.posix_threads import ThreadEngine
from aiodbox.fs.errors import FsError

SPECS = ["posix", "memory", "latency:1ms:posix"]


async def _files(fs: FS) -> dict[str, bytes]:
    files = {
        "d/a": b"alpha" * 100,
        "d/b": b"",
        "d/big": b"x" * 5000,
        "d/edge": b"e" * 4096,
    }
    for path, data in files.items():
        await fs.write_file(path, data)
    return files


@pytest.mark.parametrize("spec", SPECS)
async def test_read_small_files(spec: str, tmp_path: Path) -> None:
    fs = open_fs(spec, root=str(tmp_path))
    try:
        files = await _files(fs)
        got = await fs.read_small_files(["d/a", "d/b", "d/big", "d/edge", "d/nope", "../x"], 4096)
        assert got[:4] == [files["d/a"], b"", None, files["d/edge"]]
        assert isinstance(got[4], FsNotFound)
        assert isinstance(got[5], FsPermission)
        assert await fs.read_small_files(["d/a"], 10_000) == [files["d/a"]]
        assert await fs.read_small_files([], 10) == []
    finally:
        await fs.aclose()


@pytest.mark.parametrize("spec", SPECS)
async def test_read_small_file_now_serves_or_refuses(spec: str, tmp_path: Path) -> None:
    fs = open_fs(spec, root=str(tmp_path))
    try:
        files = await _files(fs)
        await fs.read_small_files(["d/a"], 4096)  # (the posix root is open now)
        served = 0
        for path, data in files.items():
            try:
                got = fs.read_small_file_now(path, 4096)
            except BlockingIOError:
                continue  # allowed: not known without waiting
            served += 1
            assert got == (data if len(data) <= 4096 else None)
        for bad in ("d/nope", "../x", "d"):  # errors are never raised from here
            with pytest.raises(BlockingIOError):
                fs.read_small_file_now(bad, 4096)
        if spec == "posix":
            engine = fs.engine if isinstance(fs, LocalFS) else None
            assert isinstance(engine, ThreadEngine)
            if engine.nowait_opens:  # (kernels >= 5.12 have RESOLVE_CACHED)
                assert served == len(files)
        else:
            assert served == 0  # other backends and wrappers: the awaitable way only
    finally:
        await fs.aclose()


async def test_posix_batch_reads_cold_files_in_workers(tmp_path: Path) -> None:
    fs = open_fs("posix", root=str(tmp_path), nowait_reads=False)  # no inline reads at all
    assert isinstance(fs, LocalFS)
    try:
        files = await _files(fs)
        (tmp_path / "d" / "sub").mkdir()
        paths = [*files, "d/sub", "d/nope"]
        got = await fs.read_small_files(paths, 4096)
        assert got[:4] == [files["d/a"], b"", None, files["d/edge"]]
        assert isinstance(got[4], FsError) and isinstance(got[5], FsNotFound)
        with pytest.raises(BlockingIOError):
            fs.read_small_file_now("d/a", 4096)
    finally:
        await fs.aclose()


async def test_a_file_that_grows_is_read_whole(tmp_path: Path) -> None:
    fs = open_fs("posix", root=str(tmp_path))
    assert isinstance(fs, LocalFS)
    try:
        await fs.write_file("f", b"1" * 100)
        engine = fs.engine
        assert isinstance(engine, ThreadEngine)
        with open(tmp_path / "f", "ab") as f:
            f.write(b"2" * 100)
            f.flush()
            os.fsync(f.fileno())
        assert engine._read_small_one("f", 4096) == b"1" * 100 + b"2" * 100
        assert engine._read_small_one("f", 150) is None
    finally:
        await fs.aclose()
