"""What the TUI shows, derived from the stats samples: per-stage rates, ring occupancy history,
run progress (tile, cycle, ETA), alerts and the log tail. Pure Python, no Textual, so the
derivations are tested without a screen.

The model also keeps the latest ``jobs`` and ``storage`` bodies the appliance service publishes
(the offload orchestrator's and the storage manager's ``stats()``, docs/offload.md and
docs/storage.md), parsed into :class:`JobsView` and :class:`StorageView` when they arrive so a
malformed body is refused there (and reported) rather than when it is drawn.

A stats sample is the object the supervisor publishes on the ``stats`` topic and appends to
``stats.jsonl`` (docs/pipeline.md): ``t``, ``run_id``, ``state``, ``frames_acquired``,
``frames_planned``, ``tiles``, ``cycles``, ``rings`` (``"<edge>.<i>.<j>"`` -> occupancy,
n_slots, written, read, drops) and ``stages`` (``"<stage>-<r>"`` -> alive, restarts). Only
``t``, ``rings`` and ``stages`` are required; older files lack the rest.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from appliance.schema import EDGES as _EDGES
from appliance.schema import PIPELINE, AlertSample, HostSample, ring_samples, stage_samples

__all__ = [
    "STAGES",
    "EDGES",
    "STALE_S",
    "RunModel",
    "EdgeView",
    "StageView",
    "Notice",
    "RunNotices",
    "display_state",
    "format_reply",
    "ClassQueue",
    "JobFailure",
    "JobsView",
    "TierView",
    "StorageView",
    "sparkline",
    "bar",
    "gauge",
    "format_duration",
    "format_age",
    "format_bytes",
]

#: Stages in pipeline order; edge ``EDGES[i]`` runs from ``STAGES[i]`` to ``STAGES[i + 1]``.
STAGES = PIPELINE  # the source, then the processing stages (appliance.schema)
EDGES = tuple(_EDGES)
CHANNELS = 4  # frames per tile and cycle (acquisition order: channels, tiles, cycles)

_SPARK = "▁▂▃▄▅▆▇█"
RATE_WINDOW_S = 2.0  # stage rates: counter differences over about this long
ETA_WINDOW_S = 10.0  # acquisition rate for the ETA: over about this long


def sparkline(values: "list[float] | deque[float]", width: int) -> str:
    """The last ``width`` values (fractions 0..1) as block characters (0: the lowest block),
    left-padded with spaces where there is no history yet."""
    vals = list(values)[-width:]
    chars = []
    for v in vals:
        v = min(1.0, max(0.0, float(v)))
        chars.append(_SPARK[min(len(_SPARK) - 1, int(v * len(_SPARK)))])  # empty: the baseline
    return " " * (width - len(chars)) + "".join(chars)


def bar(fraction: float, width: int) -> str:
    """A horizontal bar of ``width`` cells filled to ``fraction`` (eighths of a cell)."""
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part else ""
    return ("█" * full + partial).ljust(width, "░")[:width]


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (``--:--`` when unknown)."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def gauge(fraction: float, marks: "tuple[float, ...] | list[float]", width: int) -> str:
    """:func:`bar` with a ``│`` at each of ``marks`` (fractions 0..1: the watermarks it is
    read against)."""
    cells = list(bar(fraction, width))
    for mark in marks:
        if width > 0 and mark == mark:
            cells[min(width - 1, max(0, int(round(float(mark) * width))))] = "│"
    return "".join(cells)


def format_age(seconds: float | None) -> str:
    """A short age: ``42s``, ``5m03s``, ``2h10m``, ``3d04h`` (``-`` when unknown)."""
    if seconds is None or seconds != seconds:
        return "-"
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_bytes(n: float | None) -> str:
    """Bytes in binary units: ``512 B``, ``1.5 KiB``, ``3.2 GiB`` (``-`` when unknown)."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover - the loop returns


#: A jobs or storage body older than this (seconds since it arrived) is shown as stale; the
#: appliance publishes both about once a second.
STALE_S = 5.0

_CLASS_ORDER = ("realtime", "batch", "reprocess")
_TIER_ORDER = ("hot", "warm", "cold")


