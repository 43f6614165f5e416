"""The IMAP4rev1 server.

* :mod:`aiodbox.imap.protocol` — the sans-IO protocol core (parser, responses, states).
* :mod:`aiodbox.imap.server` — :class:`~aiodbox.imap.server.ImapServer`: listeners,
  limits, timeouts, shutdown.
* :mod:`aiodbox.imap.connection` — one connection: an ``asyncio.Protocol`` that runs a
  task only while a command runs.
* :mod:`aiodbox.imap.output` — back-pressure, body streaming, ``sendfile``.
* :mod:`aiodbox.imap.selected` — a session's numbering of its selected mailbox and the
  untagged updates it owes the client; :mod:`aiodbox.imap.watch` — changes made by
  other processes (coalesced syncs, the IDLE poller).
* :mod:`aiodbox.imap.commands` — the command handlers, one module per group.
* :mod:`aiodbox.imap.capabilities`, :mod:`aiodbox.imap.limits`, :mod:`aiodbox.imap.tls`.

Nothing is imported here, so the protocol core stays importable without asyncio.
"""
