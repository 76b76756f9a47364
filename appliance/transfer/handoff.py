"""Verified, resumable transfers of a job's inputs to a destination, and of its outputs back.

A destination is an object store (``s3://bucket/prefix`` through s3fs) or a path on shared
storage (a local path or ``file://``). What is sent is a list of :class:`FileEntry` (path, size,
CRC32C): for a run, exactly what its manifests list as complete (:func:`run_entries`).

Per file, in parts of ``part_size`` bytes:

* S3: one multipart upload per file (files under ``part_size``: one ``PutObject`` with
  ``Content-MD5``). Each part is sent with its MD5 and the store's ETag for it must equal that
  MD5 (S3 checks Content-MD5 on receipt and the part ETag is the part's MD5 for unencrypted and
  SSE-S3 objects); only then is the part recorded in the journal. A killed transfer resumes
  the same upload: ``ListParts`` at the store is matched against the journal and only the
  missing parts are sent. After ``CompleteMultipartUpload`` the whole object is **re-read** and
  its CRC32C compared with the manifest. A multipart object's ETag is not a checksum of the
  object and SSE-KMS ETags are not MD5s at all, so the store's checksum is trusted per part (to
  decide what to skip on resume), never for the object.
* Shared path: the parts are written into one hidden ``.NAME.partial`` file beside the final
  name, each fsynced, dropped from the page cache and re-read before it is recorded; a resumed
  transfer truncates the partial file to its last recorded part. The whole file is re-read
  before the rename to the final name.

A verified file is not sent again: a later transfer checks it cheaply (the object's size and
ETag, or the file's size and mtime, as recorded at verification) and re-sends it if it changed;
``reverify=True`` re-reads every verified file instead. Once every file verified, the
destination gets its own completion marker ``_TRANSFER_COMPLETE.json`` under the transfer's
root there, never in the source folder, so a second destination is never blocked by the first.

Bytes are taken from a :class:`appliance.storage.TokenBucket`: pass the storage mover's own
(``StorageManager.mover.bucket``) so offload and hot-tier eviction share one limit.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import crc32c as _crc32c

from appliance.runfolder import FileEntry, RunFolder
from appliance.storage import TokenBucket
from appliance.transfer._journal import Journal, PartRow
from appliance.transfer.errors import DestinationRefused, SourceMismatch, TransferVerifyFailed

__all__ = ["ALERT_RULE", "COMPLETE_MARKER", "OUTPUTS_MANIFEST", "Destination", "TransferReport", "entries_of_dir",
           "inputs_verified", "publish_outputs", "pull_outputs", "pull_into_staging", "push", "run_entries"]

COMPLETE_MARKER = "_TRANSFER_COMPLETE.json"
ALERT_RULE = "transfer_refused"  #: raised while a destination refuses writes (docs/runbook.md)
OUTPUTS_MANIFEST = "_OUTPUTS.json"
MIN_S3_PART = 5 << 20  #: S3's smallest part (all but the last)
DEFAULT_PART = 8 << 20
_READ = 1 << 20
_REFUSED_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def run_entries(run_dir: str | Path) -> list[FileEntry]:
    """Every file a run folder's manifests list as complete (with the manifests themselves,
    whose own checksums the run manifest holds, so the destination is a readable run folder)."""
    rf = RunFolder(run_dir)
    m = rf.manifest()
    out = list(m.files())
    listed = {e.path for e in out}
    for p in sorted((Path(run_dir) / "Manifest").glob("*.json")):
        rel = f"Manifest/{p.name}"
        if rel not in listed:
            size, crc = _file_crc(p)
            out.append(FileEntry(rel, size, crc))
    return out


def entries_of_dir(root: str | Path, *, exclude: tuple[str, ...] = ()) -> list[FileEntry]:
    """(path, size, CRC32C) of every file under ``root`` (a job's outputs), by relative path."""
    root = Path(root)
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in exclude:
            size, crc = _file_crc(p)
            out.append(FileEntry(rel, size, crc))
    return out


def _file_crc(path: Path) -> tuple[int, str]:
    crc = total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_READ):
            crc = _crc32c.crc32c(chunk, crc)
            total += len(chunk)
    return total, f"{crc:08x}"


