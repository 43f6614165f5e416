"""Replay semantics and error handling, on small logs built record by record.

The real fixtures (``test_dovecot_index.py``) cover what Dovecot wrote there;
these cover the record types and situations they do not contain (external vs
internal expunges, extension resets and resizes, log rotation, damage).
"""

from __future__ import annotations

import pickle
import struct

import pytest
from dovecot_testlib import (
    EXTERNAL,
    LogBuilder,
    append_payload,
    ext_intro,
    flag_update,
    header_update,
    keyword_update,
)

from aiodbox.importers.dovecot_index import (
    FLAG_ANSWERED,
    FLAG_DELETED,
    FLAG_FLAGGED,
    FLAG_SEEN,
    DovecotIndexError,
    parse_log,
    read_mailbox_index,
    read_mdbox_map,
    replay_index,
)

APPEND, EXPUNGE, FLAGS, HDR = 0x2, 0x1 | 0xCD90, 0x4, 0x20
INTRO, RESET, EXT_HDR, EXT_REC, KW, KW_RESET = 0x40, 0x80, 0x100, 0x200, 0x400, 0x800
ATOMIC, EXPUNGE_GUID, MODSEQ, EXT_HDR32 = 0x1000, 0x2000 | 0xCD90, 0x8000, 0x10000
DELETED, UNDELETED, BOUNDARY, ATTRIBUTE = 0x20000, 0x40000, 0x80000, 0x100000
INDEXID = 0x11223344


def _base_log(**kwargs: int) -> LogBuilder:
    log = LogBuilder(**kwargs)
    log.add(HDR | EXTERNAL, header_update(24, struct.pack("<I", 777)))  # uid_validity
    log.add(APPEND | EXTERNAL, append_payload((1, FLAG_SEEN), (2, 0), (3, FLAG_FLAGGED)))
    return log


def _index_file(
    *,
    uid_validity: int = 777,
    next_uid: int = 4,
    records: tuple[tuple[int, int], ...] = ((1, FLAG_SEEN), (2, 0), (3, FLAG_FLAGGED)),
    log_seq: int = 1,
    head_offset: int = 40,
    indexid: int = INDEXID,
) -> bytes:
    """A minimal ``dovecot.index``: base header, no extensions, 8-byte records."""
    base = bytearray(120)
    base[0:2] = b"\x07\x03"
    struct.pack_into("<HII", base, 2, 120, 120, 8)
    base[12] = 1
    struct.pack_into("<IIII", base, 16, indexid, 0, uid_validity, next_uid)
    struct.pack_into("<I", base, 32, len(records))
    struct.pack_into("<I", base, 48, 1)
    struct.pack_into("<III", base, 60, log_seq, head_offset, head_offset)
    return bytes(base) + append_payload(*records)


def test_basic_log_only_replay() -> None:
    log = _base_log()
    log.add(FLAGS, flag_update(1, 1, remove=FLAG_SEEN) + flag_update(2, 3, add=FLAG_ANSWERED))
    log.add(FLAGS, flag_update(3, 3, remove=FLAG_FLAGGED))
    log.add(FLAGS | EXTERNAL, flag_update(1, 1, add=FLAG_SEEN))
    log.add(KW, keyword_update(0, "$Label1", (1, 2)))
    log.add(KW, keyword_update(0, "work", (2, 3)))
    log.add(KW, keyword_update(1, "$Label1", (2, 2)))
    log.add(KW_RESET, struct.pack("<II", 3, 3))
    state = replay_index(None, log.bytes())
    assert state.source == "log"
    assert state.header.uid_validity == 777 and state.header.next_uid == 4
    assert [(r.uid, r.flags, r.keywords) for r in state.records] == [
        (1, FLAG_SEEN, ("$Label1",)),
        (2, FLAG_ANSWERED, ("work",)),
        (3, FLAG_ANSWERED, ()),
    ]
    assert state.keywords == ("$Label1", "work")
    assert state.header.indexid == INDEXID
    # 1 append + 3 flag updates + 3 keyword updates + 1 keyword reset
    assert state.highest_modseq == 1 + 8


