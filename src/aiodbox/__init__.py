"""aiodbox: a dbox mail store and IMAP/LMTP server in which storage I/O never blocks the loop."""

from __future__ import annotations

__version__ = "0.1.0"
