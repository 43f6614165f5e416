"""``aiodbox fsck --user NAME [--repair]`` and ``aiodbox purge --user NAME``."""

from __future__ import annotations

import argparse
import os

from aiodbox.cli.common import (
    EXIT_BACKEND,
    EXIT_NO_USER,
    EXIT_OK,
    EXIT_PROBLEMS,
    CliError,
    load_settings,
    report,
    run,
)
from aiodbox.config import Config
from aiodbox.fs import FsError, FsSpecError
from aiodbox.storage import Storage, User
from aiodbox.storage.errors import UnsupportedBackend
from aiodbox.storage.fsck import FsckReport, check, repair
from aiodbox.storage.purge import purge


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``fsck`` and ``purge``."""
    p = sub.add_parser("fsck", help="check a user's index against the message files")
    p.add_argument("--user", required=True, help="the user to check")
    p.add_argument("--repair", action="store_true", help="make the index agree with the files")
    p.set_defaults(func=report(run_fsck))
    q = sub.add_parser("purge", help="reclaim the space of expunged mdbox messages")
    q.add_argument("--user", required=True, help="the user to purge")
    q.set_defaults(func=report(run_purge))


def _open_storage(cfg: Config) -> Storage:
    try:
        return Storage(cfg.storage)
    except (FsSpecError, UnsupportedBackend) as e:
        raise CliError(f"storage backend: {e}", EXIT_BACKEND) from None


def _known_user(cfg: Config, name: str) -> bool:
    index = cfg.storage.index_root / name / "index.sqlite"
    mail = cfg.storage.mail_root / name
    return index.exists() or mail.exists()


async def _with_user(cfg: Config, name: str) -> tuple[Storage, User]:
    storage = _open_storage(cfg)
    try:
        return storage, await storage.user(name, create=False)
    except FsError as e:
        await storage.close()
        raise CliError(f"storage backend unreachable: {e}", EXIT_BACKEND) from None


def _print(result: FsckReport) -> None:
    for problem in result.problems:
        print(problem)
    for action in result.actions:
        print(f"repaired: {action}")


def run_fsck(args: argparse.Namespace) -> int:
    """Check (and with ``--repair``, repair) one user; 0 clean, 1 problems."""
    cfg = load_settings(args)
    if not _known_user(cfg, args.user) or os.sep in args.user:
        raise CliError(f"unknown user {args.user!r}: no index and no mail for it", EXIT_NO_USER)

    async def main() -> int:
        storage, user = await _with_user(cfg, args.user)
        try:
            if args.repair:
                done = await repair(user)
                _print(done)
                after = await check(user)
                for problem in after.problems:
                    print(f"still: {problem}")
                print(
                    f"fsck {args.user}: {after.messages} messages, {after.files} files, "
                    f"{len(done.actions)} repairs, {len(after.problems)} problems left"
                )
                return EXIT_OK if after.ok else EXIT_PROBLEMS
            found = await check(user)
            _print(found)
            print(
                f"fsck {args.user}: {found.messages} messages, {found.files} files, "
                f"{len(found.problems)} problems"
            )
            return EXIT_OK if found.ok else EXIT_PROBLEMS
        finally:
            await storage.close()

    return run(main)


def run_purge(args: argparse.Namespace) -> int:
    """Purge one user's mdbox storage."""
    cfg = load_settings(args)
    if not _known_user(cfg, args.user) or os.sep in args.user:
        raise CliError(f"unknown user {args.user!r}: no index and no mail for it", EXIT_NO_USER)

    async def main() -> int:
        storage, user = await _with_user(cfg, args.user)
        try:
            done = await purge(user)
        finally:
            await storage.close()
        for action in done.actions:
            print(action)
        print(
            f"purge {args.user}: {done.files_rewritten} files rewritten, "
            f"{done.records_dropped} expunged records dropped, "
            f"{done.files_skipped_locked} files in use skipped"
        )
        return EXIT_OK

    return run(main)
