"""Job kind ``reprocess``: re-run the kernel chain and the base caller on a run's recorded raw
frames with a named algorithm version, offline and in-process, into a complete run folder.

The raw frames are those the preprocess stage keeps (``Raw/s_{tile}_c{cycle}_ch{ch}.npy``,
every Nth tile with ``output.keep_raw_every = N``). The chain is built by the same function
the real-time kernel stage uses (:func:`appliance.analysis.algorithms.build_chain`) with the
run's pipeline settings (pinned in ``<data_root>/.state/<run>/algorithm.json`` when the run
was acquired), and cycles reach :class:`kernels.basecall.StreamingBasecaller` in the same
order as in the pipeline, so reprocessing with the algorithm the run used reproduces the
run's positions, intensities, calls, qualities and pass-filter flags for the kept tiles bit
for bit (on the same backend; GPU float order may differ in the last bits).

Output: ``<staging_dir>/<run>/`` (a run folder with its own manifest, the kept tiles only,
with the run's InterOp metrics, RunParameters.xml and RunInfo.xml as the writer stage writes
them, see :func:`_interop_options`) and ``<staging_dir>/reprocess.json``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from appliance.analysis._common import check_params, dump_json, fsync_tree, open_complete_run
from appliance.offload.errors import PermanentJobError
from appliance.runfolder import NO_CALL

__all__ = ["run_job", "reprocess_run", "kept_tiles", "RESULT_FILE"]

KIND = "reprocess"
RESULT_FILE = "reprocess.json"
_RAW_RE = re.compile(r"^s_(\d+)_c(\d+)_ch(\d+)\.npy$")
N_CHANNELS = 4


def kept_tiles(run_dir: Path, tiles, n_cycles: int) -> list[int]:
    """The tiles whose raw frames (every cycle, every channel) are in ``Raw/``, in run order;
    PermanentJobError when there are none or a kept tile lacks frames."""
    raw = Path(run_dir) / "Raw"
    have: dict[int, set] = {}
    if raw.is_dir():
        for p in raw.iterdir():
            m = _RAW_RE.match(p.name)
            if m:
                have.setdefault(int(m[1]), set()).add((int(m[2]), int(m[3])))
    if not have:
        raise PermanentJobError(
            f"{run_dir}: no recorded raw frames (Raw/s_<tile>_c<cycle>_ch<ch>.npy); reprocessing needs "
            "them: set output.keep_raw_every = N (keep every Nth tile) for the runs you want to reprocess"
        )
    want = {(c, ch) for c in range(1, n_cycles + 1) for ch in range(N_CHANNELS)}
    out = []
    for tile in tiles:
        if tile not in have:
            continue
        missing = sorted(want - have[tile])
        if missing:
            shown = ", ".join(f"c{c}_ch{ch}" for c, ch in missing[:6])
            raise PermanentJobError(f"{run_dir}/Raw: tile {tile} lacks {len(missing)} raw frame(s) ({shown}...); restore them or remove the tile's frames")
        out.append(tile)
    return out


def _settings(data_root: Path, run: str, shape: tuple[int, int]) -> tuple[dict, str]:
    """The run's pipeline settings: pinned at acquisition, else the defaults for this shape."""
    from appliance.analysis.algorithms import RUN_RECORD, pipeline_settings, read_run_record

    record = Path(data_root) / ".state" / run / RUN_RECORD
    if record.is_file():
        return read_run_record(record)[1], "run"
    from appliance.config import load_config

    settings = pipeline_settings(load_config(overrides=[f"source.synthetic.tile_size={shape[0]}"]))
    settings["tile_shape"] = list(shape)
    return settings, "defaults"


def _interop_options(folder, shape: tuple[int, int], data_root: Path):
    """``(channels, InterOpOptions)`` for the reprocessed folder, read from the run folder
    itself so that its RunInfo.xml, RunParameters.xml and InterOp files are written as the
    run's were: the channel names from RunInfo.xml's ``ImageChannels``, the imaging geometry
    and the software named in RunParameters.xml (for a run acquired before either was written:
    the standard channels, the raw frames' size and the nominal pixel). ErrorMetricsOut.bin is
    written when the ground truth is known: a synthetic run whose config is in its state folder
    (``<data_root>/.state/<run>/config.json``)."""
    from appliance.runfolder import InterOpOptions, formats
    from appliance.runfolder.interop import RUN_PARAMETERS

    channels = formats.decode_image_channels((folder.path / "RunInfo.xml").read_bytes())
    opts: dict = {"tile_px": (int(shape[1]), int(shape[0]))}
    params = folder.path / RUN_PARAMETERS
    if params.is_file():
        recorded = formats.decode_run_parameters(params.read_bytes())
        named = recorded.pop("channels")
        channels = channels or named
        opts.update(recorded)
    channels = channels or ("A", "C", "G", "T")
    if len(channels) != N_CHANNELS:
        raise PermanentJobError(f"{folder.path}/RunInfo.xml names {len(channels)} image channels ({', '.join(channels)}); reprocess handles {N_CHANNELS}")
    return tuple(channels), InterOpOptions(truth=_synthetic_truth(data_root, folder.info), **opts)


