"""The aiodbox side of every importer: target mailboxes, batched saves, ordered prefetch.

Theory of operation
===================

An importer reads a foreign store and hands each message to a :class:`BatchSaver` as an
:class:`Incoming` (body as bytes or an async stream of CRLF bytes, flags, keywords,
INTERNALDATE, optionally GUID and UID).  The saver streams it into an open
:class:`~aiodbox.storage.mailbox.Transaction` and commits every ``batch`` messages, so a
large mailbox is many small transactions: memory stays bounded, progress is durable, and
an interrupted import keeps what it committed.  Storage allows explicit UIDs only for all
saves of a transaction or for none, ascending and >= UIDNEXT, so the saver commits early
when an importer switches between the two.

:func:`prepare_mailbox` decides what happens to the target mailbox before anything is
saved into it:

``created``
    It did not exist: created with the source's GUID and UIDVALIDITY when known.
``adopted``
    It existed but was empty (the default INBOX or Sent of a new user): it takes the
    source's GUID and UIDVALIDITY (:meth:`User.reset_identity`).
``resumed``
    It holds messages and already has the source's GUID and UIDVALIDITY: an earlier
    import of this very mailbox was interrupted; the caller imports only UIDs >= its
    UIDNEXT.
``appended``
    It holds other messages and the caller did not insist on keeping UIDs: new UIDs.

When UIDs must be kept and none of these applies, :class:`ImportConflict` is raised and
nothing is changed.

:func:`ordered_prefetch` runs up to ``depth`` preparatory jobs (opening the next source
messages) while the current one is being saved, and yields their results in order: the
seed's point that a high-latency store is bearable only with parallel I/O.
"""

from __future__ import annotations

import asyncio
import collections
import re
from collections.abc import AsyncGenerator, AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from aiodbox.storage import names
from aiodbox.storage.errors import MailboxNotFound

if TYPE_CHECKING:
    from aiodbox.storage.mailbox import Mailbox, Transaction
    from aiodbox.storage.storage import MailboxInfo, User

T = TypeVar("T")

GUID_RE = re.compile(r"[0-9a-f]{32}")
"""A mailbox or message GUID as aiodbox and Dovecot write it."""

DEFAULT_BATCH = 100
"""Messages per transaction."""

SPECIAL_USE_NAMES: dict[str, str] = {
    "sent": "\\Sent",
    "sent messages": "\\Sent",
    "sent items": "\\Sent",
    "drafts": "\\Drafts",
    "trash": "\\Trash",
    "deleted messages": "\\Trash",
    "deleted items": "\\Trash",
    "junk": "\\Junk",
    "spam": "\\Junk",
    "archive": "\\Archive",
    "archives": "\\Archive",
}
"""Top-level names that usually mean a special-use folder (RFC 6154).  Dovecot keeps
special-use in its config, not in the mail store, so an import can only guess from the
name; a guess is used only when no mailbox of the user has that attribute yet."""


class ImportConflict(Exception):
    """The target mailbox holds other messages and UIDs were to be kept (nothing changed)."""


class SourceReadError(OSError):
    """Reading a message from the source failed part-way (its batch was rolled back)."""


class ProgressSink(Protocol):
    """What importers report progress to (``aiodbox.cli.common.Progress`` fits)."""

    def step(self, n: int = 1) -> None:
        """Count ``n`` more messages done."""

    def close(self) -> None:
        """The mailbox is done."""


ProgressFactory = Callable[[str, int], ProgressSink]
"""``factory(label, total)`` → a sink for one mailbox."""


