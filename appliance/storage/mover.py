"""The mover: verified copies between tiers, BagIt archives, deletes that never lose data.

A copy is: record the intent (catalog row ``copying`` with the destination temp name), copy in
chunks at the bandwidth limit (a token bucket) while computing CRC32C of what was read, check
that against the catalog, make it durable, drop it from the page cache, re-read it at the
destination and check its CRC32C again, rename the temp name to the final one, and only then
record ``verified``. A delete happens only when the policy's number of verified copies exists
on other tiers and each still has its size on disk; the row goes ``deleting`` before the unlink
and ``deleted`` after. Every step is durable before the next, so a crash anywhere is resumed
by :meth:`Mover.recover`: temp files removed and their copies redone, decided deletes done.

Cold copies are BagIt packages (sha256), one per run and data class, built under a temp name,
validated with ``bagit`` (``Bag.validate``) and re-read for CRC32C before the rename.
"""

from __future__ import annotations

import contextvars
import fcntl
import logging
import os
import secrets
import shutil
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

from appliance.runfolder import checksum_file
from appliance.storage._fs import CHUNK, Store
from appliance.storage.catalog import Catalog, CopyRow, FileRow

import crc32c as _crc32c

__all__ = ["BANDWIDTH_FILE", "Mover", "MoveError", "MoveInterrupted", "SourceCorrupt", "VerifyFailed", "SharedTokenBucket",
           "TokenBucket", "MoverLock", "TIER_PREFERENCE", "shared_bandwidth"]

log = logging.getLogger("appliance.storage")
#: where a good copy is read from, best first
TIER_PREFERENCE = ("hot", "warm", "cold")


class MoveError(RuntimeError):
    """A move could not be done; nothing was deleted and the catalog says what is where."""


class MoveInterrupted(MoveError):
    """The mover was asked to stop mid-copy; the temp file was removed, the copy is pending."""


class SourceCorrupt(MoveError):
    """The bytes read from the source do not match the catalog's checksum."""


class VerifyFailed(MoveError):
    """The re-read at the destination does not match: the copy was discarded, not recorded."""


