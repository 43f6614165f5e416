"""Sans-IO dbox v3 codec: the record writer and the record readers.

Theory of operation
-------------------
Nothing here reads or writes a file. The writer turns body chunks into the bytes to
append; the readers take bytes the caller already has and return one of three things:

- the parsed value (:class:`FileHeader`, :class:`Record`, :class:`Trailer`),
- :class:`~aiodbox.dbox.format.NeedBytes` when the bytes given end too early (the caller
  reads more, e.g. with a non-blocking ``pread``, and calls again), or
- :class:`~aiodbox.dbox.format.Corrupted` with a reason.

Bad file bytes never raise; only programming errors do (a malformed separator or GUID
given to the writer, calling the writer out of order). Offsets in results are absolute
file offsets: a caller that passes a window of the file passes the window's file offset
as ``offset``.

Writing needs no size in advance: ``begin()`` emits ``01 02 LF``, ``feed()`` passes each
chunk through while counting and hashing it, ``finish()`` emits the trailer with ``Z``,
``H`` and the rest of the metadata. Reading a record at a known offset (mdbox) checks the
``01 02 LF`` start, then the trailer right after the body, then the metadata up to the end
marker. Reading an sdbox file from its tail finds the end marker in the last bytes (which
names the separator), searches backwards for the trailer, and lets ``Z`` say where the
body began.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from aiodbox.dbox.format import (
    DIGEST_SIZE,
    END_LEN,
    END_PREFIX,
    KEY_DIGEST,
    KEY_GUID,
    KEY_META_CHECK,
    KEY_ORIG_MAILBOX,
    KEY_POP3_ORDER,
    KEY_POP3_UIDL,
    KEY_RECEIVED,
    KEY_SIZE,
    KNOWN_KEYS,
    MAX_METADATA,
    MAX_V3_HEADER_LEN,
    MDBOX_METADATA_RESERVE,
    META_CHECK_SIZE,
    MIN_V3_HEADER_LEN,
    RECORD_START,
    SDBOX_TAIL_READ,
    SEP_LEN,
    TRAILER_LEN,
    TRAILER_PREFIX,
    Corrupted,
    NeedBytes,
    is_digest,
    is_guid,
    is_key,
    is_separator,
    parse_hex,
)
from aiodbox.random_ids import random_hex

_MAX_TAIL = TRAILER_LEN + MAX_METADATA + END_LEN
_HEADER_PREFIX = b"3 S"
_FILE_HEADER = re.compile(rb"3 S([0-9a-f]{%d}) C([0-9a-f]{1,16})\n" % SEP_LEN)
_END_MARKER = re.compile(re.escape(END_PREFIX) + rb"([0-9a-f]{%d})\n" % SEP_LEN)


_HASH_GIL_FREE = 2047
"""hashlib releases the interpreter lock for 2048 bytes and more.  Feeding a chunk of
the event loop in smaller pieces keeps the lock: for a few KiB the release costs more
than the hashing (another thread takes the lock, and the loop waits to get it back)."""
_HASH_IN_PIECES_MAX = 16 * 1024
"""Larger chunks are hashed in one call (then letting other threads run is worth it)."""


def new_separator() -> bytes:
    """Return a fresh random separator: 32 lowercase hex characters as ASCII bytes."""
    return random_hex(SEP_LEN // 2).encode("ascii")


def body_digest(body: bytes) -> str:
    """Return the ``H`` value for ``body``: BLAKE2b-256 as 64 lowercase hex digits."""
    return hashlib.blake2b(body, digest_size=DIGEST_SIZE).hexdigest()


def _meta_check(lines: bytes) -> str:
    return hashlib.blake2b(lines, digest_size=META_CHECK_SIZE).hexdigest()


def _value(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _slot_filler(cls: type) -> Callable[..., Any]:
    """A constructor for a frozen slots dataclass taking every field positionally, that
    fills the slots directly: the dataclass ``__init__`` costs an ``object.__setattr__``
    call per field, and the readers build a few of these per message read.  The body is
    generated straight-line (one slot setter call per field, no loop): about a third of
    the cost of the dataclass ``__init__`` for the 8 fields of :class:`Metadata`."""
    names = [f.name for f in fields(cls)]
    namespace: dict[str, Any] = {"_new": object.__new__, "_cls": cls}
    for name in names:
        namespace[f"_set_{name}"] = getattr(cls, name).__set__
    lines = [f"def make({', '.join(names)}):", "    obj = _new(_cls)"]
    lines += [f"    _set_{name}(obj, {name})" for name in names]
    lines.append("    return obj")
    exec("\n".join(lines), namespace)  # names are the class's own field identifiers
    make: Callable[..., Any] = namespace["make"]
    return make


# --------------------------------------------------------------------------- file header


@dataclass(slots=True, frozen=True)
class FileHeader:
    """A parsed v3 file header.

    Attributes:
        sep: The file's separator (32 lowercase hex characters, ASCII bytes).
        ctime: Creation time, UNIX seconds.
        length: Header length in bytes; the first record starts here.
    """

    sep: bytes
    ctime: int
    length: int


_new_file_header: Callable[..., FileHeader] = _slot_filler(FileHeader)


def encode_file_header(sep: bytes, ctime: int) -> bytes:
    """Return the v3 file header line for a new file.

    Raises:
        ValueError: ``sep`` is not 32 lowercase hex characters or ``ctime`` is negative.
    """
    if not is_separator(sep):
        raise ValueError("separator must be 32 lowercase hex characters")
    if ctime < 0 or ctime >= 1 << 64:
        raise ValueError("ctime out of range")
    return b"3 S%s C%x\n" % (sep, ctime)


def parse_file_header(data: bytes, *, eof: bool = False) -> FileHeader | NeedBytes | Corrupted:
    """Parse the v3 file header at the start of ``data`` (the first bytes of a file).

    Args:
        data: Bytes from file offset 0; :data:`~aiodbox.dbox.format.MAX_V3_HEADER_LEN`
            bytes are always enough.
        eof: ``data`` is the whole file (no more bytes can come).

    Returns:
        The header; ``NeedBytes(n)`` to call again with the first ``n`` bytes; or
        ``Corrupted``.
    """
    m = _FILE_HEADER.match(data)
    if m is not None:  # the usual, valid header: every check below in one match
        return _new_file_header(m.group(1), int(m.group(2), 16), m.end())
    head = data[: len(_HEADER_PREFIX)]
    if head != _HEADER_PREFIX[: len(head)]:
        return Corrupted("not a dbox v3 file header")
    lf = data.find(b"\n", 0, MAX_V3_HEADER_LEN)
    if lf < 0:
        if len(data) < MAX_V3_HEADER_LEN and not eof:
            return NeedBytes(MAX_V3_HEADER_LEN)
        return Corrupted(f"file header has no LF in its first {MAX_V3_HEADER_LEN} bytes")
    if lf + 1 < MIN_V3_HEADER_LEN:
        return Corrupted("file header is too short")
    sep = data[3 : 3 + SEP_LEN]
    if not is_separator(sep):
        return Corrupted("file header separator is not 32 lowercase hex characters")
    if data[3 + SEP_LEN : 5 + SEP_LEN] != b" C":
        return Corrupted("file header lacks ' C<ctime>'")
    ctime = parse_hex(data[5 + SEP_LEN : lf])
    if ctime is None:
        return Corrupted("file header ctime is not lowercase hex")
    return FileHeader(sep=sep, ctime=ctime, length=lf + 1)


# ------------------------------------------------------------------------------ metadata


@dataclass(slots=True, frozen=True)
class Metadata:
    """The metadata of one v3 record.

    Attributes:
        size: ``Z``: the body size in bytes.
        guid: ``G``: the message GUID, 32 lowercase hex characters.
        received: ``R``: received time, UNIX seconds, if recorded.
        digest: ``H``: BLAKE2b-256 hex of the body, if recorded.
        orig_mailbox: ``B``: the mailbox the message was first saved to, if recorded.
        pop3_uidl: ``P``: POP3 UIDL, if recorded.
        pop3_order: ``O``: POP3 order, if recorded.
        extra: Unknown keys as ``(key, value)`` in file order; a copy writes them again.
    """

    size: int
    guid: str
    received: int | None = None
    digest: str | None = None
    orig_mailbox: str | None = None
    pop3_uidl: str | None = None
    pop3_order: int | None = None
    extra: tuple[tuple[str, str], ...] = ()


def _check_text(name: str, value: str) -> None:
    if "\n" in value:
        raise ValueError(f"{name} must not contain LF")
    try:
        _value(value)
    except UnicodeEncodeError as e:
        raise ValueError(f"{name} cannot be encoded as UTF-8") from e


def _check_metadata_args(
    guid: str,
    received: int | None,
    orig_mailbox: str | None,
    pop3_uidl: str | None,
    pop3_order: int | None,
    extra: Sequence[tuple[str, str]],
) -> None:
    if not is_guid(guid):
        raise ValueError("guid must be 32 lowercase hex characters")
    if received is not None and not 0 <= received < 1 << 64:
        raise ValueError("received out of range")
    if pop3_order is not None and not 0 <= pop3_order < 1 << 63:
        raise ValueError("pop3_order out of range")
    if orig_mailbox is not None:
        _check_text("orig_mailbox", orig_mailbox)
    if pop3_uidl is not None:
        _check_text("pop3_uidl", pop3_uidl)
    for key, value in extra:
        if len(key) != 1 or not is_key(ord(key)) or key in KNOWN_KEYS:
            raise ValueError(f"extra key {key!r} must be one ASCII letter that is not a known key")
        _check_text(f"extra value for {key!r}", value)


def encode_metadata(metadata: Metadata) -> bytes:
    """Return the meta-lines for ``metadata``, ending with the ``K`` line.

    The end marker is not included. Keys are written in the order Z G R H B P O, then
    ``extra`` in its order, then K.

    Raises:
        ValueError: A value cannot be written (bad GUID, LF in a value, bad extra key).
    """
    m = metadata
    _check_metadata_args(m.guid, m.received, m.orig_mailbox, m.pop3_uidl, m.pop3_order, m.extra)
    if m.size < 0:
        raise ValueError("size must not be negative")
    if m.digest is not None and not is_digest(m.digest):
        raise ValueError("digest must be 64 lowercase hex characters")
    return _encode_checked_metadata(m)


def _encode_checked_metadata(m: Metadata) -> bytes:
    """:func:`encode_metadata` for values already checked (the writer checks them once)."""
    lines = [b"Z%x\n" % m.size, b"G%s\n" % m.guid.encode("ascii")]
    if m.received is not None:
        lines.append(b"R%x\n" % m.received)
    if m.digest is not None:
        lines.append(b"H%s\n" % m.digest.encode("ascii"))
    if m.orig_mailbox is not None:
        lines.append(b"B" + _value(m.orig_mailbox) + b"\n")
    if m.pop3_uidl is not None:
        lines.append(b"P" + _value(m.pop3_uidl) + b"\n")
    if m.pop3_order is not None:
        lines.append(b"O%d\n" % m.pop3_order)
    for key, value in m.extra:
        lines.append(key.encode("ascii") + _value(value) + b"\n")
    block = b"".join(lines)
    return block + b"K%s\n" % _meta_check(block).encode("ascii")


_CANONICAL_METADATA = re.compile(
    rb"Z([0-9a-f]{1,16})\nG([0-9a-f]{32})\n(?:R([0-9a-f]{1,16})\n)?(?:H([0-9a-f]{64})\n)?"
    rb"(?:B([^\n]*)\n)?(?:P([^\n]*)\n)?(?:O([0-9]{1,19})\n)?K([0-9a-f]{16})\n"
)
"""Meta-lines as :func:`encode_metadata` writes them (known keys in order, no extras):
one match checks every line's syntax at once."""


