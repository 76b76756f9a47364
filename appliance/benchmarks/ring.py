"""``appliance bench ring``: our ring against multiprocessing.Queue, ZeroMQ and memcpy."""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from appliance.benchmarks import _ring_workers as w
from appliance.benchmarks._machine import machine_description

HELP = "ring throughput and latency vs multiprocessing.Queue, ZeroMQ ipc:// and memcpy"
DESCRIPTION = """\
Move messages of 64 B, 64 KiB, 4 MiB and 8 MiB from one process to another through our
shared-memory ring (one message per reserve/commit, and for 64 B also in batches), through
multiprocessing.Queue and through pyzmq PUSH/PULL over ipc://, and measure single-core
memcpy bandwidth at the same sizes in the same run. Then measure one-way latency
(p50/p99/p99.9) at a fixed message rate for each ring wait strategy and the two references.

Prints a table (messages/s, GB/s, ratio to multiprocessing.Queue, ratio to memcpy) and
writes JSON. "memcpy" copies each message into a pool of buffers as deep as the ring (the
same memory footprint as the ring, so it streams from DRAM for large messages): the ratio
column is against it. "memcpy hot" copies into one cache-resident buffer, for reference.
Takes about a minute at --scale 1.

examples:
  appliance bench ring
  appliance bench ring --quick                 # seconds; for smoke tests
  appliance bench ring --sizes 64,4M --json out/ring.json
"""

_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20}
_DEFAULT_SIZES = "64,64K,4M,8M"
#: messages per size at --scale 1: roughly 1-2 GB per large size, 200k small messages
_BASE_COUNT = {64: 200_000, 64 << 10: 20_000, 4 << 20: 400, 8 << 20: 200}
_BATCH = 256


def parse_size(text: str) -> int:
    text = text.strip().upper().rstrip("B")
    if text[-1:] in _SIZE_UNITS:
        return int(text[:-1]) * _SIZE_UNITS[text[-1]]
    return int(text)


def _label(size: int) -> str:
    for unit, mult in (("M", 1 << 20), ("K", 1 << 10)):
        if size >= mult and size % mult == 0:
            return f"{size // mult} {unit}iB"
    return f"{size} B"


@dataclass(frozen=True)
class ThroughputRow:
    size: int
    transport: str
    messages: int
    seconds: float
    msgs_per_s: float
    gb_per_s: float
    vs_queue: float | None = None
    vs_memcpy: float | None = None


@dataclass(frozen=True)
class LatencyRow:
    transport: str
    rate: int
    messages: int
    p50_us: float
    p99_us: float
    p999_us: float
    max_us: float


def _pair(ctx, consumer, cargs, producer, pargs, timeout: float):
    """Run one producer/consumer pair; returns (results by kind)."""
    return _run_all(ctx, [(consumer, cargs)], producer, pargs, timeout)


class TransportLost(RuntimeError):
    """A reference transport did not deliver every message (reported, not hung on)."""


def _ring_name() -> str:
    return f"appliance.bench.{os.getpid()}.{uuid.uuid4().hex[:8]}"


def _ring_throughput(ctx, size: int, n: int, batch: int, timeout: float, hugepages: str = "none") -> float:
    import rt

    n_slots = ring_slots_for(size)
    name = _ring_name()
    with rt.Ring.create(name, payload_bytes=size, n_slots=n_slots, wait="yield", hugepages=hugepages):
        out = _pair(ctx, w.ring_consumer, (name, n, batch), w.ring_producer, (name, size, n, batch), timeout)
    return (out["end"] - out["start"]) / 1e9


def _run_all(ctx, starters, producer, pargs, timeout: float) -> dict:
    """Start the consumer-side processes (each ``(target, args)`` gets ``ready`` and the
    results queue), then the producer; wait for "start" and "end"."""
    results = ctx.Queue()
    procs = []
    try:
        for target, args in starters:
            ready = ctx.Event()
            proc = ctx.Process(target=target, args=(*args, ready, results), daemon=True)
            proc.start()
            procs.append(proc)
            if not ready.wait(timeout):
                raise RuntimeError(f"benchmark process {target.__name__} did not start")
        ready_p, go = ctx.Event(), ctx.Event()
        prod = ctx.Process(target=producer, args=(*pargs, ready_p, go, results), daemon=True)
        prod.start()
        procs.append(prod)
        if not ready_p.wait(timeout):
            raise RuntimeError(f"benchmark producer {producer.__name__} did not start")
        go.set()
        out = {}
        for _ in range(2):
            kind, value = results.get(timeout=timeout)
            out[kind] = value
        for p in procs:
            p.join(timeout)
            if p.exitcode != 0:
                raise RuntimeError(f"benchmark process {p.name} exited with {p.exitcode}")
        return out
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(5)
        results.close()
        results.join_thread()


