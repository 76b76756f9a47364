"""What the TUI shows, derived from the stats samples: per-stage rates, ring occupancy history,
run progress (tile, cycle, ETA), alerts and the log tail. Pure Python, no Textual, so the
derivations are tested without a screen.

A stats sample is the object the supervisor publishes on the ``stats`` topic and appends to
``stats.jsonl`` (docs/pipeline.md): ``t``, ``run_id``, ``state``, ``frames_acquired``,
``frames_planned``, ``tiles``, ``cycles``, ``rings`` (``"<edge>.<i>.<j>"`` -> occupancy,
n_slots, written, read, drops) and ``stages`` (``"<stage>-<r>"`` -> alive, restarts). Only
``t``, ``rings`` and ``stages`` are required; older files lack the rest.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["STAGES", "EDGES", "RunModel", "EdgeView", "StageView", "Notice", "sparkline", "bar", "format_duration"]

#: Stages in pipeline order; edge ``EDGES[i]`` runs from ``STAGES[i]`` to ``STAGES[i + 1]``.
STAGES = ("source", "preprocess", "kernel", "basecall", "writer")
EDGES = ("raw", "corrected", "intensities", "calls")
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


@dataclass(frozen=True)
class Notice:
    """One line of the alerts panel or the log tail."""

    t: float
    kind: str  # alert, error, event, stopping, command, ... (log: the level)
    text: str

    @property
    def severe(self) -> bool:
        return self.kind.lower() in ("alert", "error", "critical", "warning")


class RunModel:
    """The state the screen draws, updated by :meth:`update` with each stats sample and by
    :meth:`add_event` / :meth:`add_log` with each event, alert and log record."""

    def __init__(self, max_notices: int = 200) -> None:
        self.samples = 0
        self.last: dict[str, Any] = {}
        self.config: dict[str, Any] | None = None
        self.edges: dict[str, EdgeView] = {e: EdgeView(e) for e in EDGES}
        self.stages: dict[str, StageView] = {s: StageView(s) for s in STAGES}
        self.alerts: deque[Notice] = deque(maxlen=max_notices)
        self.logs: deque[Notice] = deque(maxlen=max_notices)
        self._window: deque[tuple[float, dict[str, int], int]] = deque()

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
        edges = {e: EdgeView(e, history=self.edges[e].history) for e in EDGES}
        for key, ring in (sample.get("rings") or {}).items():
            edge = str(key).split(".", 1)[0]
            if edge not in edges:
                edges[edge] = EdgeView(edge, history=self.edges.get(edge, EdgeView(edge)).history)
            ev = edges[edge]
            ev.rings += 1
            for attr in ("occupancy", "n_slots", "written", "read", "drops"):
                setattr(ev, attr, getattr(ev, attr) + int(ring.get(attr, 0)))
        for ev in edges.values():
            if ev.rings:
                ev.history.append(ev.fraction)
        stages = {s: StageView(s) for s in STAGES}
        for key, st in (sample.get("stages") or {}).items():
            name = str(key).rsplit("-", 1)[0]
            sv = stages.setdefault(name, StageView(name))
            sv.replicas += 1
            sv.alive += 1 if st.get("alive") else 0
            sv.restarts += int(st.get("restarts", 0) or 0)
            if st.get("busy_fraction") is not None:  # newer samples: per-stage busy, latency, budget
                n = sum(1 for k, v in (sample.get("stages") or {}).items() if str(k).rsplit("-", 1)[0] == name and v.get("busy_fraction") is not None)
                sv.busy = (sv.busy or 0.0) + float(st["busy_fraction"]) / n
            if st.get("stage_latency_ms_p99") is not None:
                sv.p99_ms = max(sv.p99_ms or 0.0, float(st["stage_latency_ms_p99"]))
            if st.get("budget_ms"):
                sv.budget_ms = float(st["budget_ms"])
        self.edges, self.stages = edges, stages
        self.last = sample
        self._mark_finished()
        self.samples += 1
        self._rates(t)

    def _mark_finished(self) -> None:
        """A stage with no replica alive has finished (rather than crashed) when acquisition is
        over (the source) or when every stage before it has finished and its input ring is
        empty: the stream ends stage by stage as the run drains."""
        planned = self.frames_planned
        over = self.state in ("draining", "done") or (planned is not None and self.frames_acquired >= planned)
        prev = True
        for i, stage in enumerate(STAGES):
            sv = self.stages[stage]
            drained = over if i == 0 else (prev and self.edges[EDGES[i - 1]].occupancy == 0)
            sv.finished = bool(sv.replicas and sv.alive == 0 and (drained or self.state == "done"))
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
        self.alerts.append(Notice(float(body.get("t") or time.time()), kind, str(body.get("message", body))))

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
        self.logs.append(Notice(t, level, text))

    def note(self, kind: str, text: str) -> None:
        """A line of the TUI's own in the alerts panel (a command's result)."""
        self.alerts.append(Notice(time.time(), kind, text))

    # -- derived -------------------------------------------------------------------------------
    @property
    def run_id(self) -> str | None:
        return self.last.get("run_id")

    @property
    def state(self) -> str | None:
        return self.last.get("state")

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
    def host(self) -> dict[str, Any]:
        """``memory_available``, ``memory_total``, ``disk_free``, ``disk_total`` (bytes),
        ``cpu_percent`` of the appliance's host, where the sample has them."""
        return self.last.get("host") or {}

    @property
    def active_alerts(self) -> list[dict[str, Any]]:
        """The alerts active at the latest sample (rule, subject, severity, message, first_seen)."""
        return list(self.last.get("alerts") or [])

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
        if self.state == "done" or (planned is not None and self.frames_acquired >= planned):
            return 0.0
        rate = self.acquisition_rate
        if planned is None or not rate or rate <= 0:
            return None
        return (planned - self.frames_acquired) / rate
