"""``aiodbox import dovecot|maildir|mbox PATH --user NAME [--mailbox NAME]``.

Exit status (the CLI's stable codes, see :mod:`aiodbox.cli.main`):

* 0: everything was imported;
* 1: the import ran but some messages, mailboxes or subscriptions could not be imported
  (one ``aiodbox: problem:`` line each on stderr), or it was refused because the user's
  mailbox already holds other mail (nothing was written), or reading the source failed
  part-way (committed batches stay; rerunning a Dovecot import resumes after them);
* 2: bad arguments, including a PATH that is not a Dovecot sdbox/mdbox mail root,
  Maildir or mbox file, and an invalid user or mailbox name (one line on stderr,
  nothing written);
* 3: no usable config file;
* 5: the aiodbox storage (FS backend or index) failed.

The user is created in storage (with the default mailboxes) if it is new.  A user that
is not in the passwd-file is imported anyway, with a warning: it cannot log in until
``aiodbox user add``.  Progress: a bar per mailbox on a terminal, plain lines otherwise
(stderr); a summary on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

from aiodbox.cli.common import (
    EXIT_BACKEND,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    CliError,
    Progress,
    load_settings,
    report,
    run,
)
from aiodbox.fs import FsError, FsSpecError
from aiodbox.importers.dovecot_index import DovecotIndexError
from aiodbox.importers.dovecot_layout import DovecotLayoutError
from aiodbox.importers.maildir_mbox import SourceLayoutError
from aiodbox.importers.target import ImportConflict, ImportReport, ProgressSink
from aiodbox.storage.errors import InvalidMailboxName, StorageError, UnsupportedBackend

if TYPE_CHECKING:
    from aiodbox.config import Config
    from aiodbox.storage.storage import Storage

MAX_LISTED = 20
"""Problems and warnings printed one by one; the rest are counted."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``import`` with its ``dovecot``, ``maildir`` and ``mbox`` subcommands."""
    parser = subparsers.add_parser(
        "import",
        help="import mail from Dovecot 2.3 sdbox/mdbox, Maildir or mbox",
        description="Import mail into a user. Exit status: 0 all imported; 1 some "
        "messages not imported, or the target mailbox holds other mail; 2 bad arguments "
        "or PATH is not a mail store of that format; 3 config; 5 storage failed.",
    )
    kinds = parser.add_subparsers(dest="import_format", required=True, metavar="FORMAT")

    dovecot = kinds.add_parser(
        "dovecot",
        help="a Dovecot 2.3 sdbox or mdbox mail root (keeps UIDs, UIDVALIDITY, flags, "
        "keywords, internal dates)",
        description="Import every mailbox of a Dovecot 2.3 sdbox or mdbox mail root (the "
        "directory mail_location names, e.g. ~/mdbox; a home directory holding one is "
        "accepted). UIDs, UIDVALIDITY, UIDNEXT, GUIDs, flags, keywords, internal dates "
        "and subscriptions are kept. Refuses (exit 1) if the user's mailbox of the same "
        "name holds other mail; an interrupted import is resumed. A PATH that is not a "
        "mail root exits with 2.",
    )
    _common(dovecot)
    dovecot.set_defaults(func=run_import_dovecot)

    maildir = kinds.add_parser(
        "maildir",
        help="a Maildir or Maildir++ tree (subfolders .A.B become A/B)",
        description="Import a Maildir (or a Maildir++ root and its .Sub.Folder "
        "subfolders, which become Sub/Folder) into INBOX or --mailbox. Flags come from "
        "the info suffix; keywords only with Dovecot's dovecot-keywords file; UIDs only "
        "with Dovecot's dovecot-uidlist and an empty target; internal dates from mtimes.",
    )
    _common(maildir)
    maildir.add_argument(
        "--mailbox",
        metavar="NAME",
        help="target for the root (default INBOX); subfolders go below it",
    )
    maildir.set_defaults(func=run_import_maildir)

    mbox = kinds.add_parser(
        "mbox",
        help="one mbox file",
        description="Import an mbox file into INBOX or --mailbox. Flags from Status/"
        "X-Status, keywords from X-Keywords, internal dates from the From_ line; new UIDs.",
    )
    _common(mbox)
    mbox.add_argument("--mailbox", metavar="NAME", help="target mailbox (default INBOX)")
    mbox.set_defaults(func=run_import_mbox)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH")
    parser.add_argument("--user", required=True, metavar="NAME", help="the aiodbox user")
    parser.add_argument(
        "--batch",
        type=_positive,
        default=100,
        metavar="N",
        help="messages per transaction (default 100)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


# --------------------------------------------------------------------- shared helpers


def progress_factory(label: str, total: int) -> ProgressSink:
    """One :class:`Progress` per mailbox (a bar on a terminal, plain lines otherwise)."""
    return Progress(label, total)


def open_storage(config: Config) -> Storage:
    """The storage of ``config``.

    Raises:
        CliError: (3) the ``fs`` spec is invalid; (5) the backend cannot hold the format.
    """
    from aiodbox.storage.storage import Storage

    try:
        return Storage(config.storage)
    except FsSpecError as e:
        raise CliError(f"[storage] fs: {e}", EXIT_CONFIG) from None
    except UnsupportedBackend as e:
        raise CliError(str(e), EXIT_BACKEND) from None
    except OSError as e:
        raise CliError(f"the storage backend cannot be opened: {e}", EXIT_BACKEND) from None


async def with_storage(config: Config, work: Callable[[Storage], Awaitable[int]]) -> int:
    """Run ``work(storage)`` and close the storage; storage failures become exit 5."""
    storage = open_storage(config)
    try:
        return await work(storage)
    except (FsError, sqlite3.Error) as e:
        raise CliError(f"storage failed: {e}", EXIT_BACKEND) from None
    except StorageError as e:
        code = EXIT_BACKEND if e.temporary else EXIT_PROBLEMS
        raise CliError(f"storage refused: {e}", code) from None
    finally:
        await storage.close()


def print_lines(kind: str, lines: Iterable[str]) -> None:
    """``aiodbox: <kind>: <line>`` on stderr, at most :data:`MAX_LISTED` of them."""
    items = list(lines)
    for line in items[:MAX_LISTED]:
        print(f"aiodbox: {kind}: {line}", file=sys.stderr)
    if len(items) > MAX_LISTED:
        print(f"aiodbox: ... and {len(items) - MAX_LISTED} more {kind}s", file=sys.stderr)


def _summary(rep: ImportReport, user: str) -> int:
    print(
        f"imported {rep.imported} message(s) into {len(rep.mailboxes)} mailbox(es) of "
        f"user {user!r} from {rep.source}"
    )
    for m in rep.mailboxes:
        extra = f", {m.skipped} already there" if m.skipped else ""
        extra += f", {m.failed} failed" if m.failed else ""
        print(f"  {m.name}: {m.imported} ({m.mode}, UIDVALIDITY {m.uidvalidity}{extra})")
    if rep.subscribed:
        print(f"  subscriptions: {rep.subscribed}")
    print_lines("warning", rep.warnings)
    print_lines("problem", rep.problems)
    return EXIT_PROBLEMS if rep.problems else EXIT_OK


async def _warn_unknown_user(config: Config, user: str) -> None:
    from aiodbox.auth.errors import PasswdFileError
    from aiodbox.auth.passwd_file import load_passwd_file

    path = config.auth.passwd_file
    try:
        table = await asyncio.to_thread(load_passwd_file, path)
    except PasswdFileError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            table = None
        else:
            print(f"aiodbox: warning: cannot check the user: {e}", file=sys.stderr)
            return
    if table is None or user not in table:
        print(
            f"aiodbox: warning: user {user!r} is not in {path}: it cannot log in until "
            f"'aiodbox user add {user}'",
            file=sys.stderr,
        )


def _import_command(
    args: argparse.Namespace,
    validate: Callable[[], Awaitable[object]],
    do_import: Callable[[Storage, object], Awaitable[ImportReport]],
) -> int:
    from aiodbox.cli.user import check_user_name

    config = load_settings(args)
    check_user_name(args.user)

    async def main() -> int:
        try:
            source = await validate()
        except (DovecotLayoutError, SourceLayoutError) as e:
            raise CliError(str(e), EXIT_USAGE) from None
        await _warn_unknown_user(config, args.user)

        async def work(storage: Storage) -> int:
            try:
                rep = await do_import(storage, source)
            except ImportConflict as e:
                raise CliError(str(e), EXIT_PROBLEMS) from None
            except DovecotIndexError as e:
                raise CliError(f"the source is damaged: {e}", EXIT_PROBLEMS) from None
            except OSError as e:
                if isinstance(e, FsError):
                    raise
                raise CliError(
                    f"reading the source failed: {e}; what was committed stays (rerun to "
                    "resume a Dovecot import)",
                    EXIT_PROBLEMS,
                ) from None
            return _summary(rep, args.user)

        return await with_storage(config, work)

    return run(main)


# --------------------------------------------------------------------- commands


@report
def run_import_dovecot(args: argparse.Namespace) -> int:
    """``import dovecot PATH --user NAME``; see the module docstring for exit codes."""
    from aiodbox.importers.dovecot_import import import_dovecot, scan_source

    async def validate() -> object:
        return await scan_source(args.path)

    async def do_import(storage: Storage, root: object) -> ImportReport:
        from aiodbox.importers.dovecot_layout import DovecotRoot

        assert isinstance(root, DovecotRoot)
        return await import_dovecot(
            storage, args.user, root, batch=args.batch, progress=progress_factory
        )

    return _import_command(args, validate, do_import)


def _mailbox_arg(args: argparse.Namespace) -> str | None:
    from aiodbox.storage import names

    if not args.mailbox:
        return None
    try:
        return names.normalize(args.mailbox)
    except InvalidMailboxName as e:
        raise CliError(f"--mailbox: {e}", EXIT_USAGE) from None


@report
def run_import_maildir(args: argparse.Namespace) -> int:
    """``import maildir PATH --user NAME [--mailbox NAME]``."""
    from aiodbox.importers.maildir_mbox import check_maildir_source, import_maildir

    target = _mailbox_arg(args)

    async def validate() -> object:
        await asyncio.to_thread(check_maildir_source, args.path)
        return None

    async def do_import(storage: Storage, _: object) -> ImportReport:
        return await import_maildir(
            storage,
            args.user,
            args.path,
            mailbox_name=target,
            batch=args.batch,
            progress=progress_factory,
        )

    return _import_command(args, validate, do_import)


@report
def run_import_mbox(args: argparse.Namespace) -> int:
    """``import mbox PATH --user NAME [--mailbox NAME]``."""
    from aiodbox.importers.maildir_mbox import check_mbox_source, import_mbox

    target = _mailbox_arg(args)

    async def validate() -> object:
        await asyncio.to_thread(check_mbox_source, args.path)
        return None

    async def do_import(storage: Storage, _: object) -> ImportReport:
        return await import_mbox(
            storage,
            args.user,
            args.path,
            mailbox_name=target,
            batch=args.batch,
            progress=progress_factory,
        )

    return _import_command(args, validate, do_import)
