"""The manifest: every complete file of a run with its size and CRC32C, cycle by cycle.

``Manifest/cycle_NNNN.json`` is written (atomically) when a cycle is complete: it lists that
cycle's files for every tile. ``Manifest/run.json`` is written when the whole run is complete:
it lists the run-level files (RunInfo.xml, ``.locs``, ``.filter``, the intensities index, the
reference) and every cycle manifest with its own checksum, and says ``"complete": true``.
A file is complete exactly when a manifest lists it; offload and tiering act on nothing else.
Manifests hold no timestamps, so a run written twice has byte-identical manifests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from appliance.runfolder.errors import RunFolderError
from appliance.runfolder.layout import MANIFEST_DIR, RUN_MANIFEST, Layout

FORMAT = "appliance-runfolder-manifest"
VERSION = 1
CHECKSUM = "crc32c"


@dataclass(frozen=True)
class FileEntry:
    """One complete file: path relative to the run folder, size in bytes, CRC32C (hex)."""

    path: str
    size: int
    crc32c: str


@dataclass(frozen=True)
class Manifest:
    """What a run folder's manifests say is complete."""

    run_id: str
    cycles: dict[int, tuple[FileEntry, ...]] = field(default_factory=dict)
    run_files: tuple[FileEntry, ...] = ()
    complete: bool = False

    @property
    def complete_cycles(self) -> tuple[int, ...]:
        return tuple(sorted(self.cycles))

    def files(self) -> Iterator[FileEntry]:
        """Every file listed as complete: run-level (once the run is complete), then by cycle."""
        yield from self.run_files
        for c in sorted(self.cycles):
            yield from self.cycles[c]

    def entry(self, path: str) -> FileEntry | None:
        for e in self.files():
            if e.path == path:
                return e
        return None


def _encode(run_id: str, kind: str, files: list[FileEntry], **extra) -> bytes:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "run_id": run_id,
        "kind": kind,
        "checksum": CHECKSUM,
        **extra,
        "files": [
            {"path": e.path, "size": e.size, "crc32c": e.crc32c}
            for e in sorted(files, key=lambda e: e.path)
        ],
    }
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def encode_cycle(run_id: str, cycle: int, files: list[FileEntry], no_calls: dict[int, str] | None = None) -> bytes:
    """A cycle manifest's bytes (entries sorted by path; no timestamps). ``no_calls``: the
    tiles written as all no-calls in this cycle, with the reason (a quarantined frame)."""
    if no_calls:
        extra = {"no_calls": [{"tile": int(t), "reason": r} for t, r in sorted(no_calls.items())]}
        return _encode(run_id, "cycle", files, cycle=cycle, **extra)
    return _encode(run_id, "cycle", files, cycle=cycle)


def encode_run(run_id: str, n_cycles: int, files: list[FileEntry]) -> bytes:
    """The run manifest's bytes, written last, when the run is complete."""
    return _encode(run_id, "run", files, cycles=n_cycles, complete=True)


def decode(data: bytes, where: str) -> dict:
    """A manifest document, validated (format, version, entries); errors name ``where``."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise RunFolderError(
                f"{where}: format {doc.get('format')!r} version {doc.get('version')!r} "
                f"is not {FORMAT!r} version {VERSION}"
            )
        doc["files"] = tuple(
            FileEntry(str(f["path"]), int(f["size"]), str(f["crc32c"])) for f in doc["files"]
        )
    except RunFolderError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise RunFolderError(
            f"{where}: not a readable manifest ({e!r}); rewrite it by reopening "
            "the writer and completing the cycle again"
        ) from e
    return doc


def load(root: Path, run_id: str) -> Manifest:
    """Read every manifest under ``root``; raise :class:`RunFolderError` on an unreadable one."""
    cycles: dict[int, tuple[FileEntry, ...]] = {}
    mdir = root / MANIFEST_DIR
    names = sorted(p.name for p in mdir.iterdir()) if mdir.is_dir() else []
    for name in names:
        if not (name.startswith("cycle_") and name.endswith(".json")):
            continue
        rel = f"{MANIFEST_DIR}/{name}"
        doc = decode((root / rel).read_bytes(), rel)
        if doc.get("kind") != "cycle" or Layout.cycle_manifest(int(doc.get("cycle", -1))) != rel:
            raise RunFolderError(
                f"{rel}: kind {doc.get('kind')!r} cycle {doc.get('cycle')!r} "
                "does not match its file name"
            )
        if doc["run_id"] != run_id:
            raise RunFolderError(f"{rel}: belongs to run {doc['run_id']!r}, not {run_id!r}")
        cycles[int(doc["cycle"])] = doc["files"]
    run_files: tuple[FileEntry, ...] = ()
    complete = False
    if (root / RUN_MANIFEST).exists():
        doc = decode((root / RUN_MANIFEST).read_bytes(), RUN_MANIFEST)
        if doc["run_id"] != run_id or doc.get("kind") != "run":
            raise RunFolderError(
                f"{RUN_MANIFEST}: kind {doc.get('kind')!r} of run {doc['run_id']!r}, "
                f"expected the run manifest of {run_id!r}"
            )
        run_files = doc["files"]
        complete = bool(doc.get("complete"))
    return Manifest(run_id, cycles, run_files, complete)