def _refused(exc: OSError) -> bool:
    return isinstance(exc, PermissionError) or exc.errno in _REFUSED_ERRNOS


class Destination:
    """Where a transfer goes: ``s3://bucket/prefix`` (``storage_options`` go to s3fs, e.g.
    ``{"client_kwargs": {"endpoint_url": ...}}``; credentials come from the standard AWS chain)
    or a path on shared storage."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        if url.startswith("s3://"):
            import s3fs

            self.kind = "s3"
            self.fs = s3fs.S3FileSystem(**self.storage_options)
            bucket, _, prefix = url[5:].partition("/")
            if not bucket:
                raise ValueError(f"destination {url!r}: no bucket; write s3://BUCKET/PREFIX")
            self.bucket, self.prefix = bucket, prefix.strip("/")
            self.root: Path | None = None
        elif "://" in url and not url.startswith("file://"):
            raise ValueError(f"destination {url!r}: allowed s3://BUCKET/PREFIX, file://PATH or a path")
        else:
            self.kind = "path"
            self.fs = None
            self.root = Path(url[7:] if url.startswith("file://") else url).resolve()

    @property
    def remote(self) -> bool:
        """Bytes read back from here leave a cloud provider (billed as egress)."""
        return self.kind == "s3"

    def child(self, subject: str) -> "Destination":
        """The same store, rooted at ``subject`` below this root (sharing its connection)."""
        sub = object.__new__(Destination)
        sub.__dict__.update(self.__dict__)
        if not subject:
            return sub
        sub.url = f"{self.url}/{subject}"
        if self.kind == "s3":
            sub.prefix = "/".join(x for x in (self.prefix, subject) if x)
        else:
            sub.root = self.root / subject
        return sub

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def display(self, rel: str = "") -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def s3(self, method: str, **kw):
        return self.fs.call_s3(method, **kw)

    # -- small documents (markers, output manifests) ----------------------------------------
    def write_doc(self, rel: str, doc: dict) -> None:
        data = (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()
        if self.kind == "s3":
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            self.s3("put_object", Bucket=self.bucket, Key=self.key(rel), Body=data, ContentMD5=md5)
            return
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.parent / f".{p.name}.tmp.{secrets.token_hex(4)}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(p.parent)

    def read_doc(self, rel: str) -> dict | None:
        try:
            if self.kind == "s3":
                data = self.fs.cat_file(f"{self.bucket}/{self.key(rel)}")
            else:
                data = (self.root / rel).read_bytes()
            doc = json.loads(data)
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def head(self, rel: str) -> tuple[int, str] | None:
        """(size, ETag) of an object, or (size, str(mtime_ns)) of a file; None if absent."""
        try:
            if self.kind == "s3":
                h = self.s3("head_object", Bucket=self.bucket, Key=self.key(rel))
                return int(h["ContentLength"]), str(h["ETag"]).strip('"')
            st = (self.root / rel).stat()
            return st.st_size, str(st.st_mtime_ns)
        except FileNotFoundError:
            return None

    def open_read(self, rel: str):
        if self.kind == "s3":
            return self.fs.open(f"{self.bucket}/{self.key(rel)}", "rb", block_size=_READ * 8, cache_type="none")
        return open(self.root / rel, "rb", buffering=0)

    def read_chunks(self, rel: str, size: int):
        """The bytes of ``rel`` in chunks of ``size``, read from the store (one ranged GET
        each on S3: no HEAD, no read-ahead cache)."""
        if self.kind != "s3":
            with open(self.root / rel, "rb", buffering=0) as f:
                while chunk := f.read(size):
                    yield chunk
            return
        path = f"{self.bucket}/{self.key(rel)}"
        head = self.head(rel)
        if head is None:
            raise FileNotFoundError(f"{self.display(rel)}: not in the store")
        total, offset = head[0], 0
        while offset < total:
            chunk = self.fs.cat_file(path, start=offset, end=min(total, offset + size))
            if not chunk:
                return
            yield chunk
            offset += len(chunk)

    def list_files(self, rel: str = "") -> list[str]:
        if self.kind == "s3":
            base = f"{self.bucket}/{self.key(rel)}".rstrip("/")
            self.fs.invalidate_cache()
            return sorted(p[len(base) + 1:] for p in self.fs.find(base))
        base = self.root / rel
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class TransferReport:
    """What one :func:`push` (or pull) did."""

    key: str
    destination: str
    files: int = 0
    skipped: int = 0  #: already verified there, not sent
    resent: int = 0  #: verified before, but changed or corrupt at the destination: sent again
    parts_sent: int = 0
    parts_reused: int = 0  #: resumed: recorded and still at the store, not sent again
    bytes_sent: int = 0
    bytes_reread: int = 0
    egress_bytes: int = 0
    duration_s: float = 0.0
    verification: str = ""
    sent: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Pusher:
    def __init__(self, journal: Journal, tid: int, dest: Destination, source: Path, part_size: int,
                 bucket: TokenBucket, stop: threading.Event, report: TransferReport,
                 on_part: Callable[[str, int], None] | None) -> None:
        self.j, self.tid, self.dest, self.source, self.part_size = journal, tid, dest, source, part_size
        self.bucket, self.stop, self.rep, self.on_part = bucket, stop, report, on_part
        self.attempt = journal.transfer(report.key)["attempts"]
        self._lock = threading.Lock()
        self.halt = threading.Event()  #: set when another file of this transfer failed

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.rep, k, getattr(self.rep, k) + v)

    # -- reading the source ------------------------------------------------------------------
    def _read_source(self, rel: str, offset: int, size: int) -> bytes:
        with open(self.source / rel, "rb", buffering=0) as f:
            f.seek(offset)
            buf = bytearray()
            while len(buf) < size:
                if self.stop.is_set() or self.halt.is_set():
                    raise InterruptedError(f"transfer stopped while reading {rel}")
                n = min(self.bucket.chunk, size - len(buf))
                self.bucket.take(n, self.stop)
                chunk = f.read(n)
                if not chunk:
                    break
                buf += chunk
        return bytes(buf)

    def _reread(self, rel: str) -> tuple[int, str]:
        crc = total = 0
        for chunk in self.dest.read_chunks(rel, self.part_size):
            self.bucket.take(len(chunk), self.stop)
            crc = _crc32c.crc32c(chunk, crc)
            total += len(chunk)
        self._count(bytes_reread=total, egress_bytes=total if self.dest.remote else 0)
        self.j.add_bytes(self.tid, reread=total, egress=total if self.dest.remote else 0)
        return total, f"{crc:08x}"

    def _sent(self, n: int) -> None:
        self._count(bytes_sent=n)
        self.j.add_bytes(self.tid, sent=n)

    # -- one file --------------------------------------------------------------------------
    def file(self, e: FileEntry, reverify: bool) -> None:
        row = self.j.file(self.tid, e.path)
        if row["state"] == "verified":
            head = self.dest.head(e.path)
            ok = head is not None and head == (e.size, row["etag"])
            if ok and reverify:
                ok = self._reread(e.path) == (e.size, e.crc32c)
            if ok:
                self._count(skipped=1)
                return
            self._count(resent=1)
            self.j.set_file(self.tid, e.path, "pending", error="changed or corrupt at the destination", clear_parts=True)
            row = self.j.file(self.tid, e.path)
        self.j.set_file(self.tid, e.path, "sending", upload_id=row["upload_id"], attempt=True)
        for tries in range(2):
            etag = self._send(e, self.j.file(self.tid, e.path))
            if self._reread(e.path) == (e.size, e.crc32c):
                head = self.dest.head(e.path)
                self.j.set_file(self.tid, e.path, "verified", etag=head[1] if head else etag)
                with self._lock:
                    self.rep.sent.append(e.path)
                return
            if _file_crc(self.source / e.path) != (e.size, e.crc32c):
                self.j.set_file(self.tid, e.path, "failed", error="source does not match its manifest")
                raise SourceMismatch(f"{self.source / e.path}: does not match its manifest entry "
                                     f"({e.size} bytes CRC32C {e.crc32c}); re-write or re-verify the run folder")
            self.j.set_file(self.tid, e.path, "pending", error="destination re-read did not match", clear_parts=True)
            self._discard(e.path)
        raise TransferVerifyFailed(f"{self.dest.display(e.path)}: re-read does not match {e.size} bytes CRC32C "
                                   f"{e.crc32c} after a re-send; check the destination's storage")

    def _discard(self, rel: str) -> None:
        try:
            if self.dest.kind == "s3":
                self.dest.s3("delete_object", Bucket=self.dest.bucket, Key=self.dest.key(rel))
            else:
                (self.dest.root / rel).unlink(missing_ok=True)
        except FileNotFoundError:
            pass

    def _send(self, e: FileEntry, row: dict) -> str:
        if self.dest.kind == "s3":
            if e.size < self.part_size:
                return self._put_small(e)
            return self._multipart(e, row)
        return self._to_path(e, row)

    def _put_small(self, e: FileEntry) -> str:
        data = self._read_source(e.path, 0, e.size)
        md5 = hashlib.md5(data)
        r = self.dest.s3("put_object", Bucket=self.dest.bucket, Key=self.dest.key(e.path), Body=data,
                         ContentMD5=base64.b64encode(md5.digest()).decode())
        self._sent(len(data))
        self._count(parts_sent=1)
        return str(r["ETag"]).strip('"')

    def _multipart(self, e: FileEntry, row: dict) -> str:
        d, key = self.dest, self.dest.key(e.path)
        upload_id = row["upload_id"]
        at_store: dict[int, str] = {}
        if upload_id:
            try:
                marker = 0
                while True:
                    r = d.s3("list_parts", Bucket=d.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker)
                    for p in r.get("Parts", []):
                        at_store[int(p["PartNumber"])] = str(p["ETag"]).strip('"')
                    if not r.get("IsTruncated"):
                        break
                    marker = int(r["NextPartNumberMarker"])
            except (FileNotFoundError, OSError):
                upload_id = None  # the upload was aborted or expired at the store: start over
        if not upload_id:
            upload_id = d.s3("create_multipart_upload", Bucket=d.bucket, Key=key)["UploadId"]
            self.j.set_file(self.tid, e.path, "sending", upload_id=upload_id, clear_parts=True)
        recorded = {p.number: p for p in self.j.parts(self.tid, e.path, upload_id)}
        n_parts = max(1, -(-e.size // self.part_size))
        done: list[dict] = []
        for number in range(1, n_parts + 1):
            offset = (number - 1) * self.part_size
            size = min(self.part_size, e.size - offset)
            p = recorded.get(number)
            if p is not None and p.size == size and at_store.get(number) == p.etag:
                self._count(parts_reused=1)
                done.append({"PartNumber": number, "ETag": f'"{p.etag}"'})
                continue
            data = self._read_source(e.path, offset, size)
            md5 = hashlib.md5(data)
            try:
                r = d.s3("upload_part", Bucket=d.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data,
                         ContentMD5=base64.b64encode(md5.digest()).decode())
            except OSError as exc:
                if isinstance(exc, FileNotFoundError):  # NoSuchUpload: aborted under us
                    self.j.set_file(self.tid, e.path, "pending", upload_id=None, clear_parts=True)
                raise
            etag = str(r["ETag"]).strip('"')
            self._sent(size)
            if etag != md5.hexdigest():
                raise TransferVerifyFailed(f"{d.display(e.path)} part {number}: the store's ETag {etag} is not the "
                                           f"MD5 {md5.hexdigest()} of what was sent; the part will be sent again")
            self.j.add_part(self.tid, e.path, upload_id,
                            PartRow(number, offset, size, etag, f"{_crc32c.crc32c(data):08x}", self.attempt))
            self._count(parts_sent=1)
            done.append({"PartNumber": number, "ETag": f'"{etag}"'})
            if self.on_part is not None:
                self.on_part(e.path, number)
        r = d.s3("complete_multipart_upload", Bucket=d.bucket, Key=key, UploadId=upload_id,
                 MultipartUpload={"Parts": done})
        self.j.set_file(self.tid, e.path, "sending", upload_id=None)
        return str(r.get("ETag", "")).strip('"')

    def _to_path(self, e: FileEntry, row: dict) -> str:
        final = self.dest.root / e.path
        partial = final.parent / f".{final.name}.partial"
        final.parent.mkdir(parents=True, exist_ok=True)
        upload_id = row["upload_id"] if partial.exists() else None
        if not upload_id:
            upload_id = f"path-{secrets.token_hex(6)}"
            self.j.set_file(self.tid, e.path, "sending", upload_id=upload_id, clear_parts=True)
            partial.unlink(missing_ok=True)
        recorded = self.j.parts(self.tid, e.path, upload_id)
        good = 0
        for p in recorded:  # contiguous from offset 0
            if p.offset != good:
                break
            good += p.size
        n_parts = max(1, -(-e.size // self.part_size))
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(fd).st_size < good:  # shorter than recorded: the recorded parts are gone
                good = 0
                self.j.set_file(self.tid, e.path, "sending", upload_id=upload_id, clear_parts=True)
            os.ftruncate(fd, good)
            for number in range(1, n_parts + 1):
                offset = (number - 1) * self.part_size
                size = min(self.part_size, e.size - offset)
                if offset + size <= good:
                    self._count(parts_reused=1)
                    continue
                data = self._read_source(e.path, offset, size)
                crc = f"{_crc32c.crc32c(data):08x}"
                mv, done = memoryview(data), 0
                while done < size:  # a short write (a full disk) is retried: it then raises ENOSPC
                    done += os.pwrite(fd, mv[done:], offset + done)
                os.fsync(fd)
                os.posix_fadvise(fd, offset, size, os.POSIX_FADV_DONTNEED)
                self._sent(size)
                back = os.pread(fd, size, offset)
                if f"{_crc32c.crc32c(back):08x}" != crc:
                    raise TransferVerifyFailed(f"{partial}: part {number} re-reads differently from what was written")
                self.j.add_part(self.tid, e.path, upload_id, PartRow(number, offset, size, crc, crc, self.attempt))
                self._count(parts_sent=1)
                if self.on_part is not None:
                    self.on_part(e.path, number)
        finally:
            os.close(fd)
        os.replace(partial, final)
        _fsync_dir(final.parent)
        self.j.set_file(self.tid, e.path, "sending", upload_id=None)
        return str(final.stat().st_mtime_ns)


def _marker_doc(subject: str, key: str, entries: list[FileEntry]) -> dict:
    listing = hashlib.sha256("\n".join(f"{e.path}\t{e.size}\t{e.crc32c}" for e in sorted(entries, key=lambda e: e.path)).encode())
    return {"subject": subject, "key": key, "files": len(entries), "bytes": sum(e.size for e in entries),
            "listing_sha256": listing.hexdigest(), "checksum": "crc32c", "verified_at": time.time()}


def inputs_verified(dest: Destination, subject: str, entries: Iterable[FileEntry]) -> bool:
    """Whether ``dest`` holds this exact file list, verified (its completion marker matches):
    the gate a job's start checks, so a job never starts on inputs that have not verified."""
    entries = list(entries)
    doc = dest.read_doc(f"{subject}/{COMPLETE_MARKER}" if subject else COMPLETE_MARKER)
    return doc is not None and doc.get("listing_sha256") == _marker_doc(subject, "", entries)["listing_sha256"]


