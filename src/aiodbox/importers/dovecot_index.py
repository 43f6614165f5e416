"""Sans-IO reader of Dovecot 2.3's mail index files (``dovecot.index`` + ``.log``).

Theory of operation
===================

Dovecot keeps the state of a mailbox (and of the mdbox map and of the mailbox
list) in two files that only make sense together:

``dovecot.index``
    A snapshot.  A 120-byte base header (UIDVALIDITY, next UID, counters, and
    the position in the transaction log the snapshot was taken at), then
    *extension headers* (each: a 16-byte descriptor, a name, and header data
    starting at the next 8-byte boundary), then ``messages_count`` fixed-size
    records.  A record starts with ``uid`` (u32) and ``flags`` (u8); the rest
    of it is carved up between the extensions that have per-message data
    (``keywords`` bitmask, ``cache`` offset, mdbox ``map_uid``/``save_date``,
    message ``guid``, ``vsize`` ...) at the offsets their descriptors name.  The
    file is only ever rewritten whole, and for small mailboxes Dovecot may not
    write it at all.

``dovecot.index.log`` (and the rotated ``dovecot.index.log.2``)
    An append-only transaction log: a header (``file_seq``, the previous
    file's seq/size, ``initial_modseq``) then records, each an 8-byte header
    (``size`` in Dovecot's 7-bits-per-byte "offset" encoding, ``type``) and a
    type-specific payload.  Every change to the mailbox is a record here first.

Reading a mailbox is therefore: load ``dovecot.index`` if there is one, then
*replay* the log from the position its header names (``log_file_seq`` /
``log_file_head_offset``) to the end, exactly as Dovecot's
``mail_index_sync_map()`` does.  Without an index file the log is replayed from
its beginning onto an empty map; that requires a log that starts the index
(``prev_file_seq == 0``).  A log file whose ``prev_file_seq`` is 0 *resets*
the index: when the index points before such a file, the index is discarded
and the file is replayed onto an empty map (Dovecot's view-set rule).

Record types handled by the replay (``mail-index-sync-update.c``):

* ``APPEND`` - new records (uid, flags); bumps ``next_uid``.
* ``EXPUNGE`` / ``EXPUNGE_GUID`` (both must carry the ``0xcd90`` protection
  bits) - applied only when ``EXTERNAL``; internal ones are mere requests.
* ``FLAG_UPDATE`` - add/remove flag bits over UID ranges.
* ``KEYWORD_UPDATE`` (add/remove one keyword by name over UID ranges; an unknown
  name is added to the keyword list, creating the ``keywords`` extension on
  first use, which matters for extension numbering) and ``KEYWORD_RESET``.
* ``HEADER_UPDATE`` - raw writes into the base header (uid_validity, ...).
* ``EXT_INTRO`` (select/create/resize an extension; the following
  ``EXT_RESET``, ``EXT_HDR_UPDATE``/``EXT_HDR_UPDATE32``, ``EXT_REC_UPDATE``
  and ``EXT_ATOMIC_INC`` records act on it; a reset_id mismatch makes them be
  ignored, as in Dovecot).
* ``MODSEQ_UPDATE`` - raises per-message modseqs where a ``modseq`` extension
  exists.
* ``INDEX_DELETED`` / ``INDEX_UNDELETED`` - external ones tracked as
  :attr:`IndexState.deleted` (internal ones are requests).
* ``BOUNDARY`` - structural only (checked to lie inside the file).
* ``ATTRIBUTE_UPDATE`` - mailbox METADATA; validated and ignored.

Anything else is an unknown record type and an error.  The highest modseq is
computed like ``mail_transaction_update_modseq()``: starting from the head log
file's ``initial_modseq``, appends, keyword changes, external expunges,
attribute updates and non-internal flag updates each add one, and
``MODSEQ_UPDATE`` can raise it.

Errors: structural damage (a truncated or garbled file, a record that points
outside its payload, a log that does not fit the index) raises
:class:`DovecotIndexError` naming the file and byte offset.  Inconsistencies
Dovecot itself tolerates and repairs (a next_uid that would shrink, a changed
uid_validity) are applied the way Dovecot applies them and reported in
``warnings``.  A log that ends inside a record or inside a ``BOUNDARY``-framed
transaction is an error unless ``allow_partial_tail=True``, in which case the
unfinished tail is ignored as Dovecot does for a log that is still being
written.

All functions here are pure: they take ``bytes`` and names used in messages,
and never touch the filesystem.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

__all__ = [
    "FLAG_ANSWERED",
    "FLAG_DELETED",
    "FLAG_DRAFT",
    "FLAG_FLAGGED",
    "FLAG_SEEN",
    "DovecotIndexError",
    "DovecotMailboxIndex",
    "DovecotMessage",
    "IndexExtension",
    "IndexHeader",
    "IndexRecord",
    "IndexState",
    "LogHeader",
    "LogRecord",
    "MdboxMap",
    "MdboxMapEntry",
    "TransactionLog",
    "parse_index_header",
    "parse_log",
    "read_mailbox_index",
    "read_mdbox_map",
    "replay_index",
    "system_flag_names",
]


class DovecotIndexError(ValueError):
    """A Dovecot index or transaction log is damaged, truncated or inconsistent.

    Attributes:
        file: The file name (or path) the problem was found in.
        offset: Byte offset in that file, or ``None`` when the problem is not
            tied to one place (for example two files that do not fit together).
        reason: What is wrong, without the location.
    """

    def __init__(self, file: str, offset: int | None, reason: str) -> None:
        super().__init__(file, offset, reason)
        self.file = file
        self.offset = offset
        self.reason = reason

    def __str__(self) -> str:
        where = self.file if self.offset is None else f"{self.file} at offset {self.offset}"
        return f"{where}: {self.reason}"


# --------------------------------------------------------------------------- constants

FLAG_ANSWERED: Final = 0x01
FLAG_FLAGGED: Final = 0x02
FLAG_DELETED: Final = 0x04
FLAG_SEEN: Final = 0x08
FLAG_DRAFT: Final = 0x10
_SYSTEM_FLAGS_MASK: Final = 0x1F
_FLAG_NAMES: Final = (
    (FLAG_ANSWERED, "\\Answered"),
    (FLAG_FLAGGED, "\\Flagged"),
    (FLAG_DELETED, "\\Deleted"),
    (FLAG_SEEN, "\\Seen"),
    (FLAG_DRAFT, "\\Draft"),
)

# mail-transaction-log.h
T_EXPUNGE: Final = 0x00000001
T_APPEND: Final = 0x00000002
T_FLAG_UPDATE: Final = 0x00000004
T_HEADER_UPDATE: Final = 0x00000020
T_EXT_INTRO: Final = 0x00000040
T_EXT_RESET: Final = 0x00000080
T_EXT_HDR_UPDATE: Final = 0x00000100
T_EXT_REC_UPDATE: Final = 0x00000200
T_KEYWORD_UPDATE: Final = 0x00000400
T_KEYWORD_RESET: Final = 0x00000800
T_EXT_ATOMIC_INC: Final = 0x00001000
T_EXPUNGE_GUID: Final = 0x00002000
T_MODSEQ_UPDATE: Final = 0x00008000
T_EXT_HDR_UPDATE32: Final = 0x00010000
T_INDEX_DELETED: Final = 0x00020000
T_INDEX_UNDELETED: Final = 0x00040000
T_BOUNDARY: Final = 0x00080000
T_ATTRIBUTE_UPDATE: Final = 0x00100000
T_TYPE_MASK: Final = 0x0FFFFFFF
T_EXPUNGE_PROT: Final = 0x0000CD90
T_EXTERNAL: Final = 0x10000000
T_SYNC: Final = 0x20000000

_TYPE_NAMES: Final[Mapping[int, str]] = MappingProxyType(
    {
        T_EXPUNGE: "EXPUNGE",
        T_APPEND: "APPEND",
        T_FLAG_UPDATE: "FLAG_UPDATE",
        T_HEADER_UPDATE: "HEADER_UPDATE",
        T_EXT_INTRO: "EXT_INTRO",
        T_EXT_RESET: "EXT_RESET",
        T_EXT_HDR_UPDATE: "EXT_HDR_UPDATE",
        T_EXT_REC_UPDATE: "EXT_REC_UPDATE",
        T_KEYWORD_UPDATE: "KEYWORD_UPDATE",
        T_KEYWORD_RESET: "KEYWORD_RESET",
        T_EXT_ATOMIC_INC: "EXT_ATOMIC_INC",
        T_EXPUNGE_GUID: "EXPUNGE_GUID",
        T_MODSEQ_UPDATE: "MODSEQ_UPDATE",
        T_EXT_HDR_UPDATE32: "EXT_HDR_UPDATE32",
        T_INDEX_DELETED: "INDEX_DELETED",
        T_INDEX_UNDELETED: "INDEX_UNDELETED",
        T_BOUNDARY: "BOUNDARY",
        T_ATTRIBUTE_UPDATE: "ATTRIBUTE_UPDATE",
    }
)

_INDEX_MAJOR_VERSION: Final = 7
_INDEX_BASE_HEADER_MIN: Final = 120
_INDEX_RECORD_MIN: Final = 8  # sizeof(struct mail_index_record) incl. padding
_LOG_MAJOR_VERSION: Final = 1
_LOG_HEADER_MIN: Final = 24
_LOG_HEADER_FULL: Final = 40
_COMPAT_LITTLE_ENDIAN: Final = 0x01
_HDR_FLAG_CORRUPTED: Final = 0x0001
_EXT_NO_SHRINK: Final = 0x01
_EXT_ID_NEW: Final = 0xFFFFFFFF
_EXT_HEADER_MAX: Final = 1024 * 1024 * 16 - 1
_EXT_NAME_MAX: Final = 64
_KEYWORDS_EXT: Final = "keywords"
_MODSEQ_EXT: Final = "modseq"
_MODIFY_ADD: Final = 0
_MODIFY_REMOVE: Final = 1

# struct mail_index_header, little-endian (compat flag 1): offsets of the fields we use
_HDR_STRUCT: Final = struct.Struct("<BBHIIB3xIIIIIIIIIIIIIIIIII")
_OFF_UID_VALIDITY: Final = 24
_OFF_NEXT_UID: Final = 28
_U32: Final = struct.Struct("<I")
_U16: Final = struct.Struct("<H")


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to


def system_flag_names(flags: int) -> tuple[str, ...]:
    """The IMAP system flags set in a Dovecot record's flag byte.

    Args:
        flags: ``mail_index_record.flags`` (backend-private bits are ignored).

    Returns:
        Flag names in Dovecot's bit order: ``\\Answered \\Flagged \\Deleted
        \\Seen \\Draft``.  ``\\Recent`` is session state and never stored.
    """
    return tuple(name for bit, name in _FLAG_NAMES if flags & bit)


# --------------------------------------------------------------------------- result types


@dataclass(frozen=True, slots=True)
class IndexHeader:
    """``struct mail_index_header`` (base header, version 7.x)."""

    major_version: int
    minor_version: int
    base_header_size: int
    header_size: int
    record_size: int
    compat_flags: int
    indexid: int
    flags: int
    uid_validity: int
    next_uid: int
    messages_count: int
    seen_messages_count: int
    deleted_messages_count: int
    first_recent_uid: int
    first_unseen_uid_lowwater: int
    first_deleted_uid_lowwater: int
    log_file_seq: int
    log_file_tail_offset: int
    log_file_head_offset: int
    log2_rotate_time: int
    last_temp_file_scan: int
    day_stamp: int


@dataclass(frozen=True, slots=True)
class IndexExtension:
    """One extension of an index map after replay.

    Attributes:
        name: Extension name (``keywords``, ``cache``, ``mdbox``, ``map`` ...).
        reset_id: Current reset id.
        header: Extension header data (``hdr_size`` bytes).
        record_size: Bytes of per-message data (0 for header-only extensions).
        record_align: Alignment of that data in a record.
    """

    name: str
    reset_id: int
    header: bytes
    record_size: int
    record_align: int


@dataclass(frozen=True, slots=True)
class IndexRecord:
    """One message (or map entry, or mailbox-list node) of an index map.

    Attributes:
        uid: The record's UID.
        flags: The raw flag byte (system flags plus backend bits 0x40/0x80).
        keywords: Keyword names set on the record, in keyword-list order.
        ext: ``(extension name, data)`` for every extension with per-record
            data, in map order (keywords excluded: see ``keywords``).
    """

    uid: int
    flags: int
    keywords: tuple[str, ...]
    ext: tuple[tuple[str, bytes], ...]

    def ext_data(self, name: str) -> bytes | None:
        """The record's data for extension ``name``, or ``None``."""
        for ext_name, data in self.ext:
            if ext_name == name:
                return data
        return None


