"""Events that are not commands: literal streaming, continuations, IDLE/SASL lines.

Every event is a frozen, slotted dataclass.  :data:`NEED_DATA` is a sentinel class (as
in h11), returned by ``next_event()`` when it cannot produce an event from the bytes it
holds.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import ClassVar


class _SentinelType(type):
    def __repr__(cls) -> str:
        return cls.__name__


class NEED_DATA(metaclass=_SentinelType):
    """Sentinel: feed more bytes with ``receive_data()`` before asking again."""


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of everything ``next_event()`` returns."""


@dataclass(frozen=True, slots=True)
class ContinuationRequired(Event):
    """The client announced a synchronising literal inside a command and waits for ``+``.

    The server answers with :func:`~aiodbox.imap.protocol.responses.continuation` and
    keeps calling ``next_event()``; the parser collects the literal by itself.
    """

    tag: str
    size: int


@dataclass(frozen=True, slots=True)
class AppendMessageStart(Event):
    """An APPEND message literal header was read; its bytes have *not* been read yet.

    The server checks ``size`` against its limits (and that the mailbox exists), then
    calls ``accept_literal()`` (which returns the ``+`` line to send for a synchronising
    literal) or ``reject_literal()`` (after which it sends ``tag NO [TOOBIG] ...`` or
    similar).  ``next_event()`` refuses to run until one of them is called.

    Attributes:
        tag: The APPEND's tag.
        mailbox: Destination mailbox (decoded from modified UTF-7; ``INBOX`` upper-cased).
        flags: Flags from the optional flag list (system flags in canonical case).
        date: The optional internal date (timezone-aware), or ``None``.
        size: Literal size in octets, as announced by the client.
        synchronizing: True for ``{n}`` (the client waits for ``+``), False for ``{n+}``.
        index: 0 for the first message, 1, 2, ... for further MULTIAPPEND messages.
    """

    name: ClassVar[str] = "APPEND"

    tag: str
    mailbox: str
    flags: tuple[str, ...]
    date: dt.datetime | None
    size: int
    synchronizing: bool
    index: int = 0


@dataclass(frozen=True, slots=True)
class LiteralChunk(Event):
    """Some bytes of the accepted APPEND message literal, in order, never empty."""

    data: bytes


@dataclass(frozen=True, slots=True)
class LiteralEnd(Event):
    """The accepted APPEND message literal is complete."""


@dataclass(frozen=True, slots=True)
class AppendEnd(Event):
    """The APPEND command line ended after ``count`` messages: commit and answer."""

    tag: str
    count: int


@dataclass(frozen=True, slots=True)
class IdleDone(Event):
    """The client ended IDLE with ``DONE`` (see ``expect_idle_done()``)."""

    tag: str


@dataclass(frozen=True, slots=True)
class SaslResponse(Event):
    """One client line during AUTHENTICATE (see ``expect_sasl_response()``).

    Attributes:
        tag: The AUTHENTICATE's tag.
        data: The base64-decoded response (empty for an empty line or a cancel).
        cancelled: True if the client sent ``*`` (the server answers ``BAD``).
    """

    tag: str
    data: bytes
    cancelled: bool = False


@dataclass(frozen=True, slots=True)
class ConnectionClosed(Event):
    """The peer closed its side (``receive_data(b"")``) and every byte was consumed."""
