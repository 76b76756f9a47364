"""Per-instrument weights in the fair share (``offload.instrument_weights``), as pure functions:
event sequences in, placements out, no processes."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.config import ConfigError, load_config
from appliance.offload.config import CLASSES
from appliance.offload.scheduler import (Candidate, PoolState, SchedulerPolicy, SchedulerState, in_flight_of, place,
                                         plan)

RT_ONLY = {"realtime": 6, "batch": 0, "reprocess": 0}


def _ledger_order(backlog: dict[str, list[Candidate]], in_flight: dict[str, int], per_instrument: int) -> list[Candidate]:
    """The order Ledger.ready() hands the scheduler: fewest in flight first, then round robin
    by each instrument's waiting order (a model of its SQL, for the sequences below)."""
    ranked = [(in_flight.get(i, 0), rn, c.id, c) for i, q in backlog.items() for rn, c in enumerate(q[:per_instrument])]
    return [c for *_, c in sorted(ranked, key=lambda r: r[:3])]


def _sequence(weights: dict[str, float], *, ticks: int = 3000, slots: int = 6, seed: int = 1,
              use_place: bool = False) -> Counter:
    """Two or more instruments with an endless realtime backlog on ``slots`` slots; each job
    runs 1..5 ticks (the same distribution for all). Returns the starts per instrument."""
    rng = random.Random(seed)
    ids = itertools.count(1)
    backlog = {i: [Candidate(next(ids), "realtime", instrument=i) for _ in range(8)] for i in weights}
    policy = SchedulerPolicy(slots, dict(RT_ONLY), {"batch": 0.0, "reprocess": 0.0}, 0, instrument_weights=weights)
    running: list[tuple[int, str]] = []  # (end tick, instrument)
    starts: Counter = Counter()
    state = SchedulerState()
    for t in range(ticks):
        running = [r for r in running if r[0] > t]
        per_inst = Counter(i for _, i in running)
        ready = _ledger_order(backlog, per_inst, 8)
        flight = {"realtime": dict(per_inst)}
        if use_place:
            pool = PoolState("p", slots, tuple([float("inf")] * (slots - len(running))), {"realtime": len(running)})
            chosen = [i for i, _ in place(ready, {"realtime": len(running)}, [pool], policy, state, flight).start]
        else:
            chosen = list(plan(ready, {"realtime": len(running)}, slots - len(running), policy, state, flight).start)
        by_id = {c.id: c for c in ready}
        for job_id in chosen:
            inst = by_id[job_id].instrument
            backlog[inst].remove(by_id[job_id])
            backlog[inst].append(Candidate(next(ids), "realtime", instrument=inst))  # the backlog never empties
            running.append((t + rng.randint(1, 5), inst))
            starts[inst] += 1
    return starts


@pytest.mark.parametrize("use_place", [False, True])
def test_two_to_one_weights_give_two_to_one_starts_over_a_long_sequence(use_place):
    starts = _sequence({"A": 2.0, "B": 1.0}, use_place=use_place)
    ratio = starts["A"] / starts["B"]
    assert sum(starts.values()) > 5000
    assert ratio == pytest.approx(2.0, rel=0.05), starts  # stated tolerance: within 5 %


def test_three_instruments_get_shares_in_proportion_to_their_weights():
    starts = _sequence({"A": 3.0, "B": 2.0, "C": 1.0}, slots=12)
    total = sum(starts.values())
    for inst, w in (("A", 3), ("B", 2), ("C", 1)):
        assert starts[inst] / total == pytest.approx(w / 6, rel=0.05), starts


def test_equal_weights_share_equally():
    starts = _sequence({"A": 1.0, "B": 1.0})
    assert starts["A"] / starts["B"] == pytest.approx(1.0, rel=0.05), starts


def test_without_weights_the_ledger_order_is_kept():
    """The default (no weights): plan keeps the order it is given within a class, which is the
    ledger's equal-weight fair share, whatever the in-flight counts say."""
    ready = [Candidate(1, "realtime", instrument="B"), Candidate(2, "realtime", instrument="A"),
             Candidate(3, "realtime", instrument="A")]
    policy = SchedulerPolicy(4, dict(RT_ONLY), reserved_realtime=0)
    d = plan(ready, {}, 3, policy, in_flight={"realtime": {"B": 5}})
    assert d.start == (1, 2, 3)


def test_an_unknown_instrument_gets_the_default_weight():
    policy = SchedulerPolicy(4, dict(RT_ONLY), reserved_realtime=0, instrument_weights={"A": 2.0})
    assert policy.weight("A") == 2.0 and policy.weight("Z") == 1.0
    # A (weight 2) has 2 in flight = load 1; Z (not named, weight 1) has 1 = load 1; Y has 2 = load 2
    ready = [Candidate(1, "realtime", instrument="Y"), Candidate(2, "realtime", instrument="Z"),
             Candidate(3, "realtime", instrument="A")]
    d = plan(ready, {"realtime": 5}, 1, SchedulerPolicy(8, {"realtime": 6, "batch": 0, "reprocess": 0},
                                                        reserved_realtime=0, instrument_weights={"A": 2.0}),
             in_flight={"realtime": {"A": 2, "Z": 1, "Y": 2}})
    assert d.start == (2,)  # Z and A tie at load 1: the ledger's order decides


