"""ENVELOPE: the data Dovecot 2.3 extracts and the exact bytes it renders.

Rules kept from Dovecot (``lib-mail/message-part-data.c``,
``lib-imap/imap-envelope.c``):

* For Date, Subject, In-Reply-To and Message-ID the *last* occurrence wins;
  repeated address fields are concatenated; no address at all is NIL.
* Local parts are parsed with Dovecot's non-strict dots ("a..b", ".a").
* Date, In-Reply-To and Message-ID are sent raw (folding removed); Subject and
  display names go through ``imap_append_string_for_humans`` (white space
  collapsed, literal when anything changed or 8-bit).
* Encoded words are kept raw, never decoded.
* Sender and Reply-To default to From.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiodbox.message.address import Address, parse_address_list
from aiodbox.message.headers import HeaderField
from aiodbox.message.imapstring import (
    dovecot_nstring,
    dovecot_nstring_nolf,
    string_for_humans,
)

_NUL_REPLACEMENT = "\ufffd".encode()

_STRING_FIELDS = {
    b"date": "date",
    b"subject": "subject",
    b"in-reply-to": "in_reply_to",
    b"message-id": "message_id",
}
_ADDRESS_FIELDS = {
    b"from": "from_",
    b"sender": "sender",
    b"reply-to": "reply_to",
    b"to": "to",
    b"cc": "cc",
    b"bcc": "bcc",
}


def header_strdup(value: bytes) -> bytes:
    """Dovecot's ``message_header_strdup()``: NUL bytes become U+FFFD."""
    return value.replace(b"\0", _NUL_REPLACEMENT) if b"\0" in value else value


@dataclass(frozen=True, slots=True)
class Envelope:
    """The fields of an ENVELOPE (None where Dovecot writes NIL)."""

    date: bytes | None = None
    subject: bytes | None = None
    from_: tuple[Address, ...] | None = None
    sender: tuple[Address, ...] | None = None
    reply_to: tuple[Address, ...] | None = None
    to: tuple[Address, ...] | None = None
    cc: tuple[Address, ...] | None = None
    bcc: tuple[Address, ...] | None = None
    in_reply_to: bytes | None = None
    message_id: bytes | None = None


def envelope_from_headers(headers: Iterable[HeaderField]) -> Envelope:
    """Collect the envelope fields of one message header."""
    values: dict[str, object] = {}
    for field in headers:
        if not field.has_colon:
            continue
        name = field.name.lower()
        attr = _STRING_FIELDS.get(name)
        if attr is not None:
            values[attr] = header_strdup(field.value)
            continue
        attr = _ADDRESS_FIELDS.get(name)
        if attr is not None:
            # Repeated address fields accumulate (Dovecot 2.3 appends them).
            found = parse_address_list(field.value)
            if found:
                earlier = values.get(attr)
                values[attr] = (earlier if isinstance(earlier, tuple) else ()) + found
    return Envelope(**values)  # type: ignore[arg-type]


def _write_addresses(out: bytearray, addresses: tuple[Address, ...] | None) -> None:
    if addresses is None:
        out += b"NIL"
        return
    out += b"("
    for a in addresses:
        out += b"("
        out += b"NIL" if a.name is None else string_for_humans(a.name)
        out += b" " + dovecot_nstring(a.route)
        out += b" " + dovecot_nstring(a.mailbox)
        out += b" " + dovecot_nstring(a.domain)
        out += b")"
    out += b")"


def write_envelope(env: Envelope, out: bytearray) -> None:
    """Append the ENVELOPE's inner fields (without the outer parentheses)."""
    out += dovecot_nstring_nolf(env.date)
    out += b" "
    out += b"NIL" if env.subject is None else string_for_humans(env.subject)
    for addresses in (
        env.from_,
        env.sender if env.sender is not None else env.from_,
        env.reply_to if env.reply_to is not None else env.from_,
        env.to,
        env.cc,
        env.bcc,
    ):
        out += b" "
        _write_addresses(out, addresses)
    out += b" " + dovecot_nstring_nolf(env.in_reply_to)
    out += b" " + dovecot_nstring_nolf(env.message_id)


def render_envelope(env: Envelope) -> bytes:
    """The ENVELOPE value exactly as Dovecot 2.3 sends it, parentheses included."""
    out = bytearray(b"(")
    write_envelope(env, out)
    out += b")"
    return bytes(out)


def envelope_bytes(headers: Iterable[HeaderField]) -> bytes:
    """Shortcut: the rendered ENVELOPE of a header."""
    return render_envelope(envelope_from_headers(headers))