_CANONICAL_TRAILER = re.compile(
    re.escape(TRAILER_PREFIX)
    + rb"([0-9a-f]{%d})\n" % SEP_LEN
    + rb"(Z([0-9a-f]{1,16})\nG([0-9a-f]{32})\n(?:R([0-9a-f]{1,16})\n)?(?:H([0-9a-f]{64})\n)?"
    rb"(?:B([^\n\x01]*)\n)?(?:P([^\n\x01]*)\n)?(?:O([0-9]{1,19})\n)?)K([0-9a-f]{16})\n"
    + re.escape(END_PREFIX)
    + rb"\1\n"
)
"""Trailer, canonical meta-lines and end marker in one match (:func:`_trailer_at`).  No
metadata byte can be ``01``, so the end marker matched is the first one, as the general
path finds it."""


_new_metadata: Callable[..., Metadata] = _slot_filler(Metadata)


def _canonical_metadata(
    z: bytes,
    g: bytes,
    r: bytes | None,
    h: bytes | None,
    b: bytes | None,
    p: bytes | None,
    o: bytes | None,
) -> Metadata:
    return _new_metadata(
        int(z, 16),
        g.decode("ascii"),
        None if r is None else int(r, 16),
        None if h is None else h.decode("ascii"),
        None if b is None else _text(b),
        None if p is None else _text(p),
        None if o is None else int(o),
        (),
    )


