"""Random identifiers from a pooled buffer: distinct, well-formed, never shared with a fork."""

from __future__ import annotations

import os
import re
import threading

from aiodbox import random_ids


def test_uuid4_hex_is_well_formed_and_distinct() -> None:
    ids = [random_ids.new_uuid4_hex() for _ in range(5000)]
    assert len(set(ids)) == len(ids)
    for i in ids[:200]:
        assert re.fullmatch(r"[0-9a-f]{12}4[0-9a-f]{3}[89ab][0-9a-f]{15}", i), i


def test_bytes_drawn_from_threads_are_never_handed_out_twice() -> None:
    out: list[bytes] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [random_ids.random_bytes(8) for _ in range(3000)]  # many refills
        with lock:
            out.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == len(out) == 12000
    assert len(random_ids.random_hex(6)) == 12
    assert len(random_ids.random_bytes(5000)) == 5000  # larger than the pool: direct


def test_a_forked_child_does_not_repeat_the_parents_bytes() -> None:
    random_ids.random_bytes(1)  # the buffer is filled before the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.write(w, random_ids.random_bytes(16))
        finally:
            os._exit(0)
    os.close(w)
    child = os.read(r, 16)
    os.close(r)
    os.waitpid(pid, 0)
    parent = random_ids.random_bytes(16)  # what the parent's buffer hands out next
    assert len(child) == 16
    assert child != parent
