"""Sans-IO readers of Dovecot 2.3's mailbox-list metadata.

Theory of operation
===================

A Dovecot mail root (``mail_location = sdbox:~/sdbox`` or ``mdbox:~/mdbox``
with the default ``fs`` layout) describes its folders three ways; an importer
should consult all of them:

``mailboxes/<name>/dbox-Mails/``
    The directory tree is the ground truth for which mailboxes exist (walked by
    :mod:`aiodbox.importers.dovecot_layout`).  Names are *storage names*: the
    hierarchy separator is ``/`` and non-ASCII characters are in IMAP modified
    UTF-7 (``mailbox_list_utf8 = no``, the default) — see :func:`decode_mutf7`.

``dovecot.list.index`` (+ ``.log``)
    The mailbox list index: an ordinary Dovecot index (read with
    :func:`aiodbox.importers.dovecot_index.replay_index`) whose records are tree
    *nodes*.  The ``list`` extension header maps name ids to one hierarchy level's
    name each (``u8 refresh_flag`` then ``{u32 id; char name[]; NUL}`` repeated,
    id 0 ends it, ids unaligned); the ``list`` record extension holds
    ``{u32 name_id; u32 parent_uid; guid[16]; u32 uid_validity}``.  Flags in the
    record's flag byte: ``\\Deleted`` bit = nonexistent, ``\\Draft`` = \\Noselect,
    ``\\Answered`` = \\Noinferiors.  ``msgs`` and ``hmodseq`` record extensions
    cache STATUS values (possibly stale).

``subscriptions``
    ``V\\t2\\n\\n`` then one subscribed name per line, its hierarchy levels
    separated by TAB and each level tab-escaped (``\\x01`` + ``0 1 t r n`` for
    NUL, ``\\x01``, TAB, CR, LF).  A file without that header is version 1: plain
    names using the hierarchy separator.

``dovecot-uidvalidity``
    Eight hex digits: the last UIDVALIDITY handed out to a new mailbox.
"""

from __future__ import annotations

import base64
import struct
from dataclasses import dataclass

from aiodbox.importers.dovecot_index import (
    FLAG_ANSWERED,
    FLAG_DELETED,
    FLAG_DRAFT,
    DovecotIndexError,
    replay_index,
)

__all__ = [
    "MailboxListEntry",
    "decode_mutf7",
    "parse_subscriptions",
    "parse_uidvalidity_file",
    "read_mailbox_list_index",
]

_SUBS_V2_HEADER = b"V\t2\n\n"
_TAB_UNESCAPES = {ord("0"): "\0", ord("1"): "\x01", ord("t"): "\t", ord("r"): "\r", ord("n"): "\n"}


@dataclass(frozen=True, slots=True)
class MailboxListEntry:
    """One node of Dovecot's mailbox list index.

    Attributes:
        name: Full mailbox name, levels joined by the separator, modified
            UTF-7 decoded where valid.
        storage_name: The same name exactly as stored (undecoded).
        uid: The node's UID in the list index (stable per name).
        guid: Mailbox GUID (32 hex digits), ``None`` while unknown or for
            \\Noselect / nonexistent nodes.
        uid_validity: UIDVALIDITY, ``None`` while unknown.
        noselect: The node is only a hierarchy level (``\\Noselect``).
        nonexistent: The node is remembered but does not exist.
        noinferiors: The mailbox cannot have children.
        messages: Cached STATUS MESSAGES (may be stale), if present.
        uidnext: Cached STATUS UIDNEXT (may be stale), if present.
        highest_modseq: Cached HIGHESTMODSEQ (may be stale), if present.
    """

    name: str
    storage_name: str
    uid: int
    guid: str | None
    uid_validity: int | None
    noselect: bool
    nonexistent: bool
    noinferiors: bool
    messages: int | None
    uidnext: int | None
    highest_modseq: int | None


