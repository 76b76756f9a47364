"""The operator console: ``ApplianceApp(source)`` draws a running (or replayed) pipeline.

The source (``tui._source``) runs in a worker thread and puts :class:`Update` objects on a
queue; the UI thread drains that queue on a timer at ``REDRAW_HZ`` and redraws only then, so
the redraw rate is bounded whatever the stats rate, and the UI thread never waits on the
network. Commands (stop, pause, resume) ask for confirmation, then run in a thread worker.
Laid out for an 80x24 terminal; a larger one gives the panels more room. The bottom area
switches between three views: alerts and log (``e``), offload jobs (``j``) and storage
tiers (``t``). The alerts and the log are scrollable lists: Enter on a row opens its whole
text, its fields and, for an alert, its docs/runbook.md entry (:class:`NoticeScreen`).

A live console that loses its appliance says so: the panes are dimmed and marked with the age
of their data, commands are refused until it is back, and a confirmation opened before the
loss sends nothing (it is bound to the connection and the run it was opened for). ``clock``
(epoch seconds, ``time.time`` by default) is every time the console itself reads: the ages,
the retry countdown and the times of its own notices.
"""

from __future__ import annotations

import math
import queue
import re
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult, ScreenStackError
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.screen import ModalScreen
from textual.widgets import Button, ContentSwitcher, Footer, Input, OptionList, Static
from textual.widgets.option_list import Option

from tui._model import (
    EDGES,
    STAGES,
    JobsView,
    Notice,
    RunModel,
    StorageView,
    bar,
    format_age,
    format_bytes,
    format_duration,
    format_reply,
    gauge,
    sparkline,
)
from tui._source import CommandUnavailable, Source, Update, format_offset, parse_seek
from appliance.schema import BottleneckSample, PrerenderSample

__all__ = ["ApplianceApp", "ConfirmScreen", "HelpScreen", "NoticeList", "NoticeScreen", "SeekScreen", "REDRAW_HZ", "KEY_HELP",
           "runbook_entry"]

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
    "prev_event": "replay: jump back to the previous event or alert",
    "next_event": "replay: jump to the next event or alert",
    "seek": "replay: jump to +M:SS from the start, or HH:MM:SS",
    "earlier_run": "alerts & log of the run before (again: older)",
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

_STATE_STYLE = {"starting": "bold", "acquiring": "bold green", "prerendering": "bold magenta", "paused": "bold yellow",
                "draining": "bold cyan", "done": "bold blue", "stopped_early": "bold yellow", "failed": "bold red"}

#: the keys that only work live, and those that only work in a replay (the footer and the
#: help show only what works in this console)
_LIVE_ONLY = frozenset(("start_run", "stop_run", "pause_run", "resume_run"))
_REPLAY_ONLY = frozenset(("toggle_replay", "faster", "slower", "restart_replay", "prev_event", "next_event", "seek"))

_RUNBOOK = Path(__file__).resolve().parent.parent / "docs" / "runbook.md"