def push(source: str | Path, entries: Iterable[FileEntry], dest: Destination, journal: Journal, *,
         subject: str | None = None, job_id: int | None = None, direction: str = "push",
         part_size: int = DEFAULT_PART, bucket: TokenBucket | None = None, reverify: bool = False,
         stop: threading.Event | None = None, on_alert: Callable[[dict], None] | None = None,
         on_part: Callable[[str, int], None] | None = None, streams: int = 4) -> TransferReport:
    """Send ``entries`` (paths relative to ``source``) to ``dest`` under ``subject/`` (default:
    the source folder's name), resuming whatever an earlier call left, verify every file there,
    then write the destination's completion marker. See the module doc.

    Raises :class:`DestinationRefused` (the destination is full, over quota, read-only or denies
    access: retry later; ``on_alert`` is called), :class:`SourceMismatch` (a source file is not
    what its manifest says) or :class:`TransferVerifyFailed`. ``streams`` files move at once
    (each file's parts in order, so a resume has one partial upload per file)."""
    source = Path(source)
    entries = sorted(entries, key=lambda e: e.path)
    subject = source.name if subject is None else subject
    if dest.kind == "s3" and part_size < MIN_S3_PART:
        raise ValueError(f"part_size {part_size}: S3 parts are at least {MIN_S3_PART} bytes (5 MiB) except the last")
    sub = dest.child(subject)
    key = f"{direction}:{dest.url}:{subject}"
    tid = journal.begin(key, direction, dest.url, subject, job_id, [(e.path, e.size, e.crc32c) for e in entries])
    rep = TransferReport(key, sub.url, files=len(entries))
    pusher = _Pusher(journal, tid, sub, source, part_size, bucket or TokenBucket(0), stop or threading.Event(), rep, on_part)
    verification = "re-read CRC32C" + (" + part MD5/ETag" if dest.kind == "s3" else " + part re-read")
    t0 = time.monotonic()
    try:
        if streams <= 1 or len(entries) <= 1:
            for e in entries:
                pusher.file(e, reverify)
        else:
            with ThreadPoolExecutor(streams, thread_name_prefix="transfer") as ex:
                futures = [ex.submit(pusher.file, e, reverify) for e in entries]
                try:
                    for f in futures:
                        f.result()
                except BaseException:
                    pusher.halt.set()  # the others stop at their next chunk; their recorded parts stay
                    for f in futures:
                        f.cancel()
                    raise
        sub.write_doc(COMPLETE_MARKER, _marker_doc(subject, key, entries))
    except OSError as exc:
        rep.duration_s = time.monotonic() - t0
        journal.add_bytes(tid, duration_s=rep.duration_s)
        if _refused(exc):
            msg = (f"transfer to {sub.url} refused: {exc}; free space or raise the quota there (or fix its access); "
                   "the job waits and resumes, nothing verified is re-sent and the source is kept")
            journal.finish(tid, "waiting", verification, msg)
            if on_alert is not None:
                on_alert({"rule": ALERT_RULE, "action": "raised", "severity": "warning", "subject": sub.url, "message": msg})
            raise DestinationRefused(msg) from exc
        journal.finish(tid, "failed", verification, f"{type(exc).__name__}: {exc}")
        raise
    except BaseException as exc:
        rep.duration_s = time.monotonic() - t0
        journal.add_bytes(tid, duration_s=rep.duration_s)
        journal.finish(tid, "failed", verification, f"{type(exc).__name__}: {exc}")
        raise
    rep.duration_s = time.monotonic() - t0
    rep.verification = verification
    journal.add_bytes(tid, duration_s=rep.duration_s)
    journal.finish(tid, "verified", verification)
    if on_alert is not None:
        on_alert({"rule": ALERT_RULE, "action": "cleared", "severity": "warning", "subject": sub.url,
                  "message": f"transfer to {sub.url} verified"})
    return rep


