"""A tier's file system: a local directory (plain os calls, fsync) or any fsspec URL.

Paths given to a :class:`Store` are relative (POSIX) to the tier's root. Local stores write
durably (fsync of the file and its directory) and drop written pages from the cache so that
the verify re-read comes from the disk, not from memory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from pathlib import Path

from appliance.runfolder import ensure_dir, fsync_dir

CHUNK = 8 << 20


class Store:
    """One tier's root: ``url`` is a local path, ``file://PATH`` or another fsspec URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        # creating a file (or renaming into a folder) and pruning empty folders exclude each
        # other, so parallel copies never see their folder removed under them
        self._dirs = threading.Lock()
        if "://" not in url or url.startswith("file://"):
            self.local: Path | None = Path(url[7:] if url.startswith("file://") else url).resolve()
            self.fs = None
            self.root = str(self.local)
        else:
            import fsspec

            self.local = None
            try:
                self.fs, self.root = fsspec.core.url_to_fs(url)
            except (ImportError, ValueError) as exc:
                raise ValueError(
                    f"tier URL {url!r}: {exc}; install the extra for its protocol "
                    "(pip install -e '.[storage-s3]' for s3://, see docs/storage.md)"
                ) from None
            self.root = self.root.rstrip("/")

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def path(self, rel: str) -> str:
        """The full path (local) or fsspec path of ``rel``."""
        return f"{self.root}/{rel}" if rel else self.root

    def display(self, rel: str) -> str:
        """Where ``rel`` is, as an operator would type it (a path or a URL)."""
        if self.local is not None:
            return str(self.local / rel)
        proto = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return f"{proto}://{self.path(rel).lstrip('/')}" if proto != "memory" else f"memory://{self.path(rel)}"

    @staticmethod
    def temp_rel(rel: str) -> str:
        """A temp name beside ``rel`` (same directory, hidden, unique to this attempt)."""
        head, _, name = rel.rpartition("/")
        tmp = f".{name}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
        return f"{head}/{tmp}" if head else tmp

    # -- reading ---------------------------------------------------------------------------
    def open_read(self, rel: str):
        if self.local is not None:
            return open(self.local / rel, "rb", buffering=0)
        return self.fs.open(self.path(rel), "rb")

    def exists(self, rel: str) -> bool:
        if self.local is not None:
            return (self.local / rel).exists()
        return self.fs.exists(self.path(rel))

    def size(self, rel: str) -> int | None:
        try:
            if self.local is not None:
                return (self.local / rel).stat().st_size
            return int(self.fs.info(self.path(rel))["size"])
        except (FileNotFoundError, OSError):
            return None

    def drop_cache(self, rel: str) -> None:
        """Advise the kernel to drop ``rel``'s cached pages (local only; a no-op elsewhere)."""
        if self.local is None:
            return
        try:
            fd = os.open(self.local / rel, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    # -- writing ---------------------------------------------------------------------------
    def open_write(self, rel: str):
        """A new file at ``rel`` (parents created); write, then :meth:`finish_write`."""
        if self.local is not None:
            p = self.local / rel
            with self._dirs:
                ensure_dir(p.parent)
                return open(p, "xb", buffering=0)
        parent = self.path(rel).rpartition("/")[0]
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        return self.fs.open(self.path(rel), "wb")

    def finish_write(self, f) -> None:
        """Flush and make the written bytes durable (fsync, local), then close."""
        if self.local is not None:
            f.flush()
            os.fsync(f.fileno())
            try:
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
        f.close()

    def rename(self, src: str, dst: str) -> None:
        """Atomic (local) rename of ``src`` over ``dst``; directories are fsynced."""
        if self.local is not None:
            s, d = self.local / src, self.local / dst
            with self._dirs:
                ensure_dir(d.parent)
                os.replace(s, d)
            fsync_dir(d.parent)
            if s.parent != d.parent and s.parent.exists():
                fsync_dir(s.parent)
            return
        if self.fs.exists(self.path(dst)) and self.fs.isdir(self.path(dst)):
            self.fs.rm(self.path(dst), recursive=True)
        self.fs.mv(self.path(src), self.path(dst), recursive=True)

    def remove(self, rel: str) -> bool:
        """Delete the file ``rel`` (False when it was already gone); prune empty parents."""
        if self.local is not None:
            p = self.local / rel
            with self._dirs:
                try:
                    if p.is_dir():
                        shutil.rmtree(p)
                    else:
                        p.unlink()
                except FileNotFoundError:
                    return False
                fsync_dir(p.parent)
                self._prune(p.parent)
            return True
        try:
            self.fs.rm(self.path(rel), recursive=True)
        except FileNotFoundError:
            return False
        return True

    def _prune(self, d: Path) -> None:
        while self.local is not None and d != self.local and self.local in d.parents:
            try:
                d.rmdir()
            except OSError:
                return
            d = d.parent

    def makedirs(self, rel: str) -> None:
        if self.local is not None:
            ensure_dir(self.local / rel)
        else:
            self.fs.makedirs(self.path(rel), exist_ok=True)

    def listdir_files(self, rel: str) -> list[str]:
        """Every file under ``rel``, as paths relative to ``rel``."""
        if self.local is not None:
            base = self.local / rel
            return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())
        base = self.path(rel)
        return sorted(p[len(base) + 1 :] for p in self.fs.find(base))

    def usage(self) -> tuple[int, int] | None:
        """(free bytes, total bytes) of the file system (local only)."""
        if self.local is None:
            return None
        p = self.local
        while not p.exists():
            p = p.parent
        st = os.statvfs(p)
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
