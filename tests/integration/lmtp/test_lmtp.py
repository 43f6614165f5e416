"""LMTP delivery end to end: smtplib.LMTP (and raw sockets) against a real server+store."""

from __future__ import annotations

import asyncio
import errno
import logging
import smtplib
import socket
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from pathlib import Path

import pytest

from aiodbox import metrics
from aiodbox.fs.backends.memory import MemoryFS
from aiodbox.lmtp import DeliveryEnvelope, LmtpServer
from tests.integration.lmtp.conftest import MAX_SIZE, Env

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: Bob <bob@example.test>\r\n"
    b"Subject: hello\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"\r\n"
    b"Hello,\r\n"
    b".a line that starts with a dot\r\n"
    b"..two dots\r\n"
    b"caf\xc3\xa9 8-bit\r\n" + b"x" * 3000 + b"\r\nbye\r\n"
)

Reply = tuple[int, bytes]


def _lmtp(port: int) -> smtplib.LMTP:
    client = smtplib.LMTP("127.0.0.1", port, local_hostname="client.test")
    client.ehlo()
    return client


def transaction(
    port: int, sender: str, rcpts: list[str], message: bytes, mail_options: tuple[str, ...] = ()
) -> tuple[Reply, list[Reply], list[Reply]]:
    """MAIL, each RCPT, DATA; returns the MAIL reply, RCPT replies, and the DATA replies
    (one per accepted RCPT, read past smtplib's single-reply ``data()``)."""
    with _lmtp(port) as client:
        mail = client.mail(sender, list(mail_options))
        rcpt = [client.rcpt(r) for r in rcpts]
        accepted = sum(1 for code, _ in rcpt if code == 250)
        data: list[Reply] = []
        if mail[0] == 250 and accepted:
            data.append(client.data(message))
            data += [client.getreply() for _ in range(accepted - 1)]
        return mail, rcpt, data


async def test_lhlo_announces_size_and_extensions(env: Env) -> None:
    def run() -> tuple[int, dict[str, str]]:
        with _lmtp(env.port) as client:
            return client.ehlo_resp is not None, client.esmtp_features

    _, features = await asyncio.to_thread(run)
    assert features["size"] == str(MAX_SIZE)
    for ext in ("pipelining", "enhancedstatuscodes", "8bitmime"):
        assert ext in features


async def test_several_recipients_one_unknown(env: Env) -> None:
    before = metrics.snapshot().get("lmtp.deliveries.ok", 0)
    mail, rcpt, data = await asyncio.to_thread(
        transaction,
        env.port,
        "alice@example.test",
        ["bob", "nobody", "carol@example.test"],
        MESSAGE,
    )
    assert mail[0] == 250
    assert [code for code, _ in rcpt] == [250, 550, 250]
    assert rcpt[1][1].startswith(b"5.1.1 <nobody>")
    assert [code for code, _ in data] == [250, 250]
    assert data[0][1].startswith(b"2.0.0 <bob> ") and data[0][1].endswith(b" Saved")
    assert data[1][1].startswith(b"2.0.0 <carol@example.test> ")

    for user in ("bob", "carol"):
        [stored] = await env.inbox(user)
        _head, sep, _rest = stored.partition(b"\r\n\r\n")
        assert sep
        assert stored.endswith(MESSAGE)
        trace = stored[: len(stored) - len(MESSAGE)].decode()
        # Several recipients: no Delivered-To and no "for" (Dovecot 2.3 does the same).
        assert trace.startswith("Return-Path: <alice@example.test>\r\nReceived: from client.test")
        assert "Delivered-To" not in trace and "\tfor <" not in trace
        assert "\tby test.invalid with LMTP\r\n" in trace
    assert await env.inbox("dave") == []
    assert not (env.root / "index" / "nobody").exists()
    assert metrics.snapshot()["lmtp.deliveries.ok"] == before + 2


async def test_single_recipient_is_byte_exact_with_delivered_to(env: Env) -> None:
    _, _, data = await asyncio.to_thread(
        transaction, env.port, "alice@example.test", ["bob+tag"], MESSAGE
    )
    assert [code for code, _ in data] == [250]
    [stored] = await env.inbox("bob")
    prefix = stored[: len(stored) - len(MESSAGE)].decode()
    lines = prefix.split("\r\n")
    assert lines[0] == "Return-Path: <alice@example.test>"
    assert lines[1] == "Delivered-To: bob+tag"
    assert lines[2] == "Received: from client.test ([127.0.0.1])"
    assert lines[6].startswith("\tfor <bob+tag>; ")
    assert stored.endswith(MESSAGE)


