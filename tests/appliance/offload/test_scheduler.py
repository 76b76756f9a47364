"""The scheduler's pure logic: limits, the reserved real-time slot, guaranteed shares, priority."""

from __future__ import annotations

import itertools
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.offload.config import CLASSES
from appliance.offload.scheduler import Candidate, SchedulerPolicy, SchedulerState, dependency_action, plan

policies = st.builds(
    lambda slots, lim, share, res: SchedulerPolicy(slots, dict(zip(CLASSES, lim)), dict(zip(("batch", "reprocess"), share)), res),
    st.integers(1, 8),
    st.tuples(st.integers(1, 6), st.integers(0, 6), st.integers(0, 6)),
    st.tuples(st.sampled_from([0.0, 0.1, 0.2, 0.5]), st.sampled_from([0.0, 0.1, 0.25, 0.5])),
    st.integers(0, 3),
)


def _ready(counts):
    ids = itertools.count(1)
    return [Candidate(next(ids), c) for c, n in zip(CLASSES, counts) for _ in range(n)]


@settings(max_examples=400, deadline=None)
@given(policies, st.tuples(*(st.integers(0, 6) for _ in CLASSES)), st.tuples(*(st.integers(0, 4) for _ in CLASSES)),
       st.integers(0, 8), st.tuples(*(st.integers(0, 12) for _ in CLASSES)))
def test_plan_invariants(policy, ready_counts, running_counts, free, passed):
    ready = _ready(ready_counts)
    running = dict(zip(CLASSES, running_counts))
    d = plan(ready, running, free, policy, SchedulerState(dict(zip(CLASSES, passed))))
    by_id = {c.id: c.priority for c in ready}
    chosen = [by_id[i] for i in d.start]
    assert len(set(d.start)) == len(d.start) and all(i in by_id for i in d.start)
    total_before = sum(running.values())
    assert len(chosen) <= max(0, min(free, policy.slots - total_before))
    after = {c: running[c] + chosen.count(c) for c in CLASSES}
    for c in CLASSES:
        # a class never goes over its limit because of this plan
        if chosen.count(c):
            assert after[c] <= policy.limits[c]
    # within a class the oldest (lowest id, ready order) go first
    for c in CLASSES:
        ids = [i for i in d.start if by_id[i] == c]
        assert ids == sorted(ids) and ids == [x.id for x in ready if x.priority == c][: len(ids)]
    # reserved slots: batch + reprocess started here never make non-realtime exceed slots - reserve
    reserve = min(policy.reserved_realtime, policy.slots - 1) if policy.slots > 1 else 0
    non_rt_chosen = len(chosen) - chosen.count("realtime")
    if non_rt_chosen:
        assert after["batch"] + after["reprocess"] <= policy.slots - reserve
    # work conserving: if something eligible is left and budget is left, it would have been taken
    budget_left = min(free, policy.slots - total_before) - len(chosen)
    if budget_left > 0:
        for c in CLASSES:
            left = ready_counts[CLASSES.index(c)] - chosen.count(c)
            if left and after[c] < policy.limits[c] and sum(after.values()) < policy.slots:
                assert c != "realtime", "an eligible realtime job was left waiting"
                assert after["batch"] + after["reprocess"] >= policy.slots - reserve
    # priority: a lower class is only chosen over an eligible higher one by the share rule
    for i, why in zip(d.start, d.reasons):
        assert why in ("priority", "share")
        if by_id[i] == "realtime":
            assert why == "priority"


def _simulate(policy, rounds, arrivals, service=1):
    """Discrete dispatch rounds: a job runs ``service`` rounds (an int, or class -> int);
    returns the dispatch log (round, id, class, rounds waited) and what is left waiting."""
    if isinstance(service, int):
        service = {c: service for c in CLASSES}
    waiting = {c: [] for c in CLASSES}
    running: list[tuple[int, str, int]] = []  # (id, class, rounds left)
    ids = itertools.count(1)
    state = SchedulerState()
    log = []
    arrived_at = {}
    for r in range(rounds):
        for c, n in arrivals(r).items():
            for _ in range(n):
                i = next(ids)
                waiting[c].append(i)
                arrived_at[i] = r
        running = [(i, c, left - 1) for i, c, left in running if left - 1 > 0]
        counts = {c: sum(1 for _, k, _ in running if k == c) for c in CLASSES}
        ready = [Candidate(i, c) for c in CLASSES for i in waiting[c]]
        d = plan(ready, counts, policy.slots - len(running), policy, state)
        state = d.state
        by_id = {x.id: x.priority for x in ready}
        for i in d.start:
            c = by_id[i]
            waiting[c].remove(i)
            running.append((i, c, service[c]))
            log.append((r, i, c, r - arrived_at[i]))
    return log, waiting