class TokenBucket:
    """Bandwidth limit: ``take(n)`` sleeps so that the long-run rate is at most ``rate``
    bytes/s (bursts up to ``burst`` bytes). ``rate <= 0`` means unlimited."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = float(rate)
        self.burst = float(burst if burst is not None else max(64 << 10, self.rate * 0.25))
        #: bytes to move between two takes: small at low rates so the flow is smooth
        self.chunk = CHUNK if self.rate <= 0 else int(min(CHUNK, max(64 << 10, self.rate / 10)))
        self._tokens = self.burst
        self._t = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: int, stop: threading.Event | None = None) -> None:
        if self.rate <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._t) * self.rate)
            self._t = now
            self._tokens -= n
            debt = -self._tokens
        if debt > 0:
            wait = debt / self.rate
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)


#: the shared bandwidth limit's state file, in the hot tier's ``.storage/`` folder
BANDWIDTH_FILE = "bandwidth.bucket"
_STATE = struct.Struct("<ddd")  # rate (bytes/s), tokens (bytes), when (CLOCK_MONOTONIC s)


class SharedTokenBucket:
    """A :class:`TokenBucket` shared by every process on this host that opens the same ``path``:
    the storage mover in ``appliance serve`` and the transfers of an offload worker draw on one
    limit, so offload never takes the bandwidth the hot tier's eviction needs.

    The state (rate, tokens, the time they were counted) is 24 bytes in ``path``, read and
    written under an exclusive ``flock`` held only for that read-modify-write; the sleep that
    pays a debt happens after the lock is released, so a slow or stopped process never holds
    it. The kernel releases a flock when its holder dies (SIGKILL included), and the state is
    written with one ``pwrite``, so a killed holder neither blocks the others nor leaves a
    torn state; at worst the bytes it took and did not move are lost to the limit once.
    Times are ``CLOCK_MONOTONIC``, which is one clock for every process of the host.

    ``rate`` in bytes/s (``<= 0``: unlimited) is written into the file: the process that owns
    the setting (the mover, from ``mover.bandwidth_mb_s``) passes it; one that only draws on
    the limit (a transfer) passes ``rate=None`` and follows the file's (unlimited while no
    file exists yet)."""

    def __init__(self, path: str | Path, rate: float | None = None, burst: float | None = None) -> None:
        self.path = Path(path)
        self._burst = burst
        self._threads = threading.Lock()  # flock excludes processes; this, the threads of one process
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.rate = 0.0
        with self._threads:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                state = self._read()
                if rate is not None:
                    now = time.monotonic()
                    state = (float(rate), self._cap(float(rate)) if state is None or state[0] != rate else state[1], now)
                    self._write(state)
                self.rate = state[0] if state is not None else 0.0
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _cap(self, rate: float) -> float:
        return float(self._burst if self._burst is not None else max(64 << 10, rate * 0.25))

    @property
    def burst(self) -> float:
        return self._cap(self.rate)

    @property
    def chunk(self) -> int:
        """Bytes to move between two takes (as :attr:`TokenBucket.chunk`), from the last rate seen."""
        return CHUNK if self.rate <= 0 else int(min(CHUNK, max(64 << 10, self.rate / 10)))

    def _read(self) -> tuple[float, float, float] | None:
        raw = os.pread(self._fd, _STATE.size, 0)
        return _STATE.unpack(raw) if len(raw) == _STATE.size else None

    def _write(self, state: tuple[float, float, float]) -> None:
        os.pwrite(self._fd, _STATE.pack(*state), 0)

    def take(self, n: int, stop: threading.Event | None = None) -> None:
        """Take ``n`` bytes; sleep (outside the lock) until the shared rate allows them."""
        with self._threads:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                state = self._read()
                if state is None or state[0] <= 0:
                    self.rate = 0.0
                    return
                rate, tokens, t = state
                now = time.monotonic()
                tokens = min(self._cap(rate), tokens + max(0.0, now - t) * rate) - n
                self._write((rate, tokens, now))
                self.rate = rate
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        if tokens < 0:
            wait = -tokens / rate
            if stop is not None:
                stop.wait(wait)
            else:
                time.sleep(wait)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def shared_bandwidth(hot_root: str | Path, rate: float | None = None) -> SharedTokenBucket:
    """The host's shared bandwidth limit of the hot tier ``hot_root`` (the data root): the one
    the storage mover sets from ``mover.bandwidth_mb_s``; pass it as ``bucket=`` to
    :func:`appliance.transfer.push` (``rate=None``: follow the mover's setting)."""
    return SharedTokenBucket(Path(hot_root) / ".storage" / BANDWIDTH_FILE, rate)


class MoverLock:
    """An exclusive lock (flock) beside the catalog: one mover works on a catalog at a time.
    The kernel releases it when the holder dies, so a SIGKILLed mover never blocks the next."""

    def __init__(self, catalog_path: Path) -> None:
        self.path = Path(str(catalog_path) + ".lock")
        self._fd = -1
        self._threads = threading.Lock()  # flock excludes processes; this, threads of one process

    def acquire(self, timeout: float = 60.0, stop: threading.Event | None = None) -> bool:
        deadline = time.monotonic() + timeout
        if not self._threads.acquire(timeout=max(0.0, timeout)):
            return False
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._fd = fd
                return True
            except BlockingIOError:
                if time.monotonic() > deadline or (stop is not None and stop.is_set()):
                    os.close(fd)
                    self._threads.release()
                    return False
                time.sleep(0.05)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1
            self._threads.release()

    def holder(self) -> int | None:
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None


def _checksum(store: Store, rel: str) -> tuple[int, str]:
    """(size, CRC32C) of ``rel`` on ``store``, read back from the storage."""
    if store.local is not None:
        return checksum_file(store.local / rel)
    crc = total = 0
    with store.open_read(rel) as f:
        while chunk := f.read(CHUNK):
            crc = _crc32c.crc32c(chunk, crc)
            total += len(chunk)
    return total, f"{crc:08x}"


class Mover:
    """Copies, archives and deletes, recording every step in ``catalog``.

    ``stores`` maps tier -> :class:`Store`; ``report(kind, message, **where)`` is called for
    verification failures and repairs (the manager turns them into alerts); ``after_copy``
    (tests and fault injection only) is called with (store, temp rel) between the copy and
    the verify re-read.
    """

    def __init__(self, catalog: Catalog, stores: dict[str, Store], *, verified_copies: int = 2,
                 bandwidth_mb_s: float = 0.0, stop: threading.Event | None = None,
                 report: Callable[..., None] | None = None, after_copy: Callable[[Store, str], None] | None = None,
                 staging: Path | None = None, bucket: "TokenBucket | SharedTokenBucket | None" = None) -> None:
        self.catalog = catalog
        self.stores = stores
        self.verified_copies = verified_copies
        #: the bandwidth limit: ``bucket`` (the manager's :class:`SharedTokenBucket`, shared with
        #: transfers in other processes), else this process's own at ``bandwidth_mb_s``
        self.bucket = bucket if bucket is not None else TokenBucket(bandwidth_mb_s * 1e6)
        self.stop = stop or threading.Event()
        self._report = report
        self.after_copy = after_copy
        self.staging = staging or catalog.path.parent / "staging"
        self.bytes_copied = 0
        self._count_lock = threading.Lock()

    def report(self, kind: str, message: str, **where) -> None:
        log.warning("%s", message) if kind != "repaired" else log.info("%s", message)
        self.catalog.event(kind, message, run=where.get("run"), rel=where.get("rel"), tier=where.get("tier"))
        if self._report is not None:
            self._report(kind, message, **where)

    # -- bytes ------------------------------------------------------------------------------
    def _stream(self, src: Store, src_rel: str, dst: Store, dst_rel: str) -> tuple[int, str]:
        """Copy at the bandwidth limit; return (size, CRC32C) of the bytes read."""
        crc = total = 0
        with src.open_read(src_rel) as fi:
            fo = dst.open_write(dst_rel)
            try:
                buf = bytearray(CHUNK)
                mv = memoryview(buf)
                while True:
                    if self.stop.is_set():
                        raise MoveInterrupted(f"stopped while copying {src_rel}")
                    n = fi.readinto(mv[: self.bucket.chunk])
                    if not n:
                        break
                    self.bucket.take(n, self.stop)
                    crc = _crc32c.crc32c(mv[:n], crc)
                    off = 0
                    while off < n:
                        w = fo.write(mv[off:n])
                        off += n - off if w is None else w
                    total += n
                    with self._count_lock:
                        self.bytes_copied += n
                dst.finish_write(fo)
            except BaseException:
                fo.close()
                dst.remove(dst_rel)
                raise
        return total, f"{crc:08x}"

    def best_source(self, f: FileRow, copies: dict[str, CopyRow], exclude: tuple[str, ...] = ()) -> str | None:
        """The tier to read ``f`` from: a verified copy, hot first."""
        for tier in TIER_PREFERENCE:
            c = copies.get(tier)
            if tier not in exclude and tier in self.stores and c is not None and c.state == "verified":
                return tier
        return None

    # -- a verified copy -------------------------------------------------------------------
    def copy(self, f: FileRow, src_tier: str, dst_tier: str, dst_rel: str | None = None) -> None:
        """Copy ``f`` from ``src_tier`` to ``dst_tier`` and record it verified (see module doc).
        Raises :class:`SourceCorrupt`, :class:`VerifyFailed` or :class:`MoveInterrupted`;
        in every case no temp file is left and nothing is deleted."""
        src, dst = self.stores[src_tier], self.stores[dst_tier]
        src_rel = self.catalog.copies(f.id)[src_tier].url
        dst_rel = dst_rel or f.rel
        tmp = Store.temp_rel(dst_rel)
        self.catalog.set_copy(f.id, dst_tier, "copying", url=dst_rel, tmp=tmp, attempt=True)
        try:
            size, crc = self._stream(src, src_rel, dst, tmp)
        except FileNotFoundError:
            self.catalog.set_copy(f.id, src_tier, "corrupt", error="missing")
            self.catalog.set_copy(f.id, dst_tier, "copying", tmp=None)
            self.report("verify_failed", f"{src.display(src_rel)}: the {src_tier} copy of {f.rel} is missing; marked corrupt", run=f.run, rel=f.rel, tier=src_tier)
            raise SourceCorrupt(f"{f.rel}: {src_tier} copy missing") from None
        except MoveInterrupted:
            self.catalog.set_copy(f.id, dst_tier, "copying", tmp=None)
            raise
        if (size, crc) != (f.size, f.crc32c):
            dst.remove(tmp)
            self.catalog.set_copy(f.id, src_tier, "corrupt", error=f"read {size} bytes CRC32C {crc}, catalog {f.size} bytes {f.crc32c}")
            self.catalog.set_copy(f.id, dst_tier, "copying", tmp=None)
            self.report("verify_failed", f"{src.display(src_rel)}: the {src_tier} copy of {f.rel} reads {size} bytes CRC32C {crc}, the catalog says {f.size} bytes {f.crc32c}; marked corrupt", run=f.run, rel=f.rel, tier=src_tier)
            raise SourceCorrupt(f"{f.rel}: {src_tier} copy does not match the catalog")
        try:
            if self.after_copy is not None:
                self.after_copy(dst, tmp)
            dst.drop_cache(tmp)
            size2, crc2 = _checksum(dst, tmp)
        except FileNotFoundError:
            size2, crc2 = -1, "missing"
        except BaseException:
            dst.remove(tmp)
            self.catalog.set_copy(f.id, dst_tier, "copying", tmp=None)
            raise
        if (size2, crc2) != (f.size, f.crc32c):
            dst.remove(tmp)
            self.catalog.set_copy(f.id, dst_tier, "corrupt", tmp=None, error=f"verify re-read {size2} bytes CRC32C {crc2}")
            self.report("verify_failed", f"{dst.display(dst_rel)}: the new {dst_tier} copy of {f.rel} re-reads as {size2} bytes CRC32C {crc2}, expected {f.size} bytes {f.crc32c}; discarded (the source is kept)", run=f.run, rel=f.rel, tier=dst_tier)
            raise VerifyFailed(f"{f.rel}: {dst_tier} copy failed verification")
        dst.rename(tmp, dst_rel)
        self.catalog.set_copy(f.id, dst_tier, "verified", url=dst_rel, tmp=None, crc32c=crc2, verified=True)

    def copy_many(self, items: list[tuple[FileRow, str, str]], streams: int = 2) -> list[tuple[FileRow, MoveError | None]]:
        """:meth:`copy` of each (file, source tier, destination tier), ``streams`` at a time:
        one file's fsync and verify re-read overlap the next one's copy. Returns each file
        with None or the :class:`MoveError` it met (the others go on)."""
        from concurrent.futures import ThreadPoolExecutor

        def one(item):
            f, src, dst = item
            try:
                self.copy(f, src, dst)
                return f, None
            except MoveError as exc:
                return f, exc

        if streams <= 1 or len(items) <= 1:
            return [one(it) for it in items]
        # each copy runs in the caller's context (its current span: log lines carry its ids)
        ctxs = [contextvars.copy_context() for _ in items]
        with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="storage-copy") as pool:
            return list(pool.map(lambda ctx, item: ctx.run(one, item), ctxs, items))

    # -- cold: a BagIt package per run and class -------------------------------------------
    def archive(self, run: str, data_class: str, files: list[FileRow]) -> str:
        """Bag ``files`` (one run, one class) on the cold tier; return the bag's path there."""
        import bagit

        cold = self.stores["cold"]
        bag_rel = f"{run}/{data_class}"
        token = f".{data_class}.tmp.{os.getpid()}.{secrets.token_hex(4)}"
        tmp_rel = f"{run}/{token}"
        if cold.local is not None:
            build = cold.local / tmp_rel
        else:
            build = self.staging / f"{run}{token}"
        all_copies = self.catalog.all_copies(run)
        for f in files:
            self.catalog.set_copy(f.id, "cold", "copying", url=f"{bag_rel}/data/{f.rel}", tmp=tmp_rel, attempt=True)
        try:
            build.mkdir(parents=True)
            local = Store(str(build))
            for f in files:
                src_tier = self.best_source(f, all_copies.get(f.id, {}), exclude=("cold",))
                if src_tier is None:
                    raise MoveError(f"{f.rel}: no verified copy to archive from")
                src = self.stores[src_tier]
                src_rel = all_copies[f.id][src_tier].url
                size, crc = self._stream(src, src_rel, local, f.rel)
                if (size, crc) != (f.size, f.crc32c):
                    self.catalog.set_copy(f.id, src_tier, "corrupt", error=f"read {size} bytes CRC32C {crc}")
                    self.report("verify_failed", f"{src.display(src_rel)}: the {src_tier} copy of {f.rel} does not match the catalog (CRC32C {crc}, expected {f.crc32c}); marked corrupt, archive of {run}/{data_class} postponed", run=run, rel=f.rel, tier=src_tier)
                    raise SourceCorrupt(f"{f.rel}: {src_tier} copy does not match the catalog")
            bag = bagit.make_bag(str(build), bag_info={"External-Identifier": f"{run}/{data_class}", "Source-Organization": "flowcell appliance"}, checksums=["sha256"])
            if self.after_copy is not None:
                self.after_copy(local, f"data/{files[0].rel}")
            self._validate_bag(bag, run, data_class, files, local)
            sha = {p[len("data/"):]: h["sha256"] for p, h in bag.entries.items() if p.startswith("data/")}
            if cold.local is None:
                self._upload_dir(local, cold, tmp_rel)
                shutil.rmtree(build)
            if cold.exists(bag_rel):
                cold.remove(bag_rel)  # a stale bag of a failed earlier attempt: none of it is verified
            cold.rename(tmp_rel, bag_rel)
        except BaseException:
            if build.exists():
                shutil.rmtree(build, ignore_errors=True)
            if cold.local is None and cold.exists(tmp_rel):
                cold.remove(tmp_rel)
            for f in files:
                c = self.catalog.copies(f.id).get("cold")
                if c is not None and c.state == "copying":
                    self.catalog.set_copy(f.id, "cold", "copying", tmp=None)
            raise
        with self.catalog.tx() as db:
            now = time.time()
            for f in files:
                db.execute("UPDATE copies SET state='verified', tmp=NULL, crc32c=?, verified_at=?, error=NULL, updated_at=? WHERE file_id=? AND tier='cold'", (f.crc32c, now, now, f.id))
                db.execute("UPDATE files SET sha256=? WHERE id=?", (sha.get(f.rel), f.id))
        return bag_rel

    def _validate_bag(self, bag, run: str, data_class: str, files: list[FileRow], local: Store) -> None:
        import bagit

        try:
            bag.validate()
        except bagit.BagValidationError as exc:
            self.report("verify_failed", f"cold archive {run}/{data_class}: BagIt validation failed ({exc}); discarded, the sources are kept", run=run, tier="cold")
            raise VerifyFailed(f"bag {run}/{data_class}: {exc}") from None
        for f in files:
            local.drop_cache(f"data/{f.rel}")
            size, crc = _checksum(local, f"data/{f.rel}")
            if (size, crc) != (f.size, f.crc32c):
                self.report("verify_failed", f"cold archive {run}/{data_class}: {f.rel} re-reads as CRC32C {crc}, expected {f.crc32c}; discarded, the sources are kept", run=run, rel=f.rel, tier="cold")
                raise VerifyFailed(f"bag {run}/{data_class}: {f.rel} does not match")

    def _upload_dir(self, local: Store, dst: Store, dst_rel: str) -> None:
        """Copy a validated bag to a remote cold store, each file re-read and checked."""
        for rel in local.listdir_files(""):
            size, crc = _checksum(local, rel)
            got = self._stream(local, rel, dst, f"{dst_rel}/{rel}")
            again = _checksum(dst, f"{dst_rel}/{rel}")
            if got != (size, crc) or again != (size, crc):
                raise VerifyFailed(f"{dst.display(dst_rel + '/' + rel)}: upload re-reads as {again}, expected {(size, crc)}")

    def validate_bag(self, run: str, data_class: str) -> list[str]:
        """Problems of the cold bag ``run/data_class`` found by ``bagit`` (local cold tiers)."""
        import bagit

        cold = self.stores["cold"]
        if cold.local is None:
            return []
        try:
            bagit.Bag(str(cold.local / run / data_class)).validate()
        except bagit.BagError as exc:
            return [f"{run}/{data_class}: {exc}"]
        return []

    # -- deletes ----------------------------------------------------------------------------
    def can_delete(self, f: FileRow, tier: str, copies: dict[str, CopyRow] | None = None) -> tuple[bool, str]:
        """Whether ``tier``'s copy may go: enough verified copies elsewhere, each present with
        its size (a stat, not a re-read: the re-reads are the scrubber's)."""
        copies = self.catalog.copies(f.id) if copies is None else copies
        good = []
        for t, c in copies.items():
            if t == tier or c.state != "verified" or t not in self.stores:
                continue
            if self.stores[t].size(c.url) != f.size:
                self.catalog.set_copy(f.id, t, "corrupt", error="missing or wrong size at delete check")
                self.report("verify_failed", f"{self.stores[t].display(c.url)}: the {t} copy of {f.rel} is missing or has the wrong size; marked corrupt", run=f.run, rel=f.rel, tier=t)
                continue
            good.append(t)
        if len(good) < self.verified_copies:
            return False, f"{len(good)} verified copies elsewhere ({', '.join(good) or 'none'}), the policy needs {self.verified_copies}"
        return True, f"verified on {', '.join(good)}"

    def delete(self, f: FileRow, tier: str) -> bool:
        """Delete ``tier``'s copy of ``f`` if :meth:`can_delete`; True when it was deleted."""
        c = self.catalog.copies(f.id).get(tier)
        if c is None or c.state not in ("verified", "deleting", "stale", "corrupt"):
            return False
        ok, why = self.can_delete(f, tier)
        if not ok:
            if c.state == "deleting":
                self.catalog.set_copy(f.id, tier, "verified" if self.stores[tier].exists(c.url) else "deleted")
            log.info("%s: keeping the %s copy: %s", f.rel, tier, why)
            return False
        self.catalog.set_copy(f.id, tier, "deleting")
        self.stores[tier].remove(c.url)
        self.catalog.set_copy(f.id, tier, "deleted")
        return True

    # -- crash recovery ---------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Finish what a crashed mover left: remove temp files of copies in flight (their
        copies are redone by the next pass) and complete decided deletes. Call with the lock."""
        removed = finished = 0
        for f, c in self.catalog.in_state("copying"):
            if c.tmp and c.tier in self.stores:
                store = self.stores[c.tier]
                if store.exists(c.tmp):
                    store.remove(c.tmp)
                    removed += 1
                self.catalog.set_copy(f.id, c.tier, "copying", tmp=None)
        for f, c in self.catalog.in_state("deleting"):
            if self.delete(f, c.tier):
                finished += 1
        # bag builds of a crashed archive whose rows were already cleared
        cold = self.stores.get("cold")
        if cold is not None and cold.local is not None and cold.local.is_dir():
            for run_dir in cold.local.iterdir():
                if run_dir.is_dir():
                    for d in run_dir.iterdir():
                        if d.name.startswith(".") and ".tmp." in d.name and d.is_dir():
                            shutil.rmtree(d, ignore_errors=True)
                            removed += 1
        if self.staging.is_dir():
            shutil.rmtree(self.staging, ignore_errors=True)
        return {"temps_removed": removed, "deletes_finished": finished}


def move_outcome(moved: int, ok: int, failed: int, error: str) -> dict:
    """A move span's figures: bytes and files copied and verified (each copy is re-read at
    its destination before it counts), how many failed, and the outcome."""
    return {"storage.bytes": moved, "storage.files": ok, "storage.files_failed": failed,
            "storage.verified": failed == 0 and ok > 0,
            "storage.outcome": "ok" if not failed else f"failed: {failed} of {ok + failed} files ({error})"}
