"""Damaged input never yields anything but a result or :class:`DovecotIndexError`.

Truncations are checked exhaustively on the smaller real logs and with
Hypothesis on all of them; a truncation that is not at a complete-transaction
boundary must be *reported*, never silently accepted.  Random byte corruption
may produce a (wrong) valid-looking file, but must never crash with any other
exception.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dovecot_testlib import mail_root, mailbox_dir
from hypothesis import given, settings
from hypothesis import strategies as st

from aiodbox.importers.dovecot_index import (
    DovecotIndexError,
    IndexState,
    parse_log,
    read_mailbox_index,
    read_mdbox_map,
    replay_index,
)
from aiodbox.importers.dovecot_list import read_mailbox_list_index

LOG_KEYS = (
    "sdbox-inbox",
    "sdbox-archive",
    "mdbox-inbox",
    "mdbox-archive",
    "mdbox-map",
    "sdbox-list",
)


def _log_path(dovecot_dir: Path, key: str) -> Path:
    user, what = key.split("-")
    if what == "map":
        return mail_root(dovecot_dir, user) / "storage" / "dovecot.map.index.log"
    if what == "list":
        return mail_root(dovecot_dir, user) / "dovecot.list.index.log"
    box = "INBOX" if what == "inbox" else "Archive/2024"
    return mailbox_dir(dovecot_dir, user, box) / "dovecot.index.log"


def _index_for(log_path: Path) -> bytes | None:
    index_path = log_path.with_suffix("")
    return index_path.read_bytes() if index_path.exists() else None


SETTINGS = settings(max_examples=150, deadline=None, database=None)


def _read_any(key: str, log: bytes, index: bytes | None = None) -> object:
    """Interpret ``log`` the way the importer would for that file."""
    if key == "mdbox-map":
        return read_mdbox_map(index, log)
    if key == "sdbox-list":
        return read_mailbox_list_index(index, log)
    return read_mailbox_index(index, log)


def _complete_ends(data: bytes) -> set[int]:
    """Offsets at which a prefix of ``data`` is a complete log (whole transactions)."""
    full = parse_log(data)
    ends = {full.header.hdr_size}
    for rec in full.records:
        prefix = rec.offset + rec.size
        if parse_log(data[:prefix], allow_partial_tail=True).end_offset == prefix:
            ends.add(prefix)
    return ends


@pytest.mark.parametrize("key", ["sdbox-archive", "sdbox-list"])
def test_every_truncation_of_a_log_only_file(dovecot_dir: Path, key: str) -> None:
    data = _log_path(dovecot_dir, key).read_bytes()
    ends = _complete_ends(data)
    for length in range(len(data)):
        cut = data[:length]
        if length not in ends:
            with pytest.raises(DovecotIndexError) as err:
                _read_any(key, cut)
            assert err.value.file.endswith(".log")
            assert err.value.offset is not None and err.value.offset <= length
        else:
            # A cut between transactions is an older, consistent state of the map.
            state = replay_index(None, cut)
            assert state.log_offset == length


def test_truncating_the_log_below_the_index_position_is_reported(dovecot_dir: Path) -> None:
    d = mailbox_dir(dovecot_dir, "sdbox", "INBOX")
    index = (d / "dovecot.index").read_bytes()
    data = (d / "dovecot.index.log").read_bytes()
    head = 8216
    for length in [*range(0, head, 97), head - 1]:
        with pytest.raises(DovecotIndexError):
            read_mailbox_index(index, data[:length])
    assert len(read_mailbox_index(index, data[:head]).messages) == 18


@pytest.mark.parametrize("user", ["sdbox", "mdbox"])
def test_every_truncation_of_an_index_file_is_reported(dovecot_dir: Path, user: str) -> None:
    d = mailbox_dir(dovecot_dir, user, "INBOX")
    index = (d / "dovecot.index").read_bytes()
    log = (d / "dovecot.index.log").read_bytes()
    for length in range(len(index)):
        with pytest.raises(DovecotIndexError) as err:
            read_mailbox_index(index[:length], log, name="dovecot.index")
        assert err.value.file == "dovecot.index"


@SETTINGS
@given(data=st.data())
def test_random_log_truncation_raises_only_dovecot_index_error(
    dovecot_dir: Path, data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(LOG_KEYS))
    path = _log_path(dovecot_dir, key)
    raw = path.read_bytes()
    length = data.draw(st.integers(min_value=0, max_value=len(raw)))
    index = _index_for(path)
    try:
        _read_any(key, raw[:length], index)
    except DovecotIndexError as exc:
        assert exc.file and exc.reason
    tolerant = data.draw(st.booleans())
    try:
        state = replay_index(index, raw[:length], allow_partial_tail=tolerant)
    except DovecotIndexError:
        return
    assert isinstance(state, IndexState)


@SETTINGS
@given(data=st.data())
def test_random_corruption_raises_only_dovecot_index_error(
    dovecot_dir: Path, data: st.DataObject
) -> None:
    key = data.draw(st.sampled_from(LOG_KEYS))
    path = _log_path(dovecot_dir, key)
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[pos] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        _read_any(key, bytes(raw), _index_for(path))
    except DovecotIndexError as exc:
        assert exc.file and exc.reason


@SETTINGS
@given(data=st.data())
def test_random_index_corruption_raises_only_dovecot_index_error(
    dovecot_dir: Path, data: st.DataObject
) -> None:
    user = data.draw(st.sampled_from(["sdbox", "mdbox"]))
    d = mailbox_dir(dovecot_dir, user, "INBOX")
    raw = bytearray((d / "dovecot.index").read_bytes())
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        pos = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[pos] = data.draw(st.integers(min_value=0, max_value=255))
    try:
        read_mailbox_index(bytes(raw), (d / "dovecot.index.log").read_bytes())
    except DovecotIndexError as exc:
        assert exc.file and exc.reason
