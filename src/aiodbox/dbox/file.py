"""Asynchronous dbox file access over the FS API: what the storage layer calls.

Theory of operation
-------------------
This layer joins the sans-IO codec (:mod:`aiodbox.dbox.codec`, :mod:`aiodbox.dbox.v2`,
:mod:`aiodbox.dbox.fix`) to the non-blocking FS handles and streams. It reads only what
it needs: framing and metadata when a message is opened, the body only through a
:class:`BodyStream` (never whole), and whole files only for the offline repair scan.

Reading (:mod:`aiodbox.dbox.file_read`):

- :func:`open_sdbox_message` (``u.N``: v3, or Dovecot's v2) and
  :func:`open_mdbox_message` (a record at an offset in a shared ``m.N`` handle) return a
  :class:`DboxMessage`: format, GUID, received time, stored and IMAP size, metadata, and
  :meth:`DboxMessage.open_body` for non-blocking streams over IMAP byte ranges.
- :func:`verify_body` streams a body against ``H`` (v3) or ``V`` (v2) for fsck;
  :func:`scan` runs the repair scan over a whole file read in chunks.

Writing (:mod:`aiodbox.dbox.file_write`, v3 only):

- :func:`create_sdbox` -> :class:`SdboxWriter`: stream the body, then
  ``finish(final_name)`` commits the file under its final name.
  :class:`SdboxInMemory` builds a small file whole, for one ``FS.write_file``.
- :func:`create_mdbox_file` / :func:`open_mdbox_file` -> :class:`MdboxFile`: lock,
  ``append()`` records (:class:`RecordAppender`), ``commit()`` them all at once.

Errors: damaged bytes raise :class:`DboxCorruptedError` (repair); I/O failures raise the
FS's :class:`~aiodbox.fs.errors.FsError` unchanged (retry or report).
"""

from __future__ import annotations

from aiodbox.dbox.file_read import (
    BodyStream,
    DboxCorruptedError,
    DboxError,
    DboxMessage,
    DboxReadOnlyError,
    mdbox_body_from_span,
    mdbox_message_from_span,
    mdbox_record_span,
    memory_body_stream,
    open_mdbox_message,
    open_mdbox_message_now,
    open_sdbox_message,
    read_file_header,
    read_span,
    scan,
    sdbox_body_from_bytes,
    sdbox_message_from_bytes,
    verify_body,
)
from aiodbox.dbox.file_write import (
    AppendedRecord,
    DboxWritten,
    MdboxFile,
    RecordAppender,
    SdboxInMemory,
    SdboxWriter,
    create_mdbox_file,
    create_sdbox,
    open_mdbox_file,
)

__all__ = [
    "AppendedRecord",
    "BodyStream",
    "DboxCorruptedError",
    "DboxError",
    "DboxMessage",
    "DboxReadOnlyError",
    "DboxWritten",
    "MdboxFile",
    "RecordAppender",
    "SdboxInMemory",
    "SdboxWriter",
    "create_mdbox_file",
    "create_sdbox",
    "open_mdbox_file",
    "mdbox_body_from_span",
    "mdbox_message_from_span",
    "mdbox_record_span",
    "memory_body_stream",
    "open_mdbox_message",
    "open_mdbox_message_now",
    "open_sdbox_message",
    "read_file_header",
    "read_span",
    "scan",
    "sdbox_body_from_bytes",
    "sdbox_message_from_bytes",
    "verify_body",
]
