"""``aiodbox user add NAME (--password-stdin | --password PASS)`` and ``aiodbox user list``.

Both work on the config's ``[auth] passwd_file`` (Dovecot's passwd-file format), edited
atomically by :mod:`aiodbox.auth.passwd_file` (a lock, a temp file, fsync, rename): a
running server sees the old file or the new one, and picks the new one up on SIGHUP.
New passwords are stored as ``{ARGON2ID}``.  No event loop is involved: these are short
blocking commands.

Exit status: 0 done; 1 the user exists already (``add``; nothing written); 2 bad
arguments (an invalid name, an empty password); 3 no usable config, or the passwd-file
cannot be read, parsed (file and line are named) or written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aiodbox.cli.common import (
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_PROBLEMS,
    EXIT_USAGE,
    CliError,
    load_settings,
    report,
)

HASH_SCHEME = "ARGON2ID"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``user`` with its ``add`` and ``list`` subcommands."""
    parser = subparsers.add_parser(
        "user",
        help="add or list users (the passwd-file)",
        description="Manage the users of [auth] passwd_file. Exit status: 0 done; 1 the "
        "user exists already; 2 bad arguments; 3 config or passwd-file problem.",
    )
    commands = parser.add_subparsers(dest="user_command", required=True, metavar="COMMAND")
    add = commands.add_parser(
        "add",
        help="add a user with a password",
        description="Add a user to the passwd-file with an ARGON2ID password hash. "
        "Refuses (exit 1) a name that is already there.",
    )
    add.add_argument("name", metavar="NAME")
    how = add.add_mutually_exclusive_group(required=True)
    how.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of standard input",
    )
    how.add_argument(
        "--password",
        metavar="PASS",
        help="the password (visible to other local users in the process list: prefer "
        "--password-stdin)",
    )
    add.set_defaults(func=run_user_add)
    listing = commands.add_parser("list", help="print the user names, one per line")
    listing.set_defaults(func=run_user_list)


def check_user_name(name: str) -> None:
    """Refuse names that the passwd-file or the mail store cannot hold.

    Raises:
        CliError: (2) with the reason.
    """
    bad = [c for c in name if c in ":/" or c.isspace() or ord(c) < 0x20 or c == "\x7f"]
    if not name or name in (".", "..") or name.startswith("#") or bad:
        why = f"contains {bad[0]!r}" if bad else "is not allowed"
        raise CliError(f"invalid user name {name!r}: it {why}", EXIT_USAGE)


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.removesuffix("\n").removesuffix("\r")
    else:
        password = args.password
    if not password:
        raise CliError("the password is empty", EXIT_USAGE)
    return str(password)


@report
def run_user_add(args: argparse.Namespace) -> int:
    """``user add NAME``: append the user with an ARGON2ID hash of its password."""
    from aiodbox.auth.errors import PasswdFileError, UserExistsError
    from aiodbox.auth.passwd_file import add_user
    from aiodbox.auth.schemes import hash_password

    config = load_settings(args)
    name = args.name
    check_user_name(name)
    password = _read_password(args)
    path = Path(config.auth.passwd_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(f"cannot create {path.parent}: {e.strerror or e}", EXIT_CONFIG) from None
    stored = hash_password(password, HASH_SCHEME)
    try:
        add_user(path, name, stored)
    except UserExistsError:
        raise CliError(f"user {name!r} already exists in {path}", EXIT_PROBLEMS) from None
    except PasswdFileError as e:
        raise CliError(str(e), EXIT_CONFIG) from None
    except ValueError as e:
        raise CliError(f"invalid user name {name!r}: {e}", EXIT_USAGE) from None
    print(f"added user {name}")
    return EXIT_OK


@report
def run_user_list(args: argparse.Namespace) -> int:
    """``user list``: the user names of the passwd-file, one per line, in file order."""
    from aiodbox.auth.errors import PasswdFileError
    from aiodbox.auth.passwd_file import load_passwd_file

    config = load_settings(args)
    path = Path(config.auth.passwd_file)
    if not path.exists():
        return EXIT_OK  # no file yet: no users
    try:
        table = load_passwd_file(path)
    except PasswdFileError as e:
        raise CliError(str(e), EXIT_CONFIG) from None
    for entry in table:
        print(entry.user)
    return EXIT_OK
