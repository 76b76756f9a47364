"""Shared by the run folder tests: a small run and a writer that fills it from a seed."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from appliance.runfolder import RunFolderWriter, RunInfo

INFO = RunInfo(
    run_id="20261125_SIM01_0001_FC0001",
    instrument="SIM01",
    flowcell="FC0001",
    lane=1,
    tiles=(1101, 1102),
    n_cycles=26,
    reads=((26, False),),
)


@dataclass
class TileData:
    xy: np.ndarray  # float32 (N, 2)
    passed: np.ndarray  # bool (N,)
    bases: np.ndarray  # uint8 (N, cycles), 4 = no-call
    quals: np.ndarray  # uint8 (N, cycles)
    intensities: np.ndarray  # float32 (cycles, N, 4)


def make_tiles(info: RunInfo = INFO, n: int = 300, seed: int = 0) -> dict[int, TileData]:
    """Deterministic tile contents: unique grid positions (so picard's read names, which
    are derived from the positions, identify each cluster), ~5% no-calls, ~10% non-PF."""
    rng = np.random.default_rng(seed)
    out = {}
    for tile in info.tiles:
        cells = rng.choice(200 * 200, size=n, replace=False)
        xy = np.stack([cells % 200, cells // 200], axis=1).astype(np.float32) + 1.0
        bases = rng.integers(0, 4, size=(n, info.n_cycles), dtype=np.uint8)
        bases[rng.random((n, info.n_cycles)) < 0.05] = 4
        quals = rng.integers(2, 42, size=(n, info.n_cycles), dtype=np.uint8)
        out[tile] = TileData(
            xy,
            rng.random(n) > 0.1,
            bases,
            quals,
            rng.random((info.n_cycles, n, 4), dtype=np.float32),
        )
    return out


def write_cycle(w: RunFolderWriter, tiles: dict[int, TileData], cycle: int) -> None:
    for tile, d in tiles.items():
        w.write_bcl(tile, cycle, d.bases[:, cycle - 1], d.quals[:, cycle - 1])
        w.write_intensities(tile, cycle, d.intensities[cycle - 1])


def write_run(
    root: Path,
    tiles: dict[int, TileData],
    info: RunInfo = INFO,
    reference: bytes | None = b">chr1\nACGTACGTAC\n",
) -> RunFolderWriter:
    """Write and complete a whole run; return the writer."""
    w = RunFolderWriter(root, info)
    for tile, d in tiles.items():
        w.write_locs(tile, d.xy)
        w.write_filter(tile, d.passed)
    for c in range(1, info.n_cycles + 1):
        write_cycle(w, tiles, c)
        w.complete_cycle(c)
    if reference is not None:
        w.write_reference(reference)
    w.complete()
    return w


def tree_digest(path: Path) -> dict[str, str]:
    """SHA-256 of every file under ``path``, by relative path."""
    out = {}
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            p = Path(dirpath, name)
            out[p.relative_to(path).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def temp_files(path: Path) -> list[str]:
    return sorted(
        Path(d, n).relative_to(path).as_posix()
        for d, _s, files in os.walk(path)
        for n in files
        if ".tmp." in n
    )
