"""Date header parsing for SENTBEFORE / SENTON / SENTSINCE (never raises).

RFC 5322 dates and their common obsolete forms are accepted: optional weekday,
two- or four-digit years, obsolete zone names (UT, GMT, EST, ...), missing
seconds, comments.  IMAP's SENT* keys compare the *date as written* in the
header, disregarding time and time zone (RFC 3501 §6.4.4), which is what
:func:`sent_date` returns.
"""

from __future__ import annotations

import datetime as dt
import email.utils

from aiodbox.message.rfc2047 import decode_header_value


def parse_date(value: bytes | str) -> dt.datetime | None:
    """Parse a Date header value into an aware datetime, or None if unparsable.

    A missing or unknown zone counts as UTC (``-0000`` means "unknown" too).
    """
    text = decode_header_value(value) if isinstance(value, bytes) else value
    try:
        parsed = email.utils.parsedate_tz(text.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    year, month, day, hour, minute, second = parsed[:6]
    offset = parsed[9] or 0
    try:
        tz = dt.timezone(dt.timedelta(seconds=offset))
        return dt.datetime(year, month, day, hour, minute, min(second, 59), tzinfo=tz)
    except (ValueError, OverflowError):
        return None


def sent_date(value: bytes | str) -> dt.date | None:
    """The calendar date the header states, in the header's own time zone."""
    parsed = parse_date(value)
    return None if parsed is None else parsed.date()
