"""Per-stage status blocks in shared memory: live counters, seqlock-read, and an event ring.

One named segment per run holds a 4 KiB header and one fixed-size record per stage process
(:data:`stage_status_dtype`). The stage writes its own record on every frame; readers (the
supervisor, ``appliance rings``, a test) copy it without ever blocking the writer:

* **Counters and state** are written under a per-record *seqlock*: the writer makes
  ``seq`` odd, writes, and makes it even again; a reader copies the record between two reads
  of ``seq`` and retries when they differ or are odd. The latency histograms are the
  exception: a stage adds to them in place (one increment per frame, between two
  publishes), so a read may show a histogram one frame ahead of ``frames_in``. Every
  counter only grows within one incarnation of the stage.
* **Events** (alerts, and anything a stage tells the supervisor) are short byte strings in a
  ring of :data:`EVENT_SLOTS` slots per record: the stage writes slot ``n % EVENT_SLOTS``
  and then increments ``events_written``; a reader keeps its own cursor. A reader that falls
  more than :data:`EVENT_SLOTS` events behind is told how many it lost; the writer never waits.
* **Parameters** go the other way: the owner writes a small JSON document into the header
  (under its own seqlock) and the stages read it when ``params_seq`` changes (live
  parameters such as the camera's rate).

A restarted stage starts a new *incarnation* of its record (``incarnation`` + 1, counters
from zero) and keeps the event count, so a reader's event cursor stays valid.

The memory-ordering argument is the ring's (:mod:`rt._ordering`): x86-64 and AArch64 with
the stores of one process seen in order by the others for these aligned 8-byte fields.

Roles: the owner (:meth:`StatusBlock.create`, unlinks at the end), one
:class:`StatusWriter` per stage process (:meth:`StatusBlock.writer`), any number of readers
(:meth:`StatusBlock.read`, :meth:`StatusBlock.events`). Nothing here imports from
``appliance``.
"""

from __future__ import annotations

import json
import os
import struct
import time
from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from rt import _shm
from rt._errors import RingError, RingFormatError, RingNotFound, WouldBlock
from rt._ordering import check_platform
from rt._proc import current_identity, process_alive

__all__ = [
    "EVENT_BYTES",
    "EVENT_SLOTS",
    "StageState",
    "StageStatus",
    "StatusBlock",
    "StatusBlockStatistics",
    "StatusWriter",
    "clean_dead_status_blocks",
    "list_status_blocks",
    "stage_status_dtype",
]

MAGIC = b"APSTAT01"
VERSION = 1
HEADER_BYTES = 4096
PARAMS_BYTES = 3072  #: the owner's parameter document (JSON), at most
EXTRA_BYTES = 2048  #: a stage's own figures (JSON), at most
EVENT_SLOTS = 32  #: events a reader may fall behind before it loses some
EVENT_BYTES = 1024  #: one event (JSON), at most; a longer one is cut (and marked so)
_READ_TRIES = 10000  #: seqlock retries before a read gives up (the writer died mid-write)

# The header: magic, version, n_records, hist_bins, record_size, owner pid and start
# ticks, then the parameters' seqlock, length and bytes.
_HEADER = np.dtype([
    ("magic", "S8"), ("version", "<u8"), ("n_records", "<u8"), ("hist_bins", "<u8"), ("record_size", "<u8"),
    ("owner_pid", "<i8"), ("owner_start", "<u8"), ("params_seq", "<u8"), ("params_len", "<u8"),
    ("params", f"S{PARAMS_BYTES}"),
])
assert _HEADER.itemsize <= HEADER_BYTES


class StageState(IntEnum):
    """What a stage process is doing, as its record says (0: never started)."""

    EMPTY = 0
    STARTING = 1
    PRERENDERING = 2  #: a source rendering its frames before acquisition
    RUNNING = 3  #: handling frames (a source: acquiring)
    FINISHED = 4  #: reached end of stream and drained
    STOPPED = 5  #: stopped before the end of stream (asked to, or the owner died)
    DISK_FULL = 6  #: waiting for space (a write failed with ENOSPC)


