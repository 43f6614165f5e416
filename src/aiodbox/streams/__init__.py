"""Non-blocking input and output streams over FS handles."""

from __future__ import annotations

from aiodbox.streams.input import InputStream, UnexpectedEOF, window
from aiodbox.streams.output import OutputStream

__all__ = ["InputStream", "OutputStream", "UnexpectedEOF", "window"]
