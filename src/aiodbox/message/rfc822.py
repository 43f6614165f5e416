"""RFC 822/5322 lexical scanner with Dovecot 2.3's exact tolerance rules.

The structured header fields that ENVELOPE and BODYSTRUCTURE show (addresses,
Content-Type and its parameters, Content-Disposition, Content-Language) must be
tokenised exactly as Dovecot's ``lib-mail/rfc822-parser.c`` and
``rfc2231-parser.c`` do, including their handling of broken input, or the
rendered bytes differ.  This module mirrors those rules over a byte string.

Every ``parse_*`` method returns 1 (more input follows), 0 (end of input
reached, value complete) or -1 (invalid input), and skips linear white space and
comments after the token, like the Dovecot functions it is modelled on.
"""

from __future__ import annotations

# Dovecot's rfc822_atext_chars: 0 = not atext, 1/2 = atext, 4 = atext but a
# MIME tspecial ("/", "=", "?").  Bytes 0x80-0xff count as atext.
_ATEXT_TABLE = bytes(
    [0] * 33
    + [1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 0, 4]  # 0x21-0x2f
    + [2] * 10  # digits
    + [0, 0, 0, 4, 0, 4, 0]  # : ; < = > ? @
    + [2] * 26  # A-Z
    + [0, 0, 0, 1, 1, 1]  # [ \ ] ^ _ `
    + [2] * 26  # a-z
    + [1, 1, 1, 1, 0]  # { | } ~ DEL
    + [2] * 128
)
ATEXT = frozenset(i for i in range(256) if _ATEXT_TABLE[i])
MIME_TOKEN = frozenset(i for i in range(256) if _ATEXT_TABLE[i] & 3) | {0x2E}
_ATEXT_OR_DOT = ATEXT | {0x2E}
_LWSP = frozenset(b" \t\r\n")

NUL_REPLACEMENT = "\ufffd".encode()


