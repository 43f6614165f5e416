"""What every command handler shares: the tagged reply, errors, the handler table entry.

A handler is ``async def handler(conn, command) -> Reply | None``.  It writes untagged
data through ``conn.output`` and returns the tagged completion; the connection sends
the untagged updates the client is owed first (EXISTS, EXPUNGE, FETCH FLAGS, see
:mod:`aiodbox.imap.selected`) and then the tagged line.  ``None`` means the command is
not finished when the handler returns (IDLE: the tagged reply follows ``DONE``).
Handlers raise :class:`CommandError` for a refusal; storage errors become ``NO`` with
their response code without the handler's help.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from aiodbox.imap.protocol import responses as r

if TYPE_CHECKING:
    from aiodbox.imap.connection import ImapConnection

Status = Literal["OK", "NO", "BAD"]


@dataclass(frozen=True, slots=True)
class Reply:
    """The tagged completion of a command.

    Attributes:
        status: ``OK``, ``NO`` or ``BAD``.
        text: Human-readable text (sanitised when encoded).
        code: A response code, or None.
        after: Awaited after the tagged line was written (STARTTLS starts the
            handshake there, LOGOUT closes).
    """

    status: Status
    text: str
    code: r.ResponseCode | None = None
    after: Callable[[], Awaitable[None]] | None = None


def ok(text: str, code: r.ResponseCode | None = None) -> Reply:
    """A tagged ``OK``."""
    return Reply("OK", text, code)


def no(text: str, code: r.ResponseCode | None = None) -> Reply:
    """A tagged ``NO``."""
    return Reply("NO", text, code)


def bad(text: str, code: r.ResponseCode | None = None) -> Reply:
    """A tagged ``BAD``."""
    return Reply("BAD", text, code)


class CommandError(Exception):
    """A handler refuses the command; the reply says how.

    Attributes:
        reply: The tagged reply to send.
    """

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


Handler = Callable[["ImapConnection", Any], Awaitable[Reply | None]]


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """How the connection runs one command.

    Attributes:
        handler: The coroutine function.
        sync: Bring the selected mailbox up to date with other processes first.
        expunges_with_uid_only: Expunges may be reported after this command only in
            its UID form (RFC 3501 §7.4.1: not during FETCH, STORE, SEARCH).
    """

    handler: Handler
    sync: bool = True
    expunges_with_uid_only: bool = False
