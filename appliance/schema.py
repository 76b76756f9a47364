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

__all__ = ["EDGES", "PIPELINE", "SCHEMA_VERSION", "STAGES", "RingSample", "StageSample", "ring_samples", "stage_samples"]

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