@dataclass(frozen=True, slots=True)
class IndexState:
    """An index map as Dovecot would see it after syncing with its log.

    Attributes:
        header: Base header after replay (counters recomputed from the records).
        extensions: Extensions in map order (the order ext_ids refer to).
        keywords: The keyword list, in keyword-index order.
        records: The records, ascending by UID.
        highest_modseq: The head log file's highest modseq (or the ``modseq``
            extension's, if larger); 0 when modseqs are not tracked.
        log_file_seq: Sequence of the last log file replayed (0: no log).
        log_offset: End offset replayed in that file.
        source: ``"index+log"``, ``"log"`` or ``"index"``: what was read.
        deleted: The index was marked deleted (mailbox deletion in progress).
        warnings: Inconsistencies Dovecot tolerates, found during replay.
    """

    header: IndexHeader
    extensions: tuple[IndexExtension, ...]
    keywords: tuple[str, ...]
    records: tuple[IndexRecord, ...]
    highest_modseq: int
    log_file_seq: int
    log_offset: int
    source: Literal["index+log", "log", "index"]
    deleted: bool
    warnings: tuple[str, ...]

    def extension(self, name: str) -> IndexExtension | None:
        """Return the extension called ``name``, or ``None``."""
        for ext in self.extensions:
            if ext.name == name:
                return ext
        return None


@dataclass(frozen=True, slots=True)
class LogHeader:
    """``struct mail_transaction_log_header``."""

    major_version: int
    minor_version: int
    hdr_size: int
    indexid: int
    file_seq: int
    prev_file_seq: int
    prev_file_offset: int
    create_stamp: int
    initial_modseq: int
    compat_flags: int


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One transaction-log record.

    Attributes:
        offset: Byte offset of the record header in its file.
        size: Full record size (header + payload).
        type: The raw ``type`` word (base type and flag bits).
        data: The payload.
    """

    offset: int
    size: int
    type: int
    data: bytes

    @property
    def kind(self) -> int:
        """The base record type, expunge protection bits removed."""
        base = self.type & T_TYPE_MASK
        if base in (T_EXPUNGE | T_EXPUNGE_PROT, T_EXPUNGE_GUID | T_EXPUNGE_PROT):
            return base & ~T_EXPUNGE_PROT
        return base

    @property
    def kind_name(self) -> str:
        """``APPEND``, ``FLAG_UPDATE`` ... (``0x...`` for unknown types)."""
        return _TYPE_NAMES.get(self.kind, f"0x{self.kind:x}")

    @property
    def external(self) -> bool:
        """The change already happened in the mailbox (vs. a request)."""
        return bool(self.type & T_EXTERNAL)


@dataclass(frozen=True, slots=True)
class TransactionLog:
    """A parsed ``dovecot.index.log`` file.

    Attributes:
        name: File name used in messages.
        header: The log header.
        records: All complete records, in file order.
        end_offset: Where reading stopped (the file size unless a partial tail
            was tolerated).
        modseqs: Highest modseq *before* each record, parallel to ``records``.
        highest_modseq: Highest modseq at ``end_offset``.
        partial_tail: Bytes ignored at the end (only with ``allow_partial_tail``).
    """

    name: str
    header: LogHeader
    records: tuple[LogRecord, ...]
    end_offset: int
    modseqs: tuple[int, ...]
    highest_modseq: int
    partial_tail: int


@dataclass(frozen=True, slots=True)
class DovecotMessage:
    """A message as a dbox mailbox index knows it.

    Attributes:
        uid: IMAP UID.
        flags: System flag bits (``FLAG_*``; backend bits removed).
        keywords: Keyword names.
        map_uid: mdbox: the map UID locating the message in ``storage/``.
        save_date: mdbox: UNIX time the message was saved/copied to this mailbox.
        guid: The message GUID as 32 hex digits, where the index has it (mdbox).
        vsize: Virtual (CRLF) size from the ``vsize`` extension, where present.
        modseq: Per-message modseq, where a ``modseq`` extension exists.
    """

    uid: int
    flags: int
    keywords: tuple[str, ...]
    map_uid: int | None
    save_date: int | None
    guid: str | None
    vsize: int | None
    modseq: int | None

    @property
    def system_flags(self) -> tuple[str, ...]:
        """The system flags as IMAP names (see :func:`system_flag_names`)."""
        return system_flag_names(self.flags)


@dataclass(frozen=True, slots=True)
class DovecotMailboxIndex:
    """What a dbox mailbox's index says about the mailbox.

    Attributes:
        uidvalidity: UIDVALIDITY.
        uidnext: Next UID.
        highest_modseq: HIGHESTMODSEQ (0 when Dovecot did not track modseqs).
        mailbox_guid: Mailbox GUID (32 hex digits) from ``dbox-hdr``/``mdbox-hdr``.
        storage: ``"sdbox"`` or ``"mdbox"`` as the index extensions show, or
            ``None`` if neither header extension is present.
        map_uid_validity: mdbox: the map's UIDVALIDITY this mailbox refers to.
        vsize: Total virtual size from ``hdr-vsize`` when it is up to date.
        messages: Messages ascending by UID.
        keywords: Every keyword name the mailbox has defined.
        deleted: The mailbox index was marked deleted.
        warnings: Non-fatal inconsistencies found during replay.
        state: The underlying replayed index map.
    """

    uidvalidity: int
    uidnext: int
    highest_modseq: int
    mailbox_guid: str | None
    storage: Literal["sdbox", "mdbox"] | None
    map_uid_validity: int | None
    vsize: int | None
    messages: tuple[DovecotMessage, ...]
    keywords: tuple[str, ...]
    deleted: bool
    warnings: tuple[str, ...]
    state: IndexState


@dataclass(frozen=True, slots=True)
class MdboxMapEntry:
    """One mdbox map record: where a stored message lives.

    Attributes:
        map_uid: Map UID (what mailbox indexes point to).
        file_id: N of ``storage/m.N``.
        offset: Offset of the dbox message header in that file.
        size: Bytes from that offset through the message's metadata block.
        refcount: Number of mailbox records referring to it (0: dead, purgeable).
    """

    map_uid: int
    file_id: int
    offset: int
    size: int
    refcount: int

    @property
    def file_name(self) -> str:
        """``m.<file_id>``."""
        return f"m.{self.file_id}"


@dataclass(frozen=True, slots=True)
class MdboxMap:
    """The mdbox map (``storage/dovecot.map.index`` + log).

    Attributes:
        uidvalidity: The map's UIDVALIDITY (mailboxes' ``map_uid_validity``).
        next_map_uid: Next map UID.
        highest_file_id: Highest ``m.N`` ever created (from the ``map`` header).
        entries: Entries ascending by map UID, dead ones (refcount 0) included.
        warnings: Non-fatal inconsistencies found during replay.
    """

    uidvalidity: int
    next_map_uid: int
    highest_file_id: int
    entries: tuple[MdboxMapEntry, ...]
    warnings: tuple[str, ...]

    def lookup(self, map_uid: int) -> MdboxMapEntry | None:
        """Return the entry for ``map_uid``, or ``None``."""
        lo, hi = 0, len(self.entries)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entries[mid].map_uid < map_uid:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self.entries) and self.entries[lo].map_uid == map_uid:
            return self.entries[lo]
        return None


# --------------------------------------------------------------------------- log parsing


def _offset_to_uint32(raw: bytes) -> int:
    """Decode Dovecot's ``mail_index_uint32_to_offset()`` encoding (0 if invalid)."""
    b0, b1, b2, b3 = raw[0], raw[1], raw[2], raw[3]
    if not (b0 & b1 & b2 & b3 & 0x80):
        return 0
    return ((b3 & 0x7F) << 2) | ((b2 & 0x7F) << 9) | ((b1 & 0x7F) << 16) | ((b0 & 0x7F) << 23)


