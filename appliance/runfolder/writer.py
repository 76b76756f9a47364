"""``RunFolderWriter``: writes one run's folder, file by file, crash-safe and idempotent.

Every file goes through :func:`write_atomic` (temp name, fsync, rename, fsync of the
directory). Writing the same content twice gives the same bytes (no clock is read). A file
already listed complete in the manifest is never changed: writing it again with the same
content does nothing, with different content raises. Re-opening a folder (after a crash)
checks it belongs to the same run, removes temp files of dead writers, and continues.

The one exception: with ``interop=`` the per-cycle InterOp files (``InterOp/*MetricsOut.bin``)
are appended, a cycle's records at a time, each append cut back first to the length recorded
after the last whole cycle (:meth:`RunFolderWriter.interop_state`, kept by the caller's
checkpoint, :meth:`RunFolderWriter.resume_interop`); see docs/run-folder.md, "InterOp".
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from appliance.runfolder import formats
from appliance.runfolder import intensities as _intens
from appliance.runfolder import interop as _iop
from appliance.runfolder import manifest as _manifest
from appliance.runfolder._atomic import (
    Written,
    checksum_file,
    crc32c_hex,
    ensure_dir,
    fsync_dir,
    full_error,
    pwrite_all,
    remove_stale_temps,
    write_atomic,
)
from appliance.runfolder.errors import RunFolderError
from appliance.runfolder.layout import (
    COPY_COMPLETE,
    INTENSITIES_INDEX,
    REFERENCE,
    RTA_COMPLETE,
    RUN_MANIFEST,
    RUNINFO,
    Layout,
)
from appliance.runfolder.manifest import FileEntry
from appliance.runfolder.runinfo import RunInfo

Chunks = Callable[[], Iterable[bytes | bytearray | memoryview]]
_COPY = 8 << 20
#: the cycle folder in a file's path (``.../C12.1/s_1_1101.bcl``): the files a cycle manifest lists
_CYCLE_DIR = re.compile(r"/C(\d+)\.1/")


class RunFolderWriter:
    """Writes ``root/<run_id>/`` for ``info``; re-opening an existing folder resumes it.

    ``channels`` names the intensity columns (recorded in the intensities index);
    ``intensities=False`` writes no intensities, and then cycles complete without them.
    Several writers (processes split by tile) may share one folder; whichever calls
    :meth:`complete_cycle` checks that every tile's files are there. ``interop`` (an
    :class:`~appliance.runfolder.InterOpOptions`) also writes the InterOp run metrics and
    RunParameters.xml, and names the channels in RunInfo.xml.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        info: RunInfo,
        *,
        channels: tuple[str, ...] = ("A", "C", "G", "T"),
        intensities: bool = True,
        interop: _iop.InterOpOptions | None = None,
    ) -> None:
        if not isinstance(info, RunInfo):
            raise TypeError(f"info: expected a RunInfo, got {type(info).__name__}")
        if not channels or len(set(channels)) != len(channels):
            raise ValueError(f"channels={channels!r}: must be unique, non-empty channel names")
        self.info = info
        self.layout = Layout(info.lane)
        self.path = Path(root) / info.run_id
        self.channels = tuple(channels)
        self.intensities = intensities
        self._written: dict[str, Written] = {}
        self._clusters: dict[int, int] = {}
        self._no_calls: dict[int, dict[int, str]] = {}  # cycle -> tile -> reason
        self.interop = interop
        # InterOp (docs/run-folder.md): the per-cycle files' lengths as of the cycles appended
        # (``_io_through``); an append starts by cutting its file back to that length
        self._io_through = 0
        self._io_len: dict[str, int] = {rel: 0 for rel in self._io_files()}
        self._io_fds: dict[str, int] = {}
        self._io_pf: dict[int, np.ndarray] = {}
        self._io_truth: dict[int, tuple] = {}

        ensure_dir(self.path)
        runinfo = self.path / RUNINFO
        if runinfo.exists():
            on_disk = formats.decode_runinfo(runinfo.read_bytes())
            if on_disk != info:
                diff = ", ".join(
                    f"{k}: {getattr(on_disk, k)!r} on disk vs {getattr(info, k)!r} given"
                    for k in info.__dataclass_fields__
                    if getattr(on_disk, k) != getattr(info, k)
                )
                raise RunFolderError(
                    f"{self.path} holds a different run ({diff}); use a new run id or move "
                    "that folder away"
                )
        remove_stale_temps(self.path)
        m = _manifest.load(self.path, info.run_id)
        # The cycles whose manifest is final; their entries are read back from the manifest
        # when needed (_listed), not held: a long run would hold one per file it wrote.
        self._complete_cycles: set[int] = set(m.cycles)
        self._entries_cache: dict[int, dict[str, FileEntry]] = {}
        self._run_entries = {e.path: e for e in m.run_files}
        self._run_complete = m.complete
        # InterOp reads the channel names from RunInfo.xml (ImageChannels)
        runinfo_xml = formats.encode_runinfo(info, self.channels if interop is not None else ())
        self._put(RUNINFO, lambda: [runinfo_xml])
        if interop is not None:
            params = formats.encode_run_parameters(info, tile_px=interop.tile_px, pixel_um=interop.pixel_um,
                                                   channels=self.channels, application=interop.application,
                                                   version=interop.version)
            self._put(_iop.RUN_PARAMETERS, lambda: [params])
        if intensities:
            self._put(INTENSITIES_INDEX, lambda: [_intens.encode_index(info, self.channels)])

    # -- public writes ------------------------------------------------------------------------

    def write_locs(self, tile: int, xy) -> None:
        """Cluster positions of ``tile``: float32 (N, 2) of (x, y)."""
        self._tile(tile)
        data = formats.encode_locs(xy)
        self._count(tile, (len(data) - 12) // 8, "locs")
        self._put(self.layout.locs(tile), lambda: [data])

    def write_filter(self, tile: int, passed) -> None:
        """Pass-filter flags of ``tile``: bool (N,)."""
        self._tile(tile)
        data = formats.encode_filter(passed)
        self._count(tile, len(data) - 12, "filter")
        self._put(self.layout.filter(tile), lambda: [data])
        if self.interop is not None:
            self._io_pf.pop(tile, None)
            self._write_tile_metrics()

    def write_bcl(self, tile: int, cycle: int, bases, quals) -> None:
        """Base calls of ``tile`` at ``cycle``: bases uint8 (N,) 0..3 = ACGT, 4 = no-call;
        quals uint8 (N,) Phred."""
        self._tile(tile)
        self._cycle(cycle)
        data = formats.encode_bcl(bases, quals)
        self._count(tile, len(data) - 4, f"bcl of cycle {cycle}")
        self._put(self.layout.bcl(tile, cycle), lambda: [data])

    def clusters(self, tile: int) -> int | None:
        """The cluster count of ``tile`` (from what was written, or from disk); None before any file."""
        self._tile(tile)
        n = self._clusters.get(tile)
        return n if n is not None else self._count_on_disk(tile)

    def write_no_calls(self, tile: int, cycle: int, reason: str) -> None:
        """``tile`` at ``cycle`` as all no-calls (a frame that could not be used, e.g. one
        quarantined for a checksum mismatch); ``reason`` goes into the cycle's manifest
        (``no_calls``). Needs the tile's cluster count (its locs written first)."""
        n = self.clusters(tile)
        if n is None:
            raise RunFolderError(f"tile {tile}: no-calls for cycle {cycle} need the tile's clusters; write its locs first")
        self.note_no_calls(tile, cycle, reason)
        self.write_bcl(tile, cycle, np.full(n, formats.NO_CALL, np.uint8), np.zeros(n, np.uint8))

    def note_no_calls(self, tile: int, cycle: int, reason: str) -> None:
        """Name ``tile`` at ``cycle`` in the cycle's manifest (``no_calls``) with ``reason``:
        its calls are no-calls for a cause upstream (frames lost at the camera, a frame
        quarantined before the base caller). The BCL itself is written as usual."""
        self._no_calls.setdefault(cycle, {})[tile] = reason

    def write_intensities(self, tile: int, cycle: int, intensities) -> None:
        """Cluster intensities of ``tile`` at ``cycle``: float32 (N, channels)."""
        if not self.intensities:
            raise RunFolderError(
                "this writer was opened with intensities=False; open it with "
                "intensities=True to write intensities"
            )
        self._tile(tile)
        self._cycle(cycle)
        head, arr = _intens.encode_intensities(intensities, len(self.channels))
        self._count(tile, arr.shape[0], f"intensities of cycle {cycle}")
        self._put(self.layout.intensities(tile, cycle), lambda: [head, arr], len(head) + arr.nbytes)

    def write_reference(self, fasta: bytes | bytearray | memoryview | str | os.PathLike) -> None:
        """The reference genome (FASTA) of a synthetic run, from bytes or a file path."""
        if isinstance(fasta, (bytes, bytearray, memoryview)):
            data = bytes(fasta)
            if not data.startswith(b">"):
                raise ValueError(
                    "fasta: FASTA content must start with '>' (a sequence header line)"
                )
            self._put(REFERENCE, lambda: [data])
            return
        src = Path(fasta)
        if not src.is_file():
            raise ValueError(
                f"fasta: {src} is not a file; pass FASTA bytes or the path of a FASTA file"
            )
        with open(src, "rb") as f:
            if f.read(1) != b">":
                raise ValueError(f"fasta: {src} does not start with '>'; not a FASTA file")

        def chunks():
            with open(src, "rb") as f:
                while b := f.read(_COPY):
                    yield b

        self._put(REFERENCE, chunks, src.stat().st_size)

    # -- completion ---------------------------------------------------------------------------

    def cycle_files(self, cycle: int) -> list[str]:
        """The files (relative paths) a complete ``cycle`` consists of."""
        self._cycle(cycle)
        files = [self.layout.bcl(t, cycle) for t in self.info.tiles]
        if self.intensities:
            files += [self.layout.intensities(t, cycle) for t in self.info.tiles]
        return files

    def missing(self, cycle: int) -> list[str]:
        """The files of ``cycle`` not written yet (empty when it can be completed)."""
        return [p for p in self.cycle_files(cycle) if not (self.path / p).is_file()]

    def complete_cycle(self, cycle: int) -> None:
        """List ``cycle``'s files (every tile) with checksums in its manifest; raise
        :class:`RunFolderError` naming the missing files if a tile is not written yet.
        Completing a complete cycle again does nothing."""
        missing = self.missing(cycle)
        if missing:
            raise RunFolderError(
                f"cycle {cycle} cannot be completed: {len(missing)} file(s) not "
                f"written yet: {', '.join(missing)}"
            )
        if cycle not in self._complete_cycles:
            if self._run_complete:
                raise RunFolderError(
                    f"{self.path}: the run is complete; nothing is written after complete()"
                )
            entries = [self._entry(p) for p in self.cycle_files(cycle)]
            data = _manifest.encode_cycle(self.info.run_id, cycle, entries, self._no_calls.get(cycle))
            self._put(Layout.cycle_manifest(cycle), lambda: [data])
            self._complete_cycles.add(cycle)
            self._no_calls.pop(cycle, None)  # in the manifest now
            for e in entries:  # listed now: what this writer wrote of them is not needed again
                self._written.pop(e.path, None)
        self._interop_append()
        # (also on a repeat: a crash may have come between the manifest and the marker)
        read = self.info.read_of_cycle(cycle)
        if all(c in self._complete_cycles for c in self.info.read_cycles(read)):
            self._marker(Layout.read_complete(read))

    @property
    def complete_cycles(self) -> tuple[int, ...]:
        return tuple(sorted(self._complete_cycles))

    @property
    def is_complete(self) -> bool:
        return self._run_complete

    def complete(self) -> None:
        """Finalise: write the run manifest, then the completion markers (RTAComplete.txt,
        CopyComplete.txt). Needs every cycle complete and every tile's locs and filter.
        Nothing is written after; completing again does nothing."""
        if self._run_complete:
            self._markers()  # a crash may have come between the run manifest and the markers
            return
        todo = [c for c in range(1, self.info.n_cycles + 1) if c not in self._complete_cycles]
        if todo:
            raise RunFolderError(
                f"the run cannot be completed: cycle(s) {_ranges(todo)} are not "
                "complete; call complete_cycle() for each first"
            )
        self._interop_append()
        run_files = [RUNINFO]
        for t in self.info.tiles:
            run_files += [self.layout.locs(t), self.layout.filter(t)]
        missing = [p for p in run_files if not (self.path / p).is_file()]
        if missing:
            raise RunFolderError(
                f"the run cannot be completed: not written yet: {', '.join(missing)}"
            )
        if self.intensities:
            run_files.append(INTENSITIES_INDEX)
        if (self.path / REFERENCE).is_file():
            run_files.append(REFERENCE)
        if self.interop is not None:
            self._write_tile_metrics()
            if self._io_through < self.info.n_cycles:
                raise RunFolderError(f"InterOp: cycles {self._io_through + 1}-{self.info.n_cycles} not appended")
            self._interop_sync()
            run_files += [_iop.RUN_PARAMETERS, _iop.TILE_METRICS, *self._io_files()]
        run_files += [Layout.cycle_manifest(c) for c in range(1, self.info.n_cycles + 1)]
        entries = [self._entry(p) for p in run_files]
        data = _manifest.encode_run(self.info.run_id, self.info.n_cycles, entries)
        self._put(RUN_MANIFEST, lambda: [data])
        self._run_entries = {e.path: e for e in entries}
        self._run_complete = True
        self.close_interop()
        self._markers()

    # -- InterOp (docs/run-folder.md, "InterOp") ---------------------------------------------

    def _io_files(self) -> list[str]:
        """The per-cycle InterOp files (appended cycle by cycle), in a fixed order."""
        if self.interop is None:
            return []
        files = [_iop.Q_METRICS]
        if self.intensities:
            files.append(_iop.EXTRACTION_METRICS)
        files.append(_iop.CORRECTED_INT_METRICS)
        if self.interop.truth is not None:
            files.append(_iop.ERROR_METRICS)
        return files

    def interop_state(self) -> tuple[int, tuple[int, ...]]:
        """(cycles appended, the per-cycle files' byte lengths): what a checkpoint keeps;
        ``(0, ())`` while nothing is appended."""
        lengths = tuple(self._io_len[rel] for rel in self._io_files())
        return (self._io_through, lengths) if self._io_through or any(lengths) else (0, ())

    def resume_interop(self, through: int, lengths: tuple[int, ...]) -> None:
        """Go on from a checkpoint's :meth:`interop_state`: each file is cut back to its
        recorded length (records appended after the checkpoint are appended again, the same
        bytes). A file shorter than recorded (lost writes) makes all of them start over."""
        files = self._io_files()
        if self.interop is None or not files:
            return
        self.close_interop()
        if len(lengths) != len(files):
            through, lengths = 0, (0,) * len(files)
        for rel, n in zip(files, lengths):
            path = self.path / rel
            if n and (not path.is_file() or path.stat().st_size < n):
                through, lengths = 0, (0,) * len(files)  # cannot be trusted: rebuild from cycle 1
                break
        self._io_through = int(through)
        self._io_len = dict(zip(files, (int(n) for n in lengths)))
        for rel in files:
            path = self.path / rel
            if path.is_file():
                os.truncate(path, self._io_len[rel])

    def close_interop(self) -> None:
        for fd in self._io_fds.values():
            os.close(fd)
        self._io_fds.clear()

    def sync_interop(self) -> None:
        """fsync the per-cycle InterOp files (the writer stage does it on each barrier)."""
        self._interop_sync()

    def _interop_sync(self) -> None:
        for fd in self._io_fds.values():
            os.fsync(fd)

    def _filter_pf(self, tile: int) -> np.ndarray | None:
        pf = self._io_pf.get(tile)
        if pf is None:
            try:
                pf = formats.decode_filter((self.path / self.layout.filter(tile)).read_bytes())
            except FileNotFoundError:
                return None
            self._io_pf[tile] = pf
        return pf

    def _write_tile_metrics(self) -> None:
        """TileMetricsOut.bin for every tile whose filter is written (rewritten atomically)."""
        rows = []
        for t in self.info.tiles:
            pf = self._filter_pf(t)
            if pf is not None:
                rows.append((t, int(pf.size), int(np.count_nonzero(pf))))
        data = _iop.encode_tile_metrics(self.info.lane, rows, self.interop.area_mm2)
        self._put(_iop.TILE_METRICS, lambda: [data])

    def _truth(self, tile: int) -> tuple:
        got = self._io_truth.get(tile)
        if got is None:
            locs = formats.decode_locs((self.path / self.layout.locs(tile)).read_bytes())
            seqs, matched = self.interop.truth(tile, locs)
            got = self._io_truth[tile] = (np.asarray(seqs), np.asarray(matched, bool))
        return got

    def _interop_records(self, cycle: int) -> dict[str, bytes]:
        """Every tile's records of ``cycle``, from that cycle's own files (and the tile's filter)."""
        lane = self.info.lane
        out = {rel: [] for rel in self._io_files()}
        for t in self.info.tiles:
            bases, quals = formats.decode_bcl((self.path / self.layout.bcl(t, cycle)).read_bytes())
            intens = None
            if self.intensities:
                intens = _intens.decode_intensities((self.path / self.layout.intensities(t, cycle)).read_bytes())
            pf = self._io_pf[t]
            out[_iop.Q_METRICS].append(_iop.q_metrics_record(lane, t, cycle, _iop.q_histogram(bases[pf], quals[pf])))
            if intens is not None:
                means = (_iop.channel_means(intens) + [None] * 4)[:4]
                out[_iop.EXTRACTION_METRICS].append(_iop.extraction_metrics_record(lane, t, cycle, means))
            called, counts = _iop.called_figures(bases[pf], None if intens is None else intens[pf])
            out[_iop.CORRECTED_INT_METRICS].append(_iop.corrected_int_metrics_record(lane, t, cycle, called, counts))
            if self.interop.truth is not None:
                seqs, matched = self._truth(t)
                use = matched & pf
                rate = _iop.error_rate(bases[use], seqs[use, cycle - 1])
                out[_iop.ERROR_METRICS].append(_iop.error_metrics_record(lane, t, cycle, rate))
        return {rel: b"".join(recs) for rel, recs in out.items()}

    _IO_HEADERS = {
        _iop.Q_METRICS: _iop.q_metrics_header,
        _iop.EXTRACTION_METRICS: _iop.extraction_metrics_header,
        _iop.CORRECTED_INT_METRICS: _iop.corrected_int_metrics_header,
        _iop.ERROR_METRICS: _iop.error_metrics_header,
    }

    def _interop_append(self) -> None:
        """Append the records of each complete cycle not appended yet, in order, once every
        tile's filter is written (the Q, corrected-intensity and error figures are of PF
        clusters). Each file is first cut back to its recorded length, so a retried append
        (after a full disk) or one after a resume never leaves a partial or doubled record."""
        if self.interop is None or self._run_complete:
            return
        while self._io_through + 1 in self._complete_cycles:
            if any(self._filter_pf(t) is None for t in self.info.tiles):
                return
            cycle = self._io_through + 1
            records = self._interop_records(cycle)
            for rel, data in records.items():
                if not self._io_len[rel]:
                    data = self._IO_HEADERS[rel]() + data
                self._append(rel, data)
            for rel, data in records.items():
                self._io_len[rel] += len(data) + (0 if self._io_len[rel] else len(self._IO_HEADERS[rel]()))
            self._io_through = cycle

    def _append(self, rel: str, data: bytes) -> None:
        path = self.path / rel
        try:
            fd = self._io_fds.get(rel)
            if fd is None:
                ensure_dir(path.parent, path, len(data))
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
                self._io_fds[rel] = fd
                fsync_dir(path.parent)
            at = self._io_len[rel]
            os.ftruncate(fd, at)  # a partial record of a failed try goes first
            pwrite_all(fd, data, at, str(path))
            os.fsync(fd)
        except OSError as exc:
            fd = self._io_fds.get(rel)
            if fd is not None:  # no partial record stays while the caller waits for space
                try:
                    os.ftruncate(fd, self._io_len[rel])
                except OSError:
                    pass  # cut back on the next try, before it writes
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise full_error(path, len(data), exc) from exc
            raise

    def _markers(self) -> None:
        # Markers last: their presence promises the run manifest is complete.
        for read in range(1, len(self.info.reads) + 1):
            self._marker(Layout.read_complete(read))
        self._marker(RTA_COMPLETE)
        self._marker(COPY_COMPLETE)

    def _marker(self, rel: str) -> None:
        """An empty completion marker (not a data file, so not in the manifest)."""
        path = self.path / rel
        if not path.is_file():
            write_atomic(path, [b""], 0)

    # -- internals ----------------------------------------------------------------------------

    def _tile(self, tile: int) -> None:
        if tile not in self.info.tiles:
            raise ValueError(
                f"tile={tile!r}: not a tile of this run; allowed {list(self.info.tiles)}"
            )

    def _cycle(self, cycle: int) -> None:
        if (
            isinstance(cycle, bool)
            or not isinstance(cycle, (int, np.integer))
            or not 1 <= cycle <= self.info.n_cycles
        ):
            raise ValueError(f"cycle={cycle!r}: allowed 1..{self.info.n_cycles}")

    def _count(self, tile: int, n: int, what: str) -> None:
        """Every file of a tile has the same clusters; learn the count from disk on resume."""
        known = self._clusters.get(tile)
        if known is None:
            known = self._count_on_disk(tile)
        if known is not None and known != n:
            raise ValueError(
                f"tile {tile}: the {what} has {n} clusters, but the tile's other "
                f"files have {known}; every file of a tile lists the same clusters"
            )
        self._clusters[tile] = n

    def _count_on_disk(self, tile: int) -> int | None:
        probes = [("locs", self.layout.locs(tile)), ("filter", self.layout.filter(tile))]
        probes += [("bcl", self.layout.bcl(tile, c)) for c in range(1, self.info.n_cycles + 1)]
        for kind, rel in probes:
            try:
                with open(self.path / rel, "rb") as f:
                    head = f.read(12)
            except FileNotFoundError:
                continue
            if len(head) >= (4 if kind == "bcl" else 12):
                return formats.cluster_count(kind, head)
        return None

    def _listed(self, rel: str) -> FileEntry | None:
        """The manifest entry of ``rel`` when a final manifest lists it (its cycle's, or the
        run's), else None."""
        m = _CYCLE_DIR.search(rel)
        if m is not None and int(m.group(1)) in self._complete_cycles:
            return self._cycle_entries(int(m.group(1))).get(rel)
        return self._run_entries.get(rel)

    def _cycle_entries(self, cycle: int) -> dict[str, FileEntry]:
        """A complete cycle's entries, from its manifest on disk (the last few kept)."""
        got = self._entries_cache.get(cycle)
        if got is None:
            rel = Layout.cycle_manifest(cycle)
            got = {e.path: e for e in _manifest.decode((self.path / rel).read_bytes(), rel)["files"]}
            if len(self._entries_cache) >= 4:
                self._entries_cache.pop(next(iter(self._entries_cache)))
            self._entries_cache[cycle] = got
        return got

    def _put(self, rel: str, chunks: Chunks, size: int | None = None) -> None:
        listed = self._listed(rel)
        path = self.path / rel
        if listed is not None:
            size_now, crc = crc32c_hex(chunks())
            if (
                crc == listed.crc32c
                and size_now == listed.size
                and path.is_file()
                and path.stat().st_size == listed.size
            ):
                return  # already there, complete, identical: nothing to do
            raise RunFolderError(
                f"{rel} is listed complete in the manifest with other content (or is damaged "
                "on disk); a complete file never changes. Write different data under a new run id"
            )
        if self._run_complete:
            raise RunFolderError(
                f"{self.path}: the run is complete; nothing is written after "
                f"complete() (tried to write {rel})"
            )
        content = chunks()
        if size is None and isinstance(content, list):
            size = sum(memoryview(c).nbytes for c in content)
        ensure_dir(path.parent, path, size)
        self._written[rel] = write_atomic(path, content, size)

    def _entry(self, rel: str) -> FileEntry:
        """A manifest entry for a file on disk: from what this writer wrote when the file is
        still that one (same inode, size and mtime), else read back from disk."""
        path = self.path / rel
        w = self._written.get(rel)
        st = path.stat()
        if w is not None and (w.inode, w.size, w.mtime_ns) == (
            st.st_ino,
            st.st_size,
            st.st_mtime_ns,
        ):
            return FileEntry(rel, w.size, w.crc32c)
        size, crc = checksum_file(path)
        return FileEntry(rel, size, crc)


def _ranges(xs: list[int]) -> str:
    out, start, prev = [], xs[0], xs[0]
    for x in xs[1:] + [None]:
        if x is not None and x == prev + 1:
            prev = x
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if x is not None:
            start = prev = x
    return ", ".join(out)
