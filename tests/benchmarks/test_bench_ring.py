"""Ring benchmarks under pytest-benchmark (``scripts/test tests/benchmarks --benchmark-enable``)
and a smoke run of the ``appliance bench ring`` harness.

With the suite's default ``--benchmark-disable`` each benchmark body runs once, as a test.
"""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pytest

import rt
from appliance.benchmarks import ring as ring_bench
from appliance.cli import main


@pytest.fixture
def ring64(ring_name):
    with rt.Ring.create(ring_name, payload_bytes=64, n_slots=1024) as ring, ring.producer() as p, ring.consumer() as c:
        yield p, c


@pytest.mark.benchmark(group="64 B message through, one process")
def test_ring_roundtrip_64b(benchmark, ring64):
    p, c = ring64
    src = np.zeros(64, np.uint8)

    def roundtrip():
        p.reserve().data[:64] = src
        p.commit()
        c.acquire()
        c.release()

    benchmark(roundtrip)
    assert c.statistics().written == c.statistics().read > 0


@pytest.mark.benchmark(group="64 B message through, one process")
def test_mp_queue_roundtrip_64b(benchmark):
    q = mp.get_context("spawn").Queue()
    src = bytes(64)
    try:
        benchmark(lambda: (q.put(src), q.get()))
    finally:
        q.close()
        q.join_thread()


@pytest.mark.benchmark(group="256 x 64 B batch through, one process")
def test_ring_batch_roundtrip_64b(benchmark, ring64):
    p, c = ring64
    src = np.zeros(64, np.uint8)

    def batch():
        frames = p.reserve_many(256)
        frames.data[:, :64] = src
        p.commit(len(frames))
        got = c.acquire_batch(256)
        c.release(len(got))

    benchmark(batch)


def test_bench_ring_harness_smoke(tmp_path, capsys):
    out = tmp_path / "ring.json"
    # one size: each transport is a pair of spawned processes, and the sizes share every code path
    assert main(["bench", "ring", "--quick", "--sizes", "64", "--latency-messages", "200", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    transports = {(r["size"], r["transport"]) for r in result["throughput"]}
    for size in (64,):
        for t in ("ring", "ring chain 2", "2 rings + copy", "mp.Queue", "memcpy", "memcpy hot"):
            assert (size, t) in transports
        # zmq is a reference: a rare lost message is reported as a failure, not a hang
        assert (size, "zmq ipc") in transports or any(f"{size} B" in f for f in result["failures"])
    assert (64, "ring batch 256") in transports
    assert all(r["msgs_per_s"] > 0 and r["vs_queue"] > 0 for r in result["throughput"])
    lat = {r["transport"]: r for r in result["latency"]}
    assert set(lat) == {"ring/spin", "ring/yield", "ring/sleep", "ring/kernel", "mp.Queue", "zmq ipc"}
    assert all(0 < r["p50_us"] <= r["p99_us"] <= r["p999_us"] <= r["max_us"] for r in lat.values())
    assert "x mp.Queue" in capsys.readouterr().out


def test_parse_size():
    assert ring_bench.parse_size("64") == 64
    assert ring_bench.parse_size("64K") == 65536
    assert ring_bench.parse_size("4M") == 4 << 20
    assert ring_bench.parse_size("8MiB".replace("iB", "")) == 8 << 20
