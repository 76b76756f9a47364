"""``appliance bench gpu``: the kernel stage on one backend, measured the same way on both.

The same code times each kernel and the whole per-tile chain with NumPy (the CPU twin, every
core of the machine) and, where CuPy and a CUDA device are there, with CuPy, side by side:
frames/s, the kernel's minimum memory traffic as GB/s against the copy ceiling measured on
the same device, host-to-device copy rates (pageable and pinned), how much of the copy a
second CUDA stream hides behind the compute, and how far the GPU's base calls agree with the
CPU's on the same synthetic run.

This module imports only NumPy, SciPy, CuPy (when asked for) and ``kernels``: the device
machine runs it without the appliance's own dependencies (``scripts/bench-gpu``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Callable

import numpy as np

HELP = "the kernel stage on CPU and GPU side by side: kernels, chain, H2D, overlap, agreement"
DESCRIPTION = """\
Time each image kernel and the whole per-tile chain on the NumPy backend (all cores) and, where
CuPy and a CUDA device are there, on CuPy, with the same code and the same synthetic frames.
For every kernel: ms per frame, frames/s, and the kernel's minimum memory traffic (bytes it
must read and write) per second as a fraction of the copy ceiling measured on the same device
(how far it is from its bandwidth bound). For the chain: frames/s against the targets (GPU:
>= 84 frames/s at 5120 px, 2x generation 2; >= 400 frames/s at 2048 px, 4x generation 1).
On a GPU also: host-to-device GB/s from pageable and from pinned memory, the share of the copy
time that a second stream hides behind the chain's compute (target >= 80%), and the agreement
of the GPU's intensities and base calls with the CPU's on the same run.

examples:
  appliance bench gpu --sizes 512 --json out/gpu.json     # a quick CPU-only run here
  scripts/bench-gpu                                        # the device script: tests + this, to $OUT
