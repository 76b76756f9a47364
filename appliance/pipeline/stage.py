"""The stage contract: the typed frame a stage receives, the traits it declares, and how a
stage class is named in the config.

A stage is one class (``appliance.pipeline.handlers.Handler`` and its subclasses):

* ``on_frame(frame, out)``: one input :class:`Frame`; emit with ``out.emit(...)``;
* ``finish(out)``: every input reached end of stream (the stage's ``on_end``);
* ``snapshot() -> State`` and ``restore(State)``: its small frozen dataclass, checkpointed by
  the runtime (``appliance/pipeline/_checkpoint.py``);
* traits, as class attributes: ``realtime`` (real-time scheduling when ``cpu.realtime``),
  ``numa`` (``"gpu"``: CPUs on the GPU's NUMA node; ``"nic"``: on the camera NIC's; None),
  ``replicable`` (may run as several replicas, split by tile).

The runtime (``runtime.py``) owns the loop: it decodes each slot into a :class:`Frame` once,
drops duplicates by watermark, verifies checksums, quarantines, counts, publishes the live
status, heartbeats, checkpoints then releases; fault injection (``faults.py``) wraps the stage
from outside. A stage only computes. ``stages.<stage>.handler = "module:Class"`` replaces a
built-in stage with one's own class (:func:`load_stage_class`).
"""

from __future__ import annotations

import importlib

__all__ = ["Frame", "StageClassError", "load_stage_class"]


class Frame:
    """One input frame, decoded once by the runtime: its identity (``kind``, ``tile``,
    ``cycle``, ``channel``, ``flags``) as ints, its header, and its payload read in place
    (``array()``: valid until the runtime releases the slot, after the stage's next
    checkpoint; copy what must outlive that)."""

    __slots__ = ("slot", "header", "kind", "tile", "cycle", "channel", "flags")

    def __init__(self, slot) -> None:
        h = slot.header
        self.slot = slot
        self.header = h
        self.kind, self.tile, self.cycle = int(h["kind"]), int(h["tile"]), int(h["cycle"])
        self.channel, self.flags = int(h["channel"]), int(h["flags"])

    @property
    def key(self) -> tuple[int, int, int, int]:
        """The frame's identity: (kind, tile, cycle, channel); duplicates after a restart share it."""
        return self.kind, self.tile, self.cycle, self.channel

    def array(self):
        """The payload as an array of its dtype and shape (a view into the ring)."""
        return self.slot.array()

    @property
    def payload(self):
        """The payload's bytes (a view into the ring)."""
        return self.slot.payload

    def __repr__(self) -> str:
        return f"Frame(kind={self.kind}, tile={self.tile}, cycle={self.cycle}, channel={self.channel}, flags={self.flags})"


class StageClassError(ValueError):
    """``stages.<stage>.handler`` names no importable stage class."""


def load_stage_class(target: str, base: type, key: str) -> type:
    """The class ``target`` (``"module:Class"``), which must subclass ``base``; a
    :class:`StageClassError` naming ``key`` and the fix otherwise."""
    module, sep, name = target.partition(":")
    if not sep or not module or not name:
        raise StageClassError(f"{key} = {target!r}: write it as \"module:Class\" (e.g. \"mylab.stages:MyKernel\")")
    try:
        cls = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise StageClassError(f"{key} = {target!r}: cannot import {module!r} ({exc}); install it where the appliance runs") from None
    except AttributeError:
        raise StageClassError(f"{key} = {target!r}: {module!r} has no {name!r}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise StageClassError(f"{key} = {target!r} is not a stage class: subclass {base.__module__}.{base.__qualname__}")
    return cls
