"""Job kind ``cycle-qc``: the instrument's real-time per-cycle QC, from that cycle's files as
``Manifest/cycle_NNNN.json`` lists them (the run need not be complete).

Per tile and over all tiles: clusters, % no-call, base composition (% of called bases),
mean quality and % >= Q30 (over all clusters, a no-call counting as quality 0 like Illumina's
%Q30), and per channel intensity statistics (mean, median, p5, p95 of the finite values, and
the count of non-finite ones). Light: two small files per tile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.analysis._common import check_params, dump_json, fsync_tree, run_path
from appliance.offload.errors import PermanentJobError, TransientJobError

__all__ = ["run_job", "cycle_figures", "tile_figures"]

KIND = "cycle-qc"
_CHANNELS = ("A", "C", "G", "T")


def tile_figures(bases: np.ndarray, quals: np.ndarray, intensities: np.ndarray | None) -> dict:
    """QC figures of one tile at one cycle from its decoded ``.bcl`` and intensities."""
    n = int(bases.size)
    called = bases < 4
    n_called = int(called.sum())
    counts = np.bincount(bases[called], minlength=4)[:4]
    q = np.where(called, quals, 0).astype(np.float64)
    out = {
        "clusters": n,
        "pct_no_call": 100.0 * (n - n_called) / max(n, 1),
        "base_composition": {b: 100.0 * int(c) / max(n_called, 1) for b, c in zip(_CHANNELS, counts)},
        "mean_quality": float(q.mean()) if n else 0.0,
        "pct_q30": 100.0 * int(np.count_nonzero(q >= 30)) / max(n, 1),
    }
    if intensities is not None:
        chans = {}
        for k, ch in enumerate(_CHANNELS[: intensities.shape[1]]):
            v = intensities[:, k].astype(np.float64)
            ok = np.isfinite(v)
            f = v[ok]
            p5, med, p95 = np.percentile(f, [5, 50, 95]) if f.size else (None, None, None)
            chans[ch] = {"mean": float(f.mean()) if f.size else None, "median": None if med is None else float(med),
                         "p5": None if p5 is None else float(p5), "p95": None if p95 is None else float(p95), "non_finite": int((~ok).sum())}
        out["intensity"] = chans
    return out


def cycle_figures(folder, cycle: int) -> dict:
    """Figures of ``cycle`` for every tile of ``folder`` and in all; PermanentJobError when
    the cycle is not complete or a listed file does not match the manifest."""
    from appliance.runfolder import RunFolderError
    from appliance.runfolder import checksum_file

    try:
        manifest = folder.manifest()
    except RunFolderError as exc:
        raise PermanentJobError(f"{folder.path}: {exc}") from None
    entries = manifest.cycles.get(cycle)
    if entries is None:
        raise PermanentJobError(f"{folder.path}: cycle {cycle} is not complete (no Manifest/cycle_{cycle:04d}.json); submit cycle-qc once the cycle is complete")
    listed = {e.path: e for e in entries}
    layout = folder.layout
    for rel, e in listed.items():
        try:
            size, crc = checksum_file(folder.path / rel)
        except FileNotFoundError:
            raise PermanentJobError(f"{folder.path / rel}: listed in the cycle manifest but missing; restore it from a copy") from None
        except OSError as exc:
            raise TransientJobError(f"{folder.path / rel}: cannot be read ({exc})") from exc
        if (size, crc) != (e.size, e.crc32c):
            raise PermanentJobError(f"{folder.path / rel}: size/CRC32C {size}/{crc} do not match the manifest's {e.size}/{e.crc32c}; the file is damaged: restore it from a copy")
    tiles = {}
    all_b, all_q, all_i = [], [], []
    try:
        for tile in folder.info.tiles:
            if layout.bcl(tile, cycle) not in listed:
                continue
            b, q = folder.read_bcl(tile, cycle)
            i = folder.read_intensities(tile, cycle) if layout.intensities(tile, cycle) in listed else None
            tiles[str(tile)] = tile_figures(b, q, i)
            all_b.append(b)
            all_q.append(q)
            if i is not None:
                all_i.append(i)
    except RunFolderError as exc:
        raise PermanentJobError(f"{folder.path}: {exc}; restore the file from a copy") from None
    total = tile_figures(np.concatenate(all_b), np.concatenate(all_q), np.concatenate(all_i) if all_i else None)
    return {"run": folder.info.run_id, "cycle": cycle, "read": folder.info.read_of_cycle(cycle), "tiles": tiles, "all": total}


def run_job(params: dict, ctx) -> dict:
    """The ``cycle-qc`` job: params ``{"run": run_id, "cycle": n}``; writes
    ``cycle_qc_NNNN.json``; returns the all-tile figures."""
    from appliance.runfolder import RunFolder, RunFolderError

    check_params(KIND, params, ("run", "cycle"))
    cycle = params["cycle"]
    path = run_path(ctx.data_root, params["run"])
    try:
        folder = RunFolder(path)
        n_cycles = folder.info.n_cycles
    except RunFolderError as exc:
        raise PermanentJobError(f"{path}: not a run folder ({exc}); check the run id") from None
    if isinstance(cycle, bool) or not isinstance(cycle, int) or not 1 <= cycle <= n_cycles:
        raise PermanentJobError(f"cycle-qc: cycle={cycle!r} is invalid; allowed 1..{n_cycles}")
    doc = cycle_figures(folder, cycle)
    dump_json(Path(ctx.staging_dir) / f"cycle_qc_{cycle:04d}.json", doc)
    fsync_tree(ctx.staging_dir)
    a = doc["all"]
    return {"run": doc["run"], "cycle": cycle, "tiles": len(doc["tiles"]), "clusters": a["clusters"], "pct_no_call": a["pct_no_call"],
            "mean_quality": a["mean_quality"], "pct_q30": a["pct_q30"], "base_composition": a["base_composition"]}
