"""Noticing changes made by other processes: coalesced syncs and the IDLE poller.

Theory of operation
-------------------
Changes made in this process reach every session at once: a commit refreshes the
shared view, and the view calls its listeners.  Changes made by *other* processes (a
second ``aiodbox serve`` worker, LMTP in another process, the CLI) are found by
``Mailbox.sync()``, a ``PRAGMA data_version`` query on the user's SQLite reader (a
worker-thread round trip) followed, when something changed, by reading the changed rows.

A :class:`MailboxWatch` exists per open mailbox and does two things:

* :meth:`MailboxWatch.sync` coalesces: sessions that ask while a sync is running wait
  for the *next* one (which starts after theirs was requested, so it sees every commit
  they could have seen), and all of them share it.  A thousand NOOPs cost a handful of
  queries, not a thousand.
* While at least one session on the mailbox is in IDLE, a timer polls every
  ``interval`` seconds (one timer and, while a poll runs, one task per mailbox — not
  per session).  What the poll finds reaches the idling sessions through the view's
  listeners.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from aiodbox.storage.mailbox import Mailbox

log = logging.getLogger("aiodbox.imap")

IDLE_POLL_INTERVAL = 1.0
"""Seconds between checks for other processes' changes while a session IDLEs."""


class MailboxWatch:
    """Coalesced syncs and IDLE polling for one mailbox; see the module docstring."""

    __slots__ = (
        "__weakref__",
        "_idlers",
        "_mailbox",
        "_poll_task",
        "_queued",
        "_task",
        "_timer",
        "interval",
    )

    def __init__(self, mailbox: Mailbox, interval: float = IDLE_POLL_INTERVAL) -> None:
        self._mailbox = mailbox
        self.interval = interval
        self._queued: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._idlers: list[Callable[[Exception], None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._poll_task: asyncio.Task[None] | None = None

    async def sync(self) -> None:
        """Bring the shared view up to date with every commit made before this call.

        Raises:
            StorageError: The sync failed (e.g. ``MailboxNotFound``: it was deleted).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._queued.append(fut)
        if self._task is None:
            self._task = loop.create_task(self._run())
        await fut

    async def _run(self) -> None:
        try:
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    await self._mailbox.sync()
                except Exception as exc:
                    for fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                else:
                    for fut in batch:
                        if not fut.done():
                            fut.set_result(None)
        finally:
            self._task = None
            for fut in self._queued:  # only left when cancelled (shutdown)
                if not fut.done():
                    fut.cancel()
            self._queued = []

    # ----------------------------------------------------------------- IDLE

    def add_idler(self, on_failure: Callable[[Exception], None]) -> None:
        """A session started IDLE on this mailbox: poll while any does.

        Args:
            on_failure: Called when a poll fails (e.g. the mailbox was deleted); what
                the poll finds otherwise arrives through the view's listeners.
        """
        self._idlers.append(on_failure)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def remove_idler(self, on_failure: Callable[[Exception], None]) -> None:
        """A session ended IDLE."""
        if on_failure in self._idlers:
            self._idlers.remove(on_failure)
        if not self._idlers and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if self._idlers:
            self._poll_task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        try:
            await self.sync()
        except Exception as exc:
            log.debug("IDLE poll of %r failed: %s", self._mailbox.name, exc)
            for callback in list(self._idlers):
                callback(exc)
        finally:
            self._poll_task = None
            if self._idlers and self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def close(self) -> None:
        """Stop polling (the mailbox is no longer open)."""
        self._idlers.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._poll_task is not None:
            self._poll_task.cancel()
            self._poll_task = None


class Watches:
    """The :class:`MailboxWatch` of every open mailbox (weakly keyed: one goes away with
    its mailbox)."""

    __slots__ = ("_by_mailbox", "interval")

    def __init__(self, interval: float = IDLE_POLL_INTERVAL) -> None:
        self.interval = interval
        self._by_mailbox: weakref.WeakKeyDictionary[Mailbox, MailboxWatch] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, mailbox: Mailbox) -> MailboxWatch:
        """The watch of ``mailbox`` (created on first use)."""
        watch = self._by_mailbox.get(mailbox)
        if watch is None:
            watch = self._by_mailbox[mailbox] = MailboxWatch(mailbox, self.interval)
        return watch

    def close(self) -> None:
        """Stop every poller (server shutdown)."""
        for watch in list(self._by_mailbox.values()):
            watch.close()
