"""Helpers shared by the IMAP protocol tests: drive a ServerConnection, collect events."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiodbox.imap.protocol import (
    NEED_DATA,
    AppendMessageStart,
    Command,
    ConnectionClosed,
    ContinuationRequired,
    Event,
    LiteralChunk,
    RemoteProtocolError,
    ServerConnection,
)


@dataclass(frozen=True)
class Err:
    """A RemoteProtocolError, recorded as a comparable value."""

    tag: str | None
    message: str
    code: str | None = None
    aborted_append: bool = False


Item = Event | Err
Decide = Callable[[ServerConnection, AppendMessageStart], None]


def accept(conn: ServerConnection, event: AppendMessageStart) -> None:
    conn.accept_literal()


def reject(conn: ServerConnection, event: AppendMessageStart) -> None:
    conn.reject_literal()


def drain(conn: ServerConnection, out: list[Item], decide: Decide = accept) -> None:
    """Call next_event() until NEED_DATA or ConnectionClosed, recording events and errors."""
    while True:
        try:
            event = conn.next_event()
        except RemoteProtocolError as exc:
            out.append(Err(exc.tag, exc.message, exc.code, exc.aborted_append))
            continue
        if event is NEED_DATA:
            return
        assert isinstance(event, Event)
        out.append(event)
        if isinstance(event, ConnectionClosed):
            return
        if isinstance(event, AppendMessageStart):
            decide(conn, event)


def feed(
    data: bytes | Iterable[bytes],
    conn: ServerConnection | None = None,
    decide: Decide = accept,
) -> list[Item]:
    """Feed ``data`` (one buffer or an iterable of pieces), draining after each piece."""
    conn = conn or ServerConnection()
    out: list[Item] = []
    pieces = [data] if isinstance(data, bytes) else data
    for piece in pieces:
        conn.receive_data(piece)
        drain(conn, out, decide)
    return out


def merge_chunks(events: list[Item]) -> list[Item]:
    """Join consecutive LiteralChunk events, so that chunking does not matter."""
    out: list[Item] = []
    for ev in events:
        if isinstance(ev, LiteralChunk) and out and isinstance(out[-1], LiteralChunk):
            out[-1] = LiteralChunk(out[-1].data + ev.data)
        else:
            out.append(ev)
    return out


def one_command(data: bytes) -> Command:
    """Parse ``data``: exactly one command event (continuation requests ignored)."""
    events = [e for e in feed(data) if not isinstance(e, ContinuationRequired)]
    assert len(events) == 1, events
    assert isinstance(events[0], Command), events
    return events[0]


def one_error(data: bytes) -> Err:
    """Parse ``data``: exactly one remote error."""
    events = feed(data)
    assert len(events) == 1, events
    assert isinstance(events[0], Err), events
    return events[0]
