"""A small asyncio IMAP client for transcript tests: send a line, get the response lines.

Responses are kept as bytes, one item per response line with any literal inlined
(``b'* 1 FETCH (BODY[] {5}\\r\\nhello)'`` stays one item), so tests can compare them
structurally.  Literal syntax (``{n}``) in commands is handled: the client waits for
the ``+`` before sending a synchronising literal's bytes.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

_LITERAL_AT_END = re.compile(rb"\{(\d+)\}\r\n\Z")
TIMEOUT = 20.0
LITERAL_STEP = 256 << 10
"""Bytes of a literal read per step."""


@dataclass
class Response:
    """The lines of one command's response, and its tagged completion."""

    untagged: list[bytes]
    tagged: bytes

    @property
    def status(self) -> str:
        return self.tagged.split(b" ", 2)[1].decode()

    @property
    def text(self) -> bytes:
        return self.tagged.split(b" ", 2)[2] if self.tagged.count(b" ") >= 2 else b""

    def lines(self, prefix: bytes) -> list[bytes]:
        """Untagged lines starting with ``prefix`` (e.g. ``b"* LIST"``)."""
        return [line for line in self.untagged if line.startswith(prefix)]


class RawClient:
    """One connection; see the module docstring."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting = b""
        self._n = 0

    @classmethod
    async def connect(cls, host: str, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 24)
        client = cls(reader, writer)
        client.greeting = await client.read_response_line()
        return client

    def next_tag(self) -> str:
        self._n += 1
        return f"t{self._n}"

    async def read_response_line(self) -> bytes:
        """One response line with literals inlined (CRLF stripped)."""
        async with asyncio.timeout(TIMEOUT):
            return await self._read_response_line()

    async def _read_response_line(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = await self.reader.readline()
            if not line:
                raise ConnectionError(f"connection closed; got {b''.join(parts)!r}")
            m = _LITERAL_AT_END.search(line)
            if m is None:
                parts.append(line[:-2] if line.endswith(b"\r\n") else line)
                return b"".join(parts)
            parts.append(line)
            # A large literal in steps: one coroutine step copying megabytes out of the
            # reader's buffer would count against the loop guard (50 ms).
            left = int(m.group(1))
            while left:
                piece = await self.reader.readexactly(min(left, LITERAL_STEP))
                parts.append(piece)
                left -= len(piece)
                if left:
                    await asyncio.sleep(0)  # (readexactly does not yield when buffered)

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def command(self, text: str | bytes, *, tag: str | None = None) -> Response:
        """Send ``tag text`` (synchronising literals handled) and read up to the tagged line."""
        tag = tag or self.next_tag()
        data = text.encode() if isinstance(text, str) else text
        line = tag.encode() + b" " + data + b"\r\n"
        # Split at synchronising literals: send, wait for "+", go on.
        parts = re.split(rb"(\{\d+\}\r\n)", line)
        untagged: list[bytes] = []
        pending = b""
        for i, part in enumerate(parts):
            pending += part
            if _LITERAL_AT_END.search(part) and i < len(parts) - 1:
                await self.send_raw(pending)
                pending = b""
                while True:
                    resp = await self.read_response_line()
                    if resp.startswith(b"+"):
                        break
                    if resp.startswith(tag.encode() + b" "):
                        return Response(untagged, resp)
                    untagged.append(resp)
        await self.send_raw(pending)
        return await self.read_until(tag, untagged)

    async def read_until(self, tag: str, untagged: list[bytes] | None = None) -> Response:
        untagged = [] if untagged is None else untagged
        prefix = tag.encode() + b" "
        async with asyncio.timeout(TIMEOUT):
            while True:
                resp = await self._read_response_line()
                if resp.startswith(prefix):
                    return Response(untagged, resp)
                untagged.append(resp)
                if len(untagged) % 16 == 0:
                    await asyncio.sleep(0)  # buffered lines: let the server run too

    async def append(
        self, mailbox: str, message: bytes, flags: str = "", *, chunk: int = 256 << 10
    ) -> Response:
        """APPEND a (large) message: the literal is sent in chunks, never scanned."""
        tag = self.next_tag()
        flag_part = f" ({flags})" if flags else ""
        await self.send_raw(f"{tag} APPEND {mailbox}{flag_part} {{{len(message)}}}\r\n".encode())
        line = await self.read_response_line()
        if not line.startswith(b"+"):
            return Response([], line)
        view = memoryview(message)
        for start in range(0, len(message), chunk):
            self.writer.write(view[start : start + chunk])
            await self.writer.drain()
        await self.send_raw(b"\r\n")
        resp = await self.read_until(tag)
        assert resp.status == "OK", resp
        return resp

    async def ok(self, text: str | bytes) -> Response:
        """Run a command that must answer OK."""
        resp = await self.command(text)
        assert resp.status == "OK", (text, resp)
        return resp

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def logout(self) -> None:
        await self.command("LOGOUT")
        await self.close()
