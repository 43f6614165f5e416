"""Command events and the typed values inside them (sections, fetch items, search keys).

Every complete command the client sends becomes one frozen, slotted dataclass instance;
``name`` (a class variable) is the command's upper-case name, which is also the key of
the session state table (:mod:`.state`).  UID variants are the same classes with
``uid=True`` (``UID EXPUNGE`` is :class:`Expunge` with ``uid_set``).

Conventions: mailbox names are ``str`` decoded from modified UTF-7, with ``INBOX`` in
any case normalised to ``"INBOX"``; LIST/LSUB references and patterns are decoded but
not normalised.  Credentials and other free text are ``str`` decoded as UTF-8 with
``surrogateescape`` (``.encode("utf-8", "surrogateescape")`` gives back the wire bytes).
Search strings stay ``bytes``: their charset is the server's business.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import ClassVar, Literal

from .events import Event
from .sequence import SequenceSet

# --------------------------------------------------------------------------- values


@dataclass(frozen=True, slots=True)
class Section:
    """A ``BODY[...]`` / ``BINARY[...]`` section (RFC 3501 ``section-spec``).

    Attributes:
        part: Part numbers, e.g. ``(1, 2, 3)`` for ``1.2.3``; ``()`` for the whole message.
        text: ``"HEADER"``, ``"HEADER.FIELDS"``, ``"HEADER.FIELDS.NOT"``, ``"TEXT"``,
            ``"MIME"`` or ``None``.
        fields: Header field names for the ``HEADER.FIELDS`` forms, as the client sent them.
    """

    part: tuple[int, ...] = ()
    text: str | None = None
    fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchAttribute:
    """One FETCH data item.

    Attributes:
        name: One of ``ENVELOPE FLAGS INTERNALDATE RFC822 RFC822.HEADER RFC822.SIZE
            RFC822.TEXT BODY BODYSTRUCTURE UID MODSEQ BINARY BINARY.SIZE``.  ``BODY``
            without a section is the non-extensible body structure; ``BODY.PEEK[...]``
            is ``name="BODY", peek=True`` (likewise ``BINARY.PEEK``).
        section: The section for ``BODY[...]``/``BINARY[...]``/``BINARY.SIZE[...]``,
            else ``None``.  ``BODY[]`` has ``Section()``.
        partial: ``(origin, length)`` from ``<origin.length>``, else ``None``.
        peek: True for the ``.PEEK`` forms (do not set ``\\Seen``).
    """

    name: str
    section: Section | None = None
    partial: tuple[int, int] | None = None
    peek: bool = False


class StoreMode(enum.Enum):
    """How STORE combines the given flags with the message's flags."""

    REPLACE = "FLAGS"
    ADD = "+FLAGS"
    REMOVE = "-FLAGS"


@dataclass(frozen=True, slots=True)
class QResync:
    """SELECT/EXAMINE ``(QRESYNC (uidvalidity modseq [known-uids [seq-match]]))`` (RFC 7162).

    Attributes:
        uidvalidity: The client's last known UIDVALIDITY.
        modseq: The client's last known HIGHESTMODSEQ.
        known_uids: The UIDs the client knows, or ``None``.
        seq_match: ``(known sequence numbers, the matching UIDs)``, or ``None``.
    """

    uidvalidity: int
    modseq: int
    known_uids: SequenceSet | None = None
    seq_match: tuple[SequenceSet, SequenceSet] | None = None


# ----------------------------------------------------------------------- search keys


@dataclass(frozen=True, slots=True)
class SearchKey:
    """Base class of the search criteria tree."""


@dataclass(frozen=True, slots=True)
class SearchAll(SearchKey):
    """``ALL``."""


@dataclass(frozen=True, slots=True)
class SearchFlag(SearchKey):
    """A flag test: ``SEEN`` is ``(\\Seen, True)``, ``UNSEEN`` is ``(\\Seen, False)``.

    ``KEYWORD k``/``UNKEYWORD k`` give ``(k, True/False)``; ``RECENT``/``OLD`` give
    ``(\\Recent, True/False)``; ``NEW`` is ``SearchAnd`` of ``\\Recent`` and not ``\\Seen``.
    """

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class SearchHeader(SearchKey):
    """``HEADER name value`` (and ``BCC CC FROM SUBJECT TO``, with the field name set)."""

    field: str
    value: bytes


@dataclass(frozen=True, slots=True)
class SearchText(SearchKey):
    """``BODY value`` (body only) or ``TEXT value`` (header and body)."""

    scope: Literal["BODY", "TEXT"]
    value: bytes


@dataclass(frozen=True, slots=True)
class SearchDate(SearchKey):
    """``BEFORE/ON/SINCE`` (internal date) and ``SENTBEFORE/SENTON/SENTSINCE`` (Date:)."""

    scope: Literal["INTERNAL", "SENT"]
    op: Literal["BEFORE", "ON", "SINCE"]
    date: dt.date


