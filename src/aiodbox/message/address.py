"""Address-list parsing as Dovecot 2.3's ``message_address_parse()`` does it.

ENVELOPE shows every address as ``(name route mailbox domain)`` and groups as a
``(NIL NIL "group" NIL)`` ... ``(NIL NIL NIL NIL)`` pair.  Broken input is kept
rather than dropped, with Dovecot's placeholders (``MISSING_MAILBOX``,
``MISSING_DOMAIN``, ``SYNTAX_ERROR``, ``INVALID_ROUTE``), so that the rendered
ENVELOPE matches Dovecot byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiodbox.message.rfc822 import NUL_REPLACEMENT, Rfc822Scanner


@dataclass(frozen=True, slots=True)
class Address:
    """One ENVELOPE address entry (all fields raw bytes, None for NIL).

    A group start has only ``mailbox`` (the group name); a group end has all
    four fields None.
    """

    name: bytes | None
    route: bytes | None
    mailbox: bytes | None
    domain: bytes | None


class _Builder:
    __slots__ = ("domain", "invalid", "mailbox", "name", "route")

    def __init__(self) -> None:
        self.name: bytes | None = None
        self.route: bytes | None = None
        self.mailbox: bytes | None = None
        self.domain: bytes | None = None
        self.invalid = False


class _AddressParser:
    def __init__(self, value: bytes) -> None:
        self.s = Rfc822Scanner(value, track_comments=True, nul_replacement=NUL_REPLACEMENT)
        self.out: list[Address] = []
        self.addr = _Builder()
        self.text = bytearray()

    def add(self) -> None:
        a = self.addr
        self.out.append(Address(a.name, a.route, a.mailbox, a.domain))
        self.addr = _Builder()

    def add_fixed(self) -> None:
        if self.addr.mailbox is None:
            self.addr.mailbox = b"MISSING_MAILBOX"
        if not self.addr.domain:
            self.addr.domain = b"MISSING_DOMAIN"
        self.add()

    def parse_local_part(self) -> int:
        s = self.s
        del self.text[:]
        if s.data[s.pos] == 0x22:
            ret = s.parse_quoted_string(self.text)
        else:
            ret = self.parse_nonstrict_dot_atom()
        if ret < 0:
            return -1
        self.addr.mailbox = bytes(self.text)
        return ret

    def parse_nonstrict_dot_atom(self) -> int:
        # Dovecot parses envelope addresses with NON_STRICT_DOTS: "a..b",
        # ".a" and "a." are accepted as local parts.
        s = self.s
        ret = -1
        while True:
            while s.data[s.pos] == 0x2E:
                self.text.append(0x2E)
                s.pos += 1
                if s.at_end():
                    return 0
                ret = 1
            if s.data[s.pos] == 0x40:
                break
            ret = s.parse_atom(self.text)
            if ret <= 0 or s.data[s.pos] != 0x2E:
                break
        return ret

    def parse_domain(self) -> int:
        del self.text[:]
        ret = self.s.parse_domain(self.text)
        if ret < 0:
            return -1
        self.addr.domain = bytes(self.text)
        return ret

    def parse_domain_list(self) -> int:
        s = self.s
        del self.text[:]
        while True:
            if s.at_end():
                return 0
            if s.data[s.pos] != 0x40:
                break
            if self.text:
                self.text.append(0x2C)
            self.text.append(0x40)
            ret = s.parse_domain(self.text)
            if ret <= 0:
                return ret
            while s.skip_lwsp() > 0 and s.data[s.pos] == 0x2C:
                s.pos += 1
        self.addr.route = bytes(self.text)
        return 1

    def parse_angle_addr(self) -> int:
        s = self.s
        s.pos += 1
        if s.skip_lwsp() <= 0:
            return -1
        if s.data[s.pos] == 0x40:
            if self.parse_domain_list() > 0 and s.peek() == 0x3A:
                s.pos += 1
            else:
                self.addr.route = b"INVALID_ROUTE"
                if s.at_end():
                    return -1
            if s.skip_lwsp() <= 0:
                return -1
        if s.data[s.pos] != 0x3E:
            if self.parse_local_part() <= 0:
                return -1
            if s.data[s.pos] == 0x40 and self.parse_domain() <= 0:
                return -1
        if s.data[s.pos] != 0x3E:
            return -1
        s.pos += 1
        return s.skip_lwsp()

    def parse_name_addr(self) -> int:
        s = self.s
        del self.text[:]
        if s.parse_phrase(self.text) <= 0 or s.data[s.pos] != 0x3C:
            return -1
        self.addr.name = bytes(self.text) or None
        if self.parse_angle_addr() < 0:
            self.addr.domain = b"SYNTAX_ERROR"
            self.addr.invalid = True
        return 0 if s.at_end() else 1

    def parse_addr_spec(self) -> int:
        s = self.s
        comment = s.last_comment
        assert comment is not None
        del comment[:]
        quoted = s.data[s.pos] == 0x22
        ret2 = -2
        ret = self.parse_local_part()
        if ret <= 0:
            self.addr.invalid = True
        if ret != 0 and not s.at_end() and s.data[s.pos] == 0x40:
            ret2 = self.parse_domain()
            if ret2 <= 0:
                ret = ret2
        if comment:
            self.addr.name = bytes(comment)
        elif ret2 == -2:
            # "user" alone is a mailbox; "user more words" is a display name.
            self.text.append(0x20)
            before = len(self.text)
            s.parse_phrase(self.text)
            if len(self.text) != before:
                self.addr.mailbox = None
                self.addr.name = bytes(self.text)
            elif not quoted:
                self.addr.domain = b""
            self.addr.invalid = True
            ret = -1
        return ret

    def parse_mailbox(self) -> int:
        s = self.s
        start = s.pos
        ret = self.parse_name_addr()
        if ret < 0:
            s.pos = start
            ret = self.parse_addr_spec()
            a = self.addr
            if a.invalid and a.name is None and a.mailbox is not None and a.domain is None:
                a.name, a.mailbox = a.mailbox, None
        if ret < 0:
            self.addr.invalid = True
        self.add_fixed()
        return ret

    def parse_group(self) -> int:
        s = self.s
        del self.text[:]
        if s.parse_phrase(self.text) <= 0 or s.data[s.pos] != 0x3A:
            return -1
        s.pos += 1
        ret = s.skip_lwsp()
        self.addr.mailbox = bytes(self.text)
        self.add()
        if ret > 0 and s.data[s.pos] != 0x3B:
            while True:
                self.parse_mailbox()
                if s.at_end() or s.data[s.pos] != 0x2C:
                    break
                s.pos += 1
                if s.skip_lwsp() <= 0:
                    ret = -1
                    break
        if ret >= 0:
            if s.at_end() or s.data[s.pos] != 0x3B:
                ret = -1
            else:
                s.pos += 1
                ret = s.skip_lwsp()
        self.add()
        return 0 if ret == 0 else 1

    def parse_address(self) -> int:
        start = self.s.pos
        ret = self.parse_group()
        if ret < 0:
            self.s.pos = start
            self.addr = _Builder()
            ret = self.parse_mailbox()
        return ret

    def parse_list(self) -> list[Address]:
        s = self.s
        if s.skip_lwsp() <= 0:
            return []
        while True:
            if self.parse_address() == 0:
                break
            if s.at_end() or s.data[s.pos] != 0x2C:
                break
            s.pos += 1
            ret = s.skip_lwsp()
            if ret <= 0:
                if ret < 0:
                    self.add_fixed()
                break
        return self.out


def parse_address_list(value: bytes) -> tuple[Address, ...]:
    """Parse an address header value (unfolded) into ENVELOPE addresses.

    Args:
        value: The header's full value, as :class:`~aiodbox.message.headers.HeaderField`
            ``value`` holds it.

    Returns:
        The addresses in order; empty when the value holds none (ENVELOPE NIL).
    """
    return tuple(_AddressParser(value).parse_list())
