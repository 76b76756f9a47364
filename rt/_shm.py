"""Named shared-memory segments: POSIX shm in /dev/shm, or a file on a hugetlbfs mount.

We use posix_ipc rather than multiprocessing.shared_memory because the latter registers
segments with a resource tracker that unlinks them when *any* attaching process exits,
which would destroy a ring that must outlive a crashed stage. Here the supervisor alone
creates and unlinks.
"""

from __future__ import annotations

import logging
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import posix_ipc

from rt._errors import RingError, RingNotFound

__all__ = ["Segment", "HugepageChoice", "choose_backing", "find_segments", "hugetlbfs_mounts", "segment_paths"]

log = logging.getLogger("rt.shm")

SHM_DIR = Path("/dev/shm")
_PAGE_SIZES = {"1G": 1 << 30, "2M": 2 << 20, "4K": 4096}


@dataclass(frozen=True)
class HugepageChoice:
    """Where a segment is backed: page size in bytes and the directory (None = POSIX shm)."""

    page_size: int
    directory: Path | None
    reason: str


def hugetlbfs_mounts(proc_mounts: Path = Path("/proc/mounts"), meminfo: Path = Path("/proc/meminfo")) -> dict[int, Path]:
    """Mounted hugetlbfs file systems by page size in bytes (first mount of each size)."""
    default = 0
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("Hugepagesize:"):
                default = int(line.split()[1]) * 1024
    except OSError:
        pass
    found: dict[int, Path] = {}
    try:
        lines = proc_mounts.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) < 4 or parts[2] != "hugetlbfs":
            continue
        size = default
        for opt in parts[3].split(","):
            if opt.startswith("pagesize="):
                size = _parse_size(opt.split("=", 1)[1])
        if size:
            found.setdefault(size, Path(parts[1].replace("\\040", " ")))
    return found


def _parse_size(text: str) -> int:
    text = text.strip().upper().rstrip("B")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(text[:-1] if text[-1:] in "KMG" else text) * mult


def _free_hugepages(page_size: int, sysfs: Path = Path("/sys/kernel/mm/hugepages")) -> int:
    try:
        return int((sysfs / f"hugepages-{page_size // 1024}kB" / "free_hugepages").read_text())
    except (OSError, ValueError):
        return 0


def choose_backing(
    nbytes: int,
    hugepages: str,
    *,
    proc_mounts: Path = Path("/proc/mounts"),
    meminfo: Path = Path("/proc/meminfo"),
    sysfs: Path = Path("/sys/kernel/mm/hugepages"),
) -> HugepageChoice:
    """Pick the backing for a segment of ``nbytes``.

    ``hugepages`` is ``"none"`` (POSIX shm, 4 KiB pages), ``"auto"`` (try 1G, then 2M, then
    4K), or ``"1G"``/``"2M"`` (that size, falling back to smaller ones). Each fallback is
    logged with its reason (no hugetlbfs mount of that size, or too few free pages).
    """
    if hugepages not in ("none", "auto", "1G", "2M", "4K"):
        raise ValueError(f"hugepages={hugepages!r}: allowed values are none, auto, 1G, 2M, 4K")
    if hugepages in ("none", "4K"):
        return HugepageChoice(4096, None, "hugepages not requested")
    order = ["1G", "2M"] if hugepages in ("auto", "1G") else ["2M"]
    mounts = hugetlbfs_mounts(proc_mounts, meminfo)
    reasons = []
    for label in order:
        size = _PAGE_SIZES[label]
        need = -(-nbytes // size)
        if size not in mounts:
            reasons.append(f"{label}: no hugetlbfs mount with pagesize={label}")
            continue
        free = _free_hugepages(size, sysfs)
        if free < need:
            reasons.append(f"{label}: need {need} free pages, {free} free")
            continue
        return HugepageChoice(size, mounts[size], f"{label} hugepages on {mounts[size]}")
    reason = "; ".join(reasons)
    log.warning("hugepages=%s: falling back to 4K pages (%s)", hugepages, reason)
    return HugepageChoice(4096, None, f"fell back to 4K pages: {reason}")


def segment_paths(name: str) -> list[Path]:
    """Every file that may back the segment ``name`` (POSIX shm and hugetlbfs mounts)."""
    paths = [SHM_DIR / name]
    paths.extend(mount / name for mount in hugetlbfs_mounts().values())
    return paths


def find_segments(magic: bytes, dirs: list[Path] | None = None) -> list[tuple[str, Path]]:
    """Every segment whose first bytes are ``magic``, as (name, path), in ``dirs`` (default:
    /dev/shm and the hugetlbfs mounts). Semaphores and unreadable files are skipped."""
    found = []
    for d in dirs if dirs is not None else [SHM_DIR, *hugetlbfs_mounts().values()]:
        try:
            entries = sorted(d.iterdir())
        except OSError:
            continue
        for path in entries:
            if path.name.startswith("sem.") or not path.is_file():
                continue
            try:
                with open(path, "rb") as f:
                    head = f.read(len(magic))
            except OSError:
                continue
            if head == magic:
                found.append((path.name, path))
    return found


class Segment:
    """A mapped named segment. ``create`` makes it (exclusive), ``attach`` maps an existing one."""

    def __init__(self, name: str, mm: mmap.mmap, path: Path, page_size: int) -> None:
        self.name = name
        self.mmap = mm
        self.path = path
        self.page_size = page_size

    @classmethod
    def create(cls, name: str, nbytes: int, backing: HugepageChoice, mode: int = 0o600) -> "Segment":
        if backing.directory is None:
            try:
                shm = posix_ipc.SharedMemory("/" + name, posix_ipc.O_CREX, mode=mode, size=nbytes)
            except posix_ipc.ExistentialError:
                raise RingError(
                    f"ring {name!r} already exists in {SHM_DIR}; another appliance may be running, "
                    f"or a crashed one left it: `appliance clean` removes rings of dead owners"
                ) from None
            try:
                mm = mmap.mmap(shm.fd, nbytes)
            finally:
                shm.close_fd()
            return cls(name, mm, SHM_DIR / name, 4096)
        path = backing.directory / name
        size = -(-nbytes // backing.page_size) * backing.page_size
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        except FileExistsError:
            raise RingError(f"ring {name!r} already exists at {path}: `appliance clean` removes stale rings") from None
        try:
            os.ftruncate(fd, size)
            mm = mmap.mmap(fd, size)
        except OSError:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        return cls(name, mm, path, backing.page_size)

    @classmethod
    def attach(cls, name: str) -> "Segment":
        for path in segment_paths(name):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                size = os.fstat(fd).st_size
                if size == 0:
                    raise RingError(f"ring {name!r} at {path} is empty (creation interrupted?): remove it with `appliance clean --force {name}`")
                mm = mmap.mmap(fd, size)
            finally:
                os.close(fd)
            page = 4096 if path.parent == SHM_DIR else os.statvfs(path.parent).f_bsize
            return cls(name, mm, path, page)
        raise RingNotFound(f"no ring named {name!r} (looked in {SHM_DIR} and hugetlbfs mounts)")

    def close(self) -> None:
        try:
            self.mmap.close()
        except BufferError:
            # Views into the mapping are still alive somewhere; the mapping is released
            # when the last one goes (it is reference counted by the buffer protocol).
            log.debug("segment %s: views still exported at close; unmapped when released", self.name)


def unlink_segment(name: str) -> bool:
    """Remove the named segment wherever it is; True when something was removed."""
    removed = False
    for path in segment_paths(name):
        try:
            path.unlink()
            removed = True
        except FileNotFoundError:
            pass
    return removed
