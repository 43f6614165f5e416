"""Response encoder: bytes for the server to send (RFC 3501 §7 and the extensions).

Every function returns complete ``bytes`` ending in CRLF, except the FETCH pieces meant
for streaming (:func:`fetch_open`, :func:`fetch_literal_header`, :func:`fetch_close`).
Free text is sanitised (:func:`sanitize_text`): it can never carry CR or LF into the
stream.  Structured tokens (flags, capability names, tags, code names) that would need
sanitising are refused with :class:`LocalProtocolError`: they come from our own code, so
a bad one is a bug.  Strings go through :mod:`aiodbox.message.imapstring`.

Streaming a FETCH body::

    out.write(fetch_open(seq, [fetch_uid(uid), fetch_flags(flags)]))
    out.write(b" " + fetch_literal_header(attr, size))   # "BODY[]<0> {size}\\r\\n"
    ... write exactly ``size`` bytes of the body ...
    out.write(fetch_close())                             # ")\\r\\n"
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from aiodbox.message import imapstring

from . import mutf7
from .commands import FetchAttribute, Section
from .errors import LocalProtocolError, RemoteProtocolError
from .lexer import ASTRING_ATOM_RE, ATOM_RE, MONTH_NAMES, TAG_RE
from .sequence import compact

Status = Literal["OK", "NO", "BAD"]
UntaggedStatus = Literal["OK", "NO", "BAD", "BYE", "PREAUTH"]

CRLF = b"\r\n"

_TEXT_TABLE = bytes(0x20 if b < 0x20 or b == 0x7F else 0x3F if b >= 0x80 else b for b in range(256))
_FLAG = re.compile(rb"\\?" + ATOM_RE.pattern + rb"|\\\*")
_CODE_DATA_BAD = re.compile(rb"[\x00-\x1f\x7f-\xff\]]")
_STATUSES = frozenset({"OK", "NO", "BAD", "BYE", "PREAUTH"})


# ---------------------------------------------------------------------------- tokens


def sanitize_text(text: str | bytes) -> bytes:
    """Make ``text`` safe as ``resp-text``: control characters (CR, LF, NUL ...) become
    spaces, non-ASCII becomes ``?``."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    return raw.translate(_TEXT_TABLE)


def _atom(value: str, what: str) -> bytes:
    raw = value.encode("ascii", "replace")
    if ATOM_RE.fullmatch(raw) is None:
        raise LocalProtocolError(f"{what} is not an atom: {value!r}")
    return raw


def _flag(flag: str) -> bytes:
    raw = flag.encode("ascii", "replace")
    if _FLAG.fullmatch(raw) is None:
        raise LocalProtocolError(f"not a valid flag: {flag!r}")
    return raw


def flag_list(flags: Iterable[str]) -> bytes:
    """``(\\Seen $Forwarded)``.

    Raises:
        LocalProtocolError: A flag is not ``\\atom``, ``\\*`` or an atom.
    """
    return b"(" + b" ".join(_flag(f) for f in flags) + b")"


def mailbox_name(name: str) -> bytes:
    """A mailbox name as a quoted string, modified UTF-7 encoded."""
    try:
        return imapstring.quoted(mutf7.encode(name))
    except ValueError as exc:
        raise LocalProtocolError(f"mailbox name cannot be encoded: {name!r}") from exc


def _astring(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if ASTRING_ATOM_RE.fullmatch(raw) is not None:
        return raw
    return imapstring.string(raw)


def _ordered_set(numbers: Iterable[int]) -> bytes:
    """A sequence set keeping the given order, merging ascending consecutive runs."""
    parts: list[bytes] = []
    lo = hi = -1
    for n in numbers:
        if lo >= 0 and n == hi + 1:
            hi = n
            continue
        if lo >= 0:
            parts.append(b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi))
        lo = hi = n
    if lo >= 0:
        parts.append(b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi))
    return b",".join(parts)


def format_internaldate(value: dt.datetime) -> bytes:
    """``"17-Jul-1996 02:44:25 -0700"`` (quoted, as in FETCH INTERNALDATE).

    Raises:
        LocalProtocolError: ``value`` is naive (has no UTC offset).
    """
    offset = value.utcoffset()
    if offset is None:
        raise LocalProtocolError("INTERNALDATE needs a timezone-aware datetime")
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = (
        f'"{value.day:02d}-{MONTH_NAMES[value.month - 1]}-{value.year:04d} '
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d} "
        f'{sign}{minutes // 60:02d}{minutes % 60:02d}"'
    )
    return text.encode("ascii")


