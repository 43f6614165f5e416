"""The index/log reader against the real Dovecot 2.3 fixtures.

Every value the indexes hold is checked against ``manifest.json`` and against
Dovecot's own decoding in ``doveadm-dump/*.txt``.
"""

from __future__ import annotations

import calendar
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from dovecot_testlib import (
    MAILBOXES,
    USERS,
    mail_root,
    mailbox_dir,
    parse_doveadm_dump,
    read_optional,
)

from aiodbox.importers.dovecot_index import (
    FLAG_ANSWERED,
    FLAG_DELETED,
    FLAG_DRAFT,
    FLAG_FLAGGED,
    FLAG_SEEN,
    DovecotIndexError,
    DovecotMailboxIndex,
    IndexState,
    MdboxMap,
    parse_index_header,
    parse_log,
    read_mailbox_index,
    read_mdbox_map,
    replay_index,
    system_flag_names,
)

CASES = [(user, box) for user in USERS for box in MAILBOXES]


def _read_box(dovecot_dir: Path, user: str, box: str) -> DovecotMailboxIndex:
    d = mailbox_dir(dovecot_dir, user, box)
    return read_mailbox_index(
        read_optional(d / "dovecot.index"),
        read_optional(d / "dovecot.index.log"),
        name=str(d / "dovecot.index"),
    )


def _read_map(dovecot_dir: Path) -> MdboxMap:
    st = mail_root(dovecot_dir, "mdbox") / "storage"
    return read_mdbox_map(
        read_optional(st / "dovecot.map.index"),
        read_optional(st / "dovecot.map.index.log"),
        name=str(st / "dovecot.map.index"),
    )


