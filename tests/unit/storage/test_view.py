"""MailboxView: rows that commit out of UID order land where a reload would put them."""

from __future__ import annotations

import random

from aiodbox.storage.view import MailboxView


def _rows(uids: list[int]) -> list[tuple[int, int, str, int, int, int]]:
    return [(u, u % 4, "$A" if u % 3 else "", u + 100, 1000 + u, 1700000000 + u) for u in uids]


def _state(view: MailboxView) -> tuple[object, ...]:
    return (
        list(view.uids),
        list(view.flags),
        view.keywords,
        list(view.modseqs),
        list(view.sizes),
        list(view.dates),
    )


def test_out_of_order_rows_are_inserted_in_place() -> None:
    rng = random.Random(4)
    for _ in range(50):
        uids = rng.sample(range(1, 400), 60)
        first, late = sorted(uids[:40]), uids[40:]
        view = MailboxView(1, 1)
        view.load(_rows(first), 150, max(first) + 1, "")
        changed: list[bool] = []
        view.add_listener(lambda changed=changed: changed.append(True))  # type: ignore[misc]
        assert view.apply(_rows(late), [], 200, 401, "")
        expected = MailboxView(1, 1)
        expected.load(_rows(sorted(uids)), 200, 401, "")
        assert _state(view) == _state(expected)
        assert view.index_of(late[0]) == sorted(uids).index(late[0])
        assert changed
        assert all(kw is view.intern_keywords(" ".join(kw)) for kw in view.keywords)