def test_only_external_expunges_remove_messages() -> None:
    log = _base_log()
    log.add(EXPUNGE, struct.pack("<II", 1, 2))  # internal: only a request
    requested = replay_index(None, log.bytes())
    assert [r.uid for r in requested.records] == [1, 2, 3]
    log.add(EXPUNGE | EXTERNAL, struct.pack("<II", 1, 1))
    log.add(EXPUNGE_GUID | EXTERNAL, struct.pack("<I", 3) + bytes(range(16)))
    done = replay_index(None, log.bytes())
    assert [r.uid for r in done.records] == [2]
    assert done.header.next_uid == 4  # expunges never lower next_uid
    # internal expunge requests do not raise the modseq, external ones do
    assert done.highest_modseq == requested.highest_modseq + 2


def test_removing_an_unknown_keyword_still_registers_it() -> None:
    log = _base_log()
    log.add(KW, keyword_update(1, "ghost", (1, 3)))
    state = replay_index(None, log.bytes())
    assert state.keywords == ("ghost",)
    assert all(r.keywords == () for r in state.records)
    kw_ext = state.extension("keywords")
    assert kw_ext is not None and (kw_ext.record_size, len(kw_ext.header)) == (2, 148)


def test_extension_lifecycle() -> None:
    log = _base_log()
    log.add(INTRO, ext_intro("demo", hdr_size=8, record_size=2, record_align=2))
    log.add(EXT_HDR, struct.pack("<HH", 2, 3) + b"abc")
    log.add(EXT_REC, struct.pack("<IH", 1, 0x0102) + bytes(2) + struct.pack("<IH", 3, 7) + bytes(2))
    log.add(ATOMIC, struct.pack("<Ii", 3, 5) + struct.pack("<Ii", 2, 1))
    state = replay_index(None, log.bytes())
    ext = state.extension("demo")
    assert ext is not None and ext.header == b"\0\0abc\0\0\0" and ext.record_size == 2
    assert [r.ext_data("demo") for r in state.records] == [
        struct.pack("<H", 0x0102),
        struct.pack("<H", 1),
        struct.pack("<H", 12),
    ]

    # Grow the record (data kept, zero-extended) and write the header via HDR_UPDATE32.
    log.add(INTRO, ext_intro("", ext_id=0, hdr_size=16, record_size=4, record_align=4))
    log.add(EXT_HDR32, struct.pack("<II", 12, 4) + b"wxyz")
    grown = replay_index(None, log.bytes())
    ext = grown.extension("demo")
    assert ext is not None and (ext.record_size, ext.record_align) == (4, 4)
    assert ext.header == b"\0\0abc\0\0\0\0\0\0\0wxyz"
    assert grown.records[0].ext_data("demo") == struct.pack("<I", 0x0102)

    # NO_SHRINK keeps sizes; a plain intro shrinks them.
    log.add(INTRO, ext_intro("", ext_id=0, hdr_size=8, record_size=2, record_align=2, flags=1))
    kept = replay_index(None, log.bytes()).extension("demo")
    assert kept is not None and (kept.record_size, len(kept.header)) == (4, 16)

    # A reset zeroes the data and changes reset_id; updates from a writer that had
    # not seen the reset (old reset_id in its intro) are ignored.
    log.add(RESET, struct.pack("<IB3x", 42, 0))
    log.add(INTRO, ext_intro("", ext_id=0, reset_id=0, hdr_size=16, record_size=4, record_align=4))
    log.add(EXT_REC, struct.pack("<II", 1, 99))
    reset = replay_index(None, log.bytes())
    ext = reset.extension("demo")
    assert ext is not None and ext.reset_id == 42 and ext.header == bytes(16)
    assert all(r.ext_data("demo") == bytes(4) for r in reset.records)
    log.add(INTRO, ext_intro("", ext_id=0, reset_id=42, hdr_size=16, record_size=4, record_align=4))
    log.add(EXT_REC, struct.pack("<II", 1, 99))
    current = replay_index(None, log.bytes())
    assert current.records[0].ext_data("demo") == struct.pack("<I", 99)


def test_extension_added_after_messages_gets_zeroed_records() -> None:
    log = _base_log()
    log.add(INTRO, ext_intro("late", record_size=4, record_align=4))
    log.add(APPEND, append_payload((4, 0)))
    state = replay_index(None, log.bytes())
    assert [r.ext_data("late") for r in state.records] == [bytes(4)] * 4


def test_modseq_tracking_rules() -> None:
    log = _base_log()
    start = replay_index(None, log.bytes()).highest_modseq
    log.add(FLAGS, flag_update(1, 1, add=0x40))  # backend-private bit only: internal
    assert replay_index(None, log.bytes()).highest_modseq == start
    log.add(ATTRIBUTE, b"+pvendor/x\0\0\0\0" + struct.pack("<II", 1, 5))
    assert replay_index(None, log.bytes()).highest_modseq == start + 1
    log.add(MODSEQ, struct.pack("<III", 1, 500, 0))
    assert replay_index(None, log.bytes()).highest_modseq == 500
    log.add(MODSEQ, struct.pack("<III", 1, 7, 1))  # high word counts
    assert replay_index(None, log.bytes()).highest_modseq == (1 << 32) | 7


