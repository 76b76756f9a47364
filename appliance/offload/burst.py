"""The burst policy: when to ask for cloud slots, for which classes, and how many.

:func:`decide` is a pure function: the waiting jobs (class, age, CPU-hours, input bytes), the
observed rate of the local and HPC pools (cores' worth of work per hour), the money spent today
and the previous :class:`BurstState` in; a :class:`BurstDecision` out (classes that may burst,
slots, the jobs to send in order, the reason, alerts, the next state). No clock, no I/O.

* A class is *threatened* when its oldest waiting job's projected finish age (its age now plus
  the time the local pools need to drain its backlog and every higher class's) exceeds
  ``enter_ratio`` x its SLO. It bursts from then on, and stops only once the projection is below
  ``exit_ratio`` x SLO **and** it has burst for ``min_dwell_s`` (hysteresis and dwell: no flapping).
  Slot counts go up at once and down only after the dwell.
* ``reprocess`` never bursts unless ``allow_reprocess``.
* The jobs to send are the burstable ones with the fewest input bytes per CPU-hour first (the
  cheapest to move for the compute they buy), as many as the remaining budget pays for.
* When the day's spending reaches ``daily_budget`` the policy asks for no slots and raises the
  ``burst_budget`` alert once; it clears when a new day's budget is there.

:func:`simulate` replays a load trace through the policy and a model of the pools and reports
SLO misses, cloud core-hours, egress and cost against two baselines (never burst, burst at once);
:func:`synthetic_trace` makes a day of submissions for N instruments. See docs/burst.md.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from appliance.offload.classes import CLASSES

__all__ = ["ALERT_RULE", "BurstConfig", "BurstDecision", "BurstInputs", "BurstState", "WaitingJob", "compare", "decide", "load_burst",
           "read_log", "simulate", "synthetic_trace", "write_log"]

GB = 1e9
ALERT_RULE = "burst_budget"  #: raised when the day's burst budget is spent (docs/runbook.md)


@dataclass(frozen=True)
class BurstConfig:
    """The ``[burst]`` policy (money in the lab's currency; see docs/burst.md)."""

    slo_s: dict[str, float] = field(default_factory=lambda: {"realtime": 600.0, "batch": 4 * 3600.0, "reprocess": 24 * 3600.0})
    daily_budget: float = 100.0
    core_hour_price: float = 0.05  #: cloud price per core-hour (on-demand or spot, as the lab buys)
    egress_per_gb: float = 0.09  #: what moving one GB of inputs to the cloud costs (link, provider)
    slot_cores: int = 8
    max_slots: int = 16
    enter_ratio: float = 0.8
    exit_ratio: float = 0.4
    min_dwell_s: float = 900.0
    allow_reprocess: bool = False
    startup_s: float = 180.0  #: (simulation) how long a cloud slot takes to come up


def _cerr(key: str, value: Any, allowed: str):
    from appliance.configfile import ConfigError

    return ConfigError(f"config key burst.{key} = {value!r} is invalid: allowed {allowed}")


def load_burst(d: dict | None) -> BurstConfig:
    """Validate a ``[burst]`` table (None: the defaults); errors name the key and what is allowed."""
    if not d:
        return BurstConfig()
    d = dict(d)
    known = set(BurstConfig.__dataclass_fields__)
    for k in d:
        if k not in known:
            raise _cerr(k, d[k], f"one of the keys {', '.join(sorted(known))}")
    out: dict[str, Any] = {}
    if "slo_s" in d:
        slo = d["slo_s"]
        if not isinstance(slo, dict) or any(c not in CLASSES for c in slo):
            raise _cerr("slo_s", slo, f"a table of seconds per class ({', '.join(CLASSES)})")
        merged = dict(BurstConfig().slo_s)
        for c, v in slo.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= 30 * 86400:
                raise _cerr(f"slo_s.{c}", v, "seconds, 1 to 2592000")
            merged[c] = float(v)
        out["slo_s"] = merged
    ranges = {"daily_budget": (0, 1e9), "core_hour_price": (0, 1e4), "egress_per_gb": (0, 1e4), "min_dwell_s": (0, 86400),
              "enter_ratio": (0.01, 10), "exit_ratio": (0, 10), "startup_s": (0, 86400)}
    for k, (lo, hi) in ranges.items():
        if k in d:
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise _cerr(k, v, f"a number {lo} to {hi}")
            out[k] = float(v)
    for k, (lo, hi) in {"slot_cores": (1, 1024), "max_slots": (0, 10000)}.items():
        if k in d:
            v = d[k]
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise _cerr(k, v, f"an integer {lo} to {hi}")
            out[k] = v
    if "allow_reprocess" in d:
        if not isinstance(d["allow_reprocess"], bool):
            raise _cerr("allow_reprocess", d["allow_reprocess"], "true or false")
        out["allow_reprocess"] = d["allow_reprocess"]
    cfg = replace(BurstConfig(), **out)
    if cfg.exit_ratio >= cfg.enter_ratio:
        raise _cerr("exit_ratio", cfg.exit_ratio, f"less than enter_ratio ({cfg.enter_ratio}), or the pool flaps")
    return cfg


@dataclass(frozen=True)
class WaitingJob:
    id: int
    cls: str
    age_s: float
    cpu_hours: float
    input_bytes: int
    cores: int = 1


@dataclass(frozen=True)
class BurstInputs:
    now: float
    waiting: tuple[WaitingJob, ...]
    local_cores: float  #: observed rate of the local + HPC pools, in cores' worth of work
    spent_today: float = 0.0
    cloud_running: int = 0  #: cloud slots busy with a job now
    day: int = 0
    running_core_hours: float = 0.0  #: work left in the jobs running on the local and HPC pools (they are not preempted)  #: the budget day (a new day resets the budget alert)


@dataclass(frozen=True)
class BurstState:
    bursting: tuple[tuple[str, float], ...] = ()  #: (class, since)
    slots: int = 0
    slots_since: float = 0.0
    budget_alert: int | None = None  #: the day the budget alert was raised

    def since(self, cls: str) -> float | None:
        return dict(self.bursting).get(cls)


@dataclass(frozen=True)
class BurstDecision:
    at: float
    classes: tuple[str, ...]
    slots: int
    jobs: tuple[int, ...]
    reason: str
    per_class: dict
    estimated_cost: float
    alerts: tuple[dict, ...]
    state: BurstState

    def log_record(self, inputs: BurstInputs) -> dict:
        """The decision with its inputs, as one decision-log line."""
        waiting: dict[str, dict] = {}
        for j in inputs.waiting:
            w = waiting.setdefault(j.cls, {"jobs": 0, "cpu_hours": 0.0, "input_gb": 0.0, "oldest_s": 0.0})
            w["jobs"] += 1
            w["cpu_hours"] += j.cpu_hours
            w["input_gb"] += j.input_bytes / GB
            w["oldest_s"] = max(w["oldest_s"], j.age_s)
        return {"at": self.at, "classes": list(self.classes), "slots": self.slots, "jobs": list(self.jobs),
                "reason": self.reason, "per_class": self.per_class, "estimated_cost": round(self.estimated_cost, 4),
                "alerts": list(self.alerts),
                "inputs": {"waiting": waiting, "local_cores": inputs.local_cores, "spent_today": round(inputs.spent_today, 4),
                           "cloud_running": inputs.cloud_running, "running_core_hours": round(inputs.running_core_hours, 2)}}


def _rank(cls: str) -> int:
    return CLASSES.index(cls) if cls in CLASSES else len(CLASSES)


def _job_cost(j: WaitingJob, cfg: BurstConfig) -> float:
    return j.cpu_hours * cfg.core_hour_price + j.input_bytes / GB * cfg.egress_per_gb


def decide(inputs: BurstInputs, state: BurstState, cfg: BurstConfig) -> BurstDecision:
    """The burst decision for ``inputs`` given the previous ``state`` (see the module doc)."""
    now = inputs.now
    alerts: list[dict] = []
    remaining = cfg.daily_budget - inputs.spent_today
    budget_alert = state.budget_alert
    if budget_alert is not None and budget_alert != inputs.day:
        alerts.append({"rule": ALERT_RULE, "action": "cleared", "severity": "warning", "subject": "burst",
                       "message": f"a new day's burst budget ({cfg.daily_budget:g}) is available"})
        budget_alert = None
    per_class: dict[str, dict] = {}
    reasons: list[str] = []
    bursting: list[tuple[str, float]] = []
    need_cores = 0.0
    above_ch = inputs.running_core_hours
    for cls in CLASSES:
        mine = [j for j in inputs.waiting if j.cls == cls]
        above_ch += sum(j.cpu_hours for j in mine)
        slo = cfg.slo_s.get(cls, math.inf)
        oldest = max((j.age_s for j in mine), default=0.0)
        if not mine:
            projected = 0.0
        elif inputs.local_cores > 0:
            projected = oldest + above_ch / inputs.local_cores * 3600.0
        else:
            projected = math.inf
        since = state.since(cls)
        info = {"waiting": len(mine), "oldest_s": round(oldest, 1), "projected_s": None if math.isinf(projected) else round(projected, 1),
                "slo_s": slo, "threatened": projected > cfg.enter_ratio * slo}
        per_class[cls] = info
        if cls == "reprocess" and not cfg.allow_reprocess:
            if mine and info["threatened"]:
                reasons.append("reprocess is threatened but never bursts (burst.allow_reprocess = false)")
            continue
        keep = False
        if since is None:
            if info["threatened"]:
                keep, since = True, now
                reasons.append(f"{cls}: projected {_fmt(projected)} > {cfg.enter_ratio:g} x SLO {_fmt(slo)}: burst")
        else:
            low = projected < cfg.exit_ratio * slo
            dwelt = now - since >= cfg.min_dwell_s
            if low and dwelt:
                reasons.append(f"{cls}: projected {_fmt(projected)} < {cfg.exit_ratio:g} x SLO after {_fmt(now - since)}: stop")
            else:
                keep = True
                why = "dwell not over" if low else "still above the exit threshold"
                reasons.append(f"{cls}: keeps bursting (projected {_fmt(projected)}, {why})")
        if keep:
            bursting.append((cls, since))
            window_h = max(slo - oldest, 0.25 * slo) / 3600.0
            need_cores = max(need_cores, above_ch / window_h - inputs.local_cores)
    classes = tuple(c for c, _ in bursting)
    if remaining <= 0:
        if budget_alert is None:
            budget_alert = inputs.day
            alerts.append({"rule": ALERT_RULE, "action": "raised", "severity": "warning", "subject": "burst",
                           "message": f"burst budget reached: spent {inputs.spent_today:.2f} of {cfg.daily_budget:g} today; "
                                      "no cloud slots until tomorrow (raise burst.daily_budget to burst again)"})
        reason = f"daily budget reached ({inputs.spent_today:.2f} of {cfg.daily_budget:g}): no slots" + (
            f"; would burst {', '.join(classes)}" if classes else "")
        new = BurstState((), 0, now, budget_alert)
        return BurstDecision(now, (), 0, (), reason, per_class, 0.0, tuple(alerts), new)
    candidates = sorted((j for j in inputs.waiting if j.cls in classes),
                        key=lambda j: (_rank(j.cls), j.input_bytes / max(j.cpu_hours, 1e-9), -j.age_s, j.id))
    chosen: list[int] = []
    spend = 0.0
    for j in candidates:
        c = _job_cost(j, cfg)
        if spend + c > remaining:
            continue
        chosen.append(j.id)
        spend += c
    if classes:
        want = max(1, math.ceil(max(0.0, need_cores) / cfg.slot_cores))
        want = min(want, cfg.max_slots, inputs.cloud_running + len(chosen))
    else:
        want = 0
    slots, slots_since = want, state.slots_since
    if want < state.slots and classes and now - state.slots_since < cfg.min_dwell_s:
        slots = state.slots  # down only after the dwell
    if slots != state.slots:
        slots_since = now
    chosen = chosen[: max(0, slots - inputs.cloud_running)] if slots else []
    if not reasons:
        reasons.append("no class is threatened: no burst")
    reason = "; ".join(reasons) + f" -> {slots} slot(s)"
    new = BurstState(tuple(bursting), slots, slots_since, budget_alert)
    return BurstDecision(now, classes, slots, tuple(chosen), reason, per_class,
                         sum(_job_cost(j, cfg) for j in inputs.waiting if j.id in set(chosen)), tuple(alerts), new)


def _fmt(s: float) -> str:
    if math.isinf(s):
        return "never (no local capacity)"
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min"


# -- the decision log ---------------------------------------------------------------------------

def write_log(path: str | Path, record: dict) -> None:
    """Append one decision to the log (JSON lines)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with open(p, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")


def read_log(path: str | Path, last: int = 20) -> list[dict]:
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(x) for x in lines[-last:] if x.strip()]


# -- simulation ---------------------------------------------------------------------------------

def synthetic_trace(instruments: int = 4, hours: float = 24.0, seed: int = 0, *, local_cores: int = 8,
                    hpc_cores: int = 8) -> dict:
    """A day of submissions: each instrument runs back to back (8 to 14 h runs); every 10 min of
    a run a real-time QC job; at each run's end ``fastq`` and ``align-qc`` (batch), and now and
    then a reprocess. Sizes follow a generation-1 run (about 20 GB of base calls per run)."""
    rng = random.Random(seed)
    jobs = []
    end = hours * 3600
    for inst in range(instruments):
        t = rng.uniform(0, 3 * 3600)
        while t < end:
            length = rng.uniform(8, 14) * 3600
            c = t + 600
            while c < min(t + length, end):
                jobs.append({"t": round(c, 1), "class": "realtime", "kind": "qc", "instrument": inst, "cores": 1,
                             "cpu_hours": round(rng.uniform(0.05, 0.15), 3), "input_bytes": int(rng.uniform(1e8, 3e8))})
                c += 600
            if t + length < end:
                done = t + length
                gb = rng.uniform(15, 25)
                jobs.append({"t": round(done, 1), "class": "batch", "kind": "fastq", "instrument": inst, "cores": 4,
                             "cpu_hours": round(gb * 0.2, 2), "input_bytes": int(gb * GB)})
                jobs.append({"t": round(done + 60, 1), "class": "batch", "kind": "align-qc", "instrument": inst, "cores": 8,
                             "cpu_hours": round(gb * 0.8, 2), "input_bytes": int(gb * GB)})
                if rng.random() < 0.3:
                    jobs.append({"t": round(done + 120, 1), "class": "reprocess", "kind": "reprocess", "instrument": inst,
                                 "cores": 8, "cpu_hours": round(gb * 2.0, 2), "input_bytes": int(gb * 3 * GB)})
            t += length + rng.uniform(0.5, 2) * 3600
    jobs.sort(key=lambda j: j["t"])
    return {"format": "appliance-burst-trace", "version": 1, "duration_s": end, "step_s": 60,
            "instruments": instruments, "seed": seed,
            "pools": {"local": {"cores": local_cores}, "hpc": {"cores": hpc_cores}}, "jobs": jobs}


@dataclass
class _SimJob:
    id: int
    t: float
    cls: str
    cpu_hours: float
    input_bytes: int
    cores: int
    where: str = ""
    start: float | None = None
    end: float | None = None


def _validate_trace(trace: dict) -> None:
    if not isinstance(trace, dict) or not isinstance(trace.get("jobs"), list) or "pools" not in trace:
        raise ValueError("a trace is a JSON object with \"pools\" and \"jobs\" (see `appliance jobs burst simulate --help`)")
    for i, j in enumerate(trace["jobs"]):
        for k in ("t", "class", "cpu_hours", "input_bytes"):
            if k not in j:
                raise ValueError(f"trace job {i}: no {k!r} (each job needs t, class, cpu_hours, input_bytes; cores optional)")
        if j["class"] not in CLASSES:
            raise ValueError(f"trace job {i}: class {j['class']!r} is not one of {', '.join(CLASSES)}")


def simulate(trace: dict, cfg: BurstConfig, mode: str = "policy", log: list | None = None,
             timeline: list | None = None, every_s: float = 600.0) -> dict:
    """Replay ``trace`` with ``mode`` = ``policy`` | ``never`` | ``at_once``; returns the outcome.

    Model: the local and HPC pools are one pool of their total cores running the highest class
    first (FIFO within a class, a job needs its ``cores`` free). Cloud slots of ``slot_cores``
    come up ``startup_s`` after they are asked for, are billed per core-hour while held, and run
    the jobs the policy chose; each job sent costs its inputs' egress. A job misses its SLO when
    it finishes later than its class's SLO after its submission. ``at_once`` bursts every
    burstable job as soon as it waits (budget not applied, to show what that costs).

    ``timeline``, if given, gets one point every ``every_s`` of simulated time: ``{"t", "waiting"
    (jobs per class), "slots" (cloud slots held), "spent"}``, what ``--plot`` draws."""
    if mode not in ("policy", "never", "at_once"):
        raise ValueError(f"mode {mode!r}: allowed policy, never, at_once")
    _validate_trace(trace)
    step = float(trace.get("step_s", 60))
    local_cores = sum(int(p.get("cores", 0)) for p in trace["pools"].values())
    jobs = [_SimJob(i, float(j["t"]), j["class"], float(j["cpu_hours"]), int(j["input_bytes"]), int(j.get("cores", 1)))
            for i, j in enumerate(trace["jobs"])]
    end_t = float(trace.get("duration_s", max((j.t for j in jobs), default=0)))
    pending = sorted(jobs, key=lambda j: j.t)
    waiting: list[_SimJob] = []
    running_local: list[_SimJob] = []
    cloud_busy: list[_SimJob] = []
    slots_ready: list[float] = []  # when each held slot is (or was) up
    state = BurstState()
    spent = core_h = egress = 0.0
    t = 0.0
    nxt = 0
    limit = end_t + 7 * 86400  # drain what is left, up to a week
    while t <= limit and (t <= end_t or waiting or running_local or cloud_busy):
        while nxt < len(pending) and pending[nxt].t <= t:
            waiting.append(pending[nxt])
            nxt += 1
        for pool in (running_local, cloud_busy):
            for j in [j for j in pool if j.end is not None and j.end <= t]:
                pool.remove(j)
        free = local_cores - sum(j.cores for j in running_local)
        for j in sorted(waiting, key=lambda j: (_rank(j.cls), j.t)):
            if j.cores <= free:
                waiting.remove(j)
                j.where, j.start = "local", t
                j.end = t + j.cpu_hours / j.cores * 3600
                running_local.append(j)
                free -= j.cores
        burstable = [j for j in waiting if cfg.allow_reprocess or j.cls != "reprocess"]
        if mode == "never":
            want, chosen = 0, []
        elif mode == "at_once":
            want = min(cfg.max_slots, len(burstable) + len(cloud_busy))
            chosen = [j.id for j in sorted(burstable, key=lambda j: (_rank(j.cls), j.t))]
        else:
            inp = BurstInputs(t, tuple(WaitingJob(j.id, j.cls, t - j.t, j.cpu_hours, j.input_bytes, j.cores) for j in waiting),
                              float(local_cores), spent, len(cloud_busy), int(t // 86400),
                              sum((j.end - t) / 3600 * j.cores for j in running_local))
            d = decide(inp, state, cfg)
            state = d.state
            want, chosen = d.slots, list(d.jobs)
            if log is not None and (not log or log[-1]["reason"] != d.reason or log[-1]["slots"] != d.slots):
                log.append(d.log_record(inp))
        # hold ``want`` slots (never fewer than are busy)
        want = max(want, len(cloud_busy))
        while len(slots_ready) < want:
            slots_ready.append(t + cfg.startup_s)
        slots_ready.sort()
        while len(slots_ready) > want:
            slots_ready.pop()  # release the ones not yet up (or idle) first
        up_free = sum(1 for r in slots_ready if r <= t) - len(cloud_busy)
        by_id = {j.id: j for j in waiting}
        for jid in chosen:
            if up_free <= 0:
                break
            j = by_id.get(jid)
            if j is None or j.cores > cfg.slot_cores:
                continue
            waiting.remove(j)
            j.where, j.start = "cloud", t
            j.end = t + j.cpu_hours / j.cores * 3600
            cloud_busy.append(j)
            up_free -= 1
            eg = j.input_bytes / GB
            egress += eg
            spent += eg * cfg.egress_per_gb
        if timeline is not None and (not timeline or t - timeline[-1]["t"] >= every_s):
            timeline.append({"t": t, "waiting": {c: sum(1 for j in waiting if j.cls == c) for c in CLASSES},
                             "slots": len(slots_ready), "spent": round(spent, 4)})
        held = len(slots_ready) * cfg.slot_cores * step / 3600
        core_h += held
        spent += held * cfg.core_hour_price
        t += step
    misses = {c: 0 for c in CLASSES}
    counts = {c: 0 for c in CLASSES}
    worst = {c: 0.0 for c in CLASSES}
    unfinished = 0
    for j in jobs:
        counts[j.cls] += 1
        if j.end is None:
            unfinished += 1
            misses[j.cls] += 1
            continue
        took = j.end - j.t
        worst[j.cls] = max(worst[j.cls], took)
        if took > cfg.slo_s.get(j.cls, math.inf):
            misses[j.cls] += 1
    return {"mode": mode, "jobs": counts, "slo_misses": misses, "worst_s": {c: round(v, 1) for c, v in worst.items()},
            "unfinished": unfinished, "cloud_core_hours": round(core_h, 2), "egress_gb": round(egress, 2),
            "cost": round(spent, 2), "cloud_jobs": sum(1 for j in jobs if j.where == "cloud")}


def compare(trace: dict, cfg: BurstConfig, log: list | None = None, timelines: dict | None = None) -> dict:
    """The policy against never-burst and burst-at-once on the same trace (``timelines``: a dict
    that gets each mode's :func:`simulate` timeline)."""
    out: dict[str, Any] = {"config": asdict(cfg)}
    for mode in ("policy", "never", "at_once"):
        tl = None if timelines is None else timelines.setdefault(mode, [])
        out[mode] = simulate(trace, cfg, mode, log if mode == "policy" else None, tl)
    return out