class Rfc822Scanner:
    """A cursor over one header value, following Dovecot's rfc822 parser.

    Attributes:
        data: The bytes being scanned.
        pos: Index of the next unread byte.
        last_comment: Text of the most recently skipped comment, when tracked.
        nul_replacement: What a NUL inside quoted text, comments and domain
            literals becomes (None keeps Dovecot's "drop nothing" behaviour of
            leaving the byte in place).
    """

    __slots__ = ("data", "end", "last_comment", "nul_replacement", "pos")

    def __init__(
        self,
        data: bytes,
        *,
        track_comments: bool = False,
        nul_replacement: bytes | None = None,
    ) -> None:
        self.data = data
        self.pos = 0
        self.end = len(data)
        self.last_comment: bytearray | None = bytearray() if track_comments else None
        self.nul_replacement = nul_replacement

    # -- helpers -------------------------------------------------------

    def at_end(self) -> bool:
        """True when the whole input has been consumed."""
        return self.pos >= self.end

    def peek(self) -> int:
        """The next byte, or -1 at the end (Dovecot reads the NUL terminator)."""
        return self.data[self.pos] if self.pos < self.end else -1

    def _more(self) -> int:
        return 1 if self.pos < self.end else 0

    # -- comments and white space --------------------------------------

    def skip_comment(self) -> int:
        """Skip a (possibly nested) comment starting at "("; record its text."""
        data, comment = self.data, self.last_comment
        if comment is not None:
            del comment[:]
        self.pos += 1
        start = self.pos
        level = 1
        while self.pos < self.end:
            c = data[self.pos]
            if c == 0:
                if comment is not None and self.nul_replacement is not None:
                    comment += data[start : self.pos] + self.nul_replacement
                    start = self.pos + 1
            elif c == 0x28:
                level += 1
            elif c == 0x29:
                level -= 1
                if level == 0:
                    if comment is not None:
                        comment += data[start : self.pos]
                    self.pos += 1
                    return self._more()
            elif c == 0x0A:
                if comment is not None:
                    stop = self.pos
                    if stop > start and data[stop - 1] == 0x0D:
                        stop -= 1
                    comment += data[start:stop]
                    start = self.pos + 1
            elif c == 0x5C:
                self.pos += 1
                if self.pos >= self.end:
                    return -1
                if data[self.pos] in (0x0D, 0x0A, 0):
                    self.pos -= 1
                else:
                    if comment is not None:
                        comment += data[start : self.pos - 1]
                    start = self.pos
            self.pos += 1
        return -1

    def skip_lwsp(self) -> int:
        """Skip spaces, tabs, CR, LF and comments."""
        data = self.data
        while self.pos < self.end:
            c = data[self.pos]
            if c in _LWSP:
                self.pos += 1
                continue
            if c != 0x28:
                break
            if self.skip_comment() < 0:
                return -1
        return self._more()

    # -- tokens ----------------------------------------------------------

    def _take_while(self, allowed: frozenset[int], out: bytearray) -> int:
        data, start = self.data, self.pos
        pos = start
        while pos < self.end and data[pos] in allowed:
            pos += 1
        self.pos = pos
        out += data[start:pos]
        if pos >= self.end:
            return 0
        return self.skip_lwsp()

    def parse_atom(self, out: bytearray) -> int:
        """An atom: one or more atext bytes."""
        if self.pos >= self.end or self.data[self.pos] not in ATEXT:
            return -1
        return self._take_while(ATEXT, out)

    def parse_dot_atom(self, out: bytearray) -> int:
        """Atoms separated by dots (white space around the dots tolerated)."""
        data = self.data
        if self.pos >= self.end or data[self.pos] not in ATEXT:
            return -1
        start = self.pos
        self.pos += 1
        while self.pos < self.end:
            if data[self.pos] in ATEXT:
                self.pos += 1
                continue
            if start == self.pos:
                return -1
            out += data[start : self.pos]
            ret = self.skip_lwsp()
            if ret <= 0:
                return ret
            if data[self.pos] != 0x2E:
                return 1
            self.pos += 1
            out.append(0x2E)
            if self.skip_lwsp() <= 0:
                return -1
            start = self.pos
        out += data[start : self.pos]
        return 0

    def parse_mime_token(self, out: bytearray) -> int:
        """A MIME token (may be empty): atext without tspecials, plus dots."""
        return self._take_while(MIME_TOKEN, out)

    def _parse_atom_or_dot(self, out: bytearray) -> int:
        return self._take_while(_ATEXT_OR_DOT, out)

    def parse_quoted_string(self, out: bytearray) -> int:
        """A quoted string starting at '"'; escapes removed, folding unfolded."""
        data = self.data
        self.pos += 1
        start = self.pos
        while self.pos < self.end:
            c = data[self.pos]
            if c == 0:
                if self.nul_replacement is not None:
                    out += data[start : self.pos] + self.nul_replacement
                    start = self.pos + 1
            elif c == 0x22:
                out += data[start : self.pos]
                self.pos += 1
                return self.skip_lwsp()
            elif c == 0x0A:
                stop = self.pos
                if stop > start and data[stop - 1] == 0x0D:
                    stop -= 1
                out += data[start:stop]
                start = self.pos + 1
            elif c == 0x5C:
                self.pos += 1
                if self.pos >= self.end:
                    return -1
                if data[self.pos] in (0x0D, 0x0A, 0):
                    self.pos -= 1
                else:
                    out += data[start : self.pos - 1]
                    start = self.pos
            self.pos += 1
        return -1

    def parse_phrase(self, out: bytearray) -> int:
        """Words (atoms with dots, or quoted strings) joined by single spaces."""
        if self.pos >= self.end:
            return 0
        if self.data[self.pos] == 0x2E:
            return -1
        while True:
            if self.data[self.pos] == 0x22:
                ret = self.parse_quoted_string(out)
            else:
                ret = self._parse_atom_or_dot(out)
            if ret <= 0:
                return ret
            c = self.data[self.pos]
            if c not in ATEXT and c not in (0x22, 0x2E):
                break
            out.append(0x20)
        return self.skip_lwsp()

    def _parse_domain_literal(self, out: bytearray) -> int:
        data = self.data
        start = self.pos
        self.pos += 1
        while self.pos < self.end:
            c = data[self.pos]
            if c == 0:
                if self.nul_replacement is not None:
                    out += data[start : self.pos] + self.nul_replacement
                    start = self.pos + 1
            elif c == 0x5B:
                return -1
            elif c == 0x5D:
                out += data[start : self.pos + 1]
                self.pos += 1
                return self.skip_lwsp()
            elif c == 0x0A:
                stop = self.pos
                if stop > start and data[stop - 1] == 0x0D:
                    stop -= 1
                out += data[start:stop]
                start = self.pos + 1
            elif c == 0x5C:
                self.pos += 1
                if self.pos >= self.end:
                    return -1
                if data[self.pos] in (0x0D, 0x0A, 0):
                    out += data[start : self.pos]
                    start = self.pos
                    self.pos -= 1
            self.pos += 1
        return -1

    def parse_domain(self, out: bytearray) -> int:
        """ "@" followed by a dot-atom or a [domain literal]."""
        self.pos += 1
        if self.skip_lwsp() <= 0:
            return -1
        if self.data[self.pos] == 0x5B:
            return self._parse_domain_literal(out)
        return self.parse_dot_atom(out)

    def parse_content_type(self, out: bytearray) -> int:
        """type "/" subtype, as Dovecot keeps it (possibly partial on error)."""
        start_len = len(out)
        if self.skip_lwsp() <= 0:
            return -1
        if self.parse_mime_token(out) <= 0 or len(out) == start_len:
            return -1
        if self.data[self.pos] != 0x2F:
            del out[start_len:]
            return -1
        self.pos += 1
        if self.skip_lwsp() <= 0:
            del out[start_len:]
            return -1
        out.append(0x2F)
        sub_start = len(out)
        ret = self.parse_mime_token(out)
        if (
            ret < 0
            or len(out) == sub_start
            or (self.pos < self.end and self.data[self.pos] != 0x3B)
        ):
            del out[start_len:]
            return -1
        return ret

    def parse_content_param(self) -> tuple[int, bytes, bytes]:
        """One ``; key=value`` parameter: (ret, key, value)."""
        if self.pos >= self.end:
            return 0, b"", b""
        if self.data[self.pos] != 0x3B:
            return -1, b"", b""
        self.pos += 1
        if self.skip_lwsp() <= 0:
            return -1, b"", b""
        key = bytearray()
        if self.parse_mime_token(key) <= 0:
            return -1, b"", b""
        if self.data[self.pos] != 0x3D:
            return -1, b"", b""
        self.pos += 1
        value = bytearray()
        ret = self.skip_lwsp()
        if ret <= 0:
            pass
        elif self.data[self.pos] == 0x22:
            ret = self.parse_quoted_string(value)
        elif self.data[self.pos] == 0x3D:
            data, pos = self.data, self.pos
            while pos < self.end and data[pos] not in b"; \t\r\n":
                pos += 1
            value += data[self.pos : pos]
            self.pos = pos
        else:
            ret = self.parse_mime_token(value)
        return (-1 if ret < 0 else 1), bytes(key), bytes(value)


