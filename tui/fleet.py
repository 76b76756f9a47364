"""The fleet of a lab in one console: ``appliance tui --lab`` (docs/tui.md, docs/lab.md).

:class:`FleetApp` is the operator console (:class:`tui.app.ApplianceApp`) with a fleet screen
in front of it: one row per instrument, as ``appliance lab status`` prints them (state, run,
cycle, frames, frames/s, drops, alerts, the jobs waiting per class, running, the oldest
waiting job). Enter on a row opens that instrument's own live console (a
:class:`tui.LiveSource` to its control plane, with its CURVE keys for tcp://); Esc there comes
back to the fleet.

The console talks to the appliance only through the control client, so the rows come from a
plain callable (``rows()``: a list of dicts in the shape of ``appliance.lab.collect``'s rows)
that the command builds; asking every instrument blocks (the network, the ledger), so it is
called on a thread of its own, every ``refresh_s`` seconds while the fleet is on screen, and
the screen shows the age of the last answer. An instrument that does not answer is a row
``unreachable`` with its error; a ``rows()`` that raises is shown on the top line, with the
last rows kept.
"""

from __future__ import annotations

import queue
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from tui._model import RunModel, format_age
from tui._source import Source
from tui.app import ApplianceApp, HelpScreen, NoticeList

__all__ = ["FLEET_COLUMNS", "FleetApp", "FleetHelpScreen", "FleetScreen", "Instrument", "fleet_cells"]

#: (column key, header) of the fleet table, as ``appliance lab status`` prints it
FLEET_COLUMNS: tuple[tuple[str, str], ...] = (
    ("instrument", "INSTRUMENT"), ("state", "STATE"), ("run", "RUN"), ("cycle", "CYCLE"), ("frames", "FRAMES"),
    ("fps", "FRAMES/S"), ("drops", "DROPS"), ("alerts", "ALERTS"), ("rt", "RT"), ("batch", "BATCH"),
    ("reprocess", "REPROC"), ("running", "RUNNING"), ("oldest", "OLDEST WAIT"),
)

_STATE_STYLE = {"acquiring": "bold green", "paused": "bold yellow", "draining": "bold cyan", "done": "bold blue",
                "idle": "dim", "unreachable": "bold red", "failed": "bold red", "stopped_early": "bold yellow"}


@dataclass(frozen=True)
class Instrument:
    """Where one instrument's control plane is, as ``appliance tui --connect/--socket-dir``
    takes it: a socket directory, ``ipc://PATH`` or ``tcp://HOST:PORT`` with CURVE key files."""

    connect: str
    client_key: str = ""  #: this client's CURVE secret key file (tcp://)
    server_key: str = ""  #: the instrument's CURVE public key file (tcp://)

    def source(self) -> Source:
        """A live source to this instrument (raises on a bad target or key file)."""
        from appliance.control import CurveKeys
        from tui._source import LiveSource

        keys = None
        if self.connect.startswith("tcp://"):
            if not (self.client_key and self.server_key):
                raise ValueError(f"{self.connect}: tcp:// needs client_key and server_key (CURVE key files)")
            keys = CurveKeys.from_files(self.client_key, self.server_key)
        return LiveSource(self.connect, curve_keys=keys)


