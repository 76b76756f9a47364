"""``RunFolder``: read a run folder back (files, manifest) and verify it against its manifest."""

from __future__ import annotations

import os
import re
from functools import cached_property
from pathlib import Path

import numpy as np

from appliance.runfolder import formats
from appliance.runfolder import intensities as _intens
from appliance.runfolder import manifest as _manifest
from appliance.runfolder._atomic import checksum_file, is_temp_name
from appliance.runfolder.errors import RunFolderError
from appliance.runfolder.layout import (
    COPY_COMPLETE,
    INTENSITIES_INDEX,
    REFERENCE,
    RAW_DIR,
    RTA_COMPLETE,
    RUN_MANIFEST,
    RUNINFO,
    Layout,
)
from appliance.runfolder.runinfo import RunInfo

_MARKER_RE = re.compile(r"^((RTAComplete|CopyComplete|RTARead\d+Complete)\.txt|RunCompletionStatus\.xml)$")


class RunFolder:
    """A run folder on disk (``root/<run_id>``), read-only."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not (self.path / RUNINFO).is_file():
            raise RunFolderError(
                f"{self.path}: no {RUNINFO}; not a run folder (pass root/<run_id>)"
            )

    @cached_property
    def info(self) -> RunInfo:
        return formats.decode_runinfo((self.path / RUNINFO).read_bytes())

    @cached_property
    def layout(self) -> Layout:
        return Layout(self.info.lane)

    def manifest(self) -> _manifest.Manifest:
        """What the manifests list as complete (re-read on every call)."""
        return _manifest.load(self.path, self.info.run_id)

    @property
    def is_complete(self) -> bool:
        """True once the run manifest and the completion markers are written."""
        return (self.path / COPY_COMPLETE).is_file() and self.manifest().complete

    def _read(self, rel: str) -> bytes:
        try:
            return (self.path / rel).read_bytes()
        except FileNotFoundError:
            raise RunFolderError(f"{self.path / rel}: not written") from None

    def read_bcl(self, tile: int, cycle: int) -> tuple[np.ndarray, np.ndarray]:
        """(bases, quals) of ``tile`` at ``cycle``: no-calls are base 4 with quality 0."""
        return formats.decode_bcl(self._read(self.layout.bcl(tile, cycle)))

    def read_filter(self, tile: int) -> np.ndarray:
        return formats.decode_filter(self._read(self.layout.filter(tile)))

    def read_locs(self, tile: int) -> np.ndarray:
        return formats.decode_locs(self._read(self.layout.locs(tile)))

    def read_intensities(self, tile: int, cycle: int, mmap: bool = False) -> np.ndarray:
        """float32 (N, channels); ``mmap=True`` maps the file instead of reading it."""
        path = self.path / self.layout.intensities(tile, cycle)
        if not path.is_file():
            raise RunFolderError(f"{path}: not written")
        if mmap:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        return _intens.decode_intensities(path.read_bytes())

    def intensities_index(self) -> dict:
        return _intens.decode_index(self._read(INTENSITIES_INDEX))

    def read_reference(self) -> bytes:
        return self._read(REFERENCE)

    def _check_entry(self, e) -> list[str]:
        """The problem with one manifest entry's file (presence, size, CRC32C), if any."""
        p = self.path / e.path
        if not p.is_file():
            return [f"{e.path}: listed in the manifest but missing"]
        size, crc = checksum_file(p)
        if size != e.size:
            return [f"{e.path}: size {size} bytes, manifest says {e.size}"]
        if crc != e.crc32c:
            return [f"{e.path}: CRC32C {crc}, manifest says {e.crc32c} (content changed)"]
        return []

    def verify_files(self, rels) -> list[str]:
        """Problems of just the files ``rels`` (paths relative to the run folder) against the
        manifest: what a job that reads only those files needs, without re-reading the run."""
        try:
            entries = {e.path: e for e in self.manifest().files()}
        except (RunFolderError, OSError) as e:
            return [str(e)]
        problems: list[str] = []
        for rel in rels:
            if rel not in entries:
                problems.append(f"{rel}: not listed in the run's manifest")
            else:
                problems += self._check_entry(entries[rel])
        return problems

    def verify(self) -> list[str]:
        """Problems found, one line each (empty when the folder matches its manifest).

        Checks every listed file's presence, size and CRC32C; for a complete run also that
        every cycle is listed and no file is left unlisted (the raw audit frames in ``Raw/`` are
        not in the manifest); reports leftover temp files.
        """
        problems: list[str] = []
        try:
            info = self.info
            m = self.manifest()
        except (RunFolderError, OSError) as e:
            return [str(e)]
        for e in m.files():
            problems += self._check_entry(e)
        for c in m.cycles:
            if not 1 <= c <= info.n_cycles:
                problems.append(
                    f"{Layout.cycle_manifest(c)}: cycle {c} is outside 1..{info.n_cycles}"
                )
        markers = [n for n in (RTA_COMPLETE, COPY_COMPLETE) if (self.path / n).exists()]
        if markers and not m.complete:
            problems.append(
                f"{', '.join(markers)} present but {RUN_MANIFEST} is missing: "
                "the run was never completed"
            )
        if m.complete:
            listed_manifests = {e.path for e in m.run_files}
            for c in range(1, info.n_cycles + 1):
                rel = Layout.cycle_manifest(c)
                if c not in m.cycles:
                    problems.append(f"{rel}: missing, but the run is marked complete")
                elif rel not in listed_manifests:
                    problems.append(f"{rel}: not listed in {RUN_MANIFEST}")
            for n in (RTA_COMPLETE, COPY_COMPLETE):
                if n not in markers:
                    problems.append(f"{n}: missing, but {RUN_MANIFEST} says the run is complete")
        listed = {e.path for e in m.files()}
        for dirpath, _dirs, files in os.walk(self.path):
            for name in files:
                rel = Path(dirpath, name).relative_to(self.path).as_posix()
                if is_temp_name(name):
                    problems.append(
                        f"{rel}: leftover temp file of an interrupted write "
                        "(reopening the writer removes it)"
                    )
                elif (
                    m.complete
                    and rel not in listed
                    and rel != RUN_MANIFEST
                    and not _MARKER_RE.match(rel)
                    and not rel.startswith(RAW_DIR + "/")
                ):
                    problems.append(f"{rel}: present but not listed in the manifest")
        return problems
