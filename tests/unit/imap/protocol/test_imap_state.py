"""Session state table: allowed commands per state and the transitions."""

from __future__ import annotations

import pytest

from aiodbox.imap.protocol import (
    AppendMessageStart,
    Fetch,
    FetchAttribute,
    Login,
    Select,
    SequenceSet,
    Session,
    SessionState,
    allowed,
    next_state,
)
from aiodbox.imap.protocol.grammar import COMMAND_NAMES
from aiodbox.imap.protocol.state import ALLOWED, TRANSITIONS

N = SessionState.NOT_AUTHENTICATED
A = SessionState.AUTHENTICATED
S = SessionState.SELECTED
L = SessionState.LOGOUT


@pytest.mark.parametrize(
    ("name", "states"),
    [
        ("CAPABILITY", {N, A, S}),
        ("NOOP", {N, A, S}),
        ("LOGOUT", {N, A, S}),
        ("ID", {N, A, S}),
        ("LOGIN", {N}),
        ("AUTHENTICATE", {N}),
        ("STARTTLS", {N}),
        ("SELECT", {A, S}),
        ("APPEND", {A, S}),
        ("LIST", {A, S}),
        ("IDLE", {A, S}),
        ("ENABLE", {A}),
        ("FETCH", {S}),
        ("STORE", {S}),
        ("CLOSE", {S}),
        ("UNSELECT", {S}),
        ("EXPUNGE", {S}),
        ("MOVE", {S}),
    ],
)
def test_allowed_states(name: str, states: set[SessionState]) -> None:
    for state in SessionState:
        assert allowed(state, name) is (state in states), (name, state)


def test_every_grammar_command_has_a_row_and_nothing_runs_in_logout() -> None:
    assert (COMMAND_NAMES - {"EXAMINE"}) <= set(ALLOWED)
    assert not any(L in states for states in ALLOWED.values())
    assert not allowed(A, "FROBNICATE")


def test_allowed_accepts_events() -> None:
    login = Login("a1", "u", "p")
    fetch = Fetch("a2", SequenceSet.parse("1"), (FetchAttribute("UID"),), uid=True)
    append = AppendMessageStart("a3", "INBOX", (), None, 1, True)
    assert allowed(N, login)
    assert not allowed(A, login)
    assert allowed(S, fetch)
    assert not allowed(A, fetch)
    assert allowed(A, append)
    assert not allowed(N, append)
    examine = Select("a4", "INBOX", readonly=True)
    assert allowed(A, examine)


@pytest.mark.parametrize(
    ("state", "name", "outcome", "after"),
    [
        (N, "LOGIN", "OK", A),
        (N, "LOGIN", "NO", N),
        (N, "AUTHENTICATE", "OK", A),
        (N, "AUTHENTICATE", "BAD", N),
        (A, "SELECT", "OK", S),
        (A, "SELECT", "NO", A),
        (S, "SELECT", "OK", S),
        (S, "SELECT", "NO", A),  # a failed SELECT closes the current mailbox
        (S, "SELECT", "BAD", S),
        (S, "CLOSE", "OK", A),
        (S, "UNSELECT", "OK", A),
        (S, "FETCH", "OK", S),
        (N, "LOGOUT", "OK", L),
        (A, "LOGOUT", "OK", L),
        (S, "LOGOUT", "OK", L),
        (N, "STARTTLS", "OK", N),
    ],
)
def test_transitions(state: SessionState, name: str, outcome: str, after: SessionState) -> None:
    assert next_state(state, name, outcome) is after  # type: ignore[arg-type]


def test_transition_table_is_data() -> None:
    assert TRANSITIONS[(S, "CLOSE", "OK")] is A
    assert all(isinstance(k, tuple) and len(k) == 3 for k in TRANSITIONS)


def test_session_walks_a_full_conversation() -> None:
    session = Session()
    assert session.state is N
    assert not session.allowed("SELECT")
    assert session.complete(Login("a1", "u", "p"), "OK") is A
    assert session.allowed(Select("a2", "INBOX"))
    assert session.complete(Select("a2", "INBOX"), "OK") is S
    assert session.allowed("FETCH")
    assert not session.allowed("ENABLE")
    assert session.complete("CLOSE", "OK") is A
    assert session.complete("LOGOUT", "OK") is L
    assert not session.allowed("NOOP")
    assert Session(A).allowed("LIST")