def _parse_log_header(data: bytes, name: str) -> LogHeader:
    if len(data) < _LOG_HEADER_MIN:
        raise DovecotIndexError(
            name, 0, f"file too short for a log header ({len(data)} < {_LOG_HEADER_MIN} bytes)"
        )
    major, minor, hdr_size = data[0], data[1], _U16.unpack_from(data, 2)[0]
    if major != _LOG_MAJOR_VERSION:
        raise DovecotIndexError(name, 0, f"unsupported log major version {major}")
    if hdr_size < _LOG_HEADER_MIN:
        raise DovecotIndexError(name, 2, f"log header size {hdr_size} too small")
    if hdr_size > len(data):
        raise DovecotIndexError(name, 2, f"log header size {hdr_size} beyond end of file")
    full = data[:hdr_size].ljust(_LOG_HEADER_FULL, b"\0")
    indexid, file_seq, prev_seq, prev_off, create = struct.unpack_from("<IIIII", full, 4)
    initial_modseq = struct.unpack_from("<Q", full, 24)[0]
    compat = full[32]
    if (major, minor) >= (1, 2) and compat != _COMPAT_LITTLE_ENDIAN:
        raise DovecotIndexError(
            name, 32, f"unsupported compat flags 0x{compat:x} (only little-endian logs are read)"
        )
    if indexid == 0:
        raise DovecotIndexError(name, 4, "log is marked corrupted (indexid 0)")
    if file_seq == 0:
        raise DovecotIndexError(name, 8, "log file_seq is 0")
    return LogHeader(
        major_version=major,
        minor_version=minor,
        hdr_size=hdr_size,
        indexid=indexid,
        file_seq=file_seq,
        prev_file_seq=prev_seq,
        prev_file_offset=prev_off,
        create_stamp=create,
        initial_modseq=initial_modseq,
        compat_flags=compat,
    )


def _check_uid_ranges(name: str, rec: LogRecord, payload: bytes, step: int) -> None:
    """Dovecot's ``log_view_is_uid_range_valid()``: pairs start each ``step`` bytes."""
    if not payload or len(payload) % step:
        raise DovecotIndexError(
            name, rec.offset, f"{rec.kind_name}: invalid record size {len(payload)}"
        )
    prev = 0
    for pos in range(0, len(payload), step):
        uid1, uid2 = struct.unpack_from("<II", payload, pos)
        if uid1 == 0 or uid1 > uid2:
            raise DovecotIndexError(
                name, rec.offset, f"{rec.kind_name}: invalid UID range {uid1}..{uid2}"
            )
        if uid1 <= prev:
            raise DovecotIndexError(name, rec.offset, f"{rec.kind_name}: UID ranges not sorted")
        prev = uid2


def _keyword_payload(name: str, rec: LogRecord) -> tuple[int, bytes, int]:
    """Split a KEYWORD_UPDATE payload: (modify_type, keyword name bytes, seqset offset)."""
    data = rec.data
    if len(data) < 4:
        raise DovecotIndexError(name, rec.offset, "KEYWORD_UPDATE: record too short")
    modify_type = data[0]
    name_size = _U16.unpack_from(data, 2)[0]
    if name_size == 0:
        raise DovecotIndexError(name, rec.offset, "KEYWORD_UPDATE: empty keyword")
    seqset = _align(4 + name_size, 4)
    if seqset > len(data):
        raise DovecotIndexError(name, rec.offset, "KEYWORD_UPDATE: name beyond record")
    return modify_type, data[4 : 4 + name_size], seqset


def _validate_record(name: str, rec: LogRecord) -> None:
    """Structural checks of ``log_view_is_record_valid()``, run for every record."""
    base = rec.type & T_TYPE_MASK
    if rec.type & T_EXPUNGE and base != T_EXPUNGE | T_EXPUNGE_PROT:
        raise DovecotIndexError(name, rec.offset, "expunge record missing protection mask")
    if rec.type & T_EXPUNGE_GUID and base != T_EXPUNGE_GUID | T_EXPUNGE_PROT:
        raise DovecotIndexError(name, rec.offset, "expunge-guid record missing protection mask")
    kind = rec.kind
    if kind not in _TYPE_NAMES:
        raise DovecotIndexError(name, rec.offset, f"unknown transaction record type 0x{kind:x}")
    data = rec.data
    if not data:
        raise DovecotIndexError(name, rec.offset, f"{rec.kind_name}: empty record")
    if kind == T_APPEND:
        if len(data) % _INDEX_RECORD_MIN:
            raise DovecotIndexError(name, rec.offset, "APPEND: invalid record size")
    elif kind in (T_EXPUNGE, T_KEYWORD_RESET):
        _check_uid_ranges(name, rec, data, 8)
    elif kind == T_FLAG_UPDATE:
        _check_uid_ranges(name, rec, data, 12)
    elif kind == T_EXPUNGE_GUID:
        if len(data) % 20:
            raise DovecotIndexError(name, rec.offset, "EXPUNGE_GUID: invalid record size")
        for pos in range(0, len(data), 20):
            if _U32.unpack_from(data, pos)[0] == 0:
                raise DovecotIndexError(name, rec.offset, "EXPUNGE_GUID: uid 0")
    elif kind == T_KEYWORD_UPDATE:
        _, _, seqset = _keyword_payload(name, rec)
        _check_uid_ranges(name, rec, data[seqset:], 8)
    elif kind == T_MODSEQ_UPDATE:
        if len(data) % 12:
            raise DovecotIndexError(name, rec.offset, "MODSEQ_UPDATE: invalid record size")
    elif kind == T_EXT_ATOMIC_INC:
        if len(data) % 8:
            raise DovecotIndexError(name, rec.offset, "EXT_ATOMIC_INC: invalid record size")
    elif kind == T_BOUNDARY:
        if len(data) < 4:
            raise DovecotIndexError(name, rec.offset, "BOUNDARY: record too short")
    elif kind == T_ATTRIBUTE_UPDATE:
        _validate_attribute_update(name, rec)


def _validate_attribute_update(name: str, rec: LogRecord) -> None:
    data = rec.data
    i = 0
    while i + 2 < len(data) and data[i] != 0:
        if data[i] not in b"+-" or data[i + 1] not in b"ps" or data[i + 2] == 0:
            raise DovecotIndexError(name, rec.offset, "ATTRIBUTE_UPDATE: invalid change")
        end = data.find(b"\0", i + 2)
        if end < 0:
            raise DovecotIndexError(name, rec.offset, "ATTRIBUTE_UPDATE: key not terminated")
        i = end + 1
    if i == 0 or (i < len(data) and data[i] != 0):
        raise DovecotIndexError(name, rec.offset, "ATTRIBUTE_UPDATE: doesn't end with NUL")


