"""Fault injection: the drills of ``--fault STAGE:KEY=VALUE``, as a wrapper around a stage.

The runtime's loop knows nothing of faults: a stage process with a fault wraps its stage in
:class:`FaultInjector`, which passes everything through and, at the frame the drill names,

* ``corrupt_frame=N``: flips a bit of the N-th input frame in shared memory before the
  runtime verifies it (a checksum failure where ``integrity.verify_at`` checks);
* ``slow_ms=X``: sleeps X ms after every frame (a throttled stage: backpressure);
* ``hang_after=N``: stops after the N-th frame without heartbeats (the supervisor's hang
  detection kills and restarts it);
* ``kill_after=N``: SIGKILLs its own process after the N-th frame (the source: after it
  sent its N-th frame) - a crash mid-run.

A restarted stage runs without its fault (the supervisor clears it): a drill fires once.
"""

from __future__ import annotations

import os
import signal
import time

__all__ = ["FAULTS", "FaultInjector"]

#: the drills and what their value is
FAULTS = {"slow_ms": "milliseconds per frame", "kill_after": "the frame number",
          "corrupt_frame": "the input frame number (1 = first)", "hang_after": "the input frame number"}


class FaultInjector:
    """``stage`` with the drills of ``fault`` ({key: value}); every other attribute is the stage's."""

    def __init__(self, stage, fault: dict) -> None:
        unknown = set(fault) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown fault {', '.join(sorted(unknown))}: allowed {', '.join(FAULTS)}")
        self._stage = stage
        self._fault = dict(fault)
        self._arrived = 0
        self._done = 0

    def __getattr__(self, name):
        return getattr(self._stage, name)

    def __setattr__(self, name, value) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:  # the runtime sets the stage's heartbeat: it is the stage's
            setattr(self._stage, name, value)

    def on_arrival(self, frame) -> None:
        """Called by the runtime for each input frame before it verifies the checksum."""
        self._arrived += 1
        if self._fault.get("corrupt_frame") == self._arrived:
            frame.slot.data[0] ^= 0xFF  # a bit flip in shared memory

    def on_frame(self, frame, out) -> None:
        self._stage.on_frame(frame, out)
        self._done += 1
        self._after(self._done)

    def on_quarantined(self, key, header, out) -> None:
        self._stage.on_quarantined(key, header, out)
        self._done += 1
        self._after(self._done)

    def _after(self, n: int) -> None:
        f = self._fault
        if f.get("slow_ms"):
            time.sleep(f["slow_ms"] / 1e3)
        if f.get("hang_after") == n:
            while True:  # hung: no heartbeat; the supervisor kills and restarts the stage
                time.sleep(1)
        if f.get("kill_after") == n:
            os.kill(os.getpid(), signal.SIGKILL)

    def sent(self, index: int, out) -> None:
        """A source sent frame ``index`` (the runtime's source loop): the drills count it."""
        self._stage.sent(index, out)
        self._done += 1
        self._after(self._done)
