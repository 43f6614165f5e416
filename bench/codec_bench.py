"""dbox v3 codec throughput against a plain copy of the same bytes, in one run.

Prints one JSON line per measurement. Each result line carries its rate and its ratio to
two plain-copy baselines measured in the same run on the same bytes:

- ``join``: ``b"".join(chunks)`` (one memcpy into a fresh buffer, allocator-warm), and
- ``bytearray_copy``: ``bytes(bytearray(body))`` (two copies, as a naive reader does).

``ratio`` is against ``join``, the stricter of the two. Rates are compared only within one
run, never across machines. ``blake2b_only`` shows the ceiling that hashing sets: the
writer must hash every body byte (``H``), so encode cannot beat BLAKE2b's own rate.

    .venv/bin/python bench/codec_bench.py [--min-time 0.3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Callable
from functools import partial

from aiodbox.dbox import (
    Record,
    RecordWriter,
    check_body,
    encode_file_header,
    encode_record,
    read_record,
    read_sdbox_tail,
)
from aiodbox.dbox.format import DIGEST_SIZE, SDBOX_TAIL_READ

SEP = b"5e1f00d5c0dec0de5e1f00d5c0dec0de"
GUID = "0123456789abcdef0123456789abcdef"
CHUNK = 64 * 1024
SIZES = (4 * 1024, 1024 * 1024)


def rate(fn: Callable[[], object], nbytes: int, min_time: float) -> float:
    """Best-of-5 throughput of ``fn`` in MB/s (10**6 bytes per second)."""
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - start >= min_time / 5:
            break
        loops *= 2
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, (time.perf_counter() - start) / loops)
    return nbytes / best / 1e6


def copy_via_bytearray(body: bytes) -> bytes:
    return bytes(bytearray(body))


def blake2b_only(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=DIGEST_SIZE).digest()


def encode(chunks: list[bytes], digest: bool) -> bytes:
    w = RecordWriter(SEP, guid=GUID, received=1_700_000_000, digest=digest)
    parts = [w.begin()]
    parts.extend(w.feed(c) for c in chunks)
    parts.append(w.finish())
    return b"".join(parts)


def decode(record: bytes, size: int, verify: bool) -> bytes:
    found = read_record(record, SEP, size, eof=True)
    assert isinstance(found, Record)
    body = bytes(memoryview(record)[found.body_offset : found.body_offset + size])
    if verify:
        assert check_body(found.metadata, body) is None
    return body


def sdbox_decode(file: bytes, size: int) -> bytes:
    found = read_sdbox_tail(file[-SDBOX_TAIL_READ:], len(file))
    assert isinstance(found, Record) and found.body_size == size
    return bytes(memoryview(file)[found.body_offset : found.body_offset + size])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds per measurement")
    args = parser.parse_args()
    rng = random.Random(1)
    for size in SIZES:
        body = rng.randbytes(size)
        chunks = [body[i : i + CHUNK] for i in range(0, size, CHUNK)]
        record = encode_record(SEP, body, guid=GUID, received=1_700_000_000)
        file = encode_file_header(SEP, 1_700_000_000) + record
        assert decode(record, size, verify=True) == body
        assert sdbox_decode(file, size) == body

        base = {
            "join": rate(partial(b"".join, chunks), size, args.min_time),
            "bytearray_copy": rate(partial(copy_via_bytearray, body), size, args.min_time),
        }
        for name, mbs in base.items():
            line = {"bench": "dbox_codec", "kind": "baseline", "op": name}
            print(json.dumps({**line, "body_bytes": size, "mb_per_s": round(mbs, 1)}))

        cases: list[tuple[str, str, Callable[[], object]]] = [
            ("encode", "blake2b", partial(encode, chunks, digest=True)),
            ("encode", "no_digest", partial(encode, chunks, digest=False)),
            ("decode", "locate+copy", partial(decode, record, size, verify=False)),
            ("decode", "locate+copy+blake2b", partial(decode, record, size, verify=True)),
            ("decode", "sdbox_tail+copy", partial(sdbox_decode, file, size)),
            ("hash", "blake2b_only", partial(blake2b_only, body)),
        ]
        for op, variant, fn in cases:
            mbs = rate(fn, size, args.min_time)
            print(
                json.dumps(
                    {
                        "bench": "dbox_codec",
                        "op": op,
                        "variant": variant,
                        "body_bytes": size,
                        "mb_per_s": round(mbs, 1),
                        "baseline": "join",
                        "baseline_mb_per_s": round(base["join"], 1),
                        "ratio": round(mbs / base["join"], 3),
                        "ratio_vs_bytearray_copy": round(mbs / base["bytearray_copy"], 3),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