def parse_metadata(block: bytes) -> Metadata | Corrupted:
    """Parse the meta-lines of one record (the bytes between trailer and end marker).

    Returns:
        The metadata, or ``Corrupted`` if a line is malformed, a known key repeats, ``Z``
        or ``G`` is missing, or ``K`` is missing, not last, or does not match.
    """
    m = _CANONICAL_METADATA.fullmatch(block) if len(block) <= MAX_METADATA else None
    if m is not None:
        # The common case, checked by one regex: exactly what the general path below
        # accepts for these lines, at a fraction of the cost.
        z, g, r, h, b, p, o, k = m.groups()
        if _meta_check(block[: m.start(8) - 1]).encode("ascii") != k:
            return Corrupted("metadata check K does not match")
        return _canonical_metadata(z, g, r, h, b, p, o)
    if len(block) > MAX_METADATA:
        return Corrupted(f"metadata longer than {MAX_METADATA} bytes")
    if not block.endswith(b"\n"):
        return Corrupted("metadata does not end with LF")
    k_start = block.rfind(b"\n", 0, len(block) - 1) + 1
    if block[k_start : k_start + 1] != KEY_META_CHECK.encode():
        return Corrupted("metadata does not end with a K line")
    checked = block[:k_start]
    if _text(block[k_start + 1 : -1]) != _meta_check(checked):
        return Corrupted("metadata check K does not match")
    known: dict[str, bytes] = {}
    extra: list[tuple[str, str]] = []
    for line in checked.split(b"\n")[:-1]:
        if not line or not is_key(line[0]):
            return Corrupted("metadata line does not start with a letter key")
        key = chr(line[0])
        if key in KNOWN_KEYS:
            if key in known:
                return Corrupted(f"metadata key {key} appears twice")
            known[key] = line[1:]
        else:
            extra.append((key, _text(line[1:])))
    return _metadata_from(known, tuple(extra))


