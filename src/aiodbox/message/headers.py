"""Header fields: Dovecot-compatible unfolding and HEADER.FIELDS selection.

A :class:`HeaderField` keeps the exact bytes of one field (with its folded
continuation lines) next to the name and the *full value* as Dovecot's header
parser hands it on with ``SKIP_INITIAL_LWSP | DROP_CR``: white space after the
colon skipped (one byte kept if the value is only white space), CRs of the line
ends dropped and continuation lines joined with ``"\\n"`` plus their own leading
white space.  ENVELOPE, BODYSTRUCTURE and search all start from that value.

Difference from Dovecot kept on purpose: in ``HEADER.FIELDS`` output only
CRLF/LF line ends are normalised to CRLF; a bare CR inside a field is kept.

Incremental parsing is done by :class:`~aiodbox.message.parser.MessageParser`,
which emits the fields of every MIME part; :func:`parse_header_block` is the
convenience for a header already in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_LWSP = b" \t"


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field.

    Attributes:
        raw: The field exactly as in the message, continuation lines and line
            ends included (the last line may lack a line end at end of input).
        name: The field name, white space before the colon removed; the whole
            first line when there is no colon.
        value: The unfolded full value (see the module docstring).
        has_colon: False for a malformed line that has no colon.
    """

    raw: bytes
    name: bytes
    value: bytes
    has_colon: bool = True

    @property
    def has_newline(self) -> bool:
        """True when the field's last line ends with LF."""
        return self.raw.endswith(b"\n")


def _strip_newline(line: bytes) -> bytes:
    if line.endswith(b"\n"):
        line = line[:-1]
        if line.endswith(b"\r"):
            line = line[:-1]
    return line


def make_field(lines: Sequence[bytes]) -> HeaderField:
    """Build a field from its physical lines (each with its own line end).

    Args:
        lines: The first line followed by its continuation lines.
    """
    first = _strip_newline(lines[0])
    colon = first.find(b":")
    if colon < 0:
        name, value, has_colon = first, b"", False
    else:
        name = first[:colon].rstrip(_LWSP)
        value = first[colon + 1 :]
        stripped = value.lstrip(_LWSP)
        # Only white space: Dovecot skips just the first byte.
        value = stripped if stripped or not value else value[1:]
        has_colon = True
    if len(lines) > 1:
        value = b"\n".join([value, *(_strip_newline(line) for line in lines[1:])])
    return HeaderField(b"".join(lines), name, value, has_colon)


def parse_header_block(data: bytes) -> tuple[list[HeaderField], bool]:
    """Split a header block held in memory into fields.

    Args:
        data: Header bytes, optionally followed by the empty line and more.

    Returns:
        The fields and whether the terminating empty line was found.
    """
    fields: list[HeaderField] = []
    pending: list[bytes] = []
    pos = 0
    end = len(data)
    while pos < end:
        nl = data.find(b"\n", pos)
        line = data[pos:] if nl < 0 else data[pos : nl + 1]
        if pending and line[:1] in (b" ", b"\t"):
            pending.append(line)
            pos += len(line)
            continue
        if pending:
            fields.append(make_field(pending))
            pending = []
        if line in (b"\r\n", b"\n"):
            return fields, True
        pending.append(line)
        pos += len(line)
    if pending:
        fields.append(make_field(pending))
    return fields, False


def _crlf_lines(raw: bytes) -> bytes:
    """The field's bytes with every line ending in CRLF (one added if missing)."""
    out = bytearray()
    for line in raw.splitlines(keepends=True):
        body = line.rstrip(b"\r\n")
        # splitlines also splits on a bare CR; keep such a CR as content.
        if line.endswith(b"\n") or not line.endswith(b"\r"):
            out += body + b"\r\n"
        else:
            out += line
    return bytes(out)


def select_fields(
    fields: Iterable[HeaderField],
    names: Iterable[bytes | str],
    *,
    exclude: bool = False,
    has_eoh: bool = True,
) -> bytes:
    """The bytes Dovecot serves for ``HEADER.FIELDS`` / ``HEADER.FIELDS.NOT``.

    ``HEADER.FIELDS (..)``: the matching fields in message order, each line
    ending in CRLF (a missing final line end is added), then an empty line,
    always.  ``HEADER.FIELDS.NOT (..)``: the other fields exactly as stored,
    then the empty line only if the message has one (Dovecot filters the raw
    header there, so a header that ends without an empty line stays so).
    Names match case-insensitively; a line without a colon never matches (so
    ``.NOT`` always keeps it).

    Args:
        fields: The part's header fields in order.
        names: The field names asked for.
        exclude: True for ``HEADER.FIELDS.NOT``.
        has_eoh: Whether the header ended with an empty line (``.NOT`` only).

    Returns:
        The section's bytes, ready to be sent as a literal.
    """
    wanted = {(n.encode() if isinstance(n, str) else n).lower() for n in names}
    out = bytearray()
    if not exclude:
        for f in fields:
            if f.has_colon and f.name.lower() in wanted:
                out += _crlf_lines(f.raw)
        out += b"\r\n"
        return bytes(out)
    for f in fields:
        if not (f.has_colon and f.name.lower() in wanted):
            out += f.raw
    if has_eoh:
        out += b"\r\n"
    return bytes(out)


def header_bytes(fields: Iterable[HeaderField], eoh: bytes) -> bytes:
    """The header block as stored: the fields, then the empty line ``eoh``.

    Args:
        fields: The part's fields (``MessagePart.headers``).
        eoh: The part's empty line (``MessagePart.eoh``, ``b""`` if none).
    """
    return b"".join(f.raw for f in fields) + eoh


def find_values(fields: Iterable[HeaderField], name: bytes | str) -> list[bytes]:
    """Full values of every field called ``name`` (case-insensitive), in order."""
    key = (name.encode() if isinstance(name, str) else name).lower()
    return [f.value for f in fields if f.has_colon and f.name.lower() == key]
