"""The shared-memory single-producer single-consumer ring.

One named segment holds a 4 KiB control block followed by ``n_slots`` fixed-size slots;
each slot is a 256-byte frame header (:mod:`rt.frame`) followed by the payload. The write
and read counters are monotonically increasing 64-bit integers on separate 128-byte lines
(two cache lines, against adjacent-line prefetch), each written by one side only. The
memory-ordering argument is in :mod:`rt._ordering`.

Roles:

* :class:`Ring`: the owner's handle (the supervisor): ``create``, ``open``, ``unlink``,
  ``statistics``. The ring outlives the processes that use it.
* :class:`Producer`: ``reserve`` a slot, fill it in place, ``commit``.
* :class:`Consumer`: ``acquire`` a slot view, use it, ``release``; ``acquire_many`` for batches.
  A ring created with ``links=K`` carries an ordered chain of K consumers, as the LMAX
  Disruptor's sequence barriers do: link k (``Consumer(name, link=k)``) reads only slots that
  link k-1 released (link 0 reads what the producer committed), and the producer reuses a
  slot only after the last link released it. So a frame is written once and read in place by
  every link; a link that inspects or corrects a frame in place needs no ring of its own.
* :class:`Observer`: a lossy reader of the latest committed frame that never writes to the
  ring, so it cannot slow the producer (a preview or a TUI tap).

Crash semantics: a restarted consumer resumes at the shared read counter, so a frame it had
acquired but not released is delivered again (downstream must be idempotent by frame
identity). In a chain the same holds per link: each link's cursor lives in the control
block, a restarted link resumes at it, and links downstream never see a slot that the link
before them has not released. A restarted producer resumes at the write counter (a reserved, uncommitted slot
is simply rewritten). A peer that died is reported as :class:`ProducerGone` or
:class:`ConsumerGone` while waiting.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import posix_ipc

from rt import _shm
from rt._errors import (
    ConsumerGone,
    EndOfStream,
    ProducerGone,
    RingBusy,
    RingClosed,
    RingError,
    RingFormatError,
    RingTimeout,
    WouldBlock,
)
from rt._ordering import check_platform
from rt._proc import current_identity, process_alive
from rt.frame import (
    FRAME_HEADER_DTYPE,
    FRAME_HEADER_SIZE,
    FRAME_MAGIC,
    FRAME_VERSION,
    FrameFlags,
    checksum,
    code_from_dtype,
    dtype_from_code,
)

__all__ = [
    "LinkStatistics",
    "MAX_LINKS",
    "Ring",
    "Producer",
    "Consumer",
    "Observer",
    "Slot",
    "SlotBatch",
    "RingGeometry",
    "RingStatistics",
    "Policy",
    "WaitStrategy",
    "POLICIES",
    "WAIT_STRATEGIES",
]

Policy = Literal["block", "drop_newest"]
WaitStrategy = Literal["spin", "yield", "sleep", "kernel"]
POLICIES: tuple[str, ...] = ("block", "drop_newest")
WAIT_STRATEGIES: tuple[str, ...] = ("spin", "yield", "sleep", "kernel")

RING_MAGIC = int.from_bytes(b"APRING01", "little")
RING_VERSION = 1
CONTROL_BYTES = 4096

# Control block, as indices of 64-bit words. Each group sits on its own 128-byte line and
# is written by one side only (S = set once at creation).
_MAGIC, _VERSION, _SLOT_STRIDE, _N_SLOTS, _CAPACITY, _POLICY, _WAIT = 0, 1, 2, 3, 4, 5, 6
_DATA_OFFSET, _TOTAL, _CREATED_NS, _OWNER_PID, _OWNER_START, _PAGE, _INIT_DONE = 7, 8, 9, 10, 11, 12, 13
_N_LINKS = 14  # consumers in the chain; 0 (a ring from before chains) reads as 1
_WRITE = 16  # producer: committed frames (the publishing store)
_READ = 32  # consumer: released frames
# producer line
_RESERVED, _DROPS, _FULL_WAITS, _PEAK, _P_PID, _P_START, _P_HEARTBEAT, _EOS, _P_WAITING = range(48, 57)
# consumer line (link 0 of a chain)
_EMPTY_WAITS, _C_PID, _C_START, _C_HEARTBEAT, _C_WAITING = range(64, 69)
# Links 1.. of a chain: two 128-byte lines each from word 80, the cursor alone on the first
# (the word its downstream link and the producer poll), the link's own figures on the second.
_LINK_BASE, _LINK_WORDS = 80, 32
_L_EMPTY_WAITS, _L_PID, _L_START, _L_HEARTBEAT, _L_WAITING, _L_PEAK = range(16, 22)
#: the longest chain a ring carries (the control block has room for this many links)
MAX_LINKS = 8


def _link_words(link: int) -> tuple[int, int, int, int, int, int, int]:
    """(cursor, empty_waits, pid, start, heartbeat, waiting, peak) word indices of ``link``."""
    if link == 0:
        return _READ, _EMPTY_WAITS, _C_PID, _C_START, _C_HEARTBEAT, _C_WAITING, _PEAK
    b = _LINK_BASE + (link - 1) * _LINK_WORDS
    return (b, b + _L_EMPTY_WAITS, b + _L_PID, b + _L_START, b + _L_HEARTBEAT, b + _L_WAITING, b + _L_PEAK)

_SPIN_CHECKS = 200  # re-checks before the first yield
_YIELD_CHECKS = 50  # yields before sleeping / kernel wait
_SLEEP_MIN, _SLEEP_MAX = 20e-6, 1e-3
_KERNEL_SLICE = 0.005  # bound on a missed doorbell (see rt/_ordering.py)


def _align(n: int, to: int) -> int:
    return -(-n // to) * to


@dataclass(frozen=True)
class RingGeometry:
    """Fixed layout of a ring, checked on every open."""

    n_slots: int
    payload_capacity: int
    slot_stride: int
    data_offset: int
    total_bytes: int
    page_size: int


@dataclass(frozen=True)
class LinkStatistics:
    """One consumer of a chain: its cursor, its occupancy (slots its upstream released that
    it has not), and its process."""

    link: int
    read: int
    occupancy: int
    peak_occupancy: int
    empty_waits: int
    pid: int
    alive: bool
    heartbeat_age_s: float | None


@dataclass(frozen=True)
class RingStatistics:
    """A snapshot of the ring's control block (read without touching the data path).

    ``read`` and ``occupancy`` are the last link's (what the producer waits on); the
    ``consumer_*`` fields are link 0's, and ``links`` has every link of a chain."""

    name: str
    policy: str
    wait: str
    n_slots: int
    payload_capacity: int
    written: int
    read: int
    occupancy: int
    peak_occupancy: int
    drops: int
    full_waits: int
    empty_waits: int
    producer_pid: int
    consumer_pid: int
    producer_alive: bool
    consumer_alive: bool
    producer_heartbeat_age_s: float | None
    consumer_heartbeat_age_s: float | None
    end_of_stream: bool
    owner_pid: int
    owner_alive: bool
    page_size: int
    links: tuple[LinkStatistics, ...] = ()

    @property
    def n_links(self) -> int:
        return max(1, len(self.links))

    @property
    def occupancy_fraction(self) -> float:
        return self.occupancy / self.n_slots