def _metadata_from(
    known: dict[str, bytes], extra: tuple[tuple[str, str], ...]
) -> Metadata | Corrupted:
    if KEY_SIZE not in known:
        return Corrupted("metadata has no Z (body size)")
    size = parse_hex(known[KEY_SIZE])
    if size is None:
        return Corrupted("Z is not lowercase hex")
    if KEY_GUID not in known:
        return Corrupted("metadata has no G (GUID)")
    guid = _text(known[KEY_GUID])
    if not is_guid(guid):
        return Corrupted("G is not 32 lowercase hex characters")
    received = None
    if KEY_RECEIVED in known:
        received = parse_hex(known[KEY_RECEIVED])
        if received is None:
            return Corrupted("R is not lowercase hex")
    digest = None
    if KEY_DIGEST in known:
        digest = _text(known[KEY_DIGEST])
        if not is_digest(digest):
            return Corrupted("H is not 64 lowercase hex characters")
    pop3_order = None
    if KEY_POP3_ORDER in known:
        raw = known[KEY_POP3_ORDER]
        if not raw.isdigit() or len(raw) > 19:
            return Corrupted("O is not a decimal number")
        pop3_order = int(raw)
    orig = known.get(KEY_ORIG_MAILBOX)
    uidl = known.get(KEY_POP3_UIDL)
    return Metadata(
        size=size,
        guid=guid,
        received=received,
        digest=digest,
        orig_mailbox=None if orig is None else _text(orig),
        pop3_uidl=None if uidl is None else _text(uidl),
        pop3_order=pop3_order,
        extra=extra,
    )


def check_body(metadata: Metadata, body: bytes) -> Corrupted | None:
    """Check ``body`` against the record's ``Z`` and ``H``.

    Returns:
        None if the body matches (or the record has no ``H`` and the size matches), else
        ``Corrupted``.
    """
    if len(body) != metadata.size:
        return Corrupted(f"body is {len(body)} bytes but Z says {metadata.size}")
    if metadata.digest is not None and body_digest(body) != metadata.digest:
        return Corrupted("body does not match its BLAKE2b digest H")
    return None


# -------------------------------------------------------------------------------- writer


