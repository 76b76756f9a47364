"""Parent-death detection: a stage process must not outlive the supervisor that spawned it.

An orphaned stage would keep its rings mapped, its CPUs busy and its heartbeat alive while
nobody reads it, and a restarted supervisor would find two producers on one ring. Three
layers, because each one alone has a hole:

1. ``prctl(PR_SET_PDEATHSIG, sig)``: the kernel sends ``sig`` when the parent dies. It is
   Linux only and tied to the parent *thread* that forked the child, and it is not set if
   the parent already died before the call.
2. An immediate check of ``os.getppid()`` against the expected parent pid closes the race
   where the parent died between fork and the ``prctl`` call (the child has then already
   been re-parented to init or a subreaper).
3. A daemon watcher thread waits on a pidfd of the parent (or polls ``getppid``) and, when
   the parent goes, does what the kernel signal would have done: it sends ``sig`` to this
   process (or calls a callback instead). This also covers platforms without prctl.

The signal handler this module may install only sets an event; what to do on parent death
(drain, flush, exit) is the stage's decision, made in its own thread.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal as _signal
import sys
import threading
from typing import Callable

__all__ = ["ParentWatch", "exit_when_parent_dies"]

_PR_SET_PDEATHSIG = 1


class ParentWatch:
    """Handle returned by :func:`exit_when_parent_dies`: the event and the watcher thread."""

    def __init__(
        self, parent_pid: int, sig: int, on_death: Callable[[], None] | None, poll_interval: float
    ) -> None:
        self.parent_pid = parent_pid
        self.signal = sig
        #: set once the parent is known to be gone (by the watcher, the race check or the signal)
        self.parent_died = threading.Event()
        self.pdeathsig_set = False
        self._on_death = on_death
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fired = threading.Lock()
        self._done = False
        self._interval = poll_interval

    def parent_alive(self) -> bool:
        """True while this process's parent is still the expected one."""
        return not self.parent_died.is_set() and os.getppid() == self.parent_pid

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the parent dies or ``timeout`` seconds pass; True if it died."""
        return self.parent_died.wait(timeout)

    def stop(self) -> None:
        """Stop the watcher thread (the kernel's PDEATHSIG, if set, stays armed)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    # -- internals ---------------------------------------------------------------

    def _fire(self) -> None:
        """Act once on parent death: set the event, then the callback or the signal."""
        with self._fired:
            if self._done:
                return
            self._done = True
        self.parent_died.set()
        if self._on_death is not None:
            self._on_death()
        else:
            # Same effect as the kernel's PDEATHSIG: default disposition ends the process,
            # an installed handler runs in the main thread.
            os.kill(os.getpid(), self.signal)

    def _watch(self) -> None:
        pidfd = None
        if hasattr(os, "pidfd_open"):
            try:
                pidfd = os.pidfd_open(self.parent_pid)
            except OSError:
                pidfd = None  # kernel older than 5.3, or seccomp forbids it: poll instead
        # The pid could have been recycled if the parent died before pidfd_open; getppid
        # still naming it proves the descriptor refers to our parent.
        try:
            while not self._stop.is_set():
                if os.getppid() != self.parent_pid:
                    self._fire()
                    return
                if pidfd is not None:
                    ready, _, _ = select.select([pidfd], [], [], self._interval)
                    if ready:
                        self._fire()
                        return
                else:
                    self._stop.wait(self._interval)
        finally:
            if pidfd is not None:
                os.close(pidfd)


def _set_pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.prctl.restype = ctypes.c_int
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG, {int(sig)}) failed: {os.strerror(err)}")
    return True


def _default_parent_pid() -> int:
    # In a multiprocessing child, the parent's pid was recorded by the parent itself, so it
    # is right even if the parent already died and getppid() now names init.
    import multiprocessing

    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else os.getppid()


def exit_when_parent_dies(
    parent_pid: int | None = None,
    *,
    sig: int = _signal.SIGTERM,
    on_death: Callable[[], None] | None = None,
    handle_signal: bool = False,
    pdeathsig: bool = True,
    watcher: bool = True,
    poll_interval: float = 0.25,
) -> ParentWatch:
    """Arrange for this process to get ``sig`` (default SIGTERM) when its parent dies.

    ``parent_pid`` is the pid the parent had (pass it from the supervisor to be exact;
    the default is ``multiprocessing.parent_process().pid`` in a multiprocessing child,
    else ``os.getppid()``). With the default disposition of ``sig`` the process then ends.
    ``handle_signal=True`` (main thread only) installs a handler for ``sig`` that only
    sets ``watch.parent_died``, for a stage that drains before exiting. ``on_death``
    replaces the signal the watcher and the race check would send with a call (from the
    watcher thread or from this call). If the parent is already gone, this acts at once.
    ``pdeathsig=False`` skips the kernel signal and ``watcher=False`` the thread; leave
    both on outside tests.
    """
    if parent_pid is None:
        parent_pid = _default_parent_pid()
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be positive, got {poll_interval!r}")
    sig = _signal.Signals(sig)
    watch = ParentWatch(parent_pid, sig, on_death, poll_interval)
    if handle_signal:
        # Only sets the event: anything more is unsafe to do at an arbitrary point.
        _signal.signal(sig, lambda signum, frame: watch.parent_died.set())
    if pdeathsig:
        watch.pdeathsig_set = _set_pdeathsig(sig)
    # The race: the parent may have died before prctl, which then never fires.
    if os.getppid() != parent_pid:
        watch._fire()
        return watch
    if watcher:
        watch._thread = threading.Thread(target=watch._watch, name="parent-death-watcher", daemon=True)
        watch._thread.start()
    return watch
