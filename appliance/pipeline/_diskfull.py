"""A full disk pauses, it does not kill: writes retried until space is freed.

Every write a stage makes (run folder files, raw audit copies, its checkpoint, its summary)
goes through :class:`UntilSpace`. On ENOSPC or EDQUOT the partial file is removed (the
write's ``cleanup``), a ``disk_full`` alert is raised once, and the write is retried every
``retry_s`` while the stage's input heartbeats stay fresh (paused on purpose, not hung).
Upstream stages wait on backpressure, and the supervisor pauses acquisition while any stage
reports a full disk. Once the write succeeds a ``disk_full`` clear is sent and the run goes
on where it stopped: no frame is lost and no partial file is left behind.
"""

from __future__ import annotations

import errno
import logging
import time

__all__ = ["FULL_ERRNOS", "RETRY_S", "is_full", "UntilSpace"]

log = logging.getLogger("appliance.stage")
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
RETRY_S = 1.0  #: how often a write that met a full disk is tried again


def is_full(exc: BaseException) -> bool:
    """True for a full disk or quota (ENOSPC, EDQUOT; RunFolderFull is an OSError too)."""
    return isinstance(exc, OSError) and exc.errno in FULL_ERRNOS


class UntilSpace:
    """``until(what, write, *args, cleanup=None)``: ``write(*args)``, retried while the disk is full.

    ``alert(message, **fields)`` raises the alert (``rule="disk_full"``, ``state="raised"``
    or ``"cleared"``); ``heartbeat()`` keeps the stage visibly alive while it waits;
    ``stopping()`` (optional) ends the wait when the stage must exit (the exception is re-raised).
    """

    def __init__(self, alert, heartbeat, stats=None, retry_s: float = RETRY_S, stopping=None) -> None:
        self.alert = alert
        self.heartbeat = heartbeat
        self.stats = stats
        self.retry_s = retry_s
        self.stopping = stopping

    def __call__(self, what: str, write, *args, cleanup=None):
        paused = None
        while True:
            try:
                result = write(*args)
            except OSError as exc:
                if not is_full(exc):
                    raise
                if cleanup is not None:
                    cleanup()
                if paused is None:
                    paused = time.monotonic()
                    before = self._set_state("DISK_FULL")  # the stage's status block says so
                    self.alert(f"disk full writing {what}: the run is paused until space is freed ({exc})",
                               rule="disk_full", state="raised", path=str(getattr(exc, "path", None) or exc.filename or what))
                if self.stopping is not None and self.stopping():
                    raise
                self.heartbeat()
                time.sleep(self.retry_s)
                continue
            if paused is not None:
                self._set_state(before)
                waited = time.monotonic() - paused
                if self.stats is not None:
                    self.stats.extra["disk_full_pause_s"] = self.stats.extra.get("disk_full_pause_s", 0.0) + waited
                self.alert(f"space freed: {what} written after a {waited:.0f} s pause; the run resumes",
                           rule="disk_full", state="cleared", kind="event")
            return result

    def _set_state(self, state):
        """Publish ``state`` (a ``rt.StageState`` or its name) as the stage's; returns the one before."""
        publish = getattr(self.stats, "publish", None)
        if publish is None:
            return None
        import rt

        before = self.stats.state
        publish(rt.StageState[state] if isinstance(state, str) else state)
        return before
