"""Spec strings build the stacks they describe; bad specs say what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiodbox.fs import FsSpecError, open_fs, parse_duration
from aiodbox.fs.backends.local import LocalFS
from aiodbox.fs.backends.memory import MemoryFS
from aiodbox.fs.wrappers.latency import LatencyFS
from aiodbox.fs.wrappers.randomfail import RandomFailFS
from aiodbox.fs.wrappers.stats import StatsFS


def test_stack_order_is_outermost_first(tmp_path: Path) -> None:
    fs = open_fs(
        "stats:latency:20ms,jitter=5ms,seed=3:randomfail:0.25,seed=9:posix", root=str(tmp_path)
    )
    assert isinstance(fs, StatsFS)
    lat = fs.inner
    assert isinstance(lat, LatencyFS) and (lat.delay, lat.jitter) == (0.02, 0.005)
    rf = lat.inner
    assert isinstance(rf, RandomFailFS) and rf.probability == 0.25
    assert isinstance(rf.inner, LocalFS)
    assert rf.inner.engine.root == str(tmp_path)  # type: ignore[attr-defined]
    assert fs.name == "stats:latency:randomfail:posix"


def test_root_in_the_spec_wins_over_the_option(tmp_path: Path) -> None:
    fs = open_fs(f"posix:{tmp_path}/a", root=str(tmp_path / "b"))
    assert isinstance(fs, LocalFS)
    assert fs.engine.root == f"{tmp_path}/a"  # type: ignore[attr-defined]


def test_backend_options_are_passed(tmp_path: Path) -> None:
    fs = open_fs("posix", root=str(tmp_path), io_threads=3, readahead=4096, fsync="never")
    assert isinstance(fs, LocalFS)
    assert fs.readahead == 4096 and fs.fsync.value == "never"
    assert fs.engine.pool.size == 3  # type: ignore[attr-defined]
    assert isinstance(open_fs("memory"), MemoryFS)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nfs:/x", "unknown layer 'nfs'"),
        ("latency:20:memory", "is not a duration"),
        ("latency:20ms", "the last layer must be a backend"),
        ("randomfail:often:memory", "needs a probability"),
        ("latency:5ms,bogus=1:memory", "unknown latency option"),
        ("posix", "needs a root"),
        ("randomfail:2:memory", "within 0..1"),
    ],
)
def test_bad_specs_are_explained(spec: str, message: str) -> None:
    with pytest.raises((FsSpecError, ValueError), match=message):
        open_fs(spec)


def test_unknown_backend_option_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FsSpecError, match="colour"):
        open_fs("posix", root=str(tmp_path), colour="blue")


@pytest.mark.parametrize(("text", "seconds"), [("20ms", 0.02), ("1.5s", 1.5), ("300us", 0.0003)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
