"""Fixtures for the Dovecot importer tests (see ``dovecot_testlib`` for helpers)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def dovecot_dir(fixtures_dir: Path) -> Path:
    """The Dovecot 2.3 fixture directory (manifest, mail roots, dumps)."""
    return fixtures_dir / "dovecot-2.3"


@pytest.fixture(scope="session")
def manifest(dovecot_dir: Path) -> dict[str, Any]:
    """``manifest.json``: every expected value."""
    data: dict[str, Any] = json.loads((dovecot_dir / "manifest.json").read_text())
    return data
