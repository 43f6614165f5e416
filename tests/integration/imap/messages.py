"""Test messages for the IMAP tests (CRLF line ends, deterministic)."""

from __future__ import annotations


def simple(n: int, *, subject: str | None = None, body: str | None = None) -> bytes:
    """A small text/plain message numbered ``n``."""
    subject = subject if subject is not None else f"message {n}"
    body = body if body is not None else f"body of message {n}\r\n"
    return (
        f"From: Sender {n} <sender{n}@example.com>\r\n"
        f"To: rcpt@example.org\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Mon, 7 Feb 1994 21:52:{n % 60:02d} -0800\r\n"
        f"Message-ID: <{n}@example.com>\r\n"
        "\r\n"
        f"{body}"
    ).encode()


MULTIPART = (
    b"From: a@example.com\r\n"
    b"Subject: multi\r\n"
    b"Content-Type: multipart/mixed; boundary=b\r\n"
    b"\r\n"
    b"--b\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Transfer-Encoding: base64\r\n"
    b"\r\n"
    b"aGVsbG8Ad29ybGQ=\r\n"
    b"--b\r\n"
    b"Content-Type: message/rfc822\r\n"
    b"\r\n"
    b"Subject: inner\r\n"
    b"X-A: 1\r\n"
    b"\r\n"
    b"inner body\r\n"
    b"--b--\r\n"
)
"""A multipart/mixed message: a base64 text part (``hello\\0world``) and a message/rfc822."""


def append_command(mailbox: str, message: bytes, flags: str = "", date: str = "") -> bytes:
    """``APPEND mailbox (flags) "date" {n}\\r\\n<message>`` (synchronising literal)."""
    parts = [b"APPEND", mailbox.encode()]
    if flags:
        parts.append(f"({flags})".encode())
    if date:
        parts.append(f'"{date}"'.encode())
    return b" ".join(parts) + b" {%d}\r\n" % len(message) + message
