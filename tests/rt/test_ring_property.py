"""Property test: random interleavings of reserve/commit/acquire/release against a model."""

from __future__ import annotations

import collections
import itertools
import os

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rt

_counter = itertools.count()

OPS = st.lists(
    st.sampled_from(["reserve", "commit", "acquire", "release", "acquire_many", "release_all"]),
    max_size=200,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=OPS, n_slots=st.sampled_from([2, 4, 8]), policy=st.sampled_from(["block", "drop_newest"]))
def test_random_interleavings_keep_order_and_lose_nothing(ops, n_slots, policy):
    name = f"aptest.prop.{os.getpid()}.{next(_counter)}"
    with rt.Ring.create(name, payload_bytes=16, n_slots=n_slots, policy=policy) as ring:
        with ring.producer() as p, ring.consumer() as c:
            next_id = 0
            reserved: collections.deque[tuple[int, bool]] = collections.deque()  # (id, dropped)
            in_ring: collections.deque[int] = collections.deque()  # committed, not yet acquired
            acquired: collections.deque[int] = collections.deque()  # acquired, not released
            delivered, dropped = [], []
            for op in ops:
                if op == "reserve":
                    try:
                        slot = p.reserve_nowait()
                    except rt.WouldBlock:
                        # Only when every slot is committed, acquired or reserved.
                        assert policy == "block"
                        assert len(in_ring) + len(acquired) + sum(not d for _, d in reserved) == n_slots
                        continue
                    slot.write(np.array([next_id], np.uint64))
                    reserved.append((next_id, slot.dropped))
                    if slot.dropped:  # the drop is decided (and counted) at reserve
                        dropped.append(next_id)
                    next_id += 1
                elif op == "commit" and reserved:
                    fid, was_dropped = reserved.popleft()
                    p.commit()
                    if not was_dropped:
                        in_ring.append(fid)
                elif op in ("acquire", "acquire_many"):
                    try:
                        slots = [c.acquire_nowait()] if op == "acquire" else c.acquire_many(3, timeout=0)
                    except rt.WouldBlock:
                        assert not in_ring
                        continue
                    for slot in slots:
                        fid = int(slot.array()[0])
                        assert fid == in_ring.popleft()
                        acquired.append(fid)
                elif op == "release" and acquired:
                    c.release()
                    delivered.append(acquired.popleft())
                elif op == "release_all" and acquired:
                    c.release(len(acquired))
                    delivered.extend(acquired)
                    acquired.clear()
                s = ring.statistics()
                assert s.written == len(delivered) + len(acquired) + len(in_ring)
                assert s.read == len(delivered)
                assert s.drops == len(dropped)
                assert s.occupancy <= s.peak_occupancy <= n_slots
            # Order kept, nothing duplicated, everything accounted for.
            assert delivered == sorted(delivered)
            accounted = sorted(delivered + list(acquired) + list(in_ring) + dropped + [f for f, d in reserved if not d])
            assert accounted == list(range(next_id))
            if policy == "block":
                assert not dropped