def test_modseq_zero_until_the_modseq_extension_is_introduced() -> None:
    log = _base_log(initial_modseq=0)
    assert replay_index(None, log.bytes()).highest_modseq == 0
    log.add(INTRO, ext_intro("modseq", hdr_size=16, record_size=8, record_align=8))
    log.add(APPEND, append_payload((4, 0)))
    log.add(MODSEQ, struct.pack("<III", 4, 9, 0))
    state = replay_index(None, log.bytes())
    assert state.highest_modseq == 9
    mbox = read_mailbox_index(None, log.bytes())
    assert [m.modseq for m in mbox.messages] == [0, 0, 0, 9]


def test_index_deleted_and_undeleted() -> None:
    log = _base_log()
    log.add(DELETED, bytes(4))  # internal: a request only
    assert not replay_index(None, log.bytes()).deleted
    log.add(DELETED | EXTERNAL, bytes(4))
    assert replay_index(None, log.bytes()).deleted
    assert read_mailbox_index(None, log.bytes()).deleted
    log.add(UNDELETED, bytes(4))  # internal: only cancels a pending request
    assert replay_index(None, log.bytes()).deleted
    log.add(UNDELETED | EXTERNAL, bytes(4))
    assert not replay_index(None, log.bytes()).deleted


def test_header_anomalies_are_applied_like_dovecot_and_reported() -> None:
    log = _base_log()
    log.add(HDR, header_update(28, struct.pack("<I", 2)))  # next_uid shrink: ignored
    log.add(HDR, header_update(24, struct.pack("<I", 778)))  # uid_validity change
    state = replay_index(None, log.bytes(), name="box/dovecot.index")
    assert state.header.next_uid == 4
    assert state.header.uid_validity == 778
    assert len(state.warnings) == 2
    assert "next_uid shrink ignored: 4 -> 2" in state.warnings[0]
    assert "uid_validity updated unexpectedly: 777 -> 778" in state.warnings[1]
    assert state.warnings[0].startswith("box/dovecot.index.log at offset ")


def test_boundary_framed_transactions() -> None:
    log = _base_log()
    start = len(log.data)
    body = [
        (FLAGS, flag_update(1, 3, add=FLAG_DELETED)),
        (KW, keyword_update(0, "x", (1, 1))),
    ]
    size = 12 + sum(8 + len(p) + (-len(p) % 4) for _, p in body)
    log.add(BOUNDARY | EXTERNAL, struct.pack("<I", size))
    for t, p in body:
        log.add(t, p)
    full = log.bytes()
    assert len(full) == start + size
    parsed = parse_log(full)
    assert parsed.end_offset == len(full)
    state = replay_index(None, full)
    assert all(r.flags & FLAG_DELETED for r in state.records)

    cut = full[:-4]  # inside the last record of the transaction
    with pytest.raises(DovecotIndexError):
        parse_log(cut)
    tolerant = parse_log(cut, allow_partial_tail=True)
    assert tolerant.end_offset == start and tolerant.partial_tail == len(cut) - start
    rolled_back = replay_index(None, cut, allow_partial_tail=True)
    assert not any(r.flags & FLAG_DELETED for r in rolled_back.records)

    # Cut exactly after the first record of the transaction: records are whole,
    # but the BOUNDARY says the transaction is longer.
    second = start + 12 + 8 + 12
    with pytest.raises(DovecotIndexError, match="beyond end of file"):
        parse_log(full[:second])
    assert parse_log(full[:second], allow_partial_tail=True).end_offset == start


def _rotated_logs(index_head_in_log2: int | None) -> tuple[bytes, bytes, int]:
    old = _base_log(file_seq=1)
    mark = len(old.data)
    old.add(FLAGS | EXTERNAL, flag_update(1, 1, add=FLAG_ANSWERED))
    log2 = old.bytes()
    new = LogBuilder(file_seq=2, prev_file_seq=1, prev_file_offset=len(log2), initial_modseq=10)
    new.add(FLAGS | EXTERNAL, flag_update(2, 2, add=FLAG_SEEN))
    new.add(APPEND | EXTERNAL, append_payload((4, 0)))
    return log2, new.bytes(), mark if index_head_in_log2 is None else index_head_in_log2


