"""Real processes on a real shared-memory ring: throughput with checksums, crashes, drops."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

import rt
from tests.rt import ring_workers as w

ctx = mp.get_context("spawn")


def _start(target, *args):
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _reap(*procs):
    for proc in procs:
        if proc.is_alive():
            proc.kill()
        proc.join(10)
        assert not proc.is_alive()


def _ids(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def _wait_for(cond, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


@pytest.mark.parametrize("wait", ["sleep", "kernel"])
def test_10000_frames_with_checksums_zero_loss(ring_name, tmp_path, wait):
    log = tmp_path / "consumer.log"
    with rt.Ring.create(ring_name, payload_bytes=4096, n_slots=16, wait=wait) as ring:
        cons = _start(w.consume, ring_name, str(log))
        prod = _start(w.produce, ring_name, 10_000)
        try:
            prod.join(120)
            cons.join(120)
            assert prod.exitcode == 0 and cons.exitcode == 0
        finally:
            _reap(prod, cons)
        text = log.read_text()
        assert "BAD" not in text
        assert _ids(log) == list(range(10_000))
        st = ring.statistics()
        assert st.written == st.read == 10_000 and st.drops == 0 and st.end_of_stream


def test_consumer_sigkill_and_restart_redelivers_unreleased_frame(ring_name, tmp_path):
    n, hang_at = 3000, 1234
    log1, log2 = tmp_path / "c1.log", tmp_path / "c2.log"
    with rt.Ring.create(ring_name, payload_bytes=4096, n_slots=16) as ring:
        prod = _start(w.produce, ring_name, n)
        c1 = _start(w.consume, ring_name, str(log1), hang_at)
        c2 = None
        try:
            _wait_for(lambda: hang_at in _ids(log1))
            os.kill(c1.pid, signal.SIGKILL)
            c1.join(10)
            assert ring.statistics().read == hang_at  # the held frame was never released
            c2 = _start(w.consume, ring_name, str(log2))
            prod.join(120)
            c2.join(120)
            assert prod.exitcode == 0 and c2.exitcode == 0
        finally:
            _reap(prod, c1, *([c2] if c2 else []))
        first, second = _ids(log1), _ids(log2)
        assert first == list(range(hang_at + 1))
        assert second == list(range(hang_at, n))  # frame 1234 delivered again, then the rest
        assert sorted(set(first) | set(second)) == list(range(n))


def test_producer_sigkill_is_reported_to_consumer(ring_name):
    with rt.Ring.create(ring_name, payload_bytes=4096, n_slots=16) as ring:
        prod = _start(w.produce, ring_name, 100, 0, 10)
        try:
            with ring.consumer(peer_check_interval=0.02) as c:
                for i in range(10):
                    assert w.frame_id(c.acquire(timeout=30)) == i
                    c.release()
                os.kill(prod.pid, signal.SIGKILL)
                prod.join(10)
                t0 = time.monotonic()
                with pytest.raises(rt.ProducerGone) as info:
                    c.acquire(timeout=20)
                assert info.value.pid == prod.pid
                assert time.monotonic() - t0 < 20  # reported, not a timeout
        finally:
            _reap(prod)
        # A restarted producer resumes at the write counter.
        prod2 = _start(w.produce, ring_name, 20, 10)
        try:
            st = ring.statistics  # the consumer must not open while the dead producer is still recorded
            _wait_for(lambda: st().producer_alive or st().written == 20)
            with ring.consumer() as c:
                got = [w.frame_id(s) for s in (c.acquire(timeout=30) for _ in range(10))]
                c.release(10)
                assert got == list(range(10, 20))
            prod2.join(30)
            assert prod2.exitcode == 0
        finally:
            _reap(prod2)


def test_consumer_gone_reported_to_blocked_producer(ring_name, tmp_path):
    with rt.Ring.create(ring_name, payload_bytes=4096, n_slots=4) as ring:
        cons = _start(w.consume, ring_name, str(tmp_path / "c.log"), 0)
        try:
            with ring.producer(peer_check_interval=0.02) as p:
                for i in range(4):
                    p.reserve(timeout=10).write(w.payload_for(i), with_checksum=True)
                    p.commit()
                _wait_for(lambda: _ids(tmp_path / "c.log") == [0])
                os.kill(cons.pid, signal.SIGKILL)
                cons.join(10)
                with pytest.raises(rt.ConsumerGone):
                    p.reserve(timeout=0.5)
        finally:
            _reap(cons)


def test_drop_policy_counts_match_what_was_dropped(ring_name):
    n = 5000
    queue = ctx.Queue()
    with rt.Ring.create(ring_name, payload_bytes=64, n_slots=8, policy="drop_newest") as ring:
        prod = _start(w.produce_lossy, ring_name, n, queue)
        got = []
        try:
            with ring.consumer() as c:
                while True:
                    try:
                        slot = c.acquire(timeout=30)
                    except rt.EndOfStream:
                        break
                    got.append(int(slot.array()[0]))
                    time.sleep(0.0002)  # a slow consumer: the producer must drop, not wait
                    c.release()
            dropped = queue.get(timeout=30)
            prod.join(30)
        finally:
            _reap(prod)
            queue.close()
            queue.join_thread()
        st = ring.statistics()
        assert st.drops == len(dropped) > 0
        assert st.written == len(got)
        assert got == sorted(got) and not set(got) & set(dropped)
        assert sorted(got + dropped) == list(range(n))
