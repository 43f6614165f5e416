"""Shared fixtures for the message-layer tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from message_corpus import FixtureMessage, load_fixture_messages


@pytest.fixture(scope="session")
def fixture_messages(fixtures_dir: Path) -> list[FixtureMessage]:
    """The 52 live fixture messages (26 per user)."""
    return load_fixture_messages(fixtures_dir)
