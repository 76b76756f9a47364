"""Stage checkpoints: the handler's state, pickled atomically next to the run.

A stage releases its input frames only after a checkpoint that covers them, so after a
crash the restarted stage loads the checkpoint and the ring delivers every later frame
again: nothing is lost, and what was emitted twice is dropped downstream by frame identity.
Checkpoints are written with rename (atomic) but not fsynced: they must survive the death
of the process (the page cache does), not of the host.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import types
from pathlib import Path

__all__ = ["save_checkpoint", "load_checkpoint"]


class _Pickler(pickle.Pickler):
    # Kernel objects keep their array module (numpy or cupy) as an attribute: pickle it by name.
    def reducer_override(self, obj):
        if isinstance(obj, types.ModuleType):
            return importlib.import_module, (obj.__name__,)
        return NotImplemented


def save_checkpoint(path: Path, state: object) -> int:
    """Pickle ``state`` to ``path`` atomically; returns the size in bytes."""
    buf = io.BytesIO()
    _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
    data = buf.getbuffer()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def load_checkpoint(path: Path) -> object | None:
    """The state saved at ``path``, or None when there is none."""
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except FileNotFoundError:
        return None
