"""The operator console: ``ApplianceApp(source)`` draws a running (or replayed) pipeline.

The source (``tui._source``) runs in a worker thread and puts :class:`Update` objects on a
queue; the UI thread drains that queue on a timer at ``REDRAW_HZ`` and redraws only then, so
the redraw rate is bounded whatever the stats rate, and the UI thread never waits on the
network. Commands (stop, pause, resume) ask for confirmation, then run in a thread worker.
Laid out for an 80x24 terminal; a larger one gives the panels more room. The bottom area
switches between three views: alerts and log (``e``), offload jobs (``j``) and storage
tiers (``t``).
"""

from __future__ import annotations

import queue
import textwrap
import threading
import time
from typing import ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, ContentSwitcher, Footer, Static

from tui._model import (
    EDGES,
    STAGES,
    JobsView,
    RunModel,
    StorageView,
    bar,
    format_age,
    format_bytes,
    format_duration,
    gauge,
    sparkline,
)
from tui._source import CommandUnavailable, Source, Update

__all__ = ["ApplianceApp", "ConfirmScreen", "HelpScreen", "REDRAW_HZ", "KEY_HELP"]

#: Upper bound on redraws per second.
REDRAW_HZ = 4.0

#: action -> what the help screen says about its key (every binding has an entry).
KEY_HELP: dict[str, str] = {
    "help": "this help (Esc or ? closes it)",
    "start_run": "start a run (under appliance serve)",
    "stop_run": "drain: acquisition ends, frames in flight are written",
    "pause_run": "pause acquisition (the pipeline keeps processing)",
    "resume_run": "resume a paused acquisition",
    "toggle_replay": "replay: hold or continue the playback",
    "faster": "replay: play twice as fast",
    "slower": "replay: play half as fast",
    "restart_replay": "replay: start the playback over",
    "clear_alerts": "clear the alerts panel",
    "show_events": "show the alerts & events and the log below",
    "show_jobs": "show the offload jobs: queues, backpressure, failures",
    "show_storage": "show the storage tiers: free space, copies, gc, scrub",
    "quit": "quit the console (the appliance keeps running)",
}

_COMMANDS = {
    "start_run": ("start", "Start a run?", "The appliance service (appliance serve) starts a run with its configuration."),
    "stop_run": ("stop", "Stop the run?", "Acquisition ends now; frames already acquired are still processed and written."),
    "pause_run": ("pause", "Pause acquisition?", "The camera stops; frames in the pipeline are still processed."),
    "resume_run": ("resume", "Resume acquisition?", "The camera starts acquiring again."),
}

_LEVEL_STYLE = {"ok": "green", "high": "bold yellow", "critical": "bold red"}

_STATE_STYLE = {"acquiring": "bold green", "paused": "bold yellow", "draining": "bold cyan", "done": "bold blue"}


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def _ms(v: float) -> str:
    return f"{v:.1f}" if v < 100 else f"{v:.0f}"


