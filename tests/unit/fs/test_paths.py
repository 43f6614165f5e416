"""FS path rules: ``normalize`` against a plain statement of the rules."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aiodbox.fs import paths
from aiodbox.fs.errors import FsPermission


def _reference(path: str) -> str | None:
    """The rules as stated: None where the path is refused."""
    if "\x00" in path or path.startswith("/"):
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts or not parts:
        return None
    return "/".join(parts)


@given(st.text(alphabet="ab./\x00", max_size=12))
def test_normalize_follows_the_rules_for_any_path(path: str) -> None:
    expected = _reference(path)
    if expected is None:
        with pytest.raises(FsPermission):
            paths.normalize("open", path)
    else:
        assert paths.normalize("open", path) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a/b/u.1", "a/b/u.1"),
        ("a//b", "a/b"),
        ("./a/./b/", "a/b"),
        (".aiodbox-tmp.1.x.u.1", ".aiodbox-tmp.1.x.u.1"),
        ("a/..b", "a/..b"),
        ("a.", "a."),
    ],
)
def test_normalize_examples(path: str, expected: str) -> None:
    assert paths.normalize("open", path) == expected


@pytest.mark.parametrize("path", ["", "/a", "a/../b", "..", "a/..", "a\x00b", "./"])
def test_normalize_refuses(path: str) -> None:
    with pytest.raises(FsPermission):
        paths.normalize("open", path)
