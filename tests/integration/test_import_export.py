"""``aiodbox import maildir|mbox`` and ``aiodbox export maildir``, through the CLI.

Maildir and mbox sources are built here with the stdlib :mod:`mailbox` module (and one
mbox written byte by byte, to control every header).  The round trip imports the real
Dovecot fixture, adds mailboxes whose names Maildir++ makes awkward, exports to a
Maildir, imports that into a new user and compares everything the storage holds.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import gc
import hashlib
import mailbox
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

# Everything the CLI imports is loaded before the per-test gc.freeze() (see
# test_import_dovecot.py).
import aiodbox.auth.passwd_file
import aiodbox.auth.schemes
import aiodbox.cli.export
import aiodbox.cli.importer
import aiodbox.cli.user
import aiodbox.importers.maildir_mbox  # noqa: F401
from aiodbox.cli.main import build_parser, main
from aiodbox.config import load_config
from aiodbox.importers.dovecot_import import import_dovecot
from aiodbox.storage import Storage
from aiodbox.storage.mailbox import bits_to_flags, flags_to_bits

build_parser()
with contextlib.suppress(ImportError):
    import uvloop  # noqa: F401  (the CLI's event loop)

T0 = 1_700_000_000


def write_config(tmp_path: Path, fmt: str) -> Path:
    path = tmp_path / "aiodbox.toml"
    path.write_text(
        f'[storage]\nformat = "{fmt}"\nmail_root = "mail"\nindex_root = "index"\n'
        'fs = "posix"\nfsync = "never"\n[auth]\npasswd_file = "users"\n'
    )
    return path


def _main_then_collect(argv: list[str]) -> int:
    try:
        return main(argv)
    finally:
        gc.collect()  # the CLI's cyclic garbage is swept in its thread, not on our loop


async def cli(config: Path, *args: str) -> int:
    """Run ``aiodbox --config CONFIG ARGS`` in a worker thread (it runs its own loop)."""
    return await asyncio.to_thread(_main_then_collect, ["--config", str(config), *args])


def crlf(data: bytes) -> bytes:
    return re.sub(rb"(?<!\r)\n", b"\r\n", data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
async def storages() -> AsyncIterator[list[Storage]]:
    opened: list[Storage] = []
    yield opened
    for storage in opened:
        await storage.close()


async def snapshot(storage: Storage, user_name: str) -> dict[str, Any]:
    """Everything the storage holds about a user's mail, bodies as sha256."""
    user = await storage.user(user_name, create=False)
    out: dict[str, Any] = {"subscriptions": await user.subscriptions(), "mailboxes": {}}
    for info in await user.list_mailboxes():
        status = await user.status(info.name)
        mbox = await user.open_mailbox(info.name)
        try:
            messages = []
            for rec in await mbox.records(list(mbox.view.uids)):
                msg = await mbox.open_message(rec)
                digest = hashlib.sha256()
                try:
                    async for chunk in msg.open_body():
                        digest.update(chunk)
                finally:
                    await msg.aclose()
                messages.append(
                    {
                        "uid": rec.uid,
                        "guid": rec.guid,
                        "flags": sorted(bits_to_flags(rec.flags)),
                        "keywords": sorted(rec.keywords),
                        "internal_date": rec.internal_date,
                        "size": rec.size,
                        "sha256": digest.hexdigest(),
                    }
                )
        finally:
            await mbox.close()
        out["mailboxes"][info.name] = {
            "guid": info.guid,
            "uidvalidity": info.uidvalidity,
            "uidnext": status.uidnext,
            "messages": messages,
        }
    return out


# --------------------------------------------------------------------------- Maildir


