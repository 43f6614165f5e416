"""Pure-Python crypt(3) algorithms: SHA-crypt (``$5$``, ``$6$``) and MD5-crypt (``$1$``).

Theory of operation: these are byte-exact implementations of Ulrich Drepper's
"Unix crypt using SHA-256 and SHA-512" specification (the algorithm glibc and
libxcrypt ship as ``$5$``/``$6$``) and of Poul-Henning Kamp's MD5-crypt (``$1$``,
which Dovecot implements itself as ``MD5-CRYPT``).  They exist because the stdlib
``crypt`` module is deprecated (and gone in 3.13), and the project's tests turn
DeprecationWarnings into errors.

The functions take the password as bytes and a *setting* string (``$6$rounds=N$salt``,
with or without a trailing ``$hash``) and return the full crypt string.  They do no
I/O, but they are CPU-bound (about 5 ms for the default 5000 SHA-512 rounds on a
small machine) and mostly hold the GIL: callers on an event loop run them in a
thread.

The SHA-crypt round loop is the hot spot.  Round ``i`` hashes one of two layouts
depending on ``i & 1`` and adds the salt/password blocks depending on ``i % 3`` and
``i % 7``, so the sequence repeats every 42 rounds: the 42 byte-string prefixes
(odd rounds) and suffixes (even rounds) are built once and each round is then a
single ``sha(prefix + c)`` or ``sha(c + suffix)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

CRYPT_ALPHABET: Final = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

SHA_CRYPT_DEFAULT_ROUNDS: Final = 5000
SHA_CRYPT_MIN_ROUNDS: Final = 1000
SHA_CRYPT_MAX_ROUNDS: Final = 999_999_999
SHA_CRYPT_MAX_SALT: Final = 16
MD5_CRYPT_MAX_SALT: Final = 8

_ROUNDS_PREFIX: Final = "rounds="

# Byte order of the final encoding: groups of (B2, B1, B0) indices, 4 characters each,
# then a tail group.  Straight from the specification (and glibc's sha*-crypt.c).
_SHA256_ORDER: Final = (
    (0, 10, 20), (21, 1, 11), (12, 22, 2), (3, 13, 23), (24, 4, 14),
    (15, 25, 5), (6, 16, 26), (27, 7, 17), (18, 28, 8), (9, 19, 29),
)  # fmt: skip
_SHA512_ORDER: Final = (
    (0, 21, 42), (22, 43, 1), (44, 2, 23), (3, 24, 45), (25, 46, 4),
    (47, 5, 26), (6, 27, 48), (28, 49, 7), (50, 8, 29), (9, 30, 51),
    (31, 52, 10), (53, 11, 32), (12, 33, 54), (34, 55, 13), (56, 14, 35),
    (15, 36, 57), (37, 58, 16), (59, 17, 38), (18, 39, 60), (40, 61, 19),
    (62, 20, 41),
)  # fmt: skip
_MD5_ORDER: Final = ((0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5))


class CryptFormatError(ValueError):
    """A crypt setting or hash string is not well formed."""


@dataclass(frozen=True, slots=True)
class ShaCryptSetting:
    """The parsed parameters of a ``$5$``/``$6$`` string.

    Attributes:
        ident: ``"5"`` (SHA-256) or ``"6"`` (SHA-512).
        rounds: The rounds as written after ``rounds=`` (not clamped), or None when the
            string has no ``rounds=`` part (5000 rounds, not written in the output).
        salt: The salt, already cut to 16 characters.
        checksum: The encoded hash after the salt, or ``""`` for a bare setting.
    """

    ident: str
    rounds: int | None
    salt: str
    checksum: str


def _b64_from_24bit(out: list[str], b2: int, b1: int, b0: int, n: int) -> None:
    w = (b2 << 16) | (b1 << 8) | b0
    for _ in range(n):
        out.append(CRYPT_ALPHABET[w & 0x3F])
        w >>= 6


def _repeat_to(block: bytes, length: int) -> bytes:
    """``block`` repeated and cut to exactly ``length`` bytes."""
    reps, rest = divmod(length, len(block))
    return block * reps + block[:rest]


def parse_sha_crypt(value: str) -> ShaCryptSetting:
    """Parse ``$5$[rounds=N$]salt[$checksum]`` (or ``$6$...``).

    Raises:
        CryptFormatError: The prefix is not ``$5$``/``$6$``, or ``rounds=`` is not a
            decimal number.
    """
    if not value.startswith(("$5$", "$6$")):
        raise CryptFormatError(f"not a SHA-crypt string: {value[:4]!r}")
    ident = value[1]
    rest = value[3:]
    rounds: int | None = None
    if rest.startswith(_ROUNDS_PREFIX):
        number, sep, after = rest[len(_ROUNDS_PREFIX) :].partition("$")
        if not sep or not number.isascii() or not number.isdigit() or len(number) > 10:
            raise CryptFormatError(f"invalid rounds= in SHA-crypt string: {number[:12]!r}")
        rounds = int(number)
        rest = after
    salt, _, checksum = rest.partition("$")
    if not salt.isascii():
        raise CryptFormatError("SHA-crypt salt is not ASCII")
    return ShaCryptSetting(ident, rounds, salt[:SHA_CRYPT_MAX_SALT], checksum)


def _sha_crypt_checksum(
    password: bytes, salt: bytes, rounds: int, new: Callable[[bytes], hashlib._Hash]
) -> bytes:
    """Steps 1-21 of the specification: the raw digest ``C`` after all rounds."""
    pw_len = len(password)
    b = new(password + salt + password).digest()
    a_ctx = new(password + salt + _repeat_to(b, pw_len))
    n = pw_len
    while n > 0:
        a_ctx.update(b if n & 1 else password)
        n >>= 1
    a = a_ctx.digest()
    p = _repeat_to(new(password * pw_len).digest(), pw_len)
    s = _repeat_to(new(salt * (16 + a[0])).digest(), len(salt))

    # One period of the round pattern (see the module comment).
    pieces: list[bytes] = []
    for i in range(42):
        middle = (s if i % 3 else b"") + (p if i % 7 else b"")
        pieces.append(p + middle if i & 1 else middle + p)

    c = a
    full, tail = divmod(rounds, 42)
    for _ in range(full):
        for i in range(0, 42, 2):
            c = new(c + pieces[i]).digest()
            c = new(pieces[i + 1] + c).digest()
    for i in range(tail):
        c = new(pieces[i] + c).digest() if i & 1 else new(c + pieces[i]).digest()
    return c


def sha_crypt(password: bytes, setting: str) -> str:
    """Compute a SHA-crypt string, like ``crypt(password, setting)`` in glibc.

    Args:
        password: The password bytes (any length; NUL bytes are hashed as given).
        setting: ``$5$...`` or ``$6$...``, optionally with ``rounds=N$`` and optionally
            followed by an existing checksum (ignored).  Rounds outside
            [1000, 999999999] are clamped as the specification says, and the clamped
            value is what the output shows.

    Returns:
        The full string, ``$6$[rounds=N$]salt$checksum``.

    Raises:
        CryptFormatError: ``setting`` is not a SHA-crypt setting.
    """
    parsed = parse_sha_crypt(setting)
    rounds = SHA_CRYPT_DEFAULT_ROUNDS
    if parsed.rounds is not None:
        rounds = min(max(parsed.rounds, SHA_CRYPT_MIN_ROUNDS), SHA_CRYPT_MAX_ROUNDS)
    salt = parsed.salt.encode("utf-8")
    if parsed.ident == "5":
        digest = _sha_crypt_checksum(password, salt, rounds, hashlib.sha256)
        out: list[str] = []
        for i, j, k in _SHA256_ORDER:
            _b64_from_24bit(out, digest[i], digest[j], digest[k], 4)
        _b64_from_24bit(out, 0, digest[31], digest[30], 3)
    else:
        digest = _sha_crypt_checksum(password, salt, rounds, hashlib.sha512)
        out = []
        for i, j, k in _SHA512_ORDER:
            _b64_from_24bit(out, digest[i], digest[j], digest[k], 4)
        _b64_from_24bit(out, 0, 0, digest[63], 2)
    rounds_part = f"{_ROUNDS_PREFIX}{rounds}$" if parsed.rounds is not None else ""
    return f"${parsed.ident}${rounds_part}{parsed.salt}${''.join(out)}"


def parse_md5_crypt(value: str) -> tuple[str, str]:
    """Split ``$1$salt[$checksum]`` into (salt, checksum); the salt is cut to 8 chars.

    Raises:
        CryptFormatError: The prefix is not ``$1$``.
    """
    if not value.startswith("$1$"):
        raise CryptFormatError(f"not an MD5-crypt string: {value[:3]!r}")
    salt, _, checksum = value[3:].partition("$")
    if not salt.isascii():
        raise CryptFormatError("MD5-crypt salt is not ASCII")
    return salt[:MD5_CRYPT_MAX_SALT], checksum


def md5_crypt(password: bytes, setting: str) -> str:
    """Compute an MD5-crypt string (``$1$salt$checksum``), as Dovecot's MD5-CRYPT does.

    Raises:
        CryptFormatError: ``setting`` does not start with ``$1$``.
    """
    salt_text, _ = parse_md5_crypt(setting)
    salt = salt_text.encode("utf-8")
    magic = b"$1$"
    alt = hashlib.md5(password + salt + password, usedforsecurity=False).digest()
    ctx = hashlib.md5(password + magic + salt, usedforsecurity=False)
    ctx.update(_repeat_to(alt, len(password)))
    n = len(password)
    while n:
        ctx.update(b"\x00" if n & 1 else password[:1])
        n >>= 1
    final = ctx.digest()
    for i in range(1000):
        data = password if i & 1 else final
        if i % 3:
            data += salt
        if i % 7:
            data += password
        data += final if i & 1 else password
        final = hashlib.md5(data, usedforsecurity=False).digest()
    out: list[str] = []
    for i, j, k in _MD5_ORDER:
        _b64_from_24bit(out, final[i], final[j], final[k], 4)
    _b64_from_24bit(out, 0, 0, final[11], 2)
    return f"$1${salt_text}${''.join(out)}"
