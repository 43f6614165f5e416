"""Protocol errors, split local vs remote as in h11 (``h11/_util.py``).

:class:`RemoteProtocolError` means the *client* sent something wrong: the server answers
``tag BAD <message>`` (or ``* BAD`` when no tag could be read) and keeps serving, because
the parser has already resynchronised by the time the exception reaches the caller.
:class:`LocalProtocolError` means *our* code misused the API (for example calling
``next_event()`` while an APPEND literal waits for ``accept_literal()``, or asking the
encoder to emit a flag that is not an atom): it is a bug, never the peer's fault.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Root of the IMAP protocol errors.

    Attributes:
        message: Human-readable text, free of CR/LF, suitable for a ``BAD`` response.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class LocalProtocolError(ProtocolError):
    """Our side broke the protocol or misused the API (a programming error)."""


class RemoteProtocolError(ProtocolError):
    """The client sent something the grammar or the limits do not allow.

    The parser has resynchronised before this is raised: the caller answers
    ``BAD`` (see :func:`aiodbox.imap.protocol.responses.error_response`) and calls
    ``next_event()`` again.

    Attributes:
        message: Text for the ``BAD`` response (no CR/LF).
        tag: The command's tag if it could be read, else ``None`` (answer ``* BAD``).
        command: The upper-cased command name if it could be read, else ``None``.
        code: A response code name to send with the ``BAD`` (e.g. ``"TOOBIG"``), or ``None``.
        aborted_append: True when the error ends an APPEND whose first message had
            already been announced with ``AppendMessageStart``: the caller must roll
            back that APPEND's transaction.
    """

    def __init__(
        self,
        message: str,
        *,
        tag: str | None = None,
        command: str | None = None,
        code: str | None = None,
        aborted_append: bool = False,
    ) -> None:
        super().__init__(message)
        self.tag = tag
        self.command = command
        self.code = code
        self.aborted_append = aborted_append

    def __repr__(self) -> str:
        return (
            f"RemoteProtocolError({self.message!r}, tag={self.tag!r}, "
            f"command={self.command!r}, code={self.code!r})"
        )
