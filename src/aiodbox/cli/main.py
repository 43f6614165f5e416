"""``aiodbox``: the entry point; each subcommand module registers its own parser.

Exit codes (stable, for scripts): 0 success; 1 the operation found problems (corrupted
records, failed checks); 2 bad arguments; 3 the config file is missing or invalid;
4 unknown user; 5 the storage backend is unreachable; 70 an internal error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from aiodbox import __version__
from aiodbox.cli.common import EXIT_USAGE

Register = Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]


def _registrars() -> list[Register]:
    from aiodbox.cli import dbox, export, fsck, importer, serve, user

    return [
        serve.register,
        dbox.register,
        user.register,
        importer.register,
        export.register,
        fsck.register,
    ]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (subcommands included)."""
    parser = argparse.ArgumentParser(
        prog="aiodbox",
        description="A dbox mail store and IMAP/LMTP server whose storage I/O never blocks.",
    )
    parser.add_argument("--version", action="version", version=f"aiodbox {__version__}")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $AIODBOX_CONFIG, then ./aiodbox.toml)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in _registrars():
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    code: int = func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
