"""The telemetry schema: the pipeline's shape and what a stats sample says of its stages and
rings, as versioned frozen dataclasses. Dependency-free (the standard library only), so the
TUI, the report, the alerts, the bottleneck attribution and the exporter read samples
through it without importing the pipeline.

A sample (``stats.jsonl``, the control plane's ``stats`` topic) names each stage process
(``"kernel-0"``) with its ``stage`` and ``replica``, and each ring (``"raw.0.0"``) with its
``edge``, ``producer`` and ``consumer`` processes (schema 1). Readers use those fields and
never parse the names; a sample recorded before schema 1 lacks them, and
:meth:`StageSample.from_dict` / :meth:`RingSample.from_dict` derive them from the names it
has, in this module only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = [
    "EDGES", "PIPELINE", "SCHEMA_VERSION", "STAGES", "AlertSample", "BottleneckSample", "HostSample", "PrerenderSample",
    "RingSample", "StageSample", "StatsSample", "ring_samples", "stage_samples",
]

#: the version of the sample format this module writes and reads (older samples are read too)
SCHEMA_VERSION = 1
#: the processing stages, in pipeline order (the source, the camera, comes before them)
STAGES = ("preprocess", "kernel", "basecall", "writer")
#: every stage, the source first
PIPELINE = ("source", *STAGES)
#: edge (ring) name -> (producer stage, consumer stage), in pipeline order
EDGES = {
    "raw": ("source", "preprocess"),
    "corrected": ("preprocess", "kernel"),
    "intensities": ("kernel", "basecall"),
    "calls": ("basecall", "writer"),
}


def _num(d: Mapping, key: str, default=None):
    v = d.get(key)
    return default if v is None or isinstance(v, bool) else v


@dataclass(frozen=True)
class StageSample:
    """One stage process in one sample."""

    name: str  #: the process, e.g. "kernel-0"
    stage: str  #: e.g. "kernel"
    replica: int
    alive: bool = False
    restarts: int = 0
    frames_in: int = 0
    frames_out: int = 0
    busy_fraction: float | None = None
    stage_latency_ms_p99: float | None = None
    budget_ms: float | None = None
    state: str | None = None  #: the stage's own (its status record): running, disk_full, finished, ...

    @classmethod
    def from_dict(cls, name: str, d: Mapping[str, Any]) -> "StageSample":
        stage, replica = d.get("stage"), d.get("replica")
        if not isinstance(stage, str) or not isinstance(replica, int):  # a sample from before schema 1
            head, _, tail = str(name).rpartition("-")
            stage, replica = (head, int(tail)) if head and tail.isdigit() else (str(name), 0)
        return cls(str(name), stage, replica, bool(d.get("alive")), int(_num(d, "restarts", 0) or 0),
                   int(_num(d, "frames_in", 0) or 0), int(_num(d, "frames_out", 0) or 0), _num(d, "busy_fraction"),
                   _num(d, "stage_latency_ms_p99"), _num(d, "budget_ms"), d.get("stage_state"))


@dataclass(frozen=True)
class RingSample:
    """One ring in one sample: its edge and the two processes it joins."""

    key: str  #: e.g. "raw.0.0"
    edge: str
    producer: str  #: the producing process, e.g. "source-0"
    consumer: str
    occupancy: int = 0
    n_slots: int = 0
    written: int = 0
    read: int = 0
    drops: int = 0

    @classmethod
    def from_dict(cls, key: str, d: Mapping[str, Any]) -> "RingSample | None":
        edge, producer, consumer = d.get("edge"), d.get("producer"), d.get("consumer")
        if not (isinstance(edge, str) and isinstance(producer, str) and isinstance(consumer, str)):
            parts = str(key).split(".")  # a sample from before schema 1: EDGE.PRODUCER.CONSUMER replicas
            if len(parts) != 3 or parts[0] not in EDGES or not (parts[1].isdigit() and parts[2].isdigit()):
                return None
            src, dst = EDGES[parts[0]]
            edge, producer, consumer = parts[0], f"{src}-{parts[1]}", f"{dst}-{parts[2]}"
        return cls(str(key), edge, producer, consumer, int(_num(d, "occupancy", 0) or 0), int(_num(d, "n_slots", 0) or 0),
                   int(_num(d, "written", 0) or 0), int(_num(d, "read", 0) or 0), int(_num(d, "drops", 0) or 0))


def stage_samples(sample: Mapping[str, Any]) -> list[StageSample]:
    """Every stage process of a sample (or a run summary's ``stages``), in its order."""
    stages = sample.get("stages") or {}
    return [StageSample.from_dict(k, v) for k, v in stages.items() if isinstance(v, Mapping)]


def ring_samples(sample: Mapping[str, Any]) -> list[RingSample]:
    """Every ring of a sample that names (or, before schema 1, whose key names) an edge."""
    out = []
    for k, v in (sample.get("rings") or {}).items():
        if isinstance(v, Mapping):
            r = RingSample.from_dict(k, v)
            if r is not None:
                out.append(r)
    return out


def _opt_num(d: Mapping, key: str) -> float | None:
    v = _num(d, key)
    return v if isinstance(v, (int, float)) else None


@dataclass(frozen=True)
class HostSample:
    """The appliance host in one sample: memory and the data disk (bytes), CPU use (%)."""

    memory_available: int | None = None
    memory_total: int | None = None
    disk_free: int | None = None
    disk_total: int | None = None
    cpu_percent: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "HostSample":
        d = d if isinstance(d, Mapping) else {}
        return cls(*(_opt_num(d, k) for k in ("memory_available", "memory_total", "disk_free", "disk_total", "cpu_percent")))

    @property
    def disk_free_fraction(self) -> float | None:
        """Free share of the data disk; None where the sample does not say."""
        if not self.disk_total or self.disk_free is None:
            return None
        return self.disk_free / self.disk_total

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("memory_available", "memory_total", "disk_free", "disk_total", "cpu_percent")}


