"""IMAP4rev1 server: the sans-IO protocol core lives in :mod:`aiodbox.imap.protocol`."""
