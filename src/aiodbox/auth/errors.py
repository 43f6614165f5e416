"""The auth layer's exceptions: one root, :class:`AuthError`.

Three families, kept apart because callers react differently:

* :class:`SchemeError`: a *stored* password hash cannot be checked (unknown scheme,
  malformed hash).  An operator problem: log it, answer the client with a temporary
  failure, never treat it as "wrong password".
* :class:`PasswdFileError`: the passwd-file cannot be read, parsed or edited.  It
  carries the path and, for parse errors, the 1-based line number.
* :class:`SaslError`: the SASL exchange failed.  :class:`SaslRemoteError` is the
  client's fault (malformed base64, cancel, wrong authorization identity) and maps
  to a NO/BAD reply; :class:`SaslLocalError` is the server driving the state machine
  wrongly (a bug).
"""

from __future__ import annotations


class AuthError(Exception):
    """Root of every error raised by :mod:`aiodbox.auth`."""


class SchemeError(AuthError):
    """A stored password cannot be verified, or a hash cannot be generated."""


class UnknownSchemeError(SchemeError):
    """The password scheme is not one this server implements.

    Attributes:
        scheme: The scheme name as written (e.g. ``"SCRAM-SHA-256"``, or a crypt
            prefix such as ``"$y$"`` for the CRYPT family).
    """

    def __init__(self, scheme: str, detail: str = "") -> None:
        self.scheme = scheme
        message = f"unknown or unsupported password scheme {scheme!r}"
        super().__init__(f"{message}: {detail}" if detail else message)


class MalformedHashError(SchemeError):
    """The stored hash is not valid for its scheme (bad base64, bad length, bad PHC)."""

    def __init__(self, scheme: str, detail: str) -> None:
        self.scheme = scheme
        super().__init__(f"malformed {scheme} password hash: {detail}")


class PasswdFileError(AuthError):
    """The passwd-file cannot be read, parsed or changed.

    Attributes:
        path: The file.
        line: The 1-based line the problem is on, or None when it is not about a line.
        reason: The message without the location.
    """

    def __init__(self, path: str, line: int | None, reason: str) -> None:
        self.path = path
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"passwd-file {where}: {reason}")


class UserExistsError(PasswdFileError):
    """:func:`~aiodbox.auth.passwd_file.add_user` found the user already in the file."""


class UserNotFoundError(PasswdFileError):
    """The user to change or remove is not in the file."""


class SaslError(AuthError):
    """A SASL exchange failed."""


class SaslRemoteError(SaslError):
    """The client sent something invalid; the exchange is over (reply NO or BAD)."""


class SaslCancelled(SaslRemoteError):
    """The client cancelled the exchange with ``*`` (IMAP: reply tagged BAD)."""


class SaslAuthzRefused(SaslRemoteError):
    """The authorization identity differs from the authentication identity."""


class SaslLocalError(SaslError):
    """The server used the state machine wrongly (e.g. ``step`` after it finished)."""