#: the scalar part of a record, in order: every field 8 bytes, so there is no padding and
#: one ``struct.pack_into`` writes them all (the writer's per-frame cost)
_SCALARS = (
    ("seq", "<u8"), ("pid", "<i8"), ("incarnation", "<u8"), ("state", "<u8"), ("updated_ns", "<u8"),
    ("started_ns", "<u8"), ("frames_in", "<u8"), ("frames_out", "<u8"), ("bytes_in", "<u8"), ("bytes_out", "<u8"),
    ("duplicates", "<u8"), ("checksum_failures", "<u8"), ("checkpoints", "<u8"), ("checkpoint_bytes", "<u8"),
    ("within_budget", "<u8"), ("busy_s", "<f8"), ("budget_ms", "<f8"), ("stage_latency_sum_ns", "<u8"),
    ("e2e_latency_sum_ns", "<u8"), ("extra_len", "<u8"),
    ("events_written", "<u8"),
)
#: the fields ``StatusWriter.publish`` writes (after seq, pid, incarnation: set at reset)
_PUBLISHED = tuple(n for n, _ in _SCALARS[3:-2])
_CODE = {"<f8": "d", "<i8": "q", "<u8": "Q"}
_PACK = struct.Struct("<" + "".join(_CODE[t] for _, t in _SCALARS[3:-2]))
_PUBLISH_OFFSET = 3 * 8
_ALL = struct.Struct("<" + "".join(_CODE[t] for _, t in _SCALARS))  #: every scalar, for readers
_U64 = struct.Struct("<Q")
_STATE = [n for n, _ in _SCALARS].index("state")
_EXTRA_LEN = [n for n, _ in _SCALARS].index("extra_len")


