"""Random identifiers (GUIDs, dbox separators, temp names) without a system call each.

Every saved message needs four of them.  ``os.urandom`` is a ``getrandom`` system call
that releases the interpreter lock: on the event loop, each one lets a busy worker
thread take the lock, and the loop waits to get it back.  Here the bytes come from a
buffer that one ``os.urandom`` call refills every few hundred identifiers; they are the
same kernel randomness, only fetched in bulk.  A forked child drops the inherited
buffer, so two processes never hand out the same bytes.  Thread-safe.
"""

from __future__ import annotations

import os
import threading

_REFILL = 4096
_lock = threading.Lock()
_buf = b""
_pos = 0


def random_bytes(n: int) -> bytes:
    """``n`` random bytes from the kernel's CSPRNG (as ``os.urandom``)."""
    global _buf, _pos
    if n > _REFILL // 4:
        return os.urandom(n)
    with _lock:
        if _pos + n > len(_buf):
            _buf, _pos = os.urandom(_REFILL), 0
        out = _buf[_pos : _pos + n]
        _pos += n
    return out


def random_hex(n: int) -> str:
    """``2 * n`` lowercase hex digits from ``n`` random bytes."""
    return random_bytes(n).hex()


def new_uuid4_hex() -> str:
    """A random (version 4) UUID as 32 lowercase hex digits, as ``uuid.uuid4().hex``."""
    b = bytearray(random_bytes(16))
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


def _forget() -> None:
    global _buf, _pos, _lock
    _buf, _pos = b"", 0
    _lock = threading.Lock()  # (another thread may have held it at the fork)


os.register_at_fork(after_in_child=_forget)
