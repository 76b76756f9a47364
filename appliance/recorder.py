"""The flight recorder: stats samples and events of the last hours in a bounded on-disk store.

Records are JSON lines in segment files ``flight-NNNNNNNN.jsonl`` under one directory; a new
segment starts when the current one passes ``segment_bytes`` and the oldest segments are
deleted while the store is over ``max_bytes``. A crash loses at most the line being written.
A full disk never leaves a torn line: records wait in memory (up to one segment) until space
is freed, and the oldest are dropped (counted in ``lost``) beyond that.
"""

from __future__ import annotations

import errno
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Iterator

__all__ = ["FlightRecorder", "read_records"]

_SEGMENT = re.compile(r"^flight-(\d{8})\.jsonl$")


def _segments(folder: Path) -> list[Path]:
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(folder / n for n in names if _SEGMENT.match(n))


class FlightRecorder:
    """Append records (``record(topic, body)``); bounded by ``max_bytes`` over all segments."""

    def __init__(self, folder: Path, max_bytes: int = 256 << 20, segment_bytes: int = 8 << 20) -> None:
        if segment_bytes <= 0 or max_bytes < segment_bytes:
            raise ValueError(f"flight recorder: max_bytes ({max_bytes}) must be >= segment_bytes ({segment_bytes}) > 0")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        segs = _segments(self.folder)
        self._index = int(_SEGMENT.match(segs[-1].name).group(1)) if segs else 0
        self._fd: int | None = None
        self._size = 0
        self._lock = threading.Lock()  # the supervisor records from its loop and the control thread
        self._unsent: list[bytes] = []  # lines a full disk kept out, oldest first
        self._unsent_bytes = 0
        #: records dropped while the disk was full (beyond one segment's worth kept in memory)
        self.lost = 0

    def _open(self) -> None:
        path = self.folder / f"flight-{self._index:08d}.jsonl"
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = os.fstat(self._fd).st_size
        if self._size:
            with open(path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line torn by a crash: end it so the next one stands alone
                    self._size += os.write(self._fd, b"\n")

    def record(self, topic: str, body: dict) -> None:
        line = (json.dumps({"topic": topic, "t": body.get("t", time.time()), "body": body}, default=str) + "\n").encode()
        with self._lock:
            self._append(line)

    def _append(self, line: bytes) -> None:
        if self._fd is None:
            try:
                self._open()
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                self._fd = None
                self._unsent.append(line)
                self._unsent_bytes += len(line)
                return
        if self._size and self._size + len(line) > self.segment_bytes:
            os.close(self._fd)
            self._index += 1
            self._open()
            self._trim()
        # Whole lines or nothing: a full disk (ENOSPC, EDQUOT) cuts a short write back and
        # keeps the line (and later ones, up to one segment) to append once space is freed.
        self._unsent.append(line)
        self._unsent_bytes += len(line)
        while self._unsent_bytes > self.segment_bytes and len(self._unsent) > 1:
            self._unsent_bytes -= len(self._unsent.pop(0))
            self.lost += 1
        while self._unsent:
            data = self._unsent[0]
            try:
                n = os.write(self._fd, data)
            except OSError as exc:
                if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                n = -1
            if n != len(data):
                if n > 0:
                    os.ftruncate(self._fd, self._size)
                return
            self._unsent.pop(0)
            self._unsent_bytes -= n
            self._size += n

    def _trim(self) -> None:
        segs = _segments(self.folder)
        total = sum(p.stat().st_size for p in segs)
        for p in segs[:-1]:
            if total <= self.max_bytes:
                break
            total -= p.stat().st_size
            p.unlink()

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> "FlightRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_records(folder: Path, since: float | None = None, topics: tuple[str, ...] | None = None) -> Iterator[dict]:
    """Records in time order (oldest segment first), optionally since a time and by topic."""
    for path in _segments(Path(folder)):
        with open(path, "rb") as f:
            for raw in f:
                try:
                    rec = json.loads(raw)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
                if since is not None and rec["t"] < since:
                    continue
                if topics is not None and rec["topic"] not in topics:
                    continue
                yield rec
