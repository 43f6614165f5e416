"""Mailbox-list commands: CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST, LSUB, STATUS.

LIST follows RFC 3501 with RFC 5258 (LIST-EXTENDED: selection options SUBSCRIBED,
RECURSIVEMATCH, SPECIAL-USE; return options SUBSCRIBED, CHILDREN, SPECIAL-USE, STATUS
(RFC 5819)) and RFC 6154 attributes.  Like Dovecot, every reply carries
``\\HasChildren``/``\\HasNoChildren`` and special-use attributes, and a name that exists
only as the parent of other mailboxes is listed ``\\Noselect \\HasChildren`` (the storage
allows such gaps; Dovecot shows the directory that holds the children).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING

from aiodbox.imap.commands.base import CommandError, Reply, bad, no, ok
from aiodbox.imap.protocol import (
    Create,
    Delete,
    List,
    Lsub,
    Rename,
    Status,
    Subscribe,
    Unsubscribe,
)
from aiodbox.imap.protocol import responses as r
from aiodbox.storage import MailboxInfo, MailboxStatus
from aiodbox.storage import names as mbnames
from aiodbox.storage.errors import (
    InvalidMailboxName,
    MailboxExists,
    MailboxHasChildren,
    MailboxNotFound,
)

if TYPE_CHECKING:
    from aiodbox.imap.connection import ImapConnection
    from aiodbox.storage import User

SEP = mbnames.SEPARATOR


def _user(conn: ImapConnection) -> User:
    user = conn.user
    assert user is not None
    return user


def _name(raw: str) -> str:
    """A mailbox name from the client, normalised (a trailing separator dropped, as
    RFC 3501 CREATE allows)."""
    name = raw[:-1] if raw.endswith(SEP) and len(raw) > 1 else raw
    try:
        return mbnames.normalize(name)
    except InvalidMailboxName as exc:
        raise CommandError(no(f"Invalid mailbox name: {exc}", r.CANNOT)) from None


# ------------------------------------------------------------------------- CREATE ...


async def create(conn: ImapConnection, cmd: Create) -> Reply:
    """``CREATE name [(USE (\\Sent))]`` (RFC 6154 CREATE-SPECIAL-USE)."""
    name = _name(cmd.mailbox)
    use: str | None = None
    if cmd.special_use:
        if len(cmd.special_use) > 1 or cmd.special_use[0] not in mbnames.SPECIAL_USES:
            return no("Unsupported special-use attribute.", r.USEATTR)
        use = cmd.special_use[0]
    try:
        await _user(conn).create_mailbox(name, use)
    except MailboxExists:
        return no("Mailbox already exists", r.ALREADYEXISTS)
    return ok("Create completed.")


async def delete(conn: ImapConnection, cmd: Delete) -> Reply:
    """``DELETE name``: refused for INBOX and for mailboxes with children (as Dovecot)."""
    name = _name(cmd.mailbox)
    if name == mbnames.INBOX:
        return no("INBOX can't be deleted.")
    try:
        await _user(conn).delete_mailbox(name)
    except MailboxNotFound:
        return no(f"Mailbox doesn't exist: {cmd.mailbox}", r.NONEXISTENT)
    except MailboxHasChildren:
        return no("Mailbox has children, delete them first")
    return ok("Delete completed.")


async def rename(conn: ImapConnection, cmd: Rename) -> Reply:
    """``RENAME old new`` (children move too; subscriptions follow the names)."""
    old, new = _name(cmd.mailbox), _name(cmd.new_mailbox)
    user = _user(conn)
    subscribed = await user.subscriptions()
    moved = [s for s in subscribed if s == old or mbnames.is_child(s, old)]
    try:
        await user.rename_mailbox(old, new)
    except MailboxNotFound:
        return no(f"Mailbox doesn't exist: {cmd.mailbox}", r.NONEXISTENT)
    except MailboxExists:
        return no("Target mailbox already exists", r.ALREADYEXISTS)
    if old != mbnames.INBOX:
        for s in moved:
            await user.subscribe(new + s[len(old) :])
    return ok("Rename completed.")


async def subscribe(conn: ImapConnection, cmd: Subscribe) -> Reply:
    """``SUBSCRIBE name`` (the mailbox need not exist)."""
    await _user(conn).subscribe(_name(cmd.mailbox))
    return ok("Subscribe completed.")


async def unsubscribe(conn: ImapConnection, cmd: Unsubscribe) -> Reply:
    """``UNSUBSCRIBE name``."""
    await _user(conn).unsubscribe(_name(cmd.mailbox))
    return ok("Unsubscribe completed.")


# ------------------------------------------------------------------------- LIST


MAX_WILDCARDS = 16
"""More wildcards than this in one LIST pattern are refused (regular-expression
backtracking grows with their number; real clients use one or two)."""


def pattern_regex(reference: str, pattern: str) -> re.Pattern[str]:
    """The regular expression for ``reference`` + ``pattern`` (``*`` any, ``%`` no ``/``);
    ``INBOX`` as the first level matches in any case.

    Raises:
        CommandError: The pattern has more than :data:`MAX_WILDCARDS` wildcards.
    """
    full = pattern if pattern.startswith(SEP) or not reference else reference + pattern
    if full[:5].upper() == mbnames.INBOX and (len(full) == 5 or full[5] in (SEP, "*", "%")):
        full = mbnames.INBOX + full[5:]
    full = re.sub(r"[*%]*\*[*%]*", "*", full)  # a run holding "*" is just "*"
    full = re.sub(r"%+", "%", full)
    if full.count("*") + full.count("%") > MAX_WILDCARDS:
        raise CommandError(no("Too many wildcards in the pattern.", r.LIMIT))
    parts = []
    for ch in full:
        if ch == "*":
            parts.append(".*")
        elif ch == "%":
            parts.append(f"[^{re.escape(SEP)}]*")
        else:
            parts.append(re.escape(ch))
    return re.compile("".join(parts), re.DOTALL)


def _sort_key(name: str) -> tuple[int, str]:
    return (0 if name == mbnames.INBOX else 1, name)


def _with_parents(names: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for name in names:
        out.add(name)
        out.update(mbnames.parents(name))
    return out


def _has_children(name: str, names: set[str]) -> bool:
    prefix = name + SEP
    return any(n.startswith(prefix) for n in names)


async def list_(conn: ImapConnection, cmd: List) -> Reply:
    """``LIST`` (RFC 3501, RFC 5258, RFC 5819, RFC 6154)."""
    user = _user(conn)
    out = conn.output
    if len(cmd.patterns) == 1 and cmd.patterns[0] == "" and not cmd.select_options:
        # The hierarchy delimiter query.
        out.write(r.list_response("", SEP, ["\\Noselect"]))
        return ok("List completed.")
    select, returns = cmd.select_options, cmd.return_options
    infos = {i.name: i for i in await user.list_mailboxes()}
    want_subs = bool({"SUBSCRIBED"} & (select | returns)) or "RECURSIVEMATCH" in select
    subs = set(await user.subscriptions()) if want_subs else set()
    regexes = [pattern_regex(cmd.reference, p) for p in cmd.patterns if p != ""]
    existing = set(infos)
    tree = _with_parents(existing)
    candidates = tree | subs if "SUBSCRIBED" in select else tree

    def matches(name: str) -> bool:
        return any(rx.fullmatch(name) for rx in regexes)

    listed: list[tuple[str, list[str], list[str]]] = []
    for name in sorted(candidates, key=_sort_key):
        info = infos.get(name)
        childinfo: list[str] = []
        if "SUBSCRIBED" in select and name not in subs:
            if "RECURSIVEMATCH" in select and any(s.startswith(name + SEP) for s in subs):
                childinfo = ["SUBSCRIBED"]
            else:
                continue
        if "SPECIAL-USE" in select and (info is None or not info.special_use):
            continue
        if not matches(name):
            continue
        attrs: list[str] = []
        if info is None:
            if cmd.extended and name not in tree:
                attrs.append("\\NonExistent")
            else:
                attrs.append("\\Noselect")
        attrs.append("\\HasChildren" if _has_children(name, existing) else "\\HasNoChildren")
        if name in subs and ("SUBSCRIBED" in returns or "SUBSCRIBED" in select):
            attrs.append("\\Subscribed")
        if info is not None and info.special_use:
            attrs.append(info.special_use)
        listed.append((name, attrs, childinfo))

    status_items = cmd.status_items if "STATUS" in returns else ()
    for name, attrs, childinfo in listed:
        out.buffer(r.list_response(name, SEP, attrs, childinfo=childinfo))
        info = infos.get(name)
        if status_items and info is not None:
            try:
                st = await user.status(name)
            except MailboxNotFound:
                continue
            out.buffer(r.status_response(name, status_pairs(conn, status_items, st)))
            await out.drain()
    await out.drain()
    return ok("List completed.")


async def lsub(conn: ImapConnection, cmd: Lsub) -> Reply:
    """``LSUB``: subscribed names; a parent matched only through ``%`` is ``\\Noselect``."""
    user = _user(conn)
    out = conn.output
    if cmd.pattern == "":
        out.write(r.list_response("", SEP, ["\\Noselect"], lsub=True))
        return ok("Lsub completed.")
    subs = set(await user.subscriptions())
    infos = {i.name: i for i in await user.list_mailboxes()}
    rx = pattern_regex(cmd.reference, cmd.pattern)
    for name in sorted(_with_parents(subs), key=_sort_key):
        if not rx.fullmatch(name):
            continue
        attrs: list[str] = []
        info: MailboxInfo | None = infos.get(name)
        if name not in subs or info is None:
            attrs.append("\\Noselect")
        if info is not None and info.special_use:
            attrs.append(info.special_use)
        out.buffer(r.list_response(name, SEP, attrs, lsub=True))
    await out.drain()
    return ok("Lsub completed.")


# ------------------------------------------------------------------------- STATUS


def status_pairs(
    conn: ImapConnection, items: Iterable[str], st: MailboxStatus
) -> list[tuple[str, int]]:
    """``(item, value)`` pairs in the client's order (``RECENT``: messages no session
    has claimed as ``\\Recent`` yet)."""
    values = {
        "MESSAGES": st.messages,
        "RECENT": st.recent,
        "UIDNEXT": st.uidnext,
        "UIDVALIDITY": st.uidvalidity,
        "UNSEEN": st.unseen,
        "HIGHESTMODSEQ": st.highestmodseq,
        "SIZE": st.size,
        "DELETED": st.deleted,
    }
    return [(item, values[item]) for item in dict.fromkeys(items) if item in values]


async def status(conn: ImapConnection, cmd: Status) -> Reply:
    """``STATUS name (items)`` from the index alone (no message is opened)."""
    name = _name(cmd.mailbox)
    try:
        st = await _user(conn).status(name)
    except MailboxNotFound:
        return no(f"Mailbox doesn't exist: {cmd.mailbox}", r.NONEXISTENT)
    if "HIGHESTMODSEQ" in cmd.items and "CONDSTORE" not in conn.enabled:
        # RFC 7162 §3.1: STATUS HIGHESTMODSEQ is a CONDSTORE-enabling command.
        conn.enabled = conn.enabled | {"CONDSTORE"}
        sel = conn.selected
        if sel is not None and not sel.condstore:
            sel.condstore = True
            conn.output.write(
                r.untagged_status(
                    "OK", "Highest", r.ResponseCode.highestmodseq(sel.view.highestmodseq)
                )
            )
    conn.output.write(r.status_response(cmd.mailbox, status_pairs(conn, cmd.items, st)))
    return ok("Status completed.")


__all__ = [
    "bad",
    "create",
    "delete",
    "list_",
    "lsub",
    "pattern_regex",
    "rename",
    "status",
    "subscribe",
    "unsubscribe",
]
