"""Opening a mailbox only to save into it (APPEND, COPY's target, LMTP) reads no view."""

from __future__ import annotations

from pathlib import Path

import pytest

from .storage_testlib import fill, make_storage, simple_message


@pytest.mark.parametrize("fmt", ["sdbox", "mdbox"])
async def test_saving_without_a_view_reads_no_rows_and_shared_views_see_it(
    tmp_path: Path, fmt: str
) -> None:
    storage, _ = make_storage(tmp_path, fmt, "posix")
    user = await storage.user("u")
    inbox = await user.open_mailbox("INBOX")
    await fill(inbox, [simple_message(n) for n in range(30)])
    inbox_id = inbox.info.id
    await inbox.close()
    assert user.shared_mailbox(inbox_id) is None

    # Nobody has INBOX open: a private mailbox without a view.
    saver = await user.open_mailbox("INBOX", load_view=False)
    assert not saver.loaded and len(saver.view.uids) == 0
    assert user.shared_mailbox(inbox_id) is None
    # A session selects INBOX while the save is in progress...
    tx = saver.transaction()
    await tx.save(simple_message(100))
    reader = await user.open_mailbox("INBOX")
    assert len(reader.view.uids) == 30
    result = await tx.commit()
    # ...and sees the commit as soon as it returned, without a sync of its own.
    assert list(reader.view.uids)[-1] == result.saved_uids[0] == 31
    assert not saver.loaded and len(saver.view.uids) == 0  # still nothing read
    await saver.close()
    assert user.shared_mailbox(inbox_id) is reader  # closing the private one forgot nothing

    # While a session has it open, saving uses (and refreshes) the shared view.
    again = await user.open_mailbox("INBOX", load_view=False)
    assert again is reader
    await fill(again, [simple_message(200)])
    assert len(reader.view.uids) == 32
    await again.close()
    await reader.close()
    await user.close()