def _chain_throughput(ctx, size: int, n: int, links: int, timeout: float, hugepages: str = "none") -> float:
    """One ring with a chain of ``links`` consumers, each reading every frame in place."""
    import rt

    name = _ring_name()
    with rt.Ring.create(name, payload_bytes=size, n_slots=ring_slots_for(size), wait="yield", hugepages=hugepages, links=links):
        starters = [(w.ring_link, (name, n, k, k == links - 1)) for k in reversed(range(links))]
        out = _run_all(ctx, starters, w.ring_producer, (name, size, n, 1), timeout)
    return (out["end"] - out["start"]) / 1e9


def _relay_throughput(ctx, size: int, n: int, timeout: float, hugepages: str = "none") -> float:
    """What the chain replaces: producer -> ring -> a stage copying into its own ring -> consumer."""
    import rt

    a, b = _ring_name(), _ring_name()
    slots = ring_slots_for(size)
    with rt.Ring.create(a, payload_bytes=size, n_slots=slots, wait="yield", hugepages=hugepages), \
            rt.Ring.create(b, payload_bytes=size, n_slots=slots, wait="yield", hugepages=hugepages):
        starters = [(w.ring_consumer, (b, n, 1)), (w.ring_relay, (a, b, n, size))]
        out = _run_all(ctx, starters, w.ring_producer, (a, size, n, 1), timeout)
    return (out["end"] - out["start"]) / 1e9


def _queue_throughput(ctx, size: int, n: int, timeout: float) -> float:
    q = ctx.Queue(maxsize=1000)
    try:
        out = _pair(ctx, w.queue_consumer, (q, n), w.queue_producer, (q, size, n), timeout)
    finally:
        q.close()
        q.join_thread()
    return (out["end"] - out["start"]) / 1e9


def _zmq_addr(tmpdir: Path) -> str:
    return f"ipc://{tmpdir}/bench-{uuid.uuid4().hex[:8]}.sock"


def _zmq_throughput(ctx, size: int, n: int, tmpdir: Path, timeout: float) -> float:
    addr = _zmq_addr(tmpdir)
    try:
        out = _pair(ctx, w.zmq_consumer, (addr, n), w.zmq_producer, (addr, size, n), timeout)
    finally:
        Path(addr[len("ipc://") :]).unlink(missing_ok=True)
    if out["end"] < 0:
        raise TransportLost(f"zmq ipc lost {-out['end']} of {n} messages of {size} B")
    return (out["end"] - out["start"]) / 1e9


def ring_slots_for(size: int) -> int:
    """The ring depth the benchmark uses for a message size (also the memcpy pool size)."""
    return 1024 if size <= 4096 else 64 if size <= (1 << 20) else 8


def memcpy_seconds(size: int, n: int, pool: int = 1) -> float:
    """Time for ``n`` single-core copies of one ``size``-byte source into ``pool``
    destination buffers in turn (best of 3). ``pool=1`` copies into the same, cache-hot
    buffer; a pool as deep as the ring touches the same amount of memory as the ring does."""
    src = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    dst = np.zeros((pool, size), np.uint8)  # zeros(): pages are faulted in by the first pass
    for i in range(pool):
        np.copyto(dst[i], src)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(n):
            np.copyto(dst[i % pool], src)
        best = min(best, time.perf_counter() - t0)
    return best


def _latency(ctx, transport: str, n: int, rate: int, tmpdir: Path, timeout: float) -> np.ndarray:
    import rt

    if transport.startswith("ring/"):
        name = _ring_name()
        with rt.Ring.create(name, payload_bytes=64, n_slots=1024, wait=transport.split("/", 1)[1]):
            out = _pair(ctx, w.ring_latency_consumer, (name, n), w.ring_latency_producer, (name, n, rate), timeout)
    elif transport == "mp.Queue":
        q = ctx.Queue()
        try:
            out = _pair(ctx, w.queue_latency_consumer, (q, n), w.queue_latency_producer, (q, n, rate), timeout)
        finally:
            q.close()
            q.join_thread()
    elif transport == "zmq ipc":
        addr = _zmq_addr(tmpdir)
        try:
            out = _pair(ctx, w.zmq_latency_consumer, (addr, n), w.zmq_latency_producer, (addr, n, rate), timeout)
        finally:
            Path(addr[len("ipc://") :]).unlink(missing_ok=True)
    else:
        raise ValueError(transport)
    return out["lat"]