def build_maildir(root: Path) -> dict[str, list[dict[str, Any]]]:
    """A Maildir++ tree: INBOX, ``.Sub.Folder``, a modified-UTF-7 folder; returns what
    each mailbox should hold (flags, keywords, date, sha256 of the CRLF bytes)."""
    md = mailbox.Maildir(root, create=True)
    expected: dict[str, list[dict[str, Any]]] = {}

    def add(
        box: mailbox.Maildir,
        name: str,
        n: int,
        flags: str,
        *,
        subdir: str = "cur",
        kws: tuple[str, ...] = (),
        info: str | None = None,
    ) -> None:
        raw = (
            f"From: sender{n}@example.test\nTo: rcpt@example.test\nSubject: message {n}\n"
            f"Message-ID: <m{n}@example.test>\n\nline one of {n}\r\nline two\n"
        ).encode()
        msg = mailbox.MaildirMessage(raw)
        msg.set_subdir(subdir)
        if subdir == "cur":
            msg.set_info(info if info is not None else "2," + flags)
        msg.set_date(T0 + n * 3600)
        key = box.add(msg)
        stored = box.get_bytes(key)
        names = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen"}
        names["T"] = "\\Deleted"
        expected.setdefault(name, []).append(
            {
                "flags": sorted(names[c] for c in flags if subdir == "cur"),
                "keywords": sorted(kws),
                "internal_date": T0 + n * 3600,
                "sha256": sha(crlf(stored)),
                "size": len(crlf(stored)),
            }
        )

    add(md, "INBOX", 1, "S")
    add(md, "INBOX", 2, "FRS")
    add(md, "INBOX", 3, "", subdir="new")
    add(md, "INBOX", 4, "DT")
    sub = md.add_folder("Sub.Folder")
    (root / ".Sub.Folder" / "dovecot-keywords").write_text("0 $Important\n1 Work\n")
    add(sub, "Sub/Folder", 5, "S", kws=("$Important", "Work"), info="2,Sab")
    add(sub, "Sub/Folder", 6, "", kws=("Work",), info="2,b")
    utf = md.add_folder("Entw&APw-rfe")
    add(utf, "Entwürfe", 7, "DS", info="2,DSa")  # no dovecot-keywords: "a" is lost
    return expected