@dataclass(frozen=True, slots=True)
class SearchSize(SearchKey):
    """``LARGER n`` / ``SMALLER n`` (RFC822.SIZE)."""

    op: Literal["LARGER", "SMALLER"]
    size: int


@dataclass(frozen=True, slots=True)
class SearchSequence(SearchKey):
    """A sequence set (``uid=False``) or ``UID set`` (``uid=True``)."""

    sequence_set: SequenceSet
    uid: bool = False


@dataclass(frozen=True, slots=True)
class SearchModSeq(SearchKey):
    """``MODSEQ [entry-name entry-type] n`` (RFC 7162): mod-sequence >= ``modseq``."""

    modseq: int
    entry_name: str | None = None
    entry_type: str | None = None


@dataclass(frozen=True, slots=True)
class SearchAge(SearchKey):
    """``OLDER n`` / ``YOUNGER n`` seconds (RFC 5032 WITHIN)."""

    op: Literal["OLDER", "YOUNGER"]
    seconds: int


@dataclass(frozen=True, slots=True)
class SearchNot(SearchKey):
    """``NOT key``."""

    key: SearchKey


@dataclass(frozen=True, slots=True)
class SearchOr(SearchKey):
    """``OR key1 key2``."""

    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class SearchAnd(SearchKey):
    """All of ``keys`` (a parenthesised list, or several keys in a row)."""

    keys: tuple[SearchKey, ...]


# -------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class Command(Event):
    """Base class of the complete-command events.

    Attributes:
        tag: The client's tag.
    """

    name: ClassVar[str] = ""

    tag: str


@dataclass(frozen=True, slots=True)
class Capability(Command):
    """``CAPABILITY``."""

    name: ClassVar[str] = "CAPABILITY"


@dataclass(frozen=True, slots=True)
class Noop(Command):
    """``NOOP``."""

    name: ClassVar[str] = "NOOP"


@dataclass(frozen=True, slots=True)
class Logout(Command):
    """``LOGOUT``."""

    name: ClassVar[str] = "LOGOUT"


@dataclass(frozen=True, slots=True)
class StartTLS(Command):
    """``STARTTLS``."""

    name: ClassVar[str] = "STARTTLS"


@dataclass(frozen=True, slots=True)
class Authenticate(Command):
    """``AUTHENTICATE mechanism [initial-response]`` (SASL-IR, RFC 4959).

    Attributes:
        mechanism: Upper-cased mechanism name.
        initial_response: Decoded initial response (``b""`` for ``=``), or ``None``.
    """

    name: ClassVar[str] = "AUTHENTICATE"

    mechanism: str
    initial_response: bytes | None = None


@dataclass(frozen=True, slots=True)
class Login(Command):
    """``LOGIN user password``."""

    name: ClassVar[str] = "LOGIN"

    username: str
    password: str


@dataclass(frozen=True, slots=True)
class Select(Command):
    """``SELECT``/``EXAMINE`` (``readonly=True``) with CONDSTORE/QRESYNC parameters."""

    name: ClassVar[str] = "SELECT"

    mailbox: str
    readonly: bool = False
    condstore: bool = False
    qresync: QResync | None = None


@dataclass(frozen=True, slots=True)
class Create(Command):
    """``CREATE mailbox [(USE (\\Sent ...))]`` (RFC 6154 CREATE-SPECIAL-USE)."""

    name: ClassVar[str] = "CREATE"

    mailbox: str
    special_use: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Delete(Command):
    """``DELETE mailbox``."""

    name: ClassVar[str] = "DELETE"

    mailbox: str


@dataclass(frozen=True, slots=True)
class Rename(Command):
    """``RENAME mailbox new-mailbox``."""

    name: ClassVar[str] = "RENAME"

    mailbox: str
    new_mailbox: str


@dataclass(frozen=True, slots=True)
class Subscribe(Command):
    """``SUBSCRIBE mailbox``."""

    name: ClassVar[str] = "SUBSCRIBE"

    mailbox: str


@dataclass(frozen=True, slots=True)
class Unsubscribe(Command):
    """``UNSUBSCRIBE mailbox``."""

    name: ClassVar[str] = "UNSUBSCRIBE"

    mailbox: str


