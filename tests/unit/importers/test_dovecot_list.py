"""Mailbox list index, subscriptions, dovecot-uidvalidity and modified UTF-7."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dovecot_testlib import USERS, mail_root

from aiodbox.importers.dovecot_index import DovecotIndexError
from aiodbox.importers.dovecot_list import (
    decode_mutf7,
    parse_subscriptions,
    parse_uidvalidity_file,
    read_mailbox_list_index,
)


@pytest.mark.parametrize("user", USERS)
def test_list_index_names_guids_and_uidvalidity(
    dovecot_dir: Path, manifest: dict[str, Any], user: str
) -> None:
    root = mail_root(dovecot_dir, user)
    assert not (root / "dovecot.list.index").exists()  # log-only in the fixture
    entries = read_mailbox_list_index(None, (root / "dovecot.list.index.log").read_bytes())
    by_name = {e.name: e for e in entries}
    assert sorted(by_name) == ["Archive", "Archive/2024", "INBOX"]

    archive = by_name["Archive"]
    assert archive.noselect and not archive.nonexistent
    assert (archive.guid, archive.uid_validity) == (None, None)

    for box in manifest["users"][user]["mailboxes"]:
        entry = by_name[box["mailbox"]]
        assert not entry.noselect and not entry.nonexistent and not entry.noinferiors
        assert entry.guid == box["guid"]
        assert entry.uid_validity == box["uidvalidity"]
        assert entry.storage_name == box["mailbox"]
        if entry.messages is not None:  # cached STATUS (Dovecot never caches INBOX)
            assert (entry.messages, entry.uidnext, entry.highest_modseq) == (
                box["messages"],
                box["uidnext"],
                box["highestmodseq"],
            )
    assert by_name["Archive/2024"].messages == 9
    assert by_name["INBOX"].messages is None


@pytest.mark.parametrize("user", USERS)
def test_subscriptions_file(dovecot_dir: Path, user: str) -> None:
    data = (mail_root(dovecot_dir, user) / "subscriptions").read_bytes()
    assert data.startswith(b"V\t2\n\n")  # version 2: levels separated by TAB
    assert parse_subscriptions(data) == ("Archive/2024",)
    assert parse_subscriptions(data, separator=".") == ("Archive.2024",)


def test_subscriptions_escapes_and_version_1() -> None:
    v2 = b"V\t2\n\nINBOX\na\x01tb\tc\x011d\n\nINBOX\n"
    assert parse_subscriptions(v2) == ("INBOX", "a\tb/c\x01d")
    assert parse_subscriptions(b"INBOX\nWork/Projects\n") == ("INBOX", "Work/Projects")
    assert parse_subscriptions(b"") == ()
    with pytest.raises(DovecotIndexError, match="not UTF-8") as err:
        parse_subscriptions(b"V\t2\n\nok\n\xff\n", name="subs")
    assert (err.value.file, err.value.offset) == ("subs", 8)


@pytest.mark.parametrize("user", USERS)
def test_uidvalidity_file(dovecot_dir: Path, manifest: dict[str, Any], user: str) -> None:
    value = parse_uidvalidity_file(
        (mail_root(dovecot_dir, user) / "dovecot-uidvalidity").read_bytes()
    )
    # the last value handed out: the newest mailbox's UIDVALIDITY
    assert value == max(m["uidvalidity"] for m in manifest["users"][user]["mailboxes"])
    assert parse_uidvalidity_file(b"0000002a\n") == 42
    for bad in (b"", b"xyz", b"123456789", b"\xff"):
        with pytest.raises(DovecotIndexError):
            parse_uidvalidity_file(bad)


def test_decode_mutf7() -> None:
    assert decode_mutf7("INBOX") == "INBOX"
    assert decode_mutf7("Entw&APw-rfe") == "Entwürfe"
    assert decode_mutf7("&ZeVnLIqe-") == "日本語"
    assert decode_mutf7("Tom &- Jerry") == "Tom & Jerry"
    assert decode_mutf7("&2D3eAA-") == "\U0001f600"  # surrogate pair
    for bad in ("&ZeVnLIqe", "&AGE-", "&!!-", "caf\u00e9", "&2D0-"):
        with pytest.raises(ValueError):
            decode_mutf7(bad)


def test_list_index_without_list_extension_is_empty_or_an_error(dovecot_dir: Path) -> None:
    # A mailbox index is an index too, but has no "list" extension.
    log = mail_root(dovecot_dir, "sdbox") / "mailboxes/INBOX/dbox-Mails/dovecot.index.log"
    with pytest.raises(DovecotIndexError, match="no 'list' extension"):
        read_mailbox_list_index(None, log.read_bytes())
