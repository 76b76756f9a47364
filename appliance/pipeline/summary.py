"""The end-of-run summary, and scoring a synthetic run's base calls against ground truth."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from appliance.config import RunConfig

__all__ = ["summarize", "score_against_truth", "format_summary"]

MATCH_RADIUS_PX = 1.5


def _folder_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, f))
            except OSError:
                pass
    return total


def match_truth(truth, locs) -> tuple[np.ndarray, np.ndarray]:
    """``(matched, index)``: which detected clusters (``locs``) lie within ``MATCH_RADIUS_PX``
    of a true one of the synthetic ``truth``, and which. Detected positions live in the
    template frame: the reference frame and cycle 1's are tried, the one matching more wins."""
    from scipy.spatial import cKDTree

    best = None
    for ref in (truth.positions, truth.frame_positions(1, 0)):
        dist, idx = cKDTree(ref).query(locs, distance_upper_bound=MATCH_RADIUS_PX)
        ok = np.isfinite(dist)
        if best is None or ok.sum() > best[0].sum():
            best = (ok, idx)
    return best


def score_against_truth(config: RunConfig, run_dir: Path) -> dict:
    """Match the run's clusters to the synthetic truth (within 1.5 px) and compare base calls.

    Returns matched fraction, pass-filter fraction and the base-call error rate of matched
    pass-filter clusters (no-calls counted separately), and ``per_cycle``: the same counts
    cycle by cycle (a list of ``{cycle, bases_called, no_calls, errors, error_rate}``), which
    the run report plots; errors typically grow with phasing towards the last cycles.
    """

    from appliance.simparams import synthetic_params
    from appliance.runfolder import RunFolder
    from kernels.synthetic import SyntheticInstrument

    inst = SyntheticInstrument(synthetic_params(config), seed=config.run.seed)
    folder = RunFolder(run_dir)
    matched = detected = truth_n = pf_n = 0
    n_cycles = config.run.cycles
    cyc_errors, cyc_called, cyc_nocalls = (np.zeros(n_cycles, dtype=np.int64) for _ in range(3))
    for tile in config.run.tiles:
        truth = inst.truth(tile)
        locs = folder.read_locs(tile)
        pf = folder.read_filter(tile)
        detected += len(locs)
        truth_n += truth.n_clusters
        ok, idx = match_truth(truth, locs)
        matched += int(ok.sum())
        use = ok & pf
        pf_n += int(pf.sum())
        seqs = truth.sequences[idx[use]]
        for cycle in range(1, n_cycles + 1):
            bases, _quals = folder.read_bcl(tile, cycle)
            b = bases[use]
            nc = b > 3
            cyc_nocalls[cycle - 1] += int(nc.sum())
            cyc_called[cycle - 1] += int((~nc).sum())
            cyc_errors[cycle - 1] += int((b[~nc] != seqs[~nc, cycle - 1]).sum())
    errors, called, nocalls = int(cyc_errors.sum()), int(cyc_called.sum()), int(cyc_nocalls.sum())
    per_cycle = [
        {
            "cycle": c + 1,
            "bases_called": int(cyc_called[c]),
            "no_calls": int(cyc_nocalls[c]),
            "errors": int(cyc_errors[c]),
            "error_rate": int(cyc_errors[c]) / max(int(cyc_called[c]), 1),
        }
        for c in range(n_cycles)
    ]
    return {
        "clusters_truth": truth_n,
        "clusters_detected": detected,
        "matched_fraction": matched / max(detected, 1),
        "recall": matched / max(truth_n, 1),
        "pass_filter_fraction": pf_n / max(detected, 1),
        "bases_called": called,
        "no_calls": nocalls,
        "error_rate": errors / max(called, 1),
        "per_cycle": per_cycle,
    }


def _of_stage(stages: dict, stage: str) -> dict:
    """The summary of the (first) process of ``stage`` ({} without one): by its ``stage``
    field (appliance.schema), not by its name."""
    from appliance.schema import StageSample

    return next((v for k, v in stages.items() if StageSample.from_dict(k, v).stage == stage), {})


