"""What the subcommands share: loading the config, opening the storage, exit codes,
progress output."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiodbox.config import Config, ConfigError, config_from_dict, find_config, load_config

T = TypeVar("T")

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_NO_USER = 4
EXIT_BACKEND = 5
EXIT_INTERNAL = 70


class CliError(Exception):
    """A failure to report as one line on stderr with an exit code (no traceback)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def load_settings(args: argparse.Namespace, *, required: bool = True) -> Config:
    """The config named by ``--config``, ``$AIODBOX_CONFIG`` or ./aiodbox.toml.

    Raises:
        CliError: (exit code 3) no config file, or it does not load.
    """
    path = find_config(getattr(args, "config", None))
    if path is None:
        if required:
            raise CliError(
                "no config file: pass --config FILE, set $AIODBOX_CONFIG, or create "
                "./aiodbox.toml (aiodbox serve --demo writes one)",
                EXIT_CONFIG,
            )
        return config_from_dict({}, Path.cwd())
    try:
        return load_config(path)
    except ConfigError as e:
        raise CliError(str(e), EXIT_CONFIG) from None


def run(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` on a fresh event loop (uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main())
    return uvloop.run(main())


def report(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Wrap a subcommand: ``CliError`` → one stderr line and its exit code."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except CliError as e:
            print(f"aiodbox: {e}", file=sys.stderr)
            return e.code
        except KeyboardInterrupt:
            print("aiodbox: interrupted", file=sys.stderr)
            return 130

    return wrapped


class Progress:
    """A one-line progress display on a terminal; plain lines every ``every`` items
    otherwise (logs stay readable)."""

    def __init__(self, label: str, total: int | None = None, *, every: int = 1000) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.every = every
        self.tty = sys.stderr.isatty()

    def step(self, n: int = 1) -> None:
        """Count ``n`` more items done."""
        self.done += n
        if self.tty:
            total = f"/{self.total}" if self.total is not None else ""
            pct = ""
            if self.total:
                width = 30
                filled = int(width * self.done / self.total)
                pct = f" [{'#' * filled}{'.' * (width - filled)}]"
            sys.stderr.write(f"\r{self.label}: {self.done}{total}{pct}")
            sys.stderr.flush()
        elif self.done % self.every == 0:
            print(f"{self.label}: {self.done}", file=sys.stderr)

    def close(self) -> None:
        """Finish the line."""
        if self.tty:
            sys.stderr.write("\n")
        print(f"{self.label}: {self.done} done", file=sys.stderr)
