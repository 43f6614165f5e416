"""IMAP command handlers, one module per command group, and the dispatch table.

``COMMANDS`` maps a command event's name (``event.name``; ``EXAMINE`` is ``SELECT``
with ``readonly``, the UID forms share their command's name) to its
:class:`~aiodbox.imap.commands.base.CommandSpec`.  Which state a command is valid in is
the protocol core's state table; the connection checks it before dispatching.
"""

from __future__ import annotations

from aiodbox.imap.commands import (
    append,
    auth,
    copy,
    fetch,
    general,
    idle,
    mailboxes,
    search,
    select,
    store,
)
from aiodbox.imap.commands.base import CommandSpec

COMMANDS: dict[str, CommandSpec] = {
    # any state
    "CAPABILITY": CommandSpec(general.capability, sync=False),
    "NOOP": CommandSpec(general.noop),
    "LOGOUT": CommandSpec(general.logout, sync=False),
    "ID": CommandSpec(general.id_, sync=False),
    # not authenticated
    "STARTTLS": CommandSpec(auth.starttls, sync=False),
    "LOGIN": CommandSpec(auth.login, sync=False),
    "AUTHENTICATE": CommandSpec(auth.authenticate, sync=False),
    # authenticated
    "ENABLE": CommandSpec(general.enable, sync=False),
    "NAMESPACE": CommandSpec(general.namespace),
    "SELECT": CommandSpec(select.select, sync=False),
    "CREATE": CommandSpec(mailboxes.create),
    "DELETE": CommandSpec(mailboxes.delete),
    "RENAME": CommandSpec(mailboxes.rename),
    "SUBSCRIBE": CommandSpec(mailboxes.subscribe),
    "UNSUBSCRIBE": CommandSpec(mailboxes.unsubscribe),
    "LIST": CommandSpec(mailboxes.list_),
    "LSUB": CommandSpec(mailboxes.lsub),
    "STATUS": CommandSpec(mailboxes.status),
    "APPEND": CommandSpec(append.append),
    "IDLE": CommandSpec(idle.idle),
    # selected
    "CHECK": CommandSpec(select.check),
    "CLOSE": CommandSpec(select.close),
    "UNSELECT": CommandSpec(select.unselect, sync=False),
    "EXPUNGE": CommandSpec(select.expunge),
    "SEARCH": CommandSpec(search.search, expunges_with_uid_only=True),
    "FETCH": CommandSpec(fetch.fetch, expunges_with_uid_only=True),
    "STORE": CommandSpec(store.store, expunges_with_uid_only=True),
    "COPY": CommandSpec(copy.copy, expunges_with_uid_only=True),
    "MOVE": CommandSpec(copy.move),
}

__all__ = ["COMMANDS", "CommandSpec"]
