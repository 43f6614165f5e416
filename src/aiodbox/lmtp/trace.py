"""The trace headers LMTP puts in front of a delivered message (sans-IO).

Made exactly like Dovecot 2.3's LMTP (``lmtp_local_add_headers`` +
``smtp_server_transaction_write_trace_record``; compare fixture messages 02, 10 and 16
and a live Dovecot 2.3.19 session)::

    Return-Path: <alice@example.test>
    Delivered-To: bob                               (only with a single recipient)
    Received: from [127.0.0.1] ([127.0.0.1])
    \tby host with LMTP
    \tid ZhRQEL6RCWsSVQAAg+zDdQ
    \t(envelope-from <alice@example.test>)
    \tfor <bob>; Fri, 27 Nov 2026 14:20:46 +0000    ("for" only with a single recipient)

With several recipients Dovecot leaves out ``Delivered-To`` and ``for`` (the other
recipients' addresses are not disclosed), so every recipient gets the same bytes, which
is what lets one DATA stream fan out unchanged.  Lines end with CRLF: aiodbox stores
messages as received.
"""

from __future__ import annotations

import datetime
import email.utils


def rfc2822_date(when: datetime.datetime | None = None) -> str:
    """``Fri, 27 Nov 2026 14:20:46 +0000`` in local time (Dovecot's ``message_date_create``)."""
    moment = when or datetime.datetime.now().astimezone()
    return email.utils.format_datetime(moment)


def _path(address: str) -> str:
    return f"<{address}>"


def _ip_literal(ip: str | None) -> str:
    return f"[{ip}]" if ip else "[unknown]"


def trace_headers(
    *,
    mail_from: str,
    recipients: list[str],
    helo: str | None,
    remote_ip: str | None,
    hostname: str,
    transaction_id: str,
    when: datetime.datetime | None = None,
) -> bytes:
    """The header block to prepend (ends with CRLF; the message's own headers follow).

    Args:
        mail_from: the reverse path without brackets ("" for the null sender ``<>``).
        recipients: the accepted RCPT TO addresses (without brackets), distinct.
        helo: the client's LHLO name, or None.
        remote_ip: the client's IP address, or None (e.g. a unix socket).
        hostname: this server's name (``by ...``).
        transaction_id: the transaction id, also shown in the DATA replies.
        when: the time stamp (default: now, local time).
    """
    single = recipients[0] if len(recipients) == 1 else None
    lines = [f"Return-Path: {_path(mail_from)}"]
    if single is not None:
        lines.append(f"Delivered-To: {single}")
    lines.append(f"Received: from {helo or 'unknown'} ({_ip_literal(remote_ip)})")
    lines.append(f"\tby {hostname} with LMTP")
    lines.append(f"\tid {transaction_id}")
    stamp = rfc2822_date(when)
    if single is not None:
        lines.append(f"\t(envelope-from {_path(mail_from)})")
        lines.append(f"\tfor {_path(single)}; {stamp}")
    else:
        lines.append(f"\t(envelope-from {_path(mail_from)}); {stamp}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")
