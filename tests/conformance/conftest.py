"""The FS backends and stacks every conformance test runs against.

Add a backend here and the whole contract suite runs on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from aiodbox.fs import FS, open_fs
from aiodbox.fs.backends.uring_ring import probe

# Why io_uring cannot run here (None: it can).  Specs on the uring backend are then
# skipped with this reason, never run against something else or passed silently.
URING_UNAVAILABLE = probe()


def _spec(spec: str) -> str | Any:
    if spec.endswith("uring") and URING_UNAVAILABLE is not None:
        return pytest.param(
            spec, marks=pytest.mark.skip(reason=f"io_uring unavailable: {URING_UNAVAILABLE}")
        )
    return spec


# Backends and stacks the contract suite covers.  Local ones get a fresh root each.
SPECS = [
    "memory",
    "posix",
    "latency:5ms:posix",
    "randomfail:0:posix",
    "stats:memory",
    "uring",
    "latency:5ms:uring",
]
FS_SPECS = [_spec(s) for s in SPECS]

# Stacks over real local files (checked from other processes too).
POSIX_SPECS = [_spec(s) for s in SPECS if s.endswith(("posix", "uring"))]


def is_posix(spec: str) -> bool:
    """Whether ``spec`` stores real files under its root (posix or uring)."""
    return spec.endswith(("posix", "uring"))


@pytest.fixture(params=FS_SPECS)
def fs_spec(request: pytest.FixtureRequest) -> str:
    spec: str = request.param
    return spec


@pytest.fixture
def make_fs(fs_spec: str, tmp_path: Path) -> Callable[..., FS]:
    """Build the FS under test; extra keyword options go to the backend."""

    def make(**options: object) -> FS:
        return open_fs(fs_spec, root=str(tmp_path / "root"), **options)

    return make


@pytest.fixture
async def fs(make_fs: Callable[..., FS]) -> AsyncIterator[FS]:
    f = make_fs()
    yield f
    await f.aclose()
