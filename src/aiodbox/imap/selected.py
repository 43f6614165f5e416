"""One session's view of its selected mailbox: message numbers and untagged updates.

Theory of operation
-------------------
Every session with a mailbox selected shares the process's
:class:`~aiodbox.storage.view.MailboxView` (flags, modseqs, sizes, dates of every
message, in arrays sorted by UID).  A session adds only what RFC 3501 makes per-session:
the *message numbering the client knows*.  It keeps a reference to the view's ``uids``
array as it was when it last told the client about the mailbox, plus ``count``, the
number of messages announced.  No per-session copy of anything:

* New messages are appended to the view's array object in place (UIDs only grow), so
  the session's prefix stays valid; they are announced with ``EXISTS`` (``count``
  grows).
* An expunge makes the view replace its array.  The session still holds the old one:
  its numbering stays stable until it may tell the client (RFC 3501 §7.4.1: no
  ``EXPUNGE`` while answering FETCH, STORE or SEARCH; this server also waits during
  non-UID COPY/MOVE).  When it may, it diffs the old prefix against the new array (a
  binary search per expunged message) and sends ``EXPUNGE`` (or ``VANISHED`` with
  QRESYNC), then adopts the new array.
* Flag changes are found in the view's ``flag_log`` ``(modseq, uid)`` above the
  session's ``flags_modseq`` mark (a scan of the modseqs array when the log has been
  trimmed past the mark).  Changes this session made itself and already answered
  (STORE, the implicit ``\\Seen`` of FETCH) are skipped by their modseq.

The order of an update batch: ``FLAGS``/``PERMANENTFLAGS`` when the mailbox's keywords
changed, then expunges, then ``FETCH (FLAGS ...)`` for changed messages (numbered after
the expunges), then ``EXISTS``.  While expunges wait, ``EXISTS`` waits too (the count
it would announce presumes them).

``\\Recent`` (RFC 3501 §2.3.2) is kept as Dovecot keeps it: the index has each
mailbox's ``first_recent_uid``, and messages from there on are recent and not yet
claimed.  A read-write session claims them (one index transaction, atomic across
processes, see :meth:`Mailbox.claim_recent`) when it selects the mailbox and when it
learns of new messages (before a command, or in IDLE before announcing them); the
claimed UIDs are recent for that session only.  A read-only session claims nothing
and sees every unclaimed message as recent.  ``* n RECENT`` goes out with ``EXISTS``
(SELECT, and new messages), and on its own when messages the client already knows
became recent later (an IDLE that ended while its claim was still running).
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from aiodbox.imap.protocol import SequenceSet
from aiodbox.imap.protocol import responses as r

if TYPE_CHECKING:
    from aiodbox.storage.mailbox import Mailbox
    from aiodbox.storage.view import MailboxView

SYSTEM_FLAGS: tuple[tuple[str, int], ...] = (
    ("\\Answered", 2),
    ("\\Flagged", 4),
    ("\\Deleted", 8),
    ("\\Seen", 1),
    ("\\Draft", 16),
)
"""System flags and their bits, in the order Dovecot lists them."""
SYSTEM_FLAG_NAMES = tuple(name for name, _ in SYSTEM_FLAGS)
_BY_LOWER = {name.lower(): bit for name, bit in SYSTEM_FLAGS}
_SYSTEM_BYTES = tuple(
    b" ".join(name.encode() for name, bit in SYSTEM_FLAGS if bits & bit) for bits in range(32)
)


class BadSequence(Exception):
    """A message sequence number beyond the mailbox (Dovecot answers BAD)."""


def system_flag_bit(name: str) -> int | None:
    """The bit of a system flag name (case-insensitive), or None."""
    return _BY_LOWER.get(name.lower())


def flag_list_bytes(bits: int, keywords: Sequence[str], recent: bool = False) -> bytes:
    """``(\\Seen \\Recent $Label1)`` for a message's flags (``\\Recent`` after the
    stored system flags, as Dovecot lists it)."""
    system = _SYSTEM_BYTES[bits & 31]
    if recent:
        system = system + b" \\Recent" if system else b"\\Recent"
    if not keywords:
        return b"(" + system + b")"
    kw = " ".join(keywords).encode("utf-8", "replace")
    return b"(" + system + (b" " if system else b"") + kw + b")"


def flag_names(bits: int, keywords: Iterable[str]) -> list[str]:
    """The flags of a message as names, system flags first."""
    return [name for name, bit in SYSTEM_FLAGS if bits & bit] + list(keywords)


class SelectedMailbox:
    """The selected mailbox of one session; see the module docstring.

    Attributes:
        mailbox: The shared mailbox handle (close it with :meth:`close`).
        readonly: EXAMINE (or SELECT of a mailbox that cannot be written).
        uids: The view's UID array as last announced (shared, never modified here).
        count: How many messages of ``uids`` the client knows.
        flags_modseq: Flag changes up to this modseq have been reported.
        condstore: CONDSTORE is on for this mailbox (MODSEQ in flag updates).
        qresync: QRESYNC is on (VANISHED instead of EXPUNGE, UID in flag updates).
        saved: The SEARCHRES ``$`` result (UIDs), or None.
        recent: The UIDs that are ``\\Recent`` for this session, as half-open ranges.
    """

    __slots__ = (
        "_keywords",
        "_own",
        "_recent_announced",
        "condstore",
        "count",
        "flags_modseq",
        "mailbox",
        "qresync",
        "readonly",
        "recent",
        "saved",
        "uids",
        "view",
    )

    def __init__(
        self, mailbox: Mailbox, *, readonly: bool, condstore: bool = False, qresync: bool = False
    ) -> None:
        view = mailbox.view
        self.mailbox = mailbox
        self.view: MailboxView = view
        self.readonly = readonly
        self.uids: array[int] = view.uids
        self.count = len(view.uids)
        self.flags_modseq = view.highestmodseq
        self.condstore = condstore or qresync
        self.qresync = qresync
        self.saved: list[int] | None = None
        self._keywords = view.mailbox_keywords
        self._own: set[int] | None = None
        self.recent: list[tuple[int, int]] = []
        if readonly:  # sees what nobody claimed, claims nothing
            self.recent.append((view.first_recent_uid, 1 << 32))
        self._recent_announced = -1

    async def close(self) -> None:
        """Release the shared mailbox."""
        await self.mailbox.close()

    # ---------------------------------------------------------------- \\Recent

    async def claim_recent(self) -> None:
        """Take the recent messages nobody claimed yet (read-write sessions; a write
        only when the view knows of something to claim)."""
        if not self.can_claim_recent():
            return
        claimed = await self.mailbox.claim_recent()
        if claimed is not None:
            self.recent.append(claimed)

    def can_claim_recent(self) -> bool:
        """Whether :meth:`claim_recent` may find something (read-write, and the view
        knows of messages nobody claimed); no I/O."""
        view = self.view
        return not self.readonly and view.first_recent_uid < view.uidnext

    def is_recent(self, uid: int) -> bool:
        """Whether ``uid`` is ``\\Recent`` in this session."""
        return any(lo <= uid < hi for lo, hi in self.recent)

    def recent_count(self) -> int:
        """How many of the messages the client knows are ``\\Recent``."""
        uids, count = self.uids, self.count
        return sum(
            bisect.bisect_left(uids, hi, 0, count) - bisect.bisect_left(uids, lo, 0, count)
            for lo, hi in self.recent
        )

    def recent_response(self) -> bytes:
        """``* n RECENT`` (remembered as announced)."""
        self._recent_announced = self.recent_count()
        return r.recent_response(self._recent_announced)

    # ------------------------------------------------------------- numbering

    @property
    def known_uids(self) -> array[int]:
        """The UIDs the client knows, in sequence order (a copy)."""
        return self.uids[: self.count]

    @property
    def largest_uid(self) -> int:
        """The highest UID the client knows (0 when the mailbox is empty to it)."""
        return self.uids[self.count - 1] if self.count else 0

    def seq_of(self, uid: int) -> int | None:
        """The sequence number of ``uid`` as the client knows it, or None."""
        i = bisect.bisect_left(self.uids, uid, 0, self.count)
        if i < self.count and self.uids[i] == uid:
            return i + 1
        return None

    def indices(self, sequence_set: SequenceSet, *, uid: bool) -> list[int]:
        """0-based message indices named by a sequence set (ascending, each once).

        With ``uid``, UIDs the client does not know are ignored (RFC 3501); without it,
        a number beyond the mailbox raises :class:`BadSequence` as Dovecot does.  ``$``
        (SEARCHRES) stands for the saved search result.

        Raises:
            BadSequence: A message sequence number does not exist.
        """
        count = self.count
        uids = self.uids
        if sequence_set.saved:
            saved = self.saved or []
            out: list[int] = []
            for u in saved:
                i = bisect.bisect_left(uids, u, 0, count)
                if i < count and uids[i] == u:
                    out.append(i)
            return out
        if not uid:
            ranges = sequence_set.resolve(count)
            if ranges and ranges[-1][1] > count:
                raise BadSequence("Invalid messageset")
            return [i for lo, hi in ranges for i in range(lo - 1, hi)]
        result: list[int] = []
        for lo, hi in sequence_set.resolve(self.largest_uid):
            i = bisect.bisect_left(uids, lo, 0, count)
            j = bisect.bisect_right(uids, hi, 0, count)
            result.extend(range(i, j))
        return result

    # ------------------------------------------------------------- current state

    def flags_of(self, uid: int) -> tuple[int, tuple[str, ...]] | None:
        """Current ``(system bits, keywords)`` of ``uid``; None if it was expunged."""
        view = self.view
        i = view.index_of(uid)
        if i is None:
            return None
        return view.flags[i], view.keywords[i]

    def note_own_change(self, modseq: int) -> None:
        """This session changed flags at ``modseq`` and told the client already."""
        if modseq:
            if self._own is None:
                self._own = set()
            self._own.add(modseq)

    def flags_responses(self) -> list[bytes]:
        """``* FLAGS`` and ``* OK [PERMANENTFLAGS]`` for the mailbox's keywords now."""
        self._keywords = keywords = self.view.mailbox_keywords
        flags = [*SYSTEM_FLAG_NAMES, *keywords]
        if self.readonly:
            permanent = r.untagged_status(
                "OK", "Read-only mailbox.", r.ResponseCode.permanentflags(())
            )
        else:
            permanent = r.untagged_status(
                "OK", "Flags permitted.", r.ResponseCode.permanentflags([*flags, "\\*"])
            )
        return [r.flags_response(flags), permanent]

    def keyword_updates(self) -> list[bytes]:
        """``FLAGS``/``PERMANENTFLAGS`` if the mailbox's keywords changed since last told."""
        if self.view.mailbox_keywords == self._keywords:
            return []
        return self.flags_responses()

    # ------------------------------------------------------------- updates

    @property
    def has_pending_expunges(self) -> bool:
        """True when the client has not been told about expunges yet."""
        return self.uids is not self.view.uids

    def updates(self, *, allow_expunge: bool) -> list[bytes]:
        """The untagged responses the client is owed now (may be empty).

        Args:
            allow_expunge: Expunges may be reported (not while answering FETCH, STORE,
                SEARCH); when False, ``EXISTS`` waits as well.
        """
        view = self.view
        out = self.keyword_updates()
        if self.uids is not view.uids and allow_expunge:
            out += self._expunges()
        out += self._flag_changes()
        if self.uids is view.uids and len(view.uids) > self.count:
            self.count = len(view.uids)
            out.append(r.exists_response(self.count))
            if self.recent_count() != self._recent_announced:
                out.append(self.recent_response())
        elif 0 <= self._recent_announced < self.recent_count():
            # Claimed after their EXISTS went out (an IDLE that ended while claiming).
            out.append(self.recent_response())
        return out

    def _expunges(self) -> list[bytes]:
        old, known, new = self.uids, self.count, self.view.uids
        removed = _removed_indices(old, known, new)
        if removed is None:
            removed = _removed_indices_slow(old, known, new)
        self.uids = new
        self.count = known - len(removed)
        if not removed:
            return []
        if self.qresync:
            return [r.vanished_response([old[i] for i in removed])]
        # Ascending, each number already shifted by the expunges before it (as Dovecot).
        return [r.expunge_response(i + 1 - n) for n, i in enumerate(removed)]

    def _flag_changes(self) -> list[bytes]:
        view = self.view
        mark = self.flags_modseq
        top = view.highestmodseq
        if top <= mark:
            return []
        self.flags_modseq = top
        own = self._own or ()
        self._own = None
        changed: set[int] = set()
        if mark >= view.flag_log_start:
            for modseq, uid in reversed(view.flag_log):
                if modseq <= mark:
                    break
                if modseq not in own:
                    changed.add(uid)
        else:
            modseqs, vuids = view.modseqs, view.uids
            changed.update(vuids[i] for i in range(len(vuids)) if modseqs[i] > mark)
        if not changed:
            return []
        out: list[bytes] = []
        for uid in sorted(changed):
            seq = self.seq_of(uid)
            if seq is None:
                continue
            i = view.index_of(uid)
            if i is None:
                continue
            flags = flag_list_bytes(view.flags[i], view.keywords[i], self.is_recent(uid))
            items = [b"FLAGS " + flags]
            if self.qresync:
                items.append(r.fetch_uid(uid))
            if self.condstore:
                items.append(r.fetch_modseq(view.modseqs[i]))
            out.append(r.fetch_response(seq, items))
        return out

    # ------------------------------------------------------------- IDLE

    def listen(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after every change of the shared view (IDLE)."""
        self.view.add_listener(callback)

    def unlisten(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        self.view.remove_listener(callback)


def missing_uids(
    wanted: Iterable[tuple[int, int]], present: Sequence[int], count: int
) -> list[tuple[int, int]]:
    """The parts of the UID ranges ``wanted`` not among ``present[:count]`` (ascending).

    Work is proportional to the present UIDs inside the ranges, never to the ranges'
    width (a client may ask about ``1:4294967295``).
    """
    out: list[tuple[int, int]] = []
    for lo, hi in wanted:
        i = bisect.bisect_left(present, lo, 0, count)
        cur = lo
        while cur <= hi:
            if i < count and present[i] <= hi:
                uid = present[i]
                if uid > cur:
                    out.append((cur, uid - 1))
                cur = uid + 1
                i += 1
            else:
                out.append((cur, hi))
                break
    return out


def vanished_earlier(ranges: Sequence[tuple[int, int]]) -> bytes:
    """``* VANISHED (EARLIER) 1:5,9\r\n`` for UID ranges (``b""`` when empty)."""
    if not ranges:
        return b""
    text = b",".join(b"%d" % lo if lo == hi else b"%d:%d" % (lo, hi) for lo, hi in ranges)
    return b"* VANISHED (EARLIER) " + text + b"\r\n"


def _removed_indices(old: array[int], known: int, new: array[int]) -> list[int] | None:
    """Indices of ``old[:known]`` missing from ``new``, when ``new`` is ``old`` minus some
    UIDs plus some appended at the end (the usual case): one binary search per removed
    UID.  None when that assumption does not hold."""
    removed: list[int] = []
    m = len(new)
    i = 0
    while i < known:
        shift = len(removed)
        lo, hi = i, known
        while lo < hi:  # first p with old[p] != new[p - shift]
            mid = (lo + hi) // 2
            if mid - shift < m and old[mid] == new[mid - shift]:
                lo = mid + 1
            else:
                hi = mid
        if lo >= known:
            break
        uid = old[lo]
        k = bisect.bisect_left(new, uid)
        if k < m and new[k] == uid:
            return None
        removed.append(lo)
        i = lo + 1
    return removed


def _removed_indices_slow(old: array[int], known: int, new: array[int]) -> list[int]:
    present = set(new)
    return [i for i in range(known) if old[i] not in present]