class Slot:
    """One slot: ``header`` is a 0-d structured view of the frame header, ``data`` a uint8
    view of the whole payload capacity. Both are views into shared memory: valid from
    ``reserve``/``acquire`` until ``commit``/``release``.
    """

    __slots__ = ("index", "header", "data", "dropped")

    def __init__(self, index: int, header: np.ndarray, data: np.ndarray, dropped: bool = False) -> None:
        self.index = index
        self.header = header
        self.data = data
        #: True for the scratch slot a ``drop_newest`` producer gets when the ring is full:
        #: filling it is harmless and committing it only counts the drop.
        self.dropped = dropped

    @property
    def nbytes(self) -> int:
        return int(self.header["payload_bytes"])

    @property
    def payload(self) -> np.ndarray:
        """The payload bytes actually written (``header.payload_bytes`` of ``data``)."""
        return self.data[: int(self.header["payload_bytes"])]

    def array(self) -> np.ndarray:
        """The payload as the array the header describes (dtype, shape), as a view."""
        h = self.header
        ndim = int(h["ndim"])
        shape = tuple(int(s) for s in h["shape"][:ndim])
        dt = dtype_from_code(int(h["dtype_code"]))
        nbytes = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
        if nbytes > self.data.size:
            raise RingFormatError(f"frame header claims {nbytes} payload bytes, slot holds {self.data.size}: corrupt header")
        return self.data[:nbytes].view(dt).reshape(shape)

    def write(self, array: np.ndarray, *, with_checksum: bool = False) -> np.ndarray:
        """Copy ``array`` into the slot and describe it in the header (dtype, shape, bytes,
        optionally the CRC32C). Returns the view of the copy in shared memory."""
        array = np.asarray(array)
        if array.ndim > 4:
            raise ValueError(f"frame payload has {array.ndim} dimensions; at most 4 are supported")
        nbytes = array.nbytes
        if nbytes > self.data.size:
            raise ValueError(f"payload of {nbytes} bytes does not fit the slot ({self.data.size} bytes): create the ring with a larger payload_bytes")
        h = self.header
        view = self.data[:nbytes].view(array.dtype).reshape(array.shape)
        np.copyto(view, array, casting="no")
        h["dtype_code"] = code_from_dtype(array.dtype)
        h["ndim"] = array.ndim
        shape = h["shape"]
        shape[:] = 0
        shape[: array.ndim] = array.shape
        h["payload_bytes"] = nbytes
        if with_checksum:
            h["checksum"] = checksum(self.data[:nbytes])
            h["flags"] = int(h["flags"]) | FrameFlags.CHECKSUMMED
        return view

    def verify(self) -> bool:
        """True when the frame carries no checksum or its CRC32C matches the payload."""
        h = self.header
        if not int(h["flags"]) & FrameFlags.CHECKSUMMED:
            return True
        return checksum(self.payload) == int(h["checksum"])


