"""Storage benchmark: opening a 100,000-message mailbox, a flag search, save rates.

One JSON line per result.  Every figure comes with its comparison point, measured in
the same run:

* ``open``: loading the mailbox view (index rows → shared arrays) vs the bare SQLite
  query it runs, and bytes per message the view holds (``tracemalloc``, after a
  collection) — targets: ≤ 300 ms, ≤ 300 bytes/message.
* ``flag_search``: finding the unseen / flagged messages among 100,000 from the view
  vs the same question asked of SQLite.
* ``save``: messages/s saved with fsync on, sdbox and mdbox, vs the plain durable
  create of the same bytes (temp file, write, fdatasync, link, directory fsync) done
  inline by the same process.

The 100,000 rows are written straight into the index (their message files do not
exist): opening a mailbox reads only the index, and writing 100,000 real files would
measure the disk, not the open.

    python bench/storage_bench.py [--messages 100000] [--saves 500] [--dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from aiodbox.config import StorageConfig
from aiodbox.storage import Storage


def emit(**row: object) -> None:
    print(json.dumps(row), flush=True)


def populate(index: Path, mailbox_id: int, n: int) -> None:
    """Insert ``n`` message rows (a third of them seen, 1 % flagged, a few keywords)."""
    conn = sqlite3.connect(index)
    with conn:
        rows = (
            (
                mailbox_id,
                uid,
                os.urandom(16).hex(),
                (1 if uid % 3 else 0) | (4 if uid % 100 == 0 else 0),
                "$Label1" if uid % 50 == 0 else "",
                uid + 1,
                1_700_000_000 + uid,
                1_700_000_000 + uid,
                2000 + uid % 5000,
                f"u.{uid}",
            )
            for uid in range(1, n + 1)
        )
        conn.executemany(
            "INSERT INTO messages (mailbox_id, uid, guid, flags, keywords, modseq, internal_date,"
            " save_date, size, file_name) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.execute(
            "UPDATE mailboxes SET uidnext = ?, highestmodseq = ? WHERE id = ?",
            (n + 1, n + 2, mailbox_id),
        )
    conn.close()


async def bench_open(workdir: Path, n: int) -> None:
    cfg = StorageConfig(
        format="sdbox", mail_root=workdir / "mail", index_root=workdir / "index", fs="posix"
    )
    st = Storage(cfg)
    user = await st.user("big")
    info = await user.get_mailbox_info("INBOX")
    await st.close()
    index = workdir / "index" / "big" / "index.sqlite"
    await asyncio.to_thread(populate, index, info.id, n)

    def bare_query() -> float:
        conn = sqlite3.connect(index)
        t0 = time.perf_counter()
        rows = conn.execute(
            "SELECT uid, flags, keywords, modseq, size, internal_date FROM messages"
            " WHERE mailbox_id = ? ORDER BY uid",
            (info.id,),
        ).fetchall()
        elapsed = time.perf_counter() - t0
        assert len(rows) == n
        conn.close()
        return elapsed

    bare = min([await asyncio.to_thread(bare_query) for _ in range(3)])
    times = []
    for _ in range(3):
        st = Storage(cfg)
        user = await st.user("big")
        t0 = time.perf_counter()
        mbox = await user.open_mailbox("INBOX")
        times.append(time.perf_counter() - t0)
        assert len(mbox.view) == n
        await mbox.close()
        await st.close()
    # memory, measured apart (tracemalloc slows allocation down several times)
    st = Storage(cfg)
    user = await st.user("big")
    gc.collect()
    tracemalloc.start()
    mbox = await user.open_mailbox("INBOX")
    gc.collect()
    current, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    per_message = current / n
    await mbox.close()
    await st.close()
    emit(
        bench="storage",
        scenario="open",
        messages=n,
        open_ms=round(min(times) * 1000, 1),
        bare_sqlite_query_ms=round(bare * 1000, 1),
        ratio_vs_bare_query=round(min(times) / bare, 2),
        view_bytes_per_message=round(per_message, 1),
        target_open_ms=300,
        target_bytes_per_message=300,
    )

    st = Storage(cfg)
    user = await st.user("big")
    mbox = await user.open_mailbox("INBOX")
    view = mbox.view
    t0 = time.perf_counter()
    for _ in range(10):
        unseen = [view.uids[i] for i, f in enumerate(view.flags) if not f & 1]
        flagged = [view.uids[i] for i, f in enumerate(view.flags) if f & 4]
    view_s = (time.perf_counter() - t0) / 10

    def sql_search() -> tuple[float, int, int]:
        conn = sqlite3.connect(index)
        t = time.perf_counter()
        for _ in range(10):
            u = conn.execute(
                "SELECT uid FROM messages WHERE mailbox_id = ? AND flags & 1 = 0", (info.id,)
            ).fetchall()
            f = conn.execute(
                "SELECT uid FROM messages WHERE mailbox_id = ? AND flags & 4", (info.id,)
            ).fetchall()
        conn.close()
        return (time.perf_counter() - t) / 10, len(u), len(f)

    sql_s, n_unseen, n_flagged = await asyncio.to_thread(sql_search)
    assert (len(unseen), len(flagged)) == (n_unseen, n_flagged)
    emit(
        bench="storage",
        scenario="flag_search",
        messages=n,
        unseen=len(unseen),
        flagged=len(flagged),
        view_ms=round(view_s * 1000, 2),
        sqlite_ms=round(sql_s * 1000, 2),
        ratio_vs_sqlite=round(view_s / sql_s, 2),
    )
    await mbox.close()
    await st.close()


async def bench_save(workdir: Path, fmt: str, count: int) -> None:
    payload = (b"Subject: bench\r\nFrom: a@example.test\r\n\r\n" + b"x" * 4000 + b"\r\n")[:4096]
    root = workdir / f"save-{fmt}"
    cfg = StorageConfig(
        format=fmt,
        mail_root=root / "mail",
        index_root=root / "index",
        fs="posix",
        fsync="optimized",
    )
    st = Storage(cfg)
    user = await st.user("saver")
    inbox = await user.open_mailbox("INBOX")
    t0 = time.perf_counter()
    for _ in range(count):
        await inbox.save(payload)
    ours = count / (time.perf_counter() - t0)
    await inbox.close()
    await st.close()

    plain_dir = root / "plain"
    plain_dir.mkdir(parents=True)

    def plain() -> float:
        dfd = os.open(plain_dir, os.O_RDONLY)
        t = time.perf_counter()
        for i in range(count):
            tmp = plain_dir / f".tmp{i}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, payload)
            os.fdatasync(fd)
            os.close(fd)
            os.link(tmp, plain_dir / f"u.{i}")
            os.unlink(tmp)
            os.fsync(dfd)
        os.close(dfd)
        return count / (time.perf_counter() - t)

    base = await asyncio.to_thread(plain)
    emit(
        bench="storage",
        scenario="save_fsync",
        format=fmt,
        messages=count,
        saves_per_s=round(ours, 1),
        plain_durable_create_per_s=round(base, 1),
        ratio_vs_plain=round(ours / base, 2),
    )


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--saves", type=int, default=500)
    ap.add_argument("--dir", help="work directory (default: a temp dir under /var/tmp)")
    args = ap.parse_args()
    workdir = Path(args.dir or tempfile.mkdtemp(prefix="aiodbox-storagebench-", dir="/var/tmp"))
    try:
        await bench_open(workdir, args.messages)
        for fmt in ("sdbox", "mdbox"):
            await bench_save(workdir, fmt, args.saves)
    finally:
        if not args.dir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