def _synthetic_truth(data_root: Path, info):
    """The ground truth scorer of a synthetic run (what the run's own writer stage used for
    ErrorMetricsOut.bin), from the config in its state folder; None for a camera run or a run
    whose config is not there."""
    import json

    path = Path(data_root) / ".state" / info.run_id / "config.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if doc.get("source", {}).get("kind") != "synthetic":
        return None
    from appliance.config import load_config
    from appliance.pipeline.handlers import interop_options

    items = [("run.cycles", info.n_cycles), ("run.seed", doc.get("run", {}).get("seed")), ("source.kind", "synthetic")]
    items += [(f"source.synthetic.{k}", v) for k, v in doc["source"].get("synthetic", {}).items()]
    cfg = load_config(overrides=[f"{k}={json.dumps(v)}" for k, v in items if v is not None])
    return interop_options(cfg).truth  # the scorer the run's writer stage used


def reprocess_run(folder, algorithm, out_root: Path, data_root: Path, tiles=None) -> dict:
    """Reprocess ``folder`` (a complete :class:`~appliance.runfolder.RunFolder`) with
    ``algorithm``; writes ``out_root/<run>/``; returns the figures."""
    import dataclasses

    from appliance.analysis.algorithms import build_chain
    from appliance.runfolder import RunFolderWriter
    from appliance.runfolder.layout import REFERENCE
    from kernels.backend import get_backend, to_host
    from kernels.basecall import StreamingBasecaller

    info = folder.info
    tiles = kept_tiles(folder.path, info.tiles, info.n_cycles) if tiles is None else list(tiles)
    raw = folder.path / "Raw"
    first = np.load(raw / f"s_{tiles[0]}_c1_ch0.npy")
    settings, source = _settings(data_root, info.run_id, first.shape)
    if tuple(settings["tile_shape"]) != first.shape:
        raise PermanentJobError(f"{raw}: frames are {first.shape} px but the run's settings say {settings['tile_shape']}; the raw frames are not this run's")
    backend = get_backend(settings.get("backend", "auto"))
    channels, interop = _interop_options(folder, first.shape, data_root)
    writer = RunFolderWriter(out_root, dataclasses.replace(info, tiles=tuple(tiles)), channels=channels, interop=interop)
    clusters = pf_clusters = 0
    for tile in tiles:
        chain = build_chain(algorithm, settings, backend.xp)
        caller = None
        calls: dict[int, tuple] = {}
        for cycle in range(1, info.n_cycles + 1):
            stack = np.stack([np.load(raw / f"s_{tile}_c{cycle}_ch{ch}.npy") for ch in range(N_CHANNELS)])
            for r in chain.push(cycle, chain.xp.asarray(stack)):
                intens = to_host(r.intensities).astype(np.float32)
                if caller is None:
                    writer.write_locs(tile, to_host(chain.positions).astype(np.float32))
                    caller = StreamingBasecaller(len(chain.positions), expected_cycles=info.n_cycles, **algorithm.basecall_kwargs())
                writer.write_intensities(tile, r.cycle, intens)
                for c in caller.push(np.array(intens)):
                    calls[c.cycle] = (np.asarray(c.called_bases(NO_CALL), np.uint8), np.asarray(c.qualities, np.uint8))
        if caller is None:
            raise PermanentJobError(f"tile {tile}: too few cycles ({info.n_cycles}) to build the cluster template with {algorithm.key}")
        for c in caller.finish():
            calls[c.cycle] = (np.asarray(c.called_bases(NO_CALL), np.uint8), np.asarray(c.qualities, np.uint8))
        for cycle, (bases, quals) in sorted(calls.items()):
            writer.write_bcl(tile, cycle, bases, quals)
        writer.write_filter(tile, np.asarray(caller.pass_filter, bool))
        clusters += len(chain.positions)
        pf_clusters += int(np.count_nonzero(caller.pass_filter))
    for cycle in range(1, info.n_cycles + 1):
        writer.complete_cycle(cycle)
    if (folder.path / REFERENCE).is_file():
        writer.write_reference(folder.path / REFERENCE)
    writer.complete()
    return {
        "run": info.run_id,
        "algorithm": algorithm.key,
        "tiles": tiles,
        "clusters": clusters,
        "pf_clusters": pf_clusters,
        "cycles": info.n_cycles,
        "settings_source": source,
        "run_folder": info.run_id,
    }


def run_job(params: dict, ctx) -> dict:
    """The ``reprocess`` job: params ``{"run": run_id}``; the algorithm is
    ``ctx.algorithm``/``ctx.algorithm_version`` (the registry's production when unset)."""
    from appliance.analysis.algorithms import AlgorithmError, AlgorithmRegistry

    check_params(KIND, params, ("run",))
    folder = open_complete_run(ctx.data_root, params["run"])
    registry = AlgorithmRegistry.open(ctx.data_root, ctx.ledger)  # the lab's registry with a PostgreSQL ledger
    try:
        if ctx.algorithm:
            if not ctx.algorithm_version:
                raise PermanentJobError(f"reprocess: algorithm {ctx.algorithm!r} given without a version; name both")
            algorithm = registry.get(ctx.algorithm, ctx.algorithm_version)
        else:
            algorithm = registry.production()
    except AlgorithmError as exc:
        raise PermanentJobError(f"reprocess: {exc}") from None
    result = reprocess_run(folder, algorithm, Path(ctx.staging_dir), Path(ctx.data_root))
    dump_json(Path(ctx.staging_dir) / RESULT_FILE, result)
    fsync_tree(ctx.staging_dir)
    return result