"""

TARGETS_FPS = {2048: 400.0, 5120: 84.0}


def _progress(msg: str) -> None:
    print(f"[bench gpu] {msg}", file=sys.stderr, flush=True)


def _timeit(fn: Callable[[], Any], sync: Callable[[], None], repeat: int) -> float:
    """Best of ``repeat`` timed calls after one warm-up (noise only ever adds time)."""
    fn()
    sync()
    best = math.inf
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def _copy_ceiling(xp: Any, sync: Callable[[], None], repeat: int, nbytes: int = 1 << 28) -> float:
    """Device (or host) memory bandwidth of a plain copy, read + write bytes per second."""
    a = xp.ones(nbytes // 4, dtype=xp.float32)
    b = xp.empty_like(a)
    t = _timeit(lambda: xp.copyto(b, a), sync, repeat)
    return 2 * a.nbytes / t


def _frames(size: int, n_cycles: int, seed: int) -> tuple[list[np.ndarray], Any]:
    from kernels.synthetic import InstrumentParams, SyntheticInstrument

    params = InstrumentParams(tile_shape=(size, size), layout="random", density=0.005, n_cycles=n_cycles)
    inst = SyntheticInstrument(params, seed=seed)
    return [inst.render_cycle(1101, c) for c in range(1, n_cycles + 1)], params


def _kernels(xp: Any, be: Any, raw: np.ndarray, offset: float, repeat: int, ceiling: float) -> list[dict]:
    """Each kernel of the chain on one frame of ``raw`` (C, H, W) uint16, already on the backend."""
    from kernels.background import subtract_background
    from kernels.bandpass import BandPass
    from kernels.correct import FlatFieldCorrector
    from kernels.deconvolution import WienerFilter
    from kernels.detect import ClusterDetector
    from kernels.extract import extract_intensities
    from kernels.registration import PhaseCorrelator

    h, w = raw.shape[1:]
    px = h * w
    rng = np.random.default_rng(0)
    dark = xp.asarray(rng.normal(offset, 2.0, (h, w)).astype(np.float32))
    flat = xp.asarray(rng.uniform(0.9, 1.1, (h, w)).astype(np.float32))
    corr = FlatFieldCorrector((h, w), dark, flat, xp=xp)
    img = corr(raw[0])
    out = xp.empty((h, w), xp.float32)
    spec_bytes = h * (w // 2 + 1) * 8
    pc = PhaseCorrelator((h, w), xp=xp)
    ref = pc.spectrum(img)
    moving = corr(raw[1])
    bp = BandPass((h, w), xp=xp)
    det = ClusterDetector((h, w), xp=xp)
    positions = det(img)
    if positions.shape[0] == 0:  # pragma: no cover - a synthetic tile always has clusters
        raise RuntimeError("no clusters detected in the benchmark frame")
    pos_xy = xp.ascontiguousarray(positions[:, ::-1]).astype(xp.float32)  # (row, col) -> (x, y)
    n = pos_xy.shape[0]
    inten = xp.empty(n, xp.float32)
    y, x = np.mgrid[-3:4, -3:4]
    psf = np.exp(-(x**2 + y**2) / (2 * 1.2**2)).astype(np.float32)
    wiener = WienerFilter((h, w), xp.asarray(psf / psf.sum()), 0.01, xp=xp)
    radius = 2
    # name, call, minimum bytes the kernel must move (its inputs read once, outputs written once)
    rows: list[tuple[str, Callable[[], Any], int]] = [
        ("correct", lambda: corr(raw[0], out=out), px * (2 + 4 + 4 + 4)),
        ("background", lambda: subtract_background(img, out=out), px * (4 + 4)),
        ("registration", lambda: pc.shift(ref, pc.spectrum(moving)), px * 4 + 2 * spec_bytes),
        ("bandpass", lambda: bp(img, out=out), px * (4 + 4)),
        ("detect", lambda: det(img), px * 4),
        ("extract", lambda: extract_intensities(img, pos_xy, radius=radius, out=inten),
         n * (8 + 4 + (2 * radius + 1) ** 2 * 4)),
        ("wiener", lambda: wiener(img, out=out), px * (4 + 4)),
    ]
    result = []
    for name, call, nbytes in rows:
        t = _timeit(call, be.synchronize, repeat)
        gbs = nbytes / t
        result.append({"kernel": name, "ms_per_frame": t * 1e3, "frames_per_s": 1.0 / t,
                       "min_traffic_gb_per_s": gbs / 1e9, "fraction_of_copy_ceiling": gbs / ceiling})
    return result


def _chain(xp: Any, be: Any, dev_frames: list[Any], offset: float, repeat: int) -> tuple[Any, dict, list]:
    """The per-tile chain: the template from the first cycles, then the later cycles timed."""
    from kernels.chain import TileChain

    size = dev_frames[0].shape[-1]
    chain = TileChain((size, size), dark=offset, xp=xp)
    for c in range(1, chain.config.template_cycles + 1):
        chain.push(c, dev_frames[c - 1])
    timed = dev_frames[chain.config.template_cycles:]
    outs = [xp.empty((chain.positions.shape[0], 4), xp.float32) for _ in timed]
    t0 = chain.config.template_cycles + 1
    best = math.inf
    for _ in range(max(1, repeat)):
        be.synchronize()
        start = time.perf_counter()
        for i, f in enumerate(timed):
            chain.process_cycle(t0 + i, f, out=outs[i])
        be.synchronize()
        best = min(best, (time.perf_counter() - start) / len(timed))
    row = {"seconds_per_tile_cycle": best, "frames_per_s": 4 / best, "clusters": int(chain.positions.shape[0])}
    return chain, row, outs


def _h2d_and_overlap(cp: Any, chain: Any, host_frames: list[np.ndarray], repeat: int) -> dict:
    """Host-to-device rates, and how much of the copy a second stream hides behind compute.

    Serial: copy cycle n, then process it. Overlapped: double-buffered device frames; the copy
    of cycle n+1 runs on its own stream from pinned memory while cycle n computes on the
    default stream, ordered by events (the result does not depend on timing)."""
    shape, dtype = host_frames[0].shape, host_frames[0].dtype
    nbytes = host_frames[0].nbytes
    pinned = []
    for f in host_frames:
        mem = cp.cuda.alloc_pinned_memory(nbytes)
        buf = np.frombuffer(mem, dtype=dtype, count=f.size).reshape(shape)
        buf[...] = f
        pinned.append(buf)
    dev = [cp.empty(shape, dtype) for _ in range(2)]
    sync = cp.cuda.Device().synchronize
    t_pageable = _timeit(lambda: dev[0].set(host_frames[0]), sync, repeat)
    t_pinned = _timeit(lambda: dev[0].set(pinned[0]), sync, repeat)
    out = cp.empty((chain.positions.shape[0], 4), cp.float32)
    t0 = chain.config.template_cycles + 1

    def serial() -> None:
        for i, p in enumerate(pinned):
            dev[0].set(p)
            chain.process_cycle(t0 + i, dev[0], out=out)

    copy_stream = cp.cuda.Stream(non_blocking=True)
    compute = cp.cuda.get_current_stream()

    def overlapped() -> None:
        ready = [cp.cuda.Event(), cp.cuda.Event()]
        done = [cp.cuda.Event(), cp.cuda.Event()]
        with copy_stream:
            dev[0].set(pinned[0], stream=copy_stream)
            ready[0].record(copy_stream)
        for i in range(len(pinned)):
            b = i % 2
            if i + 1 < len(pinned):
                nb = (i + 1) % 2
                copy_stream.wait_event(done[nb])  # never overwrite a buffer still being read
                dev[nb].set(pinned[i + 1], stream=copy_stream)
                ready[nb].record(copy_stream)
            compute.wait_event(ready[b])
            chain.process_cycle(t0 + i, dev[b], out=out)
            done[b].record(compute)

    # (waiting on an event that was never recorded is a no-op in CUDA: the first pass is safe)
    t_serial = _timeit(serial, sync, repeat) / len(pinned)
    t_overlap = _timeit(overlapped, sync, repeat) / len(pinned)
    hidden = (t_serial - t_overlap) / t_pinned if t_pinned > 0 else 0.0
    return {"bytes_per_cycle": nbytes, "pageable_gb_per_s": nbytes / t_pageable / 1e9,
            "pinned_gb_per_s": nbytes / t_pinned / 1e9, "serial_s_per_cycle": t_serial,
            "overlapped_s_per_cycle": t_overlap, "copy_hidden_fraction": max(0.0, min(1.0, hidden)),
            "frames_per_s_incl_h2d": 4 / t_overlap, "target_copy_hidden_fraction": 0.8}


def _agreement(cpu_outs: list[np.ndarray], gpu_outs: list[Any], cp: Any) -> dict:
    """GPU intensities and argmax base calls against the CPU's, on the same frames."""
    from kernels.basecall import call_argmax

    a = np.stack(cpu_outs)
    b = np.stack([cp.asnumpy(o) for o in gpu_outs])
    finite = np.isfinite(a) & np.isfinite(b)
    scale = np.nanmax(np.abs(a))
    diff = np.abs(a - b)[finite]
    ident = np.eye(4, dtype=np.float32)
    calls_a = call_argmax(np.nan_to_num(a), ident)
    calls_b = call_argmax(np.nan_to_num(b), ident)
    return {"max_abs_diff_over_max": float(diff.max() / scale) if diff.size else 0.0,
            "median_abs_diff_over_max": float(np.median(diff) / scale) if diff.size else 0.0,
            "nan_mismatch": int((np.isfinite(a) != np.isfinite(b)).sum()),
            "argmax_calls_identical": float((calls_a == calls_b).mean())}