def _map(body: Any, key: str, where: str) -> dict:
    value = body.get(key) if isinstance(body, dict) else None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"{where}: {key!r} is a {type(value).__name__}, not a map")
    return value


def _count(d: dict, key: str, where: str) -> int:
    v = d.get(key, 0)
    if v is None:
        return 0
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{where}: {key!r} is {v!r}, not a number")
    return int(v)


def _opt_float(d: dict, key: str, where: str) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{where}: {key!r} is {v!r}, not a number")
    return float(v)


def _ordered(names, order: tuple[str, ...]) -> list[str]:
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


@dataclass(frozen=True)
class ClassQueue:
    """One job class (realtime, batch, reprocess) of the ledger."""

    name: str
    depth: int  # queued + retrying
    oldest_s: float | None  # age of its oldest waiting job
    running: int  # leased + running
    held: int
    retrying: int
    succeeded: int


@dataclass(frozen=True)
class JobFailure:
    """A job that went to retrying or held."""

    job: Any
    kind: str
    at: float | None
    state: str
    reason: str


@dataclass(frozen=True)
class PoolRow:
    """One compute pool of the orchestrator (``stats()["pools"]``): live slots (None when no
    live figures), Slurm jobs asked for and not connected, the backlog it serves, and how long
    it has had backlog but no workers (``pool_starved`` past the threshold)."""

    name: str
    kind: str
    slots: int | None
    used: int | None
    pending_jobs: int | None
    backlog: int
    starved_s: float | None


@dataclass(frozen=True)
class BurstRow:
    """A cloud pool's burst policy (``stats()["burst"]``): the classes that may burst, the slots
    it grants, the day's spend against the budget, and the reason of its last decision."""

    pool: str
    classes: tuple[str, ...]
    slots: int
    spent: float
    budget: float
    reason: str