def decode_mutf7(name: str) -> str:
    """Decode an IMAP modified UTF-7 mailbox name (RFC 3501 §5.1.3).

    Args:
        name: The encoded name (printable ASCII; ``&...-`` shifts to base64
            UTF-16BE, ``&-`` is a literal ``&``).

    Returns:
        The Unicode name.

    Raises:
        ValueError: ``name`` is not valid modified UTF-7.
    """
    out: list[str] = []
    i = 0
    while i < len(name):
        ch = name[i]
        if not 0x20 <= ord(ch) <= 0x7E:
            raise ValueError(f"not modified UTF-7: {name!r}")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = name.find("-", i + 1)
        if end < 0:
            raise ValueError(f"unterminated base64 in {name!r}")
        chunk = name[i + 1 : end]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            try:
                raw = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
                text = raw.decode("utf-16-be")
            except (ValueError, UnicodeDecodeError):
                raise ValueError(f"invalid base64 section in {name!r}") from None
            if all(0x20 <= ord(c) <= 0x7E for c in text):
                raise ValueError(f"needlessly encoded ASCII in {name!r}")
            out.append(text)
        i = end + 1
    return "".join(out)


def _maybe_mutf7(name: str) -> str:
    try:
        return decode_mutf7(name)
    except ValueError:
        return name


def _tab_unescape(raw: bytes) -> str:
    out: list[str] = []
    text = raw.decode("utf-8")
    i = 0
    while i < len(text):
        if text[i] == "\x01" and i + 1 < len(text) and ord(text[i + 1]) in _TAB_UNESCAPES:
            out.append(_TAB_UNESCAPES[ord(text[i + 1])])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_subscriptions(
    data: bytes, *, separator: str = "/", name: str = "subscriptions"
) -> tuple[str, ...]:
    """Parse a Dovecot ``subscriptions`` file.

    Args:
        data: The file's bytes.
        separator: The namespace hierarchy separator names are joined with.
        name: File name used in error messages.

    Returns:
        Subscribed mailbox names in file order (storage names: decode them
        with :func:`decode_mutf7` where needed), duplicates and empty lines
        dropped.

    Raises:
        DovecotIndexError: A line is not valid UTF-8.
    """
    version2 = data.startswith(_SUBS_V2_HEADER)
    body = data[len(_SUBS_V2_HEADER) :] if version2 else data
    names: list[str] = []
    offset = len(data) - len(body)
    for line in body.split(b"\n"):
        try:
            if version2:
                mailbox = separator.join(_tab_unescape(level) for level in line.split(b"\t"))
            else:
                mailbox = line.decode("utf-8")
        except UnicodeDecodeError:
            raise DovecotIndexError(name, offset, "subscription is not UTF-8") from None
        offset += len(line) + 1
        if line and mailbox not in names:
            names.append(mailbox)
    return tuple(names)


def parse_uidvalidity_file(data: bytes, *, name: str = "dovecot-uidvalidity") -> int:
    """Parse ``dovecot-uidvalidity``: the last UIDVALIDITY handed out.

    Args:
        data: The file's bytes (hex digits, optionally followed by a newline).
        name: File name used in error messages.

    Returns:
        The value.

    Raises:
        DovecotIndexError: The file does not hold a hex number.
    """
    text = data.strip()
    try:
        if not text or len(text) > 8:
            raise ValueError
        return int(text.decode("ascii"), 16)
    except (ValueError, UnicodeDecodeError):
        raise DovecotIndexError(name, 0, f"not a hex UIDVALIDITY: {data[:16]!r}") from None


def _parse_list_names(hdr: bytes, name: str) -> dict[int, str]:
    names: dict[int, str] = {}
    pos = 1  # refresh_flag
    while pos + 4 <= len(hdr):
        name_id = struct.unpack_from("<I", hdr, pos)[0]
        pos += 4
        if name_id == 0:
            break
        end = hdr.find(b"\0", pos)
        if end < 0:
            raise DovecotIndexError(name, None, f"list index name {name_id} not terminated")
        try:
            names[name_id] = hdr[pos:end].decode("utf-8")
        except UnicodeDecodeError:
            raise DovecotIndexError(name, None, f"list index name {name_id} is not UTF-8") from None
        pos = end + 1
    return names


