"""``aiodbox dbox dump FILE [--json]``: show the records of one dbox file (v2 or v3).

Exit status: 0 when every record is intact, 1 when any byte range is corrupted, 2 when
the file cannot be read or is not a dbox file (one line on stderr). The CLI has no event
loop, so the file is read with a plain blocking read.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from typing import TextIO

from aiodbox.dbox.codec import FileHeader, parse_file_header
from aiodbox.dbox.dump import DumpEntry, dump_file
from aiodbox.dbox.format import Corrupted
from aiodbox.dbox.v2 import V2FileHeader, parse_v2_file_header

_PROG = "aiodbox dbox dump"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``dbox`` command (with its ``dump`` subcommand) to ``subparsers``."""
    dbox = subparsers.add_parser("dbox", help="inspect dbox files")
    commands = dbox.add_subparsers(dest="dbox_command", required=True)
    dump = commands.add_parser(
        "dump",
        help="show every record of a dbox file (Dovecot 2.3 v2 or aiodbox v3)",
        description="Show every record of a dbox file. Exit status: 0 all intact, "
        "1 some bytes corrupted, 2 unreadable or not a dbox file.",
    )
    dump.add_argument("file", metavar="FILE", help="an sdbox u.N or mdbox m.N file")
    dump.add_argument("--json", action="store_true", help="one JSON object per record per line")
    dump.set_defaults(func=run_dump)


def _time(value: int | None) -> str:
    if value is None:
        return "-"
    try:
        stamp = datetime.datetime.fromtimestamp(value, datetime.UTC)
    except (OverflowError, OSError, ValueError):
        return str(value)
    return f"{value} ({stamp:%Y-%m-%d %H:%M:%S})"


def _print_header(data: bytes, out: TextIO) -> None:
    v3 = parse_file_header(data, eof=True)
    if isinstance(v3, FileHeader):
        out.write("Detected file type: dbox v3 (aiodbox)\n")
        out.write(f"file.separator = {v3.sep.decode('ascii')}\n")
        out.write(f"file.create_stamp = {_time(v3.ctime)}\n")
        return
    v2 = parse_v2_file_header(data, eof=True)
    if isinstance(v2, V2FileHeader):
        out.write("Detected file type: dbox v2 (Dovecot)\n")
        out.write(f"file.msg_header_size = {v2.msg_header_size}\n")
        out.write(f"file.create_stamp = {_time(v2.ctime)}\n")
        return
    out.write("Detected file type: dbox (file header damaged)\n")


def _print_entry(entry: DumpEntry, out: TextIO) -> None:
    out.write(f"\noffset {entry.offset}:\n")
    if entry.status != "ok":
        out.write(f"status = {entry.status}\n")
        out.write(f"length = {entry.length}\n")
        out.write(f"reason = {entry.reason}\n")
        return
    out.write(f"msg.size = {entry.size}\n")
    out.write(f"msg.received = {_time(entry.received)}\n")
    out.write(f"msg.guid = {entry.guid if entry.guid is not None else '-'}\n")
    out.write(f"msg.sha256 = {entry.sha256}\n")
    out.write(f"record.length = {entry.length}\n")
    out.write(f"status = {entry.status}\n")


def run_dump(args: argparse.Namespace) -> int:
    """Dump ``args.file``; print JSON lines if ``args.json``, else a doveadm-like listing.

    Returns:
        0 if every record is intact, 1 if anything is corrupted, 2 if the file cannot be
        read or is not a dbox file (after one line on stderr).
    """
    path = args.file
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        print(f"{_PROG}: cannot read {path}: {e.strerror or e}", file=sys.stderr)
        return 2
    entries = dump_file(data)
    if isinstance(entries, Corrupted):
        print(f"{_PROG}: {path}: {entries.reason}", file=sys.stderr)
        return 2
    out = sys.stdout
    if args.json:
        for entry in entries:
            out.write(json.dumps(entry.to_json(), sort_keys=False) + "\n")
    else:
        _print_header(data, out)
        for entry in entries:
            _print_entry(entry, out)
    out.flush()
    return 1 if any(e.status != "ok" for e in entries) else 0


def main(argv: list[str] | None = None) -> int:
    """Run ``dbox ...`` on its own (``python -m aiodbox.cli.dbox dump FILE``).

    Returns:
        The exit status of the subcommand (argparse exits with 2 on bad arguments).
    """
    parser = argparse.ArgumentParser(prog="aiodbox")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
