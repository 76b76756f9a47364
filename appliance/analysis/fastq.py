"""Job kind ``fastq``: a completed run folder's base calls as gzipped FASTQ, one file per lane
and read, the same records picard's ``IlluminaBasecallsToFastq`` writes from the same folder.

Matching picard (``APPLY_EAMSS_FILTER=false``, ``INCLUDE_NON_PF_READS=true``, ``SORT=true``,
``READ_NAME_FORMAT=CASAVA_1_8``, ``MACHINE_NAME`` / ``RUN_BARCODE`` / ``FLOWCELL_BARCODE`` =
RunInfo's instrument / run number / flowcell):

* order: tile by tile in RunInfo order; within a tile the records sorted by read name (picard's
  default ``SORT=true``), ties (two clusters at the same rounded position) in cluster order;
* names: ``@<instrument>:<run number>:<flowcell>:<lane>:<tile>:<x>:<y> <read>:<Y|N>:0:``, with
  x, y = ``round(pos * 10 + 1000)`` in float32 arithmetic (picard's ``posToQSeqCoord``), ``Y``
  when the cluster failed the pass filter, and ``<read>`` empty for a run with one template
  read (as picard writes it) and 1, 2, ... when there are several;
* bases: A, C, G, T; a no-call (a 0 byte in the ``.bcl``) is ``N``;
* qualities: Phred+33; a no-call gets quality 2 (``#``, Illumina's "alleged minimum" picard
  uses), a called base with quality 0 gets 1 (``"``), as picard's BCL reader does.

Non-PF reads are written by default (flagged ``Y``); ``include_non_pf=False`` leaves them out
like picard's default ``INCLUDE_NON_PF_READS=false``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from appliance.analysis._common import check_params, dump_json, file_sizes, fsync_tree, gzip_writer, open_complete_run
from appliance.offload.errors import PermanentJobError

__all__ = ["run_job", "write_fastq", "fastq_name", "qseq_coordinate", "read_files"]

KIND = "fastq"
RESULT_FILE = "fastq.json"
_LETTERS = np.frombuffer(b"ACGTN", dtype=np.uint8)
NO_CALL_QUALITY = 2  # picard's BclQualityEvaluationStrategy.ILLUMINA_ALLEGED_MINIMUM_QUALITY


def qseq_coordinate(pos) -> np.ndarray:
    """picard's ``posToQSeqCoord``: ``Math.round(pos * 10 + 1000)`` with float32 ``pos``."""
    v = np.asarray(pos, np.float32) * np.float32(10) + np.float32(1000)
    return np.floor(v.astype(np.float64) + 0.5).astype(np.int64)


def fastq_name(run_id: str, lane: int, read_label: str) -> str:
    """The file name of one lane's read: ``<run>_L001_R1.fastq.gz`` (``I1`` for index reads)."""
    return f"{run_id}_L{lane:03d}_{read_label}.fastq.gz"


def read_files(info) -> list[tuple[str, range, str]]:
    """(label, cycles, read number in names) for each read of a RunInfo: template reads are
    R1, R2, ...; index reads I1, I2, ..."""
    n_template = sum(1 for _, ix in info.reads if not ix)
    out, t, i = [], 0, 0
    for number, (_cycles, is_index) in enumerate(info.reads, 1):
        if is_index:
            i += 1
            out.append((f"I{i}", info.read_cycles(number), ""))
        else:
            t += 1
            out.append((f"R{t}", info.read_cycles(number), "" if n_template == 1 else str(t)))
    return out


def _picard_qualities(bases: np.ndarray, quals: np.ndarray) -> np.ndarray:
    """Phred+33 bytes as picard writes them: no-call 2, a called base's 0 raised to 1."""
    q = quals.astype(np.uint8, copy=True)
    q[(q == 0) & (bases < 4)] = 1
    q[bases > 3] = NO_CALL_QUALITY
    return q + np.uint8(33)


