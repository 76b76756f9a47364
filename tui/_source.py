"""Where the TUI's data comes from: a live appliance over the control plane, or a past run's
``stats.jsonl`` (with the flight recorder's events of that time) replayed.

A source's :meth:`Source.run` blocks, so the app runs it in a worker thread and never on the
UI thread; it hands what it receives to ``emit`` (thread-safe: the app passes a queue's
``put``) as :class:`Update` objects, and returns soon after ``stop`` is set.
:meth:`Source.command` (stop, pause, resume) blocks too and is called from a worker thread.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Update",
    "Source",
    "LiveSource",
    "ReplaySource",
    "SourceError",
    "CommandUnavailable",
    "resolve_stats_file",
    "format_offset",
    "parse_seek",
]

Emit = Callable[["Update"], None]


@dataclass(frozen=True)
class Update:
    """One thing for the screen. ``kind``: ``status`` (the connection line: ``text`` and
    ``connected``), ``stats`` (``body`` a stats sample), ``event`` / ``alert`` / ``log``
    (``body`` the message), ``jobs`` (``body`` the offload orchestrator's stats, about 1 Hz
    under ``appliance serve`` with offload on), ``storage`` (``body`` the storage manager's
    stats, likewise with storage on), ``config`` (``body`` the run config from ``status``),
    ``command`` (``text`` the outcome of a stop/pause/resume, ``ok``), ``reset`` (a replay
    starts over: forget the run). A ``status`` of a lost connection carries ``retry_s``, the
    seconds until the next try (the console counts them down)."""

    kind: str
    body: Any = None
    text: str = ""
    connected: bool = False
    ok: bool = True
    retry_s: float | None = None


class SourceError(Exception):
    """The source cannot be opened (no such file, nothing to replay)."""


class CommandUnavailable(SourceError):
    """This source does not take commands (a replay)."""


class Source:
    """The interface the app uses; see the module docstring."""

    kind = "source"
    live = False

    def run(self, emit: Emit, stop: threading.Event) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def command(self, cmd: str) -> Any:
        raise CommandUnavailable(f"{cmd!r}: this source ({self.describe()}) takes no commands")

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class LiveSource(Source):
    """A running appliance: subscribes to stats, event, alert, log, jobs and storage (the last
    two only come from ``appliance serve`` with offload or storage on), asks ``status`` once per
    connection, and reconnects with exponential backoff (``min_backoff_s`` doubling up to
    ``max_backoff_s``) whenever the appliance goes away (no socket, or no message for
    ``stale_s`` and no answer to ``ping``), so a restarted appliance is picked up again.

    ``target``: a socket directory, an ``ipc://`` endpoint or ``tcp://HOST:PORT`` (with
    ``curve_keys``), as :class:`appliance.control.ControlClient` takes it."""

    kind = "live"
    live = True

    def __init__(
        self,
        target: str | os.PathLike | None = None,
        *,
        curve_keys: Any = None,
        timeout_s: float = 2.0,
        poll_s: float = 0.25,
        stale_s: float = 3.0,
        min_backoff_s: float = 0.25,
        max_backoff_s: float = 4.0,
    ) -> None:
        from appliance.control import resolve_endpoints

        self.target = target
        self.endpoint, self.events_endpoint = resolve_endpoints(target)  # validates it now
        self.curve_keys = curve_keys
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.stale_s = stale_s
        self.min_backoff_s = min_backoff_s
        self.max_backoff_s = max_backoff_s
        self.connections = 0  # successful connections so far (a reconnect counts again)

    def describe(self) -> str:
        return self.endpoint

    def _client(self):
        from appliance.control import ControlClient

        return ControlClient(self.target, timeout_s=self.timeout_s, curve_keys=self.curve_keys)

    def run(self, emit: Emit, stop: threading.Event) -> None:
        from appliance.control import ControlError, ControlUnreachable

        backoff = self.min_backoff_s
        while not stop.is_set():
            emit(Update("status", text=f"connecting to {self.endpoint} ...", connected=False))
            reason = ""
            try:
                with self._client() as client:
                    self._serve(client, emit, stop)
                    backoff = self.min_backoff_s  # had a connection: retry soon after it ends
                    reason = "the appliance went away"
            except ControlError as exc:
                reason = f"error from the appliance: {exc}"
            except ControlUnreachable as exc:
                reason = str(exc)
            except Exception as exc:  # a socket or decoding problem: keep trying, say why
                reason = f"{type(exc).__name__}: {exc}"
            if stop.is_set():
                break
            emit(Update("status", text=f"disconnected ({reason})", connected=False, retry_s=backoff))
            stop.wait(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)

    def _serve(self, client, emit: Emit, stop: threading.Event) -> None:
        from appliance.control import ControlTimeout

        # Subscribe first, then ask for the status, so no sample falls between the two.
        sub = client.subscribe(("stats", "event", "alert", "log", "jobs", "storage"))
        status = client.request("status")
        self.connections += 1
        if isinstance(status, dict):
            status = dict(status)
            config = status.pop("config", None)
            if config is not None:
                emit(Update("config", body=config))
            if "rings" in status or "stages" in status:
                emit(Update("stats", body=status))
        emit(Update("status", text=f"connected to {self.endpoint}", connected=True))
        last = time.monotonic()
        while not stop.is_set():
            try:
                topic, msg = sub.recv(self.poll_s)
            except ControlTimeout:
                if time.monotonic() - last > self.stale_s:
                    client.request("ping", timeout_s=min(1.0, self.timeout_s))  # raises when gone
                    last = time.monotonic()
                continue
            last = time.monotonic()
            data = msg.get("data")
            if isinstance(data, dict):
                emit(Update(topic, body=data))

    def command(self, cmd: str) -> Any:
        """Send ``cmd`` on a connection of its own (a client is not thread-safe)."""
        with self._client() as client:
            return client.request(cmd)


def format_offset(seconds: float) -> str:
    """A time into a replay: ``M:SS`` (``H:MM:SS`` from an hour)."""
    s = max(0, int(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def parse_seek(text: str, start_t: float) -> float:
    """The time a replay seek asks for: ``+SECONDS``, ``+M:SS`` or ``+H:MM:SS`` from the start,
    or ``HH:MM[:SS]``, a local clock time on the run's day. Raise ValueError naming the forms."""
    raw = text.strip()
    forms = "give +SECONDS, +M:SS or +H:MM:SS from the start, or a clock time HH:MM[:SS]"
    if not raw:
        raise ValueError(f"no time given: {forms}")
    rel = raw.startswith("+")
    parts = raw.lstrip("+").split(":")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"{raw!r} is not a time: {forms}") from None
    if len(nums) > 3 or any(n < 0 for n in nums):
        raise ValueError(f"{raw!r} is not a time: {forms}")
    if rel:
        secs = 0.0
        for n in nums:
            secs = secs * 60 + n
        return start_t + secs
    if len(nums) < 2:
        raise ValueError(f"{raw!r} is not a clock time: {forms}")
    h, m, sec = (nums + [0.0])[:3]
    if h >= 24 or m >= 60 or sec >= 60:
        raise ValueError(f"{raw!r} is not a clock time: {forms}")
    day = time.localtime(start_t)
    midnight = time.mktime((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0, 0, 0, -1))
    t = midnight + h * 3600 + m * 60 + sec
    return t + 86400 if t < start_t - 43200 else t  # a run past midnight


