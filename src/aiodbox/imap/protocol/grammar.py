"""The IMAP4rev1 command grammar (RFC 3501 §9 and the extensions' ABNF), recursive descent.

:func:`parse_command` turns one complete command buffer (the line as it came, literals
inline) into a :class:`~.commands.Command`.  It is also run on an *incomplete* buffer
that ends in a literal header, to learn what that literal is before reading it:

* :class:`~.lexer.NeedLiteral` — an ordinary string literal (LOGIN password, mailbox,
  search string ...): the streaming parser collects it and parses again later;
* :class:`AppendMessageReached` — the APPEND message literal: it is streamed instead;
* :class:`~.lexer.ParseError` — the command is already wrong: answer BAD now, before
  the client sends (or the server asks for) the literal.

Dispatch is by tables (command name → handler, search key → handler), not ``if`` chains.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Literal

from . import mutf7
from .commands import (
    Authenticate,
    Capability,
    Check,
    Close,
    Command,
    Copy,
    Create,
    Delete,
    Enable,
    Expunge,
    Fetch,
    FetchAttribute,
    Id,
    Idle,
    List,
    Login,
    Logout,
    Lsub,
    Move,
    Namespace,
    Noop,
    QResync,
    Rename,
    Search,
    SearchAge,
    SearchAll,
    SearchAnd,
    SearchDate,
    SearchFlag,
    SearchHeader,
    SearchKey,
    SearchModSeq,
    SearchNot,
    SearchOr,
    SearchSequence,
    SearchSize,
    SearchText,
    Section,
    Select,
    StartTLS,
    Status,
    Store,
    StoreMode,
    Subscribe,
    Unselect,
    Unsubscribe,
)
from .lexer import MAX_MODSEQ, ParseError, ParseSignal, Reader
from .sequence import SequenceSet

MAX_SEARCH_DEPTH = 100
"""Deepest nesting of search keys (parentheses, NOT, OR) accepted; bounds recursion."""

_LPAREN, _RPAREN, _LBRACKET, _RBRACKET = 0x28, 0x29, 0x5B, 0x5D
_DOT, _DQUOTE, _LBRACE, _LT, _GT = 0x2E, 0x22, 0x7B, 0x3C, 0x3E
_DIGITS = frozenset(b"0123456789")
_SECTION_TEXT = re.compile(rb"[A-Za-z][A-Za-z.]*")
_STORE_ITEM = re.compile(rb"[+-]?[A-Za-z.]+")
_COMMAND_NAME = re.compile(rb"[A-Za-z0-9._\-]{1,32}")

Handler = Callable[[Reader, str, bool], Command]


class AppendMessageReached(ParseSignal):
    """The buffer ends with the header of an APPEND message literal."""

    def __init__(
        self,
        mailbox: str,
        flags: tuple[str, ...],
        date: dt.datetime | None,
        size: int,
        synchronizing: bool,
        index: int,
    ) -> None:
        super().__init__(mailbox, size)
        self.mailbox = mailbox
        self.flags = flags
        self.date = date
        self.size = size
        self.synchronizing = synchronizing
        self.index = index


# ----------------------------------------------------------------------- entry points


def parse_command(data: bytes) -> Command:
    """Parse one command buffer (ending in CRLF, literals inline).

    Raises:
        ParseError: Not valid; ``tag``/``command`` are set when they could be read.
        NeedLiteral: The buffer ends with a literal header (incomplete command).
        AppendMessageReached: The buffer ends with an APPEND message literal header.
    """
    r = Reader(data)
    tag: str | None = None
    command: str | None = None
    try:
        if r.at_eol():
            raise ParseError("Empty command line")
        tag = r.tag()
        if r.at_eol():
            raise ParseError("Missing command")
        r.sp()
        name = _command_name(r)
        command = name
        uid = name == "UID"
        table = _COMMANDS
        if uid:
            r.sp()
            name = _command_name(r)
            command = f"UID {name}"
            table = _UID_COMMANDS
        handler = table.get(name)
        if handler is None:
            raise ParseError(f"Unknown command {command}")
        cmd = handler(r, tag, uid)
        r.end()
        return cmd
    except ParseSignal as sig:
        sig.tag = tag
        sig.command = command
        raise


def parse_append_tail(data: bytes, tag: str, mailbox: str, index: int) -> None:
    """Parse what follows an APPEND message literal: CRLF or the next MULTIAPPEND message.

    Returns:
        None if the command ends here.

    Raises:
        AppendMessageReached: Another message follows (``index`` is its index).
        ParseError: Anything else.
    """
    r = Reader(data)
    try:
        if r.at_eol():
            r.end()
            return
        raise _append_message(r, mailbox, index)
    except ParseSignal as sig:
        sig.tag = tag
        sig.command = "APPEND"
        raise


def decode_mailbox(raw: bytes, *, normalise_inbox: bool = True) -> str:
    """Decode a wire mailbox name (modified UTF-7); ``INBOX`` in any case → ``"INBOX"``.

    Raises:
        ParseError: Not valid modified UTF-7.
    """
    try:
        name = mutf7.decode(raw)
    except ValueError as exc:
        raise ParseError("Mailbox name is not valid mUTF-7") from exc
    if normalise_inbox and len(name) == 5 and name.upper() == "INBOX":
        return "INBOX"
    return name


# -------------------------------------------------------------------------- helpers


def _command_name(r: Reader) -> str:
    m = _COMMAND_NAME.match(r.data, r.pos)
    atom = r.atom()
    if m is None or m.end() != r.pos:
        raise ParseError("Unknown command")
    return atom.decode("ascii").upper()


def _ascii(raw: bytes, what: str) -> str:
    if not raw.isascii():
        raise ParseError(f"8-bit data in {what}")
    return raw.decode("ascii")


def _mailbox(r: Reader) -> str:
    return decode_mailbox(r.astring())


def _peek_word(r: Reader) -> str | None:
    start = r.pos
    try:
        return r.word()
    except ParseError:
        return None
    finally:
        r.pos = start


def _simple(cls: Callable[[str], Command]) -> Handler:
    def handler(r: Reader, tag: str, uid: bool) -> Command:
        return cls(tag)

    return handler


def _one_mailbox(cls: Callable[[str, str], Command]) -> Handler:
    def handler(r: Reader, tag: str, uid: bool) -> Command:
        r.sp()
        return cls(tag, _mailbox(r))

    return handler


# ------------------------------------------------------------------ any-state commands


def _authenticate(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    mechanism = _ascii(r.atom(), "mechanism").upper()
    initial = r.base64() if r.try_sp() else None
    return Authenticate(tag, mechanism, initial)


def _login(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    user = r.text_astring()
    r.sp()
    return Login(tag, user, r.text_astring())


def _id(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    if r.try_nil():
        return Id(tag, None)

    def pair() -> tuple[str, str | None]:
        key = r.string().decode("utf-8", "surrogateescape")
        r.sp()
        value = r.nstring()
        return key, None if value is None else value.decode("utf-8", "surrogateescape")

    return Id(tag, r.paren_list(pair))


def _enable(r: Reader, tag: str, uid: bool) -> Command:
    caps = []
    r.sp()
    caps.append(_ascii(r.atom(), "capability").upper())
    while r.try_sp():
        caps.append(_ascii(r.atom(), "capability").upper())
    return Enable(tag, tuple(caps))


# ------------------------------------------------------------------ mailbox commands


_SPECIAL_USE = {
    f.upper(): f
    for f in ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")
}


def _select(readonly: bool) -> Handler:
    def handler(r: Reader, tag: str, uid: bool) -> Command:
        r.sp()
        mailbox = _mailbox(r)
        condstore = False
        qresync: QResync | None = None
        if r.try_sp():
            for param in r.paren_list(lambda: _select_param(r), allow_empty=False):
                if isinstance(param, QResync):
                    if qresync is not None:
                        raise ParseError("QRESYNC given twice")
                    qresync = param
                else:
                    condstore = True
        return Select(tag, mailbox, readonly, condstore, qresync)

    return handler


def _select_param(r: Reader) -> QResync | str:
    word = r.word()
    if word == "CONDSTORE":
        return word
    if word != "QRESYNC":
        raise ParseError(f"Unknown SELECT parameter {word}")
    r.sp()
    r.expect_byte(_LPAREN)
    uidvalidity = r.nz_number()
    r.sp()
    modseq = r.number(MAX_MODSEQ)
    known: SequenceSet | None = None
    match: tuple[SequenceSet, SequenceSet] | None = None
    if r.try_sp():
        if r.peek() != _LPAREN:
            known = r.sequence_set(allow_saved=False)
            if r.try_sp():
                match = _seq_match(r)
        else:
            match = _seq_match(r)
    r.expect_byte(_RPAREN)
    return QResync(uidvalidity, modseq, known, match)


def _seq_match(r: Reader) -> tuple[SequenceSet, SequenceSet]:
    r.expect_byte(_LPAREN)
    seqs = r.sequence_set(allow_saved=False)
    r.sp()
    uids = r.sequence_set(allow_saved=False)
    r.expect_byte(_RPAREN)
    return seqs, uids


def _create(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    mailbox = _mailbox(r)
    special: tuple[str, ...] = ()
    if r.try_sp():
        r.expect_byte(_LPAREN)
        if r.word() != "USE":
            raise ParseError("Unknown CREATE parameter")
        r.sp()
        special = r.paren_list(lambda: _special_use(r))
        r.expect_byte(_RPAREN)
    return Create(tag, mailbox, special)


def _special_use(r: Reader) -> str:
    flag = r.flag()
    if not flag.startswith("\\"):
        raise ParseError("Invalid special-use attribute")
    return _SPECIAL_USE.get(flag.upper(), flag)


def _rename(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    old = _mailbox(r)
    r.sp()
    return Rename(tag, old, _mailbox(r))


_LIST_SELECT = frozenset({"SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"})
_LIST_RETURN = frozenset({"SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS"})


def _list_pattern(r: Reader) -> str:
    return decode_mailbox(r.list_mailbox(), normalise_inbox=False)


def _list(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    extended = False
    select: frozenset[str] = frozenset()
    if r.peek() == _LPAREN:
        extended = True
        select = frozenset(r.paren_list(r.word))
        unknown = select - _LIST_SELECT
        if unknown:
            raise ParseError(f"Unknown LIST selection option {min(unknown)}")
        if not select - {"RECURSIVEMATCH", "REMOTE"} and "RECURSIVEMATCH" in select:
            raise ParseError("RECURSIVEMATCH needs another selection option")
        r.sp()
    reference = decode_mailbox(r.astring(), normalise_inbox=False)
    r.sp()
    if r.peek() == _LPAREN:
        extended = True
        patterns = r.paren_list(lambda: _list_pattern(r), allow_empty=False)
    else:
        patterns = (_list_pattern(r),)
    returns: set[str] = set()
    status: tuple[str, ...] = ()
    if r.try_sp():
        if r.word() != "RETURN":
            raise ParseError("Expected RETURN")
        r.sp()
        extended = True
        for option, items in r.paren_list(lambda: _list_return_option(r)):
            returns.add(option)
            if items:
                status = items
    return List(tag, reference, patterns, select, frozenset(returns), status, extended)


def _list_return_option(r: Reader) -> tuple[str, tuple[str, ...]]:
    word = r.word()
    if word not in _LIST_RETURN:
        raise ParseError(f"Unknown LIST return option {word}")
    if word != "STATUS":
        return word, ()
    r.sp()
    return word, _status_items(r)


def _lsub(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    reference = decode_mailbox(r.astring(), normalise_inbox=False)
    r.sp()
    return Lsub(tag, reference, _list_pattern(r))


STATUS_ITEMS = frozenset(
    {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ", "SIZE"}
)
"""STATUS items the grammar accepts (RFC 3501, RFC 7162 HIGHESTMODSEQ, RFC 8438 SIZE)."""


def _status_items(r: Reader) -> tuple[str, ...]:
    items = r.paren_list(r.word, allow_empty=False)
    for item in items:
        if item not in STATUS_ITEMS:
            raise ParseError(f"Unknown STATUS item {item}")
    return items


def _status(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    mailbox = _mailbox(r)
    r.sp()
    return Status(tag, mailbox, _status_items(r))


def _append(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    mailbox = _mailbox(r)
    raise _append_message(r, mailbox, 0)


def _append_message(r: Reader, mailbox: str, index: int) -> AppendMessageReached:
    r.sp()
    flags: tuple[str, ...] = ()
    date: dt.datetime | None = None
    if r.peek() == _LPAREN:
        flags = r.flag_list()
        r.sp()
    if r.peek() == _DQUOTE:
        date = r.date_time()
        r.sp()
    if r.peek() != _LBRACE:
        raise ParseError("Expected the message literal")
    size, synchronizing = r.literal_header()
    if r.pos != len(r.data):  # pragma: no cover - the streaming parser never does this
        raise ParseError("Invalid arguments")
    return AppendMessageReached(mailbox, flags, date, size, synchronizing, index)


# ------------------------------------------------------------------ selected state


def _uid_expunge(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    return Expunge(tag, r.sequence_set())


def _copy(cls: type[Copy] | type[Move]) -> Handler:
    def handler(r: Reader, tag: str, uid: bool) -> Command:
        r.sp()
        seqs = r.sequence_set()
        r.sp()
        return cls(tag, seqs, _mailbox(r), uid)

    return handler


def _store(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    seqs = r.sequence_set()
    r.sp()
    unchanged: int | None = None
    if r.try_byte(_LPAREN):
        if r.word() != "UNCHANGEDSINCE":
            raise ParseError("Unknown STORE modifier")
        r.sp()
        unchanged = r.number(MAX_MODSEQ)
        r.expect_byte(_RPAREN)
        r.sp()
    item = r.match(_STORE_ITEM, "a STORE item").decode("ascii").upper()
    silent = item.endswith(".SILENT")
    base = item[: -len(".SILENT")] if silent else item
    try:
        mode = StoreMode(base)
    except ValueError:
        raise ParseError(f"Invalid STORE item {item}") from None
    r.sp()
    if r.peek() == _LPAREN:
        flags = r.flag_list()
    else:
        items = [r.flag()]
        while r.try_sp():
            items.append(r.flag())
        flags = tuple(items)
    return Store(tag, seqs, mode, flags, silent, uid, unchanged)


_SIMPLE_FETCH = frozenset(
    {
        "ENVELOPE",
        "FLAGS",
        "INTERNALDATE",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.SIZE",
        "RFC822.TEXT",
        "BODYSTRUCTURE",
        "UID",
        "MODSEQ",
    }
)
_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}


def _fetch(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    seqs = r.sequence_set()
    r.sp()
    macro: str | None = None
    if r.peek() == _LPAREN:
        atts = r.paren_list(lambda: _fetch_att(r), allow_empty=False)
    else:
        word = _peek_word(r)
        if word in _MACROS:
            r.word()
            macro = word
            atts = tuple(FetchAttribute(name) for name in _MACROS[word])
        else:
            atts = (_fetch_att(r),)
    changed: int | None = None
    vanished = False
    if r.try_sp():
        for name, value in r.paren_list(lambda: _fetch_modifier(r), allow_empty=False):
            if name == "VANISHED":
                vanished = True
            else:
                changed = value
    if vanished and (not uid or changed is None):
        raise ParseError("VANISHED needs UID FETCH with CHANGEDSINCE")
    return Fetch(tag, seqs, atts, uid, changed, vanished, macro)


def _fetch_modifier(r: Reader) -> tuple[str, int]:
    word = r.word()
    if word == "VANISHED":
        return word, 0
    if word != "CHANGEDSINCE":
        raise ParseError(f"Unknown FETCH modifier {word}")
    r.sp()
    return word, r.number(MAX_MODSEQ)


def _fetch_att(r: Reader) -> FetchAttribute:
    name = r.word()
    if name in _SIMPLE_FETCH:
        return FetchAttribute(name)
    if name == "BODY" and r.peek() != _LBRACKET:
        return FetchAttribute(name)
    if name in ("BODY", "BODY.PEEK"):
        section = _section(r)
        return FetchAttribute("BODY", section, _partial(r), name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK"):
        section = _binary_section(r)
        return FetchAttribute("BINARY", section, _partial(r), name == "BINARY.PEEK")
    if name == "BINARY.SIZE":
        return FetchAttribute(name, _binary_section(r))
    raise ParseError(f"Unknown FETCH item {name}")


def _section_part(r: Reader) -> tuple[list[int], bool]:
    """Part numbers; the bool says a ``.`` followed them (a section-text comes next)."""
    parts = [r.nz_number()]
    while r.try_byte(_DOT):
        if r.peek() in _DIGITS:
            parts.append(r.nz_number())
        else:
            return parts, True
    return parts, False


def _section(r: Reader) -> Section:
    r.expect_byte(_LBRACKET)
    if r.try_byte(_RBRACKET):
        return Section()
    parts: list[int] = []
    want_text = True
    if r.peek() in _DIGITS:
        parts, want_text = _section_part(r)
    text: str | None = None
    fields: tuple[str, ...] = ()
    if want_text:
        text = r.match(_SECTION_TEXT, "a section").decode("ascii").upper()
        allowed = ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME")
        if text not in allowed or (text == "MIME" and not parts):
            raise ParseError(f"Invalid section {text}")
        if text.startswith("HEADER.FIELDS"):
            r.sp()
            fields = r.paren_list(
                lambda: _ascii(r.astring(), "header field name"), allow_empty=False
            )
    r.expect_byte(_RBRACKET)
    return Section(tuple(parts), text, fields)


def _binary_section(r: Reader) -> Section:
    r.expect_byte(_LBRACKET)
    if r.try_byte(_RBRACKET):
        return Section()
    parts, dotted = _section_part(r)
    if dotted:
        raise ParseError("Invalid BINARY section")
    r.expect_byte(_RBRACKET)
    return Section(tuple(parts))


def _partial(r: Reader) -> tuple[int, int] | None:
    if not r.try_byte(_LT):
        return None
    origin = r.number()
    r.expect_byte(_DOT)
    length = r.nz_number()
    r.expect_byte(_GT)
    return origin, length


# ---------------------------------------------------------------------------- SEARCH

_SEARCH_RETURN = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


def _search(r: Reader, tag: str, uid: bool) -> Command:
    r.sp()
    options: tuple[str, ...] | None = None
    charset: str | None = None
    if _peek_word(r) == "RETURN":
        r.word()
        r.sp()
        options = r.paren_list(r.word) or ("ALL",)
        for option in options:
            if option not in _SEARCH_RETURN:
                raise ParseError(f"Unknown SEARCH return option {option}")
        r.sp()
    if _peek_word(r) == "CHARSET":
        r.word()
        r.sp()
        charset = _ascii(r.astring(), "charset").upper()
        r.sp()
    keys = [search_key(r)]
    while r.try_sp():
        keys.append(search_key(r))
    criteria = keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
    return Search(tag, criteria, charset, uid, options)


def search_key(r: Reader) -> SearchKey:
    """One ``search-key`` (recursing into parentheses, NOT and OR, depth-bounded)."""
    if r.depth >= MAX_SEARCH_DEPTH:
        raise ParseError("Search keys nested too deeply")
    r.depth += 1
    try:
        b = r.peek()
        if b == _LPAREN:
            r.pos += 1
            keys = [search_key(r)]
            while not r.try_byte(_RPAREN):
                r.sp()
                keys.append(search_key(r))
            return keys[0] if len(keys) == 1 else SearchAnd(tuple(keys))
        if b in _DIGITS or b in (0x2A, 0x24):  # digit, "*", "$"
            return SearchSequence(r.sequence_set())
        word = r.word()
        handler = _SEARCH_KEYS.get(word)
        if handler is None:
            raise ParseError(f"Unknown search key {word[:32]}")
        return handler(r)
    finally:
        r.depth -= 1


def _flag_key(flag: str, present: bool) -> Callable[[Reader], SearchKey]:
    key = SearchFlag(flag, present)
    return lambda r: key


def _keyword_key(present: bool) -> Callable[[Reader], SearchKey]:
    def handler(r: Reader) -> SearchKey:
        r.sp()
        return SearchFlag(_ascii(r.atom(), "keyword"), present)

    return handler


def _header_key(field: str) -> Callable[[Reader], SearchKey]:
    def handler(r: Reader) -> SearchKey:
        r.sp()
        return SearchHeader(field, r.astring())

    return handler


def _header(r: Reader) -> SearchKey:
    r.sp()
    field = _ascii(r.astring(), "header field name")
    r.sp()
    return SearchHeader(field, r.astring())


def _text_key(scope: Literal["BODY", "TEXT"]) -> Callable[[Reader], SearchKey]:
    def handler(r: Reader) -> SearchKey:
        r.sp()
        return SearchText(scope, r.astring())

    return handler


def _date_key(
    scope: Literal["INTERNAL", "SENT"], op: Literal["BEFORE", "ON", "SINCE"]
) -> Callable[[Reader], SearchKey]:
    def handler(r: Reader) -> SearchKey:
        r.sp()
        return SearchDate(scope, op, r.date())

    return handler


def _size_key(op: Literal["LARGER", "SMALLER"]) -> Callable[[Reader], SearchKey]:
    def handler(r: Reader) -> SearchKey:
        r.sp()
        return SearchSize(op, r.number())

    return handler


def _age_key(op: Literal["OLDER", "YOUNGER"]) -> Callable[[Reader], SearchKey]:
    def handler(r: Reader) -> SearchKey:
        r.sp()
        return SearchAge(op, r.nz_number())

    return handler


def _uid_key(r: Reader) -> SearchKey:
    r.sp()
    return SearchSequence(r.sequence_set(), uid=True)


def _not_key(r: Reader) -> SearchKey:
    r.sp()
    return SearchNot(search_key(r))


def _or_key(r: Reader) -> SearchKey:
    r.sp()
    left = search_key(r)
    r.sp()
    return SearchOr(left, search_key(r))


def _modseq_key(r: Reader) -> SearchKey:
    r.sp()
    entry_name: str | None = None
    entry_type: str | None = None
    if r.peek() == _DQUOTE:
        entry_name = _ascii(r.quoted(), "entry name")
        r.sp()
        entry_type = r.word().lower()
        if entry_type not in ("priv", "shared", "all"):
            raise ParseError("Invalid MODSEQ entry type")
        r.sp()
    return SearchModSeq(r.number(MAX_MODSEQ), entry_name, entry_type)


_NEW = SearchAnd((SearchFlag("\\Recent", True), SearchFlag("\\Seen", False)))
_ALL = SearchAll()

_SEARCH_KEYS: dict[str, Callable[[Reader], SearchKey]] = {
    "ALL": lambda r: _ALL,
    "NEW": lambda r: _NEW,
    "OLD": _flag_key("\\Recent", False),
    "RECENT": _flag_key("\\Recent", True),
    "ANSWERED": _flag_key("\\Answered", True),
    "UNANSWERED": _flag_key("\\Answered", False),
    "DELETED": _flag_key("\\Deleted", True),
    "UNDELETED": _flag_key("\\Deleted", False),
    "DRAFT": _flag_key("\\Draft", True),
    "UNDRAFT": _flag_key("\\Draft", False),
    "FLAGGED": _flag_key("\\Flagged", True),
    "UNFLAGGED": _flag_key("\\Flagged", False),
    "SEEN": _flag_key("\\Seen", True),
    "UNSEEN": _flag_key("\\Seen", False),
    "KEYWORD": _keyword_key(True),
    "UNKEYWORD": _keyword_key(False),
    "BCC": _header_key("BCC"),
    "CC": _header_key("CC"),
    "FROM": _header_key("FROM"),
    "SUBJECT": _header_key("SUBJECT"),
    "TO": _header_key("TO"),
    "HEADER": _header,
    "BODY": _text_key("BODY"),
    "TEXT": _text_key("TEXT"),
    "BEFORE": _date_key("INTERNAL", "BEFORE"),
    "ON": _date_key("INTERNAL", "ON"),
    "SINCE": _date_key("INTERNAL", "SINCE"),
    "SENTBEFORE": _date_key("SENT", "BEFORE"),
    "SENTON": _date_key("SENT", "ON"),
    "SENTSINCE": _date_key("SENT", "SINCE"),
    "LARGER": _size_key("LARGER"),
    "SMALLER": _size_key("SMALLER"),
    "OLDER": _age_key("OLDER"),
    "YOUNGER": _age_key("YOUNGER"),
    "UID": _uid_key,
    "NOT": _not_key,
    "OR": _or_key,
    "MODSEQ": _modseq_key,
}

# ---------------------------------------------------------------------- dispatch

_COMMANDS: dict[str, Handler] = {
    "CAPABILITY": _simple(Capability),
    "NOOP": _simple(Noop),
    "LOGOUT": _simple(Logout),
    "STARTTLS": _simple(StartTLS),
    "AUTHENTICATE": _authenticate,
    "LOGIN": _login,
    "ID": _id,
    "ENABLE": _enable,
    "NAMESPACE": _simple(Namespace),
    "IDLE": _simple(Idle),
    "SELECT": _select(readonly=False),
    "EXAMINE": _select(readonly=True),
    "CREATE": _create,
    "DELETE": _one_mailbox(Delete),
    "RENAME": _rename,
    "SUBSCRIBE": _one_mailbox(Subscribe),
    "UNSUBSCRIBE": _one_mailbox(Unsubscribe),
    "LIST": _list,
    "LSUB": _lsub,
    "STATUS": _status,
    "APPEND": _append,
    "CHECK": _simple(Check),
    "CLOSE": _simple(Close),
    "UNSELECT": _simple(Unselect),
    "EXPUNGE": _simple(Expunge),
    "SEARCH": _search,
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy(Copy),
    "MOVE": _copy(Move),
}

_UID_COMMANDS: dict[str, Handler] = {
    "FETCH": _fetch,
    "STORE": _store,
    "COPY": _copy(Copy),
    "MOVE": _copy(Move),
    "SEARCH": _search,
    "EXPUNGE": _uid_expunge,
}

COMMAND_NAMES = frozenset(_COMMANDS)
"""Every command name the grammar knows (``UID`` forms excluded)."""
