"""Server side of SASL PLAIN (RFC 4616) and LOGIN, sans-IO, for IMAP AUTHENTICATE.

Theory of operation
-------------------
A :class:`SaslServer` is a small state machine the IMAP server drives with the
base64 *text* it reads; it never does I/O and never checks passwords.

* ``start(mechanism, initial_response)`` begins the exchange.  ``initial_response``
  is the SASL-IR argument as sent (RFC 4959: base64, ``=`` for an empty response),
  or None when there was none.
* Each call returns an event: a :class:`Challenge` (send ``+ `` followed by
  :meth:`Challenge.encoded`, then read one line and pass it to :meth:`step`) or
  :class:`Credentials` (the exchange is complete: hand them to the authenticator).
* ``step(client_line)`` takes one client line (a trailing CRLF is ignored).  ``*``
  cancels (:class:`SaslCancelled`, RFC 3501: reply BAD).

States and their transitions are the tables ``_START`` (mechanism → handler for
the initial response) and ``_STEP`` (state → handler for a client line).  Every
handler returns the event and the next state.  Any client error raises a
:class:`SaslRemoteError` subclass and leaves the machine FAILED; driving a finished
machine raises :class:`SaslLocalError`.

PLAIN's message is ``[authzid] NUL authcid NUL passwd``; an authorization identity
is accepted only when it equals the authentication identity (there are no master
users).  LOGIN (draft-murchison-sasl-login) asks ``Username:`` then ``Password:``;
an initial response, if any, is the username.  Identities must be UTF-8 without NUL;
passwords are returned as bytes, unchanged.
"""

from __future__ import annotations

import base64
import binascii
import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final

from aiodbox.auth.errors import SaslAuthzRefused, SaslCancelled, SaslLocalError, SaslRemoteError

__all__ = [
    "MAX_RESPONSE_BYTES",
    "MECHANISMS",
    "Challenge",
    "Credentials",
    "SaslServer",
    "SaslState",
    "decode_response",
]

MECHANISMS: Final = ("PLAIN", "LOGIN")
"""The mechanisms implemented here, in the order to advertise them."""
MAX_RESPONSE_BYTES: Final = 16 * 1024
"""Longest client response accepted (base64 text, before decoding)."""

_CANCEL: Final = b"*"
_EMPTY_INITIAL_RESPONSE: Final = b"="


class SaslState(enum.Enum):
    """Where a :class:`SaslServer` is."""

    IDLE = "idle"
    PLAIN_RESPONSE = "plain-response"
    LOGIN_USERNAME = "login-username"
    LOGIN_PASSWORD = "login-password"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Challenge:
    """A server challenge: send it as a continuation, then read a client line.

    Attributes:
        data: The challenge bytes before base64 (``b""`` for PLAIN, ``b"Username:"``).
    """

    data: bytes

    def encoded(self) -> bytes:
        """The base64 text that follows ``+ `` on the wire."""
        return base64.b64encode(self.data)


@dataclass(frozen=True, slots=True)
class Credentials:
    """The exchange is complete; verify these.

    Attributes:
        mechanism: ``"PLAIN"`` or ``"LOGIN"``.
        authcid: The authentication identity (the login name).
        password: The password bytes exactly as sent (not shown in ``repr``).
        authzid: The authorization identity when the client sent one (then it equals
            ``authcid``), else None.
    """

    mechanism: str
    authcid: str
    password: bytes = field(repr=False)
    authzid: str | None = None


Event = Challenge | Credentials
_Transition = tuple[Event, SaslState]


def decode_response(data: bytes, *, initial: bool = False) -> bytes:
    """Decode one client response from base64, strictly.

    Args:
        data: The base64 text (a trailing CRLF is ignored).
        initial: True for a SASL-IR initial response, where ``=`` means empty.

    Returns:
        The decoded bytes.

    Raises:
        SaslRemoteError: The text is too long or not valid base64 (bad characters,
            bad padding, length not a multiple of 4).
    """
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if len(data) > MAX_RESPONSE_BYTES:
        raise SaslRemoteError(f"SASL response longer than {MAX_RESPONSE_BYTES} bytes")
    if initial and data == _EMPTY_INITIAL_RESPONSE:
        return b""
    if len(data) % 4:
        raise SaslRemoteError("invalid base64 in SASL response: length not a multiple of 4")
    try:
        return binascii.a2b_base64(data, strict_mode=True)
    except binascii.Error as exc:
        raise SaslRemoteError(f"invalid base64 in SASL response: {exc}") from None


