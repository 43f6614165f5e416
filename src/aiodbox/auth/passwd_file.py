"""Dovecot's passwd-file: parse it, and edit it with atomic rewrites.

Format (one user per line, as Dovecot 2.3 ``db-passwd-file.c`` reads it)::

    user:password:uid:gid:(gecos):home:(shell):extra_fields

* Lines that are empty, start with ``#`` or start with ``:`` are skipped.  Lines end
  at LF; a CR before it is dropped.
* Fields may be missing at the end.  Only the user is required; a line without a
  password field has no password.
* The password is ``{SCHEME}encoded``, a bare value in the passdb's default scheme,
  or libpam-pwdfile's ``password[13]`` (CRYPT) / ``password[34]`` (PLAIN-MD5) /
  ``password[56]`` (DIGEST-MD5), which is rewritten to the ``{SCHEME}`` form.
* ``extra_fields`` is everything after the shell field, colons included
  (``userdb_mail=sdbox:~/sdbox``), split on spaces into ``key=value`` or bare
  ``key`` (value ``""``).  Keys starting with ``userdb_`` are for the userdb, the
  others for the passdb (``nopassword``, ``nologin``, ``reason``, ``allow_nets``...).
  Values are kept verbatim: Dovecot's ``%`` variables are not expanded.
* The old format, an empty 8th field followed by a mail location, becomes
  ``userdb_mail=<location>``, as in Dovecot.
* Usernames are compared exactly (case-sensitive), as Dovecot's passwd-file hash
  table does; lowercasing the *login name* is the authenticator's job.

Where Dovecot only logs an error and keeps going, this parser refuses the file, with
the path and line number, so that a mistake is seen at once and a reload keeps the
previous table: a user defined twice (Dovecot keeps the first), ``nopassword`` with a
non-empty password (Dovecot ignores ``nopassword``), a uid/gid that is neither a
number nor a name, or 0 (root), an extra field with an empty key, a NUL byte, or
bytes that are not UTF-8.

Editing (:func:`add_user`, :func:`set_password`, :func:`remove_user`) is blocking
file I/O meant for the CLI.  Each call takes an exclusive ``flock`` on the file's
directory (so two concurrent edits do not lose one another), re-reads and validates
the whole file, changes only the one line, writes a temporary file in the same
directory, fsyncs it, renames it over the original and fsyncs the directory.  Other
lines, comments and line endings are kept byte for byte; the file's mode and (when
permitted) owner are kept, a new file gets 0600, and a symlinked file is edited at its
target.  Readers see the old file or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from aiodbox.auth.errors import PasswdFileError, UserExistsError, UserNotFoundError

__all__ = [
    "PasswdEntry",
    "PasswdTable",
    "add_user",
    "format_entry",
    "load_passwd_file",
    "parse_passwd_file",
    "remove_user",
    "set_password",
]

USERDB_PREFIX: Final = "userdb_"
NEW_FILE_MODE: Final = 0o600
_ID_RE: Final = re.compile(r"[0-9]+|[A-Za-z_][A-Za-z0-9_.-]*\$?")
_PAM_SUFFIX_SCHEMES: Final = {"34": "{PLAIN-MD5}", "56": "{DIGEST-MD5}"}


@dataclass(frozen=True, slots=True)
class PasswdEntry:
    """One user line of a passwd-file.

    Attributes:
        user: The username, exactly as written.
        password: The stored password (``{SCHEME}...`` or bare, pam suffixes already
            rewritten), ``""`` when the field is empty, None when it is missing.
        uid: The uid field (a number or a user name), None when empty or missing.
        gid: The gid field, likewise.
        gecos: The gecos field (unused), None when empty or missing.
        home: The home directory field, None when empty or missing.
        shell: The shell field (unused), None when empty or missing.
        extra_fields: ``(key, value)`` pairs in file order; bare keys have ``""``.
        line: The 1-based line number in the file.
    """

    user: str
    password: str | None = None
    uid: str | None = None
    gid: str | None = None
    gecos: str | None = None
    home: str | None = None
    shell: str | None = None
    extra_fields: tuple[tuple[str, str], ...] = ()
    line: int = 0

    @property
    def passdb_fields(self) -> dict[str, str]:
        """The extra fields without the ``userdb_`` prefix (later keys win)."""
        return {k: v for k, v in self.extra_fields if not k.startswith(USERDB_PREFIX)}

    @property
    def userdb_fields(self) -> dict[str, str]:
        """The ``userdb_`` extra fields, prefix removed (``userdb_mail`` → ``mail``)."""
        n = len(USERDB_PREFIX)
        return {k[n:]: v for k, v in self.extra_fields if k.startswith(USERDB_PREFIX)}

    @property
    def nopassword(self) -> bool:
        """True when any password is accepted (``nopassword`` with an empty password)."""
        return "nopassword" in self.passdb_fields and not _password_value(self.password)


def _password_value(password: str | None) -> str:
    """The password without a ``{SCHEME}`` prefix (``""`` for none)."""
    if not password:
        return ""
    if password.startswith("{"):
        end = password.find("}")
        if end != -1:
            return password[end + 1 :]
    return password


@dataclass(frozen=True, slots=True, eq=False)
class PasswdTable:
    """A parsed passwd-file: users by exact name, in file order.

    Attributes:
        path: Where it was read from (for messages).
        entries: The users, a read-only mapping keyed by username.
    """

    path: str
    entries: Mapping[str, PasswdEntry] = field(default_factory=lambda: MappingProxyType({}))

    def get(self, user: str) -> PasswdEntry | None:
        """The entry for exactly ``user``, or None."""
        return self.entries.get(user)

    def __contains__(self, user: object) -> bool:
        return user in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[PasswdEntry]:
        return iter(self.entries.values())


def _split_lines(text: str) -> list[str]:
    """Split on LF only (``str.splitlines`` would also split on VT, FF, U+2028...)."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _is_user_line(line: str) -> bool:
    return bool(line) and line[0] not in "#:"


