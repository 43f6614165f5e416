"""Streaming matcher for the IMAP SEARCH keys that need message content.

:class:`BodyMatcher` is fed the message bytes in chunks (it runs its own
:class:`~aiodbox.message.parser.MessageParser`) and answers, for each key,
whether the message matches.  Comparison follows Dovecot's default
comparator ``i;unicode-casemap`` closely: both sides are case-folded and
NFKD-normalised, so "É" matches "é" and "e\\u0301", and "cafe" matches "café".

* ``HEADER name value``, ``FROM``/``TO``/``CC``/``BCC``/``SUBJECT``: the
  top-level header fields of that name, unfolded and RFC 2047-decoded
  (addresses included, as written); an empty ``HEADER`` value matches any
  field of that name.
* ``BODY``: the decoded text (transfer encoding and charset undone) of every
  text part (``text/*``, ``message/*`` leaves and parts without a type),
  including parts of attached messages; HTML is searched as it is.
* ``TEXT``: every part's header fields (``"Name: decoded value"``) plus what
  ``BODY`` searches.

A match never spans two header fields or two parts.  Memory stays bounded:
per stream only the last ``len(longest needle) - 1`` characters are kept.
:attr:`BodyMatcher.done` turns true as soon as every key is decided, so the
caller can stop reading.

Differences from Dovecot kept on purpose: address keys match the decoded
header text as written rather than Dovecot's re-rendered ``Name <addr>`` list;
Dovecot's HTML-to-text conversion and fuzzy (FTS) search are not done; NFKD +
``str.casefold`` approximates i;unicode-casemap (titlecase + decomposition).
"""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from aiodbox.message.decode import PartTextDecoder
from aiodbox.message.parser import MessageParser, PartFlags, PartInfo
from aiodbox.message.rfc2047 import decode_header_value
from aiodbox.message.structure import part_data_from_headers

_MAX_CARRY = 32


class SearchField(enum.Enum):
    """Which content a :class:`SearchKey` looks at."""

    HEADER = "HEADER"
    FROM = "FROM"
    TO = "TO"
    CC = "CC"
    BCC = "BCC"
    SUBJECT = "SUBJECT"
    BODY = "BODY"
    TEXT = "TEXT"


@dataclass(frozen=True, slots=True)
class SearchKey:
    """One content search key.

    Attributes:
        field: The kind of key.
        value: The string searched for.
        header: The field name for ``HEADER`` keys.
    """

    field: SearchField
    value: str
    header: str = ""

    @property
    def header_name(self) -> bytes:
        """The header field this key reads (lowercase), if it reads one."""
        if self.field is SearchField.HEADER:
            return self.header.lower().encode("utf-8", "replace")
        if self.field in (SearchField.BODY, SearchField.TEXT):
            return b""
        return self.field.name.lower().encode()


def fold(text: str) -> str:
    """Case-fold and NFKD-normalise text for comparison."""
    return unicodedata.normalize("NFKD", text.casefold())


class _Stream:
    """A window over one text stream, checking every needle as text arrives."""

    __slots__ = ("_carry", "_matcher", "_needles", "_tail")

    def __init__(self, matcher: BodyMatcher, needles: list[int]) -> None:
        self._matcher = matcher
        self._needles = needles
        self._tail = ""
        self._carry = ""

    def push(self, text: str, *, final: bool = False) -> None:
        text = self._carry + text
        self._carry = ""
        if not final and text:
            # Keep a trailing run of combining marks with its base character
            # so normalisation sees them together.
            i = len(text)
            while i > 0 and len(text) - i < _MAX_CARRY and unicodedata.combining(text[i - 1]):
                i -= 1
            if i > 0 and len(text) - i < _MAX_CARRY:
                i -= 1
                self._carry, text = text[i:], text[:i]
        if not text:
            return
        window = self._tail + fold(text)
        m = self._matcher
        live = [n for n in self._needles if not m._matched[n]]
        for n in live:
            if m._folded[n] in window:
                m._matched[n] = True
        self._needles = [n for n in live if not m._matched[n]]
        keep = m._window - 1
        self._tail = window[-keep:] if keep > 0 else ""

    @property
    def idle(self) -> bool:
        return not self._needles


