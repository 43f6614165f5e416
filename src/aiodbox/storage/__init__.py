"""Mail storage: ``Storage`` → ``User`` → ``Mailbox`` → messages, over sdbox or mdbox."""

from __future__ import annotations

from aiodbox.storage.storage import MailboxInfo, MailboxStatus, Storage, User

__all__ = ["MailboxInfo", "MailboxStatus", "Storage", "User"]