@dataclass(frozen=True)
class JobsView:
    """What the jobs pane draws, from a ``jobs`` body (``Orchestrator.stats()``, or a bare
    ``Ledger.stats()``, which has no executor). :meth:`from_stats` refuses a malformed body."""

    classes: tuple[ClassQueue, ...]
    depth: int
    oldest_s: float | None
    running: int
    held: int
    backpressure: bool
    backpressure_message: str | None
    refused: int
    failures: tuple[JobFailure, ...]
    depth_high: int | None = None  # the backpressure watermarks
    oldest_high_s: float | None = None
    executor: str | None = None
    slots: int | None = None
    free: int | None = None
    errors: tuple[str, ...] = ()
    pools: tuple[PoolRow, ...] = ()
    burst: tuple[BurstRow, ...] = ()

    @classmethod
    def from_stats(cls, body: Any) -> "JobsView":
        if not isinstance(body, dict):
            raise TypeError(f"a jobs message is a {type(body).__name__}, not a map")
        classes = _map(body, "classes", "jobs")
        queues = []
        for name in _ordered(classes, _CLASS_ORDER):
            c = classes[name]
            if not isinstance(c, dict):
                raise TypeError(f"jobs: classes.{name} is a {type(c).__name__}, not a map")
            where = f"jobs: classes.{name}"
            queued, retrying = _count(c, "queued", where), _count(c, "retrying", where)
            depth = _count(c, "depth", where) if "depth" in c else queued + retrying
            queues.append(ClassQueue(str(name), depth, _opt_float(c, "oldest_queued_age_s", where),
                                     _count(c, "leased", where) + _count(c, "running", where),
                                     _count(c, "held", where), retrying, _count(c, "succeeded", where)))
        bp = _map(body, "backpressure", "jobs")
        failures = body.get("recent_failures") or []
        if not isinstance(failures, list):
            raise TypeError(f"jobs: 'recent_failures' is a {type(failures).__name__}, not a list")
        fails = []
        for f in failures:
            if not isinstance(f, dict):
                raise TypeError(f"jobs: a recent failure is a {type(f).__name__}, not a map")
            fails.append(JobFailure(f.get("job"), str(f.get("kind", "?")), _opt_float(f, "at", "jobs: recent_failures"),
                                    str(f.get("state", "?")), str(f.get("reason") or "")))
        ex = _map(body, "executor", "jobs")
        errors = body.get("errors") or []
        if not isinstance(errors, list):
            raise TypeError(f"jobs: 'errors' is a {type(errors).__name__}, not a list")
        message = bp.get("message")
        pools = body.get("pools") or []
        if not isinstance(pools, list):
            raise TypeError(f"jobs: 'pools' is a {type(pools).__name__}, not a list")
        rows = []
        for r in pools:
            if not isinstance(r, dict) or "pool" not in r:
                raise TypeError("jobs: a pool row is not a map with 'pool'")
            opt = lambda k: None if r.get(k) is None else _count(r, k, "jobs: pools")  # noqa: E731
            rows.append(PoolRow(str(r["pool"]), str(r.get("kind") or "?"), opt("slots"), opt("used"), opt("pending_jobs"),
                                _count(r, "backlog", "jobs: pools"), _opt_float(r, "starved_s", "jobs: pools")))
        burst = body.get("burst") or []
        if not isinstance(burst, list) or not all(isinstance(r, dict) and "pool" in r for r in burst):
            raise TypeError("jobs: 'burst' is not a list of maps with 'pool'")
        bursts = tuple(BurstRow(str(r["pool"]), tuple(str(c) for c in r.get("classes") or ()), _count(r, "slots", "jobs: burst"),
                                _opt_float(r, "spent_today", "jobs: burst") or 0.0, _opt_float(r, "daily_budget", "jobs: burst") or 0.0,
                                str(r.get("reason") or "")) for r in burst)
        return cls(
            burst=bursts,
            classes=tuple(queues),
            depth=_count(body, "depth", "jobs") if "depth" in body else sum(q.depth for q in queues),
            oldest_s=_opt_float(body, "oldest_queued_age_s", "jobs"),
            running=_count(body, "running", "jobs") if "running" in body else sum(q.running for q in queues),
            held=_count(body, "held", "jobs") if "held" in body else sum(q.held for q in queues),
            backpressure=bool(bp.get("active")),
            backpressure_message=None if message is None else str(message),
            refused=_count(bp, "refused_here", "jobs: backpressure"),
            failures=tuple(fails),
            depth_high=None if bp.get("depth_high") is None else _count(bp, "depth_high", "jobs: backpressure"),
            oldest_high_s=_opt_float(bp, "oldest_age_s", "jobs: backpressure"),
            executor=None if ex.get("name") is None else str(ex["name"]),
            slots=None if ex.get("slots") is None else _count(ex, "slots", "jobs: executor"),
            free=None if ex.get("free") is None else _count(ex, "free", "jobs: executor"),
            errors=tuple(str(e) for e in errors),
            pools=tuple(rows),
        )

    @property
    def busy_slots(self) -> int | None:
        """Slots of this appliance's executor in use (None without an executor)."""
        if self.slots is None or self.free is None:
            return None
        return max(0, self.slots - self.free)


@dataclass(frozen=True)
class TierView:
    """One storage tier: its verified copies, corrupt copies and (local tiers) free space."""

    name: str
    url: str
    bytes: int
    files: int
    corrupt_files: int
    free_bytes: int | None
    total_bytes: int | None

    @property
    def free_fraction(self) -> float | None:
        if self.free_bytes is None or not self.total_bytes:
            return None
        return self.free_bytes / self.total_bytes


