"""Work buffers a pickle leaves out: a kernel object's checkpoint holds its state, not its scratch.

A stage checkpoints its kernel objects (the tile chain, with its registration, detection and
band-pass kernels) by pickling them. Their preallocated hot-path buffers are most of their
bytes and none of their state: they are overwritten before every read. A class lists them in
``_SCRATCH``; a pickle stores each as its shape and dtype only, and unpickling allocates it
again (zeroed, on the array module it lived on). ``_DERIVED`` attributes are left out too and
rebuilt by ``_rebuild_derived()`` from the state that remains. The array module a kernel
keeps (``xp``, its FFT module) is pickled by name, so a plain ``pickle`` works.
"""

from __future__ import annotations

import importlib
import types
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class _Module:
    name: str


@dataclass(frozen=True)
class _Buffer:
    module: str  # "numpy" or "cupy": where the buffer lived
    shape: tuple[int, ...]
    dtype: str


class Scratch:
    """Mixin: ``_SCRATCH`` buffers are pickled as their shape, ``_DERIVED`` ones rebuilt,
    modules by name."""

    _SCRATCH: tuple[str, ...] = ()
    _DERIVED: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        state = {k: _Module(v.__name__) if isinstance(v, types.ModuleType) else v for k, v in self.__dict__.items()}
        for name in self._SCRATCH:
            a = state.get(name)
            if a is not None and hasattr(a, "shape") and hasattr(a, "dtype"):
                state[name] = _Buffer(type(a).__module__.split(".")[0], tuple(int(n) for n in a.shape), str(a.dtype))
        for name in self._DERIVED:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = {k: importlib.import_module(v.name) if isinstance(v, _Module) else v for k, v in state.items()}
        for name in self._SCRATCH:
            b = state.get(name)
            if isinstance(b, _Buffer):
                state[name] = importlib.import_module(b.module).zeros(b.shape, dtype=b.dtype)
        self.__dict__.update(state)
        if self._DERIVED:
            self._rebuild_derived()

    def _rebuild_derived(self) -> None:  # pragma: no cover - a class with _DERIVED defines it
        raise NotImplementedError