def _identity(what: str, raw: bytes) -> str:
    if not raw:
        raise SaslRemoteError(f"empty {what}")
    if b"\x00" in raw:
        raise SaslRemoteError(f"NUL in {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslRemoteError(f"{what} is not valid UTF-8") from None


def _password(raw: bytes) -> bytes:
    if not raw:
        raise SaslRemoteError("empty password")
    if b"\x00" in raw:
        raise SaslRemoteError("NUL in password")
    return raw


class SaslServer:
    """One SASL exchange (PLAIN or LOGIN); see the module docstring for the protocol.

    Args:
        mechanisms: The mechanisms this server offers (a subset of
            :data:`MECHANISMS`, case-insensitive); e.g. drop PLAIN/LOGIN on a
            connection without TLS when plaintext auth is disabled.

    Raises:
        ValueError: ``mechanisms`` names one not implemented here.
    """

    __slots__ = ("_allowed", "_mechanism", "_state", "_username")

    def __init__(self, mechanisms: Iterable[str] = MECHANISMS) -> None:
        allowed = frozenset(m.upper() for m in mechanisms)
        unknown = allowed - frozenset(MECHANISMS)
        if unknown:
            raise ValueError(f"mechanisms not implemented: {sorted(unknown)}")
        self._allowed = allowed
        self._state = SaslState.IDLE
        self._mechanism: str | None = None
        self._username = ""

    @property
    def state(self) -> SaslState:
        """The current state."""
        return self._state

    @property
    def mechanism(self) -> str | None:
        """The mechanism chosen by :meth:`start` (upper case), or None before."""
        return self._mechanism

    def start(self, mechanism: str, initial_response: bytes | None = None) -> Event:
        """Begin the exchange.

        Args:
            mechanism: The mechanism name from ``AUTHENTICATE`` (case-insensitive).
            initial_response: The SASL-IR argument as sent (base64 or ``=``), or None.

        Returns:
            The first :class:`Challenge`, or :class:`Credentials` when the initial
            response completed the exchange.

        Raises:
            SaslRemoteError: Unsupported mechanism or a malformed initial response
                (including :class:`SaslAuthzRefused`).
            SaslLocalError: ``start`` was already called.
        """
        if self._state is not SaslState.IDLE:
            raise SaslLocalError(f"start() called in state {self._state.value}")
        name = mechanism.upper()
        handler = _START.get(name)
        if handler is None or name not in self._allowed:
            self._state = SaslState.FAILED
            raise SaslRemoteError(f"unsupported SASL mechanism {mechanism!r}")
        self._mechanism = name
        return self._apply(handler, initial_response, initial=True)

    def step(self, client_line: bytes) -> Event:
        """Feed one client line (the answer to the last :class:`Challenge`).

        Returns:
            The next :class:`Challenge`, or :class:`Credentials`.

        Raises:
            SaslCancelled: The client sent ``*``.
            SaslRemoteError: The line is malformed (including
                :class:`SaslAuthzRefused`).
            SaslLocalError: No challenge is outstanding (not started, or finished).
        """
        handler = _STEP.get(self._state)
        if handler is None:
            raise SaslLocalError(f"step() called in state {self._state.value}")
        line = client_line.rstrip(b"\r\n")
        if line == _CANCEL:
            self._state = SaslState.FAILED
            raise SaslCancelled("authentication cancelled by the client")
        return self._apply(handler, line, initial=False)

    def _apply(
        self,
        handler: Callable[[SaslServer, bytes | None], _Transition],
        raw: bytes | None,
        *,
        initial: bool,
    ) -> Event:
        try:
            decoded = None if raw is None else decode_response(raw, initial=initial)
            event, self._state = handler(self, decoded)
        except SaslRemoteError:
            self._state = SaslState.FAILED
            raise
        return event

    # --- handlers: (decoded response or None) -> (event, next state) ---------------

    def _plain_start(self, response: bytes | None) -> _Transition:
        if response is None:
            return Challenge(b""), SaslState.PLAIN_RESPONSE
        return self._plain_response(response)

    def _plain_response(self, response: bytes | None) -> _Transition:
        parts = (response or b"").split(b"\x00")
        if len(parts) != 3:
            raise SaslRemoteError("PLAIN: expected authzid NUL authcid NUL password")
        raw_authzid, raw_authcid, raw_password = parts
        authcid = _identity("authentication identity", raw_authcid)
        password = _password(raw_password)
        authzid = _identity("authorization identity", raw_authzid) if raw_authzid else None
        if authzid is not None and authzid != authcid:
            raise SaslAuthzRefused(f"authorization identity {authzid!r} differs from {authcid!r}")
        return Credentials("PLAIN", authcid, password, authzid), SaslState.DONE

    def _login_start(self, response: bytes | None) -> _Transition:
        if response is None:
            return Challenge(b"Username:"), SaslState.LOGIN_USERNAME
        return self._login_username(response)

    def _login_username(self, response: bytes | None) -> _Transition:
        self._username = _identity("username", response or b"")
        return Challenge(b"Password:"), SaslState.LOGIN_PASSWORD

    def _login_password(self, response: bytes | None) -> _Transition:
        password = _password(response or b"")
        return Credentials("LOGIN", self._username, password), SaslState.DONE


_Handler = Callable[[SaslServer, bytes | None], _Transition]

_START: Final[dict[str, _Handler]] = {
    "PLAIN": SaslServer._plain_start,
    "LOGIN": SaslServer._login_start,
}
_STEP: Final[dict[SaslState, _Handler]] = {
    SaslState.PLAIN_RESPONSE: SaslServer._plain_response,
    SaslState.LOGIN_USERNAME: SaslServer._login_username,
    SaslState.LOGIN_PASSWORD: SaslServer._login_password,
}