def _flag_update_is_internal(data: bytes, pos: int) -> bool:
    add, remove, modseq_inc = data[pos + 8], data[pos + 9], data[pos + 10]
    return ((add | remove) & _SYSTEM_FLAGS_MASK) == 0 and modseq_inc == 0


def _update_modseq(rec: LogRecord, modseq: int, version: tuple[int, int]) -> int:
    """``mail_transaction_update_modseq()``: the modseq after ``rec``."""
    kind = rec.kind
    if modseq == 0:
        # Not tracking yet: only the introduction of the "modseq" extension starts it.
        if kind == T_EXT_INTRO and len(rec.data) >= 20:
            name_size = _U16.unpack_from(rec.data, 18)[0]
            if rec.data[20 : 20 + name_size] == _MODSEQ_EXT.encode():
                return 1
        return 0
    if kind in (T_EXPUNGE, T_EXPUNGE_GUID):
        return modseq + 1 if rec.external else modseq
    if kind in (T_APPEND, T_KEYWORD_UPDATE, T_KEYWORD_RESET, T_ATTRIBUTE_UPDATE):
        return modseq + 1
    if kind == T_FLAG_UPDATE:
        if version < (1, 3):
            return modseq + 1
        data = rec.data
        if any(not _flag_update_is_internal(data, p) for p in range(0, len(data) - 11, 12)):
            return modseq + 1
        return modseq
    if kind == T_MODSEQ_UPDATE:
        for pos in range(0, len(rec.data) - 11, 12):
            low, high = struct.unpack_from("<II", rec.data, pos + 4)
            modseq = max(modseq, (high << 32) | low)
    return modseq


def parse_log(
    data: bytes, *, name: str = "dovecot.index.log", allow_partial_tail: bool = False
) -> TransactionLog:
    """Parse a whole transaction log file.

    Every record is framed and structurally validated, and the running modseq
    is tracked from ``initial_modseq``.

    Args:
        data: The file's bytes.
        name: File name (or path) used in error messages.
        allow_partial_tail: Tolerate an unfinished last record or
            ``BOUNDARY``-framed transaction (a log being written) by ignoring it.
            When false (the default) such a tail is an error.

    Returns:
        The parsed log.

    Raises:
        DovecotIndexError: The file is truncated or damaged.
    """
    header = _parse_log_header(data, name)
    version = (header.major_version, header.minor_version)
    records: list[LogRecord] = []
    modseqs: list[int] = []
    modseq = header.initial_modseq
    pos = header.hdr_size
    size = len(data)
    committed_end = pos  # end of the last fully written BOUNDARY transaction
    committed_count = 0
    committed_modseq = modseq
    boundary_end = 0
    while pos < size:
        if size - pos < 8:
            problem = f"truncated record header ({size - pos} bytes left)"
        else:
            rec_size = _offset_to_uint32(data[pos : pos + 4])
            problem = ""
            if rec_size == 0:
                problem = "unfinished or invalid record size field"
            elif rec_size < 8:
                problem = f"record size {rec_size} too small"
            elif pos + rec_size > size:
                problem = f"record of {rec_size} bytes extends beyond end of file ({size})"
        if problem:
            if allow_partial_tail:
                break
            raise DovecotIndexError(name, pos, problem)
        rec = LogRecord(
            pos, rec_size, _U32.unpack_from(data, pos + 4)[0], data[pos + 8 : pos + rec_size]
        )
        _validate_record(name, rec)
        if rec.kind == T_BOUNDARY:
            tsize = _U32.unpack_from(rec.data, 0)[0]
            if tsize < rec.size:
                raise DovecotIndexError(name, pos, f"BOUNDARY size {tsize} too small")
            if pos + tsize > size:
                if allow_partial_tail:
                    break
                raise DovecotIndexError(
                    name, pos, f"transaction of {tsize} bytes extends beyond end of file ({size})"
                )
            boundary_end = pos + tsize
        modseqs.append(modseq)
        records.append(rec)
        modseq = _update_modseq(rec, modseq, version)
        pos += rec_size
        if pos >= boundary_end:
            if boundary_end and pos > boundary_end:
                raise DovecotIndexError(
                    name, rec.offset, "record crosses the end of its BOUNDARY transaction"
                )
            boundary_end = 0
            committed_end, committed_count, committed_modseq = pos, len(records), modseq
    if allow_partial_tail and pos != committed_end:
        # Roll back to the last complete transaction.
        del records[committed_count:]
        del modseqs[committed_count:]
        pos, modseq = committed_end, committed_modseq
    return TransactionLog(
        name=name,
        header=header,
        records=tuple(records),
        end_offset=pos,
        modseqs=tuple(modseqs),
        highest_modseq=modseq,
        partial_tail=size - pos,
    )


# --------------------------------------------------------------------------- index file parsing


def parse_index_header(data: bytes, *, name: str = "dovecot.index") -> IndexHeader:
    """Parse and check the base header of a ``dovecot.index`` file.

    Args:
        data: The file's bytes (at least the header).
        name: File name used in error messages.

    Returns:
        The header.

    Raises:
        DovecotIndexError: Not a usable version 7 little-endian index header.
    """
    if len(data) < _INDEX_BASE_HEADER_MIN:
        raise DovecotIndexError(
            name, 0, f"file too short for an index header ({len(data)} < 120 bytes)"
        )
    hdr = _header_from_bytes(data)
    if hdr.major_version != _INDEX_MAJOR_VERSION:
        raise DovecotIndexError(name, 0, f"unsupported index major version {hdr.major_version}")
    if hdr.compat_flags != _COMPAT_LITTLE_ENDIAN:
        raise DovecotIndexError(
            name, 12, f"unsupported compat flags 0x{hdr.compat_flags:x} (not little-endian)"
        )
    if hdr.flags & _HDR_FLAG_CORRUPTED:
        raise DovecotIndexError(name, 20, "index is marked corrupted")
    if hdr.base_header_size < _INDEX_BASE_HEADER_MIN or hdr.header_size < hdr.base_header_size:
        raise DovecotIndexError(
            name, 2, f"bad header sizes (base {hdr.base_header_size}, full {hdr.header_size})"
        )
    if hdr.header_size > len(data):
        raise DovecotIndexError(
            name, 4, f"header size {hdr.header_size} larger than the file ({len(data)})"
        )
    if hdr.record_size < _INDEX_RECORD_MIN:
        raise DovecotIndexError(name, 8, f"record size {hdr.record_size} too small")
    if hdr.next_uid == 0:
        raise DovecotIndexError(name, _OFF_NEXT_UID, "next_uid is 0")
    return hdr


def _header_from_bytes(base: bytes | bytearray) -> IndexHeader:
    (
        major,
        minor,
        base_size,
        header_size,
        record_size,
        compat,
        indexid,
        flags,
        uid_validity,
        next_uid,
        messages,
        _old_recent,
        seen,
        deleted,
        first_recent,
        first_unseen,
        first_deleted,
        log_seq,
        log_tail,
        log_head,
        _old_sync_size,
        log2_rotate,
        last_temp_scan,
        day_stamp,
        *_day_first,
    ) = _HDR_STRUCT.unpack_from(base, 0)
    return IndexHeader(
        major_version=major,
        minor_version=minor,
        base_header_size=base_size,
        header_size=header_size,
        record_size=record_size,
        compat_flags=compat,
        indexid=indexid,
        flags=flags,
        uid_validity=uid_validity,
        next_uid=next_uid,
        messages_count=messages,
        seen_messages_count=seen,
        deleted_messages_count=deleted,
        first_recent_uid=first_recent,
        first_unseen_uid_lowwater=first_unseen,
        first_deleted_uid_lowwater=first_deleted,
        log_file_seq=log_seq,
        log_file_tail_offset=log_tail,
        log_file_head_offset=log_head,
        log2_rotate_time=log2_rotate,
        last_temp_file_scan=last_temp_scan,
        day_stamp=day_stamp,
    )


# --------------------------------------------------------------------------- the mutable map


class _Ext:
    __slots__ = ("hdr", "hdr_size", "name", "record_align", "record_size", "reset_id")

    def __init__(
        self, name: str, reset_id: int, hdr_size: int, record_size: int, record_align: int
    ) -> None:
        self.name = name
        self.reset_id = reset_id
        self.hdr_size = hdr_size
        self.hdr = bytearray(_align(hdr_size, 8))
        self.record_size = record_size
        self.record_align = record_align


class _Rec:
    __slots__ = ("ext", "flags", "keywords", "uid")

    def __init__(self, uid: int, flags: int) -> None:
        self.uid = uid
        self.flags = flags
        self.ext: dict[int, bytearray] = {}
        self.keywords: set[int] = set()