class _Mapping:
    """The mapped segment with its control words and slot views (shared by every role)."""

    def __init__(self, name: str, segment: _shm.Segment) -> None:
        self.name = name
        self.segment = segment
        mm = segment.mmap
        # Control words through a memoryview cast: each get/set is one aligned 8-byte access.
        self.ctl = memoryview(mm).cast("B")[:CONTROL_BYTES].cast("Q")
        ctl = self.ctl
        if ctl[_MAGIC] != RING_MAGIC:
            self.close()
            raise RingFormatError(
                f"{segment.path} is not an appliance ring (bad magic): wrong name, or a segment "
                f"from another program. Remove it by hand if it is stale."
            )
        if ctl[_VERSION] != RING_VERSION:
            version = ctl[_VERSION]
            self.close()
            raise RingFormatError(
                f"ring {name!r} has layout version {version}, this build reads {RING_VERSION}: a "
                f"stale ring from another release; stop its users and run `appliance clean`"
            )
        if not ctl[_INIT_DONE]:
            self.close()
            raise RingFormatError(f"ring {name!r} was never fully created (creator died mid-way): `appliance clean` removes it")
        self.geometry = RingGeometry(
            n_slots=ctl[_N_SLOTS],
            payload_capacity=ctl[_CAPACITY],
            slot_stride=ctl[_SLOT_STRIDE],
            data_offset=ctl[_DATA_OFFSET],
            total_bytes=ctl[_TOTAL],
            page_size=ctl[_PAGE],
        )
        g = self.geometry
        if len(mm) < g.total_bytes or g.data_offset + g.n_slots * g.slot_stride > g.total_bytes:
            self.close()
            raise RingFormatError(f"ring {name!r}: segment is {len(mm)} bytes, its control block says {g.total_bytes}: corrupt or truncated")
        self.policy = POLICIES[ctl[_POLICY]]
        self.wait = WAIT_STRATEGIES[ctl[_WAIT]]
        self.n_links = max(1, ctl[_N_LINKS])
        if self.n_links > MAX_LINKS:
            self.close()
            raise RingFormatError(f"ring {name!r} claims {self.n_links} links (at most {MAX_LINKS}): corrupt control block")
        #: the cursor the producer waits on: the last link's
        self.last_read = _link_words(self.n_links - 1)[0]
        self.mask = g.n_slots - 1
        self.slots = [self._slot(i) for i in range(g.n_slots)]
        mm = segment.mmap
        # Whole-ring strided views for batches, and 64-bit words for fast seq stamping.
        self.headers = np.ndarray((g.n_slots,), FRAME_HEADER_DTYPE, buffer=mm, offset=g.data_offset, strides=(g.slot_stride,))
        self.payloads = np.ndarray(
            (g.n_slots, g.payload_capacity), np.uint8, buffer=mm, offset=g.data_offset + FRAME_HEADER_SIZE, strides=(g.slot_stride, 1)
        )
        self.words = memoryview(mm).cast("Q")
        self.seq_word = g.data_offset // 8 + FRAME_HEADER_DTYPE.fields["seq"][1] // 8
        self.stride_words = g.slot_stride // 8
        self.items_sem: posix_ipc.Semaphore | None = None
        self.space_sem: posix_ipc.Semaphore | None = None
        #: per link, the doorbell its upstream rings (link 0's is ``items_sem``)
        self.link_sems: list[posix_ipc.Semaphore | None] = [None] * self.n_links
        if self.wait == "kernel":
            self.items_sem = posix_ipc.Semaphore(_sem_name(name, "items"))
            self.space_sem = posix_ipc.Semaphore(_sem_name(name, "space"))
            self.link_sems = [self.items_sem] + [
                posix_ipc.Semaphore(_sem_name(name, f"items{k}")) for k in range(1, self.n_links)
            ]

    def _slot(self, i: int) -> Slot:
        g = self.geometry
        off = g.data_offset + i * g.slot_stride
        mm = self.segment.mmap
        header = np.ndarray((), FRAME_HEADER_DTYPE, buffer=mm, offset=off)
        data = np.ndarray((g.payload_capacity,), np.uint8, buffer=mm, offset=off + FRAME_HEADER_SIZE)
        return Slot(i, header, data)

    def batch(self, pos: int, k: int) -> "SlotBatch":
        i = pos & self.mask
        return SlotBatch(pos, self.headers[i : i + k], self.payloads[i : i + k])

    def stamp_seq(self, first: int, count: int) -> None:
        """Write ``seq`` = first, first+1, ... into the headers of the next ``count`` slots."""
        if count > 8:
            i = first & self.mask
            head = min(count, self.mask + 1 - i)
            self.headers["seq"][i : i + head] = np.arange(first, first + head, dtype=np.uint64)
            if head < count:
                self.headers["seq"][: count - head] = np.arange(first + head, first + count, dtype=np.uint64)
            return
        words, mask, base, stride = self.words, self.mask, self.seq_word, self.stride_words
        for seq in range(first, first + count):
            words[base + (seq & mask) * stride] = seq

    def link_statistics(self, now: int) -> tuple[LinkStatistics, ...]:
        ctl = self.ctl
        out = []
        upstream = ctl[_WRITE]
        for k in range(self.n_links):
            cur, empty, pid, start, hb, _waiting, peak = _link_words(k)
            read = ctl[cur]
            occ = max(0, upstream - read)
            out.append(LinkStatistics(
                link=k, read=read, occupancy=occ, peak_occupancy=max(ctl[peak], occ), empty_waits=ctl[empty],
                pid=ctl[pid], alive=process_alive(ctl[pid], ctl[start]),
                heartbeat_age_s=(now - ctl[hb]) / 1e9 if ctl[hb] else None,
            ))
            upstream = read
        return tuple(out)

    def statistics(self) -> RingStatistics:
        ctl = self.ctl
        now = time.monotonic_ns()
        written, read = ctl[_WRITE], ctl[self.last_read]
        p_pid, c_pid = ctl[_P_PID], ctl[_C_PID]
        p_hb, c_hb = ctl[_P_HEARTBEAT], ctl[_C_HEARTBEAT]
        return RingStatistics(
            name=self.name,
            policy=self.policy,
            wait=self.wait,
            n_slots=self.geometry.n_slots,
            payload_capacity=self.geometry.payload_capacity,
            written=written,
            read=read,
            occupancy=max(0, written - read),
            # The consumer records the occupancy it sees at each refresh; the current one is a floor.
            peak_occupancy=max(ctl[_PEAK], written - read),
            drops=ctl[_DROPS],
            full_waits=ctl[_FULL_WAITS],
            empty_waits=ctl[_EMPTY_WAITS],
            producer_pid=p_pid,
            consumer_pid=c_pid,
            producer_alive=process_alive(p_pid, ctl[_P_START]),
            consumer_alive=process_alive(c_pid, ctl[_C_START]),
            producer_heartbeat_age_s=(now - p_hb) / 1e9 if p_hb else None,
            consumer_heartbeat_age_s=(now - c_hb) / 1e9 if c_hb else None,
            end_of_stream=bool(ctl[_EOS]),
            owner_pid=ctl[_OWNER_PID],
            owner_alive=process_alive(ctl[_OWNER_PID], ctl[_OWNER_START]),
            page_size=self.geometry.page_size,
            links=self.link_statistics(now),
        )

    def close(self) -> None:
        sems = [getattr(self, "items_sem", None), getattr(self, "space_sem", None), *getattr(self, "link_sems", [])[1:]]
        for sem in sems:
            if sem is not None:
                sem.close()
        self.items_sem = self.space_sem = None
        self.link_sems = []
        # Drop our own views first so the mmap can really be unmapped.
        self.slots = []
        self.headers = self.payloads = None
        for view in ("ctl", "words"):
            try:
                getattr(self, view).release()
            except (AttributeError, ValueError):
                pass
        self.segment.close()


def _sem_name(ring: str, which: str) -> str:
    return f"/{ring}.{which}"


