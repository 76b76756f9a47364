"""What the supervisor hands a stage process: everything it needs, picklable for ``spawn``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from appliance.config import RunConfig
from appliance.topology import Process

__all__ = ["StageSpec", "frame_key"]


@dataclass(frozen=True)
class StageSpec:
    """One stage process (one replica of one stage)."""

    stage: str  #: source, preprocess, kernel, basecall, writer
    replica: int
    inputs: tuple[str, ...]  #: ring names this process consumes (fan-in: one per upstream replica)
    outputs: tuple[str, ...]  #: ring names it produces into, indexed by downstream replica
    config: RunConfig
    run_id: str
    run_dir: Path
    state_dir: Path
    cpus: frozenset[int] | None = None  #: None: not pinned
    parent_pid: int = 0
    stage_index: int = 0  #: position in the trace (0 = source)
    log_json: bool = False  #: headless: one JSON object per log line, like the supervisor
    fault: dict = field(default_factory=dict)  #: test hooks: {"kill_after": n frames, "corrupt_frame": n, "slow_ms": x}
    #: the run's status block (``rt.StatusBlock``) and this process's record in it ("": none,
    #: as in a unit test: the stage then publishes nothing)
    status_block: str = ""
    status_index: int = 0

    @property
    def process(self) -> Process:
        """This process in the run's topology (``appliance.topology``)."""
        return Process(self.stage, self.replica)

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def checkpoint_path(self) -> Path:
        return self.state_dir / f"{self.name}.ckpt"

    @property
    def summary_path(self) -> Path:
        return self.state_dir / f"{self.name}.summary.json"

    def route(self, tile: int) -> int:
        """The downstream replica (output index) that handles ``tile``."""
        return self.config.run.tiles.index(tile) % len(self.outputs)


def frame_key(header) -> tuple[int, int, int, int]:
    """A frame's identity: (kind, tile, cycle, channel). Duplicates after a restart share it."""
    return int(header["kind"]), int(header["tile"]), int(header["cycle"]), int(header["channel"])
