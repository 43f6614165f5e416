"""The shared in-memory view of one open mailbox.

Theory of operation
-------------------
Every connection of a process that has a mailbox open shares one :class:`MailboxView`
(the seed: connections on the same mailbox share index data).  It holds, in compact
arrays sorted by UID, what the protocol needs at once without touching the disk: UIDs,
system flags, keywords, modseqs, sizes and internal dates (about 35 bytes a message).
Everything else (GUID, location, cached BODYSTRUCTURE) stays in SQLite and is read per
batch when a command needs it.

The view moves forward only by modseq: :meth:`apply` takes the rows changed and the
UIDs expunged since the view's ``highestmodseq`` (one indexed query each), whether the
change was made by this process or another one.

Sessions keep their own message numbering: a session holds the ``uids`` array it last
announced plus a count.  New messages are appended to the same array object in place
(UIDs only grow), so a session's prefix stays valid; an expunge replaces the array
with a new object, which is how a session notices it owes the client EXPUNGE responses.
Flag changes are logged in ``flag_log`` (modseq, uid) so a session finds what to report
without scanning the whole mailbox.
"""

from __future__ import annotations

import bisect
import collections
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass

EMPTY_KEYWORDS: tuple[str, ...] = ()
FLAG_LOG_SIZE = 20_000


@dataclass(frozen=True, slots=True)
class ViewRow:
    """One message as the view keeps it."""

    uid: int
    flags: int
    keywords: tuple[str, ...]
    modseq: int
    size: int
    internal_date: int


@dataclass(slots=True)
class ViewColumns:
    """The arrays of a view, built in one go (thread-safe: touches no shared state)."""

    uids: array[int]
    flags: array[int]
    keywords: list[tuple[str, ...]]
    modseqs: array[int]
    sizes: array[int]
    dates: array[int]
    keywords_seen: list[tuple[str, ...]]


def build_columns(rows: list[tuple[int, int, str, int, int, int]]) -> ViewColumns:
    """Turn index rows (uid, flags, keywords, modseq, size, date), sorted by UID, into
    the view's arrays (C-speed transposition; keyword sets are shared tuples)."""
    if not rows:
        return ViewColumns(array("I"), array("B"), [], array("Q"), array("Q"), array("q"), [])
    uid_c, flag_c, kw_c, modseq_c, size_c, date_c = zip(*rows, strict=True)
    intern: dict[str, tuple[str, ...]] = {"": EMPTY_KEYWORDS}
    keywords = []
    for text in kw_c:
        kw = intern.get(text)
        if kw is None:
            kw = intern[text] = tuple(text.split())
        keywords.append(kw)
    return ViewColumns(
        array("I", uid_c),
        array("B", flag_c),
        keywords,
        array("Q", modseq_c),
        array("Q", size_c),
        array("q", date_c),
        list(intern.values()),
    )