def _tile_records(folder, tile: int, reads, include_non_pf: bool) -> tuple[list[list[bytes]], int, int]:
    """The FASTQ records of one tile, per read, in picard's order; and (clusters, PF clusters)."""
    from appliance.runfolder import RunFolderError

    info = folder.info
    try:
        locs = folder.read_locs(tile)
        pf = folder.read_filter(tile)
        n = len(locs)
        if len(pf) != n:
            raise RunFolderError(f"tile {tile}: .filter has {len(pf)} clusters, .locs {n}")
        calls = {}
        for cycle in range(1, info.n_cycles + 1):
            bases, quals = folder.read_bcl(tile, cycle)
            if len(bases) != n:
                raise RunFolderError(f"tile {tile} cycle {cycle}: .bcl has {len(bases)} clusters, .locs {n}")
            calls[cycle] = (bases, quals)
    except RunFolderError as exc:
        raise PermanentJobError(f"{folder.path}: {exc}; restore the tile's files from a copy") from None
    xs, ys = qseq_coordinate(locs[:, 0]), qseq_coordinate(locs[:, 1])
    prefix = f"{info.instrument}:{info.number}:{info.flowcell}:{info.lane}:{tile}"
    bases_names = [f"{prefix}:{x}:{y}" for x, y in zip(xs.tolist(), ys.tolist())]
    flags = ["N" if p else "Y" for p in pf.tolist()]
    keep = np.arange(n) if include_non_pf else np.flatnonzero(pf)
    out = []
    for _label, cycles, number in reads:
        names = [f"{bases_names[k]} {number}:{flags[k]}:0:" for k in range(n)]
        seq = _LETTERS[np.stack([calls[c][0] for c in cycles], axis=1)]
        qual = _picard_qualities(np.stack([calls[c][0] for c in cycles], axis=1), np.stack([calls[c][1] for c in cycles], axis=1))
        order = sorted(keep.tolist(), key=names.__getitem__)  # stable: ties keep cluster order
        recs = [b"@%s\n%s\n+\n%s\n" % (names[k].encode(), seq[k].tobytes(), qual[k].tobytes()) for k in order]
        out.append(recs)
    return out, n, int(pf.sum())


def write_fastq(run_folder, out_dir, *, include_non_pf: bool = True, tiles=None) -> dict:
    """Write ``<run>_L<lane>_<read>.fastq.gz`` for every read of ``run_folder`` (a
    :class:`~appliance.runfolder.RunFolder` or its path) into ``out_dir``; returns the figures
    (reads, PF reads, bases, {file: size}). Output bytes depend only on the run folder."""
    from appliance.runfolder import RunFolder

    folder = run_folder if isinstance(run_folder, RunFolder) else RunFolder(run_folder)
    info = folder.info
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    reads = read_files(info)
    use_tiles = tuple(info.tiles if tiles is None else tiles)
    streams = [gzip_writer(out_dir / fastq_name(info.run_id, info.lane, label)) for label, _c, _n in reads]
    clusters = pf_total = written = 0
    try:
        for tile in use_tiles:
            per_read, n, n_pf = _tile_records(folder, tile, reads, include_non_pf)
            clusters += n
            pf_total += n_pf
            written += len(per_read[0])
            for stream, recs in zip(streams, per_read):
                stream.write(b"".join(recs))
    finally:
        for s in streams:
            s.close()
    files = {fastq_name(info.run_id, info.lane, label): (out_dir / fastq_name(info.run_id, info.lane, label)).stat().st_size for label, _c, _n in reads}
    return {
        "run": info.run_id,
        "lane": info.lane,
        "tiles": list(use_tiles),
        "clusters": clusters,
        "reads": written,
        "pf_reads": pf_total,
        "bases": written * info.n_cycles,
        "include_non_pf": include_non_pf,
        "read_structure": info.read_structure,
        "read_names": "casava-1.8",
        "files": files,
    }


def run_job(params: dict, ctx) -> dict:
    """The ``fastq`` job: params ``{"run": run_id, "include_non_pf": true}``; writes the FASTQ
    files and ``fastq.json`` (the returned figures) into ``ctx.staging_dir``."""
    check_params(KIND, params, ("run",), ("include_non_pf",))
    include = params.get("include_non_pf", True)
    if not isinstance(include, bool):
        raise PermanentJobError(f"fastq: include_non_pf={include!r} must be true or false")
    folder = open_complete_run(ctx.data_root, params["run"])
    result = write_fastq(folder, ctx.staging_dir, include_non_pf=include)
    dump_json(Path(ctx.staging_dir) / RESULT_FILE, result)
    result["files"] = file_sizes(ctx.staging_dir)
    fsync_tree(ctx.staging_dir)
    return result