def test_realtime_starts_within_one_round_under_a_reprocess_flood():
    policy = SchedulerPolicy(slots=4, limits={"realtime": 2, "batch": 2, "reprocess": 4}, shares={"batch": 0.2, "reprocess": 0.1}, reserved_realtime=1)

    def arrivals(r):
        a = {"reprocess": 50 if r == 0 else 5}  # a flood that never drains
        if r % 7 == 3:
            a["realtime"] = 1
        return a

    # the guarantee holds while real-time work fits the reserved slot (here: one job at a time)
    log, waiting = _simulate(policy, 200, arrivals, service={"realtime": 5, "batch": 20, "reprocess": 20})
    rt = [wait for _, _, c, wait in log if c == "realtime"]
    assert len(rt) == len([r for r in range(200) if r % 7 == 3])
    assert max(rt) == 0  # every real-time job started in the dispatch round it arrived
    assert waiting["reprocess"]  # the flood was real


def test_batch_and_reprocess_get_their_share_under_a_realtime_stream():
    policy = SchedulerPolicy(slots=3, limits={"realtime": 3, "batch": 3, "reprocess": 3}, shares={"batch": 0.2, "reprocess": 0.1}, reserved_realtime=0)
    log, _ = _simulate(policy, 300, lambda r: {"realtime": 3, "batch": 1, "reprocess": 1}, service=1)
    n = len(log)
    frac = {c: sum(1 for x in log if x[2] == c) / n for c in CLASSES}
    assert frac["batch"] >= 0.2 * 0.9 and frac["reprocess"] >= 0.1 * 0.9
    assert frac["realtime"] >= 0.5  # still most of the work
    # and no gap longer than the share allows between two dispatches of a waiting class
    for c, share in (("batch", 0.2), ("reprocess", 0.1)):
        idx = [k for k, x in enumerate(log) if x[2] == c]
        assert max(b - a for a, b in zip(idx, idx[1:])) <= math.ceil(1 / share) + len(CLASSES)


def test_without_share_strict_priority_starves():
    policy = SchedulerPolicy(slots=2, limits={"realtime": 2, "batch": 2, "reprocess": 2}, shares={"batch": 0.0, "reprocess": 0.0}, reserved_realtime=0)
    log, _ = _simulate(policy, 50, lambda r: {"realtime": 2, "batch": 1}, service=1)
    assert all(c == "realtime" for _, _, c, _ in log)  # the guarantee above is what prevents this


def test_limits_and_reserved_slot_examples():
    policy = SchedulerPolicy(slots=3, limits={"realtime": 1, "batch": 3, "reprocess": 1}, shares={"batch": 0, "reprocess": 0}, reserved_realtime=1)
    d = plan(_ready((0, 5, 5)), {}, 3, policy)
    assert len(d.start) == 2  # one slot kept free for realtime
    d = plan(_ready((3, 0, 0)), {}, 3, policy)
    assert len(d.start) == 1  # realtime limit 1
    d = plan(_ready((1, 5, 5)), {"batch": 2}, 1, policy)
    assert d.start == (1,)
    d = plan(_ready((0, 0, 5)), {"reprocess": 1}, 2, policy)
    assert d.start == ()


def test_dependency_action():
    assert dependency_action(None) == "ready" and dependency_action("succeeded") == "ready"
    assert dependency_action("running") == "wait" and dependency_action("retrying") == "wait"
    assert dependency_action("held") == "held" and dependency_action("cancelled") == "cancelled"