def _bad(path: str, lineno: int, reason: str) -> PasswdFileError:
    return PasswdFileError(path, lineno, reason)


def _parse_password(raw: str) -> str:
    """Rewrite libpam-pwdfile's ``password[NN]`` into ``{SCHEME}password``."""
    n = len(raw)
    if n > 4 and raw[0] not in "{$" and raw[-1] == "]" and raw[-4] == "[":
        scheme = _PAM_SUFFIX_SCHEMES.get(raw[-3:-1], "{CRYPT}")
        return scheme + raw[:-4]
    return raw


def _parse_extra(path: str, lineno: int, text: str) -> tuple[tuple[str, str], ...]:
    fields: list[tuple[str, str]] = []
    for item in text.split(" "):
        if not item:
            continue
        key, _, value = item.partition("=")
        if not key:
            raise _bad(path, lineno, f"extra field {item!r} has an empty key")
        fields.append((key, value))
    return tuple(fields)


def _check_id(path: str, lineno: int, what: str, value: str | None) -> None:
    if value is None:
        return
    if not _ID_RE.fullmatch(value):
        raise _bad(path, lineno, f"invalid {what} {value!r}: not a number or a name")
    if value.isdigit() and int(value) == 0:
        raise _bad(path, lineno, f"{what} 0 (root) is not allowed")


def _parse_line(path: str, lineno: int, line: str) -> PasswdEntry:
    if "\x00" in line:
        raise _bad(path, lineno, "NUL byte in line")
    parts = line.split(":")
    user = parts[0]

    def opt(i: int) -> str | None:
        return parts[i] or None if i < len(parts) else None

    password = _parse_password(parts[1]) if len(parts) > 1 else None
    extra_text = ""
    if len(parts) > 7:
        if parts[7] == "" and len(parts) > 8:
            location = ":".join(parts[8:])
            extra_text = f"{USERDB_PREFIX}mail={location}" if location else ""
        else:
            extra_text = ":".join(parts[7:])
    entry = PasswdEntry(
        user=user,
        password=password,
        uid=opt(2),
        gid=opt(3),
        gecos=opt(4),
        home=opt(5),
        shell=opt(6),
        extra_fields=_parse_extra(path, lineno, extra_text),
        line=lineno,
    )
    _check_id(path, lineno, "uid", entry.uid)
    _check_id(path, lineno, "gid", entry.gid)
    if "nopassword" in entry.passdb_fields and _password_value(password):
        raise _bad(path, lineno, f"user {user!r} has nopassword set but a non-empty password")
    return entry


def _decode(data: bytes | str, path: str) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        lineno = data.count(b"\n", 0, exc.start) + 1
        raise _bad(path, lineno, "not valid UTF-8") from None


