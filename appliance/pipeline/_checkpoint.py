"""Stage checkpoints and the crash-consistency protocol (docs/architecture.md).

Two kinds of checkpoint, both a small explicit state (a frozen dataclass per handler plus
the runtime's dedupe watermarks), pickled atomically beside the run:

- The *live* checkpoint (``<stage>.ckpt``) covers the input frames a stage has released. It
  is what a restarted stage loads while the rings live on (one stage crashed): the ring then
  delivers every later frame again, and what was emitted twice is dropped downstream by the
  per-stream watermark. Rename only, not fsynced: it must survive the death of the process.
- The *epoch* checkpoint (``<stage>.e<EPOCH>.ckpt``) is the stage's state exactly when the
  barrier of epoch k (the end of cycle k) has passed all its inputs. It is fsynced before
  the barrier goes on. Each stage keeps those from the committed epoch on (a stage may run
  several epochs ahead of the last one: as many as the rings between them hold, not the
  run's length), and always its last two. The last stage commits epoch k
  (``committed.json``, fsynced) once its own epoch-k checkpoint and every file before the
  barrier are durable: k is then the global restore point. After a total loss (the rings
  gone with every process) :func:`plan_resume` picks the restore epoch, every stage restores
  its epoch-k state, and the source re-emits from the first frame after epoch k.
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import os
import pickle
import re
import types
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "save_checkpoint", "load_checkpoint", "Checkpoint", "RuntimeState", "BARRIER_KIND",
    "epoch_path", "epochs_on_disk", "prune_epochs", "save_epoch", "link_live", "write_commit", "read_commit",
    "ResumePlan", "plan_resume", "COMMIT_FILE",
]

#: the header ``kind`` of a barrier frame (no payload; ``cycle`` holds the epoch). Not a
#: FrameKind: barriers never reach a handler, the runtime consumes and forwards them.
BARRIER_KIND = 250
COMMIT_FILE = "committed.json"
KEEP_EPOCHS = 2
_EPOCH_RE = re.compile(r"^(?P<name>.+)\.e(?P<epoch>\d{6})\.ckpt$")


@dataclass(frozen=True)
class RuntimeState:
    """What the consume loop itself must keep: dedupe by watermark, not a set of every key.

    ``watermarks``: per stream (frame kind, tile) the highest (cycle, channel) consumed; every
    stream arrives in (cycle, channel) order, so a frame at or below it is a duplicate.
    ``barriers``: the last epoch whose barrier this stage has aligned and forwarded.
    """

    watermarks: dict = field(default_factory=dict)
    barrier: int = 0


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint file: the runtime's state and the handler's (its own frozen dataclass)."""

    runtime: RuntimeState
    handler: object
    epoch: int = 0  #: the last epoch fully covered


class _Pickler(pickle.Pickler):
    # Kernel objects keep their array module (numpy or cupy) as an attribute: pickle it by name.
    def reducer_override(self, obj):
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        return NotImplemented


def _write_atomic(path: Path, data, durable: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # never a partial file left behind
        raise
    if durable:
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(path: Path, state: object, *, durable: bool = False) -> int:
    """Pickle ``state`` to ``path`` atomically (fsynced with ``durable``); returns its size in bytes."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
    data = buf.getbuffer()
    _write_atomic(path, data, durable)
    return len(data)


def load_checkpoint(path: Path) -> object | None:
    """The state saved at ``path``, or None when there is none."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        return None


def epoch_path(state_dir: Path, name: str, epoch: int) -> Path:
    return Path(state_dir) / f"{name}.e{epoch:06d}.ckpt"


def epochs_on_disk(state_dir: Path) -> dict[str, list[int]]:
    """Per stage process name, the epochs it has a checkpoint of (ascending)."""
    out: dict[str, list[int]] = {}
    if Path(state_dir).is_dir():
        for p in Path(state_dir).iterdir():
            m = _EPOCH_RE.match(p.name)
            if m:
                out.setdefault(m["name"], []).append(int(m["epoch"]))
    return {k: sorted(v) for k, v in out.items()}


def prune_epochs(state_dir: Path, name: str, keep: int = KEEP_EPOCHS) -> None:
    """Remove the epoch checkpoints of ``name`` older than the committed epoch, keeping the
    newest ``keep`` in any case (the restore point may be any epoch from the committed on)."""
    committed = read_commit(state_dir)
    for e in epochs_on_disk(state_dir).get(name, [])[:-keep]:
        if e < committed:
            epoch_path(state_dir, name, e).unlink(missing_ok=True)


def save_epoch(state_dir: Path, name: str, epoch: int, state: object) -> int:
    """The durable checkpoint of ``name`` at ``epoch``, then prune what no restore needs."""
    n = save_checkpoint(epoch_path(state_dir, name, epoch), state, durable=True)
    prune_epochs(state_dir, name)
    return n


def link_live(state_dir: Path, name: str, epoch: int, live: Path) -> None:
    """Make the epoch checkpoint also the live one (a hard link: written once)."""
    tmp = live.with_name(live.name + ".tmp")
    tmp.unlink(missing_ok=True)
    os.link(epoch_path(state_dir, name, epoch), tmp)
    os.replace(tmp, live)


def write_commit(state_dir: Path, epoch: int, frames: int) -> None:
    """Make ``epoch`` the global restore point (fsynced): written by the last stage only."""
    data = json.dumps({"epoch": epoch, "frames": frames}).encode()
    _write_atomic(Path(state_dir) / COMMIT_FILE, data, durable=True)


def read_commit(state_dir: Path) -> int:
    """The committed epoch (0 when nothing was committed)."""
    try:
        return int(json.loads((Path(state_dir) / COMMIT_FILE).read_text())["epoch"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 0


@dataclass(frozen=True)
class ResumePlan:
    """What a resume after a total loss does (pure: :func:`plan_resume`)."""

    epoch: int  #: every stage restores its state at this epoch (0: from the start)
    source_index: int  #: the first frame (index in acquisition order) the source emits
    restore: dict  #: stage process name -> epoch checkpoint to restore (absent: start empty)
    lost_frames: int = 0  #: frames acquired before the crash that cannot be had again
    reason: str = ""


def plan_resume(committed: int, epochs: dict[str, list[int]], names: list[str], frames_per_epoch: int,
                *, reacquirable: bool, acquired_before: int = 0) -> ResumePlan:
    """The restore epoch: the committed one, or where a stage lacks it (it cannot: every
    stage writes epoch k before the barrier goes on and keeps two) the newest epoch at or
    below it that every stage has; 0 when there is none. With a source that cannot give its
    frames again (a real camera), the frames acquired after that epoch are lost: the source
    goes on from ``acquired_before`` and the plan counts them."""
    epoch = committed
    while epoch > 0 and not all(epoch in epochs.get(n, []) for n in names):
        epoch -= 1
    reason = f"epoch {epoch} (cycle {epoch}) is the last committed restore point"
    if epoch != committed:
        reason = f"committed epoch {committed} lacks a stage checkpoint; restoring epoch {epoch}"
    start = epoch * frames_per_epoch
    lost = 0
    if not reacquirable and acquired_before > start:
        lost = acquired_before - start
        start = acquired_before
    restore = {n: epoch for n in names} if epoch else {}
    return ResumePlan(epoch, start, restore, lost, reason)


def replace(state, **changes):
    """``dataclasses.replace`` (handlers build their next state from the last)."""
    return dataclasses.replace(state, **changes)