def _drain(sem: posix_ipc.Semaphore) -> None:
    try:
        while True:
            sem.acquire(0)
    except posix_ipc.BusyError:
        pass


class Ring:
    """The owner's handle on a ring: create it, hand its name to the stages, unlink it.

    Use as a context manager to unlink on exit (``with Ring.create(...) as ring:``).
    """

    def __init__(self, mapping: _Mapping, owner: bool) -> None:
        self._m = mapping
        self._owner = owner
        self._closed = False

    @property
    def name(self) -> str:
        return self._m.name

    @property
    def geometry(self) -> RingGeometry:
        return self._m.geometry

    @property
    def policy(self) -> str:
        return self._m.policy

    @property
    def wait(self) -> str:
        return self._m.wait

    @classmethod
    def create(
        cls,
        name: str,
        *,
        payload_bytes: int,
        n_slots: int,
        policy: Policy = "block",
        wait: WaitStrategy = "sleep",
        hugepages: str = "none",
        mode: int = 0o600,
        links: int = 1,
    ) -> "Ring":
        """Create the ring ``name`` (exclusively) and return the owner's handle.

        ``payload_bytes`` is the largest payload a slot carries (the 256-byte header comes
        on top); ``n_slots`` is a power of two >= 2. Pages are allocated up front
        (``posix_fallocate``), so a ring that does not fit in /dev/shm or the hugepage pool
        fails here with a clear error rather than with SIGBUS mid-run. ``links`` > 1 makes
        the ring carry an ordered chain of that many consumers (see the module docstring).
        """
        check_platform()
        _validate_name(name)
        if not isinstance(n_slots, int) or n_slots < 2 or n_slots & (n_slots - 1):
            raise ValueError(f"n_slots={n_slots!r}: must be a power of two >= 2 (e.g. 8, 64, 1024)")
        if not isinstance(payload_bytes, int) or payload_bytes < 1:
            raise ValueError(f"payload_bytes={payload_bytes!r}: must be a positive integer")
        if policy not in POLICIES:
            raise ValueError(f"policy={policy!r}: allowed values are {', '.join(POLICIES)}")
        if wait not in WAIT_STRATEGIES:
            raise ValueError(f"wait={wait!r}: allowed values are {', '.join(WAIT_STRATEGIES)}")
        if not isinstance(links, int) or not 1 <= links <= MAX_LINKS:
            raise ValueError(f"links={links!r}: a chain has 1 to {MAX_LINKS} consumers")
        slot_align = 4096 if payload_bytes >= 65536 else 64
        stride = _align(FRAME_HEADER_SIZE + payload_bytes, slot_align)
        data_offset = CONTROL_BYTES
        total = data_offset + n_slots * stride
        backing = _shm.choose_backing(total, hugepages)
        total = _align(total, backing.page_size)
        segment = _shm.Segment.create(name, total, backing, mode)
        try:
            fd = os.open(segment.path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, total)
            except OSError as exc:
                where = segment.path.parent
                free = os.statvfs(where).f_bavail * os.statvfs(where).f_frsize
                raise RingError(
                    f"ring {name!r} needs {total / 2**20:.1f} MiB but {where} cannot provide it "
                    f"({exc.strerror}; {free / 2**20:.1f} MiB free): use fewer or smaller slots, or "
                    f"enlarge {where} (e.g. `mount -o remount,size=8G /dev/shm`)"
                ) from None
            finally:
                os.close(fd)
            ctl = memoryview(segment.mmap).cast("B")[:CONTROL_BYTES].cast("Q")
            ctl[_VERSION] = RING_VERSION
            ctl[_SLOT_STRIDE] = stride
            ctl[_N_SLOTS] = n_slots
            ctl[_CAPACITY] = stride - FRAME_HEADER_SIZE
            ctl[_POLICY] = POLICIES.index(policy)
            ctl[_WAIT] = WAIT_STRATEGIES.index(wait)
            ctl[_DATA_OFFSET] = data_offset
            ctl[_TOTAL] = total
            ctl[_CREATED_NS] = time.time_ns()
            pid, start = current_identity()
            ctl[_OWNER_PID] = pid
            ctl[_OWNER_START] = start
            ctl[_PAGE] = backing.page_size
            ctl[_N_LINKS] = links
            hdr = np.ndarray((n_slots,), FRAME_HEADER_DTYPE, buffer=segment.mmap, offset=data_offset, strides=(stride,))
            hdr["magic"] = FRAME_MAGIC
            hdr["version"] = FRAME_VERSION
            hdr["header_size"] = FRAME_HEADER_SIZE
            del hdr
            if wait == "kernel":
                for which in ("items", "space", *(f"items{k}" for k in range(1, links))):
                    posix_ipc.Semaphore(_sem_name(name, which), posix_ipc.O_CREX, mode=mode, initial_value=0).close()
            ctl[_MAGIC] = RING_MAGIC
            ctl[_INIT_DONE] = 1
            ctl.release()
            mapping = _Mapping(name, segment)
        except BaseException:
            segment.close()
            _unlink(name)
            raise
        return cls(mapping, owner=True)

    @classmethod
    def open(cls, name: str, **expect) -> "Ring":
        """Attach to an existing ring; ``expect`` (e.g. ``n_slots=64``) checks its geometry."""
        return cls(_open_mapping(name, expect), owner=False)

    def producer(self, **kwargs) -> "Producer":
        return Producer(self.name, **kwargs)

    def consumer(self, link: int = 0, **kwargs) -> "Consumer":
        return Consumer(self.name, link=link, **kwargs)

    @property
    def n_links(self) -> int:
        """Consumers in the ring's chain (1 for a plain SPSC ring)."""
        return self._m.n_links

    def observer(self) -> "Observer":
        return Observer(self.name)

    def statistics(self) -> RingStatistics:
        self._check()
        return self._m.statistics()

    def _check(self) -> None:
        if self._closed:
            raise RingClosed(f"ring {self.name!r}: this handle is closed")

    def close(self) -> None:
        """Unmap (idempotent). Does not unlink: see :meth:`unlink`."""
        if not self._closed:
            self._closed = True
            self._m.close()

    def unlink(self) -> None:
        """Remove the ring's name (and its semaphores); mapped users keep their mapping."""
        _unlink(self.name)

    def __enter__(self) -> "Ring":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        if self._owner:
            self.unlink()

    def __repr__(self) -> str:
        g = self.geometry
        return f"<Ring {self.name!r} {g.n_slots}x{g.payload_capacity}B {self.policy}/{self.wait}>"