@dataclass(frozen=True, slots=True)
class List(Command):
    """``LIST`` with the RFC 5258 LIST-EXTENDED syntax.

    Attributes:
        reference: Reference name.
        patterns: One or more mailbox patterns (``*`` and ``%`` wildcards kept).
        select_options: Upper-cased selection options (``SUBSCRIBED``, ``REMOTE``,
            ``RECURSIVEMATCH``, ``SPECIAL-USE``).
        return_options: Upper-cased return options (``SUBSCRIBED``, ``CHILDREN``,
            ``SPECIAL-USE``, ``STATUS``).
        status_items: Items of ``RETURN (STATUS (...))`` (RFC 5819), upper-cased.
        extended: True if any LIST-EXTENDED syntax was used (the reply may then carry
            extended data such as ``CHILDINFO``).
    """

    name: ClassVar[str] = "LIST"

    reference: str
    patterns: tuple[str, ...]
    select_options: frozenset[str] = frozenset()
    return_options: frozenset[str] = frozenset()
    status_items: tuple[str, ...] = ()
    extended: bool = False


@dataclass(frozen=True, slots=True)
class Lsub(Command):
    """``LSUB reference pattern``."""

    name: ClassVar[str] = "LSUB"

    reference: str
    pattern: str


@dataclass(frozen=True, slots=True)
class Status(Command):
    """``STATUS mailbox (items)``; items upper-cased, in the client's order."""

    name: ClassVar[str] = "STATUS"

    mailbox: str
    items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Check(Command):
    """``CHECK``."""

    name: ClassVar[str] = "CHECK"


@dataclass(frozen=True, slots=True)
class Close(Command):
    """``CLOSE``."""

    name: ClassVar[str] = "CLOSE"


@dataclass(frozen=True, slots=True)
class Unselect(Command):
    """``UNSELECT`` (RFC 3691)."""

    name: ClassVar[str] = "UNSELECT"


@dataclass(frozen=True, slots=True)
class Expunge(Command):
    """``EXPUNGE``, or ``UID EXPUNGE set`` (RFC 4315) when ``uid_set`` is given."""

    name: ClassVar[str] = "EXPUNGE"

    uid_set: SequenceSet | None = None

    @property
    def uid(self) -> bool:
        """True for ``UID EXPUNGE``."""
        return self.uid_set is not None


@dataclass(frozen=True, slots=True)
class Search(Command):
    """``[UID] SEARCH [RETURN (...)] [CHARSET c] keys...``.

    Attributes:
        criteria: The search program (a :class:`SearchAnd` when several keys were given).
        charset: Upper-cased CHARSET, or ``None``.
        uid: True for ``UID SEARCH``.
        return_options: ``None`` for a plain SEARCH (answer ``* SEARCH``); else the
            upper-cased ESEARCH options (RFC 4731), ``RETURN ()`` being ``("ALL",)``.
    """

    name: ClassVar[str] = "SEARCH"

    criteria: SearchKey
    charset: str | None = None
    uid: bool = False
    return_options: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class Fetch(Command):
    """``[UID] FETCH set items [(CHANGEDSINCE n [VANISHED])]``.

    Macros are expanded (``ALL``, ``FAST``, ``FULL``); ``macro`` records which was used.
    The implicit items (``UID`` for UID FETCH, ``MODSEQ`` with CHANGEDSINCE) are *not*
    added: that is the server's job.
    """

    name: ClassVar[str] = "FETCH"

    sequence_set: SequenceSet
    attributes: tuple[FetchAttribute, ...]
    uid: bool = False
    changed_since: int | None = None
    vanished: bool = False
    macro: str | None = None


@dataclass(frozen=True, slots=True)
class Store(Command):
    """``[UID] STORE set [(UNCHANGEDSINCE n)] [+|-]FLAGS[.SILENT] flags``."""

    name: ClassVar[str] = "STORE"

    sequence_set: SequenceSet
    mode: StoreMode
    flags: tuple[str, ...]
    silent: bool = False
    uid: bool = False
    unchanged_since: int | None = None


@dataclass(frozen=True, slots=True)
class Copy(Command):
    """``[UID] COPY set mailbox``."""

    name: ClassVar[str] = "COPY"

    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Move(Command):
    """``[UID] MOVE set mailbox`` (RFC 6851)."""

    name: ClassVar[str] = "MOVE"

    sequence_set: SequenceSet
    mailbox: str
    uid: bool = False


@dataclass(frozen=True, slots=True)
class Idle(Command):
    """``IDLE`` (RFC 2177): after ``+ idling`` call ``expect_idle_done()``."""

    name: ClassVar[str] = "IDLE"


@dataclass(frozen=True, slots=True)
class Namespace(Command):
    """``NAMESPACE`` (RFC 2342)."""

    name: ClassVar[str] = "NAMESPACE"


@dataclass(frozen=True, slots=True)
class Id(Command):
    """``ID NIL`` (``parameters=None``) or ``ID ("name" "value" ...)`` (RFC 2971)."""

    name: ClassVar[str] = "ID"

    parameters: tuple[tuple[str, str | None], ...] | None


@dataclass(frozen=True, slots=True)
class Enable(Command):
    """``ENABLE cap ...`` (RFC 5161); capability names upper-cased."""

    name: ClassVar[str] = "ENABLE"

    capabilities: tuple[str, ...]