# --------------------------------------------------------------------- response codes


@dataclass(frozen=True, slots=True)
class ResponseCode:
    """A ``resp-text-code`` such as ``[UIDNEXT 5]``.

    Attributes:
        name: The code's atom, e.g. ``"UIDNEXT"``.
        data: What follows the name (without the leading space), or ``None``.

    Raises:
        LocalProtocolError: ``name`` is not an atom or ``data`` holds CR, LF, ``]``...
    """

    name: str
    data: bytes | None = None

    def __post_init__(self) -> None:
        _atom(self.name, "response code")
        if self.data is not None and _CODE_DATA_BAD.search(self.data):
            raise LocalProtocolError(f"invalid response code data: {self.data!r}")

    def to_bytes(self) -> bytes:
        """``b"[NAME data]"``."""
        name = self.name.encode("ascii")
        if self.data is None:
            return b"[" + name + b"]"
        return b"[" + name + b" " + self.data + b"]"

    @classmethod
    def uidnext(cls, uid: int) -> ResponseCode:
        """``[UIDNEXT n]``."""
        return cls("UIDNEXT", b"%d" % uid)

    @classmethod
    def uidvalidity(cls, value: int) -> ResponseCode:
        """``[UIDVALIDITY n]``."""
        return cls("UIDVALIDITY", b"%d" % value)

    @classmethod
    def unseen(cls, seq: int) -> ResponseCode:
        """``[UNSEEN n]`` (sequence number of the first unseen message)."""
        return cls("UNSEEN", b"%d" % seq)

    @classmethod
    def highestmodseq(cls, modseq: int) -> ResponseCode:
        """``[HIGHESTMODSEQ n]`` (RFC 7162)."""
        return cls("HIGHESTMODSEQ", b"%d" % modseq)

    @classmethod
    def permanentflags(cls, flags: Iterable[str]) -> ResponseCode:
        """``[PERMANENTFLAGS (\\Seen \\*)]``."""
        return cls("PERMANENTFLAGS", flag_list(flags))

    @classmethod
    def capability(cls, capabilities: Iterable[str]) -> ResponseCode:
        """``[CAPABILITY IMAP4rev1 ...]``."""
        return cls("CAPABILITY", b" ".join(_atom(c, "capability") for c in capabilities))

    @classmethod
    def appenduid(cls, uidvalidity: int, uids: int | Iterable[int]) -> ResponseCode:
        """``[APPENDUID uidvalidity uid-set]`` (RFC 4315); uids in append order."""
        uid_set = _ordered_set([uids] if isinstance(uids, int) else uids)
        return cls("APPENDUID", b"%d " % uidvalidity + uid_set)

    @classmethod
    def copyuid(
        cls, uidvalidity: int, source_uids: Iterable[int], dest_uids: Iterable[int]
    ) -> ResponseCode:
        """``[COPYUID uidvalidity source-set dest-set]`` (RFC 4315).

        The two sets are rendered in the order given, so the n-th source UID keeps
        corresponding to the n-th destination UID.
        """
        return cls(
            "COPYUID",
            b"%d " % uidvalidity + _ordered_set(source_uids) + b" " + _ordered_set(dest_uids),
        )

    @classmethod
    def badcharset(cls, charsets: Iterable[str] = ()) -> ResponseCode:
        """``[BADCHARSET (UTF-8 US-ASCII)]`` (or ``[BADCHARSET]`` with no list)."""
        names = [_astring(c) for c in charsets]
        return cls("BADCHARSET", b"(" + b" ".join(names) + b")" if names else None)

    @classmethod
    def modified(cls, numbers: Iterable[int]) -> ResponseCode:
        """``[MODIFIED set]`` (RFC 7162 STORE UNCHANGEDSINCE failures)."""
        return cls("MODIFIED", compact(numbers))