def _valid_ext_name(name: str) -> bool:
    """``mail_index_ext_name_is_valid()``: alphanumerics, ``-``, ``_`` and space."""
    return 0 < len(name) < _EXT_NAME_MAX and all(
        c.isascii() and (c.isalnum() or c in "-_ ") for c in name
    )


class _Map:
    """The in-memory index map the log is replayed onto."""

    def __init__(self, base: bytearray) -> None:
        self.base = base
        self.exts: list[_Ext] = []
        self.recs: dict[int, _Rec] = {}
        self.keywords: list[str] = []
        self.deleted = False
        self.warnings: list[str] = []

    # -- base header fields
    def get_u32(self, offset: int) -> int:
        value: int = _U32.unpack_from(self.base, offset)[0]
        return value

    def set_u32(self, offset: int, value: int) -> None:
        _U32.pack_into(self.base, offset, value)

    @property
    def next_uid(self) -> int:
        return self.get_u32(_OFF_NEXT_UID)

    def ext_index(self, name: str) -> int | None:
        for idx, ext in enumerate(self.exts):
            if ext.name == name:
                return idx
        return None

    def add_ext(self, ext: _Ext) -> int:
        self.exts.append(ext)
        idx = len(self.exts) - 1
        if ext.record_size and ext.name != _KEYWORDS_EXT:
            for rec in self.recs.values():
                rec.ext[idx] = bytearray(ext.record_size)
        return idx

    def uid_range(self, uid1: int, uid2: int) -> Iterator[_Rec]:
        """Existing records with uid1 <= uid <= uid2 (take a list() before deleting)."""
        if uid2 - uid1 < len(self.recs):
            for uid in range(uid1, uid2 + 1):
                rec = self.recs.get(uid)
                if rec is not None:
                    yield rec
        else:
            for rec in self.recs.values():
                if uid1 <= rec.uid <= uid2:
                    yield rec


def _new_map(indexid: int) -> _Map:
    """An empty map, as ``mail_index_header_init()`` creates it."""
    base = bytearray(_INDEX_BASE_HEADER_MIN)
    base[0], base[1] = _INDEX_MAJOR_VERSION, 3
    _U16.pack_into(base, 2, _INDEX_BASE_HEADER_MIN)
    _U32.pack_into(base, 4, _INDEX_BASE_HEADER_MIN)
    _U32.pack_into(base, 8, _INDEX_RECORD_MIN)
    base[12] = _COMPAT_LITTLE_ENDIAN
    _U32.pack_into(base, 16, indexid)
    _U32.pack_into(base, _OFF_NEXT_UID, 1)
    _U32.pack_into(base, 48, 1)  # first_recent_uid
    return _Map(base)


def _load_index(data: bytes, name: str) -> tuple[IndexHeader, _Map]:
    """Parse a ``dovecot.index`` file into a map."""
    hdr = parse_index_header(data, name=name)
    imap = _Map(bytearray(data[: hdr.base_header_size]))
    kw_hdr: bytes | None = None
    kw_idx: int | None = None
    offsets: list[tuple[int, int]] = []  # (record_offset, record_size) per ext
    pos = _align(hdr.base_header_size, 8)
    while pos < hdr.header_size:
        if pos + 16 > hdr.header_size:
            raise DovecotIndexError(name, pos, "extension header goes outside the header")
        hdr_size, reset_id, rec_off, rec_size, rec_align, name_size = struct.unpack_from(
            "<IIHHHH", data, pos
        )
        name_end = pos + 16 + name_size
        data_off = _align(name_end, 8)
        if name_end > hdr.header_size or data_off + hdr_size > hdr.header_size:
            raise DovecotIndexError(name, pos, "extension goes outside the header")
        try:
            ext_name = data[pos + 16 : name_end].decode("ascii")
        except UnicodeDecodeError:
            raise DovecotIndexError(name, pos, "extension name is not ASCII") from None
        _check_ext_shape(name, pos, ext_name, hdr_size, rec_size, rec_align)
        if rec_size and (
            rec_off < 5 or rec_off + rec_size > hdr.record_size or rec_off % rec_align
        ):
            raise DovecotIndexError(
                name, pos, f"extension {ext_name!r}: record field outside the record"
            )
        if imap.ext_index(ext_name) is not None:
            raise DovecotIndexError(name, pos, f"duplicate extension {ext_name!r}")
        ext = _Ext(ext_name, reset_id, hdr_size, rec_size, rec_align)
        ext.hdr[:hdr_size] = data[data_off : data_off + hdr_size]
        imap.exts.append(ext)
        offsets.append((rec_off, rec_size))
        if ext_name == _KEYWORDS_EXT:
            kw_idx, kw_hdr = len(imap.exts) - 1, bytes(ext.hdr[:hdr_size])
        pos = _align(data_off + hdr_size, 8)
    if kw_hdr is not None:
        imap.keywords = _parse_keyword_header(kw_hdr, name)
    end = hdr.header_size + hdr.messages_count * hdr.record_size
    if end > len(data):
        raise DovecotIndexError(
            name,
            len(data),
            f"file truncated: {hdr.messages_count} records of {hdr.record_size} bytes "
            f"need {end} bytes, have {len(data)}",
        )
    prev_uid = 0
    for seq in range(hdr.messages_count):
        rpos = hdr.header_size + seq * hdr.record_size
        uid, flags = struct.unpack_from("<IB", data, rpos)
        if uid <= prev_uid:
            raise DovecotIndexError(name, rpos, f"record UIDs not ascending ({prev_uid}, {uid})")
        if uid >= hdr.next_uid:
            raise DovecotIndexError(name, rpos, f"record uid {uid} >= next_uid {hdr.next_uid}")
        prev_uid = uid
        rec = _Rec(uid, flags)
        for idx, (rec_off, rec_size) in enumerate(offsets):
            if not rec_size:
                continue
            field = data[rpos + rec_off : rpos + rec_off + rec_size]
            if idx == kw_idx:
                rec.keywords = _keyword_bits(field, len(imap.keywords))
            else:
                rec.ext[idx] = bytearray(field)
        imap.recs[uid] = rec
    return hdr, imap


def _check_ext_shape(
    name: str, pos: int, ext_name: str, hdr_size: int, rec_size: int, rec_align: int
) -> None:
    """``mail_index_map_ext_hdr_check()``."""
    if not _valid_ext_name(ext_name):
        raise DovecotIndexError(name, pos, f"invalid extension name {ext_name!r}")
    if (rec_size == 0 and hdr_size == 0) or (rec_size and rec_align == 0):
        raise DovecotIndexError(
            name,
            pos,
            f"extension {ext_name!r}: invalid sizes (header {hdr_size}, "
            f"record {rec_size}, align {rec_align})",
        )
    if hdr_size > _EXT_HEADER_MAX:
        raise DovecotIndexError(name, pos, f"extension {ext_name!r}: header too large")


def _keyword_bits(field: bytes, count: int) -> set[int]:
    bits = int.from_bytes(field, "little")
    return {i for i in range(min(count, len(field) * 8)) if bits >> i & 1}


def _parse_keyword_header(hdr: bytes, name: str) -> list[str]:
    """``struct mail_index_keyword_header`` + records + NUL-terminated names."""
    if not hdr:
        return []
    if len(hdr) < 4:
        raise DovecotIndexError(name, None, "keywords header too short")
    count = _U32.unpack_from(hdr, 0)[0]
    names_at = 4 + 8 * count
    if names_at > len(hdr):
        raise DovecotIndexError(name, None, "keywords_count larger than header size")
    keywords: list[str] = []
    for i in range(count):
        name_offset = _U32.unpack_from(hdr, 4 + 8 * i + 4)[0]
        start = names_at + name_offset
        end = hdr.find(b"\0", start)
        if start >= len(hdr) or end < 0:
            raise DovecotIndexError(name, None, "keyword name outside the keywords header")
        keywords.append(_decode_keyword(hdr[start:end], name, None))
    return keywords


def _keyword_header_bytes(keywords: Sequence[str]) -> bytes:
    """Serialize a keywords extension header (without the growth padding)."""
    names = b"".join(k.encode("utf-8") + b"\0" for k in keywords)
    out = bytearray(_U32.pack(len(keywords)))
    offset = 0
    for k in keywords:
        out += struct.pack("<II", 0, offset)
        offset += len(k.encode("utf-8")) + 1
    out += names
    return bytes(out.ljust(_align(len(out), 4), b"\0"))


def _decode_keyword(raw: bytes, name: str, offset: int | None) -> str:
    if not raw:
        raise DovecotIndexError(name, offset, "empty keyword name")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DovecotIndexError(name, offset, f"keyword name {raw!r} is not UTF-8") from None


# --------------------------------------------------------------------------- replay