def stage_status_dtype(hist_bins: int) -> np.dtype:
    """The record of one stage process: the scalars above, two latency histograms of
    ``hist_bins`` counts (per-stage and end to end), the stage's own figures as JSON, and
    its event ring. 64-byte aligned, so records do not share a cache line."""
    fields = [*_SCALARS, ("stage_latency_hist", "<i8", (hist_bins,)), ("e2e_latency_hist", "<i8", (hist_bins,)),
              ("extra", f"S{EXTRA_BYTES}"), ("events", f"S{EVENT_BYTES}", (EVENT_SLOTS,))]
    dt = np.dtype(fields)
    size = -(-dt.itemsize // 64) * 64
    return np.dtype({"names": dt.names, "formats": [dt.fields[n][0] for n in dt.names],
                     "offsets": [dt.fields[n][1] for n in dt.names], "itemsize": size})


@dataclass(frozen=True)
class StageStatus:
    """One consistent read of a stage's record (:meth:`StatusBlock.read`). ``consistent``
    is False when the writer died in the middle of a write (the values may be torn)."""

    index: int
    pid: int
    incarnation: int
    state: StageState
    updated_ns: int  #: CLOCK_MONOTONIC of the last publish (0: never)
    started_ns: int  #: CLOCK_MONOTONIC when this incarnation started
    frames_in: int
    frames_out: int
    bytes_in: int
    bytes_out: int
    duplicates: int
    checksum_failures: int
    checkpoints: int
    checkpoint_bytes: int
    within_budget: int
    busy_s: float
    budget_ms: float
    stage_latency_sum_ns: int
    e2e_latency_sum_ns: int
    events_written: int
    stage_latency_hist: np.ndarray
    e2e_latency_hist: np.ndarray
    extra: dict
    consistent: bool = True


@dataclass(frozen=True)
class StatusBlockStatistics:
    """The block as a whole: its records, their states and the owner."""

    name: str
    n_records: int
    hist_bins: int
    record_bytes: int
    owner_pid: int
    owner_alive: bool
    states: tuple[StageState, ...]
    params_seq: int


class StatusBlock:
    """The owner's (and a reader's) handle on a run's status block. A context manager;
    ``close()`` unmaps, ``unlink()`` (the owner) removes the segment."""

    def __init__(self, name: str, segment: _shm.Segment, owner: bool) -> None:
        self.name = name
        self._seg = segment
        self._owner = owner
        buf = segment.mmap
        self._header = np.ndarray((), _HEADER, buffer=buf, offset=0)
        if bytes(self._header["magic"]) != MAGIC:
            segment.close()
            raise RingFormatError(f"{name!r} is not a status block (bad magic)")
        if int(self._header["version"]) != VERSION:
            v = int(self._header["version"])
            segment.close()
            raise RingFormatError(f"status block {name!r} has version {v}; this release reads version {VERSION}")
        self.n_records = int(self._header["n_records"])
        self.hist_bins = int(self._header["hist_bins"])
        self.dtype = stage_status_dtype(self.hist_bins)
        if int(self._header["record_size"]) != self.dtype.itemsize:
            segment.close()
            raise RingFormatError(f"status block {name!r}: record size {int(self._header['record_size'])}, expected {self.dtype.itemsize}")
        self._records = np.ndarray((self.n_records,), self.dtype, buffer=buf, offset=HEADER_BYTES)
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, n_records: int, *, hist_bins: int = 512, mode: int = 0o600) -> "StatusBlock":
        """Create the block (exclusive) with ``n_records`` empty records; the caller owns it."""
        check_platform()
        if n_records < 1 or hist_bins < 1:
            raise ValueError(f"n_records={n_records}, hist_bins={hist_bins}: both must be at least 1")
        dt = stage_status_dtype(hist_bins)
        nbytes = HEADER_BYTES + n_records * dt.itemsize
        backing = _shm.HugepageChoice(4096, None, "status blocks are small")
        seg = _shm.Segment.create(name, nbytes, backing, mode)
        header = np.ndarray((), _HEADER, buffer=seg.mmap, offset=0)
        pid, start = current_identity()
        header["version"], header["n_records"], header["hist_bins"], header["record_size"] = VERSION, n_records, hist_bins, dt.itemsize
        header["owner_pid"], header["owner_start"] = pid, start
        header["magic"] = MAGIC  # last: a half-made block is not recognised
        del header
        return cls(name, seg, owner=True)

    @classmethod
    def attach(cls, name: str) -> "StatusBlock":
        """Map an existing block (a stage, or a reader)."""
        check_platform()
        try:
            seg = _shm.Segment.attach(name)
        except RingNotFound:
            raise RingNotFound(f"no status block named {name!r} in /dev/shm") from None
        return cls(name, seg, owner=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        del self._records, self._header
        self._seg.close()

    def unlink(self) -> bool:
        """Remove the segment (mappings still open keep working until they close)."""
        return _shm.unlink_segment(self.name)

    def __enter__(self) -> "StatusBlock":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- stages ----------------------------------------------------------------------------
    def writer(self, index: int) -> "StatusWriter":
        """The writer of record ``index``: starts a new incarnation of it (this process)."""
        self._check(index)
        return StatusWriter(self, index)

    # -- readers ---------------------------------------------------------------------------
    def read(self, index: int) -> StageStatus:
        """A consistent copy of record ``index`` (seqlock). Never blocks the writer: the
        scalars and the stage's own figures (a few hundred bytes) are copied between two reads
        of ``seq`` and retried when it changed; gives up after a bounded number of retries
        (a writer killed mid-write leaves ``seq`` odd) and then returns the last copy with
        ``consistent=False``. The histograms are copied after (they count in place)."""
        self._check(index)
        mm, off = self._seg.mmap, HEADER_BYTES + index * self.dtype.itemsize
        extra_at = off + self.dtype.fields["extra"][1]
        values, extra, consistent = None, b"", False
        for _ in range(_READ_TRIES):
            s1 = _U64.unpack_from(mm, off)[0]
            if s1 & 1:
                time.sleep(0)
                continue
            values = _ALL.unpack_from(mm, off)
            n = min(values[_EXTRA_LEN], EXTRA_BYTES)
            extra = mm[extra_at : extra_at + n]
            if _U64.unpack_from(mm, off)[0] == s1:
                consistent = True
                break
        if values is None:  # odd all along: the writer died mid-write
            values = _ALL.unpack_from(mm, off)
            extra = mm[extra_at : extra_at + min(values[_EXTRA_LEN], EXTRA_BYTES)]
        rec = self._records[index]
        return _status(index, values, extra, np.array(rec["stage_latency_hist"]), np.array(rec["e2e_latency_hist"]), consistent)

    def read_all(self) -> list[StageStatus]:
        return [self.read(i) for i in range(self.n_records)]

    def events(self, index: int, cursor: int) -> tuple[list[bytes], int, int]:
        """Events of record ``index`` after ``cursor`` (the count a reader has seen):
        ``(events, new_cursor, lost)``. ``lost`` counts events overwritten before they were
        read (the reader fell more than EVENT_SLOTS behind)."""
        self._check(index)
        rec = self._records[index]
        written = int(rec["events_written"])
        if written < cursor:  # a new block under the same name: start again
            cursor = 0
        first = max(cursor, written - EVENT_SLOTS)
        out = [bytes(rec["events"][k % EVENT_SLOTS]) for k in range(first, written)]
        # A slot rewritten while it was copied: drop what may be torn and count it lost.
        now = int(rec["events_written"])
        overwritten = min(len(out), max(0, now - EVENT_SLOTS - first))
        return out[overwritten:], written, (first - cursor) + overwritten

    def params(self) -> tuple[int, dict]:
        """The owner's parameter document and its sequence number (0: never set)."""
        for _ in range(_READ_TRIES):
            s1 = int(self._header["params_seq"])
            if s1 & 1:
                time.sleep(0)
                continue
            n = int(self._header["params_len"])
            data = bytes(self._header["params"])[:n]
            if int(self._header["params_seq"]) == s1:
                return s1, (json.loads(data) if data else {})
        raise WouldBlock(f"status block {self.name!r}: the parameters are being written; try again")

    def params_seq(self) -> int:
        """Cheap check for a change of :meth:`params` (one 8-byte read)."""
        return int(self._header["params_seq"])

    def set_params(self, params: dict) -> int:
        """Replace the parameter document (the owner; one writer). Returns its new sequence."""
        data = json.dumps(params, separators=(",", ":")).encode()
        if len(data) > PARAMS_BYTES:
            raise ValueError(f"parameters are {len(data)} bytes as JSON; a status block holds at most {PARAMS_BYTES}")
        h = self._header
        h["params_seq"] = int(h["params_seq"]) + 1
        h["params"] = data
        h["params_len"] = len(data)
        h["params_seq"] = int(h["params_seq"]) + 1
        return int(h["params_seq"])

    def statistics(self) -> StatusBlockStatistics:
        h = self._header
        pid, start = int(h["owner_pid"]), int(h["owner_start"])
        return StatusBlockStatistics(self.name, self.n_records, self.hist_bins, self.dtype.itemsize, pid,
                                     process_alive(pid, start), tuple(StageState(int(s)) for s in self._records["state"]),
                                     int(h["params_seq"]))

    def _check(self, index: int) -> None:
        if self._closed:
            raise RingError(f"status block {self.name!r} is closed")
        if not 0 <= index < self.n_records:
            raise IndexError(f"record {index}: the block {self.name!r} has {self.n_records} (0..{self.n_records - 1})")


def _status(index: int, values: tuple, extra: bytes, stage_hist: np.ndarray, e2e_hist: np.ndarray, consistent: bool) -> StageStatus:
    try:
        figures = json.loads(extra) if extra else {}
    except ValueError:  # torn: only when not consistent
        figures = {}
    s = {name: v for (name, _), v in zip(_SCALARS, values) if name not in ("seq", "extra_len", "state")}
    state = values[_STATE]
    return StageStatus(index=index, state=StageState(state) if state in StageState._value2member_map_ else StageState.EMPTY,
                       stage_latency_hist=stage_hist, e2e_latency_hist=e2e_hist, extra=figures, consistent=consistent, **s)


class StatusWriter:
    """One stage process's side of its record: ``publish`` the counters (every frame),
    ``set_extra`` its own figures, ``post`` events. The histograms are arrays in the block
    (``stage_latency_hist``, ``e2e_latency_hist``) that the stage adds to in place."""

    def __init__(self, block: StatusBlock, index: int) -> None:
        self.block = block
        self.index = index
        rec = block._records[index : index + 1]
        self._rec = rec
        self._seq = rec["seq"]
        self._events_written = rec["events_written"]
        self._events = rec["events"][0]
        self._buf = block._seg.mmap
        self._offset = HEADER_BYTES + index * block.dtype.itemsize
        self.stage_latency_hist = rec["stage_latency_hist"][0]
        self.e2e_latency_hist = rec["e2e_latency_hist"][0]
        self._begin()
        r = rec[0]
        r["pid"] = os.getpid()
        r["incarnation"] = int(r["incarnation"]) + 1
        now = time.monotonic_ns()
        values = dict.fromkeys(_PUBLISHED, 0)
        values.update(state=int(StageState.STARTING), updated_ns=now, started_ns=now, busy_s=0.0, budget_ms=0.0)
        _PACK.pack_into(self._buf, self._offset + _PUBLISH_OFFSET, *(values[n] for n in _PUBLISHED))
        self.stage_latency_hist[:] = 0
        self.e2e_latency_hist[:] = 0
        r["extra_len"] = 0
        self._end()
        self.started_ns = now

    def _begin(self) -> None:
        self._seq[0] = int(self._seq[0]) | 1  # odd (also after a predecessor died mid-write)

    def _end(self) -> None:
        self._seq[0] = int(self._seq[0]) + 1

    def publish(self, state: StageState, frames_in: int, frames_out: int, bytes_in: int, bytes_out: int, duplicates: int,
                checksum_failures: int, checkpoints: int, checkpoint_bytes: int, within_budget: int, busy_s: float,
                budget_ms: float, stage_latency_sum_ns: int, e2e_latency_sum_ns: int, extra: bytes | None = None) -> None:
        """Write every counter at once (one seqlock section; about a microsecond). ``extra``
        (the stage's own figures as JSON) only when it changed."""
        self._begin()
        _PACK.pack_into(self._buf, self._offset + _PUBLISH_OFFSET, int(state), time.monotonic_ns(), self.started_ns,
                        frames_in, frames_out, bytes_in, bytes_out, duplicates, checksum_failures, checkpoints,
                        checkpoint_bytes, within_budget, float(busy_s), float(budget_ms), stage_latency_sum_ns,
                        e2e_latency_sum_ns)
        if extra is not None:
            if len(extra) > EXTRA_BYTES:
                extra = json.dumps({"extra_truncated": len(extra)}).encode()
            self._rec["extra"] = extra
            self._rec["extra_len"] = len(extra)
        self._end()

    def post(self, event: bytes) -> None:
        """Append one event to the record's ring (never waits; a reader that fell more than
        EVENT_SLOTS behind loses the oldest and is told so). A longer event is cut."""
        if len(event) > EVENT_BYTES:
            event = event[: EVENT_BYTES]
        n = int(self._events_written[0])
        self._events[n % EVENT_SLOTS] = event
        self._events_written[0] = n + 1  # after the slot: a reader never sees a half-written one

    def params(self) -> tuple[int, dict]:
        return self.block.params()

    def params_seq(self) -> int:
        return self.block.params_seq()


def list_status_blocks() -> list[str]:
    """The names of every status block in /dev/shm."""
    return [name for name, _ in _shm.find_segments(MAGIC, [_shm.SHM_DIR])]


def clean_dead_status_blocks(force: tuple[str, ...] = (), dry_run: bool = False) -> list[str]:
    """Unlink status blocks whose owner died (pid and start time checked), or those named in
    ``force``. Returns the names removed (or that would be, with ``dry_run``)."""
    doomed = []
    for name in list_status_blocks():
        if name in force:
            doomed.append(name)
            continue
        try:
            with StatusBlock.attach(name) as block:
                alive = block.statistics().owner_alive
        except (RingError, OSError, ValueError):
            continue
        if not alive:
            doomed.append(name)
    if not dry_run:
        for name in doomed:
            _shm.unlink_segment(name)
    return doomed