ALERT = ResponseCode("ALERT")
PARSE = ResponseCode("PARSE")
READ_ONLY = ResponseCode("READ-ONLY")
READ_WRITE = ResponseCode("READ-WRITE")
TRYCREATE = ResponseCode("TRYCREATE")
CLOSED = ResponseCode("CLOSED")
NOMODSEQ = ResponseCode("NOMODSEQ")
TOOBIG = ResponseCode("TOOBIG")
ALREADYEXISTS = ResponseCode("ALREADYEXISTS")
NONEXISTENT = ResponseCode("NONEXISTENT")
UNAVAILABLE = ResponseCode("UNAVAILABLE")
AUTHENTICATIONFAILED = ResponseCode("AUTHENTICATIONFAILED")
AUTHORIZATIONFAILED = ResponseCode("AUTHORIZATIONFAILED")
EXPIRED = ResponseCode("EXPIRED")
PRIVACYREQUIRED = ResponseCode("PRIVACYREQUIRED")
CONTACTADMIN = ResponseCode("CONTACTADMIN")
NOPERM = ResponseCode("NOPERM")
INUSE = ResponseCode("INUSE")
EXPUNGEISSUED = ResponseCode("EXPUNGEISSUED")
CORRUPTION = ResponseCode("CORRUPTION")
SERVERBUG = ResponseCode("SERVERBUG")
CLIENTBUG = ResponseCode("CLIENTBUG")
CANNOT = ResponseCode("CANNOT")
LIMIT = ResponseCode("LIMIT")
OVERQUOTA = ResponseCode("OVERQUOTA")
HASCHILDREN = ResponseCode("HASCHILDREN")
USEATTR = ResponseCode("USEATTR")
UNKNOWN_CTE = ResponseCode("UNKNOWN-CTE")


# ------------------------------------------------------------------ status responses


def _resp_text(text: str | bytes, code: ResponseCode | None) -> bytes:
    body = sanitize_text(text)
    if code is None:
        return body
    return code.to_bytes() + b" " + body if body else code.to_bytes()


def tagged(tag: str, status: Status, text: str | bytes, code: ResponseCode | None = None) -> bytes:
    """``A1 OK [CODE] text\\r\\n``.

    Raises:
        LocalProtocolError: ``tag`` is not a valid tag or ``status`` is unknown.
    """
    raw_tag = tag.encode("ascii", "replace")
    if TAG_RE.fullmatch(raw_tag) is None or status not in ("OK", "NO", "BAD"):
        raise LocalProtocolError(f"invalid tag or status: {tag!r} {status!r}")
    resp = _resp_text(text, code)
    return raw_tag + b" " + status.encode("ascii") + (b" " + resp if resp else b"") + CRLF


def untagged_status(
    status: UntaggedStatus, text: str | bytes, code: ResponseCode | None = None
) -> bytes:
    """``* OK [CODE] text\\r\\n`` (also ``NO``, ``BAD``, ``BYE``, ``PREAUTH``)."""
    if status not in _STATUSES:
        raise LocalProtocolError(f"invalid status: {status!r}")
    resp = _resp_text(text, code)
    return b"* " + status.encode("ascii") + (b" " + resp if resp else b"") + CRLF


def bye(text: str | bytes, code: ResponseCode | None = None) -> bytes:
    """``* BYE text\\r\\n``."""
    return untagged_status("BYE", text, code)


def error_response(error: RemoteProtocolError) -> bytes:
    """The ``BAD`` answer to a :class:`RemoteProtocolError` (tagged when it has a tag)."""
    code = ResponseCode(error.code) if error.code else None
    if error.tag is None:
        return untagged_status("BAD", error.message, code)
    return tagged(error.tag, "BAD", error.message, code)


def continuation(text: str | bytes = "") -> bytes:
    """``+ text\\r\\n`` (a continuation request)."""
    return b"+ " + sanitize_text(text) + CRLF


def continuation_base64(data: bytes) -> bytes:
    """``+ <base64>\\r\\n``: a SASL challenge."""
    return b"+ " + base64.b64encode(data) + CRLF


# ------------------------------------------------------------------ untagged data


def capability_response(capabilities: Iterable[str]) -> bytes:
    """``* CAPABILITY IMAP4rev1 ...\\r\\n``."""
    return b"* CAPABILITY " + b" ".join(_atom(c, "capability") for c in capabilities) + CRLF


def enabled_response(capabilities: Iterable[str]) -> bytes:
    """``* ENABLED cap ...\\r\\n`` (RFC 5161; may be empty)."""
    caps = b"".join(b" " + _atom(c, "capability") for c in capabilities)
    return b"* ENABLED" + caps + CRLF


def exists_response(count: int) -> bytes:
    """``* n EXISTS\\r\\n``."""
    return b"* %d EXISTS\r\n" % count


def recent_response(count: int) -> bytes:
    """``* n RECENT\\r\\n``."""
    return b"* %d RECENT\r\n" % count


def expunge_response(seq: int) -> bytes:
    """``* n EXPUNGE\\r\\n``."""
    return b"* %d EXPUNGE\r\n" % seq


def flags_response(flags: Iterable[str]) -> bytes:
    """``* FLAGS (...)\\r\\n``."""
    return b"* FLAGS " + flag_list(flags) + CRLF