def test_index_pointing_into_rotated_log2() -> None:
    log2, log, mark = _rotated_logs(None)
    index = _index_file(log_seq=1, head_offset=mark)
    state = replay_index(index, log, log2=log2)
    assert state.source == "index+log"
    assert [(r.uid, r.flags) for r in state.records] == [
        (1, FLAG_SEEN | FLAG_ANSWERED),
        (2, FLAG_SEEN),
        (3, FLAG_FLAGGED),
        (4, 0),
    ]
    assert state.highest_modseq == 12  # the head file's own count
    assert state.log_file_seq == 2 and state.log_offset == len(log)
    with pytest.raises(DovecotIndexError, match="not available"):
        replay_index(index, log)  # .log.2 needed but missing


def test_index_at_end_of_log2_skips_to_head_log() -> None:
    log2, log, _ = _rotated_logs(None)
    index = _index_file(log_seq=1, head_offset=len(log2), records=((1, 9), (2, 0), (3, 2)))
    state = replay_index(index, log)  # no .log.2 needed
    assert [(r.uid, r.flags) for r in state.records][:2] == [(1, 9), (2, FLAG_SEEN)]


def test_log_only_replay_across_rotation_and_missing_beginning() -> None:
    log2, log, _ = _rotated_logs(None)
    state = replay_index(None, log, log2=log2)
    assert [r.uid for r in state.records] == [1, 2, 3, 4]
    with pytest.raises(DovecotIndexError, match="does not start the index") as err:
        replay_index(None, log)
    assert err.value.file == "dovecot.index.log"


def test_log2_that_does_not_end_where_log_says_is_an_error() -> None:
    log2, log, _ = _rotated_logs(None)
    wrong = bytearray(log)
    struct.pack_into("<I", wrong, 16, len(log2) - 4)  # prev_file_offset
    with pytest.raises(DovecotIndexError, match="previous log ended") as err:
        replay_index(None, bytes(wrong), log2=log2)
    assert (err.value.file, err.value.offset) == ("dovecot.index.log.2", len(log2))


def test_reset_log_discards_an_older_index() -> None:
    fresh = _base_log(file_seq=5)
    fresh.add(APPEND | EXTERNAL, append_payload((7, 0)))
    index = _index_file(log_seq=3, head_offset=100, records=((1, 0),), next_uid=2)
    state = replay_index(index, fresh.bytes())
    assert state.source == "log"
    assert [r.uid for r in state.records] == [1, 2, 3, 7]
    assert any("resets the index" in w for w in state.warnings)


def test_index_without_log_and_log_without_index() -> None:
    index = _index_file()
    alone = replay_index(index, None)
    assert alone.source == "index" and [r.uid for r in alone.records] == [1, 2, 3]
    with pytest.raises(DovecotIndexError, match="neither"):
        replay_index(None, None)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda log: log.add(0x4000, bytes(8)), "unknown transaction record type"),
        (lambda log: log.add(0x1, struct.pack("<II", 1, 1)), "protection mask"),
        (lambda log: log.add(APPEND, append_payload((2, 0))), "next_uid = 4"),
        (lambda log: log.add(EXT_REC, struct.pack("<II", 1, 1)), "without an introduction"),
        (
            lambda log: log.add(INTRO, ext_intro("keywords", record_size=1, record_align=1)),
            "keywords",
        ),
        (lambda log: log.add(INTRO, ext_intro("", ext_id=9, hdr_size=4)), "unknown extension id"),
        (lambda log: log.add(INTRO, ext_intro("bad name!", hdr_size=4)), "invalid extension name"),
        (lambda log: log.add(FLAGS, flag_update(3, 2)), "invalid UID range"),
        (lambda log: log.add(FLAGS, flag_update(2, 3) + flag_update(1, 1)), "not sorted"),
        (lambda log: log.add(HDR, header_update(118, bytes(4))), "outside range"),
        (lambda log: log.add(KW, struct.pack("<BxH", 0, 0) + struct.pack("<II", 1, 1)), "empty"),
        (lambda log: log.add(APPEND, b""), "empty record"),
        (lambda log: log.add(ATTRIBUTE, b"*px\0"), "ATTRIBUTE_UPDATE"),
    ],
)
def test_damaged_records_raise_with_file_and_offset(mutate, message) -> None:  # type: ignore[no-untyped-def]
    log = _base_log()
    offset = len(log.data)
    mutate(log)
    with pytest.raises(DovecotIndexError, match=message) as err:
        replay_index(None, log.bytes(), name="/mail/INBOX/dovecot.index")
    assert err.value.file == "/mail/INBOX/dovecot.index.log"
    assert err.value.offset == offset
    assert str(err.value).startswith(f"/mail/INBOX/dovecot.index.log at offset {offset}: ")