@dataclass(frozen=True)
class StorageView:
    """What the storage pane draws, from a ``storage`` body (``StorageManager.stats()``).
    :meth:`from_stats` refuses a malformed body."""

    tiers: tuple[TierView, ...]
    hot_free_fraction: float | None
    high: float | None
    critical: float | None
    level: str
    pending_moves: int
    verification_failures: int
    corrupt_copies: int
    bytes_copied: int
    last_gc: float | None
    last_scrub: float | None
    running: bool | None
    held_copies: int = 0  #: corrupt copies past mover.max_attempts (no longer retried)

    @classmethod
    def from_stats(cls, body: Any) -> "StorageView":
        if not isinstance(body, dict):
            raise TypeError(f"a storage message is a {type(body).__name__}, not a map")
        tiers = _map(body, "tiers", "storage")
        views = []
        for name in _ordered(tiers, _TIER_ORDER):
            t = tiers[name]
            if not isinstance(t, dict):
                raise TypeError(f"storage: tiers.{name} is a {type(t).__name__}, not a map")
            where = f"storage: tiers.{name}"
            free, total = _opt_float(t, "free_bytes", where), _opt_float(t, "total_bytes", where)
            views.append(TierView(str(name), str(t.get("url") or ""), _count(t, "bytes", where), _count(t, "files", where),
                                  _count(t, "corrupt_files", where), None if free is None else int(free),
                                  None if total is None else int(total)))
        marks = _map(body, "watermarks", "storage")
        level = str(body.get("level") or "ok")
        running = body.get("running")
        return cls(
            tiers=tuple(views),
            hot_free_fraction=_opt_float(body, "hot_free_fraction", "storage"),
            high=_opt_float(marks, "high", "storage: watermarks"),
            critical=_opt_float(marks, "critical", "storage: watermarks"),
            level=level,
            pending_moves=_count(body, "pending_moves", "storage"),
            verification_failures=_count(body, "verification_failures", "storage"),
            corrupt_copies=_count(body, "corrupt_copies", "storage"),
            bytes_copied=_count(body, "bytes_copied", "storage"),
            last_gc=_opt_float(body, "last_gc", "storage"),
            last_scrub=_opt_float(body, "last_scrub", "storage"),
            running=None if running is None else bool(running),
            held_copies=_count(body, "held_copies", "storage"),
        )

    @property
    def damaged(self) -> bool:
        """A copy failed its verification or is known corrupt (the pane shows it in red)."""
        return self.verification_failures > 0 or self.corrupt_copies > 0


@dataclass
class EdgeView:
    """One edge of the pipeline: its rings summed over replica pairs."""

    name: str
    rings: int = 0
    occupancy: int = 0
    n_slots: int = 0
    written: int = 0
    read: int = 0
    drops: int = 0
    history: deque = field(default_factory=lambda: deque(maxlen=120))  # occupancy fraction per sample

    @property
    def fraction(self) -> float:
        return self.occupancy / self.n_slots if self.n_slots else 0.0


@dataclass
class StageView:
    """One stage: its replicas, how many are alive, restarts, and the rate it takes items."""

    name: str
    replicas: int = 0
    alive: int = 0
    restarts: int = 0
    rate: float | None = None  # items/s taken from its input ring (source: frames/s acquired)
    busy: float | None = None  # busy fraction, mean over replicas
    p99_ms: float | None = None  # time per item, p99, worst replica
    budget_ms: float | None = None  # the stage's declared budget per item
    finished: bool = False  # no replica alive because its work is done (not a crash)

    @property
    def over_budget(self) -> bool:
        return bool(self.p99_ms is not None and self.budget_ms and self.p99_ms > self.budget_ms)


_SEQ = itertools.count(1)


@dataclass(frozen=True)
class Notice:
    """One row of the alerts & events list or of the log: ``text`` is the whole message (the
    list cuts it to its width; Enter opens it whole, with ``fields``: the message's other
    keys, such as an alert's ``rule``, ``subject`` and ``severity``). ``seq`` orders every
    notice the model ever made (the list keeps its selection by it)."""

    t: float
    kind: str  # alert, error, event, stopping, command, connection, ... (log: the level)
    text: str
    fields: dict = field(default_factory=dict, compare=False)
    seq: int = field(default_factory=lambda: next(_SEQ), compare=False)

    @property
    def severe(self) -> bool:
        return self.kind.lower() in ("alert", "error", "critical", "warning")

    @property
    def rule(self) -> str | None:
        """The alert rule (a docs/runbook.md section) this notice is about, if any."""
        rule = self.fields.get("rule")
        return None if rule is None else str(rule)


@dataclass
class RunNotices:
    """The alerts & events and the log of one run (``run_id`` None: before any run)."""

    run_id: str | None
    alerts: deque = field(default_factory=lambda: deque(maxlen=200))
    logs: deque = field(default_factory=lambda: deque(maxlen=200))
    seen_active: set = field(default_factory=set)  # (rule, subject) of alerts already listed