def measure(backend: str, sizes: list[int], repeat: int, cycles: int, seed: int = 1,
            host_frames: dict[int, list[np.ndarray]] | None = None,
            cpu_outs: dict[int, list[np.ndarray]] | None = None) -> dict:
    """Every kernel and the chain on ``backend`` ("numpy" or "cupy") at each size."""
    from kernels.backend import get_backend

    be = get_backend(backend)
    xp = be.xp
    res: dict[str, Any] = {"backend": backend}
    if be.is_gpu:
        props = xp.cuda.runtime.getDeviceProperties(0)
        res["device"] = props["name"].decode(errors="replace")
    else:
        from kernels.backend import fft_workers

        res["fft_workers"] = fft_workers()
    res["copy_ceiling_gb_per_s"] = _copy_ceiling(xp, be.synchronize, repeat) / 1e9
    res["sizes"] = {}
    host_frames = host_frames if host_frames is not None else {}
    outs_by_size = {}
    for size in sizes:
        if size not in host_frames:
            _progress(f"rendering {4 + cycles} cycles of {size}x{size}")
            host_frames[size], _params = _frames(size, 4 + cycles, seed)
        frames = host_frames[size]
        from kernels.synthetic import InstrumentParams

        offset = InstrumentParams().offset
        _progress(f"{backend}: kernels and chain at {size}")
        dev = [xp.asarray(f) for f in frames]
        row: dict[str, Any] = {"kernels": _kernels(xp, be, dev[0], offset, repeat,
                                                   res["copy_ceiling_gb_per_s"] * 1e9)}
        chain, crow, outs = _chain(xp, be, dev, offset, repeat)
        row["chain"] = crow
        if be.is_gpu:
            target = TARGETS_FPS.get(size)
            crow["target_frames_per_s"] = target
            crow["target_met"] = None if target is None else bool(crow["frames_per_s"] >= target)
            row["h2d"] = _h2d_and_overlap(xp, chain, frames[chain.config.template_cycles:], repeat)
            if cpu_outs and size in cpu_outs:
                row["agreement_with_cpu"] = _agreement(cpu_outs[size], outs, xp)
            slowest = max(row["kernels"], key=lambda k: k["ms_per_frame"])
            row["limiting_kernel"] = slowest["kernel"]
        else:
            outs_by_size[size] = [np.array(o) for o in outs]
        res["sizes"][str(size)] = row
    res["_outs"] = outs_by_size
    return res