def read_mailbox_list_index(
    index: bytes | None,
    log: bytes | None,
    *,
    log2: bytes | None = None,
    name: str = "dovecot.list.index",
    separator: str = "/",
    allow_partial_tail: bool = False,
) -> tuple[MailboxListEntry, ...]:
    """Read Dovecot's mailbox list index (``dovecot.list.index`` + log).

    Args:
        index: ``dovecot.list.index`` contents, or ``None`` if absent.
        log: ``dovecot.list.index.log`` contents, or ``None`` if absent.
        log2: ``dovecot.list.index.log.2`` contents, if present.
        name: Path of ``dovecot.list.index`` for messages.
        separator: Hierarchy separator to join levels with.
        allow_partial_tail: See :func:`aiodbox.importers.dovecot_index.parse_log`.

    Returns:
        All nodes, sorted by name.

    Raises:
        DovecotIndexError: The files are damaged, or a node's name or parent is
            missing (a cycle included).
    """
    state = replay_index(index, log, log2=log2, name=name, allow_partial_tail=allow_partial_tail)
    list_ext = state.extension("list")
    if list_ext is None:
        if state.records:
            raise DovecotIndexError(name, None, "list index has records but no 'list' extension")
        return ()
    names = _parse_list_names(list_ext.header, name)
    nodes: dict[int, tuple[int, int, bytes, int]] = {}
    for rec in state.records:
        raw = rec.ext_data("list") or b""
        if len(raw) < 28:
            raise DovecotIndexError(name, None, f"list node {rec.uid} has no 'list' record")
        name_id, parent_uid = struct.unpack_from("<II", raw)
        uid_validity = struct.unpack_from("<I", raw, 24)[0]
        nodes[rec.uid] = (name_id, parent_uid, raw[8:24], uid_validity)

    def full_name(uid: int) -> str:
        levels: list[str] = []
        seen: set[int] = set()
        while uid:
            if uid in seen or uid not in nodes:
                raise DovecotIndexError(name, None, f"list node {uid}: broken parent chain")
            seen.add(uid)
            name_id, parent, _, _ = nodes[uid]
            if name_id not in names:
                raise DovecotIndexError(name, None, f"list node {uid}: unknown name id {name_id}")
            levels.append(names[name_id])
            uid = parent
        return separator.join(reversed(levels))

    entries: list[MailboxListEntry] = []
    for rec in state.records:
        _, _, guid, uid_validity = nodes[rec.uid]
        storage_name = full_name(rec.uid)
        msgs = rec.ext_data("msgs")
        hmodseq = rec.ext_data("hmodseq")
        messages = uidnext = highest_modseq = None
        if msgs is not None and len(msgs) >= 16 and any(msgs):
            messages, _, _, uidnext = struct.unpack_from("<IIII", msgs)
        if hmodseq is not None and len(hmodseq) == 8 and any(hmodseq):
            highest_modseq = struct.unpack("<Q", hmodseq)[0]
        entries.append(
            MailboxListEntry(
                name=separator.join(_maybe_mutf7(p) for p in storage_name.split(separator)),
                storage_name=storage_name,
                uid=rec.uid,
                guid=guid.hex() if any(guid) else None,
                uid_validity=uid_validity or None,
                noselect=bool(rec.flags & FLAG_DRAFT),
                nonexistent=bool(rec.flags & FLAG_DELETED),
                noinferiors=bool(rec.flags & FLAG_ANSWERED),
                messages=messages,
                uidnext=uidnext,
                highest_modseq=highest_modseq,
            )
        )
    return tuple(sorted(entries, key=lambda e: e.name))