def run_benchmark(
    sizes: list[int],
    scale: float = 1.0,
    latency_messages: int = 10_000,
    latency_rate: int = 10_000,
    latency_transports: tuple[str, ...] = ("ring/spin", "ring/yield", "ring/sleep", "ring/kernel", "mp.Queue", "zmq ipc"),
    tmpdir: Path | None = None,
    timeout: float = 300.0,
    progress=None,
    hugepages: str = "none",
) -> dict:
    """Run the whole suite and return a JSON-ready dict (``throughput``, ``latency``, ``machine``)."""
    ctx = mp.get_context("spawn")
    tmpdir = tmpdir or Path("/tmp")
    rows: list[ThroughputRow] = []
    failures: list[str] = []
    for size in sizes:
        n = max(10, int(_BASE_COUNT.get(size, max(10, (1 << 30) // size)) * scale))
        measured: dict[str, tuple[int, float]] = {}
        if progress:
            progress(f"{_label(size)}: memcpy")
        measured["memcpy"] = (n, memcpy_seconds(size, n, ring_slots_for(size)))
        measured["memcpy hot"] = (n, memcpy_seconds(size, n, 1))
        if progress:
            progress(f"{_label(size)}: ring")
        measured["ring"] = (n, _ring_throughput(ctx, size, n, 1, timeout, hugepages))
        if size <= 4096:
            measured[f"ring batch {_BATCH}"] = (n, _ring_throughput(ctx, size, n, _BATCH, timeout, hugepages))
        if progress:
            progress(f"{_label(size)}: ring chain of 2 links, and the two-ring relay it replaces")
        measured["ring chain 2"] = (n, _chain_throughput(ctx, size, n, 2, timeout, hugepages))
        measured["2 rings + copy"] = (n, _relay_throughput(ctx, size, n, timeout, hugepages))
        if progress:
            progress(f"{_label(size)}: multiprocessing.Queue")
        measured["mp.Queue"] = (n, _queue_throughput(ctx, size, n, timeout))
        if progress:
            progress(f"{_label(size)}: zmq")
        try:
            measured["zmq ipc"] = (n, _zmq_throughput(ctx, size, n, tmpdir, timeout))
        except TransportLost as exc:
            failures.append(str(exc))
            if progress:
                progress(f"{_label(size)}: {exc}; zmq row left out")
        q_rate = measured["mp.Queue"][0] / measured["mp.Queue"][1]
        m_gbps = size * measured["memcpy"][0] / measured["memcpy"][1] / 1e9
        for transport, (count, secs) in measured.items():
            rate = count / secs
            gbps = rate * size / 1e9
            rows.append(
                ThroughputRow(
                    size=size,
                    transport=transport,
                    messages=count,
                    seconds=secs,
                    msgs_per_s=rate,
                    gb_per_s=gbps,
                    vs_queue=rate / q_rate,
                    vs_memcpy=gbps / m_gbps,
                )
            )
    lat_rows: list[LatencyRow] = []
    for transport in latency_transports:
        if progress:
            progress(f"latency: {transport}")
        lat = _latency(ctx, transport, latency_messages, latency_rate, tmpdir, timeout) / 1e3
        p50, p99, p999 = np.percentile(lat, [50, 99, 99.9])
        lat_rows.append(LatencyRow(transport, latency_rate, len(lat), float(p50), float(p99), float(p999), float(lat.max())))
    return {
        "suite": "ring",
        "machine": machine_description(),
        "scale": scale,
        "hugepages": hugepages,
        "failures": failures,
        "throughput": [asdict(r) for r in rows],
        "latency": [asdict(r) for r in lat_rows],
    }


def format_table(result: dict) -> str:
    lines = [f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, Linux {result['machine']['kernel']}", ""]
    lines.append(f"{'size':>8}  {'transport':<16} {'msgs/s':>12} {'GB/s':>8} {'x mp.Queue':>11} {'x memcpy':>9}")
    for r in result["throughput"]:
        lines.append(
            f"{_label(r['size']):>8}  {r['transport']:<16} {r['msgs_per_s']:>12,.0f} {r['gb_per_s']:>8.3f} "
            f"{r['vs_queue']:>11.2f} {r['vs_memcpy']:>9.2f}"
        )
    for failure in result.get("failures", []):
        lines.append(f"  (left out: {failure})")
    if result["latency"]:
        rate = result["latency"][0]["rate"]
        lines += ["", f"one-way latency, 64 B at {rate:,} msgs/s (microseconds)"]
        lines.append(f"{'transport':<14} {'p50':>8} {'p99':>8} {'p99.9':>8} {'max':>9}")
        for r in result["latency"]:
            lines.append(f"{r['transport']:<14} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f} {r['p999_us']:>8.1f} {r['max_us']:>9.1f}")
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sizes", default=_DEFAULT_SIZES, help=f"message sizes, comma-separated (default {_DEFAULT_SIZES})")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the message counts (default 1.0)")
    parser.add_argument("--quick", action="store_true", help="tiny counts (scale 0.01, 500 latency messages): a smoke run")
    parser.add_argument("--latency-rate", type=int, default=10_000, help="messages/s for the latency test (default 10000)")
    parser.add_argument("--latency-messages", type=int, default=10_000, help="messages per latency run (default 10000)")
    parser.add_argument("--hugepages", default="none", choices=("none", "auto", "2M", "1G"), help="back the benchmark rings with hugepages (needs a hugetlbfs mount and free pages; falls back with a logged reason)")
    parser.add_argument("--json", type=Path, default=Path("out/bench-ring.json"), help="where to write the JSON (default out/bench-ring.json)")


def run(args: argparse.Namespace) -> int:
    import sys

    scale = 0.01 if args.quick else args.scale
    lat_n = 500 if args.quick else args.latency_messages
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    result = run_benchmark(sizes, scale, lat_n, args.latency_rate, progress=lambda m: print(f"... {m}", file=sys.stderr, flush=True), hugepages=args.hugepages)
    print(format_table(result))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nJSON written to {args.json}")
    return 0
