"""The job kinds: name -> the function that does the work, its priority class and its limits.

A kind's function is named by a dotted ``"module:function"`` string and imported only where the
job runs (a worker process, a Dask worker), so registering a kind imports nothing. Extra kinds
(plug-ins, tests) are added with :func:`register_kind` or ``KindRegistry.register`` without
editing this module; ``offload.plugins`` names modules the orchestrator imports at start so they
can register theirs.
"""

from __future__ import annotations

import dataclasses
import importlib
import threading
from dataclasses import dataclass
from typing import Callable

from appliance.offload.config import CLASSES, OffloadConfig

__all__ = ["JobKind", "KindRegistry", "default_registry", "register_kind", "resolve_target", "load_plugins"]


@dataclass(frozen=True)
class JobKind:
    """One job kind: what runs (``target``), at which priority, how often it may fail, how long."""

    name: str
    target: str  #: "package.module:function" with signature run_job(params, ctx) -> dict
    priority: str = "batch"
    max_attempts: int = 3
    backoff_s: float = 5.0  #: base of the exponential backoff (full jitter)
    backoff_cap_s: float = 300.0
    timeout_s: float = 3600.0  #: an attempt running longer is stopped and retried
    description: str = ""
    cores: int = 1  #: what one attempt needs on a pool slot (placement: appliance.offload.scheduler.place)
    memory_mb: int = 1024
    gpu: bool = False  #: needs a GPU (placed only on a pool with gpus >= 1)
    #: data locations its inputs can be read from: hot, warm, object (any one). "object": a cloud
    #: pool can stage them through the object store (appliance.offload.cloud.stage_plan)
    inputs: tuple[str, ...] = ("hot",)
    #: seconds one attempt takes on one slot: the burst policy's estimate until it has observed
    #: the kind's attempts on this instrument's pools (then their running average)
    expected_s: float = 300.0

    def __post_init__(self) -> None:
        if self.priority not in CLASSES:
            raise ValueError(f"job kind {self.name!r}: priority {self.priority!r} is not one of {', '.join(CLASSES)}")
        if ":" not in self.target:
            raise ValueError(f"job kind {self.name!r}: target {self.target!r} must be 'module:function'")
        if self.max_attempts < 1:
            raise ValueError(f"job kind {self.name!r}: max_attempts must be >= 1")
        if self.expected_s <= 0:
            raise ValueError(f"job kind {self.name!r}: expected_s must be > 0")
        if self.cores < 0 or self.memory_mb < 0:
            raise ValueError(f"job kind {self.name!r}: cores and memory_mb must be >= 0")
        bad = [i for i in self.inputs if i not in ("hot", "warm", "object")]
        if bad or not self.inputs:
            raise ValueError(f"job kind {self.name!r}: inputs {self.inputs!r} must be a non-empty tuple of hot, warm, object")

    def candidate(self, job_id: int, priority: str | None = None):
        """This kind's needs as a scheduler :class:`~appliance.offload.scheduler.Candidate`."""
        from appliance.offload.scheduler import Candidate

        return Candidate(job_id, priority or self.priority, self.cores, self.memory_mb, self.gpu, self.inputs, self.timeout_s)


#: The kinds the appliance ships (their functions live in appliance.analysis).
BUILTIN_KINDS = (
    JobKind("cycle-qc", "appliance.analysis.cycle_qc:run_job", "realtime", 3, 1.0, 30.0, 600.0,
            "per-cycle quality figures as a run's cycles complete", memory_mb=512, expected_s=10.0),
    JobKind("fastq", "appliance.analysis.fastq:run_job", "realtime", 3, 5.0, 300.0, 3600.0,
            "gzipped FASTQ per lane from a completed run folder", memory_mb=1024, inputs=("hot", "object"), expected_s=300.0),
    JobKind("align-qc", "appliance.analysis.align_qc:run_job", "batch", 3, 5.0, 300.0, 7200.0,
            "align the FASTQ to the run's reference (minimap2): % aligned, per-cycle error rate", memory_mb=2048,
            inputs=("hot", "object"), expected_s=600.0),
    JobKind("reprocess", "appliance.analysis.reprocess:run_job", "reprocess", 2, 30.0, 600.0, 14400.0,
            "re-run the kernel chain on a run's raw frames with a named algorithm version", memory_mb=4096, expected_s=3600.0),
    JobKind("compare", "appliance.analysis.compare:run_job", "reprocess", 2, 10.0, 300.0, 3600.0,
            "compare a candidate algorithm's output with production: promote or roll back", expected_s=300.0),
)


class KindRegistry:
    """Name -> :class:`JobKind`, with the config's per-kind overrides applied on lookup."""

    def __init__(self, kinds: tuple[JobKind, ...] | list[JobKind] = ()) -> None:
        self._kinds: dict[str, JobKind] = {}
        self._lock = threading.Lock()
        for k in kinds:
            self.register(k)

    def register(self, kind: JobKind, *, replace: bool = False) -> JobKind:
        """Add ``kind``; a different kind under a taken name is an error unless ``replace``."""
        with self._lock:
            old = self._kinds.get(kind.name)
            if old is not None and old != kind and not replace:
                raise ValueError(f"job kind {kind.name!r} is already registered (target {old.target}); pass replace=True")
            self._kinds[kind.name] = kind
        return kind

    def get(self, name: str, config: OffloadConfig | None = None) -> JobKind:
        """The kind ``name`` with ``config.kinds[name]`` applied; KeyError names the known kinds."""
        with self._lock:
            kind = self._kinds.get(name)
        if kind is None:
            raise KeyError(f"unknown job kind {name!r}; known kinds: {', '.join(self.names()) or 'none'}")
        over = config.kinds.get(name) if config is not None else None
        if over is not None:
            kind = dataclasses.replace(kind, **{k: v for k, v in dataclasses.asdict(over).items() if v is not None})
        return kind

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._kinds)

    def __contains__(self, name: str) -> bool:
        with self._lock:
            return name in self._kinds


_default = KindRegistry(BUILTIN_KINDS)


def default_registry() -> KindRegistry:
    """The process-wide registry: the built-in kinds plus everything :func:`register_kind` added."""
    return _default


def register_kind(kind: JobKind, *, replace: bool = False) -> JobKind:
    """Register ``kind`` in the process-wide registry (what plug-in modules call)."""
    return _default.register(kind, replace=replace)


def load_plugins(modules: tuple[str, ...] | list[str]) -> None:
    """Import each plug-in module (each registers its kinds); a missing one is a clear error."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"offload.plugins: cannot import {name!r} ({exc}); install it or remove it from offload.plugins") from exc


def resolve_target(target: str) -> Callable:
    """Import ``"module:function"`` and return the function."""
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise ImportError(f"job target {target!r}: module {module_name} has no {attr!r}") from None
    if not callable(fn):
        raise ImportError(f"job target {target!r} is not callable")
    return fn
