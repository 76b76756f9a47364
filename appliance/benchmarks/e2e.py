"""``appliance bench e2e``: the pipeline's data path and processing chain, sustained."""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from appliance.benchmarks._machine import machine_description

HELP = "the pipeline end to end: data-path throughput at 2048 px, disk ratio, latency, chain rate"
DESCRIPTION = """\
Measure the real pipeline (real stage processes and rings) in four runs:

  1. data path, writer in null mode: 2048 x 2048 uint16 frames through source -> preprocess ->
     pass-through kernel -> pass-through basecall -> writer, as fast as the rings carry them
     (lossless), sustained for --seconds: frames/s and GB/s (generation 1 is 100 frames/s);
  2. the same at the nominal camera rate (--rate, drop_newest at the camera): drops and the
     end-to-end latency p50/p99/p99.9;
  3. data path with the writer on disk (at most 10 s worth of frames), against the disk's own
     sequential write bandwidth measured in the same run (the same bytes, written and
     fsynced by one process);
  4. the full processing chain (registration, detection, extraction, base calling) on
     512 px tiles, lossless and unthrottled: sustained frames/s.

Prints a table and writes JSON. About 4 x --seconds plus start-up.

examples:
  appliance bench e2e
  appliance bench e2e --seconds 10 --size 1024     # quicker
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=60.0, help="how long each data-path run lasts (default 60)")
    parser.add_argument("--size", type=int, default=2048, help="frame side in px for the data-path runs (default 2048)")
    parser.add_argument("--rate", type=float, default=100.0, help="nominal camera rate for the latency run (default 100 frames/s)")
    parser.add_argument("--chain-cycles", type=int, default=26, help="cycles of the 512 px chain run (default 26)")
    parser.add_argument("--root", type=Path, default=None, help="data root for the runs (default: a temporary folder under out/)")
    parser.add_argument("--json", type=Path, default=Path("out/bench-e2e.json"), help="where to write the JSON (default out/bench-e2e.json)")


def _run(root: Path, name: str, overrides: list[str]) -> dict:
    from appliance.config import load_config
    from appliance.pipeline import Supervisor

    cfg = load_config(overrides=[f'output.root="{root}"', *overrides])
    sup = Supervisor(cfg, run_id=name)
    summary = sup.run()
    sup.cleanup_state()
    return summary


def disk_write_bandwidth(folder: Path, nbytes: int, block: int = 8 << 20) -> float:
    """Sequential write bandwidth of the disk under ``folder`` in bytes/s (write + fsync)."""
    buf = np.random.default_rng(0).integers(0, 256, block, dtype=np.uint8).tobytes()
    path = folder / "ddtest.bin"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written = 0
        while written < nbytes:
            written += os.write(fd, buf)
            if written % (64 * block) == 0:
                os.fsync(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    path.unlink()
    return written / dt


def _datapath(size: int, frames: int) -> list[str]:
    tiles = 2
    cycles = max(1, math.ceil(frames / (tiles * 4)))
    return [
        f"source.synthetic.tile_size={size}", "source.synthetic.unique_frames=8", f"run.cycles={cycles}",
        'stages.kernel.algorithm="passthrough"', "edges.raw.n_slots=64", "edges.corrected.n_slots=16",
        "edges.intensities.n_slots=16", "edges.calls.n_slots=16",
    ]


def run_benchmark(seconds: float, size: int, rate: float, chain_cycles: int, root: Path, progress=print) -> dict:
    n_frames = int(rate * seconds)
    base = _datapath(size, n_frames)
    results = {"machine": machine_description(), "size": size, "seconds": seconds, "rate": rate, "runs": {}}

    progress("1/4 data path, null writer, lossless and unthrottled")
    s = _run(root, "null-max", [*base, "source.rate_hz=0", 'edges.raw.policy="block"', 'stages.writer.mode="null"'])
    results["runs"]["null_max"] = _pick(s)
    progress("2/4 data path, null writer, at the nominal camera rate")
    s = _run(root, "null-rate", [*base, f"source.rate_hz={rate}", 'stages.writer.mode="null"'])
    results["runs"]["null_rate"] = _pick(s)
    progress("3/4 data path, writer on disk, and the disk's own write bandwidth")
    # At most ~10 s of frames to disk: 60 s of generation-1 data would be 50 GB.
    disk = _datapath(size, min(n_frames, int(rate * 10)))
    s = _run(root, "disk-max", [*disk, "source.rate_hz=0", 'edges.raw.policy="block"'])
    results["runs"]["disk_max"] = _pick(s)
    written = s["raw_bytes"]
    results["disk_bytes_per_s"] = disk_write_bandwidth(root, written)
    results["disk_ratio"] = results["runs"]["disk_max"]["bytes_per_s"] / results["disk_bytes_per_s"]
    progress("4/4 full processing chain at 512 px")
    s = _run(root, "chain", ["source.synthetic.tile_size=512", f"run.cycles={chain_cycles}", "source.rate_hz=0", 'edges.raw.policy="block"'])
    results["runs"]["chain_512"] = _pick(s)
    results["runs"]["chain_512"]["error_rate"] = s.get("accuracy", {}).get("error_rate")
    return results


def _pick(s: dict) -> dict:
    return {
        "frames": s["frames_acquired"],
        "dropped": s["frames_dropped"],
        "seconds": s["acquisition_s"],
        "acquired_frames_per_s": s["frames_per_s"],
        # sustained: first frame acquired -> last frame written
        "frames_per_s": s["pipeline_frames_per_s"],
        "bytes_per_s": s["raw_bytes"] / s["pipeline_s"],
        "latency_ms_p50": s["latency_ms_p50"],
        "latency_ms_p99": s["latency_ms_p99"],
        "latency_ms_p999": s["latency_ms_p999"],
        "restarts": sum(s["restarts"].values()),
    }


def format_table(r: dict) -> str:
    m = r["machine"]
    lines = [f"machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}; frames {r['size']} x {r['size']} uint16", ""]
    lines.append(f"{'run':<34} {'frames':>7} {'dropped':>7} {'frames/s':>9} {'GB/s':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9}")
    names = {
        "null_max": "data path, null writer, max",
        "null_rate": f"data path, null writer, {r['rate']:.0f}/s",
        "disk_max": "data path, disk writer, max",
        "chain_512": "full chain, 512 px tiles, max",
    }
    for key, label in names.items():
        x = r["runs"][key]

        def f(v):
            return "-" if v is None else f"{v:.1f}"

        lines.append(
            f"{label:<34} {x['frames']:>7} {x['dropped']:>7} {x['frames_per_s']:>9.1f} {x['bytes_per_s'] / 1e9:>6.2f} "
            f"{f(x['latency_ms_p50']):>8} {f(x['latency_ms_p99']):>8} {f(x['latency_ms_p999']):>9}"
        )
    lines.append("")
    lines.append(f"disk sequential write (same bytes, one process): {r['disk_bytes_per_s'] / 1e9:.2f} GB/s; pipeline to disk / disk = {r['disk_ratio']:.2f}")
    err = r["runs"]["chain_512"].get("error_rate")
    if err is not None:
        lines.append(f"full chain base-call error against ground truth: {err * 100:.2f}%")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import sys

    root = args.root
    tmp = None
    if root is None:
        Path("out").mkdir(exist_ok=True)
        tmp = tempfile.TemporaryDirectory(dir="out", prefix="bench-e2e-")
        root = Path(tmp.name)
    try:
        result = run_benchmark(args.seconds, args.size, args.rate, args.chain_cycles, root.resolve(), progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True))
    finally:
        if tmp is not None:
            tmp.cleanup()
    print(format_table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON written to {args.json}")
    return 0