def list_response(
    name: str,
    delimiter: str | None,
    attributes: Iterable[str] = (),
    *,
    childinfo: Iterable[str] = (),
    oldname: str | None = None,
    lsub: bool = False,
) -> bytes:
    """``* LIST (\\HasNoChildren) "/" "INBOX"\\r\\n`` (``* LSUB`` when ``lsub``).

    Args:
        name: The mailbox name (encoded to modified UTF-7 here).
        delimiter: The hierarchy delimiter (one character) or ``None`` for ``NIL``.
        attributes: Name attributes, e.g. ``\\Noselect``, ``\\Subscribed``, ``\\Sent``.
        childinfo: RFC 5258 ``CHILDINFO`` values, e.g. ``["SUBSCRIBED"]``.
        oldname: RFC 5465 ``OLDNAME`` extended item.
        lsub: Emit ``LSUB`` instead of ``LIST``.
    """
    if delimiter is None:
        delim = b"NIL"
    else:
        raw = delimiter.encode("ascii", "replace")
        if len(raw) != 1 or not 0x20 < raw[0] < 0x7F:
            raise LocalProtocolError(f"invalid hierarchy delimiter: {delimiter!r}")
        delim = imapstring.quoted(raw)
    out = (
        (b"* LSUB " if lsub else b"* LIST ")
        + flag_list(attributes)
        + b" "
        + delim
        + b" "
        + mailbox_name(name)
    )
    extended: list[bytes] = []
    childinfo = list(childinfo)
    if childinfo:
        values = b" ".join(imapstring.quoted(_atom(c, "CHILDINFO")) for c in childinfo)
        extended.append(b'"CHILDINFO" (' + values + b")")
    if oldname is not None:
        extended.append(b'"OLDNAME" (' + mailbox_name(oldname) + b")")
    if extended:
        out += b" (" + b" ".join(extended) + b")"
    return out + CRLF


def status_response(mailbox: str, items: Mapping[str, int] | Iterable[tuple[str, int]]) -> bytes:
    """``* STATUS "name" (MESSAGES 231 UIDNEXT 44292)\\r\\n`` (items in the given order)."""
    pairs = items.items() if isinstance(items, Mapping) else items
    body = b" ".join(_atom(k, "STATUS item") + b" %d" % v for k, v in pairs)
    return b"* STATUS " + mailbox_name(mailbox) + b" (" + body + b")" + CRLF


def search_response(numbers: Iterable[int], modseq: int | None = None) -> bytes:
    """``* SEARCH 2 84 882\\r\\n`` with an optional ``(MODSEQ n)`` (RFC 7162)."""
    out = b"* SEARCH" + b"".join(b" %d" % n for n in numbers)
    if modseq is not None:
        out += b" (MODSEQ %d)" % modseq
    return out + CRLF


def esearch_response(
    *,
    tag: str | None = None,
    uid: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
    all_numbers: Iterable[int] | None = None,
    count: int | None = None,
    modseq: int | None = None,
) -> bytes:
    """``* ESEARCH (TAG "A1") UID MIN 2 ALL 2:4,9 COUNT 4\\r\\n`` (RFC 4731).

    ``ALL`` is left out when ``all_numbers`` is empty, as the RFC requires.
    """
    out = b"* ESEARCH"
    if tag is not None:
        out += b" (TAG " + imapstring.quoted(tag.encode("ascii", "replace")) + b")"
    if uid:
        out += b" UID"
    if minimum is not None:
        out += b" MIN %d" % minimum
    if maximum is not None:
        out += b" MAX %d" % maximum
    if all_numbers is not None:
        seqs = compact(all_numbers)
        if seqs:
            out += b" ALL " + seqs
    if count is not None:
        out += b" COUNT %d" % count
    if modseq is not None:
        out += b" MODSEQ %d" % modseq
    return out + CRLF


def vanished_response(uids: Iterable[int], earlier: bool = False) -> bytes:
    """``* VANISHED (EARLIER) 41,43:116\\r\\n`` (RFC 7162); ``b""`` for no UIDs."""
    uid_set = compact(uids)
    if not uid_set:
        return b""
    return b"* VANISHED " + (b"(EARLIER) " if earlier else b"") + uid_set + CRLF


def id_response(parameters: Mapping[str, str | None] | None) -> bytes:
    """``* ID ("name" "aiodbox" ...)\\r\\n`` or ``* ID NIL\\r\\n`` (RFC 2971)."""
    if not parameters:
        return b"* ID NIL\r\n"
    body = b" ".join(
        imapstring.string(k) + b" " + imapstring.nstring(v) for k, v in parameters.items()
    )
    return b"* ID (" + body + b")" + CRLF