def _rfc2231_escape(value: bytes) -> bytes:
    return value.replace(b"%", b"%25")


def parse_parameters(scanner: Rfc822Scanner) -> list[tuple[bytes, bytes]]:
    """Parse ``; key=value`` parameters with Dovecot 2.3's RFC 2231 merging.

    Plain parameters keep their order; RFC 2231 ``key*N[*]`` pieces are merged
    afterwards (sorted by key) into ``key`` or ``key*``, values kept encoded, as
    Dovecot 2.3's ``rfc2231_parse()`` does (including its quirk of reusing the
    previous section index for a bare ``key*``).
    """
    saved = scanner.nul_replacement
    scanner.nul_replacement = NUL_REPLACEMENT
    result: list[tuple[bytes, bytes]] = []
    sections: list[tuple[bytes, int, bool, bytes]] = []
    idx = 0
    while True:
        ret, key, value = scanner.parse_content_param()
        if ret == 0:
            break
        if ret < 0:
            if scanner.pos >= scanner.end:
                break
            scanner.pos += 1
            continue
        star = key.find(b"*")
        if star < 0:
            result.append((key, value))
            continue
        p = star
        if p + 1 < len(key):
            p += 1
            idx = 0
            while p < len(key) and 0x30 <= key[p] <= 0x39:
                idx = (idx * 10 + key[p] - 0x30) & 0xFFFFFFFF
                p += 1
        extended = p < len(key) and key[p] == 0x2A
        if extended:
            p += 1
        if p < len(key):
            result.append((key, value))
        else:
            sections.append((key[:star], idx, extended, value))
    scanner.nul_replacement = saved
    if not sections:
        return result
    sections.sort(key=lambda s: (s[0], s[1]))
    i = 0
    while i < len(sections):
        name = sections[i][0].lower()
        j = i
        ok = True
        have_extended = False
        next_idx = 0
        while j < len(sections) and sections[j][0].lower() == name:
            if sections[j][1] != next_idx:
                ok = False
            if sections[j][2]:
                have_extended = True
            next_idx += 1
            j += 1
        group = sections[i:j]
        if not ok:
            for key, num, ext, value in group:
                suffix = b"*%d*" % num if ext else b"*%d" % num
                result.append((key + suffix, value))
        else:
            merged = bytearray()
            if not group[0][2] and have_extended:
                merged += b"''"
            for _key, _num, ext, value in group:
                merged += _rfc2231_escape(value) if (not ext and have_extended) else value
            key = group[0][0] + (b"*" if have_extended else b"")
            result.append((key, bytes(merged)))
        i = j
    return result