async def test_null_sender(env: Env) -> None:
    _, rcpt, data = await asyncio.to_thread(transaction, env.port, "", ["bob"], MESSAGE)
    assert [c for c, _ in rcpt] == [250] and [c for c, _ in data] == [250]
    [stored] = await env.inbox("bob")
    assert stored.startswith(b"Return-Path: <>\r\n")


async def test_duplicate_recipients_store_once(env: Env) -> None:
    _, rcpt, data = await asyncio.to_thread(
        transaction, env.port, "alice@example.test", ["bob", "bob", "bob@example.test"], MESSAGE
    )
    assert [c for c, _ in rcpt] == [250, 250, 250]
    assert [c for c, _ in data] == [250, 250, 250]
    assert len({msg.split(b" ")[2] for _, msg in data}) == 1  # one transaction id
    assert len(await env.inbox("bob")) == 1


async def test_size_parameter_over_the_limit_is_refused_at_mail(env: Env) -> None:
    mail, _rcpt, data = await asyncio.to_thread(
        transaction, env.port, "alice@example.test", ["bob"], b"x\r\n", (f"SIZE={MAX_SIZE + 1}",)
    )
    assert mail[0] == 552 and mail[1].startswith(b"5.3.4 ")
    assert data == []
    assert await env.inbox("bob") == []


