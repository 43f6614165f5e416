"""Saved messages become visible in UID order.

RFC 3501 §2.3.1.1: UIDs are assigned in strictly ascending order as messages are added,
so a session that was told about UID n must never see a lower UID appear later (its
message numbers would shift under the client).  A transaction reserves its UIDs before
it writes the message data (the data of an sdbox save is named after its UID), and
concurrent transactions finish their data in any order; so the index transaction that
makes a save visible runs only after every lower UID reserved in the same mailbox was
made visible or given up.  Each reservation has a ``pending`` row until then.

* In this process, :class:`UidOrder` keeps the first UID of each transaction between
  its reservation and the moment it *queues* its index job, per mailbox, and lets a
  transaction queue its own index job only when none below it is left (an asyncio wait,
  never a blocked loop).  The writer connection runs queued jobs in order, so the lower
  transaction's job runs first: the later one does not wait for it to come back.
* The index job itself checks the ``pending`` rows below its UIDs: those of a live other
  process (``serve --workers``), and those of this process's transactions still in
  progress (:attr:`UidOrder.live_rows`: a lower job that could not go ahead yet).  While
  one is there it gives up and is retried a little later (see ``Transaction.commit``).

A transaction that fails after reserving ends its turn too, so nothing waits for it;
its rows are no longer live (a crash leaves them for recovery, not for ordering).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Iterator, Sequence


class UidOrder:
    """The reservations of this process's transactions that are not visible yet."""

    def __init__(self) -> None:
        # mailbox id -> sorted first UIDs of transactions that did not queue their index
        # job yet
        self._first_uids: dict[int, list[int]] = {}
        self._waiters: list[asyncio.Future[None]] = []
        #: ``pending`` row ids of the transactions in progress (read by index jobs in
        #: worker threads: a membership test only).
        self.live_rows: set[int] = set()

    @contextlib.contextmanager
    def reserved(
        self, turns: Sequence[tuple[int, int]], rows: Sequence[int] = ()
    ) -> Iterator[None]:
        """A transaction holds ``(mailbox id, first UID)`` reservations, with their
        ``pending`` ``rows``, for the block: :meth:`begin` each, and :meth:`end` each
        however the block ends."""
        for turn in turns:
            self.begin(*turn)
        self.live_rows.update(rows)
        try:
            yield
        finally:
            for turn in turns:
                self.end(*turn)
            self.live_rows.difference_update(rows)

    def queued(self, turns: Sequence[tuple[int, int]]) -> None:
        """The transaction queued its index job: later ones may queue theirs (behind it)."""
        for turn in turns:
            self.end(*turn)

    async def wait_turns(self, turns: Sequence[tuple[int, int]]) -> None:
        """:meth:`wait_turn` for a transaction's reservations (per mailbox from its
        lowest: one that saves and copies into the same mailbox holds two there)."""
        lowest: dict[int, int] = {}
        for mailbox_id, first_uid in turns:
            lowest[mailbox_id] = min(first_uid, lowest.get(mailbox_id, first_uid))
        for mailbox_id, first_uid in lowest.items():
            await self.wait_turn(mailbox_id, first_uid)

    def begin(self, mailbox_id: int, first_uid: int) -> None:
        """A transaction reserved UIDs from ``first_uid`` on (call :meth:`end` later)."""
        bisect.insort(self._first_uids.setdefault(mailbox_id, []), first_uid)

    def end(self, mailbox_id: int, first_uid: int) -> None:
        """That transaction queued its index job, or gave its UIDs up (idempotent)."""
        firsts = self._first_uids.get(mailbox_id)
        if firsts is None or first_uid not in firsts:
            return
        firsts.remove(first_uid)
        if not firsts:
            del self._first_uids[mailbox_id]
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def earlier_pending(self, mailbox_id: int, first_uid: int) -> bool:
        """Whether a transaction of this process holding UIDs below ``first_uid`` did
        not queue its index job yet."""
        firsts = self._first_uids.get(mailbox_id)  # (never an empty list)
        return firsts is not None and firsts[0] < first_uid

    async def wait_turn(self, mailbox_id: int, first_uid: int) -> None:
        """Return once no transaction of this process holding UIDs below ``first_uid``
        is left to queue its index job."""
        loop = asyncio.get_running_loop()
        while self.earlier_pending(mailbox_id, first_uid):
            waiter = loop.create_future()
            self._waiters.append(waiter)
            await waiter
