"""Password schemes in Dovecot's ``{SCHEME}encoded`` notation: verify and hash.

Theory of operation
-------------------
A stored password is ``{SCHEME}rest``; without braces it is in the passdb's default
scheme (Dovecot's ``scheme=`` argument, default ``CRYPT``), except that a bare
``$1$...`` is MD5-CRYPT (Dovecot's ``password_get_scheme`` special case).  Scheme
names are case-insensitive and may carry an encoding suffix, ``.HEX`` or ``.B64``/
``.BASE64`` (``{SHA256.HEX}``), for the digest schemes.

Supported schemes (``supported_schemes()``):

* ``CRYPT`` and the crypt-family names ``SHA512-CRYPT``, ``SHA256-CRYPT``,
  ``BLF-CRYPT``, ``MD5-CRYPT`` (alias ``MD5``): the form is chosen by the hash's
  prefix, as libc ``crypt()`` does: ``$6$``/``$5$`` (SHA-crypt, pure Python, see
  :mod:`._crypt`), ``$2y$``/``$2b$``/``$2a$`` (bcrypt; passwords are cut to 72
  bytes like crypt_blowfish does), ``$1$`` (MD5-crypt) and, as an extension,
  ``$argon2id$``/``$argon2i$``.  DES-crypt, yescrypt (``$y$``) and the rest raise
  :class:`UnknownSchemeError` naming the form.
* ``ARGON2ID``, ``ARGON2I``: PHC strings ``$argon2id$v=19$m=..,t=..,p=..$salt$hash``
  (argon2-cffi; either variant is accepted under either name, as libsodium does).
* ``PLAIN`` (aliases ``CLEARTEXT``, ``CLEAR``).
* Digests, base64 unless a suffix says otherwise (unsalted ones also accept hex
  by length, like Dovecot): ``SHA``/``SHA1``, ``SHA256``, ``SHA512``, ``LDAP-MD5``,
  ``PLAIN-MD5`` (hex by default); salted (digest followed by the salt):
  ``SSHA``, ``SSHA256``, ``SSHA512``, ``SMD5``.

Every comparison of secrets goes through :func:`hmac.compare_digest`.  Hashing and
verifying are CPU-bound (argon2 ~45 ms, bcrypt cost 10 ~80 ms, SHA512-CRYPT 5000
rounds ~6 ms on a small VM): on an event loop, call them in a thread.

Costs used by :func:`hash_password` (``rounds`` overrides the first one):

* ARGON2ID / ARGON2I: m=19456 KiB, t=2, p=1 (the OWASP minimum for argon2id; about
  45 ms here).  p=1 because libsodium, which Dovecot uses, only verifies p=1.
  ``rounds`` sets t.  Dovecot's own ``doveadm pw`` uses m=65536, t=3 (~235 ms here);
  both verify everywhere.
* BLF-CRYPT / CRYPT: bcrypt cost 10 (~80 ms), written as ``$2y$`` like Dovecot.
* SHA512-CRYPT / SHA256-CRYPT: 5000 rounds (the default, not written out);
  ``rounds`` writes ``rounds=N``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

import argon2
import bcrypt

from aiodbox.auth import _crypt
from aiodbox.auth.errors import MalformedHashError, SchemeError, UnknownSchemeError

__all__ = [
    "ARGON2_MEMORY_KIB",
    "ARGON2_PARALLELISM",
    "ARGON2_TIME_COST",
    "BCRYPT_COST",
    "DEFAULT_HASH_SCHEME",
    "DEFAULT_PASSDB_SCHEME",
    "HashParams",
    "canonical_scheme",
    "hash_params",
    "hash_password",
    "hash_with_params",
    "split_scheme",
    "supported_schemes",
    "verify_password",
]

DEFAULT_HASH_SCHEME: Final = "ARGON2ID"
"""What ``aiodbox user add`` writes."""
DEFAULT_PASSDB_SCHEME: Final = "CRYPT"
"""The scheme of a stored password without ``{SCHEME}`` (Dovecot's default)."""

ARGON2_MEMORY_KIB: Final = 19456
ARGON2_TIME_COST: Final = 2
ARGON2_PARALLELISM: Final = 1
ARGON2_SALT_LEN: Final = 16
ARGON2_HASH_LEN: Final = 32
BCRYPT_COST: Final = 10
BCRYPT_MIN_COST: Final = 4
BCRYPT_MAX_COST: Final = 31
BCRYPT_MAX_PASSWORD: Final = 72
DIGEST_SALT_LEN: Final = 16

Password = str | bytes


@dataclass(frozen=True, slots=True)
class HashParams:
    """A scheme and its cost parameters, without salt or secret.

    Used to make a dummy hash that costs the same to verify as a real one (so an
    unknown user takes as long as a wrong password).

    Attributes:
        scheme: Canonical scheme name, e.g. ``"SHA512-CRYPT"``, ``"ARGON2ID"``.
        cost: Scheme-specific: ``(rounds,)`` for SHA-crypt when written out,
            ``(cost,)`` for bcrypt, ``(memory_kib, time_cost, parallelism)`` for
            argon2, ``()`` when the scheme has none or uses its default.
    """

    scheme: str
    cost: tuple[int, ...] = ()


def _to_bytes(password: Password) -> bytes:
    return password.encode("utf-8") if isinstance(password, str) else password


def _random_crypt_salt(length: int) -> str:
    return "".join(secrets.choice(_crypt.CRYPT_ALPHABET) for _ in range(length))


def _equal(a: bytes, b: bytes) -> bool:
    """Constant-time equality that also hides the lengths (compares SHA-256s)."""
    return hmac.compare_digest(hashlib.sha256(a).digest(), hashlib.sha256(b).digest())


class _Scheme(Protocol):
    @property
    def name(self) -> str: ...

    def verify(self, password: bytes, value: str, encoding: str | None) -> bool: ...

    def generate(self, password: bytes, cost: tuple[int, ...]) -> str: ...

    def cost(self, value: str) -> HashParams: ...

    def default_cost(self, rounds: int | None) -> tuple[int, ...]: ...


def _decode(scheme: str, value: str, encoding: str, *, hex_or_b64: bool = False) -> bytes:
    """Decode ``value``; with ``hex_or_b64``, fall back from hex to base64 (Dovecot)."""
    try:
        if encoding == "HEX":
            try:
                return bytes.fromhex(value)
            except ValueError:
                if not hex_or_b64:
                    raise
        if len(value) % 4:
            raise binascii.Error("length is not a multiple of 4")
        return binascii.a2b_base64(value.encode("ascii"), strict_mode=True)
    except (ValueError, UnicodeEncodeError) as exc:  # binascii.Error is a ValueError
        raise MalformedHashError(scheme, f"not valid {encoding.lower()}: {exc}") from None


def _no_encoding(scheme: str, encoding: str | None) -> None:
    if encoding is not None:
        raise UnknownSchemeError(f"{scheme}.{encoding}", "this scheme has no encodings")


# --- argon2 ----------------------------------------------------------------------


_ARGON2_TYPES: Final = {"ARGON2ID": argon2.Type.ID, "ARGON2I": argon2.Type.I}
_ARGON2_VERIFIER: Final = argon2.PasswordHasher()


def _argon2_verify(scheme: str, password: bytes, value: str) -> bool:
    if not value.startswith(("$argon2id$", "$argon2i$")):
        raise MalformedHashError(scheme, "expected a $argon2id$ or $argon2i$ PHC string")
    try:
        return _ARGON2_VERIFIER.verify(value, password)
    except argon2.exceptions.VerifyMismatchError:
        return False
    except argon2.exceptions.InvalidHashError as exc:
        raise MalformedHashError(scheme, str(exc) or "invalid PHC string") from None
    except argon2.exceptions.VerificationError as exc:
        raise MalformedHashError(scheme, str(exc)) from None


def _argon2_params(scheme: str, value: str) -> HashParams:
    try:
        p = argon2.extract_parameters(value)
    except argon2.exceptions.InvalidHashError:
        raise MalformedHashError(scheme, "invalid PHC string") from None
    name = "ARGON2ID" if p.type is argon2.Type.ID else "ARGON2I"
    return HashParams(name, (p.memory_cost, p.time_cost, p.parallelism))


def _argon2_generate(scheme: str, password: bytes, cost: tuple[int, ...]) -> str:
    memory, time_cost, parallelism = cost
    hasher = argon2.PasswordHasher(
        time_cost=time_cost,
        memory_cost=memory,
        parallelism=parallelism,
        hash_len=ARGON2_HASH_LEN,
        salt_len=ARGON2_SALT_LEN,
        type=_ARGON2_TYPES[scheme],
    )
    return hasher.hash(password)


@dataclass(frozen=True, slots=True)
class _Argon2Scheme:
    name: str

    def verify(self, password: bytes, value: str, encoding: str | None) -> bool:
        _no_encoding(self.name, encoding)
        return _argon2_verify(self.name, password, value)

    def generate(self, password: bytes, cost: tuple[int, ...]) -> str:
        return _argon2_generate(self.name, password, cost)

    def cost(self, value: str) -> HashParams:
        return _argon2_params(self.name, value)

    def default_cost(self, rounds: int | None) -> tuple[int, ...]:
        return (ARGON2_MEMORY_KIB, rounds or ARGON2_TIME_COST, ARGON2_PARALLELISM)


# --- the crypt(3) family ----------------------------------------------------------


_SHA_CRYPT_CHECKSUM_LEN: Final = {"5": 43, "6": 86}
_UNSUPPORTED_CRYPT: Final = (
    ("$y$", "yescrypt"),
    ("$gy$", "gost-yescrypt"),
    ("$7$", "scrypt"),
    ("$2x$", "bcrypt $2x$ (the buggy pre-2011 variant)"),
    ("$argon2d$", "argon2d"),
    ("$sha1$", "sha1crypt"),
    ("$md5", "Sun MD5-crypt"),
    ("$3$", "NT-hash"),
    ("_", "BSDi extended DES-crypt"),
)


def _crypt_form(scheme: str, value: str) -> str:
    """Which algorithm a crypt-family string uses: sha, md5, bcrypt or argon2."""
    if value.startswith(("$5$", "$6$")):
        return "sha"
    if value.startswith("$1$"):
        return "md5"
    if value.startswith(("$2y$", "$2b$", "$2a$")):
        return "bcrypt"
    if value.startswith(("$argon2id$", "$argon2i$")):
        return "argon2"
    for prefix, what in _UNSUPPORTED_CRYPT:
        if value.startswith(prefix):
            raise UnknownSchemeError(scheme, f"crypt form {prefix!r} ({what}) is not supported")
    if len(value) == 13 and all(c in _crypt.CRYPT_ALPHABET for c in value):
        raise UnknownSchemeError(scheme, "traditional DES-crypt is not supported")
    raise MalformedHashError(scheme, f"unrecognised crypt string starting {value[:4]!r}")


def _bcrypt_verify(scheme: str, password: bytes, value: str) -> bool:
    if not value.isascii() or len(value) != 60:
        raise MalformedHashError(scheme, "a bcrypt string is 60 ASCII characters")
    stored = ("$2b$" + value[4:]).encode("ascii")  # $2y$ and $2b$ are the same algorithm
    try:
        return bcrypt.checkpw(password[:BCRYPT_MAX_PASSWORD], stored)
    except ValueError as exc:
        raise MalformedHashError(scheme, str(exc)) from None


def _bcrypt_generate(password: bytes, cost: tuple[int, ...]) -> str:
    (rounds,) = cost
    if not BCRYPT_MIN_COST <= rounds <= BCRYPT_MAX_COST:
        raise SchemeError(f"bcrypt cost must be {BCRYPT_MIN_COST}..{BCRYPT_MAX_COST}: {rounds}")
    salt = bcrypt.gensalt(rounds, prefix=b"2b")
    hashed = bcrypt.hashpw(password[:BCRYPT_MAX_PASSWORD], salt).decode("ascii")
    return "$2y$" + hashed[4:]  # Dovecot writes $2y$


def _sha_crypt_verify(scheme: str, password: bytes, value: str) -> bool:
    try:
        setting = _crypt.parse_sha_crypt(value)
    except _crypt.CryptFormatError as exc:
        raise MalformedHashError(scheme, str(exc)) from None
    if len(setting.checksum) != _SHA_CRYPT_CHECKSUM_LEN[setting.ident]:
        raise MalformedHashError(scheme, "SHA-crypt checksum has the wrong length")
    computed = _crypt.sha_crypt(password, value)
    return _equal(computed.rpartition("$")[2].encode(), setting.checksum.encode("ascii"))


def _md5_crypt_verify(scheme: str, password: bytes, value: str) -> bool:
    try:
        _, checksum = _crypt.parse_md5_crypt(value)
    except _crypt.CryptFormatError as exc:
        raise MalformedHashError(scheme, str(exc)) from None
    if len(checksum) != 22:
        raise MalformedHashError(scheme, "MD5-crypt checksum has the wrong length")
    computed = _crypt.md5_crypt(password, value)
    return _equal(computed.rpartition("$")[2].encode(), checksum.encode("ascii"))


@dataclass(frozen=True, slots=True)
class _CryptScheme:
    """CRYPT and the *-CRYPT names: verification dispatches on the string's prefix.

    Attributes:
        name: The scheme name.
        generates: What :func:`hash_password` writes: ``"bcrypt"``, ``"5"``,
            ``"6"`` or ``"md5"``.
    """

    name: str
    generates: str

    def verify(self, password: bytes, value: str, encoding: str | None) -> bool:
        _no_encoding(self.name, encoding)
        form = _crypt_form(self.name, value)
        if form == "sha":
            return _sha_crypt_verify(self.name, password, value)
        if form == "bcrypt":
            return _bcrypt_verify(self.name, password, value)
        if form == "md5":
            return _md5_crypt_verify(self.name, password, value)
        return _argon2_verify(self.name, password, value)

    def generate(self, password: bytes, cost: tuple[int, ...]) -> str:
        if self.generates == "bcrypt":
            return _bcrypt_generate(password, cost)
        if self.generates == "md5":
            return _crypt.md5_crypt(password, "$1$" + _random_crypt_salt(8))
        rounds = f"rounds={cost[0]}$" if cost else ""
        setting = f"${self.generates}${rounds}{_random_crypt_salt(16)}"
        return _crypt.sha_crypt(password, setting)

    def cost(self, value: str) -> HashParams:
        form = _crypt_form(self.name, value)
        if form == "sha":
            try:
                setting = _crypt.parse_sha_crypt(value)
            except _crypt.CryptFormatError as exc:
                raise MalformedHashError(self.name, str(exc)) from None
            name = "SHA256-CRYPT" if setting.ident == "5" else "SHA512-CRYPT"
            return HashParams(name, () if setting.rounds is None else (setting.rounds,))
        if form == "bcrypt":
            try:
                return HashParams("BLF-CRYPT", (int(value[4:6]),))
            except ValueError:
                raise MalformedHashError(self.name, "bcrypt cost is not a number") from None
        if form == "md5":
            return HashParams("MD5-CRYPT")
        return _argon2_params(self.name, value)

    def default_cost(self, rounds: int | None) -> tuple[int, ...]:
        if self.generates == "bcrypt":
            return (rounds or BCRYPT_COST,)
        if self.generates == "md5":
            if rounds is not None:
                raise SchemeError(f"{self.name} has a fixed cost; rounds are not accepted")
            return ()
        return () if rounds is None else (rounds,)


# --- PLAIN and the digest schemes --------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PlainScheme:
    name: str

    def verify(self, password: bytes, value: str, encoding: str | None) -> bool:
        stored = value.encode("utf-8") if encoding is None else _decode(self.name, value, encoding)
        return _equal(password, stored)

    def generate(self, password: bytes, cost: tuple[int, ...]) -> str:
        try:
            return password.decode("utf-8")
        except UnicodeDecodeError:
            raise SchemeError("a PLAIN password must be valid UTF-8") from None

    def cost(self, value: str) -> HashParams:
        return HashParams("PLAIN")

    def default_cost(self, rounds: int | None) -> tuple[int, ...]:
        if rounds is not None:
            raise SchemeError(f"{self.name} has no cost; rounds are not accepted")
        return ()


@dataclass(frozen=True, slots=True)
class _DigestScheme:
    """``H(password [+ salt])``, stored as ``digest [+ salt]`` in base64 or hex.

    Attributes:
        name: Canonical name.
        new: The hashlib constructor.
        size: The digest size in bytes.
        salted: True for SSHA*/SMD5 (the salt follows the digest).
        encoding: The default encoding, ``"B64"`` or ``"HEX"``.
    """

    name: str
    new: Callable[[bytes], hashlib._Hash]
    size: int
    salted: bool
    encoding: str = "B64"

    def verify(self, password: bytes, value: str, encoding: str | None) -> bool:
        if encoding is None:
            encoding = self.encoding
            if (
                not self.salted
                and len(value) == 2 * self.size
                and all(c in "0123456789abcdefABCDEF" for c in value)
            ):
                encoding = "HEX"  # Dovecot accepts hex by length, too
        raw = _decode(self.name, value, encoding, hex_or_b64=self.encoding == "HEX")
        if self.salted:
            if len(raw) <= self.size:
                raise MalformedHashError(self.name, "too short to hold a digest and a salt")
            digest, salt = raw[: self.size], raw[self.size :]
        else:
            if len(raw) != self.size:
                raise MalformedHashError(self.name, f"digest is {len(raw)} bytes, not {self.size}")
            digest, salt = raw, b""
        return hmac.compare_digest(self.new(password + salt).digest(), digest)

    def generate(self, password: bytes, cost: tuple[int, ...]) -> str:
        salt = secrets.token_bytes(DIGEST_SALT_LEN) if self.salted else b""
        raw = self.new(password + salt).digest() + salt
        if self.encoding == "HEX":
            return raw.hex()
        return base64.b64encode(raw).decode("ascii")

    def cost(self, value: str) -> HashParams:
        return HashParams(self.name)

    def default_cost(self, rounds: int | None) -> tuple[int, ...]:
        if rounds is not None:
            raise SchemeError(f"{self.name} has no cost; rounds are not accepted")
        return ()


def _md5(data: bytes) -> hashlib._Hash:
    return hashlib.md5(data, usedforsecurity=False)


def _sha1(data: bytes) -> hashlib._Hash:
    return hashlib.sha1(data, usedforsecurity=False)


_SCHEMES: Final[dict[str, _Scheme]] = {
    "CRYPT": _CryptScheme("CRYPT", "bcrypt"),
    "BLF-CRYPT": _CryptScheme("BLF-CRYPT", "bcrypt"),
    "SHA512-CRYPT": _CryptScheme("SHA512-CRYPT", "6"),
    "SHA256-CRYPT": _CryptScheme("SHA256-CRYPT", "5"),
    "MD5-CRYPT": _CryptScheme("MD5-CRYPT", "md5"),
    "ARGON2ID": _Argon2Scheme("ARGON2ID"),
    "ARGON2I": _Argon2Scheme("ARGON2I"),
    "PLAIN": _PlainScheme("PLAIN"),
    "SHA1": _DigestScheme("SHA1", _sha1, 20, salted=False),
    "SSHA": _DigestScheme("SSHA", _sha1, 20, salted=True),
    "SHA256": _DigestScheme("SHA256", hashlib.sha256, 32, salted=False),
    "SSHA256": _DigestScheme("SSHA256", hashlib.sha256, 32, salted=True),
    "SHA512": _DigestScheme("SHA512", hashlib.sha512, 64, salted=False),
    "SSHA512": _DigestScheme("SSHA512", hashlib.sha512, 64, salted=True),
    "PLAIN-MD5": _DigestScheme("PLAIN-MD5", _md5, 16, salted=False, encoding="HEX"),
    "LDAP-MD5": _DigestScheme("LDAP-MD5", _md5, 16, salted=False),
    "SMD5": _DigestScheme("SMD5", _md5, 16, salted=True),
}
_ALIASES: Final = {"CLEARTEXT": "PLAIN", "CLEAR": "PLAIN", "SHA": "SHA1", "MD5": "MD5-CRYPT"}
_ENCODINGS: Final = {"HEX": "HEX", "B64": "B64", "BASE64": "B64"}


def supported_schemes() -> frozenset[str]:
    """Every scheme name :func:`verify_password` accepts (aliases included)."""
    return frozenset(_SCHEMES) | frozenset(_ALIASES)


def _lookup(name: str) -> tuple[_Scheme, str | None]:
    """The implementation of ``name`` (which may end in an encoding suffix)."""
    upper = name.upper()
    encoding: str | None = None
    base, dot, suffix = upper.rpartition(".")
    if dot and suffix in _ENCODINGS:
        upper, encoding = base, _ENCODINGS[suffix]
    scheme = _SCHEMES.get(_ALIASES.get(upper, upper))
    if scheme is None:
        raise UnknownSchemeError(name, "supported: " + ", ".join(sorted(supported_schemes())))
    return scheme, encoding


def canonical_scheme(name: str) -> str:
    """The canonical spelling of a scheme name (``"cleartext"`` → ``"PLAIN"``).

    Raises:
        UnknownSchemeError: ``name`` is not supported.
    """
    scheme, encoding = _lookup(name)
    return scheme.name if encoding is None else f"{scheme.name}.{encoding}"


def split_scheme(stored: str, default_scheme: str = DEFAULT_PASSDB_SCHEME) -> tuple[str, str]:
    """Split a stored password into (scheme name as written, rest), like Dovecot.

    ``{SCHEME}rest`` gives ``SCHEME``; a bare ``$1$...`` is ``MD5-CRYPT``; anything
    else is in ``default_scheme``.  The name is not checked here.
    """
    if stored.startswith("{"):
        end = stored.find("}")
        if end != -1:
            return stored[1:end], stored[end + 1 :]
    elif stored.startswith("$1$"):
        return "MD5-CRYPT", stored
    return default_scheme, stored


def verify_password(
    password: Password, stored: str, *, default_scheme: str = DEFAULT_PASSDB_SCHEME
) -> bool:
    """Check ``password`` against a stored password, in constant time for its scheme.

    Blocking and CPU-bound (up to ~100 ms): run it in a thread from async code.

    Args:
        password: What the client sent; ``str`` is encoded as UTF-8.
        stored: ``{SCHEME}encoded`` or an encoded value in ``default_scheme``.
        default_scheme: The scheme of a value without ``{SCHEME}``.

    Returns:
        True when the password matches.

    Raises:
        UnknownSchemeError: The scheme (or crypt form) is not supported.
        MalformedHashError: The stored value is not valid for its scheme.
    """
    name, value = split_scheme(stored, default_scheme)
    scheme, encoding = _lookup(name)
    return scheme.verify(_to_bytes(password), value, encoding)


def hash_password(
    password: Password, scheme: str = DEFAULT_HASH_SCHEME, *, rounds: int | None = None
) -> str:
    """Hash ``password`` for storage, as ``{SCHEME}encoded`` (like ``doveadm pw``).

    Blocking and CPU-bound (~45 ms for the default ARGON2ID).

    Args:
        password: The new password; ``str`` is encoded as UTF-8.
        scheme: Any name from :func:`supported_schemes`, without an encoding suffix.
        rounds: For ARGON2*, the time cost; for BLF-CRYPT/CRYPT, the bcrypt cost; for
            SHA*-CRYPT, the rounds (written as ``rounds=N``).  None uses the defaults
            documented in the module docstring.

    Returns:
        The stored form, e.g. ``{ARGON2ID}$argon2id$v=19$m=19456,t=2,p=1$...``.

    Raises:
        UnknownSchemeError: ``scheme`` is not supported.
        SchemeError: ``rounds`` do not apply to ``scheme`` or are out of range, or a
            PLAIN password is not UTF-8.
    """
    impl, encoding = _lookup(scheme)
    if encoding is not None:
        raise SchemeError(f"cannot hash with an encoding suffix: {scheme!r}")
    cost = impl.default_cost(rounds)
    return "{" + impl.name + "}" + impl.generate(_to_bytes(password), cost)


def hash_params(stored: str, *, default_scheme: str = DEFAULT_PASSDB_SCHEME) -> HashParams:
    """The scheme and cost of a stored password (see :class:`HashParams`).

    Raises:
        UnknownSchemeError: The scheme is not supported.
        MalformedHashError: The cost parameters cannot be read.
    """
    name, value = split_scheme(stored, default_scheme)
    scheme, _ = _lookup(name)
    return scheme.cost(value)


def hash_with_params(password: Password, params: HashParams) -> str:
    """Hash ``password`` with the scheme and cost in ``params`` (a fresh salt).

    Raises:
        UnknownSchemeError: ``params.scheme`` is not supported.
        SchemeError: The cost is out of range for the scheme.
    """
    impl, _ = _lookup(params.scheme)
    cost = params.cost or impl.default_cost(None)
    return "{" + impl.name + "}" + impl.generate(_to_bytes(password), cost)