class RecordWriter:
    """Incremental v3 record writer: body chunks in, bytes to append out.

    The body size is not needed in advance; ``Z`` and ``H`` are computed on the way.
    Append, in order, the bytes returned by :meth:`begin`, every :meth:`feed` and
    :meth:`finish`. Nothing is buffered inside: each call's return value is everything to
    write for that call.

    Example::

        w = RecordWriter(sep, guid=guid, received=now)
        out.write(w.begin())
        for chunk in chunks:
            out.write(w.feed(chunk))
        out.write(w.finish())
    """

    __slots__ = (
        "_extra",
        "_guid",
        "_hash",
        "_metadata",
        "_orig_mailbox",
        "_pop3_order",
        "_pop3_uidl",
        "_received",
        "_sep",
        "_size",
        "_state",
    )

    def __init__(
        self,
        sep: bytes,
        *,
        guid: str,
        received: int | None = None,
        orig_mailbox: str | None = None,
        pop3_uidl: str | None = None,
        pop3_order: int | None = None,
        extra: Sequence[tuple[str, str]] = (),
        digest: bool = True,
    ) -> None:
        """Prepare a record for the file whose separator is ``sep``.

        Args:
            sep: The file's separator (from its :class:`FileHeader`).
            guid: Message GUID, 32 lowercase hex characters.
            received: Received time (UNIX seconds) for ``R``.
            orig_mailbox: ``B``; pop3_uidl: ``P``; pop3_order: ``O``.
            extra: Unknown ``(key, value)`` pairs to keep, e.g. ``Metadata.extra`` of the
                record being copied.
            digest: Write ``H`` (BLAKE2b of the body). On by default; fsck relies on it.

        Raises:
            ValueError: A value cannot be written (bad separator or GUID, LF in a value,
                an extra key that is not one ASCII letter or is a known key).
        """
        if not is_separator(sep):
            raise ValueError("separator must be 32 lowercase hex characters")
        _check_metadata_args(guid, received, orig_mailbox, pop3_uidl, pop3_order, extra)
        self._sep = sep
        self._guid = guid
        self._received = received
        self._orig_mailbox = orig_mailbox
        self._pop3_uidl = pop3_uidl
        self._pop3_order = pop3_order
        self._extra = tuple(extra)
        self._hash = hashlib.blake2b(digest_size=DIGEST_SIZE) if digest else None
        self._size = 0
        self._state = "new"
        self._metadata: Metadata | None = None

    @property
    def size(self) -> int:
        """Body bytes fed so far (the final ``Z`` once finished)."""
        return self._size

    @property
    def metadata(self) -> Metadata:
        """The metadata written by :meth:`finish`.

        Raises:
            RuntimeError: :meth:`finish` has not been called yet.
        """
        if self._metadata is None:
            raise RuntimeError("the record is not finished")
        return self._metadata

    def begin(self) -> bytes:
        """Return the record start (``01 02 LF``).

        Raises:
            RuntimeError: Called twice.
        """
        if self._state != "new":
            raise RuntimeError("begin() called twice")
        self._state = "body"
        return RECORD_START

    def feed(self, chunk: bytes | bytearray | memoryview) -> bytes:
        """Account for one body chunk and return it as the bytes to write.

        A ``bytes`` chunk is returned as is (no copy). Any content is allowed.

        Raises:
            RuntimeError: Called before :meth:`begin` or after :meth:`finish`.
        """
        if self._state != "body":
            raise RuntimeError("feed() outside begin()/finish()")
        data = chunk if isinstance(chunk, bytes) else bytes(chunk)
        n = len(data)
        self._size += n
        if self._hash is not None:
            if _HASH_GIL_FREE < n <= _HASH_IN_PIECES_MAX:
                view = memoryview(data)
                for i in range(0, n, _HASH_GIL_FREE):
                    self._hash.update(view[i : i + _HASH_GIL_FREE])
            else:
                self._hash.update(data)
        return data

    def finish(self) -> bytes:
        """Return the trailer, the metadata and the end marker; the record is complete.

        Raises:
            RuntimeError: Called before :meth:`begin` or twice.
        """
        if self._state != "body":
            raise RuntimeError("finish() outside begin()/feed()")
        self._state = "done"
        self._metadata = Metadata(
            size=self._size,
            guid=self._guid,
            received=self._received,
            digest=None if self._hash is None else self._hash.hexdigest(),
            orig_mailbox=self._orig_mailbox,
            pop3_uidl=self._pop3_uidl,
            pop3_order=self._pop3_order,
            extra=self._extra,
        )
        return b"".join(
            (
                TRAILER_PREFIX,
                self._sep,
                b"\n",
                _encode_checked_metadata(self._metadata),
                END_PREFIX,
                self._sep,
                b"\n",
            )
        )