def _age(s: Any) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s} s" if s < 120 else f"{s // 60} min" if s < 7200 else f"{s // 3600} h"


def _dash(v: Any, fmt: str = "{}") -> str:
    return "-" if v is None else fmt.format(v)


def fleet_cells(row: Mapping[str, Any]) -> tuple[str, ...]:
    """One row's cells, in :data:`FLEET_COLUMNS` order, as ``appliance lab status`` prints them."""
    w = row.get("waiting") or {}
    return (
        str(row.get("instrument")), str(row.get("state") or "?"), row.get("run_id") or "-",
        f"{row.get('cycle')}/{row.get('cycles')}" if row.get("cycles") else "-",
        _dash(row.get("frames")), _dash(row.get("frames_per_s"), "{:.1f}"), _dash(row.get("drops")), _dash(row.get("alerts")),
        str(w.get("realtime", 0)), str(w.get("batch", 0)), str(w.get("reprocess", 0)), str(row.get("in_flight", 0)),
        _age(row.get("oldest_waiting_age_s")),
    )


def _styled(row: Mapping[str, Any]) -> list[Text]:
    cells = fleet_cells(row)
    out = [Text(c, no_wrap=True) for c in cells]
    out[0].stylize("bold")
    out[1].stylize(_STATE_STYLE.get(cells[1], "bold"))
    if row.get("drops"):
        out[6].stylize("bold red")
    if row.get("alerts"):
        out[7].stylize("bold yellow")
    return out


class _Idle(Source):
    """The console's source while no instrument is open: nothing, until stopped."""

    kind = "fleet"
    live = True

    def run(self, emit, stop: threading.Event) -> None:
        stop.wait()

    def describe(self) -> str:
        return "no instrument open"


class FleetTable(DataTable):
    """The fleet's rows; Enter opens the selected instrument's console."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("enter", "select_cursor", "Open console", key_display="Enter")]


class FleetHelpScreen(HelpScreen):
    """The keys of the fleet screen."""

    @staticmethod
    def help_text(app) -> Text:
        text = Text("Keys of the fleet (Esc closes)\n", style="bold")
        for key, name, what in (
            ("↑/↓", "Select", "move between the instruments (PgUp/PgDn, Home/End too)"),
            ("Enter", "Open console", "open the selected instrument's own live console"),
            ("?", "Help", "this help (Esc or ? closes it)"),
            ("q", "Quit", "quit the console (the instruments keep running)"),
        ):
            text.append(f"{key:>5} ", style="bold cyan")
            text.append(f"{name:<13}", style="bold")
            text.append(what + "\n")
        text.append("In an instrument's console, Esc comes back to the fleet; its own keys are\n", style="dim")
        text.append("those of appliance tui (? there lists them). ctrl+q also quits.", style="dim")
        return text


class ConsoleHelpScreen(HelpScreen):
    """An instrument's console's help, with the key back to the fleet."""

    @staticmethod
    def help_text(app) -> Text:
        text = HelpScreen.help_text(app)
        text.append("\n")
        text.append(f"{'esc':>5} ", style="bold cyan")
        text.append(f"{'Fleet':<13}", style="bold")
        text.append("back to the fleet (this instrument's console closes)")
        return text


class _ConsoleScreen(Screen):
    """The console's own screen under ``--lab``: Esc goes back to the fleet."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "app.fleet", "Fleet", key_display="esc")]


class FleetScreen(Screen):
    """The fleet table: a top line (instruments, unreachable ones, the age of the rows), the
    table, and below it the selected instrument's target and every row's error."""

    DEFAULT_CSS = """
    FleetScreen { layout: vertical; }
    FleetScreen #fleet-head { height: 1; background: $panel; padding: 0 1; text-wrap: nowrap; text-overflow: ellipsis; }
    FleetScreen FleetTable { height: 1fr; border: round $primary; border-title-align: left; }
    FleetScreen #fleet-detail { height: auto; max-height: 12; border: round $secondary; border-title-align: left; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        yield Static("", id="fleet-head", markup=False)
        yield FleetTable(id="fleet", cursor_type="row", zebra_stripes=True)
        yield Static("", id="fleet-detail", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(FleetTable)
        table.border_title = "Fleet"
        table.fixed_columns = 1  # the instrument's name stays in sight when scrolled sideways
        for key, label in FLEET_COLUMNS:
            table.add_column(label, key=key)
        self.query_one("#fleet-detail").border_title = "Selected"
        self.set_interval(0.5, self.tick)
        self.redraw()

    @property
    def fleet(self) -> FleetApp:
        app = self.app
        assert isinstance(app, FleetApp)
        return app

    def tick(self) -> None:
        """Take up new rows (from the collecting thread); redraw the ages."""
        if self.fleet.take_rows():
            self.fill()
        self.redraw()

    def fill(self) -> None:
        """The rows into the table, keeping the selection on the same instrument."""
        table = self.query_one(FleetTable)
        rows = self.fleet.rows
        keys = [str(r.get("instrument")) for r in rows]
        if [k.value for k in table.rows] == keys:
            for r, key in zip(rows, keys):
                for (col, _), cell in zip(FLEET_COLUMNS, _styled(r)):
                    table.update_cell(key, col, cell)
        else:
            selected = self.selected
            table.clear()
            for r, key in zip(rows, keys):
                table.add_row(*_styled(r), key=key)
            if selected in keys:
                table.move_cursor(row=keys.index(selected))
        self.redraw()

    @property
    def selected(self) -> str | None:
        """The instrument under the cursor."""
        table = self.query_one(FleetTable)
        if not table.row_count:
            return None
        try:
            key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        except Exception:  # noqa: BLE001 - no row under the cursor
            return None
        return None if key.value is None else str(key.value)

    def redraw(self) -> None:
        app = self.fleet
        rows = app.rows
        t = Text(no_wrap=True, overflow="ellipsis")
        t.append("FLEET ", style="bold")
        if app.rows_at is None:
            t.append("asking the instruments ..." if app.refresh_error is None else "", style="dim")
        else:
            down = sum(1 for r in rows if r.get("state") == "unreachable")
            t.append(f"{len(rows)} instrument{'s' if len(rows) != 1 else ''}")
            if down:
                t.append(f", {down} unreachable", style="bold red")
            age = max(0.0, app.clock() - app.rows_at)
            old = age > 3 * app.refresh_s + 5
            t.append(f"  updated {format_age(age)} ago", style="bold red" if old else "")
            t.append(f" (every {app.refresh_s:g} s)", style="dim")
        if app.refresh_error is not None:
            t.append(f"  refresh failed: {app.refresh_error}", style="bold red")
        self.query_one("#fleet-head", Static).update(t)
        self.query_one("#fleet-detail", Static).update(self._detail())

    def _detail(self) -> Text:
        app = self.fleet
        width = max(20, self.query_one("#fleet-detail").content_size.width or 76)
        t = Text()
        name = self.selected
        if name is not None:
            inst = app.instruments.get(name)
            t.append(f"{name} ", style="bold")
            if inst is None:
                t.append("not in [lab.instruments]: no control plane to open", style="dim")
            else:
                t.append(f"{inst.connect}  ")
                t.append("Enter opens its console", style="dim")
            row = next((r for r in app.rows if str(r.get("instrument")) == name), None)
            if row is not None:  # the whole row, in words: the table is cut sideways on 80 columns
                c = dict(zip((k for k, _ in FLEET_COLUMNS), fleet_cells(row)))
                t.append(f"\n{c['state']}", style=_STATE_STYLE.get(c["state"], "bold"))
                if row.get("run_id"):
                    t.append(f"  run {c['run']}  cycle {c['cycle']}\nframes {c['frames']}  {c['fps']} frames/s  "
                             f"drops {c['drops']}  alerts {c['alerts']}")
                t.append(f"\njobs waiting: realtime {c['rt']}, batch {c['batch']}, reprocess {c['reprocess']}  "
                         f"running {c['running']}  oldest {c['oldest']}")
        for problem in (app.note, app.refresh_error and f"refresh failed: {app.refresh_error} (the rows above are older)"):
            if problem:
                t.append("\n" if t else "")
                t.append("\n".join(textwrap.wrap(problem, width, subsequent_indent="  ")), style="bold red")
        for r in app.rows:
            if r.get("error"):
                line = f"{r.get('instrument')}: {r['error']}"
                t.append("\n" if t else "")
                t.append("\n".join(textwrap.wrap(line, width, subsequent_indent="  ")), style="red")
        return t or Text("no instrument", style="dim")

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.redraw()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.fleet.open_instrument(str(event.row_key.value))

    def on_resize(self) -> None:
        self.redraw()


class FleetApp(ApplianceApp):
    """The operator console over a lab's instruments: the fleet first (:class:`FleetScreen`),
    and one instrument's console (the :class:`ApplianceApp` screens, live) at a time.

    ``rows()``: the fleet's rows (``appliance.lab.collect``'s shape: ``instrument``, ``state``,
    ``error``, ``run_id``, ``cycle``, ``cycles``, ``frames``, ``frames_per_s``, ``drops``,
    ``alerts``, ``waiting`` per class, ``in_flight``, ``oldest_waiting_age_s``); it may block,
    and is called on a thread of its own. ``instruments``: name -> :class:`Instrument` (or any
    object with ``connect``, ``client_key``, ``server_key``), whose console Enter opens."""

    def __init__(self, rows: Callable[[], list[dict]], instruments: Mapping[str, Any], *, refresh_s: float = 2.0,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(_Idle(), clock=clock)
        self.rows_fn = rows
        self.instruments = {str(k): v if isinstance(v, Instrument) else
                            Instrument(str(v.connect), str(getattr(v, "client_key", "") or ""), str(getattr(v, "server_key", "") or ""))
                            for k, v in instruments.items()}
        self.refresh_s = refresh_s
        self.rows: list[dict] = []
        self.rows_at: float | None = None  # when the rows on screen were collected (clock)
        self.refresh_error: str | None = None  # the last refresh's failure, if it failed
        self.collections = 0  # answers of rows() so far
        self.note = ""  # why the last Enter opened nothing
        self.instrument: str | None = None  # the instrument whose console is open
        self.fleet_screen = FleetScreen(id="fleet-screen")
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._shown = threading.Event()  # collect only while the fleet is on screen
        self._wake = threading.Event()
        self._quit = threading.Event()
        self._collector: threading.Thread | None = None
        self._old_threads: list[threading.Thread] = []

    def get_default_screen(self) -> Screen:
        return _ConsoleScreen(id="_default")

    def on_mount(self) -> None:
        # ApplianceApp.on_mount runs after this one (and needs its own screen on top): the
        # fleet goes in front once it is done
        self.install_screen(self.fleet_screen, name="fleet")
        self._collector = threading.Thread(target=self._collect_loop, name="tui-fleet", daemon=True)
        self._collector.start()
        self.call_later(self._show_fleet)

    def on_unmount(self) -> None:
        self._quit.set()
        self._wake.set()
        for t in [self._collector, *self._old_threads]:
            if t is not None:
                t.join(5.0)

    # -- the rows (a thread of their own) ----------------------------------------------------
    def _collect_loop(self) -> None:
        while not self._quit.is_set():
            if self._shown.is_set():
                try:
                    rows, error = list(self.rows_fn()), None
                except Exception as exc:  # noqa: BLE001 - shown on the top line, the last rows kept
                    rows, error = None, f"{type(exc).__name__}: {exc}"
                self._results.put((self.clock(), rows, error))
            self._wake.wait(self.refresh_s)
            self._wake.clear()

    def take_rows(self) -> bool:
        """The newest answer of ``rows()`` (UI thread); whether the rows changed."""
        changed = False
        while True:
            try:
                at, rows, error = self._results.get_nowait()
            except queue.Empty:
                return changed
            self.collections += 1
            self.refresh_error = error
            if rows is not None:
                self.rows, self.rows_at, changed = rows, at, True

    # -- the fleet and one console ----------------------------------------------------------
    @property
    def on_fleet(self) -> bool:
        """Whether the fleet screen is showing (or a dialog over it)."""
        return self.fleet_screen in self.screen_stack

    def _show_fleet(self) -> None:
        if not self.on_fleet:
            self.push_screen("fleet")
        self._shown.set()
        self._wake.set()  # fresh rows now

    def open_instrument(self, name: str) -> bool:
        """Open ``name``'s live console in place of the fleet; False (and the reason under
        the table) when it has no control plane or its keys cannot be read."""
        inst = self.instruments.get(name)
        if inst is None:
            self.note = f"{name}: not in [lab.instruments]: no control plane to open"
            self.fleet_screen.redraw()
            return False
        try:
            source = inst.source()
        except Exception as exc:  # noqa: BLE001 - a bad target or key file: said, the fleet stays
            self.note = f"{name}: cannot open its console: {exc}"
            self.fleet_screen.redraw()
            return False
        self.note = ""
        self._attach(name, source)
        self._shown.clear()
        if self.on_fleet:
            self.pop_screen()
        return True

    def _attach(self, name: str, source: Source) -> None:
        """The console's state for a new source (as ApplianceApp.__init__ sets it up), and
        its thread; the previous source's thread ends by itself (its stop is set)."""
        self._stop.set()
        if self._thread is not None:
            self._old_threads = [t for t in self._old_threads if t.is_alive()] + [self._thread]
        self.instrument = name
        self.source = source
        self.model = RunModel()
        self.updates = queue.SimpleQueue()
        self.connection = f"connecting to {source.describe()} ..."
        self.connected = False
        self.generation = 0
        self.retry_at = None
        self.last_data = None
        self.viewing = None
        self._was_connected = False
        self._stop = threading.Event()
        console = self.screen_stack[0]
        for w in console.query(NoticeList):  # the previous instrument's rows go
            w.notices = []
            w.clear_options()
        try:
            console.query_one("#bottom").current = "events"  # type: ignore[attr-defined]
        except NoMatches:
            pass
        self._thread = threading.Thread(target=self._run_source, name=f"tui-{name}", daemon=True)
        self._thread.start()

    def action_fleet(self) -> None:
        """Back to the fleet: this instrument's console closes (its connection ends)."""
        if self.on_fleet:
            return
        self._stop.set()
        self.instrument = None
        self._show_fleet()

    # -- ApplianceApp, under --lab ------------------------------------------------------------
    def _tick(self) -> None:
        if not self.on_fleet:
            super()._tick()

    def on_resize(self, event: Resize) -> None:
        if self.screen is not self.screen_stack[0]:
            event.prevent_default()  # ApplianceApp's handler draws the console, not on top now

    def _render_conn(self) -> Text:
        t = Text(no_wrap=True, overflow="ellipsis")
        if self.instrument:
            t.append(f"{self.instrument} ", style="bold")
        t.append_text(super()._render_conn())
        return t

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(FleetHelpScreen() if self.on_fleet else ConsoleHelpScreen())

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """On the fleet only help and quit of the console's keys work (and are shown)."""
        if self.on_fleet and action in _CONSOLE_ACTIONS:
            return False
        return super().check_action(action, parameters)


#: the console's own actions that do nothing on the fleet screen
_CONSOLE_ACTIONS = frozenset(b.action.split("(", 1)[0] for b in ApplianceApp.BINDINGS if isinstance(b, Binding)) - {"help", "quit"}