#: the run states after which nothing more happens (appliance.pipeline.core.RunState)
_FINAL_STATES = ("done", "stopped_early", "failed")


def display_state(state: str | None, *, frames_acquired: int, frames_planned: int | None,
                  source_alive: bool, prerender: bool | None) -> str | None:
    """The run state to show, from what the stats sample publishes: ``prerendering`` while a
    synthetic source renders its frames before acquiring (state ``acquiring``, no frame yet,
    the source up, ``source.prerender`` on or unknown), ``draining`` once every planned frame
    is acquired and the run is not done yet (the supervisor says ``acquiring`` until the end),
    else the supervisor's state."""
    if state == "acquiring":
        if frames_acquired == 0 and source_alive and prerender is not False:
            return "prerendering"
        if frames_planned is not None and frames_acquired >= frames_planned:
            return "draining"
    return state


class RunModel:
    """The state the screen draws, updated by :meth:`update` with each stats sample and by
    :meth:`add_event` / :meth:`add_log` with each event, alert and log record."""

    #: how many runs' alerts and logs are kept (the current one and the ones before it)
    MAX_RUNS = 8

    def __init__(self, max_notices: int = 200) -> None:
        self.samples = 0
        self.last: dict[str, Any] = {}
        self.config: dict[str, Any] | None = None
        self.edges: dict[str, EdgeView] = {e: EdgeView(e) for e in EDGES}
        self.stages: dict[str, StageView] = {s: StageView(s) for s in STAGES}
        self.max_notices = max_notices
        # every run's notices, oldest first; the last one is the current run's
        self.runs: list[RunNotices] = [self._new_run(None)]
        self._window: deque[tuple[float, dict[str, int], int]] = deque()
        # the service's figures (not the run's: a reset keeps them), with when they arrived
        # (time.monotonic()) and why the latest body was refused, if it was
        self.jobs: JobsView | None = None
        self.storage: StorageView | None = None
        self.received: dict[str, float] = {}
        self.malformed: dict[str, str] = {}

    def _new_run(self, run_id: str | None) -> RunNotices:
        return RunNotices(run_id, deque(maxlen=self.max_notices), deque(maxlen=self.max_notices))

    @property
    def current(self) -> RunNotices:
        return self.runs[-1]

    @property
    def alerts(self) -> deque:
        """The current run's alerts & events."""
        return self.runs[-1].alerts

    @property
    def logs(self) -> deque:
        """The current run's log records."""
        return self.runs[-1].logs

    def run_notices(self, run_id: str | None) -> RunNotices | None:
        return next((r for r in self.runs if r.run_id == run_id), None)

    def _enter_run(self, run_id: str | None) -> None:
        """A sample of run ``run_id``: a run not seen before gets its own alerts and log (the
        notices that came before its first sample, with no run, become its own); a run seen
        before gets its notices back."""
        cur = self.runs[-1]
        if run_id is None or cur.run_id == run_id:
            return
        if cur.run_id is None:
            cur.run_id = run_id
            return
        known = self.run_notices(run_id)
        if known is not None:
            self.runs.remove(known)
            self.runs.append(known)
        else:
            self.runs.append(self._new_run(run_id))
        del self.runs[: max(0, len(self.runs) - self.MAX_RUNS)]

    def clear_run(self) -> None:
        """Forget every run's notices (a replay starts over)."""
        self.runs = [self._new_run(None)]

    # -- input ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the run (a new run started, or the replay restarted)."""
        self.samples = 0
        self.last = {}
        self.edges = {e: EdgeView(e) for e in EDGES}
        self.stages = {s: StageView(s) for s in STAGES}
        self._window.clear()

    def update(self, sample: dict[str, Any]) -> None:
        """Take one stats sample (see the module docstring)."""
        t = float(sample.get("t", time.time()))
        if self.last and (sample.get("run_id") != self.last.get("run_id") or t < float(self.last.get("t", 0.0))):
            self.reset()
        self._enter_run(sample.get("run_id"))
        edges = {e: EdgeView(e, history=self.edges[e].history) for e in EDGES}
        for ring in ring_samples(sample):  # each names its edge (appliance.schema)
            edge = ring.edge
            if edge not in edges:
                edges[edge] = EdgeView(edge, history=self.edges.get(edge, EdgeView(edge)).history)
            ev = edges[edge]
            ev.rings += 1
            for attr in ("occupancy", "n_slots", "written", "read", "drops"):
                setattr(ev, attr, getattr(ev, attr) + getattr(ring, attr))
        for ev in edges.values():
            if ev.rings:
                ev.history.append(ev.fraction)
        stages = {s: StageView(s) for s in STAGES}
        procs = stage_samples(sample)  # each names its stage and replica (appliance.schema)
        for st in procs:
            name = st.stage
            sv = stages.setdefault(name, StageView(name))
            sv.replicas += 1
            sv.alive += 1 if st.alive else 0
            sv.restarts += st.restarts
            if st.busy_fraction is not None:  # newer samples: per-stage busy, latency, budget
                n = sum(1 for p in procs if p.stage == name and p.busy_fraction is not None)
                sv.busy = (sv.busy or 0.0) + float(st.busy_fraction) / n
            if st.stage_latency_ms_p99 is not None:
                sv.p99_ms = max(sv.p99_ms or 0.0, float(st.stage_latency_ms_p99))
            if st.budget_ms:
                sv.budget_ms = float(st.budget_ms)
        self.edges, self.stages = edges, stages
        self.last = sample
        self._mark_finished()
        self.samples += 1
        self._rates(t)
        self._list_active(t)

    def _list_active(self, t: float) -> None:
        """An alert active at this sample that the list lacks (the console attached after it
        was raised) is added, dated when it was first seen: the title's ``(N active)`` never
        stands above an empty list."""
        cur = self.current
        for a in self.active_alerts:
            key = (a.rule, a.subject)
            if key in cur.seen_active:
                continue
            cur.seen_active.add(key)
            if any(n.fields.get("rule") == key[0] and n.fields.get("subject") == key[1] and n.kind == "alert" for n in cur.alerts):
                continue
            fields = {k: v for k, v in a.to_dict().items() if k != "message"}
            fields["listed"] = "active when the console attached"
            stamp = float(a.first_seen) if a.first_seen is not None else t
            cur.alerts.append(Notice(stamp, "alert", a.message, fields))

    def _mark_finished(self) -> None:
        """A stage with no replica alive has finished (rather than crashed) when acquisition is
        over (the source) or when every stage before it has finished and its input ring is
        empty: the stream ends stage by stage as the run drains."""
        planned = self.frames_planned
        over = self.state in ("draining", *_FINAL_STATES) or (planned is not None and self.frames_acquired >= planned)
        prev = True
        for i, stage in enumerate(STAGES):
            sv = self.stages[stage]
            drained = over if i == 0 else (prev and self.edges[EDGES[i - 1]].occupancy == 0)
            sv.finished = bool(sv.replicas and sv.alive == 0 and (drained or self.state in _FINAL_STATES))
            prev = sv.finished

    def _counters(self) -> dict[str, int]:
        """What each stage has taken so far: the source what it wrote into the first edge,
        every other stage what it read from its input edge."""
        out = {}
        for i, stage in enumerate(STAGES):
            if i == 0:
                ev = self.edges.get(EDGES[0])
                out[stage] = ev.written if ev else 0
            else:
                ev = self.edges.get(EDGES[i - 1])
                out[stage] = ev.read if ev else 0
        return out

    def _rates(self, t: float) -> None:
        counters = self._counters()
        self._window.append((t, counters, self.frames_acquired))
        while len(self._window) > 2 and t - self._window[1][0] >= ETA_WINDOW_S:
            self._window.popleft()
        # the rate window: the oldest sample at least RATE_WINDOW_S back, else the oldest
        ref = self._window[0]
        for entry in reversed(self._window):
            if t - entry[0] >= RATE_WINDOW_S:
                ref = entry
                break
        dt = t - ref[0]
        for stage, sv in self.stages.items():
            if dt > 0 and stage in counters:
                sv.rate = max(0.0, (counters[stage] - ref[1].get(stage, 0)) / dt)

    def add_event(self, topic: str, body: dict[str, Any]) -> None:
        """An ``event`` or ``alert`` message body: ``{"t", "kind", "message", ...}``."""
        kind = str(body.get("kind") or topic)
        if topic == "alert" and kind == "event":
            kind = "alert"
        fields = {k: v for k, v in body.items() if k not in ("t", "kind", "message")}
        if kind == "alert" and fields.get("rule") is not None:
            key = (fields.get("rule"), fields.get("subject"))
            self.current.seen_active.add(key)
            for n in list(self.alerts):  # listed from a sample first: the message itself replaces it
                if n.fields.get("listed") and (n.fields.get("rule"), n.fields.get("subject")) == key:
                    self.alerts.remove(n)
        self.alerts.append(Notice(float(body.get("t") or time.time()), kind, str(body.get("message", body)), fields))

    def add_log(self, record: dict[str, Any]) -> None:
        """A ``log`` message body: a log record ``{"t", "level", "logger", "message", ...}``
        (the JSON log line's ``ts`` and ``msg`` are taken too)."""
        ts = record.get("t", record.get("ts"))
        try:
            t = float(ts)
        except (TypeError, ValueError):
            t = time.time()
        level = str(record.get("level", "INFO")).upper()
        msg = record.get("message", record.get("msg", ""))
        logger = str(record.get("logger", "")).removeprefix("appliance.")  # room on 80 columns
        text = f"{logger}: {msg}".lstrip(": ")
        fields = {k: v for k, v in record.items() if k not in ("t", "ts", "level", "message", "msg") and v is not None}
        self.logs.append(Notice(t, level, text, fields))

    def update_jobs(self, body: Any, now: float | None = None) -> None:
        """Take a ``jobs`` body; TypeError/ValueError (and :attr:`malformed` set) when it is
        malformed, the previous view kept."""
        self._take("jobs", JobsView.from_stats, body, now)

    def update_storage(self, body: Any, now: float | None = None) -> None:
        """Take a ``storage`` body; as :meth:`update_jobs`."""
        self._take("storage", StorageView.from_stats, body, now)

    def _take(self, topic: str, parse, body: Any, now: float | None) -> None:
        try:
            view = parse(body)
        except (TypeError, ValueError) as exc:
            self.malformed[topic] = str(exc)
            raise
        setattr(self, topic, view)
        self.malformed.pop(topic, None)
        self.received[topic] = time.monotonic() if now is None else now

    def age(self, topic: str, now: float | None = None) -> float | None:
        """Seconds since the latest good ``jobs`` / ``storage`` body arrived (None: never)."""
        at = self.received.get(topic)
        if at is None:
            return None
        return max(0.0, (time.monotonic() if now is None else now) - at)

    def stale(self, topic: str, now: float | None = None) -> bool:
        """The latest ``jobs`` / ``storage`` body is older than :data:`STALE_S`."""
        age = self.age(topic, now)
        return age is not None and age > STALE_S

    def note(self, kind: str, text: str, t: float | None = None, **fields: Any) -> None:
        """A line of the TUI's own in the alerts panel (a command's result, the connection
        lost or regained)."""
        self.alerts.append(Notice(time.time() if t is None else t, kind, text, fields))

    # -- derived -------------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        return self.last.get("run_id")

    @property
    def state(self) -> str | None:
        """The supervisor's state at the latest sample (appliance.pipeline.RunState: starting,
        prerendering, acquiring, paused, draining, done, stopped_early, failed)."""
        return self.last.get("state")

    @property
    def shown_state(self) -> str | None:
        """The state to show (:func:`display_state`): adds ``prerendering`` and ``draining``
        (acquisition over, the pipeline still writing) to the supervisor's."""
        src = self.stages.get("source")
        prerender = None
        if isinstance(self.config, dict):
            source = self.config.get("source") or {}
            if isinstance(source, dict) and "prerender" in source:
                prerender = bool(source.get("prerender")) and source.get("kind") != "genicam"
        return display_state(self.state, frames_acquired=self.frames_acquired, frames_planned=self.frames_planned,
                             source_alive=bool(src and src.alive), prerender=prerender)

    @property
    def e2e_p99_ms(self) -> float | None:
        """End-to-end latency (acquisition to run folder), p99, as the writer measures it."""
        v = self.last.get("e2e_latency_ms_p99")
        return None if v is None else float(v)

    @property
    def e2e_budget_ms(self) -> float | None:
        v = self.last.get("e2e_latency_budget_ms")
        return float(v) if v else None

    @property
    def host(self) -> HostSample:
        """The appliance's host at the latest sample (memory, data disk, CPU), where it says."""
        return HostSample.from_dict(self.last.get("host"))

    @property
    def active_alerts(self) -> list[AlertSample]:
        """The alerts active at the latest sample (rule, subject, severity, message, first_seen)."""
        return [AlertSample.from_dict(a) for a in self.last.get("alerts") or () if isinstance(a, dict)]

    @property
    def frames_acquired(self) -> int:
        if "frames_acquired" in self.last:
            return int(self.last["frames_acquired"])
        ev = self.edges.get(EDGES[0])
        return ev.written + ev.drops if ev else 0

    @property
    def frames_planned(self) -> int | None:
        planned = self.last.get("frames_planned")
        if planned is None and self.last.get("tiles") and self.last.get("cycles"):
            planned = len(self.last["tiles"]) * int(self.last["cycles"]) * CHANNELS
        return int(planned) if planned else None

    @property
    def acquisition_rate(self) -> float | None:
        """Frames/s acquired over the last ~10 s of samples."""
        if len(self._window) < 2:
            return None
        (t0, _, f0), (t1, _, f1) = self._window[0], self._window[-1]
        return (f1 - f0) / (t1 - t0) if t1 > t0 else None

    @property
    def position(self) -> tuple[int, int] | None:
        """``(cycle, tile)`` being acquired (1-based cycle), from the acquisition order: every
        channel of every tile of cycle 1, then cycle 2, ... None without tiles/cycles."""
        tiles, cycles = self.last.get("tiles"), self.last.get("cycles")
        if not tiles or not cycles:
            return None
        per_cycle = len(tiles) * CHANNELS
        idx = min(self.frames_acquired, per_cycle * int(cycles) - 1)
        return idx // per_cycle + 1, int(tiles[(idx % per_cycle) // CHANNELS])

    @property
    def eta_s(self) -> float | None:
        """Seconds until acquisition ends at the recent rate (0 once done; None if unknown)."""
        planned = self.frames_planned
        if self.state in _FINAL_STATES or (planned is not None and self.frames_acquired >= planned):
            return 0.0
        rate = self.acquisition_rate
        if planned is None or not rate or rate <= 0:
            return None
        return (planned - self.frames_acquired) / rate