def _validate_name(name: str) -> None:
    if not name or "/" in name or len(name) > 200 or name.startswith(".") or name.startswith("sem."):
        raise ValueError(f"ring name {name!r}: use 1-200 characters without '/', not starting with '.' or 'sem.'")


def _unlink(name: str) -> bool:
    removed = _shm.unlink_segment(name)
    for which in ("items", "space", *(f"items{k}" for k in range(1, MAX_LINKS))):
        try:
            posix_ipc.unlink_semaphore(_sem_name(name, which))
        except posix_ipc.ExistentialError:
            pass
    return removed


def _open_mapping(name: str, expect: dict) -> _Mapping:
    check_platform()
    mapping = _Mapping(name, _shm.Segment.attach(name))
    for key, want in expect.items():
        have = getattr(mapping.geometry, key, None)
        if key not in RingGeometry.__dataclass_fields__ and key not in ("policy", "wait"):
            mapping.close()
            raise ValueError(f"unknown geometry key {key!r}")
        if key in ("policy", "wait"):
            have = getattr(mapping, key)
        if key == "payload_capacity" and have is not None and have >= want:
            continue
        if have != want:
            mapping.close()
            raise RingFormatError(f"ring {name!r} has {key}={have}, expected {want}: stale ring from another configuration? `appliance clean`")
    return mapping


class _End:
    """Shared parts of the producer and consumer ends."""

    _role = "end"
    _PID = _START = _HEARTBEAT = 0
    #: Whether a dead peer interrupts a wait at once (consumer) or only at the timeout
    #: (producer: upstream keeps its backpressure while the supervisor restarts the consumer,
    #: which resumes at the read counter).
    _watch_peer = True

    def __init__(self, name: str, *, peer_check_interval: float = 0.05, **expect) -> None:
        self._m = _open_mapping(name, expect)
        self._closed = False
        self._peer_check_interval = peer_check_interval
        ctl = self._m.ctl
        pid, start = current_identity()
        other = ctl[self._PID]
        if other and other != pid and process_alive(other, ctl[self._START]):
            self._m.close()
            raise RingBusy(f"ring {name!r} already has a live {self._role} (pid {other}); a ring is single-{self._role}")
        ctl[self._PID] = pid
        ctl[self._START] = start
        ctl[self._HEARTBEAT] = time.monotonic_ns()
        self._pid = pid

    @property
    def name(self) -> str:
        return self._m.name

    @property
    def geometry(self) -> RingGeometry:
        return self._m.geometry

    def statistics(self) -> RingStatistics:
        self._check()
        return self._m.statistics()

    def heartbeat(self) -> None:
        """Refresh this end's heartbeat without moving data (for idle periods)."""
        self._m.ctl[self._HEARTBEAT] = time.monotonic_ns()

    def _check(self) -> None:
        if self._closed:
            raise RingClosed(f"ring {self._m.name!r}: this {self._role} end is closed")

    def _wait(self, ready, deadline: float | None, sem, waiting_flag: int):
        """Wait until ``ready()`` returns a non-None value, honouring the ring's strategy.

        Raises RingTimeout at the deadline and PeerGone (via ``_peer_gone``) when the peer
        process is found dead. Returns ready()'s value.
        """
        strategy = self._m.wait
        ctl = self._m.ctl
        checks = 0
        sleep = _SLEEP_MIN
        next_peer_check = time.monotonic() + self._peer_check_interval
        while True:
            value = ready()
            if value is not None:
                return value
            checks += 1
            if checks < _SPIN_CHECKS and strategy != "spin":
                continue
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                ctl[self._HEARTBEAT] = time.monotonic_ns()  # alive: a short timeout is still a wait
                self._timed_out()
            if now >= next_peer_check:
                next_peer_check = now + self._peer_check_interval
                ctl[self._HEARTBEAT] = time.monotonic_ns()  # alive, waiting on the peer
                if self._watch_peer:
                    self._check_peer()
            if strategy == "spin":
                continue
            if strategy == "yield" or checks < _SPIN_CHECKS + _YIELD_CHECKS:
                os.sched_yield()
                continue
            if strategy == "sleep":
                time.sleep(sleep if deadline is None else max(0.0, min(sleep, deadline - now)))
                sleep = min(sleep * 2, _SLEEP_MAX)
                continue
            # kernel: announce that we sleep, re-check, then wait on the doorbell for one slice.
            ctl[waiting_flag] = 1
            try:
                value = ready()
                if value is not None:
                    return value
                slice_ = _KERNEL_SLICE if deadline is None else max(0.0, min(_KERNEL_SLICE, deadline - now))
                try:
                    sem.acquire(slice_)
                except posix_ipc.BusyError:
                    pass
            finally:
                ctl[waiting_flag] = 0
            _drain(sem)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SlotBatch:
    """Consecutive slots as arrays: ``headers`` is a (k,) structured view of their frame
    headers and ``data`` a (k, payload_capacity) uint8 view of their payloads, both strided
    over shared memory. For small frames, one NumPy operation fills or reads k frames.
    A batch never wraps around the end of the ring, so it may hold fewer than asked.
    """

    __slots__ = ("start", "headers", "data")

    def __init__(self, start: int, headers: np.ndarray, data: np.ndarray) -> None:
        self.start = start  #: ring position of the first slot
        self.headers = headers
        self.data = data

    def __len__(self) -> int:
        return len(self.headers)


