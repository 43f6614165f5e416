"""Opening a mailbox only to save into it (APPEND, COPY's target, LMTP) reads no view."""

from __future__ import annotations

from pathlib import Path

import pytest

from aiodbox.storage.errors import MailboxNotFound
from aiodbox.storage.storage import MailboxInfo

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


async def test_saving_remembers_which_mailbox_a_name_means_until_the_list_changes(
    tmp_path: Path,
) -> None:
    # Opening for saving looks the name up once; another process's (here: another
    # Storage's) create, rename or delete is seen by the next open, never a stale id.
    storage, _ = make_storage(tmp_path, "sdbox", "posix")
    other_storage, _ = make_storage(tmp_path, "sdbox", "posix")
    user = await storage.user("u")
    other = await other_storage.user("u")
    await user.create_mailbox("Work")
    lookups = []
    real = user.get_mailbox_info

    async def counted(name: str) -> MailboxInfo:
        lookups.append(name)
        return await real(name)

    user.get_mailbox_info = counted  # type: ignore[method-assign]

    async def open_for_saving(name: str) -> MailboxInfo:
        mbox = await user.open_mailbox(name, load_view=False)
        info = mbox.info
        await mbox.close()
        return info

    work = await open_for_saving("Work")
    assert await open_for_saving("Work") == work
    await fill(await user.open_mailbox("Work", load_view=False), [simple_message(1)])
    assert await open_for_saving("Work") == work
    assert lookups == ["Work"]  # saving (an index write) did not forget the name

    await other.rename_mailbox("Work", "Old")
    with pytest.raises(MailboxNotFound):
        await open_for_saving("Work")
    assert (await open_for_saving("Old")).id == work.id

    await other.create_mailbox("Work")  # a new mailbox under the old name
    new_work = await open_for_saving("Work")
    assert new_work.id != work.id and new_work.guid != work.guid

    await other.delete_mailbox("Work")
    with pytest.raises(MailboxNotFound):
        await open_for_saving("Work")

    await user.rename_mailbox("Old", "Work")  # this process's own change, at once
    assert (await open_for_saving("Work")).id == work.id
    with pytest.raises(MailboxNotFound):
        await open_for_saving("Old")
    await other.close()
    await user.close()
