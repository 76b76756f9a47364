"""Bottleneck attribution: which stage, or which resource, limited a run.

A pipeline of stages joined by bounded rings runs at the pace of its slowest member, and the
rings show which one that is: the rings ahead of the limiting stage fill, the rings after it
run empty, and the stage itself is busy. What limits *that* stage is read from the host's
pressure stall information (PSI, ``/proc/pressure/{cpu,io,memory}``): the share of time tasks
waited for a CPU, for I/O, or for memory. So the answer reads like "writer-0 bound by disk
(95% busy, I/O pressure 40%)", or "source-0: the camera's rate limits the run" when every
stage keeps up.

:func:`attribute` is pure (loads and pressures in, a :class:`Bottleneck` out) and tested
without processes. :func:`loads_from_stats` turns the run's ``stats.jsonl`` samples into
loads, and :class:`PressureMeter` reads PSI over an interval.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from appliance.schema import ring_samples, stage_samples

__all__ = [
    "Bottleneck",
    "LiveBottleneck",
    "PSI",
    "PressureMeter",
    "StageLoad",
    "attribute",
    "loads_from_stats",
    "psi_between",
    "read_pressure",
    "run_bottleneck",
]


# Thresholds of the attribution, as fractions.
BUSY = 0.8            # a stage this busy is saturated
BACKED_UP = 0.5       # an input ring this full means upstream waits on the stage
PRESSURE_CPU = 0.25   # tasks waited this share of time for a CPU: contention
PRESSURE_IO = 0.20    # ... for I/O: the disk
PRESSURE_MEM = 0.10   # ... for memory: reclaim or swap


@dataclass(frozen=True)
class StageLoad:
    """What one stage did over the interval judged: busy fraction (time computing / wall), and
    the mean fill (occupancy / slots) of the rings it reads and of the rings it writes."""

    name: str
    kind: str
    busy: float
    input_fill: float = 0.0
    output_fill: float = 0.0


@dataclass(frozen=True)
class PSI:
    """Share of the interval (0-1) in which some task waited for a CPU, I/O or memory."""

    cpu: float | None = None
    io: float | None = None
    memory: float | None = None


@dataclass(frozen=True)
class Bottleneck:
    """The verdict: the limiting stage (or "source" when the camera's rate limits), the
    resource that limits it, and one line for the summary, report and TUI."""

    stage: str
    resource: str
    busy: float
    text: str

    def to_dict(self) -> dict:
        return {"stage": self.stage, "resource": self.resource, "busy": self.busy, "text": self.text}


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def attribute(loads: Iterable[StageLoad], psi: PSI = PSI(), *, gpu_kernel: bool = False) -> Bottleneck:
    """Name what limited the run. Pure.

    The limiting stage is the one with the most evidence of being the narrow point: busy,
    its input rings full and its output rings empty (score = busy + input fill - output fill),
    among stages that are saturated (busy >= 80%) or backed up (input rings full for at least
    half the time, output rings less). If none is, the source paces the run (a camera at its frame rate). The resource is
    the host pressure that matches the stage: I/O for the writer, memory reclaim for any,
    CPU contention for any, else the stage's own compute (the GPU for a CuPy kernel stage)."""
    loads = list(loads)
    candidates = [
        ld for ld in loads
        if ld.kind != "source" and (ld.busy >= BUSY or (ld.input_fill >= BACKED_UP and ld.output_fill < BACKED_UP))
    ]
    if not candidates:
        src = next((ld for ld in loads if ld.kind == "source"), None)
        name = src.name if src else "source"
        busiest = max((ld for ld in loads if ld.kind != "source"), key=lambda ld: ld.busy, default=None)
        tail = f"; the busiest stage, {busiest.name}, is {_pct(busiest.busy)} busy" if busiest else ""
        return Bottleneck(name, "camera rate", src.busy if src else 0.0,
                          f"{name}: the camera's rate limits the run, every stage keeps up{tail}")
    top = max(candidates, key=lambda ld: (ld.busy + ld.input_fill - ld.output_fill, ld.busy))
    facts = [f"{_pct(top.busy)} busy"]
    if top.input_fill >= BACKED_UP:
        facts.append(f"input rings full {_pct(top.input_fill)} of the time")
    if psi.memory is not None and psi.memory >= PRESSURE_MEM:
        resource = "memory"
        facts.append(f"memory pressure {_pct(psi.memory)}")
    elif top.kind == "writer" and psi.io is not None and psi.io >= PRESSURE_IO:
        resource = "disk"
        facts.append(f"I/O pressure {_pct(psi.io)}")
    elif psi.cpu is not None and psi.cpu >= PRESSURE_CPU:
        resource = "CPU (contention)"
        facts.append(f"CPU pressure {_pct(psi.cpu)}")
    elif top.kind == "kernel" and gpu_kernel:
        resource = "GPU"
    else:
        resource = "its own compute" if top.kind != "writer" else "disk writes"
    return Bottleneck(top.name, resource, top.busy, f"{top.name} bound by {resource} ({', '.join(facts)})")


# --------------------------------------------------------------------- inputs from the run



def _flowing(samples: list[Mapping]) -> list[Mapping]:
    """The samples from the first one in which the last stage had seen a frame: before that
    the run pre-renders and builds its template, and nothing flows to judge."""
    for i, sample in enumerate(samples):
        stages = sample.get("stages") or {}
        if any(name.startswith("writer-") and (st.get("frames_in") or 0) > 0 for name, st in stages.items()):
            return samples[max(0, i - 1):]
    return samples


def loads_from_stats(samples: list[Mapping], t_start: float | None = None) -> list[StageLoad]:
    """Stage loads from ``stats.jsonl`` samples, over the part of the run in which frames flow.

    ``busy`` is the stage's busy fraction over that window (from the cumulative busy fraction
    each sample carries, taking the first sample's time as the stages' start); the fills are
    the share of samples in which the stage's input (output) rings were at least 75% full.
    Ring names are ``EDGE.PRODUCER.CONSUMER`` replicas. ``t_start``: when the stages started
    (default: the first sample's time), for samples that are the tail of a long run."""
    if not samples:
        return []
    t_start = float(samples[0].get("t") or 0.0) if t_start is None else float(t_start)
    kept = _flowing(samples)
    full: dict[str, dict[str, list[float]]] = {}
    for sample in kept:
        for r in ring_samples(sample):  # each ring names the processes it joins (appliance.schema)
            if not r.n_slots:
                continue
            backed = 1.0 if r.occupancy >= 0.75 * r.n_slots else 0.0
            full.setdefault(r.consumer, {}).setdefault("in", []).append(backed)
            full.setdefault(r.producer, {}).setdefault("out", []).append(backed)
    first, last = kept[0], kept[-1]
    w0 = float(first.get("t") or 0.0) - t_start
    w1 = float(last.get("t") or 0.0) - t_start
    loads = []
    for s in stage_samples(last):
        name, kind, st = s.name, s.stage, last["stages"][s.name]
        b1 = float(st.get("busy_fraction") or 0.0)
        b0 = float(((first.get("stages") or {}).get(name) or {}).get("busy_fraction") or 0.0)
        busy = (b1 * w1 - b0 * w0) / (w1 - w0) if w1 > w0 else b1
        f = full.get(name, {})
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
        loads.append(StageLoad(name, kind, max(0.0, min(1.0, busy)), mean(f.get("in", [])), mean(f.get("out", []))))
    return loads


def run_bottleneck(stats_path: Path | str, psi: PSI = PSI(), *, gpu_kernel: bool = False,
                   tail_bytes: int = 4 << 20) -> Bottleneck | None:
    """The verdict for a run from its ``stats.jsonl``: over the whole run, or over its last
    ``tail_bytes`` of samples (about 20 minutes at 2 Hz) for a long one, so the end of a
    multi-day run reads a bounded part of the file. None without samples to judge."""
    import json
    import os

    path = Path(stats_path)
    try:
        with open(path, "rb") as f:
            first = f.readline()
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - tail_bytes))
            tail = f.read()
    except FileNotFoundError:
        return None
    lines = tail.splitlines()
    if size > tail_bytes and lines:
        lines = lines[1:]  # the first is cut
    samples = []
    for line in lines:
        try:
            samples.append(json.loads(line))
        except ValueError:
            continue
    try:
        t_start = json.loads(first).get("t")
    except ValueError:
        t_start = None
    loads = loads_from_stats(samples, t_start=t_start)
    return attribute(loads, psi, gpu_kernel=gpu_kernel) if loads else None


