"""The IMAP session states (RFC 3501 §3) as data: which commands each state allows, and
which completed command moves the session where.

Theory of operation (after h11 ``_state.py``): two tables and two lookups.
:data:`ALLOWED` maps a command name to the states it is valid in; the server asks
:func:`allowed` before running a command and answers ``BAD`` when it says no.
:data:`TRANSITIONS` maps ``(state, command name, result status)`` to the next state;
every combination not listed leaves the state unchanged.  The server applies
:func:`next_state` once it knows how the command ended.  Losing the connection or
sending ``BYE`` is the server's business (it just stops).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Literal

from .commands import Command
from .events import AppendMessageStart
from .grammar import COMMAND_NAMES


class SessionState(enum.Enum):
    """RFC 3501 §3 connection states."""

    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


_N = SessionState.NOT_AUTHENTICATED
_A = SessionState.AUTHENTICATED
_S = SessionState.SELECTED
_L = SessionState.LOGOUT

_ANY = frozenset({_N, _A, _S})
_AUTHED = frozenset({_A, _S})
_NOT_AUTHED = frozenset({_N})
_SELECTED = frozenset({_S})

ALLOWED: Mapping[str, frozenset[SessionState]] = {
    # RFC 3501 §6.1: any state
    "CAPABILITY": _ANY,
    "NOOP": _ANY,
    "LOGOUT": _ANY,
    "ID": _ANY,  # RFC 2971
    # §6.2: not authenticated
    "STARTTLS": _NOT_AUTHED,
    "AUTHENTICATE": _NOT_AUTHED,
    "LOGIN": _NOT_AUTHED,
    # §6.3: authenticated (and so also selected)
    "SELECT": _AUTHED,  # EXAMINE is Select(readonly=True)
    "CREATE": _AUTHED,
    "DELETE": _AUTHED,
    "RENAME": _AUTHED,
    "SUBSCRIBE": _AUTHED,
    "UNSUBSCRIBE": _AUTHED,
    "LIST": _AUTHED,
    "LSUB": _AUTHED,
    "STATUS": _AUTHED,
    "APPEND": _AUTHED,
    "NAMESPACE": _AUTHED,  # RFC 2342
    "IDLE": _AUTHED,  # RFC 2177
    "ENABLE": frozenset({_A}),  # RFC 5161: before any mailbox is selected
    # §6.4: selected
    "CHECK": _SELECTED,
    "CLOSE": _SELECTED,
    "UNSELECT": _SELECTED,  # RFC 3691
    "EXPUNGE": _SELECTED,
    "SEARCH": _SELECTED,
    "FETCH": _SELECTED,
    "STORE": _SELECTED,
    "COPY": _SELECTED,
    "MOVE": _SELECTED,  # RFC 6851
}
"""Command name → the states in which the command may be given."""

Outcome = Literal["OK", "NO", "BAD"]
"""How a command ended."""

TRANSITIONS: Mapping[tuple[SessionState, str, Outcome], SessionState] = {
    (_N, "LOGIN", "OK"): _A,
    (_N, "AUTHENTICATE", "OK"): _A,
    (_A, "SELECT", "OK"): _S,
    (_S, "SELECT", "OK"): _S,
    # RFC 3501 §6.3.1: a failed SELECT/EXAMINE in selected state closes the mailbox.
    (_S, "SELECT", "NO"): _A,
    (_S, "CLOSE", "OK"): _A,
    (_S, "UNSELECT", "OK"): _A,
    (_N, "LOGOUT", "OK"): _L,
    (_A, "LOGOUT", "OK"): _L,
    (_S, "LOGOUT", "OK"): _L,
}
"""``(state, command name, outcome)`` → next state; anything else keeps the state."""


def _name(command: Command | AppendMessageStart | str) -> str:
    return command if isinstance(command, str) else command.name


def allowed(state: SessionState, command: Command | AppendMessageStart | str) -> bool:
    """True if ``command`` (an event or a command name) is valid in ``state``.

    Unknown names are never allowed; nothing is allowed in ``LOGOUT``.
    """
    states = ALLOWED.get(_name(command))
    return states is not None and state in states


def next_state(
    state: SessionState, command: Command | AppendMessageStart | str, outcome: Outcome
) -> SessionState:
    """The state after ``command`` completed with ``outcome`` (``"OK"``/``"NO"``/``"BAD"``)."""
    return TRANSITIONS.get((state, _name(command), outcome), state)


class Session:
    """A session's current state, with the two table lookups bound to it.

    Attributes:
        state: The current state (starts ``NOT_AUTHENTICATED``, or ``AUTHENTICATED``
            for a PREAUTH greeting).
    """

    __slots__ = ("state",)

    def __init__(self, state: SessionState = SessionState.NOT_AUTHENTICATED) -> None:
        self.state = state

    def allowed(self, command: Command | AppendMessageStart | str) -> bool:
        """True if ``command`` may be run now."""
        return allowed(self.state, command)

    def complete(
        self, command: Command | AppendMessageStart | str, outcome: Outcome
    ) -> SessionState:
        """Apply the transition for ``command`` ending with ``outcome``; return the new state."""
        self.state = next_state(self.state, command, outcome)
        return self.state


def _check_tables() -> None:
    """Every grammar command has a row (the test suite calls this as well)."""
    missing = (COMMAND_NAMES - {"EXAMINE"}) - set(ALLOWED)
    if missing:  # pragma: no cover - guarded by tests
        raise AssertionError(f"commands without a state-table row: {sorted(missing)}")


_check_tables()
