"""``aiodbox dbox dump``: JSON lines, the readable listing and exit statuses."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from aiodbox.cli.dbox import register, run_dump
from aiodbox.dbox import encode_file_header, encode_record

SEP = b"00112233445566778899aabbccddeeff"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="aiodbox")
    register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = _parse(argv)
    assert args.func is run_dump
    status = args.func(args)
    out, err = capsys.readouterr()
    return status, out, err


def test_json_dump_of_a_dovecot_mdbox_file(
    fixtures_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dovecot = fixtures_dir / "dovecot-2.3"
    manifest = json.loads((dovecot / "manifest.json").read_text())
    path = dovecot / "mdbox" / "mdbox" / "storage" / "m.3"
    status, out, err = _run(["dbox", "dump", str(path), "--json"], capsys)
    assert status == 0 and err == ""
    lines = [json.loads(line) for line in out.splitlines()]
    expected = sorted(
        (m["mdbox_location"]["offset"], m["guid"], m["size_physical"], m["imap_sha256"])
        for m in manifest["users"]["mdbox"]["messages"]
        if m["mdbox_location"]["file"].endswith("/m.3")
    )
    assert [(d["offset"], d["guid"], d["size"], d["sha256"]) for d in lines] == expected
    for d in lines:
        assert set(d) >= {"offset", "size", "guid", "received", "sha256", "format", "status"}
        assert d["format"] == "v2" and d["status"] == "ok"
        assert isinstance(d["received"], int)
        assert "reason" not in d


def test_readable_listing_of_a_v3_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "u.1"
    path.write_bytes(
        encode_file_header(SEP, 1_700_000_000)
        + encode_record(SEP, b"Subject: hi\r\n\r\nbody\r\n", guid="ab" * 16, received=1_704_186_000)
    )
    status, out, err = _run(["dbox", "dump", str(path)], capsys)
    assert status == 0 and err == ""
    assert "dbox v3" in out
    assert f"offset {len(encode_file_header(SEP, 1_700_000_000))}:" in out
    assert "msg.guid = " + "ab" * 16 in out
    assert "msg.received = 1704186000 (2024-01-02 09:00:00)" in out
    assert "status = ok" in out


def test_corrupted_record_exits_1_and_reports_the_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    header = encode_file_header(SEP, 1)
    first = encode_record(SEP, b"first", guid="01" * 16)
    second = bytearray(encode_record(SEP, b"second", guid="02" * 16))
    second[5] ^= 0xFF  # inside the body: the digest no longer matches
    path = tmp_path / "m.1"
    path.write_bytes(header + first + bytes(second))
    status, out, _ = _run(["dbox", "dump", str(path), "--json"], capsys)
    assert status == 1
    rows: list[dict[str, Any]] = [json.loads(line) for line in out.splitlines()]
    assert [r["status"] for r in rows] == ["ok", "corrupted"]
    bad = rows[1]
    assert bad["offset"] == len(header) + len(first)
    assert bad["length"] == len(second)
    assert "BLAKE2b" in bad["reason"]
    assert bad["guid"] is None and bad["sha256"] is None

    status, out, _ = _run(["dbox", "dump", str(path)], capsys)
    assert status == 1
    assert "status = corrupted" in out and "reason = " in out


def test_unreadable_or_foreign_file_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = _run(["dbox", "dump", str(tmp_path / "missing")], capsys)
    assert (status, out) == (2, "")
    assert err.count("\n") == 1 and "cannot read" in err
    status, out, err = _run(["dbox", "dump", str(tmp_path)], capsys)
    assert (status, out) == (2, "")
    assert err.count("\n") == 1
    foreign = tmp_path / "notes.txt"
    foreign.write_bytes(b"just some text\n")
    status, out, err = _run(["dbox", "dump", str(foreign)], capsys)
    assert (status, out) == (2, "")
    assert "not a dbox file" in err and err.count("\n") == 1


def test_module_entry_point_has_no_traceback(tmp_path: Path, fixtures_dir: Path) -> None:
    sdbox = fixtures_dir / "dovecot-2.3" / "sdbox" / "sdbox" / "mailboxes" / "INBOX"
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "aiodbox.cli.dbox",
            "dbox",
            "dump",
            "--json",
            str(sdbox / "dbox-Mails" / "u.14"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    (row,) = [json.loads(line) for line in ok.stdout.splitlines()]
    assert row["offset"] == 16 and row["size"] == 244
    bad = subprocess.run(
        [sys.executable, "-m", "aiodbox.cli.dbox", "dbox", "dump", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1
    usage = subprocess.run(
        [sys.executable, "-m", "aiodbox.cli.dbox", "dbox", "dump"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