@dataclass(frozen=True)
class AlertSample:
    """An alert active at one sample: its rule, what it is about, how bad, since when."""

    rule: str
    subject: str = ""  #: a stage process, a ring key, "run" or "data"
    severity: str = ""
    message: str = ""
    first_seen: float | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AlertSample":
        return cls(str(d.get("rule") or ""), str(d.get("subject") or ""), str(d.get("severity") or ""), str(d.get("message") or ""),
                   _opt_num(d, "first_seen"))

    def to_dict(self) -> dict:
        return {"rule": self.rule, "subject": self.subject, "severity": self.severity, "message": self.message, "first_seen": self.first_seen}


@dataclass(frozen=True)
class PrerenderSample:
    """The synthetic source's pre-render while it renders: frames done of the total."""

    done: int = 0
    total: int = 0

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "PrerenderSample | None":
        if not isinstance(d, Mapping):
            return None
        return cls(int(_num(d, "done", 0) or 0), int(_num(d, "total", 0) or 0))

    def to_dict(self) -> dict:
        return {"done": self.done, "total": self.total}


@dataclass(frozen=True)
class BottleneckSample:
    """What limits the run now (``appliance.bottleneck``'s live verdict): the stage, the
    resource it waits for, how busy it is, and the sentence for people."""

    stage: str | None = None
    resource: str | None = None
    busy: float | None = None
    text: str = ""

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "BottleneckSample | None":
        if not isinstance(d, Mapping):
            return None
        stage, resource = d.get("stage"), d.get("resource")
        return cls(stage if isinstance(stage, str) else None, resource if isinstance(resource, str) else None,
                   _opt_num(d, "busy"), str(d.get("text") or ""))

    def to_dict(self) -> dict:
        return {"stage": self.stage, "resource": self.resource, "busy": self.busy, "text": self.text}


@dataclass(frozen=True)
class StatsSample:
    """One stats sample of a run (``stats.jsonl``, the control plane's ``stats`` topic, what
    ``ctl status`` shows), read whole: the run's counts and state, its stages and rings,
    the host, the active alerts, the pre-render's progress and the live bottleneck. The
    stages' and rings' own figures beyond these fields stay in the dict a reader was given."""

    schema: int = 0  #: 0: a sample from before schema 1
    t: float | None = None
    run_id: str | None = None
    state: str = ""
    frames_acquired: int = 0
    frames_planned: int = 0
    tiles: tuple[int, ...] = ()
    cycles: int = 0
    e2e_latency_ms_p99: float | None = None
    e2e_latency_budget_ms: float | None = None
    host: HostSample = HostSample()
    stages: tuple[StageSample, ...] = ()
    rings: tuple[RingSample, ...] = ()
    alerts: tuple[AlertSample, ...] = ()
    prerender: PrerenderSample | None = None
    bottleneck: BottleneckSample | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "StatsSample":
        d = d if isinstance(d, Mapping) else {}
        run_id = d.get("run_id")
        return cls(
            int(_num(d, "schema", 0) or 0), _opt_num(d, "t"), run_id if isinstance(run_id, str) else None, str(d.get("state") or ""),
            int(_num(d, "frames_acquired", 0) or 0), int(_num(d, "frames_planned", 0) or 0),
            tuple(int(t) for t in d.get("tiles") or () if isinstance(t, int)), int(_num(d, "cycles", 0) or 0),
            _opt_num(d, "e2e_latency_ms_p99"), _opt_num(d, "e2e_latency_budget_ms"), HostSample.from_dict(d.get("host")),
            tuple(stage_samples(d)), tuple(ring_samples(d)),
            tuple(AlertSample.from_dict(a) for a in d.get("alerts") or () if isinstance(a, Mapping)),
            PrerenderSample.from_dict(d.get("prerender")), BottleneckSample.from_dict(d.get("bottleneck")),
        )

    @property
    def drops(self) -> int:
        """Frames dropped on every ring so far."""
        return sum(r.drops for r in self.rings)
