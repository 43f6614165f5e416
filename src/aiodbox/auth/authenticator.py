"""Authenticate users against a passwd-file without blocking the event loop.

Theory of operation
-------------------
:class:`PasswdFileAuthenticator` keeps the parsed file (a :class:`PasswdTable`) in
memory.  Everything slow runs in its own small thread pool, never on the loop:
reading and parsing the file, ``stat`` for change detection, and every password
verification (argon2, bcrypt and SHA-crypt take milliseconds to tens of
milliseconds each).  A private pool keeps a burst of logins from starving other
users of the loop's default executor (storage I/O).

What the client can observe is kept the same for every kind of failure:

* An unknown user, a user without a password, a name with characters outside
  ``username_chars`` and a password with a NUL byte all verify the password against
  a *dummy hash* made at load time with the scheme and cost most common in the file,
  so they cost what a wrong password costs.
* Every failure waits ``failure_delay`` seconds (Dovecot's ``auth_failure_delay``,
  default 2 s) before it is returned.  The wait is an ``asyncio.sleep``: other
  clients are not held up, and parallel attempts do not queue behind each other.

Passdb extra fields honoured after a correct password, as in Dovecot: ``fail``,
``nologin`` (with ``reason=`` shown to the client and ``nodelay`` to skip the
delay), ``allow_nets`` (comma-separated networks; ``local`` admits connections with
no remote IP).  ``nopassword`` (with an empty password) accepts any password.  Not
implemented: ``user=`` renames, proxying, ``%`` variable expansion.

The file is reloaded by :meth:`PasswdFileAuthenticator.reload` (call it on SIGHUP)
and, like Dovecot does, automatically when its inode, size or mtime changes (checked
at most every ``reload_check_interval`` seconds, on the next request).  A file that
fails to load leaves the previous table in service.

Usernames: the passwd-file lookup is exact.  ``lowercase_username=True`` lowercases
the login name first (ASCII only), which is what Dovecot does by default
(``auth_username_format = %Lu``); the default here is False (exact names).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
import logging
import os
import secrets
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import Final, TypeVar

from aiodbox.auth.errors import PasswdFileError, SchemeError
from aiodbox.auth.passwd_file import PasswdEntry, PasswdTable, parse_passwd_file
from aiodbox.auth.schemes import (
    DEFAULT_HASH_SCHEME,
    DEFAULT_PASSDB_SCHEME,
    HashParams,
    canonical_scheme,
    hash_params,
    hash_with_params,
    verify_password,
)

__all__ = [
    "DEFAULT_FAILURE_DELAY",
    "DOVECOT_USERNAME_CHARS",
    "AuthResult",
    "AuthStatus",
    "PasswdFileAuthenticator",
    "UserInfo",
    "user_info_from_entry",
]

log = logging.getLogger(__name__)

DEFAULT_FAILURE_DELAY: Final = 2.0
"""Seconds a failed attempt waits before its reply (Dovecot ``auth_failure_delay``)."""
DOVECOT_USERNAME_CHARS: Final = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01234567890.-_@"
)
"""Dovecot's default ``auth_username_chars``."""
DEFAULT_RELOAD_CHECK_INTERVAL: Final = 1.0

_ASCII_LOWER: Final = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_T = TypeVar("_T")


class AuthStatus(enum.Enum):
    """The outcome of :meth:`PasswdFileAuthenticator.authenticate`."""

    OK = "ok"
    """Authenticated."""
    FAILED = "failed"
    """Wrong user or password, or refused by a passdb field (IMAP: ``NO``)."""
    TEMPFAIL = "tempfail"
    """The server could not decide (unreadable file, unsupported or broken hash):
    IMAP ``NO [UNAVAILABLE]``; the cause is in :attr:`AuthResult.error`."""


