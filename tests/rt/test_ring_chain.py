"""Chained consumers on one ring (the Disruptor's sequence barriers): a model-checked
property test of random interleavings, and real processes killed link by link."""

from __future__ import annotations

import collections
import itertools
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rt
from tests.rt import ring_workers as w

_counter = itertools.count()
ctx = mp.get_context("spawn")


def _op(n_links: int):
    link = st.integers(0, n_links - 1)
    return st.one_of(
        st.just(("reserve",)), st.just(("commit",)),
        st.tuples(st.just("acquire"), link), st.tuples(st.just("acquire_many"), link),
        st.tuples(st.just("release"), link), st.tuples(st.just("release_all"), link),
    )


@st.composite
def _scenario(draw):
    n_links = draw(st.integers(2, 3))
    n_slots = draw(st.sampled_from([2, 4, 8]))
    ops = draw(st.lists(_op(n_links), max_size=250))
    return n_links, n_slots, ops


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario=_scenario())
def test_random_interleavings_of_a_chain_keep_order_and_never_read_ahead(scenario):
    n_links, n_slots, ops = scenario
    name = f"aptest.chain.{os.getpid()}.{next(_counter)}"
    with rt.Ring.create(name, payload_bytes=16, n_slots=n_slots, links=n_links) as ring:
        cons = [ring.consumer(link=k) for k in range(n_links)]
        try:
            with ring.producer() as p:
                next_id = 0
                reserved = 0
                # per link: frames it may acquire (released upstream), and acquired-not-released
                ready = [collections.deque() for _ in range(n_links)]
                held = [collections.deque() for _ in range(n_links)]
                done: list[int] = []  # released by the last link: the slots are free again
                for op in ops:
                    kind = op[0]
                    if kind == "reserve":
                        in_use = reserved + sum(len(r) + len(h) for r, h in zip(ready, held))
                        try:
                            slot = p.reserve_nowait()
                        except rt.WouldBlock:
                            assert in_use == n_slots  # full only while every slot is held somewhere
                            continue
                        assert in_use < n_slots  # a slot is never reused before the last link let go
                        slot.write(np.array([next_id], np.uint64))
                        next_id += 1
                        reserved += 1
                    elif kind == "commit" and reserved:
                        p.commit()
                        reserved -= 1
                        ready[0].append(next_id - reserved - 1)
                    elif kind in ("acquire", "acquire_many"):
                        k = op[1]
                        try:
                            slots = [cons[k].acquire_nowait()] if kind == "acquire" else cons[k].acquire_many(3, timeout=0)
                        except rt.WouldBlock:
                            assert not ready[k]  # nothing released upstream: a link never reads ahead
                            continue
                        for slot in slots:
                            fid = int(slot.array()[0])
                            assert fid == ready[k].popleft()
                            held[k].append(fid)
                    elif kind in ("release", "release_all") and held[op[1]]:
                        k = op[1]
                        n = 1 if kind == "release" else len(held[k])
                        cons[k].release(n)
                        moved = [held[k].popleft() for _ in range(n)]
                        (done.extend if k == n_links - 1 else ready[k + 1].extend)(moved)
                    s = ring.statistics()
                    assert s.written == next_id - reserved
                    assert s.read == len(done) and s.occupancy == s.written - len(done)
                    for k, lk in enumerate(s.links):
                        assert lk.occupancy == len(ready[k]) + len(held[k])  # released upstream, not here
                        assert lk.peak_occupancy >= lk.occupancy
                assert done == sorted(done) and done == list(range(len(done)))
        finally:
            for c in cons:
                c.close()


