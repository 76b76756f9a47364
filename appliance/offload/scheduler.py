"""Which ready jobs to start now: a pure function of the ready jobs, the running counts and
the free slots (state in, decisions out), so its guarantees are tested without processes.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from appliance.offload.config import CLASSES

__all__ = ["Candidate", "Decision", "SchedulerPolicy", "SchedulerState", "plan", "dependency_action"]


@dataclass(frozen=True)
class Candidate:
    """A ready job as the scheduler sees it (ready: waiting, backoff over, dependency met)."""

    id: int
    priority: str


@dataclass(frozen=True)
class SchedulerPolicy:
    slots: int  #: the executor's total slots (workers)
    limits: Mapping[str, int] = field(default_factory=lambda: {"realtime": 2, "batch": 2, "reprocess": 1})
    shares: Mapping[str, float] = field(default_factory=lambda: {"batch": 0.2, "reprocess": 0.1})
    reserved_realtime: int = 1

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


def plan(ready: Sequence[Candidate], running: Mapping[str, int], free_slots: int,
         policy: SchedulerPolicy, state: SchedulerState | None = None) -> Decision:
    """Pick the jobs to start now from ``ready`` (oldest first within each class)."""
    state = state or SchedulerState()
    queues: dict[str, list[int]] = {c: [] for c in CLASSES}
    for cand in ready:
        if cand.priority not in queues:
            raise ValueError(f"job {cand.id}: unknown priority class {cand.priority!r}")
        queues[cand.priority].append(cand.id)
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
        start.append(queues[chosen].pop(0))
        reasons.append(why)
        run[chosen] += 1
        budget -= 1
        for c in CLASSES:
            if c == chosen:
                passed[c] = 0
            elif queues[c]:
                passed[c] += 1
    return Decision(tuple(start), SchedulerState(passed), tuple(reasons))


def dependency_action(dep_state: str | None) -> str:
    """What a job does given its dependency's state: "ready", "wait", "held" or "cancelled"."""
    if dep_state is None or dep_state == "succeeded":
        return "ready"
    if dep_state in ("held", "cancelled"):
        return dep_state
    return "wait"
