"""``aiodbox export maildir PATH --user NAME``: every mailbox of a user to a Maildir++ tree.

What the tree holds (details in :mod:`aiodbox.importers.maildir_export`): INBOX at the
root, ``A/B`` as ``.A.B``; flags in the info suffix; mtime = INTERNALDATE; bodies exactly
the IMAP bytes with their CRLF line ends; keywords through Dovecot's ``dovecot-keywords``
(26 per folder); UIDs, UIDVALIDITY and GUIDs in Dovecot's ``dovecot-uidlist``; a
``subscriptions`` file.  ``aiodbox import maildir`` reads all of it back.

Exit status: 0 done; 1 some messages could not be read from storage (listed on stderr),
or writing the Maildir failed; 2 bad arguments, or PATH exists and is not an empty
directory; 3 no usable config; 4 the user has no mail store; 5 the storage failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiodbox.cli.common import (
    EXIT_NO_USER,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    CliError,
    load_settings,
    report,
    run,
)
from aiodbox.cli.importer import print_lines, progress_factory, with_storage
from aiodbox.cli.user import check_user_name
from aiodbox.fs import FsError
from aiodbox.importers.maildir_export import export_maildir
from aiodbox.importers.maildir_mbox import SourceLayoutError

if TYPE_CHECKING:
    from aiodbox.storage.storage import Storage


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``export`` with its ``maildir`` subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="export a user's mail",
        description="Export a user's mail. Exit status: 0 done; 1 some messages not "
        "exported; 2 bad arguments or PATH not empty; 3 config; 4 unknown user; 5 storage.",
    )
    kinds = parser.add_subparsers(dest="export_format", required=True, metavar="FORMAT")
    maildir = kinds.add_parser(
        "maildir",
        help="a Maildir++ tree (INBOX at the root, A/B as .A.B)",
        description="Write every mailbox of the user to a new Maildir++ tree at PATH: "
        "flags in file names, mtime = internal date, bodies byte-exact with CRLF line "
        "ends, keywords in dovecot-keywords, UIDs in dovecot-uidlist, a subscriptions "
        "file. PATH must not exist or be an empty directory.",
    )
    maildir.add_argument("path", metavar="PATH")
    maildir.add_argument("--user", required=True, metavar="NAME", help="the aiodbox user")
    maildir.set_defaults(func=run_export_maildir)


def _index_exists(index_root: Path, user: str) -> bool:
    return (index_root / user / "index.sqlite").is_file()


@report
def run_export_maildir(args: argparse.Namespace) -> int:
    """``export maildir PATH --user NAME``; see the module docstring for exit codes."""
    config = load_settings(args)
    user = args.user
    check_user_name(user)

    async def main() -> int:
        if not await asyncio.to_thread(_index_exists, Path(config.storage.index_root), user):
            raise CliError(f"user {user!r} has no mail store (nothing to export)", EXIT_NO_USER)

        async def work(storage: Storage) -> int:
            try:
                rep = await export_maildir(storage, user, args.path, progress=progress_factory)
            except SourceLayoutError as e:
                raise CliError(str(e), EXIT_USAGE) from None
            except FsError:
                raise  # the storage failed: exit 5 (with_storage)
            except OSError as e:
                raise CliError(f"writing the Maildir failed: {e}", EXIT_PROBLEMS) from None
            print(
                f"exported {rep.exported} message(s) from {len(rep.mailboxes)} mailbox(es) "
                f"of user {user!r} to {rep.path}"
            )
            for name, folder, n in rep.mailboxes:
                print(f"  {name}: {n} -> {folder}")
            print_lines("warning", rep.warnings)
            print_lines("problem", rep.problems)
            sys.stdout.flush()
            return EXIT_PROBLEMS if rep.problems else EXIT_OK

        return await with_storage(config, work)

    return run(main)