def test_extension_updates_out_of_bounds_raise() -> None:
    log = _base_log()
    log.add(INTRO, ext_intro("ref", record_size=2, record_align=2))
    log.add(EXT_REC, struct.pack("<IH2x", 1, 1))
    log.add(ATOMIC, struct.pack("<Ii", 1, -2))
    with pytest.raises(DovecotIndexError, match="would become -1"):
        replay_index(None, log.bytes())
    log = _base_log()
    log.add(INTRO, ext_intro("h", hdr_size=4))
    log.add(EXT_HDR, struct.pack("<HH", 6, 4) + b"abcd")
    with pytest.raises(DovecotIndexError, match="outside its header"):
        replay_index(None, log.bytes())
    log = _base_log()
    log.add(INTRO, ext_intro("r", record_size=4, record_align=4))
    log.add(EXT_REC, struct.pack("<II", 9, 1))
    with pytest.raises(DovecotIndexError, match="invalid uid 9"):
        replay_index(None, log.bytes())


def test_index_and_log_that_do_not_fit_together() -> None:
    log = _base_log().bytes()
    with pytest.raises(DovecotIndexError, match="another index"):
        replay_index(_index_file(indexid=5), log)
    with pytest.raises(DovecotIndexError, match="outside its records") as err:
        replay_index(_index_file(head_offset=len(log) + 8), log)
    assert err.value.file == "dovecot.index"
    with pytest.raises(DovecotIndexError, match="inside a record"):
        replay_index(_index_file(head_offset=44), log)


def test_damaged_index_files_raise() -> None:
    good = _index_file()
    replay_index(good, None)
    with pytest.raises(DovecotIndexError, match="file truncated") as err:
        replay_index(good[:-3], None, name="x/dovecot.index")
    assert (err.value.file, err.value.offset) == ("x/dovecot.index", len(good) - 3)
    with pytest.raises(DovecotIndexError, match="too short"):
        replay_index(good[:100], None)
    bad = bytearray(good)
    bad[0] = 6
    with pytest.raises(DovecotIndexError, match="major version"):
        replay_index(bytes(bad), None)
    bad = bytearray(good)
    struct.pack_into("<I", bad, 4, 500)
    with pytest.raises(DovecotIndexError, match="larger than the file"):
        replay_index(bytes(bad), None)
    bad = bytearray(good)
    struct.pack_into("<I", bad, 120 + 8, 1)  # uid 2 -> 1: not ascending
    with pytest.raises(DovecotIndexError, match="not ascending"):
        replay_index(bytes(bad), None)
    bad = bytearray(good)
    struct.pack_into("<I", bad, 28, 3)  # next_uid below the last uid
    with pytest.raises(DovecotIndexError, match="next_uid"):
        replay_index(bytes(bad), None)


def test_damaged_log_headers_raise() -> None:
    good = _base_log().bytes()
    with pytest.raises(DovecotIndexError, match="too short"):
        parse_log(good[:20])
    with pytest.raises(DovecotIndexError, match="major version"):
        parse_log(b"\x02" + good[1:])
    with pytest.raises(DovecotIndexError, match="corrupted"):
        parse_log(good[:4] + bytes(4) + good[8:])
    with pytest.raises(DovecotIndexError, match="offset 40: unfinished"):
        parse_log(good[:40] + bytes(8) + good[48:])


def test_mdbox_map_entry_without_location_is_an_error() -> None:
    log = _base_log()
    log.add(INTRO, ext_intro("map", hdr_size=8, record_size=12, record_align=4))
    with pytest.raises(DovecotIndexError, match="no location"):
        read_mdbox_map(None, log.bytes())


def test_error_is_a_value_error_and_pickles() -> None:
    err = DovecotIndexError("f.log", 12, "bad")
    assert isinstance(err, ValueError)
    again = pickle.loads(pickle.dumps(err))
    assert (again.file, again.offset, again.reason, str(again)) == (
        "f.log",
        12,
        "bad",
        "f.log at offset 12: bad",
    )
    assert str(DovecotIndexError("a", None, "b")) == "a: b"