Namespaces = Sequence[tuple[str, str | None]] | None


def _namespace(entries: Namespaces) -> bytes:
    if not entries:
        return b"NIL"
    parts = []
    for prefix, delimiter in entries:
        delim = b"NIL" if delimiter is None else imapstring.quoted(delimiter.encode("ascii"))
        parts.append(b"(" + mailbox_name(prefix) + b" " + delim + b")")
    return b"(" + b"".join(parts) + b")"


def namespace_response(personal: Namespaces, other: Namespaces, shared: Namespaces) -> bytes:
    """``* NAMESPACE (("" "/")) NIL NIL\\r\\n`` (RFC 2342)."""
    return (
        b"* NAMESPACE "
        + _namespace(personal)
        + b" "
        + _namespace(other)
        + b" "
        + _namespace(shared)
        + CRLF
    )


# --------------------------------------------------------------------------- FETCH


def section_spec(section: Section) -> bytes:
    """The inside of ``BODY[...]``: ``b"1.2.HEADER.FIELDS (From To)"``."""
    parts = [b"%d" % p for p in section.part]
    if section.text is not None:
        parts.append(section.text.encode("ascii"))
    spec = b".".join(parts)
    if section.fields:
        spec += b" (" + b" ".join(_astring(f) for f in section.fields) + b")"
    return spec


def fetch_item_name(attribute: FetchAttribute) -> bytes:
    """The response name for a requested item: ``BODY.PEEK[TEXT]<0.100>`` → ``BODY[TEXT]<0>``."""
    name = attribute.name.encode("ascii")
    if attribute.section is None:
        return name
    out = name + b"[" + section_spec(attribute.section) + b"]"
    if attribute.partial is not None:
        out += b"<%d>" % attribute.partial[0]
    return out


def fetch_literal_header(attribute: FetchAttribute, size: int) -> bytes:
    """``BODY[]<0> {size}\\r\\n``: the server streams exactly ``size`` bytes after it."""
    return fetch_item_name(attribute) + b" {%d}\r\n" % size


def fetch_value(attribute: FetchAttribute, data: bytes | None) -> bytes:
    """A whole body item inline: ``BODY[TEXT] {n}\\r\\n<data>`` or ``BODY[TEXT] NIL``."""
    value = b"NIL" if data is None else imapstring.literal(data)
    return fetch_item_name(attribute) + b" " + value


def fetch_uid(uid: int) -> bytes:
    """``UID n``."""
    return b"UID %d" % uid


def fetch_flags(flags: Iterable[str]) -> bytes:
    """``FLAGS (\\Seen)``."""
    return b"FLAGS " + flag_list(flags)


def fetch_internaldate(value: dt.datetime) -> bytes:
    """``INTERNALDATE "17-Jul-1996 02:44:25 -0700"``."""
    return b"INTERNALDATE " + format_internaldate(value)


def fetch_rfc822_size(size: int) -> bytes:
    """``RFC822.SIZE n``."""
    return b"RFC822.SIZE %d" % size


def fetch_modseq(modseq: int) -> bytes:
    """``MODSEQ (n)`` (RFC 7162)."""
    return b"MODSEQ (%d)" % modseq


def fetch_envelope(rendered: bytes) -> bytes:
    """``ENVELOPE <rendered>``: the envelope list is rendered by the message layer."""
    return b"ENVELOPE " + rendered


def fetch_bodystructure(rendered: bytes, *, extensible: bool = True) -> bytes:
    """``BODYSTRUCTURE <rendered>`` (or ``BODY <rendered>`` when not ``extensible``)."""
    return (b"BODYSTRUCTURE " if extensible else b"BODY ") + rendered


def fetch_binary_size(section: Section, size: int) -> bytes:
    """``BINARY.SIZE[1.2] n`` (RFC 3516)."""
    return b"BINARY.SIZE[" + section_spec(section) + b"] %d" % size


def fetch_open(seq: int, items: Iterable[bytes] = ()) -> bytes:
    """``* seq FETCH (`` followed by ``items`` joined by spaces (no closing paren)."""
    return b"* %d FETCH (" % seq + b" ".join(items)


def fetch_close() -> bytes:
    """``)\\r\\n``: ends a response started with :func:`fetch_open`."""
    return b")" + CRLF


def fetch_response(seq: int, items: Iterable[bytes]) -> bytes:
    """A whole ``* seq FETCH (item item ...)\\r\\n`` line."""
    return fetch_open(seq, items) + fetch_close()