class _Replayer:
    """Applies log records to a map like ``mail_index_sync_record()``."""

    def __init__(self, imap: _Map) -> None:
        self.map = imap
        self.cur_ext: int | None = None  # None: no intro seen yet
        self.cur_ext_ignore = False
        self.name = ""

    def fail(self, rec: LogRecord, reason: str) -> DovecotIndexError:
        return DovecotIndexError(self.name, rec.offset, f"{rec.kind_name}: {reason}")

    def apply(self, rec: LogRecord) -> None:
        kind = rec.kind
        data = rec.data
        try:
            if kind == T_APPEND:
                self._append(rec)
            elif kind in (T_EXPUNGE, T_EXPUNGE_GUID):
                if rec.external:
                    step = 8 if kind == T_EXPUNGE else 20
                    for pos in range(0, len(data), step):
                        uid1 = _U32.unpack_from(data, pos)[0]
                        uid2 = _U32.unpack_from(data, pos + 4)[0] if kind == T_EXPUNGE else uid1
                        for r in list(self.map.uid_range(uid1, uid2)):
                            del self.map.recs[r.uid]
            elif kind == T_FLAG_UPDATE:
                for pos in range(0, len(data), 12):
                    uid1, uid2, add, remove = struct.unpack_from("<IIBB", data, pos)
                    for r in self.map.uid_range(uid1, uid2):
                        r.flags = (r.flags & ~remove & 0xFF) | add
            elif kind == T_HEADER_UPDATE:
                self._header_update(rec)
            elif kind == T_EXT_INTRO:
                self._ext_intro(rec)
            elif kind == T_EXT_RESET:
                self._ext_reset(rec)
            elif kind in (T_EXT_HDR_UPDATE, T_EXT_HDR_UPDATE32):
                self._ext_hdr_update(rec)
            elif kind == T_EXT_REC_UPDATE:
                self._ext_rec_update(rec)
            elif kind == T_EXT_ATOMIC_INC:
                self._ext_atomic_inc(rec)
            elif kind == T_KEYWORD_UPDATE:
                self._keyword_update(rec)
            elif kind == T_KEYWORD_RESET:
                for pos in range(0, len(data), 8):
                    uid1, uid2 = struct.unpack_from("<II", data, pos)
                    for r in self.map.uid_range(uid1, uid2):
                        r.keywords.clear()
            elif kind == T_MODSEQ_UPDATE:
                self._modseq_update(rec)
            elif kind in (T_INDEX_DELETED, T_INDEX_UNDELETED) and rec.external:
                # Internal ones are requests; log_file_track_sync() acts on external ones.
                self.map.deleted = kind == T_INDEX_DELETED
            # BOUNDARY and ATTRIBUTE_UPDATE carry nothing for the map.
        except struct.error as exc:
            raise self.fail(rec, f"payload too short ({exc})") from None

    def _append(self, rec: LogRecord) -> None:
        m = self.map
        for pos in range(0, len(rec.data), _INDEX_RECORD_MIN):
            uid, flags = struct.unpack_from("<IB", rec.data, pos)
            if uid == 0 or uid < m.next_uid:
                raise self.fail(rec, f"append with UID {uid}, but next_uid = {m.next_uid}")
            new = _Rec(uid, flags)
            for idx, ext in enumerate(m.exts):
                if ext.record_size and ext.name != _KEYWORDS_EXT:
                    new.ext[idx] = bytearray(ext.record_size)
            m.recs[uid] = new
            m.set_u32(_OFF_NEXT_UID, uid + 1)

    def _header_update(self, rec: LogRecord) -> None:
        m = self.map
        data = rec.data
        pos = 0
        while pos < len(data):
            if pos + 4 > len(data):
                raise self.fail(rec, "truncated header update")
            offset, size = struct.unpack_from("<HH", data, pos)
            if pos + 4 + size > len(data):
                raise self.fail(rec, "header update extends beyond record")
            if offset + size > len(m.base):
                raise self.fail(
                    rec, f"header update outside range: {offset} + {size} > {len(m.base)}"
                )
            old_validity, old_next = m.get_u32(_OFF_UID_VALIDITY), m.next_uid
            m.base[offset : offset + size] = data[pos + 4 : pos + 4 + size]
            if old_validity and offset <= _OFF_UID_VALIDITY < offset + size:
                new_validity = m.get_u32(_OFF_UID_VALIDITY)
                if new_validity != old_validity:
                    m.warnings.append(
                        f"{self.name} at offset {rec.offset}: uid_validity updated "
                        f"unexpectedly: {old_validity} -> {new_validity}"
                    )
            if m.next_uid < old_next:
                m.warnings.append(
                    f"{self.name} at offset {rec.offset}: next_uid shrink ignored: "
                    f"{old_next} -> {m.next_uid}"
                )
                m.set_u32(_OFF_NEXT_UID, old_next)
            pos = _align(pos + 4 + size, 4)

    def _ext_intro(self, rec: LogRecord) -> None:
        m = self.map
        data = rec.data
        pos = 0
        while pos + 20 <= len(data):
            ext_id, reset_id, hdr_size, rec_size, rec_align, flags, name_size = struct.unpack_from(
                "<IIIHHHH", data, pos
            )
            if pos + 20 + name_size > len(data):
                raise self.fail(rec, "name_size too large")
            self.cur_ext, self.cur_ext_ignore = None, True
            idx: int | None
            if ext_id != _EXT_ID_NEW:
                if ext_id >= len(m.exts):
                    raise self.fail(rec, f"introduction for unknown extension id {ext_id}")
                idx, ext_name = ext_id, m.exts[ext_id].name
            elif name_size == 0:
                raise self.fail(rec, "introduction without id or name")
            else:
                raw = data[pos + 20 : pos + 20 + name_size]
                try:
                    ext_name = raw.decode("ascii")
                except UnicodeDecodeError:
                    raise self.fail(rec, f"extension name {raw!r} is not ASCII") from None
                idx = m.ext_index(ext_name)
            if ext_name == _KEYWORDS_EXT:
                raise self.fail(rec, "introduction for the keywords extension")
            try:
                _check_ext_shape(self.name, rec.offset, ext_name, hdr_size, rec_size, rec_align)
            except DovecotIndexError as exc:
                raise self.fail(rec, exc.reason) from None
            if idx is None:
                idx = m.add_ext(_Ext(ext_name, reset_id, hdr_size, rec_size, rec_align))
                self.cur_ext_ignore = False
            elif m.exts[idx].reset_id == reset_id:
                self._resize(idx, hdr_size, rec_size, rec_align, bool(flags & _EXT_NO_SHRINK))
                self.cur_ext_ignore = False
            # else: the writer had not seen a later reset; ignore its updates.
            self.cur_ext = idx
            pos = _align(pos + 20 + name_size, 4)

    def _resize(
        self, idx: int, hdr_size: int, rec_size: int, rec_align: int, no_shrink: bool
    ) -> None:
        """``sync_ext_resize()``: grow (or, without NO_SHRINK, shrink) an extension."""
        ext = self.map.exts[idx]
        old_aligned, new_aligned = _align(ext.hdr_size, 8), _align(hdr_size, 8)
        if new_aligned > old_aligned or (new_aligned < old_aligned and not no_shrink):
            ext.hdr_size = hdr_size
            ext.hdr = ext.hdr[:new_aligned].ljust(new_aligned, b"\0")
        if ext.record_align < rec_align or (ext.record_align > rec_align and not no_shrink):
            ext.record_align = rec_align
        if ext.record_size < rec_size or (ext.record_size > rec_size and not no_shrink):
            ext.record_size = rec_size
            if ext.name == _KEYWORDS_EXT:
                return
            for r in self.map.recs.values():
                old = r.ext.get(idx, bytearray())
                r.ext[idx] = bytearray(old[:rec_size].ljust(rec_size, b"\0"))

    def _current_ext(self, rec: LogRecord) -> _Ext | None:
        """The introduced extension, ``None`` if its updates are to be ignored."""
        if self.cur_ext is None:
            if self.cur_ext_ignore:
                raise self.fail(rec, "update after a broken extension introduction")
            raise self.fail(rec, "extension updated without an introduction")
        return None if self.cur_ext_ignore else self.map.exts[self.cur_ext]

    def _ext_reset(self, rec: LogRecord) -> None:
        if self.cur_ext is None:
            raise self.fail(rec, "reset without an extension introduction")
        if len(rec.data) < 4:
            raise self.fail(rec, "invalid record size")
        ext = self.map.exts[self.cur_ext]
        ext.reset_id = _U32.unpack_from(rec.data, 0)[0]
        preserve = len(rec.data) > 4 and rec.data[4] != 0
        if not preserve:
            ext.hdr = bytearray(len(ext.hdr))
            for r in self.map.recs.values():
                if self.cur_ext in r.ext:
                    r.ext[self.cur_ext] = bytearray(ext.record_size)
        # A reset is applied even to a stale intro; later updates are then current.
        self.cur_ext_ignore = False

    def _ext_hdr_update(self, rec: LogRecord) -> None:
        ext = self._current_ext(rec)
        data = rec.data
        wide = rec.kind == T_EXT_HDR_UPDATE32
        fmt, head = ("<II", 8) if wide else ("<HH", 4)
        pos = 0
        while pos < len(data):
            if pos + head > len(data):
                raise self.fail(rec, "truncated update")
            offset, size = struct.unpack_from(fmt, data, pos)
            if pos + head + size > len(data):
                raise self.fail(rec, "update extends beyond record")
            if ext is not None:
                if offset + size > len(ext.hdr):
                    raise self.fail(
                        rec, f"update of {ext.name!r} points outside its header ({offset}+{size})"
                    )
                ext.hdr[offset : offset + size] = data[pos + head : pos + head + size]
            pos = _align(pos + head + size, 4)

    def _ext_rec_update(self, rec: LogRecord) -> None:
        ext = self._current_ext(rec)
        if ext is None:
            return
        assert self.cur_ext is not None
        idx = self.cur_ext
        step = _align(4 + ext.record_size, 4)
        data = rec.data
        if len(data) % step:
            raise self.fail(rec, f"invalid record size for {ext.name!r}")
        for pos in range(0, len(data), step):
            uid = _U32.unpack_from(data, pos)[0]
            if uid == 0 or uid >= self.map.next_uid:
                raise self.fail(rec, f"{ext.name!r} update for invalid uid {uid}")
            r = self.map.recs.get(uid)
            if r is not None:
                r.ext[idx] = bytearray(data[pos + 4 : pos + 4 + ext.record_size])

    def _ext_atomic_inc(self, rec: LogRecord) -> None:
        ext = self._current_ext(rec)
        if ext is None:
            return
        assert self.cur_ext is not None
        idx = self.cur_ext
        if ext.record_size not in (1, 2, 4, 8):
            raise self.fail(rec, f"{ext.name!r} has record size {ext.record_size}")
        limit = 1 << (8 * ext.record_size)
        for pos in range(0, len(rec.data), 8):
            uid, diff = struct.unpack_from("<Ii", rec.data, pos)
            if uid == 0 or uid >= self.map.next_uid:
                raise self.fail(rec, f"{ext.name!r} increment for invalid uid {uid}")
            r = self.map.recs.get(uid)
            if r is None:
                continue
            value = int.from_bytes(r.ext[idx], "little") + diff
            if not 0 <= value < limit:
                raise self.fail(
                    rec, f"{ext.name!r} of uid {uid} would become {value} (diff {diff})"
                )
            r.ext[idx] = bytearray(value.to_bytes(ext.record_size, "little"))

    def _keyword_update(self, rec: LogRecord) -> None:
        m = self.map
        modify_type, raw_name, seqset = _keyword_payload(self.name, rec)
        if modify_type not in (_MODIFY_ADD, _MODIFY_REMOVE):
            raise self.fail(rec, f"invalid modify type {modify_type}")
        keyword = _decode_keyword(raw_name, self.name, rec.offset)
        try:
            kw_idx = m.keywords.index(keyword)
        except ValueError:
            # keywords_header_add(): an unknown keyword is added (even by a
            # removal), creating the "keywords" extension on first use.
            kw_idx = self._add_keyword(keyword)
        data = rec.data
        for pos in range(seqset, len(data), 8):
            uid1, uid2 = struct.unpack_from("<II", data, pos)
            for r in m.uid_range(uid1, uid2):
                if modify_type == _MODIFY_ADD:
                    r.keywords.add(kw_idx)
                else:
                    r.keywords.discard(kw_idx)

    def _add_keyword(self, keyword: str) -> int:
        """``keywords_header_add()``: append a name, growing the extension as Dovecot does."""
        m = self.map
        m.keywords.append(keyword)
        count = len(m.keywords)
        buf = _keyword_header_bytes(m.keywords)
        idx = m.ext_index(_KEYWORDS_EXT)
        ext = m.exts[idx] if idx is not None else None
        if ext is None or len(buf) > ext.hdr_size or ext.record_size * 8 < count:
            buf += bytes(128)  # room to grow
            rec_size = (count + 7) // 8
            if rec_size % 4:
                rec_size += 1  # "reserve one extra byte for future"
            if ext is None or idx is None:
                idx = m.add_ext(_Ext(_KEYWORDS_EXT, 0, len(buf), rec_size, 1))
            else:
                self._resize(idx, len(buf), rec_size, 1, no_shrink=False)
            ext = m.exts[idx]
        ext.hdr[: len(buf)] = buf
        return count - 1

    def _modseq_update(self, rec: LogRecord) -> None:
        idx = self.map.ext_index(_MODSEQ_EXT)
        if idx is None or self.map.exts[idx].record_size != 8:
            return
        for pos in range(0, len(rec.data), 12):
            uid, low, high = struct.unpack_from("<III", rec.data, pos)
            r = self.map.recs.get(uid)
            if r is None:
                continue
            new = (high << 32) | low
            if new > int.from_bytes(r.ext[idx], "little"):
                r.ext[idx] = bytearray(new.to_bytes(8, "little"))