def runbook_entry(rule: str | None, path: Path = _RUNBOOK) -> str | None:
    """The docs/runbook.md section of alert ``rule`` (from its ``## `rule``` heading to the
    next heading), None when there is none or no runbook beside the package."""
    if not rule:
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    m = re.search(rf"^## `{re.escape(rule)}`[^\n]*\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    return m.group(1).strip() if m else None


def _reflow(markdown: str) -> str:
    """A runbook section for a terminal: paragraphs and list items joined into one line each
    (the dialog wraps them to its width), ``**`` emphasis dropped."""
    out: list[str] = []
    for block in re.split(r"\n\s*\n", markdown.replace("**", "")):
        items: list[str] = []
        for line in block.splitlines():
            if re.match(r"\s*([-*]|\d+\.)\s", line) or not items:
                items.append(line.rstrip())
            else:
                items[-1] += " " + line.strip()
        out.append("\n".join(items))
    return "\n\n".join(out)


def _stamp(t: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(t))


def _field_text(key: str, value: Any) -> str:
    if key in ("first_seen", "cleared", "at") and isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{_stamp(float(value))} ({value:.3f})"
    return str(value)


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

    def __init__(self, question: str, detail: str = "", bound_to: Any = None) -> None:
        super().__init__()
        self.question = question
        self.detail = detail
        self.bound_to = bound_to  # what the answer is for: (connection, run id)
        self.withdrawn = False

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
        self.action_answer(event.button.id == "yes")

    def withdraw(self, why: str) -> None:
        """The command can no longer be sent (the connection it was for is gone): say so;
        any answer now closes the dialog with None (nothing sent)."""
        self.withdrawn = True
        self.query_one("#question", Static).update(Text(why, style="bold red"))

    def action_answer(self, yes: bool | None) -> None:
        self.dismiss(None if self.withdrawn else yes)


class HelpScreen(ModalScreen[None]):
    """Every key of the console with what it does."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss_help", "Close"),
        Binding("question_mark", "dismiss_help", "Close", key_display="?"),
        Binding("q", "dismiss_help", "Close"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 78; height: auto; max-height: 22; border: round $accent; background: $surface; padding: 0 1; }
    HelpScreen Static { height: auto; }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self.help_text(self.app), id="help", markup=False)

    @staticmethod
    def help_text(app: App) -> Text:
        """One line per binding of ``app`` that works in it: key, name, what it does."""
        text = Text("Keys (Esc closes)\n", style="bold")
        for b in app.BINDINGS:
            assert isinstance(b, Binding)
            if isinstance(app, ApplianceApp) and not app.binding_works(b.action):
                continue
            key = app.get_key_display(b)
            action = b.action.split("(", 1)[0]
            text.append(f"{key:>5} ", style="bold cyan")
            text.append(f"{b.description:<13}", style="bold")
            text.append(KEY_HELP.get(action, "") + "\n")
        if isinstance(app, ApplianceApp) and app.source.live:
            text.append("g s p r ask first (y yes, n/Esc no); refused while disconnected.\n", style="dim")
        text.append("Alerts & log: Tab moves between them, arrows/PgUp/PgDn scroll,\n", style="dim")
        text.append("Enter opens a row whole (its fields, its runbook entry).\n", style="dim")
        text.append("e, j, t switch the bottom area. ctrl+q also quits.", style="dim")
        return text

    def action_dismiss_help(self) -> None:
        self.dismiss(None)


class NoticeList(OptionList):
    """A scrollable list of notices (alerts & events, or log records), one row each, cut to
    the width with an ellipsis; Enter opens the highlighted one whole (:class:`NoticeScreen`).
    It follows the newest row until the operator moves off it."""

    def __init__(self, empty: str, *, id: str) -> None:
        super().__init__(id=id, markup=False)
        self.empty = empty
        self.notices: list[Notice] = []

    def show(self, notices, empty: str | None = None) -> None:
        """Show ``notices`` (oldest first), keeping the selection on the same notice."""
        new = list(notices)
        empty = self.empty if empty is None else empty
        seqs = [n.seq for n in new]
        old = [n.seq for n in self.notices]
        if seqs == old and (new or self.option_count):
            return
        follow = self.highlighted is None or not self.notices or self.highlighted >= len(self.notices) - 1
        keep = self.notices[self.highlighted].seq if self.notices and self.highlighted is not None and self.highlighted < len(self.notices) else None
        if new and old and seqs[: len(old)] == old:
            self.add_options([self._row(n) for n in new[len(old):]])
        else:
            self.clear_options()
            if new:
                self.add_options([self._row(n) for n in new])
            else:
                self.add_option(Option(Text(empty, style="dim"), disabled=True))
        self.notices = new
        if not new:
            return
        if follow or keep is None or keep not in seqs:
            self.highlighted = len(new) - 1
        else:
            self.highlighted = seqs.index(keep)

    @staticmethod
    def _row(n: Notice) -> Option:
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{_stamp(n.t)} ", style="dim")
        t.append(f"{n.kind} ", style="bold red" if n.severe else "bold")
        t.append(n.text.replace("\n", " ⏎ "))
        return Option(t, id=f"n{n.seq}")

    @property
    def selected_notice(self) -> Notice | None:
        i = self.highlighted
        return self.notices[i] if self.notices and i is not None and i < len(self.notices) else None


class NoticeScreen(ModalScreen[None]):
    """One notice whole: its time, kind and text (wrapped), its fields and, for an alert with
    a rule, the rule's entry in docs/runbook.md. Esc, Enter or q closes it."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("enter", "close", "Close"),
        Binding("q", "close", "Close"),
    ]
    DEFAULT_CSS = """
    NoticeScreen { align: center middle; }
    NoticeScreen > VerticalScroll { width: 90%; height: auto; max-height: 90%; border: round $accent; background: $surface; padding: 0 1; }
    NoticeScreen Static { height: auto; }
    """

    def __init__(self, notice: Notice, run_id: str | None = None) -> None:
        super().__init__()
        self.notice = notice
        self.run_id = run_id

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(self.body(self.notice, self.run_id), id="notice", markup=False)

    @staticmethod
    def body(n: Notice, run_id: str | None = None) -> Text:
        t = Text()
        t.append(f"{_stamp(n.t)} {n.kind}", style="bold red" if n.severe else "bold")
        if run_id:
            t.append(f"  (run {run_id})", style="dim")
        t.append("\n")
        t.append(n.text + "\n")
        if n.fields:
            t.append("\nfields\n", style="bold")
            for k, v in n.fields.items():
                t.append(f"  {k}: ", style="bold cyan")
                t.append(_field_text(k, v) + "\n")
        if n.rule:
            entry = runbook_entry(n.rule)
            t.append(f"\nrunbook: docs/runbook.md#{n.rule}\n", style="bold")
            t.append((_reflow(entry) if entry else f"(no entry for {n.rule} in docs/runbook.md)") + "\n")
        t.append("\nEsc, Enter or q closes", style="dim")
        return t

    def action_close(self) -> None:
        self.dismiss(None)