class Producer(_End):
    """The writing end. ``reserve()`` returns a :class:`Slot` to fill in place; ``commit()``
    publishes the oldest reserved slot. Several slots may be reserved before committing;
    ``reserve_many`` reserves a :class:`SlotBatch` of consecutive slots at once.

    Under policy ``block``, ``reserve`` waits for space (up to ``timeout``). Under
    ``drop_newest`` it never waits: when the ring is full it returns a scratch slot with
    ``dropped=True`` and counts the drop, so the caller's code is the same for both policies.

    ``close()`` marks end of stream by default; ``close(end_of_stream=False)`` detaches
    without it (a producer handing over to its restarted successor).
    """

    _role = "producer"
    _PID, _START, _HEARTBEAT = _P_PID, _P_START, _P_HEARTBEAT
    _watch_peer = False

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(name, **kwargs)
        ctl = self._m.ctl
        ctl[_EOS] = 0  # a (re)attached producer continues the stream
        self._written = ctl[_WRITE]  # resume at the write counter: uncommitted slots are rewritten
        ctl[_RESERVED] = self._written
        self._reserved = self._written
        self._last = self._m.last_read  # slots are free once the chain's last link released them
        self._read_cache = ctl[self._last]
        self._n = self._m.geometry.n_slots
        # Reservations not yet committed, as runs [count, dropped] in reservation order.
        self._runs: collections.deque[list] = collections.deque()
        self._drop = self._m.policy == "drop_newest"
        self._scratch: Slot | None = None

    def _space(self):
        self._read_cache = r = self._m.ctl[self._last]
        return r if self._reserved - r < self._n else None

    def _discard_slot(self) -> Slot:
        if self._scratch is None:
            g = self._m.geometry
            hdr = np.zeros((), FRAME_HEADER_DTYPE)
            self._scratch = Slot(-1, hdr, np.empty(g.payload_capacity, np.uint8), dropped=True)
        return self._scratch

    def _push(self, count: int, dropped: bool) -> None:
        """Record a reservation run; only needed once a drop is pending (see ``commit``)."""
        runs = self._runs
        if not runs and self._reserved > self._written:
            # First drop while real reservations are pending: they become the first run.
            # (Only a drop reaches here with no runs, and it does not advance _reserved.)
            runs.append([self._reserved - self._written, False])
        if runs and runs[-1][1] == dropped:
            runs[-1][0] += count
        else:
            runs.append([count, dropped])

    def _make_room(self, timeout: float | None, drop: int = 1) -> bool:
        """Wait for at least one free slot; False (counting ``drop`` drops) when the policy
        drops instead."""
        if self._reserved - self._read_cache < self._n or self._space() is not None:
            return True
        ctl = self._m.ctl
        if self._drop:
            ctl[_DROPS] += drop
            return False
        ctl[_FULL_WAITS] += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait(self._space, deadline, self._m.space_sem, _P_WAITING)
        return True

    def reserve(self, timeout: float | None = None) -> Slot:
        """Reserve the next slot, waiting up to ``timeout`` seconds (None: forever) for space.

        Raises RingTimeout at the timeout, or ConsumerGone instead when the consumer is dead
        by then (a consumer restarted within the timeout simply resumes, so backpressure
        holds across a consumer crash); RingClosed after ``close()``.
        """
        if self._closed:
            self._check()
        pos = self._reserved
        if pos - self._read_cache >= self._n and not self._make_room(timeout):
            self._push(1, True)
            return self._discard_slot()
        self._reserved = pos + 1
        # Published before the slot is written: an Observer uses it to detect a torn read.
        self._m.ctl[_RESERVED] = pos + 1
        if self._runs:
            self._push(1, False)
        return self._m.slots[pos & (self._n - 1)]

    def reserve_nowait(self) -> Slot:
        """Reserve a slot or raise WouldBlock at once when the ring is full (policy block)."""
        if self._closed:
            self._check()
        if not self._drop and self._reserved - self._read_cache >= self._n and self._space() is None:
            raise WouldBlock(f"ring {self._m.name!r} is full ({self._n} slots)")
        return self.reserve(0)

    def reserve_many(self, max_n: int, timeout: float | None = None) -> SlotBatch:
        """Reserve between 1 and ``max_n`` consecutive slots (as many as are free, up to the
        end of the ring), waiting like :meth:`reserve` for the first. Under ``drop_newest``
        a full ring gives an empty batch and counts one drop per frame the caller drops
        (call :meth:`count_drops`). Commit them with ``commit(len(batch))``."""
        if self._closed:
            self._check()
        if not self._make_room(timeout, drop=0):
            return self._m.batch(self._reserved, 0)
        pos = self._reserved
        free = self._n - (pos - self._read_cache)
        k = min(max_n, free, self._n - (pos & (self._n - 1)))
        self._reserved = pos + k
        self._m.ctl[_RESERVED] = pos + k
        if self._runs:
            self._push(k, False)
        return self._m.batch(pos, k)

    def count_drops(self, n: int) -> None:
        """Account for ``n`` frames the caller dropped because :meth:`reserve_many` gave too few slots."""
        self._m.ctl[_DROPS] += n

    def commit(self, n: int = 1) -> None:
        """Publish the ``n`` oldest reserved slots (in order) and stamp their ``seq``."""
        if self._closed:
            self._check()
        m = self._m
        w = self._written
        if not self._runs:
            # Fast path: no drop pending, so the reservations are exactly [written, reserved).
            if w + n > self._reserved:
                raise RingError(f"commit({n}) with only {self._reserved - w} reserved slots")
            if n == 1:
                m.words[m.seq_word + (w & m.mask) * m.stride_words] = w
            else:
                m.stamp_seq(w, n)
            w += n
        else:
            w = self._commit_runs(n)
            if w == self._written:
                return
        ctl = m.ctl
        # The publishing store: everything written into the slots above precedes it.
        ctl[_WRITE] = w
        if (w ^ self._written) >> 6:  # heartbeat every 64 frames; waits refresh it too
            ctl[_P_HEARTBEAT] = time.monotonic_ns()
        self._written = w
        if m.items_sem is not None and ctl[_C_WAITING]:
            m.items_sem.release()

    def _commit_runs(self, n: int) -> int:
        runs = self._runs
        pending = sum(run[0] for run in runs)
        if n > pending:
            raise RingError(f"commit({n}) with only {pending} reserved slots")
        w = self._written
        while n:
            run = runs[0]
            take = min(n, run[0])
            if not run[1]:
                self._m.stamp_seq(w, take)
                w += take
            n -= take
            if take == run[0]:
                runs.popleft()
            else:
                run[0] -= take
        return w

    def _timed_out(self) -> None:
        self._check_peer()
        raise RingTimeout(f"ring {self._m.name!r}: no free slot within the timeout (consumer slow)")

    def _check_peer(self) -> None:
        ctl = self._m.ctl
        for k in range(self._m.n_links):
            _cur, _e, pid_w, start_w, *_ = _link_words(k)
            pid = ctl[pid_w]
            if pid and not process_alive(pid, ctl[start_w]):
                who = "consumer" if self._m.n_links == 1 else f"consumer link {k}"
                raise ConsumerGone(f"ring {self._m.name!r}: {who} pid {pid} died with the ring full; restart it and it resumes at its read counter", pid)

    def close(self, end_of_stream: bool = True) -> None:
        """Detach; by default mark end of stream first (idempotent). Uncommitted
        reservations are abandoned (a successor rewrites those slots)."""
        if self._closed:
            return
        ctl = self._m.ctl
        if end_of_stream:
            ctl[_EOS] = 1
            if self._m.items_sem is not None:
                self._m.items_sem.release()
        if ctl[_P_PID] == self._pid:
            ctl[_P_PID] = 0
        self._closed = True
        self._runs.clear()
        self._m.close()