_SEGMENT = re.compile(r"^flight-\d{8}\.jsonl$")


def _recorder_segments(folder: Path) -> list[Path]:
    """The flight recorder's segment files in ``folder``, oldest first (appliance/recorder.py)."""
    try:
        return sorted(p for p in folder.iterdir() if _SEGMENT.match(p.name))
    except (FileNotFoundError, NotADirectoryError):
        return []


def resolve_stats_file(path: str | os.PathLike) -> Path:
    """What to replay for a path: a ``stats.jsonl`` file, a state directory holding one
    (``ROOT/.state/RUN_ID``), a run folder ``ROOT/RUN_ID`` (its stats are in
    ``ROOT/.state/RUN_ID``), or a flight recorder folder (``ROOT/.state/recorder``: returned
    as is). Raise SourceError naming what was looked for."""
    p = Path(path).expanduser()
    if p.is_file() or _recorder_segments(p):
        return p
    candidates = [p / "stats.jsonl", p.parent / ".state" / p.name / "stats.jsonl"]
    for c in candidates:
        if c.is_file():
            return c
    if not p.exists():
        raise SourceError(f"{p} does not exist: give a run folder (ROOT/RUN_ID), its state folder (ROOT/.state/RUN_ID), a stats.jsonl file or the flight recorder folder (ROOT/.state/recorder)")
    raise SourceError(f"no stats.jsonl for {p}: looked for {', '.join(map(str, candidates))} (a run writes it while it runs)")