# -- outputs: published by the remote job, pulled back and committed locally -------------------

def publish_outputs(local_dir: str | Path, dest: Destination, journal: Journal, *, subject: str,
                    job_id: int | None = None, bucket: TokenBucket | None = None, part_size: int = DEFAULT_PART) -> TransferReport:
    """What a remote job does with its outputs: push them to ``dest`` under ``subject`` (verified,
    as inputs are), then write ``_OUTPUTS.json`` listing each with its CRC32C."""
    entries = entries_of_dir(local_dir)
    rep = push(local_dir, entries, dest, journal, subject=subject, job_id=job_id, direction="publish",
               bucket=bucket, part_size=part_size)
    doc = {"subject": subject, "files": [{"path": e.path, "size": e.size, "crc32c": e.crc32c} for e in entries]}
    dest.write_doc(f"{subject}/{OUTPUTS_MANIFEST}", doc)
    return rep


def pull_into_staging(params: dict, ctx) -> dict:
    """A job function (``appliance.transfer:pull_into_staging``) run by the offload job wrapper:
    download the outputs ``params["subject"]`` lists in its ``_OUTPUTS.json`` from
    ``params["url"]`` into the staging folder, verifying each CRC32C; the wrapper then commits
    them with ``_SUCCESS.json`` and one rename."""
    from appliance.offload.errors import TransientJobError

    dest = Destination(params["url"], params.get("storage_options"))
    subject = params["subject"]
    doc = dest.read_doc(f"{subject}/{OUTPUTS_MANIFEST}")
    if doc is None:
        raise TransientJobError(f"{dest.display(subject)}: no {OUTPUTS_MANIFEST} yet; the remote job has not published its outputs")
    bucket = ctx.extra.get("bucket") or TokenBucket(float(params.get("bandwidth_mb_s", 0)) * 1e6)
    total = 0
    for f in doc["files"]:
        rel, size, want = f["path"], int(f["size"]), f["crc32c"]
        out = Path(ctx.staging_dir) / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        crc = n = 0
        with dest.open_read(f"{subject}/{rel}") as fi, open(out, "wb") as fo:
            while chunk := fi.read(_READ * 8):
                bucket.take(len(chunk))
                crc = _crc32c.crc32c(chunk, crc)
                n += len(chunk)
                fo.write(chunk)
            fo.flush()
            os.fsync(fo.fileno())
        if (n, f"{crc:08x}") != (size, want):
            raise TransferVerifyFailed(f"{dest.display(f'{subject}/{rel}')}: pulled {n} bytes CRC32C {crc:08x}, "
                                       f"{OUTPUTS_MANIFEST} says {size} bytes {want}; pulled again at the next attempt")
        total += n
    return {"pulled_files": len(doc["files"]), "pulled_bytes": total, "egress_bytes": total if dest.remote else 0,
            "source": dest.display(subject), "verification": "CRC32C of every byte pulled"}


