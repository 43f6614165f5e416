"""Several processes at once, and processes killed with SIGKILL at random points."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from aiodbox.storage.fsck import check, repair

from .storage_child import check as check_message
from .storage_child import storage

REPO = Path(__file__).resolve().parents[2]
CRASH_TRIALS = 26  # per format: 52 in all
CRASH_SEED = 20261127


def child(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.faults.storage_child", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def read_all(mbox_root: Path, fmt: str) -> dict[int, bytes]:
    st = storage(str(mbox_root), fmt)
    try:
        user = await st.user("u")
        inbox = await user.open_mailbox("INBOX")
        out = {}
        for rec in await inbox.records(list(inbox.view.uids)):
            msg = await inbox.open_message(rec)
            out[rec.uid] = b"".join([c async for c in msg.open_body()])
            await msg.aclose()
        return out
    finally:
        await st.close()


@pytest.mark.slow
@pytest.mark.allow_slow_callbacks  # two busy children share the CPUs with the test loop
@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_two_processes_save_500_each(fmt: str, tmp_path: Path) -> None:
    # create the user first so both children find its default mailboxes
    st = storage(str(tmp_path), fmt)
    await st.user("u")
    await st.close()
    procs = [await asyncio.to_thread(child, "save", str(tmp_path), fmt, who, "500") for who in "AB"]
    outs = [await asyncio.to_thread(p.communicate) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-2000:]
    uids = [
        int(line.split()[2])
        for out, _ in outs
        for line in out.decode().splitlines()
        if line.startswith("SAVED ")
    ]
    assert len(uids) == 1000 and len(set(uids)) == 1000
    stored = await read_all(tmp_path, fmt)
    assert sorted(stored) == sorted(uids)
    seen = {check_message(data) for data in stored.values()}
    assert None not in seen
    assert seen == {(who, n) for who in "AB" for n in range(500)}


def wait_ready(proc: subprocess.Popen[bytes]) -> list[str]:
    """Read the child's output up to its READY line (blocking: run it in a thread)."""
    assert proc.stdout is not None
    lines = []
    while True:
        line = proc.stdout.readline().decode()
        if not line or line.startswith("READY"):
            return lines
        lines.append(line)


# The children keep both CPUs of the test machine busy, so a callback's wall-clock time
# here measures the scheduler, not blocking code: these tests opt out of the loop guard.
@pytest.mark.slow
@pytest.mark.allow_slow_callbacks
@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_sigkill_at_random_points_loses_no_acknowledged_save(
    fmt: str, tmp_path: Path
) -> None:
    rng = random.Random(f"{CRASH_SEED}-{fmt}")
    root = tmp_path / "store"
    st = storage(str(root), fmt)
    await st.user("u")
    await st.close()
    acknowledged: dict[tuple[str, int], int] = {}
    adopted_total = 0
    for trial in range(CRASH_TRIALS):
        who = f"t{trial}"
        proc = await asyncio.to_thread(child, "save", str(root), fmt, who, "40")
        await asyncio.to_thread(wait_ready, proc)
        await asyncio.sleep(rng.uniform(0.0, 0.15))  # a random point among its saves
        os.kill(proc.pid, signal.SIGKILL)
        out, err = await asyncio.to_thread(proc.communicate)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-1000:]
        for line in out.decode().splitlines():
            if line.startswith("SAVED "):
                _, n, uid = line.split()
                acknowledged[(who, int(n))] = int(uid)
        # recovery, as the next start (or an operator's fsck) does it
        st = storage(str(root), fmt)
        user = await st.user("u")
        report = await repair(user)
        adopted_total += sum(p.kind == "pending" for p in report.problems)
        after = await check(user)
        assert after.ok, [str(p) for p in after.problems]
        await st.close()
    stored = await read_all(root, fmt)
    contents = {uid: check_message(data) for uid, data in stored.items()}
    assert None not in contents.values(), "a partial or damaged message is visible"
    by_message = {v: uid for uid, v in contents.items() if v is not None}
    for key, uid in acknowledged.items():
        assert key in by_message, f"acknowledged save {key} (uid {uid}) was lost"
        assert by_message[key] == uid, f"{key} moved from uid {uid} to {by_message[key]}"
    assert len(by_message) == len(contents), "a message is stored twice"
    assert len(acknowledged) > CRASH_TRIALS  # the kills did land among saves
    print(
        f"{fmt}: {CRASH_TRIALS} kills, {len(acknowledged)} acknowledged saves all present, "
        f"{len(stored) - len(acknowledged)} unacknowledged saves adopted or complete, "
        f"{adopted_total} pending orphans adopted by fsck"
    )