@dataclass(frozen=True, slots=True)
class UserInfo:
    """What the userdb knows about a user (for storage and LMTP).

    Attributes:
        user: The username as in the file.
        uid: ``userdb_uid`` or the uid field, None when neither is set.
        gid: ``userdb_gid`` or the gid field, None when neither is set.
        home: ``userdb_home`` or the home field, None when neither is set.
        fields: All ``userdb_*`` extra fields, prefix removed, in file order
            (e.g. ``("mail", "mdbox:~/mdbox")``, ``("mdbox_rotate_size", "16k")``).
    """

    user: str
    uid: str | None = None
    gid: str | None = None
    home: str | None = None
    fields: tuple[tuple[str, str], ...] = ()

    def get(self, key: str, default: str | None = None) -> str | None:
        """The last value of userdb field ``key`` (without ``userdb_``), or ``default``."""
        value = default
        for k, v in self.fields:
            if k == key:
                value = v
        return value

    @property
    def mail(self) -> str | None:
        """The ``userdb_mail`` location (e.g. ``sdbox:~/sdbox``), or None."""
        return self.get("mail")


@dataclass(frozen=True, slots=True)
class AuthResult:
    """The answer to one authentication attempt.

    Attributes:
        status: OK, FAILED or TEMPFAIL.
        user: The username looked up (after normalisation), or as given when it was
            refused before the lookup.
        user_info: The userdb data on success, else None.
        reason: A message that may be shown to the client (``nologin``'s ``reason``),
            else None.
        error: For the server log only (never the client): why it was a TEMPFAIL.
    """

    status: AuthStatus
    user: str
    user_info: UserInfo | None = None
    reason: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True when the user is authenticated."""
        return self.status is AuthStatus.OK


def user_info_from_entry(entry: PasswdEntry) -> UserInfo:
    """The :class:`UserInfo` view of a passwd-file entry (``userdb_*`` fields win)."""
    userdb = entry.userdb_fields
    return UserInfo(
        user=entry.user,
        uid=userdb.get("uid") or entry.uid,
        gid=userdb.get("gid") or entry.gid,
        home=userdb.get("home") or entry.home,
        fields=tuple(
            (k[len("userdb_") :], v) for k, v in entry.extra_fields if k.startswith("userdb_")
        ),
    )


@dataclass(frozen=True, slots=True, eq=False)
class _Loaded:
    table: PasswdTable
    dummy_hash: str
    signature: tuple[int, int, int]


def _signature(st: os.stat_result) -> tuple[int, int, int]:
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _stat_signature(path: str) -> tuple[int, int, int]:
    return _signature(os.stat(path))


def _dummy_hash(table: PasswdTable, default_scheme: str) -> str:
    """A hash of a random password, in the scheme and cost most common in ``table``."""
    counts: Counter[HashParams] = Counter()
    for entry in table:
        if entry.password and not entry.nopassword:
            try:
                counts[hash_params(entry.password, default_scheme=default_scheme)] += 1
            except SchemeError:
                continue
    secret = secrets.token_urlsafe(24)
    for params, _ in counts.most_common(1):
        try:
            return hash_with_params(secret, params)
        except SchemeError:
            break
    return hash_with_params(secret, HashParams(DEFAULT_HASH_SCHEME))


def _load(path: str, default_scheme: str) -> _Loaded:
    """Read, parse and prepare the table (blocking; runs in the pool)."""
    try:
        with open(path, "rb") as f:
            signature = _signature(os.fstat(f.fileno()))
            data = f.read()
    except OSError as exc:
        raise PasswdFileError(path, None, f"cannot read: {exc.strerror or exc}") from exc
    table = parse_passwd_file(data, path=path)
    return _Loaded(table, _dummy_hash(table, default_scheme), signature)


def _check_allow_nets(spec: str, remote_ip: str | None) -> str | None:
    """None if ``remote_ip`` is allowed by ``allow_nets=spec``, else why not (for logs)."""
    items = [item for item in spec.replace(" ", ",").split(",") if item]
    if remote_ip is None:
        return None if "local" in items else "remote IP unknown and 'local' not allowed"
    try:
        addr = ipaddress.ip_address(remote_ip)
    except ValueError:
        return f"invalid remote IP {remote_ip!r}"
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        candidates.append(addr.ipv4_mapped)
    for item in items:
        if item == "local":
            continue
        try:
            net = ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"invalid allow_nets entry {item!r}"
        if any(a.version == net.version and a in net for a in candidates):
            return None
    return f"{remote_ip} not in allow_nets"


class PasswdFileAuthenticator:
    """A passdb and userdb backed by one Dovecot passwd-file.

    Construction does no I/O; the file is read on the first request (or by an explicit
    :meth:`reload`).  Use ``async with`` or call :meth:`aclose` to stop the thread pool.

    Args:
        path: The passwd-file.
        default_scheme: The scheme of passwords without ``{SCHEME}`` (Dovecot's passdb
            ``scheme=`` argument; default ``CRYPT``).
        failure_delay: Seconds to wait before returning a failure (>= 0).
        lowercase_username: Lowercase (ASCII) the login name before the lookup, like
            Dovecot's default ``auth_username_format = %Lu``.
        username_chars: Characters allowed in a login name (Dovecot's
            ``auth_username_chars``); other names fail without a lookup.  None allows
            everything.
        reload_check_interval: Check the file for changes at most this often
            (seconds); None only reloads on :meth:`reload`.
        max_workers: Threads for hashing and file I/O.  The default, min(4, CPUs - 1)
            and at least 1, leaves a CPU for the event loop: hashing is pure CPU work
            (and pure-Python SHA-crypt holds the GIL between its 5 ms switches).

    Raises:
        UnknownSchemeError: ``default_scheme`` is not supported.
        ValueError: ``failure_delay`` is negative.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        default_scheme: str = DEFAULT_PASSDB_SCHEME,
        failure_delay: float = DEFAULT_FAILURE_DELAY,
        lowercase_username: bool = False,
        username_chars: str | None = DOVECOT_USERNAME_CHARS,
        reload_check_interval: float | None = DEFAULT_RELOAD_CHECK_INTERVAL,
        max_workers: int | None = None,
    ) -> None:
        if failure_delay < 0:
            raise ValueError(f"failure_delay must be >= 0: {failure_delay}")
        canonical_scheme(default_scheme)
        self._path = os.fspath(path)
        self._default_scheme = default_scheme
        self._failure_delay = failure_delay
        self._lowercase = lowercase_username
        self._username_chars = None if username_chars is None else frozenset(username_chars)
        self._check_interval = reload_check_interval
        workers = max_workers or max(1, min(4, (os.cpu_count() or 2) - 1))
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="aiodbox-auth")
        self._loaded: _Loaded | None = None
        self._reload_lock = asyncio.Lock()
        self._checked_at = 0.0
        self._bad_signature: tuple[int, int, int] | None = None
        self._stat_error: str | None = None

    @property
    def path(self) -> str:
        """The passwd-file path."""
        return self._path

    @property
    def table(self) -> PasswdTable | None:
        """The table in service, or None before the first successful load."""
        return None if self._loaded is None else self._loaded.table

    async def __aenter__(self) -> PasswdFileAuthenticator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the thread pool (queued work is cancelled; running hashes finish)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def reload(self) -> PasswdTable:
        """Re-read the file now (e.g. on SIGHUP).

        Returns:
            The new table, which is in service when this returns.

        Raises:
            PasswdFileError: The file cannot be read or does not parse; the previous
                table stays in service (log the error).
        """
        async with self._reload_lock:
            return (await self._reload_locked()).table

    async def _reload_locked(self) -> _Loaded:
        loaded = await self._run(functools.partial(_load, self._path, self._default_scheme))
        self._loaded = loaded
        self._bad_signature = None
        self._checked_at = asyncio.get_running_loop().time()
        log.info("passwd-file %s: loaded %d users", self._path, len(loaded.table))
        return loaded

    async def _current(self) -> _Loaded:
        """The table in service, loading it first or reloading it if it changed."""
        loaded = self._loaded
        if loaded is None:
            async with self._reload_lock:
                return self._loaded or await self._reload_locked()
        now = asyncio.get_running_loop().time()
        if self._check_interval is None or now - self._checked_at < self._check_interval:
            return loaded
        self._checked_at = now  # before awaiting: concurrent requests don't stat too
        try:
            signature = await self._run(functools.partial(_stat_signature, self._path))
        except OSError as exc:
            if self._stat_error != str(exc):  # log each new problem once, not every check
                self._stat_error = str(exc)
                log.error("passwd-file %s: stat failed, keeping the old table: %s", self._path, exc)
            return loaded
        self._stat_error = None
        if signature in (loaded.signature, self._bad_signature):
            return loaded
        async with self._reload_lock:
            current = self._loaded
            if current is not loaded:  # someone reloaded meanwhile
                return current or loaded
            try:
                return await self._reload_locked()
            except PasswdFileError as exc:
                self._bad_signature = signature
                log.error("%s; keeping the previous table", exc)
                return loaded

    def _normalise(self, user: str) -> str | None:
        """The lookup key for a login name, or None when the name is not allowed."""
        if not user:
            return None
        if self._username_chars is not None and not self._username_chars.issuperset(user):
            return None
        return user.translate(_ASCII_LOWER) if self._lowercase else user

    async def _fail(self, result: AuthResult, *, delay: bool = True) -> AuthResult:
        if delay and self._failure_delay > 0:
            await asyncio.sleep(self._failure_delay)
        return result

    async def authenticate(
        self, user: str, password: str | bytes, *, remote_ip: str | None = None
    ) -> AuthResult:
        """Check a user's password.

        A failure (of any kind) is returned only after ``failure_delay``; unknown users
        cost the same hashing as known ones.  The loop is never blocked.

        Args:
            user: The login name (authentication identity).
            password: The password as sent (``str`` is encoded as UTF-8).
            remote_ip: The client's address, for ``allow_nets``; None for a local
                connection.

        Returns:
            The :class:`AuthResult`.  Errors in the file or in a stored hash come back
            as TEMPFAIL with :attr:`AuthResult.error` set; they are also logged.
        """
        name = self._normalise(user)
        secret = password.encode("utf-8") if isinstance(password, str) else password
        try:
            loaded = await self._current()
        except PasswdFileError as exc:
            log.error("%s", exc)
            return await self._fail(AuthResult(AuthStatus.TEMPFAIL, user, error=str(exc)))
        entry = None if name is None else loaded.table.get(name)
        who = user if name is None else name
        if entry is not None and entry.nopassword:
            matched = True
        else:
            usable = entry is not None and bool(entry.password) and b"\x00" not in secret
            stored = entry.password if usable and entry is not None else loaded.dummy_hash
            assert stored is not None
            verify = functools.partial(
                verify_password, secret, stored, default_scheme=self._default_scheme
            )
            try:
                matched = await self._run(verify) and usable
            except SchemeError as exc:
                error = f"passwd-file {self._path}: user {who!r}: {exc}"
                log.error("%s", error)
                return await self._fail(AuthResult(AuthStatus.TEMPFAIL, who, error=error))
        if not matched or entry is None:
            return await self._fail(AuthResult(AuthStatus.FAILED, who))
        return await self._check_passdb_fields(entry, remote_ip)

    async def _check_passdb_fields(self, entry: PasswdEntry, remote_ip: str | None) -> AuthResult:
        fields = entry.passdb_fields
        if "fail" in fields:
            return await self._fail(AuthResult(AuthStatus.FAILED, entry.user))
        if "nologin" in fields:
            reason = fields.get("reason") or None
            result = AuthResult(AuthStatus.FAILED, entry.user, reason=reason)
            return await self._fail(result, delay="nodelay" not in fields)
        if "allow_nets" in fields:
            why = _check_allow_nets(fields["allow_nets"], remote_ip)
            if why is not None:
                log.info("user %r refused: allow_nets check failed: %s", entry.user, why)
                return await self._fail(AuthResult(AuthStatus.FAILED, entry.user))
        return AuthResult(AuthStatus.OK, entry.user, user_info=user_info_from_entry(entry))

    async def lookup(self, user: str) -> UserInfo | None:
        """The userdb data for ``user`` (e.g. an LMTP recipient), without a password.

        Returns:
            The :class:`UserInfo`, or None when there is no such user (or the name has
            disallowed characters).

        Raises:
            PasswdFileError: No table could ever be loaded (a temporary failure: LMTP
                should answer 4xx, not "unknown user").
        """
        name = self._normalise(user)
        if name is None:
            return None
        entry = (await self._current()).table.get(name)
        return None if entry is None else user_info_from_entry(entry)