def parse_passwd_file(data: bytes | str, *, path: str = "<string>") -> PasswdTable:
    """Parse passwd-file contents (no I/O).

    Args:
        data: The file's bytes (must be UTF-8) or text.
        path: The file name to put in error messages and in the table.

    Returns:
        The table of users.

    Raises:
        PasswdFileError: A line is invalid; the error carries ``path`` and ``line``.
    """
    text = _decode(data, path)
    users: dict[str, PasswdEntry] = {}
    for lineno, raw in enumerate(_split_lines(text), start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not _is_user_line(line):
            continue
        entry = _parse_line(path, lineno, line)
        first = users.get(entry.user)
        if first is not None:
            raise _bad(path, lineno, f"user {entry.user!r} already defined on line {first.line}")
        users[entry.user] = entry
    return PasswdTable(path, MappingProxyType(users))


def load_passwd_file(path: str | os.PathLike[str]) -> PasswdTable:
    """Read and parse a passwd-file (blocking I/O: call it in a thread from async code).

    Raises:
        PasswdFileError: The file cannot be read (``line`` is None; the OSError is the
            ``__cause__``) or does not parse.
    """
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        raise PasswdFileError(name, None, f"cannot read: {exc.strerror or exc}") from exc
    return parse_passwd_file(data, path=name)


# --- writing ---------------------------------------------------------------------------


def _check_field(what: str, value: str, *, spaces: bool = True) -> None:
    bad = [c for c in value if c == ":" or ord(c) < 0x20 or c == "\x7f"]
    if not spaces and " " in value:
        bad.append(" ")
    if bad:
        raise ValueError(f"{what} must not contain {bad[0]!r}: {value!r}")


def format_entry(
    user: str,
    password: str,
    *,
    uid: str | int | None = None,
    gid: str | int | None = None,
    home: str | None = None,
    extra_fields: Sequence[tuple[str, str]] | Mapping[str, str] = (),
) -> str:
    """Build one passwd-file line (without the newline), trailing empty fields dropped.

    Args:
        user: The username: not empty, no ``:``, whitespace or control characters, and
            not starting with ``#``.
        password: The stored password (``{SCHEME}...``), no ``:`` or control characters.
        uid: The uid (number or name), or None.
        gid: The gid, or None.
        home: The home directory, or None.
        extra_fields: ``key=value`` pairs (a bare key when the value is ``""``); keys and
            values may not contain spaces, keys not ``=`` either.

    Raises:
        ValueError: A field contains a character the format cannot hold.
    """
    if not user or user.startswith("#"):
        raise ValueError(f"invalid username {user!r}")
    _check_field("username", user, spaces=False)
    _check_field("password", password)
    fields = [user, password, "", "", "", "", "", ""]
    for index, what, id_value in ((2, "uid", uid), (3, "gid", gid)):
        if id_value is not None:
            text = str(id_value)
            if not _ID_RE.fullmatch(text) or (text.isdigit() and int(text) == 0):
                raise ValueError(f"invalid {what} {text!r}")
            fields[index] = text
    if home is not None:
        _check_field("home", home)
        fields[5] = home
    pairs = extra_fields.items() if isinstance(extra_fields, Mapping) else extra_fields
    extras: list[str] = []
    for key, value in pairs:
        if not key or "=" in key or " " in key or " " in value or "\n" in value:
            raise ValueError(f"invalid extra field {key!r}={value!r}")
        if any(ord(c) < 0x20 for c in key + value):
            raise ValueError(f"control character in extra field {key!r}")
        extras.append(f"{key}={value}" if value else key)
    fields[7] = " ".join(extras)
    while len(fields) > 2 and fields[-1] == "":
        fields.pop()
    return ":".join(fields)


@contextlib.contextmanager
def _locked_dir(path: str) -> Iterator[None]:
    """Hold an exclusive flock on ``path``'s directory (serialises editors)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise PasswdFileError(path, None, f"cannot open {directory}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _read_for_edit(path: str, *, missing_ok: bool) -> tuple[bytes, os.stat_result | None]:
    """The current bytes and stat (``b""``, None when missing and that is allowed)."""
    try:
        with open(path, "rb") as f:
            return f.read(), os.fstat(f.fileno())
    except FileNotFoundError:
        if missing_ok:
            return b"", None
        raise PasswdFileError(path, None, "cannot read: file does not exist") from None
    except OSError as exc:
        raise PasswdFileError(path, None, f"cannot read: {exc.strerror or exc}") from exc


def _replace_atomically(path: str, data: bytes, old: os.stat_result | None) -> None:
    """Temp file in the same directory, write, fsync, rename over ``path``, fsync dir.

    The new file gets ``old``'s mode and, when allowed (e.g. running as root), its
    owner, so that ``aiodbox user add`` run as root does not take the file away from
    the server's user; a new file is 0600.
    """
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        try:
            os.fchmod(fd, NEW_FILE_MODE if old is None else stat.S_IMODE(old.st_mode))
            if old is not None and (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(fd, old.st_uid, old.st_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _swap_password(line: str, password: str) -> str:
    """``line`` with its second field replaced by ``password``."""
    user, sep, rest = line.partition(":")
    if not sep:
        return f"{user}:{password}"
    _, sep, tail = rest.partition(":")
    return f"{user}:{password}{sep}{tail}"


@dataclass(frozen=True, slots=True)
class _Add:
    line: str


@dataclass(frozen=True, slots=True)
class _SetPassword:
    password: str


@dataclass(frozen=True, slots=True)
class _Remove:
    pass


def _edit(
    path: str | os.PathLike[str], user: str, op: _Add | _SetPassword | _Remove
) -> PasswdTable:
    """Apply ``op`` to ``user``'s line under the directory lock; return the new table."""
    name = os.path.realpath(path)  # edit a symlink's target, don't replace the link
    adding = isinstance(op, _Add)
    with _locked_dir(name):
        data, old = _read_for_edit(name, missing_ok=adding)
        entry = parse_passwd_file(data, path=name).get(user)
        chunks = data.split(b"\n")
        if isinstance(op, _Add):
            if entry is not None:
                raise UserExistsError(name, entry.line, f"user {user!r} already exists")
            if chunks[-1] != b"":  # the last line has no newline yet
                chunks.append(b"")
            chunks[-1] = op.line.encode("utf-8")
            chunks.append(b"")
        elif entry is None:
            raise UserNotFoundError(name, None, f"user {user!r} not found")
        elif isinstance(op, _SetPassword):
            raw = chunks[entry.line - 1]
            ending = b"\r" if raw.endswith(b"\r") else b""
            line = raw[: len(raw) - len(ending)].decode("utf-8")
            chunks[entry.line - 1] = _swap_password(line, op.password).encode("utf-8") + ending
        else:
            del chunks[entry.line - 1]
        new_data = b"\n".join(chunks)
        new_table = parse_passwd_file(new_data, path=name)  # never write a file that won't load
        try:
            _replace_atomically(name, new_data, old)
        except OSError as exc:
            raise PasswdFileError(name, None, f"cannot write: {exc.strerror or exc}") from exc
        return new_table


def add_user(
    path: str | os.PathLike[str],
    name: str,
    password_hash: str,
    *,
    uid: str | int | None = None,
    gid: str | int | None = None,
    home: str | None = None,
    extra_fields: Sequence[tuple[str, str]] | Mapping[str, str] = (),
) -> PasswdEntry:
    """Append a user to the passwd-file, creating the file (mode 0600) if needed.

    Blocking.  The change is visible to readers when this returns (atomic rename).

    Args:
        path: The passwd-file.
        name: The new username (see :func:`format_entry` for what it may contain).
        password_hash: The stored password, e.g. from
            :func:`aiodbox.auth.schemes.hash_password`.
        uid: Optional uid field.
        gid: Optional gid field.
        home: Optional home directory field.
        extra_fields: Optional extra fields, e.g. ``{"userdb_mail": "sdbox:~/sdbox"}``.

    Returns:
        The new entry as parsed back from the new file contents.

    Raises:
        UserExistsError: ``name`` is already in the file (nothing is written).
        PasswdFileError: The existing file does not parse, or I/O failed.
        ValueError: A field contains a character the format cannot hold.
    """
    line = format_entry(name, password_hash, uid=uid, gid=gid, home=home, extra_fields=extra_fields)
    entry = _edit(path, name, _Add(line)).get(name)
    assert entry is not None
    return entry


def set_password(path: str | os.PathLike[str], name: str, password_hash: str) -> None:
    """Replace ``name``'s password field, keeping the rest of its line and the file.

    Blocking.  The change is visible to readers when this returns (atomic rename).

    Raises:
        UserNotFoundError: ``name`` is not in the file (nothing is written).
        PasswdFileError: The file does not parse, the new password would make the line
            invalid (e.g. a password next to ``nopassword``), or I/O failed.
        ValueError: ``password_hash`` contains ``:`` or a control character.
    """
    _check_field("password", password_hash)
    _edit(path, name, _SetPassword(password_hash))


def remove_user(path: str | os.PathLike[str], name: str) -> None:
    """Remove ``name``'s line; every other line and comment is kept.

    Blocking.  The change is visible to readers when this returns (atomic rename).

    Raises:
        UserNotFoundError: ``name`` is not in the file (nothing is written).
        PasswdFileError: The file does not parse, or I/O failed.
    """
    _edit(path, name, _Remove())
