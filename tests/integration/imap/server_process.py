"""Run an IMAP server in a process of its own (for memory and latency measurements).

``python -m tests.integration.imap.server_process ROOT FORMAT [--uvloop] [key=value ...]``
writes a config under ROOT (users from :mod:`tests.integration.imap.conftest`), starts
the server on 127.0.0.1 port 0, prints ``PORT <n>`` and serves until stdin closes.
Extra ``key=value`` pairs go to ``[imap]`` (integers where they parse as such).
Environment: ``IMAP_LOG=file`` writes the per-command log lines there (for latency
percentiles); ``SWITCH_INTERVAL=s`` sets ``sys.setswitchinterval``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

from aiodbox.auth import PasswdFileAuthenticator
from aiodbox.imap.server import ImapServer
from aiodbox.storage import Storage
from tests.integration.imap.conftest import make_config, write_users


async def _serve(root: Path, fmt: str, imap: dict[str, Any]) -> None:
    write_users(root / "users")
    config = make_config(root, fmt, **imap)
    storage = Storage(config.storage)
    auth = PasswdFileAuthenticator(config.auth.passwd_file, failure_delay=0)
    server = ImapServer(config, storage, auth)
    await server.start()
    print(f"PORT {server.addresses[0][1]}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await server.shutdown(timeout=5)
    await auth.aclose()
    await storage.close()


def main() -> None:
    root, fmt, *rest = sys.argv[1:]
    if os.environ.get("SWITCH_INTERVAL"):
        sys.setswitchinterval(float(os.environ["SWITCH_INTERVAL"]))
    log_file = os.environ.get("IMAP_LOG")
    if log_file:  # one line per command (the ``aiodbox.imap`` logger), for measurements
        logging.basicConfig(filename=log_file, level=logging.INFO, format="%(message)s")
    use_uvloop = "--uvloop" in rest
    imap: dict[str, Any] = {}
    for item in rest:
        if "=" in item:
            key, value = item.split("=", 1)
            imap[key] = int(value) if value.isdigit() else value
    coro = _serve(Path(root), fmt, imap)
    if use_uvloop:
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)


if __name__ == "__main__":
    main()