def _plain(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_plain(x) for x in v) or "none"
    if isinstance(v, dict):
        return "; ".join(f"{k} {_plain(x)}" for k, x in v.items()) or "nothing"
    return str(v)


_REPLIES = {
    ("pause", "paused", True): "acquisition paused",
    ("resume", "paused", False): "acquisition resumed",
    ("stop", "stopping", True): "draining: acquisition ends, frames in flight are written",
}


def format_reply(cmd: str, result: Any) -> str:
    """A command's reply as a line for the operator: ``pause: acquisition paused``,
    ``start: run 251125_SIM01_0002 started``; other maps as ``key value`` pairs (never a
    Python dict)."""
    if isinstance(result, dict):
        parts = []
        rest = dict(result)
        for (c, key, value), text in _REPLIES.items():
            if c == cmd and key in rest and rest[key] is value:
                parts.append(text)
                rest.pop(key)
                break
        run = rest.pop("run_id", None)
        if run is not None:
            parts.append(f"run {run}" + (" started" if cmd == "start" else ""))
        parts += [f"{k.replace('_', ' ')} {_plain(v)}" for k, v in rest.items()]
        return f"{cmd}: {', '.join(parts) or 'done'}"
    if result is None or result is True:
        return f"{cmd}: done"
    return f"{cmd}: {_plain(result)}"
