"""Crash-safe, full-disk-safe file writes: temp name + fsync + rename + fsync of the directory.

A file appears under its final name only complete and durable. A process killed mid-write
leaves at most a temp file (``.<name>.tmp.<pid>.<token>``, hidden, so tools that scan a
directory for ``s_1_1101.bcl`` never see it), which :func:`remove_stale_temps` deletes on
the next open. A full disk (ENOSPC) or quota (EDQUOT) removes the temp file and raises
:class:`RunFolderFull`, so nothing partial is ever left.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import crc32c as _crc32c

from appliance.runfolder.errors import RunFolderFull

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_TEMP_RE = re.compile(r"^\..+\.tmp\.(\d+)\.[0-9a-f]{8}$")
# os.write may write less than asked, and a single huge write holds the GIL-free syscall for
# long; writing in slices bounds both and keeps memory flat for memoryviews of big arrays.
_SLICE = 8 << 20


@dataclass(frozen=True)
class Written:
    """What landed on disk: size in bytes and CRC32C of the content (hex, 8 digits)."""

    size: int
    crc32c: str
    inode: int
    mtime_ns: int


def temp_name(path: Path) -> Path:
    """A temp name in the same directory (so the rename is atomic), unique to this write."""
    return path.with_name(f".{path.name}.tmp.{os.getpid()}.{secrets.token_hex(4)}")


def is_temp_name(name: str) -> bool:
    """True for a name :func:`temp_name` produces."""
    return _TEMP_RE.match(name) is not None


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped) still answers kill(0) but will never write again.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def remove_stale_temps(root: Path) -> list[Path]:
    """Delete temp files under ``root`` whose writing process is gone; return them.

    A temp file of a live process is left alone: several writer processes (split by tile)
    may share one run folder.
    """
    removed: list[Path] = []
    for dirpath, _dirs, files in os.walk(root):
        here = 0
        for name in files:
            m = _TEMP_RE.match(name)
            if m and not _pid_alive(int(m.group(1))):
                p = Path(dirpath) / name
                try:
                    p.unlink()
                    removed.append(p)
                    here += 1
                except FileNotFoundError:
                    pass
        if here:
            fsync_dir(Path(dirpath))
    return removed


def pwrite_all(fd: int, data, offset: int, what: str = "") -> None:
    """``pwrite`` all of ``data`` at ``offset``: a disk filling mid-write returns a short count
    before it raises ENOSPC, and a short write taken as whole would leave a hole in the file."""
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(errno.ENOSPC, "no progress writing", what or str(fd))
        done += n


def fsync_dir(path: Path) -> None:
    """fsync a directory so the names created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mount_point(path: Path) -> str:
    p = path.resolve()
    try:
        dev = p.stat().st_dev
    except OSError:
        return str(p)
    while p.parent != p and p.parent.stat().st_dev == dev:
        p = p.parent
    return str(p)


def _free_bytes(path: Path) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def full_error(path: Path, needed: int | None, exc: OSError) -> RunFolderFull:
    """The :class:`RunFolderFull` for an ENOSPC/EDQUOT met while writing ``path``."""
    where = path.parent if path.parent.exists() else path.parent.parent
    return RunFolderFull(str(path), needed, _free_bytes(where), _mount_point(where), exc.errno)


def ensure_dir(path: Path, for_file: Path | None = None, needed: int | None = None) -> None:
    """Create ``path`` and missing parents, fsyncing each parent so the new names are durable.

    ``for_file`` and ``needed`` name the file the directory is for in a full-disk error.
    """
    missing: list[Path] = []
    p = path
    while not p.is_dir():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno in _FULL_ERRNOS:
                raise full_error(for_file or d, needed, e) from e
            raise
        fsync_dir(d.parent)


def write_atomic(
    path: Path, chunks: Iterable[bytes | bytearray | memoryview], size: int | None = None
) -> Written:
    """Write ``chunks`` to ``path`` atomically and durably; return its size and CRC32C.

    ``size`` (the total, when known) only makes a full-disk message exact. On any failure
    the temp file is removed; ENOSPC/EDQUOT become :class:`RunFolderFull`.
    """
    tmp = temp_name(path)
    fd = -1
    crc = 0
    total = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        for chunk in chunks:
            mv = memoryview(chunk).cast("B")
            crc = _crc32c.crc32c(mv, crc)
            off = 0
            n = len(mv)
            while off < n:
                off += os.write(fd, mv[off : off + _SLICE])
            total += n
        os.fsync(fd)
        st = os.fstat(fd)
        os.close(fd)
        fd = -1
        os.rename(tmp, path)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
            raise full_error(path, size if size is not None else None, exc) from exc
        raise
    try:
        fsync_dir(path.parent)
    except OSError as exc:
        # The file is complete and renamed; only the name's durability is in question.
        if exc.errno in _FULL_ERRNOS:
            raise full_error(path, size, exc) from exc
        raise
    return Written(total, f"{crc:08x}", st.st_ino, st.st_mtime_ns)


def checksum_file(path: Path) -> tuple[int, str]:
    """(size, CRC32C hex) of a file on disk, read in slices."""
    crc = 0
    total = 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_SLICE)
        mv = memoryview(buf)
        while n := f.readinto(buf):
            crc = _crc32c.crc32c(mv[:n], crc)
            total += n
    return total, f"{crc:08x}"


def crc32c_hex(chunks: Iterable[bytes | bytearray | memoryview]) -> tuple[int, str]:
    """(size, CRC32C hex) of in-memory content, as :func:`write_atomic` would record it."""
    crc = 0
    total = 0
    for chunk in chunks:
        mv = memoryview(chunk).cast("B")
        crc = _crc32c.crc32c(mv, crc)
        total += len(mv)
    return total, f"{crc:08x}"