def summarize(config: RunConfig, run_id: str, run_dir: Path, stages: dict, wall_s: float, events: list, restarts: dict) -> dict:
    source, writer = _of_stage(stages, "source"), _of_stage(stages, "writer")
    frames = int(source.get("frames_in", 0))
    acq = float(source.get("acquisition_s") or wall_s)
    before = int(source.get("frames_before_start", 0))
    t0, t1 = source.get("t_first_frame"), writer.get("t_last_frame")
    pipeline_s = t1 - t0 if t0 is not None and t1 is not None and t1 > t0 else None
    raw_bytes = int(source.get("bytes_in", 0))
    written = _folder_bytes(run_dir) if run_dir.exists() else 0
    summary = {
        "run_id": run_id,
        "output": str(run_dir),
        "wall_s": wall_s,
        "frames_acquired": frames,
        "frames_dropped": int(source.get("drops", 0)),
        "acquisition_s": acq,
        # first frame acquired -> last frame at the writer: the rate the whole pipeline sustained
        "pipeline_s": pipeline_s,
        "pipeline_frames_per_s": frames / pipeline_s if pipeline_s else None,
        # the last source instance's own frames over its own acquisition time: after a source
        # restart, frames acquired before it are not divided by the restarted source's time
        "frames_per_s": (frames - before) / acq if acq else 0.0,
        "gb_per_s": raw_bytes * (frames - before) / max(frames, 1) / acq / 1e9 if acq else 0.0,
        "incomplete_cycles": sum(int(s.get("incomplete_cycles", 0)) for s in stages.values()),
        "latency_ms_p50": writer.get("latency_ms_p50"),
        "latency_ms_p99": writer.get("latency_ms_p99"),
        "latency_ms_p999": writer.get("latency_ms_p999"),
        "checksum_failures": sum(int(s.get("checksum_failures", 0)) for s in stages.values()),
        "quarantined_frames": sum(int(s.get("quarantined", 0)) for s in stages.values()),
        # clusters without a valid intensity (out of view, lost frames): written as no-calls
        "no_calls": sum(int(s.get("no_calls", 0)) for s in stages.values()),
        "duplicates_dropped": sum(int(s.get("duplicates", 0)) for s in stages.values()),
        "restarts": restarts,
        "raw_bytes": raw_bytes,
        "output_bytes": written,
        "data_reduction": raw_bytes / written if written else None,
        # passthrough runs write raw frames only (Raw/), no run folder to complete
        "run_complete": None if config.stages["kernel"].algorithm == "passthrough" else (run_dir / "CopyComplete.txt").exists(),
        "stages": stages,
        "events": events,
    }
    if config.source.kind == "synthetic" and config.stages["writer"].mode == "disk" and summary["run_complete"]:
        summary["accuracy"] = score_against_truth(config, run_dir)
    return summary


def format_summary(s: dict) -> str:
    def fmt(v, spec=".1f"):
        return "-" if v is None else format(v, spec)

    lines = [
        f"run {s['run_id']}: {s['frames_acquired']} frames acquired in {s['acquisition_s']:.1f} s "
        f"({s['frames_per_s']:.1f} frames/s, {s['gb_per_s'] * 1000:.1f} MB/s), {s['frames_dropped']} dropped"
        + (f", {s['incomplete_cycles']} tile-cycles incomplete" if s.get("incomplete_cycles") else "")
        + f"; {s['wall_s']:.1f} s in all",
        f"pipeline: {fmt(s.get('pipeline_frames_per_s'))} frames/s sustained from first frame acquired to last frame written",
        f"latency acquisition -> run folder: p50 {fmt(s['latency_ms_p50'])} ms, p99 {fmt(s['latency_ms_p99'])} ms",
        f"integrity: {s['checksum_failures']} checksum failures; restarts: {sum(s['restarts'].values())}"
        + (f" ({', '.join(f'{k} x{v}' for k, v in s['restarts'].items())})" if s["restarts"] else ""),
    ]
    if s.get("data_reduction"):
        lines.append(f"data reduction: {s['raw_bytes'] / 1e6:.1f} MB of raw frames -> {s['output_bytes'] / 1e6:.1f} MB written ({s['data_reduction']:.1f}x)")
    if s.get("no_calls"):
        lines.append(f"no-calls: {s['no_calls']} cluster-cycles without a valid intensity (out of view or lost frames), written as N")
    acc = s.get("accuracy")
    if acc:
        scored = acc["bases_called"] > 0 and acc["clusters_detected"] > 0
        error = f"error {acc['error_rate'] * 100:.2f}% over {acc['bases_called']} bases" if scored else "error n/a (no scored bases)"
        pf = f"{acc['pass_filter_fraction'] * 100:.1f}%" if acc["clusters_detected"] else "n/a"
        lines.append(
            f"base calls vs ground truth: {error}; "
            f"clusters detected {acc['clusters_detected']} of {acc['clusters_truth']} (recall {acc['recall'] * 100:.1f}%), "
            f"pass filter {pf}"
        )
    if s.get("bottleneck"):
        lines.append(f"bottleneck: {s['bottleneck']['text']}")
    lines.append(f"output: {s['output']}" + ("" if s.get("run_complete") is not False else " (incomplete: stopped before every cycle was written)"))
    if s.get("completion") and s["completion"]["status"] != "CompletedAsPlanned":
        c = s["completion"]
        lines.append(f"RunCompletionStatus.xml: {c['status']}, {c['cycles_completed']} of {c['cycles_planned']} cycles complete")
    return "\n".join(lines)