class Consumer(_End):
    """The reading end. ``acquire()`` returns the next committed :class:`Slot` as a view;
    ``release()`` hands the oldest acquired slot back to the producer. A frame acquired but
    not released when this process dies is delivered again to the next consumer.

    On a ring with a chain of consumers, ``link=k`` attaches as the chain's k-th consumer: it
    acquires only slots that link k-1 released (link 0: that the producer committed), and its
    releases hand the slots to link k+1, or back to the producer from the last link. Each link
    is single-consumer, with its own cursor, pid and heartbeat in the control block.
    """

    _role = "consumer"

    def __init__(self, name: str, *, link: int = 0, **kwargs) -> None:
        if not isinstance(link, int) or not 0 <= link < MAX_LINKS:
            raise ValueError(f"link={link!r}: a chain link is 0 to {MAX_LINKS - 1}")
        (self._CUR, self._EMPTY, self._PID, self._START, self._HEARTBEAT, self._WAITING, self._PEAK_W) = _link_words(link)
        self.link = link
        super().__init__(name, **kwargs)
        m = self._m
        if link >= m.n_links:
            m.close()
            raise ValueError(f"ring {name!r} has a chain of {m.n_links} consumer(s): link {link} does not exist (0 to {m.n_links - 1})")
        ctl = m.ctl
        if m.n_links > 1:
            self._role = f"consumer link {link}"
        # A dead upstream link interrupts a wait only at the timeout: the supervisor restarts it
        # and it resumes at its cursor, so this link just keeps waiting (as a producer does for
        # its consumer). A dead producer is reported at once, as on a plain ring.
        self._watch_peer = link == 0
        #: the cursor this link reads up to: the producer's write counter, or the upstream link's
        self._UP = _WRITE if link == 0 else _link_words(link - 1)[0]
        self._up_pid, self._up_start = (_P_PID, _P_START) if link == 0 else _link_words(link - 1)[2:4]
        self._released = ctl[self._CUR]  # resume at this link's cursor
        self._acquired = self._released
        self._write_cache = ctl[self._UP]
        self._peak = ctl[self._PEAK_W]
        self._mask = m.geometry.n_slots - 1
        self._sem = m.link_sems[link] if m.link_sems else None
        last = link == m.n_links - 1
        # What a release wakes: the producer (last link) or the next link's doorbell.
        if last:
            self._wake_sem, self._wake_flag = m.space_sem, _P_WAITING
        else:
            self._wake_sem, self._wake_flag = (m.link_sems[link + 1] if m.link_sems else None), _link_words(link + 1)[5]

    def _data(self):
        ctl = self._m.ctl
        self._write_cache = w = ctl[self._UP]
        if w > self._acquired:
            # Occupancy is exact here: a fresh upstream cursor against our own.
            occ = w - self._released
            if occ > self._peak:
                self._peak = ctl[self._PEAK_W] = occ
            return w
        # End of stream is read before the write counter is re-read (load-load order), so a
        # frame committed just before close() is never missed. Every frame passes every link,
        # so a link is done once it has acquired all the producer wrote.
        if ctl[_EOS] and ctl[_WRITE] <= self._acquired:
            raise EndOfStream(f"ring {self._m.name!r}: end of stream after {self._acquired} frames")
        return None

    def _available(self, timeout: float | None) -> None:
        if self._acquired < self._write_cache or self._data() is not None:
            return
        self._m.ctl[self._EMPTY] += 1
        deadline = None if timeout is None else time.monotonic() + timeout
        self._wait(self._data, deadline, self._sem, self._WAITING)

    def acquire(self, timeout: float | None = None) -> Slot:
        """The next frame, waiting up to ``timeout`` seconds (None: forever).

        Raises EndOfStream when the producer closed and every frame was read, RingTimeout at
        the timeout, ProducerGone when the producer (or, in a chain, the upstream link) died,
        RingClosed after ``close()``.
        """
        if self._closed:
            self._check()
        pos = self._acquired
        if pos >= self._write_cache:
            self._available(timeout)
        self._acquired = pos + 1
        return self._m.slots[pos & self._mask]

    def acquire_nowait(self) -> Slot:
        """The next frame, or WouldBlock at once when none is committed."""
        if self._closed:
            self._check()
        if self._acquired >= self._write_cache and self._data() is None:
            raise WouldBlock(f"ring {self._m.name!r} is empty")
        return self.acquire(0)

    def acquire_many(self, max_n: int, timeout: float | None = None) -> list[Slot]:
        """Between 1 and ``max_n`` frames (as many as are committed), waiting like
        :meth:`acquire` for the first. Release them with ``release(len(slots))``."""
        if self._closed:
            self._check()
        self._available(timeout)
        pos = self._acquired
        n = min(max_n, self._write_cache - pos)
        self._acquired = pos + n
        slots = self._m.slots
        mask = self._mask
        return [slots[(pos + i) & mask] for i in range(n)]

    def acquire_batch(self, max_n: int, timeout: float | None = None) -> SlotBatch:
        """Like :meth:`acquire_many`, as a :class:`SlotBatch` of array views (no wrap-around:
        it may stop at the end of the ring). Release with ``release(len(batch))``."""
        if self._closed:
            self._check()
        self._available(timeout)
        pos = self._acquired
        n = min(max_n, self._write_cache - pos, self._mask + 1 - (pos & self._mask))
        self._acquired = pos + n
        return self._m.batch(pos, n)

    def release(self, n: int = 1) -> None:
        """Hand the ``n`` oldest acquired slots on: to the next link, or back to the producer."""
        if self._closed:
            self._check()
        new = self._released + n
        if new > self._acquired:
            raise RingError(f"release({n}) with only {self._acquired - self._released} acquired slots")
        ctl = self._m.ctl
        # Our reads (and in-place writes) of these slots are complete before this store: x86-64
        # keeps load->store and store->store order (rt/_ordering.py), so the next link or the
        # producer sees the slot as this link left it.
        ctl[self._CUR] = new
        if (new ^ self._released) >> 6:  # heartbeat every 64 frames; waits refresh it too
            ctl[self._HEARTBEAT] = time.monotonic_ns()
        self._released = new
        if self._wake_sem is not None and ctl[self._wake_flag]:
            self._wake_sem.release()

    def _timed_out(self) -> None:
        self._check_peer()
        raise RingTimeout(f"ring {self._m.name!r}: no frame within the timeout (producer slow or idle)")

    def _check_peer(self) -> None:
        ctl = self._m.ctl
        pid = ctl[self._up_pid]
        if pid and not process_alive(pid, ctl[self._up_start]):
            if self.link == 0:
                if ctl[_EOS]:
                    return
                raise ProducerGone(f"ring {self._m.name!r}: producer pid {pid} died without end of stream; {self._acquired} frames read. Restart it and it resumes at the write counter", pid)
            raise ProducerGone(f"ring {self._m.name!r}: upstream consumer link {self.link - 1} (pid {pid}) died; {self._acquired} frames read. Restart it and it resumes at its cursor", pid)

    def close(self) -> None:
        """Detach (idempotent). Acquired but unreleased frames stay in the ring for the next
        consumer."""
        if self._closed:
            return
        ctl = self._m.ctl
        if ctl[self._PID] == self._pid:
            ctl[self._PID] = 0
        self._closed = True
        self._m.close()


