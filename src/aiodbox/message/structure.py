"""BODYSTRUCTURE and BODY exactly as Dovecot 2.3 renders them.

The Content-* fields of each part are extracted like Dovecot's
``message_part_data_parse_from_header()`` (first occurrence wins, except that a
Content-Disposition without parameters may be replaced by a later one; all of
them are ignored in a part that is not MIME) and written like
``imap_bodystructure_write()``:

* type/subtype and parameter names and values keep their case; parameters are
  ``(name value ...)`` in header order, RFC 2231 sections merged at the end,
  ``"charset" "us-ascii"`` appended to text parts that lack a charset;
* no Content-Type: ``"text" "plain"``; an unparsable one is kept as far as it
  parsed (possibly ``"" ""``);
* sizes are virtual (CRLF) sizes; text parts add their line count,
  message/rfc822 parts add ENVELOPE, the enclosed BODYSTRUCTURE and lines;
* Content-ID/Description/MD5/Location are raw (newlines removed), encoded words
  are never decoded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from aiodbox.message.envelope import envelope_from_headers, header_strdup, write_envelope
from aiodbox.message.headers import HeaderField
from aiodbox.message.imapstring import dovecot_nstring_nolf, dovecot_string
from aiodbox.message.parser import MessagePart, PartFlags
from aiodbox.message.rfc822 import Rfc822Scanner, parse_parameters

DEFAULT_CHARSET = b"us-ascii"
_EMPTY_BODY = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0)'
_EMPTY_BODYSTRUCTURE = b'("text" "plain" ("charset" "us-ascii") NIL NIL "7bit" 0 0 NIL NIL NIL NIL)'

Params = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class PartData:
    """The Content-* data of one part (None where the header is absent)."""

    content_type: bytes | None = None
    content_subtype: bytes | None = None
    type_params: Params = ()
    transfer_encoding: bytes | None = None
    content_id: bytes | None = None
    description: bytes | None = None
    disposition: bytes | None = None
    disposition_params: Params = ()
    md5: bytes | None = None
    language: tuple[bytes, ...] | None = None
    location: bytes | None = None


def _parse_type(value: bytes) -> dict[str, object]:
    scanner = Rfc822Scanner(value)
    scanner.skip_lwsp()
    text = bytearray()
    ret = scanner.parse_content_type(text)
    ctype, slash, subtype = bytes(text).partition(b"/")
    out: dict[str, object] = {"content_type": ctype, "content_subtype": subtype}
    if ret >= 0:
        out["type_params"] = tuple(parse_parameters(scanner))
    del slash
    return out


def _parse_encoding(value: bytes) -> bytes | None:
    scanner = Rfc822Scanner(value)
    scanner.skip_lwsp()
    token = bytearray()
    if scanner.parse_mime_token(token) >= 0 and scanner.skip_lwsp() == 0 and token:
        return bytes(token)
    return None


def _parse_disposition(value: bytes) -> dict[str, object] | None:
    scanner = Rfc822Scanner(value)
    scanner.skip_lwsp()
    token = bytearray()
    if scanner.parse_mime_token(token) < 0:
        return None
    return {
        "disposition": bytes(token),
        "disposition_params": tuple(parse_parameters(scanner)),
    }


def _parse_language(value: bytes) -> tuple[bytes, ...] | None:
    scanner = Rfc822Scanner(value)
    langs: list[bytes] = []
    scanner.skip_lwsp()
    while True:
        token = bytearray()
        if scanner.parse_atom(token) < 0:
            break
        langs.append(bytes(token))
        if scanner.at_end() or scanner.data[scanner.pos] != 0x2C:
            break
        scanner.pos += 1
        scanner.skip_lwsp()
    return tuple(langs) or None


def part_data_from_headers(headers: Iterable[HeaderField], *, is_mime: bool) -> PartData:
    """Extract the Content-* data of a part's header.

    Args:
        headers: The part's fields.
        is_mime: Whether the part counts as MIME (else everything is ignored,
            as Dovecot does for a message without MIME-Version/Content-Type).
    """
    if not is_mime:
        return PartData()
    d: dict[str, object] = {}
    for field in headers:
        name = field.name.lower()
        if not field.has_colon or not name.startswith(b"content-"):
            continue
        value = field.value
        if name == b"content-id":
            d.setdefault("content_id", header_strdup(value))
        elif name == b"content-md5":
            d.setdefault("md5", header_strdup(value))
        elif name == b"content-type":
            if "content_type" not in d:
                d.update(_parse_type(value))
        elif name == b"content-transfer-encoding":
            if d.get("transfer_encoding") is None:
                d["transfer_encoding"] = _parse_encoding(value)
        elif name == b"content-language":
            if d.get("language") is None:
                d["language"] = _parse_language(value)
        elif name == b"content-location":
            d.setdefault("location", header_strdup(value))
        elif name == b"content-description":
            d.setdefault("description", header_strdup(value))
        elif name == b"content-disposition" and not d.get("disposition_params"):
            # Dovecot checks the *parameters*: a Content-Disposition without
            # any may be replaced by a later one.
            parsed = _parse_disposition(value)
            if parsed is not None:
                d.update(parsed)
    return PartData(**d)  # type: ignore[arg-type]


_OCTET_STREAM = {"content_type": b"application", "content_subtype": b"octet-stream"}


def part_data(part: MessagePart) -> PartData:
    """The Content-* data of a parsed part.

    A multipart or message/rfc822 part that was not parsed as such because of
    the MIME part limits is shown as application/octet-stream, like Dovecot.
    """
    data = part_data_from_headers(part.headers, is_mime=bool(part.flags & PartFlags.IS_MIME))
    if part.flags & PartFlags.OVERFLOW and not part.flags & (
        PartFlags.MULTIPART | PartFlags.MESSAGE_RFC822
    ):
        ctype = (data.content_type or b"").lower()
        subtype = (data.content_subtype or b"").lower()
        if ctype == b"multipart" or (ctype, subtype) == (b"message", b"rfc822"):
            return dataclasses.replace(data, **_OCTET_STREAM)  # type: ignore[arg-type]
    return data


def _write_params(out: bytearray, params: Params, default_charset: bool) -> None:
    if not default_charset and not params:
        out += b"NIL"
        return
    out += b"("
    seen_charset = False
    for i, (name, value) in enumerate(params):
        if i:
            out += b" "
        if default_charset and name.lower() == b"charset":
            seen_charset = True
        out += dovecot_string(name) + b" " + dovecot_string(value)
    if default_charset and not seen_charset:
        if params:
            out += b" "
        out += b'"charset" "' + DEFAULT_CHARSET + b'"'
    out += b")"


def _write_common(out: bytearray, data: PartData) -> None:
    out += b" "
    if data.disposition is None:
        out += b"NIL"
    else:
        out += b"(" + dovecot_string(data.disposition) + b" "
        _write_params(out, data.disposition_params, False)
        out += b")"
    out += b" "
    if data.language is None:
        out += b"NIL"
    else:
        out += b"(" + b" ".join(dovecot_string(lang) for lang in data.language) + b")"
    out += b" " + dovecot_nstring_nolf(data.location)


def _write_part(out: bytearray, part: MessagePart, extended: bool) -> None:
    data = part_data(part)
    if part.flags & PartFlags.MULTIPART:
        if part.children:
            for child in part.children:
                out += b"("
                _write_part(out, child, extended)
                out += b")"
        else:
            out += _EMPTY_BODYSTRUCTURE if extended else _EMPTY_BODY
        out += b" " + dovecot_string(data.content_subtype or b"")
        if extended:
            out += b" "
            _write_params(out, data.type_params, False)
            _write_common(out, data)
        return

    rfc822 = bool(part.flags & PartFlags.MESSAGE_RFC822)
    if rfc822:
        out += b'"message" "rfc822"'
        text = False
    elif data.content_type is None:
        out += b'"text" "plain"'
        text = True
    else:
        text = data.content_type.lower() == b"text"
        out += dovecot_string(data.content_type) + b" "
        out += dovecot_string(data.content_subtype or b"")
    out += b" "
    _write_params(out, data.type_params, text)
    out += b" " + dovecot_nstring_nolf(data.content_id)
    out += b" " + dovecot_nstring_nolf(data.description)
    out += b" "
    out += b'"7bit"' if data.transfer_encoding is None else dovecot_string(data.transfer_encoding)
    out += b" %d" % part.body_size.virtual
    if text:
        out += b" %d" % part.body_size.lines
    elif rfc822 and part.children:
        child = part.children[0]
        out += b" ("
        write_envelope(envelope_from_headers(child.headers), out)
        out += b") ("
        _write_part(out, child, extended)
        out += b") %d" % part.body_size.lines
    if extended:
        out += b" " + dovecot_nstring_nolf(data.md5)
        _write_common(out, data)


def render_bodystructure(part: MessagePart, *, extended: bool = True) -> bytes:
    """BODYSTRUCTURE (``extended=True``) or BODY of a part, parentheses included."""
    out = bytearray(b"(")
    _write_part(out, part, extended)
    out += b")"
    return bytes(out)


def render_body(part: MessagePart) -> bytes:
    """The non-extensible BODY structure."""
    return render_bodystructure(part, extended=False)
