"""``APPEND`` with MULTIAPPEND (RFC 3502), LITERAL+ and UIDPLUS ``APPENDUID``.

The message literal streams from the socket into the storage transaction: the protocol
core hands out ``LiteralChunk`` events as bytes arrive and :meth:`Transaction.save`
writes each one on, so a large message is never held whole (a small one, up to 64 KiB in
sdbox, is written in one piece at the commit).  The size is checked against
APPENDLIMIT (``[imap] max_literal_size``) and the mailbox's existence is checked *before*
the ``+`` continuation (or, for ``{n+}``, before a byte is stored): a refused literal is
never read into memory (Dovecot's rules for what happens to its bytes, see the protocol
core's ``reject_literal``).  All messages of one APPEND commit together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from aiodbox.imap.commands.base import CommandError, Reply, no, ok
from aiodbox.imap.commands.store import parse_flags
from aiodbox.imap.output import ConnectionLost
from aiodbox.imap.protocol import AppendEnd, AppendMessageStart, LiteralChunk, LiteralEnd
from aiodbox.imap.protocol import responses as r
from aiodbox.storage.errors import MailboxNotFound, StorageError

if TYPE_CHECKING:
    from aiodbox.imap.connection import ImapConnection
    from aiodbox.storage.mailbox import Transaction


class _AppendAborted(ConnectionLost):
    """The connection ended in the middle of an APPEND."""


class _Literal:
    """The chunks of one accepted message literal, as an async iterator."""

    def __init__(self, conn: ImapConnection) -> None:
        self._conn = conn
        self.done = False

    async def chunks(self) -> AsyncIterator[bytes]:
        while not self.done:
            event = await self._conn.next_event()
            if isinstance(event, LiteralChunk):
                yield event.data
            elif isinstance(event, LiteralEnd):
                self.done = True
            else:
                raise _AppendAborted(f"unexpected {type(event).__name__} in a literal")

    async def skip(self) -> None:
        """Read and drop the rest of the literal (after the storage refused it)."""
        async for _ in self.chunks():
            pass


def _refusal(event: AppendMessageStart, limit: int) -> Reply | None:
    if event.size > limit:
        return no("Message too large.", r.TOOBIG)
    if event.size == 0:
        return no("Can't save a zero byte message.")
    return None


async def append(conn: ImapConnection, first: AppendMessageStart) -> Reply:
    """``APPEND mailbox [(flags)] [date] literal [more messages]``."""
    user = conn.user
    assert user is not None
    parser = conn.parser
    limit = conn.server.config.imap.max_literal_size
    try:
        mailbox = await user.open_mailbox(first.mailbox, load_view=False)
    except MailboxNotFound:
        parser.reject_literal()
        return no(f"Mailbox doesn't exist: {first.mailbox}", r.TRYCREATE)
    except BaseException:
        parser.reject_literal()
        raise
    try:
        try:
            tx = mailbox.transaction()
        except BaseException:
            parser.reject_literal()
            raise
        try:
            reply = await _receive(conn, tx, first, limit)
        except BaseException:
            await tx.rollback()
            raise
        if reply is not None:
            await tx.rollback()
            return reply
        result = await tx.commit()
        uidvalidity = mailbox.info.uidvalidity
    finally:
        await mailbox.close()
    return ok("Append completed.", r.ResponseCode.appenduid(uidvalidity, result.saved_uids))


async def _receive(
    conn: ImapConnection, tx: Transaction, event: AppendMessageStart, limit: int
) -> Reply | None:
    """Save every message of the APPEND; a reply if one was refused (the rest skipped)."""
    parser = conn.parser
    while True:
        refusal = _refusal(event, limit)
        try:
            bits, keywords = parse_flags(event.flags, "APPEND")
        except CommandError as exc:
            refusal = exc.reply
        if refusal is not None:
            parser.reject_literal()
            return refusal
        continuation = parser.accept_literal()
        if continuation:
            conn.output.write(continuation)
        internal_date = internal_tz = None
        if event.date is not None:
            internal_date = int(event.date.timestamp())
            offset = event.date.utcoffset()
            internal_tz = int(offset.total_seconds()) // 60 if offset is not None else 0
        literal = _Literal(conn)
        try:
            await tx.save(
                literal.chunks(),
                flags=bits,
                keywords=keywords,
                internal_date=internal_date,
                internal_tz=internal_tz or 0,
                size_hint=event.size,
            )
        except ConnectionLost:
            raise
        except Exception as exc:
            # The rest of the command's bytes are consumed (else they would be read as
            # commands).  An error other than the storage's (an I/O error, a bug) then
            # goes to the command's error handler: logged, NO [SERVERBUG].
            if not literal.done:
                await literal.skip()
            await _skip_rest(conn)
            if isinstance(exc, StorageError):
                return no(str(exc) or "Save failed.", _code(exc))
            raise
        next_event = await conn.next_event()
        if isinstance(next_event, AppendEnd):
            return None
        if not isinstance(next_event, AppendMessageStart):
            raise _AppendAborted(f"unexpected {type(next_event).__name__} in APPEND")
        event = next_event


async def _skip_rest(conn: ImapConnection) -> None:
    """After a failed message: refuse the following ones, up to the end of the APPEND."""
    while True:
        event = await conn.next_event()
        if isinstance(event, AppendEnd):
            return
        if isinstance(event, AppendMessageStart):
            conn.parser.reject_literal()
            return
        raise _AppendAborted(f"unexpected {type(event).__name__} in APPEND")


def _code(exc: StorageError) -> r.ResponseCode | None:
    return r.ResponseCode(exc.imap_code) if exc.imap_code else None