class ConfirmScreen(ModalScreen[bool]):
    """Yes/no: ``y`` or Enter on Yes confirms; ``n`` or Esc cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "Cancel"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 60; height: auto; border: thick $warning; background: $surface; padding: 0 1; }
    ConfirmScreen #question { text-style: bold; }
    ConfirmScreen Horizontal { height: auto; align: center middle; }
    ConfirmScreen Button { margin: 0 2; min-width: 10; }
    """

    def __init__(self, question: str, detail: str = "") -> None:
        super().__init__()
        self.question = question
        self.detail = detail

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question", markup=False)
            yield Static(f"{self.detail}\n[y] yes   [n] or [Esc] no", id="detail", markup=False)
            with Horizontal():
                yield Button("Yes", id="yes", variant="warning")
                yield Button("No", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()  # Enter alone does not stop a run

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class HelpScreen(ModalScreen[None]):
    """Every key of the console with what it does."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_help", "Close"),
        Binding("question_mark", "dismiss_help", "Close", key_display="?"),
        Binding("q", "dismiss_help", "Close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Static { width: 78; height: auto; max-height: 22; border: round $accent; background: $surface; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static(self.help_text(self.app), id="help", markup=False)

    @staticmethod
    def help_text(app: App) -> Text:
        """One line per binding of ``app``: key, name, what it does."""
        text = Text("Keys (Esc closes)\n", style="bold")
        for b in app.BINDINGS:
            assert isinstance(b, Binding)
            key = app.get_key_display(b)
            action = b.action.split("(", 1)[0]
            text.append(f"{key:>5} ", style="bold cyan")
            text.append(f"{b.description:<13}", style="bold")
            text.append(KEY_HELP.get(action, "") + "\n")
        text.append("s, p, r ask first: y confirms, n or Esc cancels. ctrl+q also quits.\n", style="dim")
        text.append("Panels: progress/latency/host; pipeline: per stage up, restarts, items/s,\n", style="dim")
        text.append("busy, p99/budget; per ring occupancy, sparkline, drops; then e, j or t.", style="dim")
        return text

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class ApplianceApp(App[None]):
    """The console for one source (a :class:`tui._source.LiveSource` or ``ReplaySource``)."""

    TITLE = "appliance"
    ENABLE_COMMAND_PALETTE = False  # every action has its key (see the help screen)
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("g", "start_run", "Start"),
        Binding("s", "stop_run", "Stop"),
        Binding("p", "pause_run", "Pause"),
        Binding("r", "resume_run", "Resume"),
        Binding("space", "toggle_replay", "Play/hold", key_display="space", show=False),
        Binding("plus", "faster", "Faster", key_display="+", show=False),
        Binding("minus", "slower", "Slower", key_display="-", show=False),
        Binding("home", "restart_replay", "Restart", key_display="home", show=False),
        Binding("c", "clear_alerts", "Clear alerts"),
        Binding("e", "show_events", "Events", show=False),
        Binding("j", "show_jobs", "Jobs", show=False),
        Binding("t", "show_storage", "Storage", show=False),
        Binding("q", "quit", "Quit"),
    ]
    CSS = """
    Screen { layout: vertical; }
    #conn, #progress, #pipeline, #alerts, #log, #queues, #failures, #storage { text-wrap: nowrap; text-overflow: ellipsis; }
    #conn { height: 1; background: $panel; padding: 0 1; }
    #progress { height: 3; padding: 0 1; }
    #pipeline { height: 11; border: round $primary; border-title-align: left; padding: 0 1; }
    #bottom { height: 1fr; min-height: 4; }
    #events, #jobs { height: 100%; }
    #alerts { width: 3fr; height: 100%; border: round $warning; border-title-align: left; padding: 0 1; }
    #log { width: 2fr; height: 100%; border: round $secondary; border-title-align: left; padding: 0 1; }
    #queues { width: 44; height: 100%; border: round $primary; border-title-align: left; padding: 0 1; }
    #failures { width: 2fr; height: 100%; border: round $secondary; border-title-align: left; padding: 0 1; }
    #storage { height: 100%; border: round $primary; border-title-align: left; padding: 0 1; }
    #queues.stale, #storage.stale { border: round $error; }
    """

    def __init__(self, source: Source) -> None:
        super().__init__()
        self.source = source
        self.model = RunModel()
        self.updates: queue.SimpleQueue[Update] = queue.SimpleQueue()
        self.connection = "starting ..."
        self.connected = False
        self.redraws = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_redraw = 0.0

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("", id="conn", markup=False)
        yield Static("", id="progress", markup=False)
        yield Static("", id="pipeline", markup=False)
        with ContentSwitcher(id="bottom", initial="events"):
            with Horizontal(id="events"):
                yield Static("", id="alerts", markup=False)
                yield Static("", id="log", markup=False)
            with Horizontal(id="jobs"):
                yield Static("", id="queues", markup=False)
                yield Static("", id="failures", markup=False)
            yield Static("", id="storage", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#pipeline").border_title = "Pipeline"
        self.query_one("#alerts").border_title = "Alerts & events"
        self.query_one("#log").border_title = "Log"
        self.query_one("#failures").border_title = "Job failures"
        self._thread = threading.Thread(target=self._run_source, name=f"tui-{self.source.kind}", daemon=True)
        self._thread.start()
        self.set_interval(1.0 / REDRAW_HZ, self._tick)
        self._redraw()

    def on_unmount(self) -> None:
        self.stop_source()

    def stop_source(self, timeout: float = 5.0) -> None:
        """Stop the source's thread (it returns within its poll interval)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run_source(self) -> None:
        try:
            self.source.run(self.updates.put, self._stop)
        except Exception as exc:  # a bug in a source: show it rather than die silently
            self.updates.put(Update("status", text=f"source failed: {type(exc).__name__}: {exc}"))

    # -- updates (UI thread) ------------------------------------------------------------------
    @property
    def view(self) -> str:
        """The bottom area's view: ``events``, ``jobs`` or ``storage``."""
        return self.query_one("#bottom", ContentSwitcher).current or "events"

    def _tick(self) -> None:
        # the jobs and storage views show their data's age: redraw them once a second anyway
        changed = self.view != "events" and time.monotonic() - self._last_redraw >= 1.0
        while True:
            try:
                u = self.updates.get_nowait()
            except queue.Empty:
                break
            changed = True
            try:
                self._apply(u)
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                # a message of an unexpected shape (another appliance version): say so, carry on
                self.model.note("error", f"ignored a {u.kind} message: {type(exc).__name__}: {exc}")
        if changed:
            self._redraw()

    def _apply(self, u: Update) -> None:
        m = self.model
        if u.kind == "stats":
            m.update(u.body)
        elif u.kind in ("event", "alert"):
            m.add_event(u.kind, u.body)
        elif u.kind == "log":
            m.add_log(u.body)
        elif u.kind in ("jobs", "storage"):
            before = m.malformed.get(u.kind)
            try:
                (m.update_jobs if u.kind == "jobs" else m.update_storage)(u.body)
            except (TypeError, ValueError):
                if m.malformed.get(u.kind) != before:  # once per new problem, not every second
                    raise
        elif u.kind == "config":
            m.config = u.body
        elif u.kind == "status":
            self.connection, self.connected = u.text, u.connected
        elif u.kind == "command":
            m.note("command" if u.ok else "error", u.text)
        elif u.kind == "reset":  # a replay starts over
            m.reset()
            m.alerts.clear()
            m.logs.clear()

    def _redraw(self) -> None:
        self.redraws += 1
        self._last_redraw = time.monotonic()
        self.query_one("#conn", Static).update(self._render_conn())
        self.query_one("#progress", Static).update(self._render_progress())
        self.query_one("#pipeline", Static).update(self._render_pipeline())
        view = self.view  # only the view on screen is drawn; switching views redraws
        if view == "jobs":
            self._redraw_jobs()
        elif view == "storage":
            self._redraw_storage()
        else:
            self._redraw_events()

    def _redraw_events(self) -> None:
        active = len(self.model.active_alerts)
        self.query_one("#alerts").border_title = f"Alerts & events ({active} active)" if active else "Alerts & events"
        self.query_one("#log").border_subtitle = "j jobs  t storage"
        for wid, notices, empty in (("#alerts", self.model.alerts, "no alerts"), ("#log", self.model.logs, "no log records yet")):
            w = self.query_one(wid, Static)
            # the newest lines that fit: the panel shows the tail, not the head
            w.update(self._render_notices(notices, empty, max(1, w.content_size.height or 50)))

    def _events_hint(self) -> str:
        """``e events``, with the active alerts counted (they are out of sight)."""
        active = len(self.model.active_alerts)
        return f"e events ({active} alert{'s' if active != 1 else ''})" if active else "e events"

    def _title(self, name: str, topic: str) -> tuple[str, bool]:
        """The pane's title with the age of its data when stale, and whether it is."""
        m = self.model
        stale = m.stale(topic)
        title = f"{name} (stale: {format_age(m.age(topic))} old)" if stale else name
        if topic in m.malformed:
            title += " (last message malformed)"
        return title, stale

    def _missing(self, what: str, off: str, width: int) -> Text:
        """Why a pane has nothing to show, wrapped to the pane's ``width``."""
        if self.source.live:
            why = f"no {what} stats: {off} or the appliance does not publish them"
        else:
            why = f"no {what} stats: a replay has only the run's stats and events"
        return Text("\n".join(textwrap.wrap(why, max(10, width))), style="dim")

    def _redraw_jobs(self) -> None:
        queues, failures = self.query_one("#queues", Static), self.query_one("#failures", Static)
        title, stale = self._title("Jobs", "jobs")
        queues.border_title = title
        queues.set_class(stale, "stale")
        failures.border_subtitle = f"{self._events_hint()}  t storage"
        j = self.model.jobs
        if j is None:
            queues.update(self._missing("job", "offload is off", queues.content_size.width or 40))
            failures.update("")
            return
        queues.update(self._render_queues(j))
        # before its first layout a pane has no size: assume the 80x24 one until the next redraw
        failures.update(self._render_failures(j, max(1, failures.content_size.height or 6), failures.content_size.width or 32))

    def _redraw_storage(self) -> None:
        w = self.query_one("#storage", Static)
        title, stale = self._title("Storage", "storage")
        w.border_title = title
        w.set_class(stale, "stale")
        w.border_subtitle = f"{self._events_hint()}  j jobs"
        st = self.model.storage
        width = w.content_size.width or 76
        w.update(self._missing("storage", "storage is off", width) if st is None else self._render_storage(st, width))

    # -- rendering -------------------------------------------------------------------------
    def _render_conn(self) -> Text:
        mark, style = ("●", "green") if self.connected else ("○", "red")
        label = "REPLAY" if not self.source.live else "LIVE"
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{mark} {label} ", style=f"bold {style}")
        t.append(self.connection)
        return t

    def _render_progress(self) -> Text:
        m = self.model
        t = Text()
        if not m.samples:
            t.append("no stats yet", style="dim")
            return t
        state = m.state or "?"
        t.append(f"run {m.run_id or '?'}  ", style="bold")
        t.append(state.upper(), style=_STATE_STYLE.get(state, "bold"))
        stamp = time.strftime("%H:%M:%S", time.localtime(float(m.last.get("t", 0))))
        rate = m.acquisition_rate
        t.append(f"  at {stamp}  acq {rate:.1f} frames/s" if rate is not None else f"  at {stamp}")
        t.append("\n")
        planned = m.frames_planned
        acquired = m.frames_acquired
        if planned:
            frac = min(1.0, acquired / planned)
            t.append(f"frames {acquired}/{planned} ")
            t.append(bar(frac, 16), style="green")
            t.append(f" {100 * frac:3.0f}%")
        else:
            t.append(f"frames {acquired}")
        pos = m.position
        if pos is not None:
            t.append(f"  cycle {pos[0]}/{m.last.get('cycles')}  tile {pos[1]}")
        t.append(f"  ETA {format_duration(m.eta_s)}")
        t.append("\n")
        t.append_text(self._render_health())
        return t

    def _render_health(self) -> Text:
        """End-to-end latency against its budget, and the host: CPU, memory, disk."""
        m = self.model
        t = Text()
        if m.e2e_p99_ms is not None:
            over = m.e2e_budget_ms is not None and m.e2e_p99_ms > m.e2e_budget_ms
            budget = f"/{m.e2e_budget_ms:g}" if m.e2e_budget_ms else ""
            t.append(f"e2e p99 {_ms(m.e2e_p99_ms)}{budget} ms", style="bold red" if over else "")
            t.append("  ")
        h = m.host
        if h.get("cpu_percent") is not None:
            t.append(f"cpu {float(h['cpu_percent']):.0f}%  ")
        if h.get("memory_total"):
            t.append(f"mem {_gib(h['memory_available'])}/{_gib(h['memory_total'])}G free  ")
        if h.get("disk_total"):
            low = h["disk_free"] / h["disk_total"] < 0.1
            t.append(f"disk {_gib(h['disk_free'])}/{_gib(h['disk_total'])}G free", style="bold red" if low else "")
        return t

    def _render_pipeline(self) -> Text:
        m = self.model
        t = Text(no_wrap=True, overflow="ellipsis")
        # the sparkline takes the room the fixed columns leave (24 samples, 12 s, at 80 columns)
        spark_w = min(120, max(8, self.query_one("#pipeline").content_size.width - 52))
        for i, stage in enumerate(STAGES):
            sv = m.stages.get(stage)
            if sv is None or not sv.replicas:
                t.append(f"{stage:<11}", style="bold")
                t.append(" -", style="dim")
            else:
                ok = sv.alive == sv.replicas
                done = sv.finished
                mark, style = ("●", "green") if ok else (("■", "blue") if done else ("✖", "red"))
                t.append(f"{stage:<11}", style="bold")
                t.append(f" {mark} ", style=style)
                t.append(f"{sv.replicas} done    " if done else f"{sv.alive}/{sv.replicas} up  ")
                t.append(f"restarts {sv.restarts:<2}", style="bold red" if sv.restarts else "")
                rate = "-" if sv.rate is None else f"{sv.rate:6.1f}"
                t.append(f"{rate}/s")
                if sv.busy is not None:
                    t.append(f"  busy {100 * sv.busy:3.0f}%")
                if sv.p99_ms is not None:
                    budget = f"/{sv.budget_ms:g}" if sv.budget_ms else ""
                    t.append(f"  p99 {_ms(sv.p99_ms)}{budget} ms", style="bold red" if sv.over_budget else "")
            t.append("\n")
            if i < len(EDGES):
                ev = m.edges.get(EDGES[i])
                t.append(f"  ↓ {EDGES[i]:<11} ", style="dim")
                if ev is None or not ev.rings:
                    t.append("-\n", style="dim")
                    continue
                frac = ev.fraction
                style = "red" if frac >= 0.75 else "yellow" if frac >= 0.5 else "green"
                t.append(bar(frac, 10), style=style)
                t.append(f" {ev.occupancy:>4}/{ev.n_slots:<4} ")
                t.append(sparkline(ev.history, spark_w), style="cyan")
                t.append(f"  drops {ev.drops}", style="bold red" if ev.drops else "")
                t.append("\n")
        t.rstrip()
        return t

    @staticmethod
    def _render_queues(j: JobsView) -> Text:
        """Per class: depth, oldest waiting age, running, held, retrying; then slots and
        backpressure."""
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{'class':<10}{'depth':>6} {'oldest':<7}{'run':>4}{'held':>5}{'retry':>6}\n", style="bold")
        for q in j.classes:
            t.append(f"{q.name:<10}")
            t.append(f"{q.depth:>6}", style="bold" if q.depth else "")
            t.append(f" {format_age(q.oldest_s):<7}{q.running:>4}")
            t.append(f"{q.held:>5}", style="bold red" if q.held else "")
            t.append(f"{q.retrying:>6}\n", style="yellow" if q.retrying else "")
        busy = j.busy_slots
        if busy is not None:
            t.append(f"slots {busy}/{j.slots} busy ({j.executor or '?'})  ")
        else:
            t.append(f"running {j.running}  ")
        t.append(f"held {j.held}", style="bold red" if j.held else "")
        if j.refused:
            t.append(f"  refused {j.refused}", style="bold red")
        t.append("\n")
        if j.backpressure:  # the whole message (with its fix) heads the failures panel
            t.append("BACKPRESSURE", style="bold red")
            over = []
            if j.depth_high is not None and j.depth >= j.depth_high:
                over.append(f"depth {j.depth} >= {j.depth_high}")
            if j.oldest_high_s is not None and j.oldest_s is not None and j.oldest_s >= j.oldest_high_s:
                over.append(f"oldest {format_age(j.oldest_s)} >= {format_age(j.oldest_high_s)}")
            t.append(f" {', '.join(over)}" if over else "", style="red")
        else:
            t.append("backpressure off", style="green")
            t.append(f"  depth {j.depth}, oldest {format_age(j.oldest_s)}", style="dim")
        return t

    @staticmethod
    def _render_failures(j: JobsView, lines: int, width: int) -> Text:
        """The backpressure message (wrapped: it says what to do), the orchestrator's recent
        errors, then the recent failures, newest first."""
        t = Text(no_wrap=True, overflow="ellipsis")
        rows = 0
        if j.backpressure:
            wrapped = textwrap.wrap(j.backpressure_message or "over a backpressure watermark", max(10, width))
            for line in wrapped[: max(1, lines - 1)]:
                t.append(line + "\n", style="red")
                rows += 1
        if not j.failures and not j.errors:
            t.append("no failures", style="dim")
            return t
        for e in reversed(j.errors):
            t.append("error ", style="bold red")
            t.append(e + "\n")
            rows += 1
        for f in j.failures:  # two lines each: what and when, then why
            if rows >= lines:
                break
            t.append(f"#{f.job} {f.kind} ")
            t.append(f.state, style="bold red" if f.state == "held" else "yellow")
            stamp = "" if f.at is None else time.strftime("%H:%M:%S", time.localtime(f.at))
            t.append(f" {stamp}\n", style="dim")
            rows += 1
            if f.reason and rows < lines:
                t.append(f"  {f.reason}\n")
                rows += 1
        t.rstrip()
        return t

    @staticmethod
    def _render_storage(st: StorageView, width: int) -> Text:
        """The hot tier's free space against its watermarks, a line per tier, the mover's and
        the verifier's counts, the last gc and scrub."""
        t = Text(no_wrap=True, overflow="ellipsis")
        style = _LEVEL_STYLE.get(st.level, "bold")
        marks = tuple(m for m in (st.high, st.critical) if m is not None)
        if st.hot_free_fraction is not None:
            t.append(f"hot free {100 * st.hot_free_fraction:3.0f}% ")
            t.append(gauge(st.hot_free_fraction, marks, 20), style=style)
        else:
            t.append("hot free ?", style="dim")
        t.append(f" {st.level.upper()}", style=style)
        watermarks = [f"{k} <{100 * v:.0f}%" for k, v in (("high", st.high), ("critical", st.critical)) if v is not None]
        if watermarks:
            t.append(f"  ({', '.join(watermarks)})", style="dim")
        t.append("\n")
        url_w = max(8, min(30, width - 62))
        for tier in st.tiers:
            url = tier.url if len(tier.url) <= url_w else "…" + tier.url[-(url_w - 1):]
            t.append(f"{tier.name:<5}", style="bold")
            t.append(f"{url:<{url_w}} {format_bytes(tier.bytes):>10} {tier.files:>7} files ")
            t.append(f"{tier.corrupt_files:>3} corrupt", style="bold red" if tier.corrupt_files else "")
            if tier.total_bytes:
                t.append(f"  free {format_bytes(tier.free_bytes)}")
            t.append("\n")
        if not st.tiers:
            t.append("no tiers\n", style="dim")
        t.append(f"pending moves {st.pending_moves}  ", style="bold" if st.pending_moves else "")
        bad = "bold red"
        t.append(f"verify failures {st.verification_failures}", style=bad if st.verification_failures else "")
        t.append("  ")
        t.append(f"corrupt copies {st.corrupt_copies}", style=bad if st.corrupt_copies else "")
        if st.held_copies:
            t.append(f" ({st.held_copies} held: storage verify RUN)", style=bad)
        t.append(f"  copied {format_bytes(st.bytes_copied)}\n")
        now = time.time()
        for label, at in (("last gc", st.last_gc), ("last scrub", st.last_scrub)):
            if at is None:
                t.append(f"{label} never  ")
            else:
                t.append(f"{label} {time.strftime('%H:%M:%S', time.localtime(at))} ({format_age(now - at)} ago)  ")
        if st.running is False:
            t.append("tierer stopped", style="bold red")
        return t

    @staticmethod
    def _render_notices(notices, empty: str, lines: int) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        if not notices:
            t.append(empty, style="dim")
            return t
        for n in list(notices)[-lines:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(n.t))
            t.append(f"{stamp} ", style="dim")
            t.append(f"{n.kind} ", style="bold red" if n.severe else "bold")
            t.append(n.text + "\n")
        t.rstrip()
        return t

    def on_resize(self) -> None:
        self._redraw()

    # -- actions -----------------------------------------------------------------------------
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def _ask(self, action: str) -> None:
        cmd, question, detail = _COMMANDS[action]
        if not self.source.live:
            self.model.note("error", f"{cmd}: not available in a replay")
            self._redraw()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.model.note("command", f"{cmd}: sent")
                self._redraw()
                self._send(cmd)
            else:
                self.model.note("command", f"{cmd}: cancelled")
                self._redraw()

        self.push_screen(ConfirmScreen(question, detail), answered)

    def action_start_run(self) -> None:
        self._ask("start_run")

    def action_stop_run(self) -> None:
        self._ask("stop_run")

    def action_pause_run(self) -> None:
        self._ask("pause_run")

    def action_resume_run(self) -> None:
        self._ask("resume_run")

    @work(thread=True, group="commands")
    def _send(self, cmd: str) -> None:
        """Send a command off the UI thread; the outcome comes back through the queue."""
        try:
            result = self.source.command(cmd)
        except CommandUnavailable as exc:
            self.updates.put(Update("command", text=str(exc), ok=False))
        except Exception as exc:
            self.updates.put(Update("command", text=f"{cmd} failed: {exc}", ok=False))
        else:
            self.updates.put(Update("command", text=f"{cmd}: {result}", ok=True))

    def _replay(self):
        return self.source if self.source.kind == "replay" else None

    def action_toggle_replay(self) -> None:
        src = self._replay()
        if src is None:
            self.model.note("error", "space: only in a replay")
        else:
            src.paused = not src.paused
            self.connection = f"replay {'held' if src.paused else 'playing'} at x{src.speed:g}"
        self._redraw()

    def _speed(self, factor: float) -> None:
        src = self._replay()
        if src is None:
            self.model.note("error", "+/-: only in a replay")
        elif src.speed > 0:
            src.speed = min(1024.0, max(1 / 64, src.speed * factor))
            self.connection = f"replay speed x{src.speed:g}"
        self._redraw()

    def action_faster(self) -> None:
        self._speed(2.0)

    def action_slower(self) -> None:
        self._speed(0.5)

    def action_restart_replay(self) -> None:
        src = self._replay()
        if src is None:
            self.model.note("error", "home: only in a replay")
            self._redraw()
        else:
            src.restart()

    def action_clear_alerts(self) -> None:
        self.model.alerts.clear()
        self._redraw()

    def _show(self, view: str) -> None:
        self.query_one("#bottom", ContentSwitcher).current = view
        self._redraw()
        self.call_after_refresh(self._redraw)  # again once laid out: the panes' sizes are known

    def action_show_events(self) -> None:
        self._show("events")

    def action_show_jobs(self) -> None:
        self._show("jobs")

    def action_show_storage(self) -> None:
        self._show("storage")