def _json_lines(path: Path) -> tuple[list[dict], int]:
    """The JSON objects of a JSON-lines file, and how many lines were not objects (a line
    cut short by a crash mid-write)."""
    out, skipped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if isinstance(obj, dict):
                out.append(obj)
            else:
                skipped += 1
    return out, skipped


class ReplaySource(Source):
    """A past run played back at ``speed`` times real time (``speed`` 0: as fast as the screen
    takes it): its ``stats.jsonl``, with the events and alerts of that time from the flight
    recorder (``<state root>/recorder``) where it exists; or a whole flight recorder folder
    (every run it still holds). Gaps between samples longer than ``max_gap_s`` are cut to it.
    ``paused`` holds the playback; :meth:`restart` starts it over."""

    kind = "replay"
    live = False

    def __init__(self, path: str | os.PathLike, speed: float = 1.0, max_gap_s: float = 5.0) -> None:
        if not speed >= 0:
            raise SourceError(f"replay speed must be >= 0 (0 = as fast as possible), got {speed!r}")
        self.path = resolve_stats_file(path)
        self.speed = float(speed)
        self.max_gap_s = max_gap_s
        self.paused = False
        self.position = 0
        self._restart = threading.Event()
        self.samples: list[dict] = []
        self.events: list[tuple[str, dict]] = []  # (topic, body) of the event and alert topics
        self.skipped = 0
        if self.path.is_dir():
            self._load_recorder(self.path)
        else:
            self.samples, self.skipped = _json_lines(self.path)
            self.samples = [s for s in self.samples if "t" in s]
            if self.samples:
                self._load_recorder(self.path.parent.parent / "recorder", stats=False)
        if not self.samples:
            raise SourceError(f"{self.path} holds no stats samples")
        #: what is played, in time order: ("stats", sample) and ("event"/"alert", body)
        self.timeline: list[tuple[str, dict]] = self._timeline()
        self.cursor = 0  # timeline items played so far
        self._seek: int | None = None
        self._lock = threading.Lock()

    def _load_recorder(self, folder: Path, stats: bool = True) -> None:
        """Records ``{"topic", "t", "body"}`` of the flight recorder: its stats samples (when
        replaying the recorder itself) and its events within the time span of the samples."""
        events = []
        for seg in _recorder_segments(folder):
            records, skipped = _json_lines(seg)
            self.skipped += skipped
            for rec in records:
                body = rec.get("body")
                if not isinstance(body, dict):
                    continue
                if rec.get("topic") == "stats" and stats and "t" in body:
                    self.samples.append(body)
                elif rec.get("topic") in ("event", "alert"):
                    events.append((rec["topic"], {"t": rec.get("t"), **body}))
        self.samples.sort(key=lambda b: float(b["t"]))
        if self.samples:
            lo, hi = float(self.samples[0]["t"]) - 1.0, float(self.samples[-1]["t"]) + 1.0
            self.events = sorted((e for e in events if lo <= float(e[1].get("t") or 0) <= hi), key=lambda e: float(e[1]["t"]))

    def describe(self) -> str:
        return str(self.path)

    def _timeline(self) -> list[tuple[str, dict]]:
        last_t = float(self.samples[-1]["t"]) + 1.0
        return sorted([("stats", s) for s in self.samples] + [e for e in self.events if float(e[1]["t"]) <= last_t],
                      key=lambda item: float(item[1]["t"]))

    def restart(self) -> None:
        self.seek(0)

    # -- seeking ---------------------------------------------------------------------------
    @property
    def start_t(self) -> float:
        return float(self.timeline[0][1]["t"])

    @property
    def end_t(self) -> float:
        return float(self.timeline[-1][1]["t"])

    @property
    def now_t(self) -> float:
        """The time of the latest item played (the start before the first)."""
        return float(self.timeline[max(0, self.cursor - 1)][1]["t"])

    def seek(self, index: int) -> None:
        """Play the timeline again up to item ``index`` at once (the screen shows the run as
        it was then), then go on at the current speed (held if held)."""
        with self._lock:
            self._seek = max(0, min(len(self.timeline), int(index)))
        self._restart.set()

    def seek_time(self, t: float) -> float:
        """Seek to the first item at or after time ``t`` (epoch seconds, clamped to the run);
        return the time sought to."""
        t = min(max(t, self.start_t), self.end_t)
        index = next((i for i, (_, b) in enumerate(self.timeline) if float(b["t"]) >= t), len(self.timeline) - 1)
        self.seek(index + 1)
        return float(self.timeline[index][1]["t"])

    def _event_indexes(self) -> list[int]:
        return [i for i, (topic, _) in enumerate(self.timeline) if topic != "stats"]

    def seek_event(self, step: int) -> dict | None:
        """Seek just past the next (``step`` 1) or the previous (``step`` -1) event or alert
        from where the playback is; return its body (None: there is no such event, nothing
        changes)."""
        here = self.cursor - 1  # the item last played
        events = self._event_indexes()
        if step > 0:
            target = next((i for i in events if i > here), None)
        else:
            target = next((i for i in reversed(events) if i < here), None)
        if target is None:
            return None
        self.seek(target + 1)
        return self.timeline[target][1]

    def _status(self, emit: Emit, done: bool = False) -> None:
        state = "finished" if done else ("paused" if self.paused else f"x{self.speed:g}" if self.speed else "max speed")
        at = format_offset(self.now_t - self.start_t)
        span = f"{at}/{format_offset(self.end_t - self.start_t)}"
        emit(Update("status", text=f"replay {self.path.name} sample {self.position}/{len(self.samples)} at {span} ({state})", connected=True))

    def run(self, emit: Emit, stop: threading.Event) -> None:
        while not stop.is_set():
            self._restart.clear()
            with self._lock:
                upto, self._seek = (self._seek or 0), None
            self.position = 0
            self.cursor = 0
            self.timeline = self._timeline()  # the samples as they are now
            emit(Update("reset"))
            if not upto:
                self._status(emit)
            prev_t = None
            for index, (topic, sample) in enumerate(self.timeline):
                t = float(sample["t"])
                if index < upto:  # sought past: at once
                    if stop.is_set() or self._restart.is_set():
                        break
                    prev_t = t
                    self.cursor = index + 1
                    if topic == "stats":
                        self.position += 1
                    emit(Update(topic, body=sample))
                    if index == upto - 1:
                        self._status(emit)
                    continue
                if prev_t is not None and self.speed > 0:
                    wait = min(self.max_gap_s, max(0.0, t - prev_t)) / self.speed
                    deadline = time.monotonic() + wait
                    while not stop.is_set() and not self._restart.is_set():
                        left = deadline - time.monotonic()
                        if left <= 0 and not self.paused:
                            break
                        stop.wait(0.05 if self.paused else min(0.05, max(left, 0.0)))
                while self.paused and not stop.is_set() and not self._restart.is_set():
                    stop.wait(0.05)
                if stop.is_set() or self._restart.is_set():
                    break
                prev_t = t
                self.cursor = index + 1
                if topic != "stats":
                    emit(Update(topic, body=sample))
                    continue
                self.position += 1
                emit(Update("stats", body=sample))
                self._status(emit)
            else:
                self._status(emit, done=True)
                while not stop.is_set() and not self._restart.is_set():
                    stop.wait(0.1)