class SeekScreen(ModalScreen["str | None"]):
    """Where a replay should jump to: ``+M:SS`` from the start or a clock time ``HH:MM:SS``."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    SeekScreen { align: center middle; }
    SeekScreen > Vertical { width: 60; height: auto; border: thick $accent; background: $surface; padding: 0 1; }
    SeekScreen Static { height: auto; }
    """

    def __init__(self, span: str) -> None:
        super().__init__()
        self.span = span

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(f"Jump to: +M:SS from the start, or a clock time HH:MM[:SS]\n{self.span}", markup=False)
            yield Input(placeholder="+1:30 or 14:05:00", id="when")
            yield Static("Enter jumps, Esc cancels", classes="hint", markup=False)

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
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
        Binding("space", "toggle_replay", "Hold", key_display="space"),
        Binding("plus", "faster", "Faster", key_display="+", show=False),
        Binding("minus", "slower", "Slower", key_display="-", show=False),
        Binding("home", "restart_replay", "Restart", key_display="home", show=False, priority=True),
        Binding("left_square_bracket", "prev_event", "Prev event", key_display="["),
        Binding("right_square_bracket", "next_event", "Next event", key_display="]"),
        Binding("colon", "seek", "Seek", key_display=":"),
        Binding("b", "earlier_run", "Earlier run", show=False),
        Binding("c", "clear_alerts", "Clear alerts"),
        Binding("e", "show_events", "Events", show=False),
        Binding("j", "show_jobs", "Jobs", show=False),
        Binding("t", "show_storage", "Storage", show=False),
        Binding("q", "quit", "Quit"),
    ]
    CSS = """
    Screen { layout: vertical; }
    #conn, #progress, #pipeline, #alerts, #log, #queues, #failures, #storage { text-wrap: nowrap; text-overflow: ellipsis; }
    NoticeList { background: $surface; }
    NoticeList:focus { background-tint: $foreground 3%; }
    .stale { text-opacity: 55%; }
    #alerts.empty, #log.empty { width: 1fr; min-width: 24; }
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
    #queues.stale, #storage.stale, #pipeline.stale, #alerts.stale, #log.stale { border: round $error; }
    """

    def __init__(self, source: Source, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.source = source
        self.clock = clock
        self.model = RunModel()
        self.updates: queue.SimpleQueue[Update] = queue.SimpleQueue()
        self.connection = "starting ..."
        self.connected = False
        self.generation = 0  # connections made so far (a confirmation is bound to one)
        self.retry_at: float | None = None  # when a disconnected live source tries again
        self.last_data: float | None = None  # when the latest message of the appliance arrived
        self.viewing: str | None = None  # the earlier run whose notices are shown (None: the current)
        self.redraws = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_redraw = 0.0
        self._was_connected = False

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static("", id="conn", markup=False)
        yield Static("", id="progress", markup=False)
        yield Static("", id="pipeline", markup=False)
        with ContentSwitcher(id="bottom", initial="events"):
            with Horizontal(id="events"):
                yield NoticeList("no alerts", id="alerts")
                yield NoticeList("no log records yet", id="log")
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
        if not self.is_running or self._stop.is_set():
            return
        try:
            self._take_updates()
        except (NoMatches, ScreenStackError):  # the app is closing: its screen and panes are gone
            pass

    def _take_updates(self) -> None:
        # the jobs and storage views show their data's age, a disconnected console its
        # countdown and the age of what it shows: redraw them once a second anyway
        ticking = self.view != "events" or (self.source.live and not self.connected)
        changed = ticking and time.monotonic() - self._last_redraw >= 1.0
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
                self.model.note("error", f"ignored a {u.kind} message: {type(exc).__name__}: {exc}", t=self.clock())
        if changed:
            self._redraw()

    def _apply(self, u: Update) -> None:
        m = self.model
        if u.kind not in ("status", "command", "reset"):
            self.last_data = self.clock()
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
            self._status(u)
        elif u.kind == "command":
            m.note("command" if u.ok else "error", u.text, t=self.clock())
        elif u.kind == "reset":  # a replay starts over
            m.reset()
            m.clear_run()
            self.viewing = None

    def _status(self, u: Update) -> None:
        """The connection line; a live connection lost or regained is written to the events."""
        self.connection, self.connected = u.text, u.connected
        self.retry_at = None if u.retry_s is None else self.clock() + u.retry_s
        if not self.source.live:
            return
        if u.connected and not self._was_connected:
            self.generation += 1
            what = "regained: " if self.generation > 1 else ""
            self.model.note("connection", f"{what}{u.text}", t=self.clock())
        elif not u.connected and self._was_connected:
            self.model.note("connection", f"lost {u.text.removeprefix('disconnected ')}", t=self.clock())
            screen = self.screen
            if isinstance(screen, ConfirmScreen):  # its answer would go to whatever answers next
                screen.withdraw("The connection was lost: this will NOT be sent. Any answer closes it.")
        self._was_connected = u.connected

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

    @property
    def stale(self) -> bool:
        """A live console without its appliance: what it shows is old."""
        return self.source.live and not self.connected and self.model.samples > 0

    def _stale_note(self) -> str:
        age = None if self.last_data is None else self.clock() - self.last_data
        return f"stale: {format_age(age)} old"

    def _redraw_events(self) -> None:
        m = self.model
        shown = m.run_notices(self.viewing) if self.viewing is not None else None
        if shown is None:
            self.viewing = None
            shown = m.current
        alerts, log = self.query_one("#alerts", NoticeList), self.query_one("#log", NoticeList)
        stale = self.stale
        if self.viewing is not None:
            title = f"Run {shown.run_id} (earlier; b)"
            log_title = "Log (earlier run)"
        else:
            active = len(m.active_alerts)
            marks = [f"{active} active"] if active else []
            if stale:
                marks.append(self._stale_note().replace(":", ""))
            title = f"Alerts & events ({', '.join(marks)})" if marks else "Alerts & events"
            log_title = "Log"
        alerts.border_title, log.border_title = title, log_title
        earlier = len(m.runs) - 1
        alerts.border_subtitle = f"b earlier runs ({earlier})" if earlier and self.viewing is None else ""
        log.border_subtitle = "j jobs  t storage"
        alerts.show(shown.alerts)
        log.show(shown.logs)
        for w, notices in ((alerts, shown.alerts), (log, shown.logs)):
            w.set_class(stale and self.viewing is None, "stale")
            w.set_class(not notices and bool(shown.alerts or shown.logs), "empty")  # the room goes to the one with rows

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        w = event.option_list
        if isinstance(w, NoticeList) and w.selected_notice is not None:
            run = self.viewing if self.viewing is not None else self.model.current.run_id
            self.push_screen(NoticeScreen(w.selected_notice, run))

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
        w.update(self._missing("storage", "storage is off", width) if st is None else self._render_storage(st, width, self.clock()))

    # -- rendering -------------------------------------------------------------------------
    def _render_conn(self) -> Text:
        mark, style = ("●", "green") if self.connected else ("○", "red")
        label = "REPLAY" if not self.source.live else "LIVE"
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append(f"{mark} {label} ", style=f"bold {style}")
        text = self.connection
        if self.source.live and not self.connected and self.retry_at is not None:
            # the countdown first: a long reason is what gets cut on 80 columns
            left = max(0, math.ceil(self.retry_at - self.clock()))
            head, _, why = text.partition(" (")
            t.append(f"{head}, retry in {left} s", style="bold")
            if self.stale:
                t.append(f", {self._stale_note()}", style="bold red")
            if why:
                t.append(f" ({why}")
            return t
        t.append(text)
        return t

    def _render_progress(self) -> Text:
        m = self.model
        t = Text()
        if not m.samples:
            t.append("no stats yet", style="dim")
            return t
        state = m.shown_state or "?"
        stale = self.stale
        t.append(f"run {m.run_id or '?'}  ", style="bold")
        if stale:
            t.append("last seen ", style="bold red")
        t.append(state.replace("_", " ").upper(), style="dim" if stale else _STATE_STYLE.get(state, "bold"))
        stamp = time.strftime("%H:%M:%S", time.localtime(float(m.last.get("t", 0))))
        rate = m.acquisition_rate
        if stale:
            age = None if self.last_data is None else self.clock() - self.last_data
            t.append(f"  at {stamp} ({format_age(age)} old)", style="bold red")
        elif state == "prerendering":
            pre = PrerenderSample.from_dict(m.last.get("prerender")) or PrerenderSample()
            total = pre.total
            if total:  # the supervisor's sample carries the source's progress
                done = pre.done
                t.append(f"  at {stamp}  rendering {done}/{total} frames ({100 * done / total:.0f}%)")
            else:
                t.append(f"  at {stamp}  no frame yet")
        else:
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
        if h.cpu_percent is not None:
            t.append(f"cpu {float(h.cpu_percent):.0f}%  ")
        if h.memory_total:
            t.append(f"mem {_gib(h.memory_available or 0)}/{_gib(h.memory_total)}G free  ")
        free = h.disk_free_fraction
        if free is not None:
            t.append(f"disk {_gib(h.disk_free)}/{_gib(h.disk_total)}G free", style="bold red" if free < 0.1 else "")
        return t

    def _render_pipeline(self) -> Text:
        m = self.model
        stale = self.stale
        w = self.query_one("#pipeline")
        w.set_class(stale, "stale")
        w.border_title = f"Pipeline ({self._stale_note()}, not live)" if stale else "Pipeline"
        # what limits the run now (the supervisor's live verdict, appliance.bottleneck)
        b = BottleneckSample.from_dict(m.last.get("bottleneck"))
        if b is not None and b.stage and not stale:
            parts = [b.resource] if b.resource else []
            if b.busy is not None:
                parts.append(f"{100 * float(b.busy):.0f}% busy")
            w.border_subtitle = f"bottleneck: {b.stage}" + (f" ({', '.join(parts)})" if parts else "")
        else:
            w.border_subtitle = ""
        self.query_one("#progress").set_class(stale, "stale")
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
                if stale:  # not known now: no green
                    mark, style = ("?" if not done else mark), "dim"
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
        for pl in j.pools:  # compute pools ([offload.pools]): used/slots, pending Slurm jobs, backlog
            t.append(f"\npool {pl.name:<8} {pl.kind:<5} ")
            t.append(f"{'-' if pl.used is None else pl.used}/{'-' if pl.slots is None else pl.slots} used")
            if pl.pending_jobs:
                t.append(f"  {pl.pending_jobs} pending", style="yellow")
            t.append(f"  backlog {pl.backlog}", style="bold" if pl.backlog else "")
            if pl.starved_s:
                t.append(f"  no workers {format_age(pl.starved_s)}", style="bold red")
        for b in j.burst:  # the cloud pools' burst policy: what may burst, its slots, the day's spend
            t.append(f"\nburst {b.pool:<8} ")
            if b.classes:
                t.append(f"BURSTING {','.join(b.classes)} {b.slots} slot(s)", style="bold yellow")
            else:
                t.append("not bursting", style="green")
            over = b.budget > 0 and b.spent >= b.budget
            t.append(f"  spent {b.spent:.2f}/{b.budget:g}", style="bold red" if over else "dim")
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
    def _render_storage(st: StorageView, width: int, now: float | None = None) -> Text:
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
        now = time.time() if now is None else now
        for label, at in (("last gc", st.last_gc), ("last scrub", st.last_scrub)):
            if at is None:
                t.append(f"{label} never  ")
            else:
                t.append(f"{label} {time.strftime('%H:%M:%S', time.localtime(at))} ({format_age(now - at)} ago)  ")
        if st.running is False:
            t.append("tierer stopped", style="bold red")
        return t

    def on_resize(self) -> None:
        self._redraw()

    # -- actions -----------------------------------------------------------------------------
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def binding_works(self, action: str) -> bool:
        """Whether the key of ``action`` does something in this console (live or replay)."""
        action = action.split("(", 1)[0]
        if action in _LIVE_ONLY:
            return self.source.live
        if action in _REPLAY_ONLY:
            return self.source.kind == "replay"
        return True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The footer shows only the keys that work here (a replay: no start/stop/pause/resume;
        live: no replay keys). Start/stop/pause/resume stay: pressed while disconnected, they
        say why they are refused."""
        if not self.binding_works(action):
            return False
        return True

    def _note(self, kind: str, text: str) -> None:
        self.model.note(kind, text, t=self.clock())
        self._redraw()

    def _ask(self, action: str) -> None:
        cmd, question, detail = _COMMANDS[action]
        if not self.source.live:
            self._note("error", f"{cmd}: not available in a replay")
            return
        if not self.connected:
            self._note("error", f"{cmd}: refused: not connected to the appliance (the console reconnects by itself; "
                                f"press {cmd[0] if cmd != 'start' else 'g'} again once the top line says connected)")
            return
        bound = (self.generation, self.model.run_id)

        def answered(yes: bool | None) -> None:
            if yes is None:
                self._note("error", f"{cmd}: not sent: the connection was lost while the dialog was open")
            elif not yes:
                self._note("command", f"{cmd}: cancelled")
            elif not self.connected or self.generation != bound[0]:
                self._note("error", f"{cmd}: not sent: the connection changed while the dialog was open (ask again)")
            elif cmd != "start" and self.model.run_id != bound[1]:
                self._note("error", f"{cmd}: not sent: it was asked for run {bound[1]}, now run {self.model.run_id} is running (ask again)")
            else:
                self._note("command", f"{cmd}: sent")
                self._send(cmd)

        self.push_screen(ConfirmScreen(question, detail, bound_to=bound), answered)

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
            self.updates.put(Update("command", text=format_reply(cmd, result), ok=True))

    def _replay(self):
        return self.source if self.source.kind == "replay" else None

    def action_toggle_replay(self) -> None:
        src = self._replay()
        if src is None:
            self.model.note("error", "space: only in a replay", t=self.clock())
        else:
            src.paused = not src.paused
            self.connection = f"replay {'held' if src.paused else 'playing'} at x{src.speed:g}"
        self._redraw()

    def _speed(self, factor: float) -> None:
        src = self._replay()
        if src is None:
            self.model.note("error", "+/-: only in a replay", t=self.clock())
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
            self._note("error", "home: only in a replay")
        else:
            src.restart()

    def _seek_event(self, step: int) -> None:
        src = self._replay()
        if src is None:
            self._note("error", "[ and ]: only in a replay")
            return
        body = src.seek_event(step)
        if body is None:
            self.connection = f"replay: no {'later' if step > 0 else 'earlier'} event"
            self._redraw()

    def action_prev_event(self) -> None:
        self._seek_event(-1)

    def action_next_event(self) -> None:
        self._seek_event(1)

    def action_seek(self) -> None:
        src = self._replay()
        if src is None:
            self._note("error", ":: only in a replay")
            return
        span = f"the run: {_stamp(src.start_t)} to {_stamp(src.end_t)} ({format_offset(src.end_t - src.start_t)})"

        def answered(text: str | None) -> None:
            if text is None:
                return
            try:
                t = parse_seek(text, src.start_t)
            except ValueError as exc:
                self._note("error", f"seek: {exc}")
                return
            to = src.seek_time(t)
            self.connection = f"replay: jumping to {_stamp(to)} (+{format_offset(to - src.start_t)})"
            self._redraw()

        self.push_screen(SeekScreen(span), answered)

    def action_earlier_run(self) -> None:
        """Cycle the alerts & log through the earlier runs held, then back to the current one."""
        runs = [r.run_id for r in self.model.runs]
        if len(runs) < 2:
            self._note("event", "b: no earlier run (the console keeps the runs it saw since it started)")
            return
        if self.viewing is None or self.viewing not in runs:
            self.viewing = runs[-2]
        else:
            i = runs.index(self.viewing)
            self.viewing = runs[i - 1] if i > 0 else None
        self._redraw()

    def action_clear_alerts(self) -> None:
        shown = self.model.run_notices(self.viewing) if self.viewing is not None else None
        (shown or self.model.current).alerts.clear()
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
