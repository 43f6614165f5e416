"""``SEARCH`` / ``UID SEARCH`` with ESEARCH (RFC 4731), SEARCHRES (RFC 5182), WITHIN
(RFC 5032) and CONDSTORE ``MODSEQ``.

The IMAP search program is translated into the storage's criteria tree
(:mod:`aiodbox.storage.search`), with message sequence numbers turned into UIDs through
the session's own numbering; ``Mailbox.search`` then answers index keys at once and
reads content with bounded prefetch.  Keys the storage tree has no node for are
answered here from the shared view, without I/O: ``OLDER``/``YOUNGER`` (seconds, not
days) become UID sets, and so do ``RECENT``/``NEW``/``OLD`` (the session's ``\\Recent``
UIDs, see :mod:`aiodbox.imap.selected`).
"""

from __future__ import annotations

import codecs
import time
from typing import TYPE_CHECKING

from aiodbox.imap.commands.base import CommandError, Reply, no, ok
from aiodbox.imap.protocol import (
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
)
from aiodbox.imap.protocol import responses as r
from aiodbox.imap.selected import SelectedMailbox, system_flag_bit
from aiodbox.message.decode import lookup_charset
from aiodbox.storage import search as s

if TYPE_CHECKING:
    from aiodbox.imap.connection import ImapConnection

_HEADER_TEXT = {"FROM": "from", "TO": "to", "CC": "cc", "BCC": "bcc", "SUBJECT": "subject"}
_NOTHING: s.Criterion = s.Not(s.All())


class _Translator:
    """IMAP search keys → storage criteria for one session's numbering."""

    def __init__(self, sel: SelectedMailbox, charset: str) -> None:
        self.sel = sel
        self.charset = charset
        self.uses_modseq = False

    def text(self, value: bytes) -> str:
        try:
            return value.decode(self.charset)
        except (UnicodeDecodeError, LookupError):
            raise CommandError(
                no("Invalid search string for the charset.", r.ResponseCode.badcharset())
            ) from None

    def uid_ranges(self, indices: list[int]) -> s.Criterion:
        uids = self.sel.uids
        ranges: list[tuple[int, int]] = []
        for i in indices:
            u = uids[i]
            if ranges and ranges[-1][1] + 1 == u:
                ranges[-1] = (ranges[-1][0], u)
            else:
                ranges.append((u, u))
        return s.UidSet(tuple(ranges)) if ranges else _NOTHING

    def key(self, key: SearchKey) -> s.Criterion:
        match key:
            case SearchAll():
                return s.All()
            case SearchAnd(keys):
                return s.And(tuple(self.key(k) for k in keys))
            case SearchOr(left, right):
                return s.Or(self.key(left), self.key(right))
            case SearchNot(inner):
                return s.Not(self.key(inner))
            case SearchFlag(flag, present):
                if flag.upper() == "\\RECENT":  # this session's (selected.py)
                    if not self.sel.recent:
                        return _NOTHING if present else s.All()
                    recent = s.UidSet(tuple((lo, hi - 1) for lo, hi in self.sel.recent))
                    return recent if present else s.Not(recent)
                if flag.startswith("\\"):
                    bit = system_flag_bit(flag)
                    if bit is None:
                        return _NOTHING if present else s.All()
                    return s.HasFlag(bit, present)
                return s.HasKeyword(flag, present)
            case SearchHeader(field, value):
                text = self.text(value)
                name = _HEADER_TEXT.get(field.upper())
                if name is not None:
                    return s.Text(name, text)  # type: ignore[arg-type]
                return s.Header(field, text)
            case SearchText(scope, value):
                return s.Text("body" if scope == "BODY" else "text", self.text(value))
            case SearchDate(scope, op, date):
                cls = s.InternalDate if scope == "INTERNAL" else s.SentDate
                return cls(op.lower(), date)  # type: ignore[arg-type]
            case SearchSize(op, size):
                return s.Size("larger" if op == "LARGER" else "smaller", size)
            case SearchModSeq(modseq):
                self.uses_modseq = True
                return s.ModSeq(modseq)
            case SearchSequence(sequence_set, uid):
                return self.uid_ranges(self.sel.indices(sequence_set, uid=uid))
            case SearchAge(op, seconds):
                return self.age(op, seconds)
        raise CommandError(no("Unsupported search key."))

    def age(self, op: str, seconds: int) -> s.Criterion:
        """OLDER/YOUNGER: compared with the internal date, to the second."""
        sel = self.sel
        view = sel.view
        limit = time.time() - seconds
        picked = []
        for i in range(sel.count):
            vi = view.index_of(sel.uids[i])
            if vi is None:
                continue
            date = view.dates[vi]
            if (date <= limit) if op == "OLDER" else (date >= limit):
                picked.append(i)
        return self.uid_ranges(picked)


def _charset(name: str | None) -> str:
    """The codec for ``CHARSET name`` (UTF-8 by default; any text codec Python knows)."""
    if name is None:
        return "utf-8"
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):
        raise CommandError(
            no("Unsupported charset.", r.ResponseCode.badcharset(("UTF-8", "US-ASCII")))
        )
    return lookup_charset(info.name)


async def search(conn: ImapConnection, cmd: Search) -> Reply:
    """``[UID] SEARCH [RETURN (...)] [CHARSET c] keys``."""
    sel = conn.selected
    assert sel is not None
    translator = _Translator(sel, _charset(cmd.charset))
    criteria = translator.key(cmd.criteria)
    if translator.uses_modseq and not sel.condstore:
        conn.enabled = conn.enabled | {"CONDSTORE"}
        sel.condstore = True
    current = sel.uids is sel.view.uids and sel.count == len(sel.view.uids)
    scope = None if current else list(sel.known_uids)
    found: list[int] = []
    async for uid in sel.mailbox.search(criteria, uids=scope):
        found.append(uid)
    view = sel.view
    modseq: int | None = None
    if translator.uses_modseq and found:
        modseq = max(view.modseqs[vi] for u in found if (vi := view.index_of(u)) is not None)
    numbers = found if cmd.uid else [sel.seq_of(u) or 0 for u in found]
    options = cmd.return_options
    out = conn.output
    if options is None:
        out.write(r.search_response(numbers, modseq))
        return ok("Search completed.")
    if "SAVE" in options:
        saved = found
        if "MIN" in options or "MAX" in options:
            picks = []
            if found and "MIN" in options:
                picks.append(found[0])
            if found and "MAX" in options:
                picks.append(found[-1])
            saved = sorted(set(picks))
        sel.saved = list(saved)
    shown = set(options) - {"SAVE"}
    if shown or not options:
        out.write(
            r.esearch_response(
                tag=cmd.tag,
                uid=cmd.uid,
                minimum=numbers[0] if numbers and "MIN" in shown else None,
                maximum=numbers[-1] if numbers and "MAX" in shown else None,
                all_numbers=numbers if "ALL" in shown else None,
                count=len(numbers) if "COUNT" in shown else None,
                modseq=modseq,
            )
        )
    return ok("Search completed.")
