"""Mailbox names: validation and hierarchy (separator ``/``), without I/O."""

from __future__ import annotations

import unicodedata

from aiodbox.storage.errors import InvalidMailboxName

SEPARATOR = "/"
INBOX = "INBOX"
MAX_NAME_LENGTH = 1000
MAX_COMPONENT_LENGTH = 255

SPECIAL_USES = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")

DEFAULT_MAILBOXES: tuple[tuple[str, str | None], ...] = (
    (INBOX, None),
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
)
"""What a new user gets (RFC 6154 special-use folders, Dovecot's usual names)."""


def normalize(name: str) -> str:
    """The canonical form of a mailbox name (INBOX in upper case, NFC).

    Raises:
        InvalidMailboxName: with the reason.
    """
    if not name:
        raise InvalidMailboxName("the mailbox name is empty")
    name = unicodedata.normalize("NFC", name)
    parts = name.split(SEPARATOR)
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidMailboxName("the mailbox name is too long")
    for part in parts:
        if not part:
            raise InvalidMailboxName(f"{name!r} has an empty hierarchy level")
        if part in (".", ".."):
            raise InvalidMailboxName(f"{name!r}: '.' and '..' are not mailbox names")
        if len(part) > MAX_COMPONENT_LENGTH:
            raise InvalidMailboxName("a hierarchy level of the name is too long")
        if any(unicodedata.category(c) == "Cc" for c in part) or "*" in part or "%" in part:
            raise InvalidMailboxName(f"{name!r} contains characters not allowed in names")
    return SEPARATOR.join(parts)


def parents(name: str) -> list[str]:
    """``"a/b/c"`` → ``["a", "a/b"]``."""
    parts = name.split(SEPARATOR)
    return [SEPARATOR.join(parts[:i]) for i in range(1, len(parts))]


def is_child(name: str, parent: str) -> bool:
    """True if ``name`` is below ``parent`` in the hierarchy."""
    return name.startswith(parent + SEPARATOR)
