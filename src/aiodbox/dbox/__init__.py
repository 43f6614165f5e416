"""dbox files: the v3 format aiodbox writes and Dovecot 2.3's v2, as sans-IO codecs.

- :mod:`aiodbox.dbox.format`: the format (module docstring), constants, result types.
- :mod:`aiodbox.dbox.codec`: v3 record writer and readers.
- :mod:`aiodbox.dbox.v2`: Dovecot 2.3 reader and LF to CRLF conversion.
- :mod:`aiodbox.dbox.fix`: repair scan of a whole file.
- :mod:`aiodbox.dbox.dump`: ``dbox dump`` entries.

Readers return the parsed value, :class:`NeedBytes` or :class:`Corrupted`; they never raise
for bad file bytes and never do I/O.
"""

from __future__ import annotations

from aiodbox.dbox.codec import (
    FileHeader,
    Metadata,
    Record,
    RecordWriter,
    Trailer,
    body_digest,
    check_body,
    encode_file_header,
    encode_metadata,
    encode_record,
    new_separator,
    parse_file_header,
    parse_metadata,
    read_record,
    read_sdbox_tail,
    read_trailer,
)
from aiodbox.dbox.dump import DumpEntry, dump_file
from aiodbox.dbox.fix import (
    DamagedRange,
    V2Scan,
    V3Scan,
    detect_format,
    scan_file,
    scan_v2,
    scan_v3,
)
from aiodbox.dbox.format import Corrupted, NeedBytes
from aiodbox.dbox.v2 import (
    LfToCrlf,
    V2FileHeader,
    V2Metadata,
    V2Record,
    crlf_size,
    lf_to_crlf,
    parse_v2_file_header,
    read_v2_record,
)

__all__ = [
    "Corrupted",
    "DamagedRange",
    "DumpEntry",
    "FileHeader",
    "LfToCrlf",
    "Metadata",
    "NeedBytes",
    "Record",
    "RecordWriter",
    "Trailer",
    "V2FileHeader",
    "V2Metadata",
    "V2Record",
    "V2Scan",
    "V3Scan",
    "body_digest",
    "check_body",
    "crlf_size",
    "detect_format",
    "dump_file",
    "encode_file_header",
    "encode_metadata",
    "encode_record",
    "lf_to_crlf",
    "new_separator",
    "parse_file_header",
    "parse_metadata",
    "parse_v2_file_header",
    "read_record",
    "read_sdbox_tail",
    "read_trailer",
    "read_v2_record",
    "scan_file",
    "scan_v2",
    "scan_v3",
]

# Async file access over the FS API (aiodbox.dbox.file).
from aiodbox.dbox.file import (
    AppendedRecord,
    BodyStream,
    DboxCorruptedError,
    DboxError,
    DboxMessage,
    DboxReadOnlyError,
    DboxWritten,
    MdboxFile,
    RecordAppender,
    SdboxInMemory,
    SdboxWriter,
    create_mdbox_file,
    create_sdbox,
    open_mdbox_file,
    open_mdbox_message,
    open_sdbox_message,
    read_file_header,
    scan,
    verify_body,
)

__all__ += [
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
    "open_mdbox_message",
    "open_sdbox_message",
    "read_file_header",
    "scan",
    "verify_body",
]