_TOTAL = re.compile(r"^some\b.*\btotal=(\d+)", re.M)


def read_pressure(root: Path | str = Path("/")) -> dict[str, int | None]:
    """The ``some ... total=`` stall counters (microseconds) of cpu, io and memory, None where
    the kernel has no PSI (CONFIG_PSI off, or ``psi=0``)."""
    out: dict[str, int | None] = {}
    for name in ("cpu", "io", "memory"):
        try:
            text = (Path(root) / "proc/pressure" / name).read_text()
        except OSError:
            out[name] = None
            continue
        m = _TOTAL.search(text)
        out[name] = int(m.group(1)) if m else None
    return out


def psi_between(before: Mapping[str, int | None], after: Mapping[str, int | None], seconds: float) -> PSI:
    """PSI shares from two :func:`read_pressure` readings ``seconds`` apart."""
    dt_us = seconds * 1e6
    if dt_us <= 0:
        return PSI()

    def share(name: str) -> float | None:
        a, b = before.get(name), after.get(name)
        return None if a is None or b is None else max(0.0, min(1.0, (b - a) / dt_us))

    return PSI(cpu=share("cpu"), io=share("io"), memory=share("memory"))


class LiveBottleneck:
    """The verdict while the run goes on: over the last ``window_s`` of samples (kept in a
    bounded deque) and the host's PSI over the same span, judged every ``every_s``.
    ``update(sample, now)`` returns the current verdict (None until there is one); the
    supervisor puts it in every stats sample, so ``appliance ctl status``, the TUI and the
    Prometheus-side see what limits the run now, not only at its end."""

    def __init__(self, *, window_s: float = 30.0, every_s: float = 5.0, period_s: float = 0.5, gpu_kernel: bool = False,
                 root: Path | str = Path("/")) -> None:
        from collections import deque

        self.window_s, self.every_s, self.gpu_kernel, self.root = window_s, every_s, gpu_kernel, Path(root)
        self._samples: deque = deque(maxlen=max(2, int(window_s / period_s) + 1))
        self._marks: deque = deque(maxlen=max(2, int(window_s / every_s) + 1))
        self._t_start: float | None = None
        self._next = 0.0
        self.verdict: Bottleneck | None = None

    def update(self, sample: Mapping, now: float) -> Bottleneck | None:
        """Keep ``sample`` (a stats sample); on every ``every_s`` (``now``: a monotonic
        clock), judge the window again."""
        if self._t_start is None:
            self._t_start = float(sample.get("t") or 0.0)
        self._samples.append(sample)
        if now < self._next:
            return self.verdict
        self._next = now + self.every_s
        self._marks.append((now, read_pressure(self.root)))
        (t0, p0), (t1, p1) = self._marks[0], self._marks[-1]
        loads = loads_from_stats(list(self._samples), t_start=self._t_start)
        if loads and len(self._samples) >= 2:
            self.verdict = attribute(loads, psi_between(p0, p1, t1 - t0), gpu_kernel=self.gpu_kernel)
        return self.verdict


class PressureMeter:
    """PSI over an interval: ``start()`` once, ``psi()`` for the share of time since then."""

    def __init__(self, root: Path | str = Path("/"), clock=None) -> None:
        import time

        self.root = Path(root)
        self._clock = clock or time.monotonic
        self._t0 = self._clock()
        self._start = read_pressure(self.root)

    def psi(self) -> PSI:
        return psi_between(self._start, read_pressure(self.root), self._clock() - self._t0)
