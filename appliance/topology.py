"""The run's topology: its stage processes and the rings between them, typed objects built
once from the config.

The pipeline's shape (:data:`appliance.schema.PIPELINE`, :data:`appliance.schema.EDGES`)
times each stage's ``replicas`` gives the processes (``kernel-1`` is :class:`Process`
``("kernel", 1)``) and the links: one ring per (producer replica, consumer replica) of an
edge, fan-out by tile from each producer, fan-in at each consumer. The supervisor plans
its processes, rings, CPU pinning and samples from it, and nothing composes or parses a
process or ring name anywhere else: a name is what :attr:`Process.name` and
:attr:`Link.key` say.
"""

from __future__ import annotations

from dataclasses import dataclass

from appliance.schema import EDGES, PIPELINE

__all__ = ["Link", "Process", "Topology"]


@dataclass(frozen=True, order=True)
class Process:
    """One stage process: one replica of one stage."""

    stage: str  #: "source", "preprocess", "kernel", "basecall", "writer"
    replica: int

    @property
    def name(self) -> str:
        """The process's name everywhere (logs, samples, checkpoints): ``kernel-0``."""
        return f"{self.stage}-{self.replica}"

    @classmethod
    def from_name(cls, name: str) -> "Process":
        """The process a name stands for, where only the name is at hand (a process title in
        ``ps``): the one place a name is read back. ValueError for a name of no stage."""
        stage, _, replica = str(name).rpartition("-")
        if stage not in PIPELINE or not replica.isdigit():
            raise ValueError(f"{name!r} is not a stage process name; allowed STAGE-N with STAGE one of {', '.join(PIPELINE)}")
        return cls(stage, int(replica))

    @property
    def is_source(self) -> bool:
        """The camera: the first stage, whose stream the run is."""
        return self.stage == PIPELINE[0]

    @property
    def is_last(self) -> bool:
        """The last stage (the run-folder writer): what it has done, the run has."""
        return self.stage == PIPELINE[-1]


@dataclass(frozen=True)
class Link:
    """One ring: the edge it carries, from one producer process to one consumer process."""

    edge: str  #: "raw", "corrected", "intensities", "calls"
    producer: Process
    consumer: Process

    @property
    def key(self) -> str:
        """The ring's key in samples (``raw.0.0``: edge, producer replica, consumer replica);
        the supervisor's shared-memory name adds its pid and the run id in front."""
        return f"{self.edge}.{self.producer.replica}.{self.consumer.replica}"


@dataclass(frozen=True)
class Topology:
    """Every process of a run in pipeline order (replicas in order within a stage), and
    every ring in edge order (by producer replica, then consumer replica)."""

    processes: tuple[Process, ...]
    links: tuple[Link, ...]

    @classmethod
    def from_config(cls, config) -> "Topology":
        """The topology of a run config: the source runs once, each other stage
        ``stages.<stage>.replicas`` times."""
        counts = {stage: 1 if stage == PIPELINE[0] else int(config.stages[stage].replicas) for stage in PIPELINE}
        return cls.of(counts)

    @classmethod
    def of(cls, replicas: dict[str, int]) -> "Topology":
        """The topology with ``replicas[stage]`` processes per stage (every stage of the
        pipeline must be there, each at least once)."""
        missing = [s for s in PIPELINE if s not in replicas]
        bad = {s: n for s, n in replicas.items() if s not in PIPELINE or not isinstance(n, int) or n < 1}
        if missing or bad:
            raise ValueError(f"replicas per stage: missing {missing}, invalid {bad}; allowed: an int >= 1 for each of {list(PIPELINE)}")
        procs = tuple(Process(stage, r) for stage in PIPELINE for r in range(replicas[stage]))
        links = tuple(
            Link(edge, Process(src, i), Process(dst, j))
            for edge, (src, dst) in EDGES.items()
            for i in range(replicas[src])
            for j in range(replicas[dst])
        )
        return cls(procs, links)

    @property
    def source(self) -> Process:
        return self.processes[0]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.processes)

    def replicas(self, stage: str) -> int:
        return sum(1 for p in self.processes if p.stage == stage)

    def process(self, name: str) -> Process:
        """The process called ``name`` (KeyError naming the processes there are)."""
        for p in self.processes:
            if p.name == name:
                return p
        raise KeyError(f"no process {name!r} in this run; there are {', '.join(self.names)}")

    def inputs(self, proc: Process) -> tuple[Link, ...]:
        """The rings ``proc`` consumes: one per upstream replica (fan-in), in replica order."""
        return tuple(link for link in self.links if link.consumer == proc)

    def outputs(self, proc: Process) -> tuple[Link, ...]:
        """The rings ``proc`` produces into, indexed by downstream replica (fan-out by tile)."""
        return tuple(link for link in self.links if link.producer == proc)

    def links_of(self, edge: str) -> tuple[Link, ...]:
        return tuple(link for link in self.links if link.edge == edge)
