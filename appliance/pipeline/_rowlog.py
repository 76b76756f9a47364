"""A tile's row log: the streaming base caller's work rows, appended once, beside the checkpoints.

The base caller's state is mostly rows of cycles (``StreamingBasecaller.rows_since``): a row
is written once and never changed, and each buffer's live span only moves forward. So the
basecall stage appends each push's new rows to the tile's log
(``basecall-R.tileT.gGGGG.rows.ckpt``, fsynced) and its checkpoints carry the caller without
its rows, and the log's name and length (:class:`CallerLog`): a checkpoint is about 0.1 MB a
tile instead of the whole window (5.4 MB a 512 px tile, every cycle).

Every ``COMPACT_EVERY`` appends the log starts a new generation holding only the live rows;
a generation no kept checkpoint names is removed. A restore reads the log up to the
checkpoint's length (what a crash appended after it is cut off: those frames come again)
and puts the rows back, bit for bit.
"""

from __future__ import annotations

import io
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: appends between compactions: a log holds at most this many cycles of rows besides its live ones
COMPACT_EVERY = 64


@dataclass(frozen=True)
class CallerLog:
    """A tile's streaming base caller in a checkpoint: its state without its rows
    (``StreamingBasecaller.state_without_rows``), and the row log whose first ``length``
    bytes hold those rows."""

    state: dict
    log: str  #: file name, in the state folder
    length: int


@dataclass
class RowLog:
    """The open log of one tile (see the module docstring)."""

    state_dir: Path
    stem: str  #: e.g. "basecall-0.tile1101"
    generation: int = 0
    length: int = 0
    appends: int = 0  #: since this generation started
    marks: dict = field(default_factory=dict)  #: per buffer: the end of the rows already logged

    @property
    def name(self) -> str:
        return f"{self.stem}.g{self.generation:04d}.rows.ckpt"

    @property
    def path(self) -> Path:
        return Path(self.state_dir) / self.name

    @classmethod
    def restored(cls, state_dir: Path, stem: str, ref: CallerLog) -> tuple["RowLog", dict]:
        """The log a checkpoint names, cut to its length, and the rows it holds for the
        caller's live spans (``{buffer: (lo, hi, rows)}``). RuntimeError when the file is
        missing or shorter than the checkpoint says."""
        m = re.fullmatch(re.escape(stem) + r"\.g(\d{4})\.rows\.ckpt", ref.log)
        if m is None:
            raise RuntimeError(f"{ref.log} is not a row log of {stem}: the checkpoint is inconsistent; start a new run")
        log = cls(Path(state_dir), stem, int(m.group(1)), ref.length)
        try:
            size = log.path.stat().st_size
        except FileNotFoundError:
            size = -1
        if max(size, 0) < ref.length:
            raise RuntimeError(f"{log.path} (the base caller's rows, named by the checkpoint) is missing or short "
                               f"({max(size, 0)} of {ref.length} bytes): the run cannot resume from this checkpoint; start a new run")
        if size > ref.length:  # appended after the checkpoint, before a crash: those frames come again
            os.truncate(log.path, ref.length)
        spans = {k: v for k, v in ref.state.get("_live", {}).items() if v[1] > v[0]}
        rows = _assemble(_records(log.path, ref.length) if ref.length else (), spans)
        log.marks = {k: hi for k, (_lo, hi) in ref.state.get("_live", {}).items()}
        return log, rows

    def append(self, rows: dict) -> int:
        """Append one record of rows (``{buffer: (lo, hi, rows)}``, fsynced); returns its bytes."""
        from kernels.backend import to_host

        data = _pickle({k: (lo, hi, to_host(part)) for k, (lo, hi, part) in rows.items()})
        with open(self.path, "r+b" if self.path.exists() else "wb") as f:
            f.seek(self.length)
            f.truncate()
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if self.length == 0:  # a new file: its directory entry durable too
            from appliance.runfolder import fsync_dir

            fsync_dir(self.path.parent)
        self.length += len(data)
        self.appends += 1
        for k, (_lo, hi, _part) in rows.items():
            self.marks[k] = max(self.marks.get(k, 0), hi)
        return len(data)

    def start_generation(self, live_rows: dict) -> int:
        """A new generation holding only ``live_rows`` (every live span); returns its bytes."""
        new = RowLog(self.state_dir, self.stem, self.generation + 1)
        new.path.unlink(missing_ok=True)  # a generation left by an earlier restore from an older epoch
        n = new.append(live_rows)  # a full disk raises here, and a retry starts the same generation again
        self.generation, self.length, self.appends = new.generation, new.length, new.appends
        self.marks.update(new.marks)
        return n

    def remove_unnamed(self, named: set[str]) -> None:
        """Remove this tile's older generations that no kept checkpoint names (``named``)."""
        pattern = re.compile(re.escape(self.stem) + r"\.g(\d{4})\.rows\.ckpt")
        for p in Path(self.state_dir).iterdir():
            m = pattern.fullmatch(p.name)
            if m and int(m.group(1)) < self.generation and p.name not in named:
                p.unlink(missing_ok=True)


def _pickle(obj) -> bytes:
    buf = io.BytesIO()
    pickle.dump(obj, buf, protocol=pickle.HIGHEST_PROTOCOL)
    return buf.getvalue()


def _records(path: Path, length: int):
    with open(path, "rb") as f:
        while f.tell() < length:
            yield pickle.load(f)


def _assemble(records, spans: dict) -> dict:
    """Per buffer, its rows of cycles ``lo .. hi - 1`` from the records (each record holds
    rows ``[a, b)`` of some buffers; together they cover every live span)."""
    parts: dict = {k: [] for k in spans}
    for rec in records:
        for k, (a, b, rows) in rec.items():
            if k in spans:
                lo, hi = spans[k]
                a2, b2 = max(a, lo), min(b, hi)
                if a2 < b2:
                    parts[k].append((a2, rows[a2 - a : b2 - a]))
    out = {}
    for k, (lo, hi) in spans.items():
        got = sorted(parts[k], key=lambda p: p[0])
        at, pieces = lo, []
        for a, rows in got:
            if a > at:
                break
            if a < at:  # an overlap (a compaction's first record): take what is new
                rows = rows[at - a :]
            pieces.append(rows)
            at += len(rows)
        if at < hi:
            continue  # not all there: from_rows names the buffer
        out[k] = (lo, hi, np.concatenate(pieces)[: hi - lo] if len(pieces) > 1 else pieces[0][: hi - lo])
    return out