def encode_record(
    sep: bytes,
    body: bytes,
    *,
    guid: str,
    received: int | None = None,
    orig_mailbox: str | None = None,
    pop3_uidl: str | None = None,
    pop3_order: int | None = None,
    extra: Sequence[tuple[str, str]] = (),
    digest: bool = True,
) -> bytes:
    """Return one whole v3 record for ``body`` (see :class:`RecordWriter` for arguments).

    Raises:
        ValueError: As :class:`RecordWriter`.
    """
    w = RecordWriter(
        sep,
        guid=guid,
        received=received,
        orig_mailbox=orig_mailbox,
        pop3_uidl=pop3_uidl,
        pop3_order=pop3_order,
        extra=extra,
        digest=digest,
    )
    return b"".join((w.begin(), w.feed(body), w.finish()))


# ------------------------------------------------------------------------------- readers


@dataclass(slots=True, frozen=True)
class Trailer:
    """What follows a body: metadata and where the record ends.

    Attributes:
        metadata: The parsed metadata.
        end: File offset just past the end marker (where the next record may start).
    """

    metadata: Metadata
    end: int


@dataclass(slots=True, frozen=True)
class Record:
    """A located v3 record. All offsets are file offsets.

    Attributes:
        offset: Where the record starts (its ``01 02 LF``); the mdbox map stores this.
        body_offset: Where the body starts (``offset + 3``).
        body_size: Body length (``Z``).
        end: Just past the end marker.
        metadata: The parsed metadata.
    """

    offset: int
    body_offset: int
    body_size: int
    end: int
    metadata: Metadata

    @property
    def length(self) -> int:
        """Record length in bytes, framing included."""
        return self.end - self.offset


_new_record: Callable[..., Record] = _slot_filler(Record)


def _trailer_at(
    data: bytes, pos: int, sep: bytes, *, eof: bool
) -> tuple[Metadata, int] | NeedBytes | Corrupted:
    """Parse the trailer starting at ``data[pos]``; NeedBytes counts from ``pos``."""
    m = _CANONICAL_TRAILER.match(data, pos)
    if m is not None and m.group(1) == sep and m.end(2) - m.start(2) <= MAX_METADATA - 18:
        # The usual record in one match; K is checked as parse_metadata checks it.
        if _meta_check(m.group(2)).encode("ascii") != m.group(10):
            return Corrupted("metadata check K does not match")
        return _canonical_metadata(*m.group(3, 4, 5, 6, 7, 8, 9)), m.end()
    trailer = TRAILER_PREFIX + sep + b"\n"
    have = len(data) - pos
    if have < TRAILER_LEN:
        if data[pos:] != trailer[: max(have, 0)]:
            return Corrupted("no trailer with the file's separator after the body")
        if eof:
            return Corrupted("truncated: the file ends inside a record trailer")
        return NeedBytes(TRAILER_LEN + MDBOX_METADATA_RESERVE)
    if data[pos : pos + TRAILER_LEN] != trailer:
        return Corrupted("no trailer with the file's separator after the body")
    meta_start = pos + TRAILER_LEN
    limit = meta_start + MAX_METADATA + END_LEN
    end_at = data.find(END_PREFIX + sep + b"\n", meta_start, limit)
    if end_at < 0:
        if eof or len(data) >= limit:
            return Corrupted(f"no end marker within {MAX_METADATA} bytes of the trailer")
        return NeedBytes(min(limit - pos, max(2 * have, TRAILER_LEN + MDBOX_METADATA_RESERVE)))
    metadata = parse_metadata(data[meta_start:end_at])
    if isinstance(metadata, Corrupted):
        return metadata
    return metadata, end_at + END_LEN


