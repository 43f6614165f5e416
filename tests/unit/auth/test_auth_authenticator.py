"""PasswdFileAuthenticator: results, failure delay, no loop blocking, reloads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

import pytest

from aiodbox.auth import authenticator as authenticator_module
from aiodbox.auth.authenticator import (
    AuthStatus,
    PasswdFileAuthenticator,
    UserInfo,
)
from aiodbox.auth.errors import PasswdFileError, UnknownSchemeError
from aiodbox.auth.passwd_file import add_user
from aiodbox.auth.schemes import HashParams, hash_params, hash_password
from aiodbox.auth.schemes import verify_password as real_verify

DELAY = 0.2  # the failure delay used in these tests
T = TypeVar("T")

# Hashed once at import (outside any event loop).
ALICE = hash_password("alice-pw", "SHA512-CRYPT")
ARGON = hash_password("argon-pw", "ARGON2ID")
BCRYPT = hash_password("bcrypt-pw", "BLF-CRYPT", rounds=8)

# Made by Dovecot's `doveadm pw -s ARGON2ID -p secret`: m=64 MiB, t=3 (~0.2 s to verify).
DOVECOT_ARGON = (
    "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$sN6xURpEZFXeerHhXb4dkQ$"
    "2sC52YT+cXA2ZktfzAI7omj3gcN+0Dl6BZSmdUPoHCU"
)

USERS = f"""\
# test users
heavy:{DOVECOT_ARGON}
alice:{ALICE}:1000:1000::/home/alice::userdb_mail=sdbox:~/sdbox userdb_mdbox_rotate_size=16k
bob:{hash_password("bob-pw", "SHA512-CRYPT")}
carol:{hash_password("carol-pw", "SHA512-CRYPT")}
argon:{ARGON}
bcrypt:{BCRYPT}
open:::::::nopassword
nologin:{hash_password("x", "SHA512-CRYPT")}::::::nologin reason=Moved
quick:{hash_password("x", "SHA512-CRYPT")}::::::nologin nodelay reason=Gone
failing:{hash_password("x", "SHA512-CRYPT")}::::::fail
lan:{hash_password("x", "SHA512-CRYPT")}::::::allow_nets=192.0.2.0/24,2001:db8::/32
local:{hash_password("x", "SHA512-CRYPT")}::::::allow_nets=local,10.0.0.1
weird:{{SCRAM-SHA-256}}4096,abc
broken:{{SHA256}}not-base64!
nopw:
"""


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users"
    path.write_text(USERS)
    return path


@pytest.fixture
async def auth(users_file: Path) -> AsyncIterator[PasswdFileAuthenticator]:
    async with PasswdFileAuthenticator(users_file, failure_delay=DELAY) as a:
        yield a


async def _timed(aw: Awaitable[T]) -> tuple[T, float]:
    start = time.monotonic()
    result = await aw
    return result, time.monotonic() - start


async def test_success(auth: PasswdFileAuthenticator) -> None:
    result, elapsed = await _timed(auth.authenticate("alice", "alice-pw"))
    assert result.status is AuthStatus.OK
    assert result.ok
    assert elapsed < DELAY
    assert result.user_info == UserInfo(
        user="alice",
        uid="1000",
        gid="1000",
        home="/home/alice",
        fields=(("mail", "sdbox:~/sdbox"), ("mdbox_rotate_size", "16k")),
    )
    assert result.user_info.mail == "sdbox:~/sdbox"
    assert (await auth.authenticate("argon", b"argon-pw")).ok
    assert (await auth.authenticate("bcrypt", "bcrypt-pw")).ok


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", "wrong"),
        ("nobody", "alice-pw"),
        ("ALICE", "alice-pw"),  # case-sensitive by default
        ("al ice", "alice-pw"),  # not in auth_username_chars
        ("", "x"),
        ("alice", "alice-pw\x00"),
        ("nopw", ""),
        ("nopw", "anything"),
    ],
)
async def test_failures_are_delayed(
    auth: PasswdFileAuthenticator, user: str, password: str
) -> None:
    result, elapsed = await _timed(auth.authenticate(user, password))
    assert result.status is AuthStatus.FAILED
    assert result.user_info is None
    assert result.error is None
    assert elapsed >= DELAY


async def test_unknown_user_pays_for_a_hash_like_the_real_ones(
    auth: PasswdFileAuthenticator, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified: list[str] = []

    def spy(password: bytes, stored: str, *, default_scheme: str) -> bool:
        verified.append(stored)
        return real_verify(password, stored, default_scheme=default_scheme)

    monkeypatch.setattr(authenticator_module, "verify_password", spy)
    assert not (await auth.authenticate("nobody", "alice-pw")).ok
    assert not (await auth.authenticate("alice", "wrong")).ok
    dummy, real = verified
    assert real == ALICE
    assert dummy != ALICE
    # The file's most common scheme and cost: SHA512-CRYPT at the default rounds.
    assert hash_params(dummy) == hash_params(ALICE) == HashParams("SHA512-CRYPT")


async def test_parallel_failures_do_not_queue_behind_each_other(
    auth: PasswdFileAuthenticator,
) -> None:
    start = time.monotonic()
    results = await asyncio.gather(
        auth.authenticate("alice", "wrong"),
        auth.authenticate("bob", "wrong"),
        auth.authenticate("nobody", "wrong"),
        auth.authenticate("carol", "carol-pw"),
    )
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == [AuthStatus.FAILED] * 3 + [AuthStatus.OK]
    assert DELAY <= elapsed < 2 * DELAY


async def test_a_slow_failure_does_not_hold_up_a_success(
    users_file: Path,
) -> None:
    async with PasswdFileAuthenticator(users_file, failure_delay=1.0) as auth:
        failing = asyncio.create_task(auth.authenticate("alice", "wrong"))
        await asyncio.sleep(0.05)
        ok, elapsed = await _timed(auth.authenticate("alice", "alice-pw"))
        assert ok.ok
        assert elapsed < 0.5
        assert not failing.done()
        assert not (await failing).ok


async def test_hashing_stays_off_the_loop(auth: PasswdFileAuthenticator) -> None:
    """The loop keeps ticking while argon2, bcrypt and SHA-crypt verifications run.

    Calibrated on this machine: one Dovecot-cost argon2 verification (timed in a
    thread) would be one gap at least that long had it run on the loop.  The conftest
    guard also fails the test if any callback holds the loop more than 50 ms.
    """
    one, _ = await _timed(asyncio.to_thread(real_verify, "secret", DOVECOT_ARGON))
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    results = await asyncio.gather(
        *(auth.authenticate("heavy", "secret") for _ in range(3)),
        *(auth.authenticate("argon", "argon-pw") for _ in range(2)),
        *(auth.authenticate("bcrypt", "bcrypt-pw") for _ in range(2)),
        *(auth.authenticate("alice", "alice-pw") for _ in range(4)),
    )
    stop.set()
    await beat
    assert all(r.ok for r in results)
    assert len(gaps) > 10
    assert max(gaps) < max(one / 2, 0.05), (one, sorted(gaps)[-5:])


async def test_unknown_scheme_is_a_temporary_failure_naming_it(
    auth: PasswdFileAuthenticator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="aiodbox.auth")
    result, elapsed = await _timed(auth.authenticate("weird", "x"))
    assert result.status is AuthStatus.TEMPFAIL
    assert "SCRAM-SHA-256" in (result.error or "")
    assert "'weird'" in (result.error or "")
    assert elapsed >= DELAY
    assert any("SCRAM-SHA-256" in r.getMessage() for r in caplog.records)
    broken = await auth.authenticate("broken", "x")
    assert broken.status is AuthStatus.TEMPFAIL
    assert "malformed SHA256" in (broken.error or "")


async def test_nopassword_accepts_anything(auth: PasswdFileAuthenticator) -> None:
    assert (await auth.authenticate("open", "whatever")).ok
    assert (await auth.authenticate("open", "")).ok


async def test_nologin_fail_and_nodelay(auth: PasswdFileAuthenticator) -> None:
    moved, elapsed = await _timed(auth.authenticate("nologin", "x"))
    assert moved.status is AuthStatus.FAILED
    assert moved.reason == "Moved"
    assert elapsed >= DELAY
    gone, elapsed = await _timed(auth.authenticate("quick", "x"))
    assert gone.reason == "Gone"
    assert elapsed < DELAY
    # nodelay only applies once the password matched
    _, elapsed = await _timed(auth.authenticate("quick", "wrong"))
    assert elapsed >= DELAY
    assert (await auth.authenticate("failing", "x")).status is AuthStatus.FAILED


async def test_allow_nets(auth: PasswdFileAuthenticator) -> None:
    assert (await auth.authenticate("lan", "x", remote_ip="192.0.2.77")).ok
    assert (await auth.authenticate("lan", "x", remote_ip="::ffff:192.0.2.1")).ok
    assert (await auth.authenticate("lan", "x", remote_ip="2001:db8::5")).ok
    assert not (await auth.authenticate("lan", "x", remote_ip="198.51.100.1")).ok
    assert not (await auth.authenticate("lan", "x")).ok  # unknown IP, no 'local'
    assert (await auth.authenticate("local", "x")).ok
    assert (await auth.authenticate("local", "x", remote_ip="10.0.0.1")).ok
    assert not (await auth.authenticate("local", "x", remote_ip="10.0.0.2")).ok


async def test_lowercase_username_option(users_file: Path) -> None:
    async with PasswdFileAuthenticator(
        users_file, failure_delay=0, lowercase_username=True
    ) as auth:
        result = await auth.authenticate("ALICE", "alice-pw")
        assert result.ok
        assert result.user == "alice"


async def test_lookup(auth: PasswdFileAuthenticator, fixtures_dir: Path) -> None:
    info = await auth.lookup("alice")
    assert info is not None
    assert info.get("mdbox_rotate_size") == "16k"
    assert info.get("nope", "default") == "default"
    assert await auth.lookup("nobody") is None
    assert await auth.lookup("Alice") is None
    assert await auth.lookup("a:b") is None
    fixture = fixtures_dir / "dovecot-2.3" / "users.passwd-file"
    async with PasswdFileAuthenticator(fixture, default_scheme="PLAIN", failure_delay=0) as dc:
        mdbox = await dc.lookup("mdbox")
        assert mdbox is not None
        assert mdbox.mail == "mdbox:~/mdbox"
        assert (await dc.authenticate("bench7", "pass")).ok
        assert not (await dc.authenticate("bench7", "Pass")).ok


async def test_reload_keeps_the_old_table_when_the_new_file_is_bad(
    auth: PasswdFileAuthenticator, users_file: Path
) -> None:
    assert (await auth.authenticate("alice", "alice-pw")).ok
    old = auth.table
    users_file.write_text(USERS + "alice:{PLAIN}duplicate\n")
    with pytest.raises(PasswdFileError, match=r"users:\d+: user 'alice' already defined"):
        await auth.reload()
    assert auth.table is old
    assert (await auth.authenticate("alice", "alice-pw")).ok
    users_file.write_text(USERS + "dave:{PLAIN}dave-pw\n")
    table = await auth.reload()
    assert "dave" in table
    assert auth.table is table
    assert (await auth.authenticate("dave", "dave-pw")).ok


async def test_changes_are_picked_up_without_a_reload(
    users_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with PasswdFileAuthenticator(
        users_file, failure_delay=0, reload_check_interval=0
    ) as auth:
        assert not (await auth.authenticate("erin", "erin-pw")).ok
        await asyncio.to_thread(add_user, users_file, "erin", "{PLAIN}erin-pw")
        assert (await auth.authenticate("erin", "erin-pw")).ok
        caplog.set_level(logging.ERROR, logger="aiodbox.auth")
        await asyncio.to_thread(users_file.write_text, "bad:{PLAIN}x:0\n")
        assert (await auth.authenticate("erin", "erin-pw")).ok  # old table kept
        assert any("uid 0" in r.getMessage() for r in caplog.records)
        await asyncio.to_thread(users_file.unlink)
        caplog.clear()
        assert (await auth.authenticate("erin", "erin-pw")).ok  # stat fails: kept too
        assert (await auth.authenticate("erin", "erin-pw")).ok
        stat_errors = [r for r in caplog.records if "stat failed" in r.getMessage()]
        assert len(stat_errors) == 1  # logged once, not on every check


async def test_no_table_at_all_is_a_temporary_failure(tmp_path: Path) -> None:
    async with PasswdFileAuthenticator(tmp_path / "missing", failure_delay=DELAY) as auth:
        result, elapsed = await _timed(auth.authenticate("alice", "x"))
        assert result.status is AuthStatus.TEMPFAIL
        assert "cannot read" in (result.error or "")
        assert elapsed >= DELAY
        with pytest.raises(PasswdFileError):
            await auth.lookup("alice")
        assert auth.table is None


async def test_constructor_checks_its_arguments(tmp_path: Path) -> None:
    with pytest.raises(UnknownSchemeError, match="NOPE"):
        PasswdFileAuthenticator(tmp_path / "u", default_scheme="NOPE")
    with pytest.raises(ValueError, match="failure_delay"):
        PasswdFileAuthenticator(tmp_path / "u", failure_delay=-1)
    assert authenticator_module.DEFAULT_FAILURE_DELAY == 2.0  # Dovecot's auth_failure_delay