def test_a_backlog_does_not_delay_another_instruments_realtime_job_beyond_the_bound():
    """A (weight 10) floods realtime and batch and has a real-time job in flight; B's one
    real-time job, last in the list, starts at this dispatch: B has nothing in flight (load 0),
    so it goes first whatever A's weight. Batch never takes the reserved slot, weights or not."""
    ids = itertools.count(1)
    ready = ([Candidate(next(ids), "realtime", instrument="A") for _ in range(50)]
             + [Candidate(next(ids), "batch", instrument="A") for _ in range(50)]
             + [Candidate(next(ids), "realtime", instrument="B")])
    b_job = ready[-1].id
    policy = SchedulerPolicy(4, {"realtime": 2, "batch": 3, "reprocess": 1}, reserved_realtime=1,
                             instrument_weights={"A": 10.0, "B": 1.0})
    running = {"realtime": 1, "batch": 2}  # A's
    d = plan(ready, running, 1, policy, in_flight={"realtime": {"A": 1}, "batch": {"A": 2}})
    assert d.start == (b_job,)
    # A's batch fills the unreserved slots: the one left is the reserved one, for B's job
    d = plan(ready, {"batch": 3}, 1, policy, in_flight={"batch": {"A": 3}})
    assert d.start == (1,)  # nothing real-time in flight: A's oldest and B's tie at load 0, the ledger's order decides
    d = plan([c for c in ready if c.priority == "batch"], {"batch": 3}, 1, policy, in_flight={"batch": {"A": 3}})
    assert d.start == ()


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.tuples(st.integers(1, 6), st.integers(0, 6), st.integers(0, 6)), st.integers(0, 3),
       st.lists(st.tuples(st.sampled_from(CLASSES), st.sampled_from("ABC")), max_size=30),
       st.dictionaries(st.sampled_from("ABC"), st.floats(0.1, 10.0), max_size=3),
       st.dictionaries(st.sampled_from(CLASSES), st.dictionaries(st.sampled_from("ABC"), st.integers(0, 4))),
       st.integers(0, 8))
def test_weights_only_reorder_within_a_class(slots, lim, reserve, jobs, weights, flight, free):
    """Whatever the weights: the same number of jobs per class start as without them (limits,
    reserved slots and shares are untouched), and each instrument's own jobs go oldest first."""
    ready = [Candidate(i, c, instrument=inst) for i, (c, inst) in enumerate(jobs, 1)]
    running = {c: sum(flight.get(c, {}).values()) for c in CLASSES}
    base = SchedulerPolicy(slots, dict(zip(CLASSES, lim)), reserved_realtime=reserve)
    weighted = SchedulerPolicy(slots, dict(zip(CLASSES, lim)), reserved_realtime=reserve, instrument_weights=weights)
    d0 = plan(ready, running, free, base)
    d1 = plan(ready, running, free, weighted, in_flight=flight)
    by_id = {c.id: c for c in ready}
    assert Counter(by_id[i].priority for i in d0.start) == Counter(by_id[i].priority for i in d1.start)
    assert d0.state == d1.state
    for c in CLASSES:
        for inst in "ABC":
            mine = [i for i in d1.start if by_id[i].priority == c and by_id[i].instrument == inst]
            assert mine == sorted(mine)


def test_in_flight_of_counts_per_class_and_instrument():
    class J:
        def __init__(self, priority, instrument_id):
            self.priority, self.instrument_id = priority, instrument_id

    got = in_flight_of([J("realtime", "A"), J("realtime", "A"), J("batch", "B"), J("realtime", "")])
    assert got == {"realtime": {"A": 2, "": 1}, "batch": {"B": 1}, "reprocess": {}}


def test_weights_load_from_the_config():
    assert load_config().offload.instrument_weights == {}
    off = load_config(overrides=["offload.instrument_weights={NB501234 = 2, NB501235 = 0.5}"]).offload
    assert off.instrument_weights == {"NB501234": 2.0, "NB501235": 0.5}


@pytest.mark.parametrize("value", ["0", "-1", '"two"', "true", "nan", "inf", "1e6"])
def test_a_bad_weight_is_a_config_error_naming_the_key(value):
    with pytest.raises(ConfigError, match=r"offload\.instrument_weights\.NB501234 = .* allowed a number more than 0"):
        load_config(overrides=[f"offload.instrument_weights.NB501234={value}"])


def test_weights_must_be_a_table():
    with pytest.raises(ConfigError, match=r"offload\.instrument_weights = 3 .* a table of instrument id -> weight"):
        load_config(overrides=["offload.instrument_weights=3"])