def read_trailer(
    data: bytes, sep: bytes, *, offset: int = 0, eof: bool = False
) -> Trailer | NeedBytes | Corrupted:
    """Parse the trailer, metadata and end marker that follow a body.

    For callers that stream a large body instead of passing it to :func:`read_record`:
    they compare the record's first 3 bytes with ``RECORD_START`` and pass here the bytes
    right after the body (file offset ``record offset + 3 + size``), then check that
    ``Z`` equals the size they expected.

    Args:
        data: Bytes starting where the trailer should start.
        sep: The file's separator.
        offset: File offset of ``data[0]``.
        eof: ``data`` reaches the end of the file.

    Returns:
        The trailer; ``NeedBytes(n)`` for the first ``n`` bytes from ``offset``; or
        ``Corrupted``.
    """
    found = _trailer_at(data, 0, sep, eof=eof)
    if not isinstance(found, tuple):
        return found
    metadata, end = found
    return Trailer(metadata=metadata, end=offset + end)


def read_record(
    data: bytes, sep: bytes, body_size: int, *, offset: int = 0, eof: bool = False
) -> Record | NeedBytes | Corrupted:
    """Read the record at a known offset (mdbox: the map gives offset and body size).

    The body is ``data[3 : 3 + body_size]``; the trailer after it is validated and its
    ``Z`` must equal ``body_size``. ``H`` is not checked here (see :func:`check_body`).

    Args:
        data: Bytes starting at the record (file offset ``offset``). Reading
            ``body_size + 3 + TRAILER_LEN + 512`` bytes is usually enough.
        sep: The file's separator (from its :class:`FileHeader`).
        body_size: The body size the index recorded.
        offset: File offset of ``data[0]``.
        eof: ``data`` reaches the end of the file.

    Returns:
        The record; ``NeedBytes(n)`` for the first ``n`` bytes from ``offset``; or
        ``Corrupted``.

    Raises:
        ValueError: ``body_size`` is negative.
    """
    if body_size < 0:
        raise ValueError("body_size must not be negative")
    start = data[:3]
    if start != RECORD_START[: len(start)]:
        return Corrupted("record does not start with 01 02 LF")
    body_end = 3 + body_size
    if len(data) < body_end:
        if eof:
            return Corrupted("truncated: the file ends inside the body")
        return NeedBytes(body_end + TRAILER_LEN + MDBOX_METADATA_RESERVE)
    found = _trailer_at(data, body_end, sep, eof=eof)
    if isinstance(found, NeedBytes):
        return NeedBytes(body_end + found.size)
    if isinstance(found, Corrupted):
        return found
    metadata, end = found
    if metadata.size != body_size:
        return Corrupted(f"Z is {metadata.size} but the index says {body_size}")
    return _new_record(offset, offset + 3, body_size, offset + end, metadata)


def record_span(data: bytes, pos: int, sep: bytes, body_size: int) -> int | None:
    """Where the v3 record at ``data[pos]`` ends, if it has the usual shape: ``01 02 LF``,
    a ``body_size`` body, the trailer with ``sep``, canonical meta-lines whose ``Z`` is
    ``body_size`` and whose ``K`` matches, and the end marker.  Nothing is decoded (see
    :func:`record_metadata`); the body is ``data[pos + 3 : pos + 3 + body_size]``.

    Returns:
        The index in ``data`` just past the end marker; None if the record is anything
        else (damaged, unusual, cut short): :func:`read_record` then says what.
    """
    if body_size < 0 or data[pos : pos + len(RECORD_START)] != RECORD_START:
        return None
    m = _CANONICAL_TRAILER.match(data, pos + len(RECORD_START) + body_size)
    if (
        m is None
        or m.group(1) != sep
        or m.end(2) - m.start(2) > MAX_METADATA - 18
        or int(m.group(3), 16) != body_size
        or _meta_check(m.group(2)).encode("ascii") != m.group(10)
    ):
        return None
    return m.end()


def record_metadata(data: bytes, pos: int, sep: bytes, body_size: int) -> Metadata:
    """The metadata of the record at ``data[pos]`` that :func:`record_span` accepted.

    Raises:
        ValueError: :func:`record_span` would not accept it.
    """
    found = _trailer_at(data, pos + len(RECORD_START) + body_size, sep, eof=True)
    if not isinstance(found, tuple) or found[0].size != body_size:
        raise ValueError("not a record of the usual shape")
    return found[0]


def sdbox_body_span(data: bytes, body_size: int) -> tuple[int, int] | None:
    """Where the body of a whole sdbox file ``data`` is, if the file has the usual shape:
    a valid v3 header, then one record (see :func:`record_span`) whose ``Z`` is
    ``body_size`` (the index's size), its end marker the file's last bytes.

    Returns:
        ``(body_start, body_end)``; None if the file is anything else (damaged, v2, a
        size the index does not agree with): :func:`read_sdbox_tail` then says what.
    """
    head = _FILE_HEADER.match(data)
    if head is None or record_span(data, head.end(), head.group(1), body_size) != len(data):
        return None
    start = head.end() + len(RECORD_START)
    return start, start + body_size