def pull_outputs(url: str, subject: str, *, job_id: int, key: str, output_dir: str | Path, data_root: str | Path,
                 storage_options: dict | None = None, journal: Journal | None = None, attempt: int = 1,
                 bandwidth_mb_s: float = 0.0, bucket: TokenBucket | None = None) -> dict:
    """Pull a remote job's outputs into ``output_dir`` through the offload job wrapper
    (:func:`appliance.offload.run_attempt`: staging folder, ``_SUCCESS.json``, one rename), so a
    job that ran (or was pulled) twice leaves one correct output. ``bucket``: a shared bandwidth
    limit (the storage mover's), else ``bandwidth_mb_s``. Returns the wrapper's result."""
    from appliance.offload import AttemptSpec, run_attempt

    spec = AttemptSpec(job_id=job_id, kind="pull", target="appliance.transfer:pull_into_staging",
                       params={"url": url, "subject": subject, "storage_options": storage_options or {},
                               "bandwidth_mb_s": bandwidth_mb_s},
                       attempt=attempt, key=key, data_root=str(data_root), output_dir=str(output_dir))
    t0 = time.monotonic()
    done = run_attempt(spec, {"bucket": bucket} if bucket is not None else None)
    if journal is not None and not done["reused"]:
        r = done["result"]
        tkey = f"pull:{url}:{subject}"
        tid = journal.begin(tkey, "pull", url, subject, job_id, [])
        journal.add_bytes(tid, sent=0, reread=r["pulled_bytes"], egress=r["egress_bytes"], duration_s=time.monotonic() - t0)
        journal.finish(tid, "verified", r["verification"])
    return done
