"""Child-process bodies for the multiprocess ring tests (importable under ``spawn``)."""

from __future__ import annotations

import os
import time

import numpy as np

import rt


def payload_for(i: int) -> np.ndarray:
    """Frame i's payload: a deterministic, variable-length byte pattern carrying i."""
    rng = np.random.default_rng(i)
    data = rng.integers(0, 256, size=64 + (i * 37) % 4000, dtype=np.uint8)
    data[:8] = np.frombuffer(np.uint64(i).tobytes(), np.uint8)
    return data


def frame_id(slot: rt.Slot) -> int:
    return int(slot.payload[:8].view(np.uint64)[0])


def produce(name: str, n: int, start: int = 0, hang_after: int | None = None, close: bool = True) -> None:
    with rt.Producer(name) as p:
        for i in range(start, n):
            if hang_after is not None and i == hang_after:
                time.sleep(3600)  # killed by the test
            slot = p.reserve(timeout=30)
            slot.write(payload_for(i), with_checksum=True)
            p.commit()
        if not close:
            p.close(end_of_stream=False)


def consume(name: str, log_path: str, hang_at: int | None = None) -> None:
    """Verify every frame and append '<id>\\n' to log_path before releasing it."""
    with rt.Consumer(name) as c, open(log_path, "a", buffering=1) as log:
        while True:
            try:
                slot = c.acquire(timeout=30)
            except rt.EndOfStream:
                return
            fid = frame_id(slot)
            if not slot.verify() or not np.array_equal(slot.payload, payload_for(fid)):
                log.write(f"BAD {fid}\n")
            log.write(f"{fid}\n")
            if hang_at is not None and fid == hang_at:
                log.flush()
                os.fsync(log.fileno())
                time.sleep(3600)  # holds the slot unreleased until SIGKILL
            c.release()


def produce_lossy(name: str, n: int, queue) -> None:
    dropped = []
    with rt.Producer(name) as p:
        for i in range(n):
            slot = p.reserve()
            slot.write(np.array([i], np.uint64))
            if slot.dropped:
                dropped.append(i)
            p.commit()
    queue.put(dropped)


#: where a chain link leaves its mark in a slot: past the longest payload, inside the slot
MARK_AT = 4088


def chain_consume(name: str, link: int, log_path: str, hang_at: int | None = None) -> None:
    """Consumer ``link`` of a chain: verify the frame and every upstream link's in-place mark,
    add its own mark, log '<id>\\n' and release. 'BAD <id>' when anything is off."""
    with rt.Consumer(name, link=link) as c, open(log_path, "a", buffering=1) as log:
        while True:
            try:
                slot = c.acquire(timeout=30)
            except rt.EndOfStream:
                return
            fid = frame_id(slot)
            ok = slot.verify() and np.array_equal(slot.payload, payload_for(fid))
            marks = slot.data[MARK_AT:MARK_AT + 8]
            ok = ok and all(int(marks[j]) == (fid + j) % 251 for j in range(link))
            log.write(f"{fid}\n" if ok else f"BAD {fid}\n")
            marks[link] = (fid + link) % 251  # in place: the next link must see it
            if hang_at is not None and fid == hang_at:
                log.flush()
                os.fsync(log.fileno())
                time.sleep(3600)  # holds the slot unreleased until SIGKILL
            c.release()