def read_sdbox_tail(
    tail: bytes,
    file_size: int,
    *,
    header: FileHeader | None = None,
    body_size: int | None = None,
) -> Record | NeedBytes | Corrupted:
    """Locate the single record of an sdbox file from the file's last bytes.

    Start with the last :data:`~aiodbox.dbox.format.SDBOX_TAIL_READ` (512) bytes, or the
    whole file if it is smaller. The end marker names the separator, the trailer is found
    backwards from it, and ``Z`` says where the body starts. When the bytes given include
    the file start, the file header is checked too; ``header`` (parsed from the file's
    first bytes) lets a caller check it without passing the whole file.

    Args:
        tail: The last ``len(tail)`` bytes of the file.
        file_size: The file's size.
        header: The file header, if the caller has it.
        body_size: The body size the index recorded, if known: with ``header`` and the
            whole file, the record is first looked for where that size puts it (one
            match instead of a search); the result is the same either way.

    Returns:
        The record (file offsets); ``NeedBytes(n)``: call again with the last ``n`` bytes;
        or ``Corrupted``. ``H`` is not checked (the body is not in hand).

    Raises:
        ValueError: ``tail`` is longer than ``file_size``.
    """
    if len(tail) > file_size:
        raise ValueError("tail is longer than the file")
    base = file_size - len(tail)
    if body_size is not None and header is not None and base == 0 and body_size >= 0:
        at = header.length
        found = _trailer_at(tail, at + len(RECORD_START) + body_size, header.sep, eof=True)
        if (
            isinstance(found, tuple)
            and found[1] == file_size
            and found[0].size == body_size
            and tail[at : at + len(RECORD_START)] == RECORD_START
        ):
            return _new_record(at, at + len(RECORD_START), body_size, file_size, found[0])
    if len(tail) < min(file_size, SDBOX_TAIL_READ):
        return NeedBytes(min(file_size, SDBOX_TAIL_READ))
    if file_size < MIN_V3_HEADER_LEN + 3 + TRAILER_LEN + END_LEN:
        return Corrupted("file too short for a v3 sdbox file")
    end = _END_MARKER.fullmatch(tail, len(tail) - END_LEN)
    if end is None:
        return Corrupted("the file does not end with a record end marker")
    sep = end.group(1)
    if header is not None and header.sep != sep:
        return Corrupted("end marker separator differs from the file header's")
    meta_end = len(tail) - END_LEN
    lowest = max(0, meta_end - MAX_METADATA - TRAILER_LEN)
    t = tail.rfind(TRAILER_PREFIX + sep + b"\n", lowest, meta_end)
    if t < 0:
        if base == 0 or len(tail) >= _MAX_TAIL:
            return Corrupted(f"no trailer within {MAX_METADATA} bytes of the end marker")
        return NeedBytes(min(file_size, _MAX_TAIL, 2 * len(tail)))
    metadata = parse_metadata(tail[t + TRAILER_LEN : meta_end])
    if isinstance(metadata, Corrupted):
        return metadata
    body_offset = base + t - metadata.size
    record_offset = body_offset - len(RECORD_START)
    if record_offset < MIN_V3_HEADER_LEN:
        return Corrupted("Z points before the end of any possible file header")
    if header is not None and record_offset != header.length:
        return Corrupted("Z does not agree with the file header length")
    if record_offset >= base:
        at = record_offset - base
        if tail[at : at + 3] != RECORD_START:
            return Corrupted("record does not start with 01 02 LF where Z says")
    if base == 0 and header is None:
        parsed = parse_file_header(tail, eof=True)
        if isinstance(parsed, Corrupted):
            return Corrupted("file header: " + parsed.reason)
        if isinstance(parsed, NeedBytes):  # not returned with eof=True
            return Corrupted("file header is incomplete")
        if parsed.sep != sep:
            return Corrupted("end marker separator differs from the file header's")
        if record_offset != parsed.length:
            return Corrupted("Z does not agree with the file header length")
    return Record(
        offset=record_offset,
        body_offset=body_offset,
        body_size=metadata.size,
        end=file_size,
        metadata=metadata,
    )