def _manifest_box(manifest: dict[str, Any], user: str, box: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = manifest["users"][user]["mailboxes"]
    (entry,) = [m for m in entries if m["mailbox"] == box]
    return entry


def _manifest_messages(manifest: dict[str, Any], user: str, box: str) -> list[dict[str, Any]]:
    return [m for m in manifest["users"][user]["messages"] if m["mailbox"] == box]


def _unix(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


@pytest.mark.parametrize(("user", "box"), CASES)
def test_mailbox_status_matches_manifest(
    dovecot_dir: Path, manifest: dict[str, Any], user: str, box: str
) -> None:
    mbox = _read_box(dovecot_dir, user, box)
    expected = _manifest_box(manifest, user, box)
    assert mbox.uidvalidity == expected["uidvalidity"]
    assert mbox.uidnext == expected["uidnext"]
    assert mbox.highest_modseq == expected["highestmodseq"]
    assert len(mbox.messages) == expected["messages"]
    assert mbox.mailbox_guid == expected["guid"]
    assert mbox.vsize == expected["vsize"]
    assert mbox.storage == user
    assert not mbox.deleted
    assert mbox.warnings == ()


@pytest.mark.parametrize(("user", "box"), CASES)
def test_messages_match_manifest(
    dovecot_dir: Path, manifest: dict[str, Any], user: str, box: str
) -> None:
    mbox = _read_box(dovecot_dir, user, box)
    expected = _manifest_messages(manifest, user, box)
    assert [m.uid for m in mbox.messages] == [e["uid"] for e in expected]
    for msg, exp in zip(mbox.messages, expected, strict=True):
        assert list(msg.system_flags) == exp["flags"], f"uid {msg.uid}"
        assert list(msg.keywords) == exp["keywords"], f"uid {msg.uid}"
        assert "\\Recent" not in msg.system_flags
        assert msg.vsize == exp["size_virtual"], f"uid {msg.uid}"
        if user == "mdbox":
            assert msg.map_uid == exp["mdbox_location"]["map_uid"]
            assert msg.guid == exp["guid"]
            assert msg.save_date == _unix(exp["date_saved"])
        else:
            # sdbox keeps neither map UIDs nor GUIDs/save dates in the index.
            assert (msg.map_uid, msg.guid, msg.save_date) == (None, None, None)


@pytest.mark.parametrize(("user", "box"), CASES)
def test_index_plus_log_and_log_only_mailboxes_are_both_covered(
    dovecot_dir: Path, user: str, box: str
) -> None:
    d = mailbox_dir(dovecot_dir, user, box)
    mbox = _read_box(dovecot_dir, user, box)
    if box == "INBOX":
        assert (d / "dovecot.index").exists()
        assert mbox.state.source == "index+log"
    else:
        assert not (d / "dovecot.index").exists()
        assert mbox.state.source == "log"
    assert mbox.state.log_offset == (d / "dovecot.index.log").stat().st_size


@pytest.mark.parametrize("user", USERS)
def test_log_tail_is_replayed_from_the_index_header_offset(dovecot_dir: Path, user: str) -> None:
    """The INBOX index predates steps 4-6; only the log tail brings them in."""
    d = mailbox_dir(dovecot_dir, user, "INBOX")
    index = (d / "dovecot.index").read_bytes()
    log = (d / "dovecot.index.log").read_bytes()
    hdr = parse_index_header(index)
    assert 40 < hdr.log_file_head_offset < len(log)

    before = replay_index(index, None, name="dovecot.index")
    assert before.source == "index"
    flags_before = {r.uid: r.flags & 0x1F for r in before.records}
    kw_before = {r.uid: r.keywords for r in before.records}
    # Step 3 state: uid 12 not yet expunged, LMTP/doveadm messages without flags.
    assert sorted(flags_before) == list(range(1, 19))
    assert flags_before[2] == 0 and flags_before[8] == 0 and flags_before[16] == 0
    assert kw_before[10] == ()

    after = replay_index(index, log, name="dovecot.index")
    flags_after = {r.uid: r.flags & 0x1F for r in after.records}
    assert 12 not in flags_after
    assert flags_after[2] == FLAG_ANSWERED | FLAG_SEEN
    assert flags_after[8] == FLAG_FLAGGED | FLAG_SEEN
    assert flags_after[16] == FLAG_SEEN
    assert flags_after[13] == FLAG_DELETED | FLAG_SEEN
    assert {r.uid: r.keywords for r in after.records}[10] == ("$Label1",)


@pytest.mark.parametrize("user", USERS)
def test_full_log_replay_agrees_with_index_plus_tail(dovecot_dir: Path, user: str) -> None:
    """The INBOX log was never rotated, so replaying all of it must give the same map."""
    d = mailbox_dir(dovecot_dir, user, "INBOX")
    log = (d / "dovecot.index.log").read_bytes()
    with_index = replay_index((d / "dovecot.index").read_bytes(), log)
    log_only = replay_index(None, log)
    assert log_only.records == with_index.records
    assert log_only.extensions == with_index.extensions
    assert log_only.keywords == with_index.keywords
    assert log_only.header.uid_validity == with_index.header.uid_validity
    assert log_only.header.next_uid == with_index.header.next_uid
    assert log_only.highest_modseq == with_index.highest_modseq


def _dump_for(dovecot_dir: Path, user: str, box: str) -> str:
    fname = f"{user}-{box.replace('/', '_')}-index.txt"
    return (dovecot_dir / "doveadm-dump" / fname).read_text(encoding="latin-1")


def _assert_matches_dump(state: IndexState, dump_text: str) -> None:
    dump = parse_doveadm_dump(dump_text)
    assert state.header.uid_validity == int(dump.header["uid validity"])
    assert state.header.next_uid == int(dump.header["next uid"])
    assert state.header.messages_count == int(dump.header["messages count"])
    assert state.header.seen_messages_count == int(dump.header["seen messages count"])
    assert state.header.deleted_messages_count == int(dump.header["deleted messages count"])
    assert [
        (e.name, len(e.header), e.reset_id, e.record_size, e.record_align) for e in state.extensions
    ] == [
        (e["name"], e["hdr_size"], e["reset_id"], e["record_size"], e["record_align"])
        for e in dump.extensions
    ]
    assert list(state.keywords) == dump.keywords
    assert [(r.uid, r.flags) for r in state.records] == [(r.uid, r.flags) for r in dump.records]
    for rec, drec in zip(state.records, dump.records, strict=True):
        for name, hexval in drec.ext.items():
            if name == "keywords":
                bits = int.from_bytes(bytes.fromhex(hexval), "little")
                names = tuple(k for i, k in enumerate(dump.keywords) if bits >> i & 1)
                assert rec.keywords == names, f"uid {rec.uid}"
            else:
                data = rec.ext_data(name)
                assert data is not None and data.hex() == hexval, f"uid {rec.uid} ext {name}"


@pytest.mark.parametrize(("user", "box"), CASES)
def test_replayed_map_matches_doveadm_dump(dovecot_dir: Path, user: str, box: str) -> None:
    mbox = _read_box(dovecot_dir, user, box)
    _assert_matches_dump(mbox.state, _dump_for(dovecot_dir, user, box))


def test_mdbox_map_matches_doveadm_dump(dovecot_dir: Path) -> None:
    st = mail_root(dovecot_dir, "mdbox") / "storage"
    assert not (st / "dovecot.map.index").exists()  # the fixture's map is log-only
    state = replay_index(None, (st / "dovecot.map.index.log").read_bytes())
    _assert_matches_dump(state, (dovecot_dir / "doveadm-dump" / "mdbox-map-index.txt").read_text())


def test_mdbox_locations_match_manifest(dovecot_dir: Path, manifest: dict[str, Any]) -> None:
    mdmap = _read_map(dovecot_dir)
    refs: dict[int, int] = {}
    for box in MAILBOXES:
        mbox = _read_box(dovecot_dir, "mdbox", box)
        assert mbox.map_uid_validity == mdmap.uidvalidity
        for msg, exp in zip(mbox.messages, _manifest_messages(manifest, "mdbox", box), strict=True):
            assert msg.map_uid is not None
            refs[msg.map_uid] = refs.get(msg.map_uid, 0) + 1
            entry = mdmap.lookup(msg.map_uid)
            assert entry is not None
            loc = exp["mdbox_location"]
            assert (entry.map_uid, f"mdbox/storage/{entry.file_name}") == (
                loc["map_uid"],
                loc["file"],
            )
            assert (entry.offset, entry.size, entry.refcount) == (
                loc["offset"],
                loc["size"],
                loc["refcount"],
            )
    # Every live entry's refcount is the number of mailbox records pointing at it.
    assert {e.map_uid: e.refcount for e in mdmap.entries if e.refcount} == refs


def test_mdbox_dead_record_is_kept_with_refcount_zero(
    dovecot_dir: Path, manifest: dict[str, Any]
) -> None:
    mdmap = _read_map(dovecot_dir)
    (dead,) = manifest["users"]["mdbox"]["dead_messages_not_purged"]
    entry = mdmap.lookup(dead["map_uid"])
    assert entry is not None
    assert (f"mdbox/storage/{entry.file_name}", entry.offset, entry.size, entry.refcount) == (
        dead["file"],
        dead["offset"],
        dead["size"],
        0,
    )
    assert [e.map_uid for e in mdmap.entries if e.refcount == 0] == [dead["map_uid"]]
    assert mdmap.next_map_uid == 27
    assert mdmap.highest_file_id == len(manifest["users"]["mdbox"]["storage_files"])
    assert mdmap.lookup(27) is None and mdmap.lookup(0) is None


def test_log_records_and_modseq_tracking(dovecot_dir: Path) -> None:
    d = mailbox_dir(dovecot_dir, "sdbox", "INBOX")
    log = parse_log((d / "dovecot.index.log").read_bytes(), name="x.log")
    assert log.header.major_version == 1 and log.header.minor_version == 3
    assert log.header.file_seq == 2 and log.header.prev_file_seq == 0
    assert log.end_offset == (d / "dovecot.index.log").stat().st_size
    assert log.partial_tail == 0
    kinds = {r.kind_name for r in log.records}
    assert {"APPEND", "FLAG_UPDATE", "KEYWORD_UPDATE", "EXPUNGE_GUID", "EXT_INTRO"} <= kinds
    assert {"EXT_REC_UPDATE", "EXT_HDR_UPDATE", "HEADER_UPDATE", "BOUNDARY"} <= kinds
    # Records tile the file exactly.
    pos = log.header.hdr_size
    for rec in log.records:
        assert rec.offset == pos
        pos += rec.size
    assert pos == log.end_offset
    # modseq never decreases; 18 appends + 200 \Flagged toggles + the later changes.
    assert list(log.modseqs) == sorted(log.modseqs)
    assert log.highest_modseq == 229
    flag_toggles = [
        r for r in log.records if r.kind_name == "FLAG_UPDATE" and r.data[8] | r.data[9] == 2
    ]
    assert len(flag_toggles) == 200


def test_expunge_is_external_and_guid_protected(dovecot_dir: Path) -> None:
    d = mailbox_dir(dovecot_dir, "mdbox", "INBOX")
    log = parse_log((d / "dovecot.index.log").read_bytes())
    expunges = [r for r in log.records if r.kind_name == "EXPUNGE_GUID"]
    assert expunges
    assert any(r.external for r in expunges)
    for rec in expunges:
        assert rec.type & 0xFFFF == 0x2000 | 0xCD90
        assert struct.unpack_from("<I", rec.data)[0] == 12


def test_system_flag_names_order() -> None:
    assert system_flag_names(0xFF) == ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
    assert system_flag_names(FLAG_SEEN | FLAG_DRAFT | 0x80) == ("\\Seen", "\\Draft")
    assert system_flag_names(0) == ()


def test_index_file_header_fields(dovecot_dir: Path) -> None:
    d = mailbox_dir(dovecot_dir, "sdbox", "INBOX")
    hdr = parse_index_header((d / "dovecot.index").read_bytes(), name="i")
    assert (hdr.major_version, hdr.minor_version) == (7, 3)
    assert hdr.base_header_size == 120
    assert hdr.uid_validity == 1795789247
    assert hdr.messages_count == 18
    assert hdr.log_file_seq == 2
    with pytest.raises(DovecotIndexError):
        parse_index_header(b"\x07\x03" + bytes(50))
