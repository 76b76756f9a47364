"""Crash-safe flags the supervisor shares with its stage processes (drain, pause).

``multiprocessing.Event`` is not safe here: its condition variable counts sleepers, and a
process SIGKILLed while it waits (or while it holds the lock inside ``is_set``) leaves
``set()`` blocked forever in every other process. A stage can die at any instant, so the
flags are one byte of shared memory with no lock: the supervisor is the only writer and a
byte store is atomic, so a reader sees the old value or the new one, never a torn one.
"""

from __future__ import annotations

import ctypes
import multiprocessing.context

__all__ = ["SharedFlag", "AnyFlag"]


class SharedFlag:
    """A boolean set by the supervisor and polled by stages (``is_set``); picklable at spawn."""

    def __init__(self, ctx: multiprocessing.context.BaseContext) -> None:
        self._value = ctx.RawValue(ctypes.c_bool, False)

    def set(self) -> None:
        self._value.value = True

    def clear(self) -> None:
        self._value.value = False

    def is_set(self) -> bool:
        return bool(self._value.value)


class AnyFlag:
    """Set while any of its flags is set (the source stops on SIGTERM or on a drain)."""

    def __init__(self, *flags) -> None:
        self._flags = flags

    def is_set(self) -> bool:
        return any(f.is_set() for f in self._flags)