def _finish(
    imap: _Map,
    *,
    highest_modseq: int,
    log_file_seq: int,
    log_offset: int,
    source: Literal["index+log", "log", "index"],
) -> IndexState:
    """Freeze a map into an :class:`IndexState`."""
    recs = sorted(imap.recs.values(), key=lambda r: r.uid)
    seen = sum(1 for r in recs if r.flags & FLAG_SEEN)
    deleted = sum(1 for r in recs if r.flags & FLAG_DELETED)
    base = bytearray(imap.base[:_INDEX_BASE_HEADER_MIN])
    _U32.pack_into(base, 32, len(recs))
    _U32.pack_into(base, 40, seen)
    _U32.pack_into(base, 44, deleted)
    if log_file_seq:
        _U32.pack_into(base, 60, log_file_seq)
        _U32.pack_into(base, 68, log_offset)
    header = _header_from_bytes(base)
    names = {idx: ext.name for idx, ext in enumerate(imap.exts)}
    records = tuple(
        IndexRecord(
            uid=r.uid,
            flags=r.flags,
            keywords=tuple(imap.keywords[i] for i in sorted(r.keywords)),
            ext=tuple((names[i], bytes(v)) for i, v in sorted(r.ext.items())),
        )
        for r in recs
    )
    extensions = tuple(
        IndexExtension(
            name=ext.name,
            reset_id=ext.reset_id,
            header=bytes(ext.hdr[: ext.hdr_size]),
            record_size=ext.record_size,
            record_align=ext.record_align,
        )
        for ext in imap.exts
    )
    modseq_ext = next((e for e in extensions if e.name == _MODSEQ_EXT), None)
    if modseq_ext is not None and len(modseq_ext.header) >= 8:
        highest_modseq = max(highest_modseq, struct.unpack_from("<Q", modseq_ext.header)[0])
    return IndexState(
        header=header,
        extensions=extensions,
        keywords=tuple(imap.keywords),
        records=records,
        highest_modseq=highest_modseq,
        log_file_seq=log_file_seq,
        log_offset=log_offset,
        source=source,
        deleted=imap.deleted,
        warnings=tuple(imap.warnings),
    )


