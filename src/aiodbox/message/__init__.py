"""Sans-IO message parsing: MIME structure, ENVELOPE/BODYSTRUCTURE, decoding, search.

Everything here is push-based over byte chunks (no asyncio, no files, no
sockets), so callers can feed it from non-blocking streams and never hold a
large message whole.  Modules, one concept each:

* :mod:`.parser` -- :class:`MessageParser` (``feed``/``finish``): the MIME part
  tree with Dovecot 2.3's sizes, line counts and broken-MIME rules.
* :mod:`.structure` -- BODYSTRUCTURE and BODY, byte-identical to Dovecot 2.3.
* :mod:`.envelope` -- ENVELOPE, byte-identical to Dovecot 2.3.
* :mod:`.summary` -- the rendered answers plus a part table, serialised for
  the index cache (``to_bytes``/``from_bytes``), and IMAP section lookup.
* :mod:`.headers` -- header fields, unfolding, HEADER.FIELDS[.NOT] bytes.
* :mod:`.rfc2047` / :mod:`.dates` -- encoded words, Date parsing for SENT*.
* :mod:`.decode` -- streaming base64/quoted-printable and charset decoding.
* :mod:`.search` -- :class:`BodyMatcher` for HEADER/FROM/.../BODY/TEXT keys.
* :mod:`.rfc822`, :mod:`.address` -- Dovecot's tokenizer and address parser.
* :mod:`.imapstring` -- IMAP string forms (plain and Dovecot's rules).

Differences from Dovecot 2.3.19 kept on purpose are listed in the docstrings
of :mod:`.parser`, :mod:`.headers` and :mod:`.search`.
"""
