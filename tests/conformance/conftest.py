"""The FS backends and stacks every conformance test runs against.

Add a backend here and the whole contract suite runs on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from aiodbox.fs import FS, open_fs

# Backends and stacks the contract suite covers.  "posix" ones get a fresh root each.
FS_SPECS = [
    "memory",
    "posix",
    "latency:5ms:posix",
    "randomfail:0:posix",
    "stats:memory",
]

POSIX_SPECS = [s for s in FS_SPECS if s.endswith("posix")]


def is_posix(spec: str) -> bool:
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
