"""The narrow hook between the LMTP protocol engine and whatever stores mail.

The engine (:mod:`aiodbox.lmtp.server`) knows only the :class:`Delivery` protocol: it
asks it which user an ``RCPT TO`` address belongs to, and hands it one stream of message
bytes per user.  :class:`StorageDelivery` is the implementation over the passwd-file and
the mail store; tests may plug in anything else (aiosmtpd's handler model).

Errors a hook raises decide the reply: :class:`DeliveryError` carries its own SMTP code,
anything else is a temporary failure (``451 4.3.0``) so the MTA keeps the message and
retries, never a bounce caused by a bug or a full disk.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

# Storage imports these lazily on first use; importing them here keeps that (a quarter
# of a second of module loading) off the event loop of a running server.
import aiodbox.storage.formats
import aiodbox.storage.mailbox  # noqa: F401
from aiodbox.auth.errors import PasswdFileError
from aiodbox.storage.errors import MailboxExists, MailboxNotFound, MessageTooLarge, StorageError

if TYPE_CHECKING:
    from aiodbox.auth.authenticator import PasswdFileAuthenticator
    from aiodbox.storage.storage import Storage

log = logging.getLogger("aiodbox.lmtp")

INBOX = "INBOX"


class DeliveryError(Exception):
    """A delivery (or lookup) failed with a definite SMTP reply.

    Args:
        code: the reply code (451, 452, 550, 552, 554 ...).
        status: the RFC 3463 enhanced status code, e.g. ``"4.2.0"``.
        text: the human-readable part of the reply.
    """

    def __init__(self, code: int, status: str, text: str) -> None:
        super().__init__(f"{code} {status} {text}")
        self.code = code
        self.status = status
        self.text = text

    @property
    def temporary(self) -> bool:
        """True for a 4xx reply: the MTA should try again later."""
        return 400 <= self.code < 500


@dataclass(frozen=True, slots=True)
class DeliveryEnvelope:
    """What a delivery knows about the transaction besides the bytes.

    Attributes:
        mail_from: the reverse path without brackets ("" for ``<>``).
        recipient: the RCPT TO address (without brackets) that named this user first.
        transaction_id: the id in the trace header and in the replies.
        size_hint: the message size (with the trace headers) when the client announced
            ``SIZE=``, else None.
    """

    mail_from: str
    recipient: str
    transaction_id: str
    size_hint: int | None = None


class Delivery(Protocol):
    """What the LMTP engine needs from the mail store."""

    async def resolve(self, address: str) -> str | None:
        """The user an ``RCPT TO`` address delivers to, or None when there is none.

        Raises:
            DeliveryError: the lookup failed (use a 4xx code when it may work later).
        """
        ...

    async def deliver(
        self, user: str, stream: AsyncIterable[bytes], envelope: DeliveryEnvelope
    ) -> str:
        """Store the message read from ``stream`` for ``user``.

        The stream yields the message (trace headers included) as it arrives and may
        raise instead of ending (the client went away, the size limit was hit): then
        nothing may become visible.  The message must be visible when this returns.

        Returns:
            A short description for the log (e.g. ``"INBOX uid 7"``).

        Raises:
            DeliveryError: the reply for this recipient; any other exception is answered
                ``451 4.3.0`` (temporary).
        """
        ...


def _candidates(address: str) -> list[str]:
    """Names to look up for an address, most specific first.

    The exact address first (a passwd-file may hold full addresses); then without a
    ``+detail`` (Dovecot's ``recipient_delimiter``); then the local part alone, so an
    MTA that hands over ``bob@example.org`` reaches user ``bob`` (Dovecot does this only
    with ``auth_username_format = %Ln``; plain user names are the common case here).
    """
    out = [address]
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    base = local.split("+", 1)[0] if "+" in local else local
    if domain:
        if base != local:
            out.append(f"{base}@{domain}")
        out.append(local)
    if base != local:
        out.append(base)
    seen: dict[str, None] = {}
    for name in out:
        if name:
            seen.setdefault(name, None)
    return list(seen)


class StorageDelivery:
    """:class:`Delivery` into each user's INBOX, users looked up in the passwd-file.

    Args:
        storage: the mail store.
        authenticator: the passwd-file (its ``lookup`` is the userdb).
        mailbox: the mailbox deliveries go to.
    """

    def __init__(
        self,
        storage: Storage,
        authenticator: PasswdFileAuthenticator,
        *,
        mailbox: str = INBOX,
    ) -> None:
        self.storage = storage
        self.authenticator = authenticator
        self.mailbox = mailbox

    async def resolve(self, address: str) -> str | None:
        """See :meth:`Delivery.resolve`; a passwd-file that never loaded is ``451 4.3.0``."""
        for name in _candidates(address):
            try:
                info = await self.authenticator.lookup(name)
            except PasswdFileError as e:
                log.error("lmtp: user lookup for %r failed: %s", address, e)
                raise DeliveryError(451, "4.3.0", "Temporary user lookup failure") from e
            if info is not None:
                return info.user
        return None

    async def deliver(
        self, user: str, stream: AsyncIterable[bytes], envelope: DeliveryEnvelope
    ) -> str:
        """See :meth:`Delivery.deliver`.  INBOX is created if it went missing."""
        try:
            account = await self.storage.user(user)
            try:
                mbox = await account.open_mailbox(self.mailbox, load_view=False)
            except MailboxNotFound:
                try:
                    await account.create_mailbox(self.mailbox)
                except MailboxExists:
                    pass
                mbox = await account.open_mailbox(self.mailbox, load_view=False)
            try:
                tx = mbox.transaction()
                await tx.save(stream, size_hint=envelope.size_hint)
                result = await tx.commit()
            finally:
                await mbox.close()
        except MessageTooLarge as e:
            raise DeliveryError(552, "5.2.3", "Message too large for the mailbox") from e
        except StorageError as e:
            # Storage failures are answered 4xx whatever their kind: a bounce is not
            # undone, a retry after the operator fixed the store delivers the mail.
            log.error("lmtp: delivery to %s failed: %s: %s", user, type(e).__name__, e)
            raise DeliveryError(451, "4.2.0", "Temporary internal error") from e
        except OSError as e:
            log.error("lmtp: delivery to %s failed: %s", user, e)
            raise DeliveryError(451, "4.3.0", "Temporary internal error") from e
        return f"{self.mailbox} uid {result.saved_uids[0]}"