def test_link_statistics_and_errors(ring_name):
    with rt.Ring.create(ring_name, payload_bytes=64, n_slots=4, links=3) as ring:
        assert ring.n_links == 3
        with pytest.raises(ValueError, match="link 3 does not exist"):
            ring.consumer(link=3)
        with pytest.raises(ValueError, match="a chain link is 0 to"):
            ring.consumer(link=rt.MAX_LINKS)
        with ring.producer() as p, ring.consumer(link=0) as c0, ring.consumer(link=1) as c1, ring.consumer(link=2) as c2:
            for i in range(4):
                p.reserve().write(np.array([i], np.uint8))
                p.commit()
            with pytest.raises(rt.WouldBlock):
                p.reserve_nowait()  # 4 slots, none released by the last link
            with pytest.raises(rt.WouldBlock):
                c1.acquire_nowait()  # link 0 released nothing yet
            c0.acquire_many(4)
            c0.release(3)
            assert [int(s.array()[0]) for s in c1.acquire_many(4)] == [0, 1, 2]
            c1.release(2)
            c2.acquire()
            c2.release()
            s = ring.statistics()
            assert [lk.read for lk in s.links] == [3, 2, 1]
            assert [lk.occupancy for lk in s.links] == [1, 1, 1]
            assert s.read == 1 and s.occupancy == 3 and all(lk.alive for lk in s.links)
            p.reserve_nowait()  # the last link freed one slot
    with pytest.raises(ValueError, match="links=9"):
        rt.Ring.create(ring_name, payload_bytes=64, n_slots=4, links=9)


def _start(target, *args):
    proc = ctx.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def _ids(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


def _reap(*procs):
    for proc in procs:
        if proc is not None and proc.is_alive():
            proc.kill()
        if proc is not None:
            proc.join(10)


@pytest.mark.parametrize("wait", ["sleep", "kernel"])
def test_three_links_in_processes_see_every_frame_and_each_others_marks(ring_name, tmp_path, wait):
    n = 3000
    logs = [tmp_path / f"link{k}.log" for k in range(3)]
    with rt.Ring.create(ring_name, payload_bytes=4096, n_slots=16, links=3, wait=wait) as ring:
        links = [_start(w.chain_consume, ring_name, k, str(logs[k])) for k in range(3)]
        prod = _start(w.produce, ring_name, n)
        try:
            for proc in (prod, *links):
                proc.join(120)
                assert proc.exitcode == 0
        finally:
            _reap(prod, *links)
        for log in logs:
            assert "BAD" not in log.read_text()
            assert _ids(log) == list(range(n))
        st = ring.statistics()
        assert st.written == st.read == n and [lk.read for lk in st.links] == [n, n, n]


@pytest.mark.parametrize("victim", [0, 1, 2])
def test_sigkill_of_each_link_mid_stream_loses_nothing(ring_name, tmp_path, victim):
    """The killed link held one frame unreleased; its successor gets it again, and every link
    downstream sees every frame exactly once, in order, marked by every link before it."""
    n, hang_at = 2000, 777
    logs = [tmp_path / f"link{k}.log" for k in range(3)]
    with rt.Ring.create(ring_name, payload_bytes=4096, n_slots=16, links=3) as ring:
        links = [_start(w.chain_consume, ring_name, k, str(logs[k]), hang_at if k == victim else None) for k in range(3)]
        prod = _start(w.produce, ring_name, n)
        again = None
        try:
            deadline = time.monotonic() + 60
            while hang_at not in _ids(logs[victim]):
                assert time.monotonic() < deadline, "the victim never reached its frame"
                time.sleep(0.01)
            os.kill(links[victim].pid, signal.SIGKILL)
            links[victim].join(10)
            st = ring.statistics()
            assert st.links[victim].read == hang_at  # the held frame was never released
            assert all(lk.read <= hang_at for lk in st.links[victim + 1:])  # downstream never passed it
            again = _start(w.chain_consume, ring_name, victim, str(logs[victim]))
            for proc in (prod, again, *(p for k, p in enumerate(links) if k != victim)):
                proc.join(120)
                assert proc.exitcode == 0
        finally:
            _reap(prod, again, *links)
        for k, log in enumerate(logs):
            assert "BAD" not in log.read_text()
            ids = _ids(log)
            if k == victim:  # the held frame is delivered again to the restarted link
                assert ids == list(range(hang_at + 1)) + list(range(hang_at, n))
            else:
                assert ids == list(range(n))
