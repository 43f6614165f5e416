"""Authentication: Dovecot password schemes, passwd-file, the authenticator, SASL.

Layout (imports point downwards):

* :mod:`.errors`: the exception tree, rooted at :class:`AuthError`.
* :mod:`.schemes`: ``{SCHEME}hash`` verification and hashing (pure, CPU-bound).
* :mod:`.passwd_file`: parse Dovecot's passwd-file; edit it atomically (blocking).
* :mod:`.authenticator`: :class:`PasswdFileAuthenticator`, the asyncio front end that
  keeps hashing and file I/O off the event loop.
* :mod:`.sasl`: sans-IO PLAIN and LOGIN state machines for IMAP ``AUTHENTICATE``.
"""

from __future__ import annotations

from aiodbox.auth.authenticator import (
    AuthResult,
    AuthStatus,
    PasswdFileAuthenticator,
    UserInfo,
)
from aiodbox.auth.errors import (
    AuthError,
    MalformedHashError,
    PasswdFileError,
    SaslAuthzRefused,
    SaslCancelled,
    SaslError,
    SaslLocalError,
    SaslRemoteError,
    SchemeError,
    UnknownSchemeError,
    UserExistsError,
    UserNotFoundError,
)
from aiodbox.auth.passwd_file import (
    PasswdEntry,
    PasswdTable,
    add_user,
    load_passwd_file,
    parse_passwd_file,
    remove_user,
    set_password,
)
from aiodbox.auth.sasl import MECHANISMS, Challenge, Credentials, SaslServer
from aiodbox.auth.schemes import hash_password, supported_schemes, verify_password

__all__ = [
    "MECHANISMS",
    "AuthError",
    "AuthResult",
    "AuthStatus",
    "Challenge",
    "Credentials",
    "MalformedHashError",
    "PasswdEntry",
    "PasswdFileAuthenticator",
    "PasswdFileError",
    "PasswdTable",
    "SaslAuthzRefused",
    "SaslCancelled",
    "SaslError",
    "SaslLocalError",
    "SaslRemoteError",
    "SaslServer",
    "SchemeError",
    "UnknownSchemeError",
    "UserExistsError",
    "UserInfo",
    "UserNotFoundError",
    "add_user",
    "hash_password",
    "load_passwd_file",
    "parse_passwd_file",
    "remove_user",
    "set_password",
    "supported_schemes",
    "verify_password",
]
