"""What a run is doing, as one line: for a terminal (``appliance run`` on a TTY) and for
systemd's ``STATUS=`` (``--headless``, ``serve --headless``).

:func:`describe` is a pure function: the supervisor's latest stats sample (the dict it
publishes on the ``stats`` topic) and the previous view in, a :class:`View` out (phase,
frames, cycle, frames/s, drops, ETA). :func:`status_text` renders a view as one line. The
shells around them are :class:`StatusReporter` (a thread that samples a callable every few
seconds and hands the line to a sink, e.g. ``notifier.status``) and :class:`LiveLine` (a status
line at the bottom of a terminal that log lines scroll above: every write to the terminal goes
through it, including the stage processes' stderr, which :meth:`LiveLine.capture_fd` routes
through a pipe).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from appliance.schema import StatsSample

__all__ = ["LiveLine", "StatusReporter", "View", "describe", "status_text"]

#: the phases a view can be in, in the order a run goes through them
PHASES = ("idle", "starting", "pre-render", "acquiring", "paused", "draining", "done", "stopped_early", "failed", "offload")

_CHANNELS = 4  # frames per tile and cycle (one per dye channel), as the supervisor counts them


@dataclass(frozen=True)
class View:
    """One moment of a run as the operator sees it."""

    phase: str
    run_id: str | None = None
    frames: int = 0
    frames_planned: int = 0
    cycle: int = 0
    cycles: int = 0
    fps: float | None = None
    drops: int = 0
    eta_s: float | None = None
    phase_s: float = 0.0  # seconds in this phase (pre-render, offload)
    t: float | None = None  # the sample's time
    phase_since: float | None = None
    prerender_done: int | None = None
    prerender_total: int | None = None
    alerts: int = 0


def describe(sample: dict | None, prev: View | None = None, *, now: float | None = None, phase: str | None = None, prerender: bool = True) -> View:
    """The view of a stats ``sample`` (None or {} before the first one). ``prev`` (the last
    view) gives frames/s (smoothed) and how long the phase lasted; ``phase`` forces one (the
    offload after the run); ``prerender`` says whether the source renders every frame before
    acquiring (``source.prerender``), so a run with no frame yet is in ``pre-render``."""
    now = time.time() if now is None else now
    sample = sample or {}
    s = StatsSample.from_dict(sample)
    frames, planned, cycles, state = s.frames_acquired, s.frames_planned, s.cycles, s.state
    per_cycle = max(1, len(s.tiles) * _CHANNELS)
    pre = s.prerender
    if phase is None:
        if not sample or (state == "starting" and "frames_acquired" not in sample):
            phase = "starting"
        elif state in ("prerendering", "pre-render") or (state == "acquiring" and frames == 0 and (prerender or pre)):
            phase = "pre-render"
        elif state in PHASES:
            phase = state
        else:
            phase = state or "acquiring"
    drops = s.drops
    t = s.t
    # frames/s between two acquiring samples, smoothed; unknown right after another phase
    fps = prev.fps if prev is not None and prev.phase == phase else None
    if prev is not None and prev.phase == "acquiring" and phase == "acquiring" and t is not None and prev.t is not None and t > prev.t:
        rate = (frames - prev.frames) / (t - prev.t)
        fps = rate if fps is None else 0.5 * fps + 0.5 * rate
    since = prev.phase_since if prev is not None and prev.phase == phase and prev.phase_since is not None else now
    eta = None
    if phase == "acquiring" and fps and fps > 0 and planned:
        eta = max(0.0, (planned - frames) / fps)
    cycle = min(cycles, frames // per_cycle + 1) if cycles and frames else 0
    return View(
        phase=phase, run_id=s.run_id or (prev.run_id if prev else None), frames=frames,
        frames_planned=planned, cycle=cycle, cycles=cycles, fps=fps, drops=drops, eta_s=eta,
        phase_s=max(0.0, now - since), t=t, phase_since=since,
        prerender_done=pre.done if pre else None, prerender_total=pre.total if pre else None,
        alerts=len(s.alerts),
    )


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def status_text(view: View) -> str:
    """One line: ``acquiring: run R, cycle 3/26, 240/832 frames, 19.8 frames/s, 0 drops, ETA 30 s``."""
    parts = [f"run {view.run_id}"] if view.run_id else []
    if view.phase == "idle":
        return f"idle: waiting for `ctl start` (last run {view.run_id})" if view.run_id else "idle: waiting for `ctl start`"
    if view.phase == "pre-render":
        if view.prerender_total:
            done = view.prerender_done or 0
            parts.append(f"{done}/{view.prerender_total} frames rendered ({100 * done / view.prerender_total:.0f}%)")
        parts.append(f"{_duration(view.phase_s)}")
    elif view.phase == "offload":
        parts.append(f"jobs running for {_duration(view.phase_s)}")
    elif view.phase != "starting":
        if view.cycles:
            parts.append(f"cycle {view.cycle}/{view.cycles}")
        parts.append(f"{view.frames}/{view.frames_planned} frames" if view.frames_planned else f"{view.frames} frames")
        if view.fps is not None and view.phase in ("acquiring", "paused", "draining"):
            parts.append(f"{view.fps:.1f} frames/s")
        parts.append(f"{view.drops} drop{'s' if view.drops != 1 else ''}")
        if view.alerts:
            parts.append(f"{view.alerts} alert{'s' if view.alerts != 1 else ''}")
        if view.eta_s is not None:
            parts.append(f"ETA {_duration(view.eta_s)}")
    return f"{view.phase}: {', '.join(parts)}" if parts else view.phase


class StatusReporter:
    """Every ``period`` seconds: ``sink(status_text(describe(get_sample(), ...)))``.

    ``get_sample`` returns the latest stats sample (``Supervisor.latest_stats``); ``sink``
    takes the line (``Notifier.status``, ``LiveLine.show``). The view is refreshed every
    ``sample_period`` (at most 1 s) whatever ``period`` is, so frames/s is known one second
    into acquisition and a change of phase is sent at once, not up to ``period`` later.
    ``phase`` may be set from outside (``"offload"``) to override the sample's. An exception
    from either callable is ignored for that tick: a status line must never stop a run."""

    def __init__(self, get_sample: Callable[[], dict | None], sink: Callable[[str], Any], *, period: float = 5.0,
                 prerender: bool = True, sample_period: float | None = None) -> None:
        if period <= 0:
            raise ValueError(f"period must be > 0 seconds, got {period!r}")
        self.get_sample = get_sample
        self.sink = sink
        self.period = period
        self.sample_period = min(period, 1.0) if sample_period is None else sample_period
        if self.sample_period <= 0:
            raise ValueError(f"sample_period must be > 0 seconds, got {sample_period!r}")
        self.prerender = prerender
        self.phase: str | None = None
        self.view: View | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(self) -> View:
        """Sample once and update the view, sending nothing."""
        view = describe(self.get_sample(), self.view, phase=self.phase, prerender=self.prerender)
        if self.phase is not None and self.view is not None:
            view = replace(view, run_id=view.run_id or self.view.run_id)
        self.view = view
        return view

    def tick(self) -> str:
        """Sample once and send the line; returns it."""
        text = status_text(self.observe())
        self.sink(text)
        return text

    def _loop(self) -> None:
        next_send, sent_phase = 0.0, None
        while not self._stop.is_set():
            try:
                view = self.observe()
                now = time.monotonic()
                if now >= next_send or view.phase != sent_phase:
                    self.sink(status_text(view))
                    next_send, sent_phase = now + self.period, view.phase
            except Exception:  # noqa: BLE001 - see the class docstring
                pass
            self._stop.wait(self.sample_period)

    def start(self) -> StatusReporter:
        self._thread = threading.Thread(target=self._loop, name="status-reporter", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def __enter__(self) -> StatusReporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_LEVEL_COLOUR = ((re.compile(rb" (ERROR|CRITICAL) "), b"\033[1;31m"), (re.compile(rb" WARNING "), b"\033[33m"))


class LiveLine:
    """A status line kept at the bottom of a terminal while log lines scroll above it.

    Every byte meant for the terminal goes through :meth:`write`: the status line is erased
    (``\\r\\033[K``), the text written, and the status line drawn again after a complete line.
    :meth:`capture_fd` points a file descriptor (2: this process's stderr and the stage
    processes', which inherit it) at a pipe read by a thread, so their log lines pass here
    too; :meth:`close` restores it. With ``colour``, whole log lines whose level is WARNING
    or ERROR are coloured. Lines longer than the terminal are cut, so the status line is
    always one row.
    """

    def __init__(self, fd: int, *, colour: bool = False, width: int | None = None) -> None:
        self._out = os.dup(fd)
        self.colour = colour
        self._width = width
        self._lock = threading.Lock()
        self._status = b""
        self._pending = b""  # the start of a line whose newline has not come yet
        self._captured: list[tuple[int, int]] = []  # (fd, saved copy)
        self._readers: list[threading.Thread] = []

    def width(self) -> int:
        if self._width:
            return self._width
        try:
            columns = os.get_terminal_size(self._out).columns
        except OSError:
            columns = 0
        if columns <= 0:  # a pty nobody sized: $COLUMNS, else 80
            try:
                columns = int(os.environ.get("COLUMNS", ""))
            except ValueError:
                columns = 80
        return max(20, columns)

    def _raw(self, data: bytes) -> None:
        while data:
            n = os.write(self._out, data)
            data = data[n:]

    def show(self, text: str) -> None:
        """Replace the status line with ``text``."""
        line = text.replace("\n", " ")[: self.width() - 1].encode()
        with self._lock:
            self._status = line
            self._raw(b"\r\033[K" + self._styled())

    def _styled(self) -> bytes:
        return b"\033[1m" + self._status + b"\033[0m" if self.colour and self._status else self._status

    def write(self, data: bytes) -> None:
        """Write log output above the status line. Output is passed on in whole lines (the
        rest waits for its newline, or :meth:`close`), so the status line is never split."""
        with self._lock:
            data = self._pending + data
            end = data.rfind(b"\n") + 1
            self._pending = data[end:]
            if end:
                self._emit(data[:end])

    def _emit(self, lines: bytes) -> None:
        if self.colour:
            lines = b"".join(self._paint(line) for line in lines.splitlines(keepends=True))
        self._raw((b"\r\033[K" if self._status else b"") + lines + self._styled())

    @staticmethod
    def _paint(line: bytes) -> bytes:
        for pattern, sgr in _LEVEL_COLOUR:
            if pattern.search(line):
                body = line.rstrip(b"\n")
                return sgr + body + b"\033[0m" + line[len(body):]
        return line

    def capture_fd(self, fd: int) -> None:
        """Route everything written to ``fd`` (from any process that shares it) through
        :meth:`write`, until :meth:`close`."""
        r, w = os.pipe()
        saved = os.dup(fd)
        os.dup2(w, fd)
        os.close(w)
        self._captured.append((fd, saved))
        t = threading.Thread(target=self._pump, args=(r,), name=f"liveline-fd{fd}", daemon=True)
        t.start()
        self._readers.append(t)

    def _pump(self, r: int) -> None:
        try:
            while True:
                chunk = os.read(r, 65536)
                if not chunk:
                    return
                self.write(chunk)
        finally:
            os.close(r)

    def close(self, final: str | None = None) -> None:
        """Restore the captured descriptors, flush what they still held, and leave the
        terminal on a fresh line (with ``final`` as the last status line, when given)."""
        for fd, saved in reversed(self._captured):
            os.dup2(saved, fd)  # the pipe's last writer here goes: the reader sees EOF once the stages have exited
            os.close(saved)
        for t in self._readers:
            t.join(2.0)
        self._captured, self._readers = [], []
        with self._lock:
            if self._pending:
                self._emit(self._pending + b"\n")
                self._pending = b""
            tail = b""
            if final is not None:
                tail = b"\r\033[K" + final.encode() + b"\n"
            elif self._status:
                tail = b"\r\033[K"
            if tail:
                self._raw(tail)
            self._status = b""
        os.close(self._out)
