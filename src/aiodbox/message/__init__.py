"""Sans-IO message parsing: MIME structure, ENVELOPE/BODYSTRUCTURE, decoding, search."""
