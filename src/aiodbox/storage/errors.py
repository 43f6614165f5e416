"""Storage errors: each knows the IMAP response it becomes (and whether it is temporary).

Corruption is kept apart from I/O failure (Dovecot's 1 / 0 / -1): a corrupted message
leads to repair (fsck), an I/O failure to a retry or a clean temporary error.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of storage errors.

    Attributes:
        imap_code: the IMAP response code (RFC 5530) without brackets, or None.
        temporary: True when retrying later may succeed (LMTP answers 4xx, not 5xx).
    """

    imap_code: str | None = None
    temporary = False


class MailboxNotFound(StorageError):
    """The mailbox does not exist."""

    imap_code = "NONEXISTENT"


class MailboxExists(StorageError):
    """A mailbox with that name exists already."""

    imap_code = "ALREADYEXISTS"


class InvalidMailboxName(StorageError):
    """The name cannot be a mailbox name (empty component, control characters ...)."""

    imap_code = "CANNOT"


class MailboxHasChildren(StorageError):
    """Refused because of child mailboxes (e.g. deleting one that has children)."""

    imap_code = "INUSE"


class MessageNotFound(StorageError):
    """The message was expunged meanwhile."""

    imap_code = "EXPUNGEISSUED"


class ModifiedSince(StorageError):
    """CONDSTORE: the message changed since the client's UNCHANGEDSINCE."""

    imap_code = "MODIFIED"


class MessageTooLarge(StorageError):
    """The message exceeds the size limit."""

    imap_code = "TOOBIG"


class StorageUnavailable(StorageError):
    """An I/O failure of the backend: try again later."""

    imap_code = "UNAVAILABLE"
    temporary = True


class CorruptedMessage(StorageError):
    """The stored message is damaged; fsck will repair or quarantine it."""

    imap_code = "CORRUPTION"
    temporary = True


class UnsupportedBackend(StorageError):
    """The FS backend lacks what the storage format needs (e.g. mdbox without LOCKS)."""

    imap_code = "SERVERBUG"