class _NoProgress:
    def step(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(label: str, total: int) -> ProgressSink:
    """A :data:`ProgressFactory` that shows nothing."""
    return _NoProgress()


@dataclass
class MailboxResult:
    """What one mailbox import did.

    Attributes:
        name: The aiodbox mailbox name.
        mode: ``created``, ``adopted``, ``resumed`` or ``appended`` (module docstring).
        imported: Messages saved.
        skipped: Messages not saved because an earlier import had saved them.
        failed: Messages that could not be read from the source (see the report's
            ``problems``).
        uidvalidity: The mailbox's UIDVALIDITY after the import.
    """

    name: str
    mode: str
    imported: int = 0
    skipped: int = 0
    failed: int = 0
    uidvalidity: int = 0


@dataclass
class ImportReport:
    """The outcome of an import.

    Attributes:
        source: What was imported (path and format).
        mailboxes: One entry per mailbox written to.
        subscribed: Subscriptions added.
        problems: One line per message or mailbox that could not be imported.
        warnings: Things kept only partly (flags or names a format cannot hold ...).
    """

    source: str
    mailboxes: list[MailboxResult] = field(default_factory=list)
    subscribed: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def imported(self) -> int:
        """Messages saved in all mailboxes."""
        return sum(m.imported for m in self.mailboxes)


@dataclass(frozen=True, slots=True)
class Incoming:
    """One message for :class:`BatchSaver`.

    Attributes:
        body: The message bytes with CRLF line ends, whole or as async chunks.
        flags: System flag bits (aiodbox's, see ``aiodbox.index.schema.FLAG_BITS``).
        keywords: Keyword names.
        internal_date: INTERNALDATE as UNIX time (None: now).
        guid: The message GUID to keep, or None for a new one.
        uid: The UID to keep, or None for the next free one.
        size_hint: The size of ``body`` if known (mdbox picks a file by it).
    """

    body: AsyncIterable[bytes] | bytes
    flags: int = 0
    keywords: tuple[str, ...] = ()
    internal_date: int | None = None
    guid: str | None = None
    uid: int | None = None
    size_hint: int | None = None


@dataclass(frozen=True, slots=True)
class PreparedMailbox:
    """The target mailbox, ready for saves (see :func:`prepare_mailbox`)."""

    info: MailboxInfo
    mode: Literal["created", "adopted", "resumed", "appended"]


async def _existing(user: User, name: str) -> MailboxInfo | None:
    try:
        return await user.get_mailbox_info(name)
    except MailboxNotFound:
        return None


async def guess_special_use(user: User, name: str) -> str | None:
    """The special-use attribute ``name`` suggests, if no mailbox of ``user`` has it."""
    if names.SEPARATOR in name:
        return None
    use = SPECIAL_USE_NAMES.get(name.lower())
    if use is None:
        return None
    taken = {m.special_use for m in await user.list_mailboxes()}
    return None if use in taken else use


async def prepare_mailbox(
    user: User,
    name: str,
    *,
    guid: str | None,
    uidvalidity: int | None,
    keep_uids: bool,
) -> PreparedMailbox:
    """Create or take over the target mailbox ``name`` (see the module docstring).

    Args:
        user: The aiodbox user.
        name: The (normalised) mailbox name.
        guid: The source mailbox GUID (32 hex digits), or None.
        uidvalidity: The source UIDVALIDITY, or None.
        keep_uids: The caller will save with the source's UIDs.

    Returns:
        The mailbox and what was done to it.

    Raises:
        ImportConflict: ``keep_uids`` and the mailbox holds other messages.
        StorageError: the storage refused (invalid name ...).
    """
    if guid is not None and not GUID_RE.fullmatch(guid):
        guid = None
    if guid is not None:
        for other in await user.list_mailboxes():
            if other.guid == guid and other.name != name:
                guid = None  # an earlier import under another name: a new GUID here
                break
    info = await _existing(user, name)
    if info is None:
        use = await guess_special_use(user, name)
        info = await user.create_mailbox(name, use, guid=guid, uidvalidity=uidvalidity or None)
        return PreparedMailbox(info, "created")
    status = await user.status(name)
    if status.messages == 0 and keep_uids and uidvalidity:
        if guid is None:
            guid = info.guid
        if (guid, uidvalidity) != (info.guid, info.uidvalidity):
            info = await user.reset_identity(name, guid=guid, uidvalidity=uidvalidity)
        return PreparedMailbox(info, "adopted")
    if status.messages == 0 or not keep_uids:
        return PreparedMailbox(info, "appended")
    if uidvalidity == info.uidvalidity and (guid is None or guid == info.guid):
        return PreparedMailbox(info, "resumed")
    raise ImportConflict(
        f"mailbox {name!r} of user {user.name!r} already holds {status.messages} "
        f"message(s) (UIDVALIDITY {info.uidvalidity}, not the source's {uidvalidity}): "
        "refusing to merge; import into a new user, or delete or rename that mailbox first"
    )


class BatchSaver:
    """Save messages into one mailbox, ``batch`` per transaction (module docstring).

    Use as ``async with BatchSaver(mbox) as saver: await saver.add(msg)``; leaving the
    block normally commits the last batch, leaving it by an exception rolls that batch
    back (committed batches stay).
    """

    def __init__(
        self, mailbox: Mailbox, *, batch: int = DEFAULT_BATCH, progress: ProgressSink | None = None
    ) -> None:
        if batch < 1:
            raise ValueError("batch must be positive")
        self.mailbox = mailbox
        self.batch = batch
        self.progress = progress or _NoProgress()
        self.saved = 0
        self.last_uid = 0
        self._tx: Transaction | None = None
        self._in_tx = 0
        self._explicit: bool | None = None

    async def add(self, msg: Incoming) -> None:
        """Stream ``msg`` into the current transaction; commit when the batch is full.

        Raises:
            StorageError: the save or a commit failed (the current batch is discarded).
            Exception: whatever reading ``msg.body`` raised (likewise).
        """
        explicit = msg.uid is not None
        if self._tx is not None and explicit != self._explicit:
            await self.flush()
        if self._tx is None:
            self._tx = self.mailbox.transaction()
            self._explicit = explicit
        tx = self._tx
        try:
            await tx.save(
                msg.body,
                flags=msg.flags,
                keywords=msg.keywords,
                internal_date=msg.internal_date,
                size_hint=msg.size_hint,
                guid=msg.guid,
                uid=msg.uid,
            )
        except BaseException:
            self._tx = None  # save() rolled the transaction back
            self._in_tx = 0
            raise
        self._in_tx += 1
        if self._in_tx >= self.batch:
            await self.flush()

    async def flush(self) -> None:
        """Commit the current batch (if any)."""
        tx, n = self._tx, self._in_tx
        self._tx, self._in_tx = None, 0
        if tx is None or n == 0:
            return
        result = await tx.commit()
        self.saved += n
        if result.saved_uids:
            self.last_uid = max(self.last_uid, result.saved_uids[-1])
        self.progress.step(n)

    async def rollback(self) -> None:
        """Discard the current batch."""
        tx, self._tx, self._in_tx = self._tx, None, 0
        if tx is not None:
            await tx.rollback()

    async def __aenter__(self) -> BatchSaver:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            await self.flush()
        else:
            await self.rollback()


async def ordered_prefetch(
    jobs: Iterable[Callable[[], Awaitable[T]]],
    depth: int,
    *,
    discard: Callable[[T], Awaitable[None]] | None = None,
) -> AsyncGenerator[T, None]:
    """Run ``jobs`` with up to ``depth`` in flight; yield their results in job order.

    A job should return its failure as a value rather than raise: an exception ends the
    iteration (after the other jobs were cancelled).  Results produced but never
    consumed (the consumer stopped early) are passed to ``discard`` (to close handles).
    Use it with ``contextlib.aclosing`` so that an early stop cleans up at once.
    """
    if depth < 1:
        raise ValueError("depth must be positive")
    source = iter(jobs)
    pending: collections.deque[asyncio.Task[T]] = collections.deque()

    def refill() -> None:
        while len(pending) < depth:
            job = next(source, None)
            if job is None:
                return

            async def run(job: Callable[[], Awaitable[T]] = job) -> T:
                return await job()

            pending.append(asyncio.ensure_future(run()))

    try:
        refill()
        while pending:
            task = pending.popleft()
            result = await task
            refill()
            yield result
    finally:
        for task in pending:
            task.cancel()
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        if discard is not None:
            for outcome in outcomes:
                if not isinstance(outcome, BaseException):
                    await discard(outcome)