async def test_oversized_data_is_refused_and_nothing_stored(env: Env) -> None:
    big = b"Subject: big\r\n\r\n" + (b"y" * 76 + b"\r\n") * (MAX_SIZE // 78 + 10)
    small = b"Subject: small\r\n\r\nok\r\n"

    def run() -> tuple[list[Reply], Reply, Reply]:
        with _lmtp(env.port) as client:
            client.mail("alice@example.test")  # no SIZE=: only the data shows the size
            client.rcpt("bob")
            client.rcpt("carol")
            replies = [client.data(big), client.getreply()]
            # The session goes on: a normal message right after is delivered.
            client.mail("alice@example.test")
            client.rcpt("bob")
            return replies, client.data(small), client.noop()

    replies, after, noop = await asyncio.to_thread(run)
    assert [c for c, _ in replies] == [552, 552]
    assert all(m.startswith(b"5.3.4 ") for _, m in replies)
    assert after[0] == 250 and noop[0] == 250
    [only] = await env.inbox("bob")
    assert only.endswith(small)
    assert await env.inbox("carol") == []
    # sdbox: no message file but the one delivered (no half-written leftovers).
    files = [p for p in (env.root / "mail").rglob("*") if p.is_file() and p.name != "dbox-box"]
    if all(p.name.startswith("u.") or p.name.startswith("m.") for p in files):
        assert len([p for p in files if p.name.startswith("u.")]) in (0, 1)


async def test_pipelined_transaction_on_a_raw_socket(env: Env) -> None:
    def run() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", env.port)) as s:
            f = s.makefile("rb")
            replies = [f.readline()]
            s.sendall(b"LHLO raw.test\r\n")
            while True:
                line = f.readline()
                if line[3:4] == b" ":
                    break
            s.sendall(
                b"MAIL FROM:<a@example.test>\r\nRCPT TO:<bob>\r\nRCPT TO:<zed>\r\n"
                b"RCPT TO:<dave>\r\nDATA\r\n"
            )
            replies += [f.readline() for _ in range(5)]
            s.sendall(b"Subject: p\r\n\r\n..dot\r\n.\r\nNOOP\r\nQUIT\r\n")
            replies += [f.readline() for _ in range(4)]
            return replies

    replies = await asyncio.to_thread(run)
    assert replies[0].startswith(b"220 test.invalid ")
    assert [r[:3] for r in replies[1:]] == [
        b"250",
        b"250",
        b"550",
        b"250",
        b"354",
        b"250",
        b"250",
        b"250",
        b"221",
    ]
    assert replies[6].startswith(b"250 2.0.0 <bob> ")
    assert replies[7].startswith(b"250 2.0.0 <dave> ")
    assert replies[8] == b"250 2.0.0 OK\r\n"  # NOOP, read from after the final dot
    [stored] = await env.inbox("dave")
    assert stored.endswith(b"Subject: p\r\n\r\n.dot\r\n")


async def test_commands_need_lhlo_and_mail(env: Env) -> None:
    def run() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", env.port)) as s:
            f = s.makefile("rb")
            f.readline()
            out = []
            for cmd in (b"MAIL FROM:<a@b>", b"LHLO x", b"RCPT TO:<bob>", b"DATA", b"HELO x"):
                s.sendall(cmd + b"\r\n")
                line = f.readline()
                while line[3:4] == b"-":
                    line = f.readline()
                out.append(line)
            return out

    mail, lhlo, rcpt, data, helo = await asyncio.to_thread(run)
    assert mail.startswith(b"503 ")
    assert lhlo.startswith(b"250 SIZE ")
    assert rcpt.startswith(b"503 5.5.1 ")
    assert data.startswith(b"503 5.5.1 ")
    assert helo.startswith(b"500 5.5.2 ")  # aiosmtpd's reply, given a status code


async def test_client_gone_mid_data_stores_nothing(env: Env) -> None:
    def run() -> None:
        with socket.create_connection(("127.0.0.1", env.port)) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob>\r\nDATA\r\n")
            while not f.readline().startswith(b"354"):
                pass
            s.sendall(b"Subject: cut\r\n\r\n" + b"z" * 10000 + b"\r\n")

    await asyncio.to_thread(run)
    for _ in range(100):
        if env.server.connections == 0:
            break
        await asyncio.sleep(0.02)
    assert env.server.connections == 0
    assert await env.inbox("bob") == []
    _, _, data = await asyncio.to_thread(
        transaction, env.port, "a@b", ["bob"], b"S: 2\r\n\r\nx\r\n"
    )
    assert [c for c, _ in data] == [250]
    assert len(await env.inbox("bob")) == 1


async def test_one_log_line_per_command(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiodbox.lmtp")
    await asyncio.to_thread(transaction, env.port, "alice@example.test", ["bob", "zed"], MESSAGE)
    lines = [
        r.getMessage()
        for r in caplog.records
        if r.name == "aiodbox.lmtp" and r.getMessage().startswith("user=")
    ]
    cmds = [line.split(" cmd=")[1].split(" ")[0] for line in lines]
    assert cmds[:5] == ["LHLO", "MAIL", "RCPT", "RCPT", "DATA"]
    rcpt_bob, rcpt_zed, data = lines[2], lines[3], lines[4]
    assert "user=bob " in rcpt_bob and "result=250" in rcpt_bob
    assert "result=550" in rcpt_zed
    assert "user=bob " in data and "result=250" in data and " ms=" in data
    assert " ip=127.0.0.1 " in data
    assert int(data.split(" in=")[1].split(" ")[0]) > len(MESSAGE)


# ------------------------------------------------------------------ failures


async def test_storage_failure_is_temporary_and_a_retry_stores_once(
    make_env: Callable[..., AsyncIterator[Env]],
) -> None:
    fs = MemoryFS()
    async for env in make_env(fs=fs, spec="memory"):
        await env.storage.user("bob")  # the mailboxes exist; only the delivery fails
        await env.storage.user("carol")
        fs.faults.fail("commit", errno.EIO, times=1000)
        _, rcpt, data = await asyncio.to_thread(
            transaction, env.port, "alice@example.test", ["bob", "carol"], MESSAGE
        )
        assert [c for c, _ in rcpt] == [250, 250]
        assert [c for c, _ in data] == [451, 451]
        assert data[0][1].startswith(b"4.") and b"<bob>" in data[0][1]
        fs.faults = type(fs.faults)()
        _, _, data = await asyncio.to_thread(
            transaction, env.port, "alice@example.test", ["bob", "carol"], MESSAGE
        )
        assert [c for c, _ in data] == [250, 250]
        assert len(await env.inbox("bob")) == 1
        assert len(await env.inbox("carol")) == 1


async def test_randomfail_stack_answers_4xx(
    make_env: Callable[..., AsyncIterator[Env]],
) -> None:
    async for env in make_env(spec="randomfail:1.0:memory"):
        _, rcpt, data = await asyncio.to_thread(
            transaction, env.port, "alice@example.test", ["bob", "carol"], MESSAGE
        )
        assert [c for c, _ in rcpt] == [250, 250]
        assert [c for c, _ in data] == [451, 451]


async def test_unreadable_passwd_file_is_a_temporary_rcpt_failure(
    make_env: Callable[..., AsyncIterator[Env]], passwd: Path
) -> None:
    passwd.unlink()
    async for env in make_env():
        _, rcpt, data = await asyncio.to_thread(transaction, env.port, "a@b", ["bob"], MESSAGE)
        assert rcpt[0][0] == 451 and rcpt[0][1].startswith(b"4.3.0 ")
        assert data == []


# ------------------------------------------------------------------ streaming


class _ProbeDelivery:
    """Records what arrives and when; lets the test hold the client until data flowed."""

    def __init__(self) -> None:
        self.received = 0
        self.chunks = 0
        self.half = asyncio.Event()
        self.threshold = 0

    async def resolve(self, address: str) -> str | None:
        return address

    async def deliver(
        self, user: str, stream: AsyncIterable[bytes], envelope: DeliveryEnvelope
    ) -> str:
        async for chunk in stream:
            self.received += len(chunk)
            self.chunks += 1
            if self.received >= self.threshold:
                self.half.set()
        return "probe"


async def test_data_streams_into_the_delivery_before_the_message_ends() -> None:
    probe = _ProbeDelivery()
    server = LmtpServer(probe, listen=["127.0.0.1:0"], max_message_size=50 << 20)
    await server.start()
    port = server.addresses[0][1]
    line = b"z" * 78 + b"\r\n"
    half = line * 20000  # 1.6 MB
    probe.threshold = len(half) // 2
    loop = asyncio.get_running_loop()

    def client() -> bytes:
        with socket.create_connection(("127.0.0.1", port)) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u1>\r\nRCPT TO:<u2>\r\nDATA\r\n")
            for _ in range(9):  # LHLO lines, MAIL, 2 RCPT, 354
                f.readline()
            s.sendall(b"Subject: stream\r\n\r\n" + half)
            # The delivery must have seen data while the message is still incomplete.
            asyncio.run_coroutine_threadsafe(asyncio.wait_for(probe.half.wait(), 20), loop).result()
            s.sendall(half + b".\r\n")
            return f.readline() + f.readline()

    try:
        replies = await asyncio.to_thread(client)
    finally:
        await server.shutdown(timeout=5)
    assert replies.count(b"250 2.0.0 ") == 2
    assert probe.chunks > 10  # in batches, not as one blob


# ------------------------------------------------------------------ shutdown


async def test_shutdown_finishes_data_in_flight_then_says_421(env: Env) -> None:
    loop = asyncio.get_running_loop()
    sent_half = asyncio.Event()

    def client() -> list[bytes]:
        with socket.create_connection(("127.0.0.1", env.port)) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"LHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<bob>\r\nDATA\r\n")
            for _ in range(8):
                f.readline()
            s.sendall(b"Subject: late\r\n\r\nfirst half\r\n")
            loop.call_soon_threadsafe(sent_half.set)
            time.sleep(0.3)  # the server is shutting down meanwhile
            s.sendall(b"second half\r\n.\r\n")
            return [f.readline(), f.readline(), f.readline()]

    def idle_client() -> bytes:
        with socket.create_connection(("127.0.0.1", env.port)) as s:
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"LHLO idle\r\n")
            while f.readline()[3:4] == b"-":
                pass
            return f.readline()

    busy = asyncio.ensure_future(asyncio.to_thread(client))
    idle = asyncio.ensure_future(asyncio.to_thread(idle_client))
    await sent_half.wait()
    while env.server.connections < 2:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    await env.server.shutdown(timeout=5)
    replies = await busy
    assert replies[0].startswith(b"250 2.0.0 <bob> ")
    assert replies[1].startswith(b"421 4.3.2 ")
    assert replies[2] == b""
    assert (await idle).startswith(b"421 4.3.2 ")
    [stored] = await env.inbox("bob")
    assert stored.endswith(b"first half\r\nsecond half\r\n")