def run_all(sizes: list[int], repeat: int, cycles: int, gpu: bool = True, cpu: bool = True) -> dict:
    from appliance.benchmarks._machine import machine_description
    from kernels.backend import cupy_available

    doc: dict[str, Any] = {"machine": machine_description(), "sizes": sizes, "repeat": repeat,
                           "cycles": cycles, "date": time.strftime("%Y-%m-%d")}
    frames: dict[int, list[np.ndarray]] = {}
    cpu_outs = None
    if cpu:
        doc["cpu"] = measure("numpy", sizes, repeat, cycles, host_frames=frames)
        cpu_outs = doc["cpu"].pop("_outs")
    ok, why = cupy_available()
    if not gpu:
        doc["gpu"] = {"available": False, "reason": "--no-gpu"}
    elif not ok:
        doc["gpu"] = {"available": False, "reason": why}
    else:
        doc["gpu"] = measure("cupy", sizes, repeat, cycles, host_frames=frames, cpu_outs=cpu_outs)
        doc["gpu"].pop("_outs")
        doc["gpu"]["available"] = True
    return doc


def format_table(doc: dict) -> str:
    lines = [f"machine: {doc['machine']['cpu']}, {doc['machine']['cores']} cores"]
    for side in ("cpu", "gpu"):
        part = doc.get(side)
        if not part:
            continue
        if part.get("available") is False:
            lines.append(f"{side}: not measured ({part['reason']})")
            continue
        lines.append(f"{side} ({part.get('device', 'numpy')}): copy ceiling {part['copy_ceiling_gb_per_s']:.1f} GB/s")
        for size, row in part["sizes"].items():
            lines.append(f"  {size} px: chain {row['chain']['frames_per_s']:.1f} frames/s"
                         + (f" (target {row['chain']['target_frames_per_s']:.0f})"
                            if row["chain"].get("target_frames_per_s") else ""))
            for k in row["kernels"]:
                lines.append(f"    {k['kernel']:<13} {k['ms_per_frame']:9.3f} ms  {k['frames_per_s']:9.1f} frames/s"
                             f"  {k['min_traffic_gb_per_s']:7.1f} GB/s = {100 * k['fraction_of_copy_ceiling']:5.1f}% of copy")
            if "h2d" in row:
                h = row["h2d"]
                lines.append(f"    H2D pageable {h['pageable_gb_per_s']:.1f} GB/s, pinned {h['pinned_gb_per_s']:.1f} GB/s; "
                             f"copy hidden {100 * h['copy_hidden_fraction']:.0f}% (target 80%)")
            if "agreement_with_cpu" in row:
                a = row["agreement_with_cpu"]
                lines.append(f"    vs CPU: argmax calls identical {100 * a['argmax_calls_identical']:.3f}%, "
                             f"max |diff| {a['max_abs_diff_over_max']:.2e} of max")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default="2048,5120", help="tile sizes in px, comma separated (default 2048,5120)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats per measurement (best is kept)")
    parser.add_argument("--cycles", type=int, default=4, help="timed cycles after the template cycles (default 4)")
    parser.add_argument("--no-gpu", action="store_true", help="the CPU twin only")
    parser.add_argument("--no-cpu", action="store_true", help="the GPU only (no CPU twin and no agreement)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")


def run(args: argparse.Namespace) -> int:
    try:
        sizes = [int(s) for s in str(args.sizes).split(",") if s.strip()]
    except ValueError:
        print(f"appliance bench gpu: --sizes {args.sizes!r}: expected sizes in px such as 2048,5120", file=sys.stderr)
        return 2
    if not sizes or any(s < 128 or s % 32 for s in sizes):
        print(f"appliance bench gpu: --sizes {args.sizes!r}: each size must be >= 128 and a multiple of 32", file=sys.stderr)
        return 2
    doc = run_all(sizes, args.repeat, args.cycles, gpu=not args.no_gpu, cpu=not args.no_cpu)
    print(format_table(doc))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point without the appliance's CLI (the device machine has none of its deps)."""
    parser = argparse.ArgumentParser(prog="python -m appliance.benchmarks.gpu", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