class Observer:
    """A lossy, read-only view of the latest committed frame.

    It never writes to the ring, so the producer and consumer cannot notice it. The copy is
    validated seqlock-style against the producer's reservation counter and retried when the
    producer overwrote the slot during the copy.
    """

    def __init__(self, name: str) -> None:
        self._m = _open_mapping(name, {})
        self._closed = False
        self.torn_reads = 0

    def latest(self, out: np.ndarray | None = None, retries: int = 8) -> tuple[np.ndarray, np.ndarray] | None:
        """``(header_copy, payload_copy)`` of the newest committed frame, or None when none
        has been committed (or every retry was torn by a fast producer)."""
        if self._closed:
            raise RingClosed(f"ring {self._m.name!r}: observer closed")
        ctl = self._m.ctl
        n = self._m.geometry.n_slots
        for _ in range(retries):
            w = ctl[_WRITE]
            if w == 0:
                return None
            slot = self._m.slots[(w - 1) % n]
            header = slot.header.copy()
            nbytes = min(int(header["payload_bytes"]), slot.data.size)
            if out is None:
                payload = slot.data[:nbytes].copy()
            else:
                payload = out[:nbytes]
                np.copyto(payload, slot.data[:nbytes])
            # Slot w-1 is rewritten only once the producer reserves position w-1+n.
            if ctl[_RESERVED] <= w - 1 + n:
                return header, payload
            self.torn_reads += 1
        return None

    def statistics(self) -> RingStatistics:
        return self._m.statistics()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._m.close()

    def __enter__(self) -> "Observer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def list_rings() -> list[tuple[str, Path]]:
    """Every ring segment on this host (POSIX shm and hugetlbfs mounts) as (name, path)."""
    return _shm.find_segments(b"APRING01")


def inspect(name: str) -> RingStatistics:
    """Statistics of the ring ``name`` without attaching as either end."""
    mapping = _open_mapping(name, {})
    try:
        return mapping.statistics()
    finally:
        mapping.close()


def is_stale(st: RingStatistics) -> bool:
    """True when the ring's owner and every end (each link of a chain) are dead (pid and
    start time checked)."""
    return not (st.owner_alive or st.producer_alive or st.consumer_alive or any(lk.alive for lk in st.links))


def clean_dead_rings(force: tuple[str, ...] = (), dry_run: bool = False) -> list[str]:
    """Unlink rings whose owner and both ends are dead (or those named in ``force``), and
    status blocks (``rt.status``) whose owner is dead.

    Returns the names removed (or that would be, with ``dry_run``). A ring whose creator
    died during creation has no valid control block and is not recognised; name it in
    ``force``.
    """
    doomed = []
    for name, _path in list_rings():
        if name in force:
            doomed.append(name)
            continue
        try:
            st = inspect(name)
        except RingError:
            continue
        if is_stale(st):
            doomed.append(name)
    doomed.extend(n for n in force if n not in doomed and any(p.exists() for p in _shm.segment_paths(n)))
    if not dry_run:
        for name in doomed:
            _unlink(name)
    from rt.status import clean_dead_status_blocks  # a run's status block goes with its rings

    return doomed + [n for n in clean_dead_status_blocks(force, dry_run) if n not in doomed]
