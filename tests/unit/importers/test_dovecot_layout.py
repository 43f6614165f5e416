"""Recognising Dovecot mail roots on disk (blocking helper) and loading them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dovecot_testlib import MAILBOXES, USERS, mail_root

from aiodbox.importers import (
    DovecotLayoutError,
    load_mailbox_index,
    load_mailbox_list,
    load_mdbox_map,
    load_subscriptions,
    scan_dovecot_root,
)


@pytest.mark.parametrize("user", USERS)
def test_scan_detects_format_and_mailboxes(
    dovecot_dir: Path, manifest: dict[str, Any], user: str
) -> None:
    root = scan_dovecot_root(mail_root(dovecot_dir, user))
    assert root.storage == user
    assert [m.name for m in root.mailboxes] == ["INBOX", "Archive/2024"]
    assert root.subscriptions is not None and root.uidvalidity_file is not None
    assert root.list_index.log is not None and root.list_index.index is None
    assert root.last_uidvalidity == 1795789247
    inbox = root.mailbox("INBOX")
    assert inbox is not None and inbox.index.index is not None and inbox.index.log is not None
    archive = root.mailbox("Archive/2024")
    assert archive is not None and archive.index.index is None
    assert archive.path == mail_root(dovecot_dir, user) / "mailboxes/Archive/2024/dbox-Mails"
    assert root.mailbox("Archive") is None  # \Noselect level, no dbox-Mails
    if user == "sdbox":
        assert root.map_index is None and root.storage_files == ()
        for box in MAILBOXES:
            mbox = root.mailbox(box)
            assert mbox is not None
            expected = [m for m in manifest["users"]["sdbox"]["messages"] if m["mailbox"] == box]
            assert [uid for uid, _ in mbox.mail_files] == [m["uid"] for m in expected]
            for (_, path), m in zip(mbox.mail_files, expected, strict=True):
                assert path == dovecot_dir / "sdbox" / m["file"]
    else:
        assert root.map_index is not None and root.map_index.log is not None
        assert [(n, p.name) for n, p in root.storage_files] == [(i, f"m.{i}") for i in range(1, 5)]
        assert all(m.mail_files == () for m in root.mailboxes)


@pytest.mark.parametrize("user", USERS)
def test_loaders_end_to_end(dovecot_dir: Path, manifest: dict[str, Any], user: str) -> None:
    root = scan_dovecot_root(str(mail_root(dovecot_dir, user)))
    for mbox in root.mailboxes:
        state = load_mailbox_index(mbox)
        (expected,) = [m for m in manifest["users"][user]["mailboxes"] if m["mailbox"] == mbox.name]
        assert (state.uidvalidity, state.uidnext, state.highest_modseq, len(state.messages)) == (
            expected["uidvalidity"],
            expected["uidnext"],
            expected["highestmodseq"],
            expected["messages"],
        )
    assert load_subscriptions(root) == ("Archive/2024",)
    assert [e.name for e in load_mailbox_list(root)] == ["Archive", "Archive/2024", "INBOX"]
    if user == "mdbox":
        assert len(load_mdbox_map(root).entries) == 26
    else:
        with pytest.raises(DovecotLayoutError, match="not an mdbox root"):
            load_mdbox_map(root)


def test_home_directory_is_rejected_with_a_hint(dovecot_dir: Path) -> None:
    with pytest.raises(DovecotLayoutError, match="did you mean") as err:
        scan_dovecot_root(dovecot_dir / "sdbox")
    assert str(dovecot_dir / "sdbox" / "sdbox") in str(err.value)
    assert err.value.path == str(dovecot_dir / "sdbox")


def test_paths_that_are_not_mail_roots(tmp_path: Path, dovecot_dir: Path) -> None:
    with pytest.raises(DovecotLayoutError, match="no such file"):
        scan_dovecot_root(tmp_path / "missing")
    with pytest.raises(DovecotLayoutError, match="not a directory"):
        scan_dovecot_root(dovecot_dir / "manifest.json")
    with pytest.raises(DovecotLayoutError, match="not a Dovecot sdbox/mdbox mail root"):
        scan_dovecot_root(tmp_path)
    (tmp_path / "mailboxes" / "INBOX").mkdir(parents=True)
    with pytest.raises(DovecotLayoutError, match="no mailboxes/<name>/dbox-Mails/ mailbox"):
        scan_dovecot_root(tmp_path)
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    with pytest.raises(DovecotLayoutError, match="not a Dovecot"):
        scan_dovecot_root(maildir)


def test_mixed_sdbox_and_mdbox_files_are_refused(tmp_path: Path) -> None:
    box = tmp_path / "mailboxes" / "INBOX" / "dbox-Mails"
    box.mkdir(parents=True)
    (box / "u.1").write_bytes(b"")
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "m.1").write_bytes(b"")
    with pytest.raises(DovecotLayoutError, match="refusing to guess"):
        scan_dovecot_root(tmp_path)


def test_minimal_roots_and_name_decoding(tmp_path: Path) -> None:
    for name in ("INBOX", "Entw&APw-rfe", "a/b&-c", "bad&name"):
        (tmp_path / "mailboxes" / name / "dbox-Mails").mkdir(parents=True)
    (tmp_path / "mailboxes" / "INBOX" / "dbox-Mails" / "u.10").write_bytes(b"")
    (tmp_path / "mailboxes" / "INBOX" / "dbox-Mails" / "u.2").write_bytes(b"")
    (tmp_path / "mailboxes" / "INBOX" / "dbox-Mails" / "u.x").write_bytes(b"")
    (tmp_path / "mailboxes" / "INBOX" / "dbox-Mails" / "u.03").write_bytes(b"")
    root = scan_dovecot_root(tmp_path)
    assert root.storage == "sdbox"
    assert [(m.name, m.storage_name) for m in root.mailboxes] == [
        ("INBOX", "INBOX"),
        ("Entwürfe", "Entw&APw-rfe"),
        ("a/b&c", "a/b&-c"),
        ("bad&name", "bad&name"),
    ]
    inbox = root.mailbox("INBOX")
    assert inbox is not None and [uid for uid, _ in inbox.mail_files] == [2, 10]
    assert not inbox.index.exists
    assert root.subscriptions is None and root.last_uidvalidity is None
    assert load_subscriptions(root) == () and load_mailbox_list(root) == ()

    mdbox = tmp_path / "md"
    (mdbox / "storage").mkdir(parents=True)
    (mdbox / "storage" / "dovecot.map.index.log").write_bytes(b"")
    md = scan_dovecot_root(mdbox)
    assert md.storage == "mdbox" and md.mailboxes == ()
