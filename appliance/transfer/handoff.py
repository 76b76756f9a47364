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
  transfer keeps every recorded part (parts go in parallel, so they need not be contiguous)
  and writes the others. The whole file is re-read before the rename to the final name.

The parts of a large file go in parallel (``part_streams``), each recorded as the store
acknowledges it. The verification re-read of an object is one streamed ``GetObject`` through a
botocore client of the same endpoint and credentials (s3fs's single event-loop thread is the
slow part for large bodies); everything else goes through s3fs.

A verified file is not sent again: a later transfer checks it cheaply (the object's size and
ETag, or the file's size and mtime, as recorded at verification) and re-sends it if it changed;
``reverify=True`` re-reads every verified file instead. Once every file verified, the
destination gets its own completion marker ``_TRANSFER_COMPLETE.json`` under the transfer's
root there, never in the source folder, so a second destination is never blocked by the first.

Bytes are taken from a bandwidth limit: pass :func:`appliance.storage.shared_bandwidth` of the
data root (the storage mover's, shared across processes) so offload and hot-tier eviction
share one limit. Each transfer can be a tracing span (``tracer=``, :mod:`appliance.transfer._trace`).
"""

from __future__ import annotations

import base64
import contextlib
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

from appliance.runfolder import FileEntry, RunFolder, fsync_dir
from appliance.storage import TokenBucket
from appliance.transfer._journal import Journal, PartRow
from appliance.transfer._trace import transfer_span
from appliance.transfer.errors import DestinationRefused, SourceMismatch, TransferVerifyFailed

__all__ = ["ALERT_RULE", "COMPLETE_MARKER", "OUTPUTS_MANIFEST", "Destination", "TransferReport", "entries_of_dir",
           "fetch_file", "inputs_verified", "publish_outputs", "pull_into_staging", "push", "run_entries"]

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
    from appliance.runfolder.completion import COMPLETION_STATUS
    from appliance.runfolder.layout import COPY_COMPLETE, RTA_COMPLETE

    extra = [f"Manifest/{p.name}" for p in sorted((Path(run_dir) / "Manifest").glob("*.json"))]
    # the completion markers come after the run manifest (so it cannot list them): without them
    # the copy is not a complete run folder to whoever reads it there
    extra += [name for name in (RTA_COMPLETE, COPY_COMPLETE, COMPLETION_STATUS) if (Path(run_dir) / name).is_file()]
    for rel in extra:
        if rel not in listed:
            size, crc = _file_crc(Path(run_dir) / rel)
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
            self._client = None  #: botocore, for re-reads (:meth:`_sync_s3`), made when first needed
            self._client_lock = threading.Lock()
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
        fsync_dir(p.parent)

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
        """The bytes of ``rel`` in chunks of ``size``, read from the store: on S3 one streamed
        ``GetObject`` of the whole object (no HEAD, no ranges, no cache), through a botocore
        client of the same endpoint and credentials as s3fs's (:meth:`_sync_s3`)."""
        if self.kind != "s3":
            with open(self.root / rel, "rb", buffering=0) as f:
                while chunk := f.read(size):
                    yield chunk
            return
        from botocore.exceptions import BotoCoreError, ClientError
        from s3fs.errors import translate_boto_error

        try:
            body = self._sync_s3().get_object(Bucket=self.bucket, Key=self.key(rel))["Body"]
        except ClientError as exc:
            raise translate_boto_error(exc) from None
        except BotoCoreError as exc:
            raise OSError(f"{self.display(rel)}: {exc}") from None
        try:
            yield from body.iter_chunks(size)
        finally:
            body.close()

    def _sync_s3(self):
        """A (thread-safe) botocore S3 client for the verification re-reads: s3fs runs every
        request of a process on one asyncio thread, where receiving large bodies is CPU-bound
        (a whole 64 MB GET measured 2 to 3x slower than botocore's); made from the same
        ``storage_options`` (endpoint, region, keys if given, else the standard AWS chain)."""
        with self._client_lock:
            if self._client is None:
                so = self.storage_options
                ck = dict(so.get("client_kwargs") or {})
                kw = {k: ck[k] for k in ("endpoint_url", "region_name", "verify") if k in ck}
                for ours, theirs in (("key", "aws_access_key_id"), ("secret", "aws_secret_access_key"),
                                     ("token", "aws_session_token")):
                    if so.get(ours):
                        kw[theirs] = so[ours]
                config = dict(so.get("config_kwargs") or {})
                config.setdefault("max_pool_connections", 16)
                self._client = _botocore_client(kw, config)
            return self._client

    def list_files(self, rel: str = "") -> list[str]:
        if self.kind == "s3":
            base = f"{self.bucket}/{self.key(rel)}".rstrip("/")
            self.fs.invalidate_cache()
            return sorted(p[len(base) + 1:] for p in self.fs.find(base))
        base = self.root / rel
        return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file())


_CLIENTS: dict[str, object] = {}
_CLIENTS_LOCK = threading.Lock()


def _botocore_client(kw: dict, config: dict):
    """One botocore S3 client per endpoint and settings in this process (making one loads the
    service model: about 0.1 s, too much to pay per transfer); botocore clients are thread-safe."""
    key = repr(sorted(kw.items())) + repr(sorted(config.items()))
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(key)
        if client is None:
            import botocore.config
            import botocore.session

            client = _CLIENTS[key] = botocore.session.get_session().create_client(
                "s3", config=botocore.config.Config(**config), **kw)
        return client


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
    """One push: sends files (``streams`` at a time) and the parts of each file (at most
    ``streams`` parts in flight across the push, on a pool of their own), recording each part in
    the journal as the store acknowledges it, so a resume sends only the parts not recorded."""

    def __init__(self, journal: Journal, tid: int, dest: Destination, source: Path, part_size: int,
                 bucket: TokenBucket, stop: threading.Event, report: TransferReport,
                 on_part: Callable[[str, int], None] | None, part_streams: int = 1) -> None:
        self.j, self.tid, self.dest, self.source, self.part_size = journal, tid, dest, source, part_size
        self.bucket, self.stop, self.rep, self.on_part = bucket, stop, report, on_part
        self.attempt = journal.transfer(report.key)["attempts"]
        self._lock = threading.Lock()
        self.halt = threading.Event()  #: set when another file of this transfer failed
        self.parts = ThreadPoolExecutor(part_streams, thread_name_prefix="transfer-part") if part_streams > 1 else None

    def close(self) -> None:
        if self.parts is not None:
            self.parts.shutdown(wait=True, cancel_futures=True)

    def _count(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self.rep, k, getattr(self.rep, k) + v)

    def _each(self, fn: Callable[[int], object], numbers: list[int]) -> list:
        """``fn(number)`` for every part number, on the part pool when there is one; on the
        first failure the others stop at their next chunk and the failure is raised."""
        if self.parts is None or len(numbers) <= 1:
            return [fn(n) for n in numbers]
        futures = [self.parts.submit(fn, n) for n in numbers]
        try:
            return [f.result() for f in futures]
        except BaseException:
            self.halt.set()
            for f in futures:
                f.cancel()
            for f in futures:  # let the running ones stop before the file's state changes
                if not f.cancelled():
                    try:
                        f.result()
                    except BaseException:
                        pass
            raise

    # -- reading the source ------------------------------------------------------------------
    def _read_source(self, rel: str, offset: int, size: int) -> bytes:
        with open(self.source / rel, "rb", buffering=0) as f:
            f.seek(offset)
            if isinstance(self.bucket, TokenBucket) and self.bucket.rate <= 0:  # unlimited for good: one read, no copy
                if self.stop.is_set() or self.halt.is_set():
                    raise InterruptedError(f"transfer stopped while reading {rel}")
                return f.read(size)
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
        """(size, CRC32C) of ``rel`` read back from the destination; the bytes are counted in
        the report (the caller records them in the journal)."""
        crc = total = 0
        for chunk in self.dest.read_chunks(rel, self.part_size):
            self.bucket.take(len(chunk), self.stop)
            crc = _crc32c.crc32c(chunk, crc)
            total += len(chunk)
        self._count(bytes_reread=total, egress_bytes=total if self.dest.remote else 0)
        return total, f"{crc:08x}"

    def _egress(self, n: int) -> int:
        return n if self.dest.remote else 0

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
                got = self._reread(e.path)
                self.j.add_bytes(self.tid, reread=got[0], egress=self._egress(got[0]))
                ok = got == (e.size, e.crc32c)
            if ok:
                self._count(skipped=1)
                return
            self._count(resent=1)
            self.j.set_file(self.tid, e.path, "pending", error="changed or corrupt at the destination", clear_parts=True)
            row = self.j.file(self.tid, e.path)
        self.j.set_file(self.tid, e.path, "sending", upload_id=row["upload_id"], attempt=True)
        for tries in range(2):
            etag = self._send(e, self.j.file(self.tid, e.path))
            got = self._reread(e.path)
            if got == (e.size, e.crc32c):
                # the ETag (or mtime) the store gave for what was just sent and verified: what the
                # cheap check of a later transfer compares (no HEAD needed here)
                self.j.set_file(self.tid, e.path, "verified", etag=etag, reread=got[0], egress=self._egress(got[0]))
                with self._lock:
                    self.rep.sent.append(e.path)
                return
            self.j.add_bytes(self.tid, reread=got[0], egress=self._egress(got[0]))
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
        etags: dict[int, str] = {}
        missing = []
        for number in range(1, n_parts + 1):
            size = min(self.part_size, e.size - (number - 1) * self.part_size)
            p = recorded.get(number)
            if p is not None and p.size == size and at_store.get(number) == p.etag:
                self._count(parts_reused=1)
                etags[number] = p.etag
            else:
                missing.append(number)

        def send(number: int) -> None:
            offset = (number - 1) * self.part_size
            size = min(self.part_size, e.size - offset)
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
            if etag != md5.hexdigest():
                self._sent(size)
                raise TransferVerifyFailed(f"{d.display(e.path)} part {number}: the store's ETag {etag} is not the "
                                           f"MD5 {md5.hexdigest()} of what was sent; the part will be sent again")
            self.j.add_part(self.tid, e.path, upload_id,
                            PartRow(number, offset, size, etag, f"{_crc32c.crc32c(data):08x}", self.attempt), sent=size)
            self._count(bytes_sent=size, parts_sent=1)
            etags[number] = etag
            if self.on_part is not None:
                self.on_part(e.path, number)

        self._each(send, missing)
        done = [{"PartNumber": n, "ETag": f'"{etags[n]}"'} for n in sorted(etags)]
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
        # each recorded part was fsynced and re-read before it was recorded: it is in the partial
        # file, wherever it lies (parts go in parallel, so the recorded ones need not be contiguous)
        recorded = {p.number: p for p in self.j.parts(self.tid, e.path, upload_id)}
        n_parts = max(1, -(-e.size // self.part_size))
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if recorded and os.fstat(fd).st_size < max(p.offset + p.size for p in recorded.values()):
                recorded = {}  # shorter than recorded: the recorded parts are gone
                self.j.set_file(self.tid, e.path, "sending", upload_id=upload_id, clear_parts=True)
            missing = []
            for number in range(1, n_parts + 1):
                offset = (number - 1) * self.part_size
                p = recorded.get(number)
                if p is not None and (p.offset, p.size) == (offset, min(self.part_size, e.size - offset)):
                    self._count(parts_reused=1)
                else:
                    missing.append(number)

            def write(number: int) -> None:
                offset = (number - 1) * self.part_size
                size = min(self.part_size, e.size - offset)
                data = self._read_source(e.path, offset, size)
                crc = f"{_crc32c.crc32c(data):08x}"
                mv, done = memoryview(data), 0
                while done < size:  # a short write (a full disk) is retried: it then raises ENOSPC
                    done += os.pwrite(fd, mv[done:], offset + done)
                os.fsync(fd)
                os.posix_fadvise(fd, offset, size, os.POSIX_FADV_DONTNEED)
                back = os.pread(fd, size, offset)
                if f"{_crc32c.crc32c(back):08x}" != crc:
                    self._sent(size)
                    raise TransferVerifyFailed(f"{partial}: part {number} re-reads differently from what was written")
                self.j.add_part(self.tid, e.path, upload_id, PartRow(number, offset, size, crc, crc, self.attempt), sent=size)
                self._count(bytes_sent=size, parts_sent=1)
                if self.on_part is not None:
                    self.on_part(e.path, number)

            self._each(write, missing)
            os.ftruncate(fd, e.size)  # nothing beyond the file's end (a file sent before at another size)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, final)
        fsync_dir(final.parent)
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
         on_part: Callable[[str, int], None] | None = None, streams: int = 4, part_streams: int | None = None,
         tracer=None, run_id: str | None = None) -> TransferReport:
    """Send ``entries`` (paths relative to ``source``) to ``dest`` under ``subject/`` (default:
    the source folder's name), resuming whatever an earlier call left, verify every file there,
    then write the destination's completion marker. See the module doc.

    Raises :class:`DestinationRefused` (the destination is full, over quota, read-only or denies
    access: retry later; ``on_alert`` is called), :class:`SourceMismatch` (a source file is not
    what its manifest says) or :class:`TransferVerifyFailed`. ``streams`` files move at once, and
    at most ``part_streams`` (default ``streams``) parts of large files are in flight, so one
    large file is sent in parallel too; each part is recorded as the store acknowledges it, so a
    resume sends only the parts not recorded. ``bucket``: the bandwidth limit (e.g.
    :func:`appliance.storage.shared_bandwidth`, shared with the storage mover across processes).
    ``tracer`` (an :class:`appliance.tracing.RunTracer` or an OpenTelemetry tracer): one span
    ``transfer DIRECTION`` for the transfer, a child of run ``run_id``'s span when given."""
    source = Path(source)
    entries = sorted(entries, key=lambda e: e.path)
    subject = source.name if subject is None else subject
    if dest.kind == "s3" and part_size < MIN_S3_PART:
        raise ValueError(f"part_size {part_size}: S3 parts are at least {MIN_S3_PART} bytes (5 MiB) except the last")
    start_ns = time.time_ns()
    sub = dest.child(subject)
    key = f"{direction}:{dest.url}:{subject}"
    tid = journal.begin(key, direction, dest.url, subject, job_id, [(e.path, e.size, e.crc32c) for e in entries])
    rep = TransferReport(key, sub.url, files=len(entries))
    big = sum(1 for e in entries if e.size > part_size)
    pusher = _Pusher(journal, tid, sub, source, part_size, bucket or TokenBucket(0), stop or threading.Event(), rep, on_part,
                     part_streams=(streams if part_streams is None else part_streams) if big else 1)
    verification = "re-read CRC32C" + (" + part MD5/ETag" if dest.kind == "s3" else " + part re-read")

    def ended(state: str, error: str | None = None) -> None:
        rep.duration_s = time.monotonic() - t0
        journal.add_bytes(tid, duration_s=rep.duration_s)
        journal.finish(tid, state, verification, error)
        transfer_span(tracer, direction, start_ns, destination=sub.url, files=len(entries), bytes_sent=rep.bytes_sent,
                      bytes_reread=rep.bytes_reread, egress_bytes=rep.egress_bytes, verification=verification, state=state,
                      error=error, job_id=job_id, run_id=run_id)

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
        pusher.close()
        if _refused(exc):
            msg = (f"transfer to {sub.url} refused: {exc}; free space or raise the quota there (or fix its access); "
                   "the job waits and resumes, nothing verified is re-sent and the source is kept")
            ended("waiting", msg)
            if on_alert is not None:
                on_alert({"rule": ALERT_RULE, "action": "raised", "severity": "warning", "subject": sub.url, "message": msg})
            raise DestinationRefused(msg) from exc
        ended("failed", f"{type(exc).__name__}: {exc}")
        raise
    except BaseException as exc:
        pusher.close()
        ended("failed", f"{type(exc).__name__}: {exc}")
        raise
    pusher.close()
    rep.verification = verification
    ended("verified")
    if on_alert is not None:
        on_alert({"rule": ALERT_RULE, "action": "cleared", "severity": "warning", "subject": sub.url,
                  "message": f"transfer to {sub.url} verified"})
    return rep


# -- outputs: published by the remote job, pulled back and committed locally -------------------

def publish_outputs(local_dir: str | Path, dest: Destination, journal: Journal, *, subject: str,
                    job_id: int | None = None, bucket: TokenBucket | None = None, part_size: int = DEFAULT_PART,
                    tracer=None, run_id: str | None = None) -> TransferReport:
    """What a remote job does with its outputs: push them to ``dest`` under ``subject`` (verified,
    as inputs are), then write ``_OUTPUTS.json`` listing each with its CRC32C. ``tracer``,
    ``run_id``: as for :func:`push` (a ``transfer publish`` span)."""
    entries = entries_of_dir(local_dir)
    rep = push(local_dir, entries, dest, journal, subject=subject, job_id=job_id, direction="publish",
               bucket=bucket, part_size=part_size, tracer=tracer, run_id=run_id)
    doc = {"subject": subject, "files": [{"path": e.path, "size": e.size, "crc32c": e.crc32c} for e in entries]}
    dest.write_doc(f"{subject}/{OUTPUTS_MANIFEST}", doc)
    return rep


def fetch_file(dest: Destination, rel: str, out: str | Path, size: int, crc32c: str, *, bucket: TokenBucket | None = None,
               listed_in: str = "the manifest") -> int:
    """Download ``rel`` from ``dest`` into ``out`` (fsynced), checking its size and CRC32C against
    what ``listed_in`` says; returns the bytes. :class:`TransferVerifyFailed` on a mismatch (the
    partial file is removed; fetched again at the next attempt)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    crc = n = 0
    head = dest.head(rel) if size == 0 else None
    if size == 0 and head is None:
        raise FileNotFoundError(f"{dest.display(rel)}: not in the store")
    # an empty object: a GET of it can be refused (416 on S3); its size says all there is
    with contextlib.nullcontext() if head is not None and head[0] == 0 else dest.open_read(rel) as fi, open(out, "wb") as fo:
        while fi is not None and (chunk := fi.read(_READ * 8)):
            if bucket is not None:
                bucket.take(len(chunk))
            crc = _crc32c.crc32c(chunk, crc)
            n += len(chunk)
            fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    if (n, f"{crc:08x}") != (size, crc32c):
        out.unlink(missing_ok=True)
        raise TransferVerifyFailed(f"{dest.display(rel)}: fetched {n} bytes CRC32C {crc:08x}, {listed_in} says "
                                   f"{size} bytes {crc32c}; fetched again at the next attempt")
    return n


def pull_into_staging(params: dict, ctx) -> dict:
    """A job function (``appliance.transfer:pull_into_staging``) run by the offload job wrapper:
    download the outputs ``params["subject"]`` lists in its ``_OUTPUTS.json`` from
    ``params["url"]`` into the staging folder, verifying each CRC32C; the wrapper then commits
    them with ``_SUCCESS.json`` and one rename (``appliance.offload.cloud.pull_outputs`` runs it)."""
    from appliance.offload.errors import TransientJobError

    dest = Destination(params["url"], params.get("storage_options"))
    subject = params["subject"]
    doc = dest.read_doc(f"{subject}/{OUTPUTS_MANIFEST}")
    if doc is None:
        raise TransientJobError(f"{dest.display(subject)}: no {OUTPUTS_MANIFEST} yet; the remote job has not published its outputs")
    bucket = ctx.extra.get("bucket") or TokenBucket(float(params.get("bandwidth_mb_s", 0)) * 1e6)
    total = 0
    for f in doc["files"]:
        total += fetch_file(dest, f"{subject}/{f['path']}", Path(ctx.staging_dir) / f["path"], int(f["size"]), f["crc32c"],
                            bucket=bucket, listed_in=OUTPUTS_MANIFEST)
    return {"pulled_files": len(doc["files"]), "pulled_bytes": total, "egress_bytes": total if dest.remote else 0,
            "source": dest.display(subject), "verification": "CRC32C of every byte pulled"}
