"""IMAP sequence sets (RFC 3501 §9 ``sequence-set``) and their compaction.

A :class:`SequenceSet` keeps what the client wrote (``*`` stays symbolic) because ``*``
means "the largest number in use" and only the server knows that number;
:meth:`SequenceSet.resolve` turns it into concrete, merged ranges.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

MAX_NUMBER = 2**32 - 1
"""Largest ``nz-number`` (RFC 3501: 32-bit unsigned)."""

_RANGE = re.compile(r"(\d+|\*)(?::(\d+|\*))?")

Bound = int | None
"""One end of a range: a number, or ``None`` for ``*``."""


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A parsed sequence set.

    Attributes:
        ranges: ``(start, end)`` pairs as written (``None`` is ``*``; ``n`` alone is
            ``(n, n)``; the ends may be in either order, as RFC 3501 allows).
        saved: True for ``$`` (RFC 5182 SEARCHRES): the server substitutes its saved
            search result; ``ranges`` is then empty.
    """

    ranges: tuple[tuple[Bound, Bound], ...] = ()
    saved: bool = False

    @classmethod
    def parse(cls, text: bytes | str) -> SequenceSet:
        """Parse ``text`` (e.g. ``"1:3,5,7:*"`` or ``"$"``).

        Raises:
            ValueError: ``text`` is not a valid sequence set.
        """
        s = text.decode("ascii") if isinstance(text, bytes) else text
        if s == "$":
            return cls(saved=True)
        ranges: list[tuple[Bound, Bound]] = []
        for part in s.split(","):
            m = _RANGE.fullmatch(part)
            if m is None:
                raise ValueError(f"invalid sequence set: {s!r}")
            start = _bound(m.group(1))
            end = start if m.group(2) is None else _bound(m.group(2))
            ranges.append((start, end))
        return cls(tuple(ranges))

    @classmethod
    def from_numbers(cls, numbers: Iterable[int]) -> SequenceSet:
        """Build the most compact set holding exactly ``numbers`` (duplicates allowed)."""
        return cls(tuple((lo, hi) for lo, hi in _runs(numbers)))

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Return sorted, merged, inclusive ``(lo, hi)`` ranges with ``*`` = ``largest``.

        Args:
            largest: The largest sequence number or UID in use (0 for an empty mailbox).

        Raises:
            ValueError: The set is ``$``: the caller must substitute the saved result.
        """
        if self.saved:
            raise ValueError("'$' must be replaced by the saved search result")
        spans: list[tuple[int, int]] = []
        for start, end in self.ranges:
            a = largest if start is None else start
            b = largest if end is None else end
            lo, hi = (a, b) if a <= b else (b, a)
            lo = max(lo, 1)
            if hi >= lo:
                spans.append((lo, hi))
        spans.sort()
        merged: list[tuple[int, int]] = []
        for lo, hi in spans:
            if merged and lo <= merged[-1][1] + 1:
                if hi > merged[-1][1]:
                    merged[-1] = (merged[-1][0], hi)
            else:
                merged.append((lo, hi))
        return merged

    def contains(self, number: int, largest: int) -> bool:
        """True if ``number`` is in the set once ``*`` is ``largest``."""
        return any(lo <= number <= hi for lo, hi in self.resolve(largest))

    def iter_numbers(self, largest: int) -> Iterator[int]:
        """Yield every number in the set in ascending order, each once."""
        for lo, hi in self.resolve(largest):
            yield from range(lo, hi + 1)

    def to_bytes(self) -> bytes:
        """The wire form, e.g. ``b"1:3,5,7:*"``."""
        return str(self).encode("ascii")

    def __str__(self) -> str:
        if self.saved:
            return "$"
        return ",".join(_fmt(a) if a == b else f"{_fmt(a)}:{_fmt(b)}" for a, b in self.ranges)


def _bound(text: str) -> Bound:
    if text == "*":
        return None
    if len(text) > 10:
        raise ValueError(f"sequence number too large: {text}")
    value = int(text)
    if not 1 <= value <= MAX_NUMBER:
        raise ValueError(f"sequence number out of range: {text}")
    return value


def _fmt(bound: Bound) -> str:
    return "*" if bound is None else str(bound)


def _runs(numbers: Iterable[int]) -> Iterator[tuple[int, int]]:
    ordered = sorted(set(numbers))
    if not ordered:
        return
    lo = hi = ordered[0]
    for n in ordered[1:]:
        if n == hi + 1:
            hi = n
        else:
            yield lo, hi
            lo = hi = n
    yield lo, hi


def compact(numbers: Iterable[int]) -> bytes:
    """Render ``numbers`` as a compact sequence set: ``[1, 2, 3, 5]`` → ``b"1:3,5"``.

    Order and duplicates in the input do not matter; an empty input gives ``b""``.
    """
    return b",".join(b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi) for lo, hi in _runs(numbers))