def replay_index(
    index: bytes | None,
    log: bytes | None,
    *,
    log2: bytes | None = None,
    name: str = "dovecot.index",
    allow_partial_tail: bool = False,
) -> IndexState:
    """Load an index file (if any) and replay its transaction log(s) onto it.

    This is the generic engine; :func:`read_mailbox_index` and
    :func:`read_mdbox_map` interpret the result.

    Args:
        index: Contents of ``<name>`` (``dovecot.index``), or ``None`` if absent.
        log: Contents of ``<name>.log``, or ``None`` if absent.
        log2: Contents of the rotated ``<name>.log.2``, if present.  It is only
            read when the index (or a log-only replay) needs it.
        name: The index file's name or path; the logs are called
            ``<name>.log`` and ``<name>.log.2`` in messages.
        allow_partial_tail: See :func:`parse_log`.

    Returns:
        The synced map.

    Raises:
        DovecotIndexError: A file is damaged, or the files do not fit together
            (the log the index points into is missing, or belongs to another index).
    """
    log_name, log2_name = f"{name}.log", f"{name}.log.2"
    if index is None and log is None:
        raise DovecotIndexError(name, None, "neither the index nor its transaction log exists")
    loaded = _load_index(index, name) if index is not None else None
    head = parse_log(log, name=log_name, allow_partial_tail=allow_partial_tail) if log else None
    if log is not None and head is None:
        raise DovecotIndexError(log_name, 0, "file is empty")
    older: TransactionLog | None = None
    if log2 is not None and head is not None:
        older = parse_log(log2, name=log2_name, allow_partial_tail=False)
        if older.header.file_seq >= head.header.file_seq:
            raise DovecotIndexError(
                log2_name,
                8,
                f"file_seq {older.header.file_seq} is not older than "
                f"{log_name}'s {head.header.file_seq}",
            )
        if older.header.indexid != head.header.indexid:
            older = None  # a leftover of an index that was since recreated
        elif (
            head.header.prev_file_seq == older.header.file_seq
            and head.header.prev_file_offset != older.end_offset
        ):
            raise DovecotIndexError(
                log2_name,
                older.end_offset,
                f"file ends at {older.end_offset} but {log_name} says the previous "
                f"log ended at {head.header.prev_file_offset}",
            )
    # Which (log, start offset) pairs to replay, and onto what.
    plan: list[tuple[TransactionLog, int]] = []
    source: Literal["index+log", "log", "index"]
    if loaded is not None:
        hdr, imap = loaded
        source = "index+log"
        if head is None:
            return _finish(imap, highest_modseq=0, log_file_seq=0, log_offset=0, source="index")
        for lg in (older, head):
            if lg is not None and lg.header.indexid != hdr.indexid:
                raise DovecotIndexError(
                    lg.name,
                    4,
                    f"log belongs to another index (indexid {lg.header.indexid}, "
                    f"{name} has {hdr.indexid})",
                )
        seq, offset = hdr.log_file_seq, hdr.log_file_head_offset
        hh = head.header
        if seq == hh.file_seq:
            if hh.prev_file_seq == 0 and offset == hh.hdr_size:
                imap, source = _new_map(hdr.indexid), "log"
            plan.append((head, offset))
        elif hh.prev_file_seq == seq and offset == hh.prev_file_offset:
            plan.append((head, hh.hdr_size))
        elif older is not None and older.header.file_seq == seq and hh.prev_file_seq == seq:
            plan += [(older, offset), (head, hh.hdr_size)]
        elif hh.prev_file_seq == 0 and seq < hh.file_seq:
            imap, source = _new_map(hdr.indexid), "log"
            imap.warnings.append(f"{log_name} resets the index; {name} (log seq {seq}) ignored")
            plan.append((head, hh.hdr_size))
        else:
            raise DovecotIndexError(
                name,
                60,
                f"index was synced to log seq {seq} offset {offset}, which is not available "
                f"({log_name} has seq {hh.file_seq}, previous seq {hh.prev_file_seq})",
            )
    else:
        assert head is not None
        source = "log"
        imap = _new_map(head.header.indexid)
        if head.header.prev_file_seq == 0:
            plan.append((head, head.header.hdr_size))
        elif (
            older is not None
            and older.header.prev_file_seq == 0
            and head.header.prev_file_seq == older.header.file_seq
        ):
            plan += [(older, older.header.hdr_size), (head, head.header.hdr_size)]
        else:
            raise DovecotIndexError(
                log_name,
                12,
                f"no index file, and the log does not start the index "
                f"(prev_file_seq {head.header.prev_file_seq}; its predecessor is missing)",
            )
    replayer = _Replayer(imap)
    for lg, start in plan:
        if not lg.header.hdr_size <= start <= lg.end_offset:
            raise DovecotIndexError(
                name,
                68,
                f"index points to offset {start} of {lg.name}, outside its records "
                f"({lg.header.hdr_size}..{lg.end_offset})",
            )
        replayer.name = lg.name
        started = False
        for rec in lg.records:
            if rec.offset < start:
                continue
            if not started and rec.offset != start:
                raise DovecotIndexError(
                    name, 68, f"index points to offset {start} of {lg.name}, inside a record"
                )
            started = True
            replayer.apply(rec)
    return _finish(
        imap,
        highest_modseq=head.highest_modseq,
        log_file_seq=head.header.file_seq,
        log_offset=head.end_offset,
        source=source,
    )


# --------------------------------------------------------------------------- dbox interpretation


def _guid_hex(raw: bytes) -> str | None:
    return raw.hex() if len(raw) == 16 and any(raw) else None


def read_mailbox_index(
    index: bytes | None,
    log: bytes | None,
    *,
    log2: bytes | None = None,
    name: str = "dovecot.index",
    allow_partial_tail: bool = False,
) -> DovecotMailboxIndex:
    """Read a single-dbox or multi-dbox mailbox's index.

    Args:
        index: ``dbox-Mails/dovecot.index`` contents, or ``None`` if absent.
        log: ``dbox-Mails/dovecot.index.log`` contents, or ``None`` if absent.
        log2: ``dovecot.index.log.2`` contents, if present.
        name: Path of ``dovecot.index`` for messages.
        allow_partial_tail: See :func:`parse_log`.

    Returns:
        UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ and the messages with flags,
        keywords and (mdbox) map UIDs and save dates.

    Raises:
        DovecotIndexError: The files are damaged or do not fit together.
    """
    state = replay_index(index, log, log2=log2, name=name, allow_partial_tail=allow_partial_tail)
    storage: Literal["sdbox", "mdbox"] | None = None
    mailbox_guid: str | None = None
    map_uid_validity: int | None = None
    mdbox_hdr = state.extension("mdbox-hdr")
    sdbox_hdr = state.extension("dbox-hdr")
    if mdbox_hdr is not None and len(mdbox_hdr.header) >= 20:
        storage = "mdbox"
        map_uid_validity = _U32.unpack_from(mdbox_hdr.header, 0)[0]
        mailbox_guid = _guid_hex(mdbox_hdr.header[4:20])
    elif sdbox_hdr is not None and len(sdbox_hdr.header) >= 20:
        storage = "sdbox"
        mailbox_guid = _guid_hex(sdbox_hdr.header[4:20])
    messages: list[DovecotMessage] = []
    for r in state.records:
        mdbox = r.ext_data("mdbox")
        map_uid = save_date = None
        if mdbox is not None and len(mdbox) >= 8:
            map_uid, save_date = struct.unpack_from("<II", mdbox)
            if map_uid == 0:
                raise DovecotIndexError(name, None, f"uid {r.uid} has no mdbox map_uid")
        guid = r.ext_data("guid")
        vsize_raw = r.ext_data("vsize")
        vsize = None
        if vsize_raw is not None and len(vsize_raw) == 4:
            stored = _U32.unpack(vsize_raw)[0]
            vsize = stored - 1 if stored else None  # stored as vsize+1, 0 = unknown
        modseq_raw = r.ext_data(_MODSEQ_EXT)
        modseq = (
            int.from_bytes(modseq_raw, "little") if modseq_raw and len(modseq_raw) == 8 else None
        )
        messages.append(
            DovecotMessage(
                uid=r.uid,
                flags=r.flags & _SYSTEM_FLAGS_MASK,
                keywords=r.keywords,
                map_uid=map_uid,
                save_date=save_date or None,
                guid=_guid_hex(guid) if guid is not None else None,
                vsize=vsize,
                modseq=modseq,
            )
        )
    total_vsize: int | None = None
    hdr_vsize = state.extension("hdr-vsize")
    if hdr_vsize is not None and len(hdr_vsize.header) >= 16:
        vsize_total, highest_uid, count = struct.unpack_from("<QII", hdr_vsize.header)
        last_uid = messages[-1].uid if messages else 0
        if count == len(messages) and highest_uid == last_uid:
            total_vsize = vsize_total
    return DovecotMailboxIndex(
        uidvalidity=state.header.uid_validity,
        uidnext=state.header.next_uid,
        highest_modseq=state.highest_modseq,
        mailbox_guid=mailbox_guid,
        storage=storage,
        map_uid_validity=map_uid_validity,
        vsize=total_vsize,
        messages=tuple(messages),
        keywords=state.keywords,
        deleted=state.deleted,
        warnings=state.warnings,
        state=state,
    )


def read_mdbox_map(
    index: bytes | None,
    log: bytes | None,
    *,
    log2: bytes | None = None,
    name: str = "storage/dovecot.map.index",
    allow_partial_tail: bool = False,
) -> MdboxMap:
    """Read the mdbox map: map UID → storage file, offset, size and refcount.

    Args:
        index: ``storage/dovecot.map.index`` contents, or ``None`` if absent.
        log: ``storage/dovecot.map.index.log`` contents, or ``None`` if absent.
        log2: ``dovecot.map.index.log.2`` contents, if present.
        name: Path of ``dovecot.map.index`` for messages.
        allow_partial_tail: See :func:`parse_log`.

    Returns:
        The map, dead entries (refcount 0) included.

    Raises:
        DovecotIndexError: The files are damaged, or a record has no location.
    """
    state = replay_index(index, log, log2=log2, name=name, allow_partial_tail=allow_partial_tail)
    map_ext = state.extension("map")
    highest_file_id = 0
    if map_ext is not None and len(map_ext.header) >= 4:
        highest_file_id = _U32.unpack_from(map_ext.header, 0)[0]
    entries: list[MdboxMapEntry] = []
    for r in state.records:
        loc = r.ext_data("map")
        if loc is None or len(loc) < 12 or not any(loc):
            raise DovecotIndexError(name, None, f"map uid {r.uid} has no location record")
        file_id, offset, size = struct.unpack_from("<III", loc)
        ref = r.ext_data("ref")
        refcount = int.from_bytes(ref, "little") if ref else 0
        entries.append(MdboxMapEntry(r.uid, file_id, offset, size, refcount))
    return MdboxMap(
        uidvalidity=state.header.uid_validity,
        next_map_uid=state.header.next_uid,
        highest_file_id=highest_file_id,
        entries=tuple(entries),
        warnings=state.warnings,
    )
