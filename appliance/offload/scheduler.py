"""Which ready jobs to start now: a pure function of the ready jobs, the running counts and
the free slots (state in, decisions out), so its guarantees are tested without processes.

:func:`place` does the same across several compute pools (``[offload.pools]``): every started
job goes to a pool that serves its class, can read its inputs, fits its cores/memory/GPU per
slot and has a free slot whose worker has at least the kind's ``timeout_s`` of walltime left;
among those the cheapest, then the least loaded. :func:`plan` is ``place`` over one pool that
fits everything.

Rules, in order:

1. Concurrency limits: at most ``limits[c]`` jobs of class ``c`` run at once (all executors of
   this orchestrator), and never more than ``free_slots`` start per call.
2. Reserved real-time slots: batch and reprocess never occupy the last ``reserved_realtime``
   slots of the executor, so a real-time job arriving under a reprocess flood starts at the next
   dispatch (the bound is one dispatch tick), without preempting anything.
3. Guaranteed share: a lower class with ready work that has been passed over for
   ``ceil(1 / share[c]) - 1`` consecutive dispatches gets the next one it is eligible for, so
   batch and reprocess are not starved by a steady real-time stream.
4. Otherwise strict priority: realtime > batch > reprocess; oldest first within a class.

Within a class the jobs come in the ledger's fair-share order (``Ledger.ready``: the
instruments with the fewest of the class in flight first, round robin, then the oldest), which
is the fair share with equal weights. With ``offload.instrument_weights`` the same rule is
weighted (weighted least-served-first): each next job of a class comes from the instrument with
the least ``(in flight + started by this call) / weight``, ties in the ledger's order, oldest
first within an instrument. Two backlogged instruments of weights 2 and 1 therefore hold 2:1 of
the class's slots and, with jobs of equal length, get 2:1 of its starts. An instrument with
nothing of the class in flight has load 0 and goes first whatever the weights, so another
instrument's backlog still delays its real-time job by at most the reserved-slot bound.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from appliance.offload.classes import CLASSES

__all__ = ["Candidate", "Decision", "InFlight", "Placement", "PoolState", "SchedulerPolicy", "SchedulerState", "dependency_action",
           "in_flight_of", "place", "plan", "unplaceable"]


@dataclass(frozen=True)
class Candidate:
    """A ready job as the scheduler sees it (ready: waiting, backoff over, dependency met)."""

    id: int
    priority: str
    cores: int = 0  #: what the job's kind needs per attempt (0: not declared)
    memory_mb: int = 0
    gpu: bool = False
    inputs: tuple[str, ...] = ("hot",)  #: data locations its inputs are on (any one will do)
    timeout_s: float = 0.0  #: the kind's attempt limit: a worker must have this much walltime left
    instrument: str = ""  #: the instrument that submitted it (``Job.instrument_id``): the fair share's unit


@dataclass(frozen=True)
class SchedulerPolicy:
    slots: int  #: the executor's total slots (workers)
    limits: Mapping[str, int] = field(default_factory=lambda: {"realtime": 2, "batch": 2, "reprocess": 1})
    shares: Mapping[str, float] = field(default_factory=lambda: {"batch": 0.2, "reprocess": 0.1})
    reserved_realtime: int = 1
    #: ``offload.instrument_weights``: instrument -> its weight in the fair share within a class
    #: (empty: equal weights, the ledger's order is kept); an instrument not named weighs 1.0
    instrument_weights: Mapping[str, float] = field(default_factory=dict)

    def weight(self, instrument: str) -> float:
        return float(self.instrument_weights.get(instrument, 1.0))

    def starve_after(self, cls: str) -> int | None:
        """Passed-over dispatches after which ``cls`` gets the next one (None: no guarantee)."""
        share = self.shares.get(cls, 0.0)
        return None if share <= 0 else max(0, math.ceil(1.0 / share) - 1)


@dataclass(frozen=True)
class SchedulerState:
    """Per class: dispatches since it was last chosen while it had ready work."""

    passed_over: Mapping[str, int] = field(default_factory=lambda: {c: 0 for c in CLASSES})


@dataclass(frozen=True)
class Decision:
    start: tuple[int, ...]  #: job ids to lease and start, in order
    state: SchedulerState
    reasons: tuple[str, ...] = ()  #: per started job: "priority", "share" or "reserved"


def _eligible(cls: str, running: dict[str, int], policy: SchedulerPolicy) -> bool:
    if running[cls] >= policy.limits.get(cls, 0):
        return False
    total = sum(running.values())
    if total >= policy.slots:
        return False
    if cls != "realtime":
        non_rt = total - running["realtime"]
        reserve = min(policy.reserved_realtime, policy.slots - 1) if policy.slots > 1 else 0
        if non_rt >= policy.slots - reserve:  # the reserved slots stay free for realtime
            return False
    return True


InFlight = Mapping[str, Mapping[str, int]]  #: class -> instrument -> jobs leased or running (every owner)


def in_flight_of(jobs: Iterable) -> dict[str, dict[str, int]]:
    """:data:`InFlight` from the ledger's leased and running jobs (anything with ``priority``
    and ``instrument_id``; a row with ``n`` counts that many, as ``Ledger.in_flight()`` gives)."""
    out: dict[str, dict[str, int]] = {c: {} for c in CLASSES}
    for j in jobs:
        row = out.setdefault(j.priority, {})
        row[j.instrument_id] = row.get(j.instrument_id, 0) + int(getattr(j, "n", 1))
    return out


class _Served:
    """Per class and instrument: jobs in flight plus those this call started (the weighted load)."""

    def __init__(self, in_flight: InFlight | None, policy: SchedulerPolicy) -> None:
        self.policy = policy
        self.n = {c: {i: int(v) for i, v in (in_flight or {}).get(c, {}).items()} for c in CLASSES}

    def order(self, queue: Sequence[Candidate], cls: str) -> list[int]:
        """Indices into ``queue`` in the order to take them for the next start of ``cls``: the
        least loaded instrument first (stable: ties and each instrument's jobs stay in ``queue``'s
        order). Without weights the order is ``queue``'s own (the ledger's equal-weight share)."""
        idx = list(range(len(queue)))
        if not self.policy.instrument_weights:
            return idx
        load = self.n[cls]
        return sorted(idx, key=lambda i: load.get(queue[i].instrument, 0) / self.policy.weight(queue[i].instrument))

    def started(self, cand: Candidate) -> None:
        row = self.n[cand.priority]
        row[cand.instrument] = row.get(cand.instrument, 0) + 1


def plan(ready: Sequence[Candidate], running: Mapping[str, int], free_slots: int,
         policy: SchedulerPolicy, state: SchedulerState | None = None, in_flight: InFlight | None = None) -> Decision:
    """Pick the jobs to start now from ``ready`` (oldest first within each class; across
    instruments weighted by ``policy.instrument_weights`` given ``in_flight``)."""
    state = state or SchedulerState()
    served = _Served(in_flight, policy)
    queues: dict[str, list[Candidate]] = {c: [] for c in CLASSES}
    for cand in ready:
        if cand.priority not in queues:
            raise ValueError(f"job {cand.id}: unknown priority class {cand.priority!r}")
        queues[cand.priority].append(cand)
    run = {c: int(running.get(c, 0)) for c in CLASSES}
    passed = {c: int(state.passed_over.get(c, 0)) for c in CLASSES}
    # free_slots is what the executor can take now; slots is its size. A caller with fewer free
    # slots than slots - running (another user of the executor) is honoured.
    budget = max(0, min(free_slots, policy.slots - sum(run.values())))
    start: list[int] = []
    reasons: list[str] = []
    while budget > 0:
        eligible = [c for c in CLASSES if queues[c] and _eligible(c, run, policy)]
        if not eligible:
            break
        starving = [c for c in eligible if c != "realtime" and policy.starve_after(c) is not None
                    and passed[c] >= policy.starve_after(c)]
        if starving:
            chosen = max(starving, key=lambda c: (passed[c], -CLASSES.index(c)))
            why = "share"
        else:
            chosen = eligible[0]
            why = "priority"
        cand = queues[chosen].pop(served.order(queues[chosen], chosen)[0])
        served.started(cand)
        start.append(cand.id)
        reasons.append(why)
        run[chosen] += 1
        budget -= 1
        for c in CLASSES:
            if c == chosen:
                passed[c] = 0
            elif queues[c]:
                passed[c] += 1
    return Decision(tuple(start), SchedulerState(passed), tuple(reasons))


@dataclass(frozen=True)
class PoolState:
    """One compute pool as :func:`place` sees it (recorded from the executors each dispatch)."""

    name: str
    slots: int  #: live slots now (a Slurm pool's grow and shrink)
    free_time_left: tuple[float, ...] = ()  #: per free slot: walltime its worker has left (inf: no walltime)
    running: Mapping[str, int] = field(default_factory=dict)  #: attempts on this pool per class
    classes: tuple[str, ...] = CLASSES
    reads: tuple[str, ...] = ("hot", "warm", "object")
    cores: int = 0  #: per slot, 0 = not declared (anything fits)
    memory_mb: int = 0
    gpus: int = 0
    cost: float = 1.0
    walltime_s: float = 0.0  #: the pool's worker walltime (0: none)


@dataclass(frozen=True)
class Placement:
    start: tuple[tuple[int, str], ...]  #: (job id, pool) to lease and start, in order
    state: SchedulerState
    reasons: tuple[str, ...] = ()  #: per started job: "priority" or "share"
    waiting: Mapping[int, str] = field(default_factory=dict)  #: job id -> why it was not started now


def unplaceable(cand: Candidate, pool: PoolState) -> str | None:
    """Why ``cand`` can never run on ``pool`` (None: it can, given a free slot)."""
    if cand.priority not in pool.classes:
        return f"pool {pool.name} does not serve class {cand.priority}"
    if not set(cand.inputs) & set(pool.reads):
        return (f"pool {pool.name} reads {', '.join(pool.reads)}; the job's inputs are only on "
                f"{', '.join(cand.inputs)}")
    if cand.gpu and pool.gpus < 1:
        return f"pool {pool.name} has no GPU"
    if pool.cores and cand.cores > pool.cores:
        return f"the job needs {cand.cores} cores; pool {pool.name} has {pool.cores} per slot"
    if pool.memory_mb and cand.memory_mb > pool.memory_mb:
        return f"the job needs {cand.memory_mb} MB; pool {pool.name} has {pool.memory_mb} MB per slot"
    if pool.walltime_s and cand.timeout_s > pool.walltime_s:
        return (f"the job may run {cand.timeout_s:.0f} s (its kind's timeout_s) but pool {pool.name}'s workers "
                f"live {pool.walltime_s:.0f} s (walltime_s)")
    return None


def _slot_now(cand: Candidate, pool: PoolState, free: list[float], run: dict[str, int],
              policy: SchedulerPolicy) -> tuple[int | None, str]:
    """The free slot (index into ``free``) to start ``cand`` on now, or None and why not."""
    if not free:
        return None, f"pool {pool.name}: no free slot"
    if cand.priority != "realtime" and "realtime" in pool.classes and pool.slots > 1:
        reserve = min(policy.reserved_realtime, pool.slots - 1)
        non_rt = sum(run.values()) - run.get("realtime", 0)
        if non_rt >= pool.slots - reserve:
            return None, f"pool {pool.name}: its free slots are reserved for real-time jobs"
    fitting = [i for i, left in enumerate(free) if left >= cand.timeout_s]
    if not fitting:
        return None, (f"pool {pool.name}: no free worker has {cand.timeout_s:.0f} s of walltime left "
                      f"(most: {max(free):.0f} s); waiting for a new worker")
    return min(fitting, key=lambda i: free[i]), ""


def place(ready: Sequence[Candidate], running: Mapping[str, int], pools: Sequence[PoolState],
          policy: SchedulerPolicy, state: SchedulerState | None = None, in_flight: InFlight | None = None) -> Placement:
    """Pick the jobs to start now and the pool of each (the module's rules, across pools)."""
    state = state or SchedulerState()
    served = _Served(in_flight, policy)
    queues: dict[str, list[Candidate]] = {c: [] for c in CLASSES}
    for cand in ready:
        if cand.priority not in queues:
            raise ValueError(f"job {cand.id}: unknown priority class {cand.priority!r}")
        queues[cand.priority].append(cand)
    run = {c: int(running.get(c, 0)) for c in CLASSES}
    passed = {c: int(state.passed_over.get(c, 0)) for c in CLASSES}
    free = {p.name: list(p.free_time_left)[:max(0, p.slots - sum(p.running.values()))] for p in pools}
    prun = {p.name: {c: int(p.running.get(c, 0)) for c in CLASSES} for p in pools}
    waiting: dict[int, str] = {}
    # jobs no pool can ever take are left waiting with every pool's reason
    for c in CLASSES:
        keep = []
        for cand in queues[c]:
            why = [unplaceable(cand, p) for p in pools]
            if pools and all(why):
                waiting[cand.id] = "no pool can run it: " + "; ".join(why)  # type: ignore[arg-type]
            elif not pools:
                waiting[cand.id] = "no compute pool is configured"
            else:
                keep.append(cand)
        queues[c] = keep
    start: list[tuple[int, str]] = []
    reasons: list[str] = []
    while True:
        options: dict[str, tuple[int, str, int]] = {}  # class -> (queue index, pool, slot index)
        for c in CLASSES:
            if not queues[c] or run[c] >= policy.limits.get(c, 0):
                continue
            for qi in served.order(queues[c], c):
                cand = queues[c][qi]
                best = None
                whys = []
                for p in pools:
                    if unplaceable(cand, p):
                        continue
                    slot, why = _slot_now(cand, p, free[p.name], prun[p.name], policy)
                    if slot is None:
                        whys.append(why)
                        continue
                    load = 1.0 - len(free[p.name]) / max(1, p.slots)
                    key = (p.cost, load, p.name)
                    if best is None or key < best[0]:
                        best = (key, p.name, slot)
                if best is not None:
                    options[c] = (qi, best[1], best[2])
                    break
                waiting[cand.id] = "; ".join(whys)
        if not options:
            break
        eligible = [c for c in CLASSES if c in options]
        starving = [c for c in eligible if c != "realtime" and policy.starve_after(c) is not None
                    and passed[c] >= policy.starve_after(c)]  # type: ignore[operator]
        if starving:
            chosen = max(starving, key=lambda c: (passed[c], -CLASSES.index(c)))
            why = "share"
        else:
            chosen = eligible[0]
            why = "priority"
        qi, pool, slot = options[chosen]
        cand = queues[chosen].pop(qi)
        served.started(cand)
        waiting.pop(cand.id, None)
        free[pool].pop(slot)
        prun[pool][chosen] += 1
        start.append((cand.id, pool))
        reasons.append(why)
        run[chosen] += 1
        for c in CLASSES:
            if c == chosen:
                passed[c] = 0
            elif queues[c]:
                passed[c] += 1
    for c in CLASSES:  # what the limits held back
        for cand in queues[c]:
            waiting.setdefault(cand.id, f"class {c} is at its limit (offload.limits.{c} = {policy.limits.get(c, 0)})"
                               if run[c] >= policy.limits.get(c, 0) else "no free slot on a pool that can run it")
    return Placement(tuple(start), SchedulerState(passed), tuple(reasons), waiting)


def dependency_action(dep_state: str | None) -> str:
    """What a job does given its dependency's state: "ready", "wait", "held" or "cancelled"."""
    if dep_state is None or dep_state == "succeeded":
        return "ready"
    if dep_state in ("held", "cancelled"):
        return dep_state
    return "wait"