async def test_maildir_import_flags_dates_folders_and_bytes(
    tmp_path: Path, storages: list[Storage], capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "Maildir"
    expected = await asyncio.to_thread(build_maildir, source)
    config = write_config(tmp_path, "sdbox")
    assert await cli(config, "import", "maildir", str(source), "--user", "una") == 0
    out, err = capsys.readouterr()
    assert "imported 7 message(s) into 3 mailbox(es)" in out
    assert "Entwürfe: keyword letters a lost" in err
    assert "Traceback" not in err

    storage = Storage(load_config(config).storage)
    storages.append(storage)
    got = await snapshot(storage, "una")
    for name, wanted in expected.items():
        messages = got["mailboxes"][name]["messages"]
        by_date = sorted(messages, key=lambda m: m["internal_date"])
        assert [m["uid"] for m in messages] == list(range(1, len(wanted) + 1))  # date order
        for m, w in zip(by_date, sorted(wanted, key=lambda w: w["internal_date"]), strict=True):
            for key in ("flags", "keywords", "internal_date", "sha256", "size"):
                assert m[key] == w[key], (name, key)


async def test_maildir_import_under_mailbox_option(
    tmp_path: Path, storages: list[Storage], capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "Maildir"
    await asyncio.to_thread(build_maildir, source)
    config = write_config(tmp_path, "mdbox")
    code = await cli(
        config, "import", "maildir", str(source), "--user", "vic", "--mailbox", "Old/Mail"
    )
    assert code == 0
    capsys.readouterr()
    storage = Storage(load_config(config).storage)
    storages.append(storage)
    user = await storage.user("vic", create=False)
    names = {m.name for m in await user.list_mailboxes()}
    assert {"Old/Mail", "Old/Mail/Sub/Folder", "Old/Mail/Entwürfe"} <= names
    assert (await user.status("INBOX")).messages == 0
    assert (await user.status("Old/Mail")).messages == 4


# --------------------------------------------------------------------------- mbox


def build_mbox(path: Path) -> list[dict[str, Any]]:
    """Two messages through the stdlib, one written byte for byte (Dovecot's headers)."""
    box = mailbox.mbox(path, create=True)
    first = mailbox.mboxMessage(
        b"From: a@example.test\nSubject: stdlib one\nX-Keywords: $Label1 Work\n\n"
        b"From the start\nbody\n"
    )
    first.set_from("a@example.test", time.gmtime(calendar.timegm((2023, 11, 14, 22, 13, 20))))
    first.set_flags("RAF")
    second = mailbox.mboxMessage(b"From: b@example.test\nSubject: stdlib two\n\nunread\n")
    second.set_from("b@example.test", time.gmtime(calendar.timegm((2024, 1, 2, 9, 0, 0))))
    box.add(first)
    box.add(second)
    box.flush()
    box.close()
    with open(path, "ab") as f:
        f.write(
            b"\nFrom MAILER-DAEMON Sat Feb  3 10:20:30 2024\n"
            b"Return-Path: <c@example.test>\nX-UID: 7\nStatus: RO\nX-Status: DT\n"
            b"Subject: raw\nX-Keywords: Later\nDate: Mon, 01 Jan 2024 00:00:00 +0000\n\n"
            b"last body\n"
        )
    return [
        {
            "flags": ["\\Answered", "\\Flagged", "\\Seen"],
            "keywords": ["$Label1", "Work"],
            "internal_date": calendar.timegm((2023, 11, 14, 22, 13, 20, 0, 0, 0)),
            "subject": b"stdlib one",
        },
        {
            "flags": [],
            "keywords": [],
            "internal_date": calendar.timegm((2024, 1, 2, 9, 0, 0, 0, 0, 0)),
            "subject": b"stdlib two",
        },
        {
            "flags": ["\\Deleted", "\\Draft", "\\Seen"],
            "keywords": ["Later"],
            "internal_date": calendar.timegm((2024, 2, 3, 10, 20, 30, 0, 0, 0)),
            "subject": b"raw",
            "bytes": b"Return-Path: <c@example.test>\r\nSubject: raw\r\n"
            b"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n\r\nlast body\r\n",
        },
    ]


async def test_mbox_import_flags_keywords_dates_and_metadata_headers(
    tmp_path: Path, storages: list[Storage], capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "mail.mbox"
    expected = await asyncio.to_thread(build_mbox, source)
    config = write_config(tmp_path, "mdbox")
    assert await cli(config, "import", "mbox", str(source), "--user", "wes") == 0
    assert "imported 3 message(s) into 1 mailbox(es)" in capsys.readouterr().out

    storage = Storage(load_config(config).storage)
    storages.append(storage)
    user = await storage.user("wes", create=False)
    inbox = await user.open_mailbox("INBOX")
    try:
        records = await inbox.records(list(inbox.view.uids))
        assert [r.uid for r in records] == [1, 2, 3]
        for rec, want in zip(records, expected, strict=True):
            assert sorted(bits_to_flags(rec.flags)) == want["flags"]
            assert sorted(rec.keywords) == want["keywords"]
            assert rec.internal_date == want["internal_date"]
            msg = await inbox.open_message(rec)
            try:
                data = await msg.open_body().read_all(1 << 20)
            finally:
                await msg.aclose()
            assert b"\r\nSubject: " + want["subject"] + b"\r\n" in data
            assert re.search(rb"(?<!\r)\n", data) is None  # CRLF only
            for header in (b"Status:", b"X-Status:", b"X-Keywords:", b"X-UID:"):
                assert b"\r\n" + header not in data and not data.startswith(header)
            if "bytes" in want:
                assert data == want["bytes"]
            assert rec.size == len(data)
        first = (await inbox.records([1]))[0]
        msg = await inbox.open_message(first)
        try:
            body = await msg.open_body().read_all(1 << 20)
        finally:
            await msg.aclose()
        assert b"\r\n>From the start\r\n" in body  # mbox From-quoting is left as found
    finally:
        await inbox.close()


async def test_mbox_into_named_mailbox(
    tmp_path: Path, storages: list[Storage], capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "mail.mbox"
    await asyncio.to_thread(build_mbox, source)
    config = write_config(tmp_path, "sdbox")
    args = ("import", "mbox", str(source), "--user", "xia", "--mailbox", "Archive/Old")
    assert await cli(config, *args) == 0
    capsys.readouterr()
    storage = Storage(load_config(config).storage)
    storages.append(storage)
    user = await storage.user("xia", create=False)
    assert (await user.status("Archive/Old")).messages == 3


# --------------------------------------------------------------------------- bad input


async def test_bad_sources_and_targets_exit_cleanly(
    tmp_path: Path, fixtures_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "sdbox")
    (tmp_path / "plain").mkdir()
    (tmp_path / "notmbox").write_bytes(b"Subject: no From_ line\n\nbody\n")

    async def one_line(code: int, *args: str) -> str:
        assert await cli(config, *args) == code, args
        _, err = capsys.readouterr()
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("aiodbox: "), err
        return lines[0]

    line = await one_line(2, "import", "maildir", str(tmp_path / "plain"), "--user", "y")
    assert "not a Maildir" in line
    await one_line(2, "import", "maildir", str(tmp_path / "nope"), "--user", "y")
    line = await one_line(2, "import", "mbox", str(tmp_path / "notmbox"), "--user", "y")
    assert "not an mbox file" in line
    await one_line(2, "import", "mbox", str(tmp_path / "plain"), "--user", "y")
    line = await one_line(2, "import", "maildir", str(tmp_path), "--user", "a/b")
    assert "invalid user name 'a/b'" in line
    line = await one_line(2, "import", "maildir", str(tmp_path), "--user", "y", "--mailbox", "a//b")
    assert "--mailbox" in line
    line = await one_line(4, "export", "maildir", str(tmp_path / "out"), "--user", "nobody")
    assert "no mail store" in line
    assert not (tmp_path / "out").exists()

    sdbox_root = fixtures_dir / "dovecot-2.3" / "sdbox" / "sdbox"
    assert await cli(config, "import", "dovecot", str(sdbox_root), "--user", "y") == 0
    capsys.readouterr()
    line = await one_line(2, "export", "maildir", str(tmp_path), "--user", "y")
    assert "not empty" in line


# --------------------------------------------------------------------------- round trip


async def _add_awkward_mailboxes(storage: Storage, user_name: str) -> None:
    """Names Maildir++ must escape, keywords, and a subscription on one of them."""
    user = await storage.user(user_name, create=False)
    for name in ("Projekte/Überblick & Plan", "Lists/python.org", "v1.2/x.y"):
        await user.create_mailbox(name)
    await user.subscribe("Lists/python.org")
    src = await user.open_mailbox("INBOX")
    try:
        dst = await user.open_mailbox("Lists/python.org")
        try:
            await src.copy([1, 4, 10], dst)
            await dst.store([1], "add", flags_to_bits(["\\Draft"]), ["NonJunk", "$MDNSent"])
        finally:
            await dst.close()
    finally:
        await src.close()
    box = await user.open_mailbox("Projekte/Überblick & Plan")
    try:
        await box.save(b"Subject: no final newline", flags=1, internal_date=T0, keywords=["x"])
    finally:
        await box.close()


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_export_import_round_trip_is_lossless(
    tmp_path: Path,
    fixtures_dir: Path,
    storages: list[Storage],
    fmt: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config(tmp_path, fmt)
    storage = Storage(load_config(config).storage)
    await import_dovecot(storage, "ann", fixtures_dir / "dovecot-2.3" / "mdbox" / "mdbox")
    await _add_awkward_mailboxes(storage, "ann")
    before = await snapshot(storage, "ann")
    await storage.close()

    out = tmp_path / "export"
    assert await cli(config, "export", "maildir", str(out), "--user", "ann") == 0
    text, err = capsys.readouterr()
    assert "exported 30 message(s) from 10 mailbox(es)" in text
    assert "problem" not in err

    # The files themselves: Maildir++ names, flags, mtime = INTERNALDATE, IMAP bytes.
    folders = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert ".Lists.python%2Eorg" in folders and ".v1%2E2.x%2Ey" in folders
    assert ".Projekte.&ANw-berblick &- Plan" in folders
    inbox_files = await asyncio.to_thread(lambda: sorted((out / "cur").iterdir()))
    by_uid = {int(p.name.split("_")[1].split(".")[0]): p for p in inbox_files}
    for m in before["mailboxes"]["INBOX"]["messages"]:
        path = by_uid[m["uid"]]
        assert int(path.stat().st_mtime) == m["internal_date"]
        assert sha(path.read_bytes()) == m["sha256"]
        assert path.name.endswith(":2," + _info_letters(m["flags"], path.name))

    assert await cli(config, "import", "maildir", str(out), "--user", "ben") == 0
    text, err = capsys.readouterr()
    assert "imported 30 message(s) into 10 mailbox(es)" in text
    assert "problem" not in err and "lost" not in err

    storage = Storage(load_config(config).storage)
    storages.append(storage)
    after = await snapshot(storage, "ben")
    assert after == before


def _info_letters(flags: list[str], name: str) -> str:
    letters = {"\\Draft": "D", "\\Flagged": "F", "\\Answered": "R", "\\Seen": "S"}
    letters["\\Deleted"] = "T"
    system = "".join(sorted(letters[f] for f in flags))
    keywords = re.sub("[A-Z]", "", name.rsplit(":2,", 1)[1])
    return system + keywords


async def test_maildir_with_uidlist_into_a_mailbox_with_mail_appends(
    tmp_path: Path, fixtures_dir: Path, storages: list[Storage], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "sdbox")
    storage = Storage(load_config(config).storage)
    storages.append(storage)
    await import_dovecot(storage, "cat", fixtures_dir / "dovecot-2.3" / "sdbox" / "sdbox")
    await storage.close()
    storages.clear()
    out = tmp_path / "export"
    assert await cli(config, "export", "maildir", str(out), "--user", "cat") == 0
    # Into the same user again: INBOX holds mail with the same UIDVALIDITY, so the
    # import resumes there (nothing new); into another user whose INBOX has mail of
    # its own, the messages are appended with new UIDs.
    assert await cli(config, "import", "maildir", str(out), "--user", "cat") == 0
    assert "INBOX: 0 (resumed" in capsys.readouterr().out

    storage = Storage(load_config(config).storage)
    storages.append(storage)
    dog = await storage.user("dog")
    inbox = await dog.open_mailbox("INBOX")
    await inbox.save(b"Subject: first\r\n\r\n")
    await inbox.close()
    await storage.close()
    storages.clear()
    assert await cli(config, "import", "maildir", str(out), "--user", "dog") == 0
    text, err = capsys.readouterr()
    assert "INBOX: 17 (appended" in text
    assert "INBOX: holds other mail: messages get new UIDs" in err
    storage = Storage(load_config(config).storage)
    storages.append(storage)
    dog = await storage.user("dog", create=False)
    inbox = await dog.open_mailbox("INBOX")
    try:
        assert list(inbox.view.uids) == list(range(1, 19))
    finally:
        await inbox.close()


def test_helpers_are_consistent() -> None:
    """Name escaping round-trips, and file names carry flags in ASCII order."""
    from aiodbox.importers.maildir_mbox import (
        maildir_folder_to_name,
        maildir_info,
        maildir_info_flags,
        name_to_maildir_folder,
    )

    for name in ("A/B", "Überblick & Plan/x", "python.org/3.12", "v1.2/a.b", "INBOX/child"):
        assert maildir_folder_to_name(name_to_maildir_folder(name)) == name
    assert name_to_maildir_folder("Entwürfe") == "Entw&APw-rfe"
    bits = flags_to_bits(["\\Seen", "\\Draft", "\\Deleted", "\\Answered", "\\Flagged"])
    assert maildir_info(bits, ["b", "a"]) == "2,DFRSTab"
    assert maildir_info_flags("2,DFRSTab", ["k0", "k1"]) == (bits, ["k0", "k1"], "")
    assert maildir_info_flags("2,Pc", ["k0"]) == (0, [], "c")


async def test_more_than_26_keywords_in_a_folder_are_dropped_and_reported(
    tmp_path: Path, storages: list[Storage], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, "sdbox")
    storage = Storage(load_config(config).storage)
    user = await storage.user("kim")
    inbox = await user.open_mailbox("INBOX")
    many = [f"kw{i:02d}" for i in range(28)]
    try:
        await inbox.save(b"Subject: a\r\n\r\n", keywords=many[:20], internal_date=T0)
        await inbox.save(b"Subject: b\r\n\r\n", keywords=many[15:], internal_date=T0)
    finally:
        await inbox.close()
    await storage.close()
    out = tmp_path / "export"
    assert await cli(config, "export", "maildir", str(out), "--user", "kim") == 0
    err = capsys.readouterr().err
    assert "INBOX: keywords kw26, kw27 not exported (a Maildir folder holds 26" in err
    keywords_file = (out / "dovecot-keywords").read_text().splitlines()
    assert keywords_file[0] == "0 kw00" and keywords_file[-1] == "25 kw25"
    assert await cli(config, "import", "maildir", str(out), "--user", "lee") == 0
    capsys.readouterr()
    storage = Storage(load_config(config).storage)
    storages.append(storage)
    got = await snapshot(storage, "lee")
    kws = [m["keywords"] for m in got["mailboxes"]["INBOX"]["messages"]]
    assert kws == [sorted(many[:20]), sorted(many[15:26])]


async def test_thread_feed_bounds_what_the_thread_reads_ahead() -> None:
    """The producer blocks once ``max_items`` (or ``max_bytes``) wait for the loop, and
    stops at its next ``put`` when the consumer leaves."""
    from aiodbox.importers.maildir_mbox import ThreadFeed

    produced: list[int] = []

    def producer(put: Any) -> None:
        for i in range(1000):
            put(i, 10)
            produced.append(i)

    feed: ThreadFeed[int] = ThreadFeed(producer, max_items=3, max_bytes=1 << 20)
    got: list[int] = []
    async with feed:
        async for item in feed:
            got.append(item)
            await asyncio.sleep(0.01)  # a slow consumer
            assert len(produced) <= len(got) + 3
            if len(got) == 5:
                break
    assert got == [0, 1, 2, 3, 4]
    assert len(produced) <= 8  # stopped, not run to the end

    big: list[int] = []

    def by_bytes(put: Any) -> None:
        for i in range(4):
            put(i, 600)  # two of these exceed max_bytes=1000: one at a time
            big.append(i)

    feed2: ThreadFeed[int] = ThreadFeed(by_bytes, max_items=10, max_bytes=1000)
    async with feed2:
        async for item in feed2:
            await asyncio.sleep(0.01)
            assert len(big) <= item + 1
    assert big == [0, 1, 2, 3]

    def failing(put: Any) -> None:
        put(1, 1)
        raise OSError("disk on fire")

    feed3: ThreadFeed[int] = ThreadFeed(failing)
    seen: list[int] = []
    with pytest.raises(OSError, match="disk on fire"):
        async with feed3:
            async for item in feed3:
                seen.append(item)
    assert seen == [1]