class BodyMatcher:
    """Decide content SEARCH keys while the message streams past.

    Args:
        keys: The keys to decide; results come back in the same order.

    Example::

        m = BodyMatcher([SearchKey(SearchField.BODY, "invoice")])
        for chunk in stream:
            m.feed(chunk)
            if m.done:
                break
        matched = m.finish()   # [True] or [False]
    """

    def __init__(self, keys: Sequence[SearchKey]) -> None:
        self.keys = tuple(keys)
        self._folded = [fold(k.value) for k in self.keys]
        self._matched = [False] * len(self.keys)
        self._decided = [False] * len(self.keys)
        self._window = max([len(f) for f in self._folded] + [1])
        self._header_keys = [
            i
            for i, k in enumerate(self.keys)
            if k.field not in (SearchField.BODY, SearchField.TEXT)
        ]
        self._body_keys = [
            i for i, k in enumerate(self.keys) if k.field in (SearchField.BODY, SearchField.TEXT)
        ]
        self._text_keys = [i for i, k in enumerate(self.keys) if k.field is SearchField.TEXT]
        for i, f in enumerate(self._folded):
            if not f and self.keys[i].field is not SearchField.HEADER:
                self._matched[i] = self._decided[i] = True
        self._parts: dict[int, tuple[PartTextDecoder, _Stream]] = {}
        self._parser = MessageParser(self)
        self._finished: list[bool] | None = None

    # -- public API ----------------------------------------------------------

    @property
    def done(self) -> bool:
        """True once every key is decided: the rest of the message can be skipped."""
        return all(m or d for m, d in zip(self._matched, self._decided, strict=True))

    def feed(self, chunk: bytes) -> None:
        """Push the next bytes of the message (ignored once finished)."""
        if self._finished is None:
            self._parser.feed(chunk)

    def finish(self) -> list[bool]:
        """End of input (or early stop): whether each key matched."""
        if self._finished is None:
            if not self.done:
                self._parser.finish()
            self._finished = list(self._matched)
        return self._finished

    def matches(self) -> dict[SearchKey, bool]:
        """The results of :meth:`finish` keyed by search key."""
        return dict(zip(self.keys, self.finish(), strict=True))

    # -- parser listener ------------------------------------------------------

    def on_headers(self, info: PartInfo) -> None:
        if info.index == 0:
            self._match_top_headers(info)
        pending_text = [i for i in self._text_keys if not self._matched[i]]
        if pending_text:
            for field in info.headers:
                if not field.has_colon:
                    continue
                line = field.name.decode("utf-8", "replace") + ": "
                _Stream(self, list(pending_text)).push(
                    line + decode_header_value(field.value), final=True
                )
        if info.flags & (PartFlags.MULTIPART | PartFlags.MESSAGE_RFC822):
            return
        needles = [i for i in self._body_keys if not self._matched[i]]
        if not needles:
            return
        data = part_data_from_headers(info.headers, is_mime=bool(info.flags & PartFlags.IS_MIME))
        if data.content_type is not None and data.content_type.lower() not in (b"text", b"message"):
            return
        charset = next((v for k, v in data.type_params if k.lower() == b"charset"), None)
        decoder = PartTextDecoder(data.transfer_encoding, charset)
        self._parts[info.index] = (decoder, _Stream(self, needles))

    def on_body(self, index: int, data: bytes) -> None:
        entry = self._parts.get(index)
        if entry is not None:
            decoder, stream = entry
            stream.push(decoder.feed(data))
            if stream.idle:
                del self._parts[index]

    def on_part_end(self, index: int) -> None:
        entry = self._parts.pop(index, None)
        if entry is not None:
            decoder, stream = entry
            stream.push(decoder.finish(), final=True)
        if index == 0:
            for i in self._body_keys:
                self._decided[i] = True

    def _match_top_headers(self, info: PartInfo) -> None:
        for i in self._header_keys:
            name = self.keys[i].header_name
            for field in info.headers:
                if not field.has_colon or field.name.lower() != name:
                    continue
                if not self._folded[i]:
                    self._matched[i] = True
                    break
                _Stream(self, [i]).push(decode_header_value(field.value), final=True)
                if self._matched[i]:
                    break
            self._decided[i] = True