class MailboxView:
    """Compact shared state of one mailbox; see the module docstring."""

    def __init__(self, mailbox_id: int, uidvalidity: int) -> None:
        self.mailbox_id = mailbox_id
        self.uidvalidity = uidvalidity
        self.uids = array("I")
        self.flags = array("B")
        self.modseqs = array("Q")
        self.sizes = array("Q")
        self.dates = array("q")
        self.keywords: list[tuple[str, ...]] = []
        self.highestmodseq = 0
        self.uidnext = 1
        self.first_recent_uid = 1
        """Messages from this UID on are recent and no session has claimed them yet."""
        self.mailbox_keywords: tuple[str, ...] = ()
        self.flag_log: collections.deque[tuple[int, int]] = collections.deque(maxlen=FLAG_LOG_SIZE)
        self.flag_log_start = 0
        """Flag changes with a modseq above this are all in ``flag_log``."""
        self.data_version = -1
        self.change_generation: int | None = None
        """The index's change generation when the view was last checked against it."""
        self._kw_intern: dict[str, tuple[str, ...]] = {"": EMPTY_KEYWORDS}
        self._listeners: list[Callable[[], None]] = []

    # ------------------------------------------------------------ reading

    def __len__(self) -> int:
        return len(self.uids)

    def index_of(self, uid: int) -> int | None:
        """Position of ``uid`` (0-based), or None if it is not in the mailbox."""
        i = bisect.bisect_left(self.uids, uid)
        if i < len(self.uids) and self.uids[i] == uid:
            return i
        return None

    def row(self, i: int) -> ViewRow:
        """The message at position ``i``."""
        return ViewRow(
            self.uids[i],
            self.flags[i],
            self.keywords[i],
            self.modseqs[i],
            self.sizes[i],
            self.dates[i],
        )

    def intern_keywords(self, text: str) -> tuple[str, ...]:
        """Keywords from their stored form, shared between messages with the same set."""
        kw = self._kw_intern.get(text)
        if kw is None:
            kw = tuple(text.split())
            self._kw_intern[text] = kw
        return kw

    def memory_bytes(self) -> int:
        """Approximate bytes held per the arrays (for the bench's per-message figure)."""
        arrays = (self.uids, self.flags, self.modseqs, self.sizes, self.dates)
        return sum(a.itemsize * len(a) for a in arrays) + 8 * len(self.keywords)

    # ----------------------------------------------------------- changing

    def load(
        self,
        rows: Iterable[tuple[int, int, str, int, int, int]],
        highestmodseq: int,
        uidnext: int,
        mailbox_keywords: str,
    ) -> None:
        """Replace everything with ``rows`` (uid, flags, keywords, modseq, size, date)."""
        self.install(build_columns(list(rows)), highestmodseq, uidnext, mailbox_keywords)

    def install(
        self, columns: ViewColumns, highestmodseq: int, uidnext: int, mailbox_keywords: str
    ) -> None:
        """Replace everything with ``columns`` (built by :func:`build_columns`, which may
        run in a worker thread: a big mailbox is never looped over on the event loop)."""
        self.uids, self.flags, self.modseqs = columns.uids, columns.flags, columns.modseqs
        self.sizes, self.dates, self.keywords = columns.sizes, columns.dates, columns.keywords
        for kw in columns.keywords_seen:
            self._kw_intern.setdefault(" ".join(kw), kw)
        self.highestmodseq = highestmodseq
        self.uidnext = uidnext
        self.mailbox_keywords = tuple(mailbox_keywords.split())
        self.flag_log.clear()
        self.flag_log_start = highestmodseq
        self._changed()

    def apply(
        self,
        changed: Iterable[tuple[int, int, str, int, int, int]],
        expunged: Iterable[int],
        highestmodseq: int,
        uidnext: int,
        mailbox_keywords: str,
    ) -> bool:
        """Apply rows changed or added and UIDs expunged since ``self.highestmodseq``.

        Returns:
            True if anything visible changed.
        """
        gone = set(expunged)
        changed_any = bool(gone)
        if gone:
            keep = [i for i, u in enumerate(self.uids) if u not in gone]
            self.uids = array("I", (self.uids[i] for i in keep))
            self.flags = array("B", (self.flags[i] for i in keep))
            self.modseqs = array("Q", (self.modseqs[i] for i in keep))
            self.sizes = array("Q", (self.sizes[i] for i in keep))
            self.dates = array("q", (self.dates[i] for i in keep))
            self.keywords = [self.keywords[i] for i in keep]
        appended: list[tuple[int, int, str, int, int, int]] = []
        out_of_order = False
        for row in sorted(changed):
            uid, fl, kw, ms, _size, _date = row
            i = self.index_of(uid)
            if i is not None:
                if self.flags[i] != fl or self.keywords[i] != self.intern_keywords(kw):
                    self.flag_log.append((ms, uid))
                    changed_any = True
                self.flags[i] = fl
                self.keywords[i] = self.intern_keywords(kw)
                self.modseqs[i] = ms
            elif uid in gone:
                continue
            else:
                if self.uids and uid < self.uids[-1]:
                    out_of_order = True
                appended.append(row)
        if appended:
            changed_any = True
            if out_of_order:
                self._insert_sorted(appended)
            else:
                for uid, fl, kw, ms, size, date in appended:
                    self.uids.append(uid)
                    self.flags.append(fl)
                    self.keywords.append(self.intern_keywords(kw))
                    self.modseqs.append(ms)
                    self.sizes.append(size)
                    self.dates.append(date)
        self.highestmodseq = max(self.highestmodseq, highestmodseq)
        self.uidnext = max(self.uidnext, uidnext)
        kw_tuple = tuple(mailbox_keywords.split())
        if kw_tuple != self.mailbox_keywords:
            self.mailbox_keywords = kw_tuple
            changed_any = True
        if self.flag_log.maxlen and len(self.flag_log) == self.flag_log.maxlen:
            self.flag_log_start = self.flag_log[0][0] - 1
        if changed_any:
            self._changed()
        return changed_any

    def _insert_sorted(self, rows: list[tuple[int, int, str, int, int, int]]) -> None:
        # Rows that commit out of UID order (concurrent saves) go to their place in the
        # arrays (a C memmove each), not through a rebuild of the whole view in Python.
        for uid, fl, kw, ms, size, date in sorted(rows):
            i = bisect.bisect_left(self.uids, uid)
            self.uids.insert(i, uid)
            self.flags.insert(i, fl)
            self.keywords.insert(i, self.intern_keywords(kw))
            self.modseqs.insert(i, ms)
            self.sizes.insert(i, size)
            self.dates.insert(i, date)
        # As a reload would: the flag log starts afresh.
        self.flag_log.clear()
        self.flag_log_start = self.highestmodseq
        self._changed()

    # ---------------------------------------------------------- listeners

    def add_listener(self, cb: Callable[[], None]) -> None:
        """Call ``cb`` (on the loop) after every visible change (IDLE uses this)."""
        self._listeners.append(cb)

    def remove_listener(self, cb: Callable[[], None]) -> None:
        """Stop calling ``cb``."""
        if cb in self._listeners:
            self._listeners.remove(cb)

    def _changed(self) -> None:
        for cb in list(self._listeners):
            cb()
