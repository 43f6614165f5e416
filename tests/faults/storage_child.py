"""Child processes for the fault tests: run with ``python -m tests.faults.storage_child``.

Modes:
  save ROOT FORMAT WHO COUNT        save COUNT messages, print "SAVED <n> <uid>" after each
  read ROOT FORMAT SECONDS          read every message of INBOX in a loop, check contents
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
import time
from pathlib import Path

from aiodbox.config import StorageConfig
from aiodbox.storage import Storage


def message(who: str, n: int) -> bytes:
    """A message that carries the sha256 of its own body, so damage is detectable."""
    body = (f"body of {who} {n}\r\n" * (1 + n % 7)).encode()
    digest = hashlib.sha256(body).hexdigest()
    head = (
        f"From: {who}@example.test\r\nSubject: {who} {n}\r\nX-Who: {who}\r\nX-N: {n}\r\n"
        f"X-Body-Sha256: {digest}\r\n\r\n"
    ).encode()
    return head + body


def check(data: bytes) -> tuple[str, int] | None:
    """(who, n) if ``data`` is an intact message from :func:`message`, else None."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    fields = dict(line.split(b": ", 1) for line in head.split(b"\r\n") if b": " in line)
    try:
        if hashlib.sha256(body).hexdigest().encode() != fields[b"X-Body-Sha256"]:
            return None
        return fields[b"X-Who"].decode(), int(fields[b"X-N"])
    except (KeyError, ValueError):
        return None


def storage(root: str, fmt: str) -> Storage:
    base = Path(root)
    return Storage(
        StorageConfig(
            format=fmt,
            mail_root=base / "mail",
            index_root=base / "index",
            fs="posix",
            fsync="never",
            mdbox_rotate_size=32 * 1024,
        )
    )


async def save(root: str, fmt: str, who: str, count: int) -> None:
    st = storage(root, fmt)
    user = await st.user("u")
    inbox = await user.open_mailbox("INBOX")
    print("READY", flush=True)
    for n in range(count):
        uid = await inbox.save(message(who, n))
        print(f"SAVED {n} {uid}", flush=True)
    await st.close()


async def read(root: str, fmt: str, seconds: float) -> None:
    st = storage(root, fmt)
    user = await st.user("u")
    inbox = await user.open_mailbox("INBOX")
    deadline = time.monotonic() + seconds
    reads = errors = 0
    while time.monotonic() < deadline:
        await inbox.sync()
        for rec in await inbox.records(list(inbox.view.uids)):
            try:
                msg = await inbox.open_message(rec)
                data = b"".join([c async for c in msg.open_body()])
                await msg.aclose()
            except Exception as e:  # a message expunged meanwhile is fine; others are not
                if not await inbox.records([rec.uid]):
                    continue
                errors += 1
                print(f"ERROR {rec.uid} {type(e).__name__} {e}", flush=True)
                continue
            if check(data) is None:
                errors += 1
                print(f"BAD {rec.uid}", flush=True)
            reads += 1
    print(f"READS {reads} ERRORS {errors}", flush=True)
    await st.close()


def main() -> None:
    mode, root, fmt, *rest = sys.argv[1:]
    if mode == "save":
        asyncio.run(save(root, fmt, rest[0], int(rest[1])))
    elif mode == "read":
        asyncio.run(read(root, fmt, float(rest[0])))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
