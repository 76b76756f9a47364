"""The fleet of a lab in the console (``appliance tui --lab``): two real instruments (real
control servers answering ``status`` and publishing their stats, each on its own socket
directory) and one that is not there, asked by the real ``appliance.lab.collect``; the fleet
shows the three rows with their states and the unreachable one's error, Enter opens an
instrument's own live console with its run, Esc comes back to the fleet."""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.control import ControlServer
from appliance.lab import LabInstrument, LabSection, collect
from tests.tui import fixed
from tests.tui.conftest import drive, publish_loop, screen_lines, screen_text, wait_until
from tui import FleetApp, FleetScreen, Instrument, fleet_cells
from tui.fleet import ConsoleHelpScreen, FleetHelpScreen

RUN1 = "251203_SIM01_0007_FC0007"
RUN2 = "251203_SIM02_0003_FC0003"


class Instrument_:
    """A control server answering status for one run, publishing its samples."""

    def __init__(self, sock_dir: Path, sample: dict) -> None:
        self.sample = sample
        self.server = ControlServer(handlers={"status": lambda a: dict(self.sample)}, run_dir_for_sockets=sock_dir)
        self.stop = threading.Event()

    def __enter__(self) -> "Instrument_":
        self.server.start()
        self.pub = publish_loop(self.server, self.stop, stats=lambda: dict(self.sample, t=time.time()))
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.pub.join()
        self.server.stop()


@pytest.fixture
def lab_dir():
    """Short socket directories (Unix socket paths are limited to 107 bytes), removed after."""
    parent = Path(tempfile.mkdtemp(prefix="fleet-", dir="/tmp"))
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


def _lab(d: Path) -> LabSection:
    return LabSection({"SIM01": LabInstrument(str(d / "sim01")), "SIM02": LabInstrument(str(d / "sim02")),
                       "SIM03": LabInstrument(str(d / "sim03"))})  # SIM03: nothing serves there


def _fleet_app(lab: LabSection) -> FleetApp:
    return FleetApp(lambda: collect(lab, None, timeout_s=0.5, interval_s=0.2), lab.instruments, refresh_s=0.5)


def _row(app, name: str) -> str:
    return next(line for line in screen_lines(app) if f" {name} " in line or line.lstrip("│ ").startswith(name))


def _footer(app) -> str:
    return screen_lines(app)[-1]


def test_the_fleet_shows_every_instrument_and_enter_opens_ones_console(lab_dir):
    lab = _lab(lab_dir)
    s1 = fixed.sample(20, run_id=RUN1)
    s2 = dict(fixed.sample(12, run_id=RUN2), state="paused")
    with Instrument_(lab_dir / "sim01", s1), Instrument_(lab_dir / "sim02", s2):
        app = _fleet_app(lab)

        async def script(pilot):
            await wait_until(pilot, lambda: app.on_fleet and len(app.rows) == 3 and all(r["state"] != "?" for r in app.rows),
                             what="the fleet's rows")
            await pilot.pause(0.6)  # the next tick draws them
            text = screen_text(app)
            assert isinstance(app.screen, FleetScreen)
            assert "FLEET 3 instruments, 1 unreachable" in text and "updated" in text
            assert "acquiring" in _row(app, "SIM01") and RUN1 in _row(app, "SIM01")
            assert "paused" in _row(app, "SIM02") and RUN2 in _row(app, "SIM02")
            assert "unreachable" in _row(app, "SIM03")
            error = next(r["error"] for r in app.rows if r["instrument"] == "SIM03")
            assert error and f"SIM03: {error}"[:40] in text  # its error under the table, the others shown all the same
            # the footer has only the keys that work on the fleet
            foot = _footer(app)
            assert "Open console" in foot and "Help" in foot and "Quit" in foot
            for key in ("Pause", "Stop", "Start", "Resume", "Clear alerts", "Hold", "Fleet"):
                assert key not in foot, foot
            await pilot.press("p")  # a console key does nothing here
            assert isinstance(app.screen, FleetScreen)  # no confirmation dialog: nothing to pause here
            await pilot.press("question_mark")
            assert isinstance(app.screen, FleetHelpScreen)
            help_text = screen_text(app)
            assert "Open console" in help_text and "Pause" not in help_text
            await pilot.press("escape")
            assert isinstance(app.screen, FleetScreen)

            # SIM02's console: its run, live
            await pilot.press("down")
            assert app.fleet_screen.selected == "SIM02"
            await pilot.press("enter")
            await wait_until(pilot, lambda: not app.on_fleet and app.model.run_id == RUN2 and app.connected,
                             what="SIM02's console")
            await pilot.pause(0.6)
            text = screen_text(app)
            assert f"run {RUN2}" in text and "PAUSED" in text and "SIM02" in screen_lines(app)[0]
            foot = _footer(app)
            assert "Fleet" in foot and "Pause" in foot and "Open console" not in foot
            await pilot.press("question_mark")
            assert isinstance(app.screen, ConsoleHelpScreen) and "back to the fleet" in screen_text(app)
            await pilot.press("escape")  # closes the help, not the console
            assert not app.on_fleet

            # back to the fleet, which refreshes again
            seen = app.collections
            await pilot.press("escape")
            assert app.on_fleet and isinstance(app.screen, FleetScreen)
            await wait_until(pilot, lambda: app.collections > seen, what="a refresh after coming back")
            await pilot.pause(0.6)
            assert "FLEET 3 instruments" in screen_text(app) and app.fleet_screen.selected == "SIM02"

            # SIM01's console shows SIM01's run, nothing of SIM02's
            await pilot.press("up", "enter")
            await wait_until(pilot, lambda: not app.on_fleet and app.model.run_id == RUN1 and app.connected,
                             what="SIM01's console")
            await pilot.pause(0.6)
            text = screen_text(app)
            assert f"run {RUN1}" in text and "ACQUIRING" in text and RUN2 not in text
            await pilot.press("escape")
            assert app.on_fleet

            # the unreachable one opens too: its console says it is disconnected and retries
            await pilot.press("down", "down", "enter")
            await wait_until(pilot, lambda: not app.on_fleet and "disconnected" in screen_lines(app)[0],
                             what="SIM03's console, disconnected")
            assert app.model.run_id is None
            await pilot.press("escape")
            assert app.on_fleet

        drive(app, script)


def test_a_failing_refresh_is_shown_and_the_last_rows_kept():
    calls = []

    def rows():
        calls.append(1)
        if len(calls) > 1:
            raise ConnectionError("the lab ledger is down")
        return [{"instrument": "SIM01", "state": "idle", "error": None, "run_id": None, "cycle": None, "cycles": None,
                 "frames": None, "frames_per_s": None, "drops": None, "alerts": None,
                 "waiting": {"realtime": 1, "batch": 2, "reprocess": 0}, "in_flight": 1, "oldest_waiting_age_s": 300}]

    app = FleetApp(rows, {"SIM01": Instrument("/nonexistent-fleet-test")}, refresh_s=0.2)

    async def script(pilot):
        await wait_until(pilot, lambda: len(calls) >= 2 and app.refresh_error is not None, what="a failed refresh")
        await pilot.pause(0.6)
        text = screen_text(app)
        assert "refresh failed: ConnectionE" in screen_lines(app)[0]  # the top line, cut at 80 columns
        assert "refresh failed: ConnectionError: the lab ledger is down" in text  # and whole below the table
        assert "idle" in _row(app, "SIM01")
        # the columns cut at 80 (the table scrolls sideways) are in the selected row's words below it
        assert "jobs waiting: realtime 1, batch 2, reprocess 0  running 1  oldest 5 min" in text

    drive(app, script)


def test_an_instrument_without_a_control_plane_or_keys_is_said_not_opened():
    row = {"instrument": "GHOST", "state": "?", "error": "not in [lab.instruments]", "waiting": {}}
    app = FleetApp(lambda: [row, dict(row, instrument="TCP1", error=None)],
                   {"TCP1": Instrument("tcp://127.0.0.1:1", "/nonexistent.key_secret", "/nonexistent.key")}, refresh_s=5)

    async def script(pilot):
        await wait_until(pilot, lambda: len(app.rows) == 2, what="rows")
        await pilot.pause(0.6)
        await pilot.press("enter")
        assert app.on_fleet and "GHOST: not in [lab.instruments]" in app.note
        await pilot.press("down", "enter")
        assert app.on_fleet and app.note.startswith("TCP1: cannot open its console")
        await pilot.pause(0.6)
        assert "TCP1: cannot open its console" in screen_text(app)

    drive(app, script)


SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]


def _fixed_rows() -> list[dict]:
    """Three instruments as appliance.lab.fleet_rows makes them: acquiring, paused, unreachable."""
    from appliance.lab import fleet_rows

    paused = dict(fixed.sample(12, run_id=RUN2), state="paused")
    return fleet_rows({"SIM01": (fixed.sample(18, run_id=RUN1), fixed.sample(20, run_id=RUN1), None),
                       "SIM02": (paused, paused, None),
                       "SIM03": (None, None, "/run/sim03: no answer within 2.0 s (is the appliance running?)")},
                      {"SIM01": {"waiting": {"realtime": 1}, "in_flight": 1, "oldest_waiting_age_s": 4.0},
                       "SIM02": {"waiting": {"batch": 3}, "oldest_waiting_age_s": 12.0}})


@pytest.mark.parametrize("size", SIZES)
def test_snapshot_the_fleet(snap_compare, size):
    rows = _fixed_rows()
    app = FleetApp(lambda: rows, {r["instrument"]: Instrument(f"/run/{r['instrument'].lower()}") for r in rows},
                   refresh_s=2, clock=fixed.FixedClock(fixed.T0))

    async def settle(pilot):
        await wait_until(pilot, lambda: app.rows_at is not None, what="the rows")
        await pilot.pause(0.6)

    assert snap_compare(app, terminal_size=size, run_before=settle)


def test_the_cells_are_those_of_lab_status():
    from appliance.lab import fleet_rows, format_fleet

    rows = fleet_rows({"A": (fixed.sample(10), fixed.sample(12), None), "B": (None, None, "x: no answer")},
                      {"A": {"waiting": {"batch": 3}, "in_flight": 1, "oldest_waiting_age_s": 12.0}})
    table = format_fleet(rows).splitlines()
    for r, line in zip(rows, table[1:]):
        assert line.split() == [c for cell in fleet_cells(r) for c in cell.split()]


def test_the_command_needs_instruments_and_config_only_with_lab(tmp_path, capsys):
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    assert main(["tui", "--lab", "--config", str(empty)]) == 2
    assert "no instruments" in capsys.readouterr().err
    assert main(["tui", "--config", str(empty)]) == 2
    assert "--config and --set go with --lab" in capsys.readouterr().err
    assert main(["tui", "--lab", "--set", "lab.instruments.X.connect=ftp://x"]) == 2
    assert "lab.instruments.X.connect" in capsys.readouterr().err


def test_the_command_builds_the_rows_and_the_instruments_from_the_config(lab_dir, tmp_path):
    import argparse

    from appliance.commands.tui import configure, make_fleet

    cfg = tmp_path / "lab.toml"
    cfg.write_text(f'[output]\nroot = "{tmp_path / "runs"}"\n'
                   f'[lab.instruments.SIM01]\nconnect = "{lab_dir / "sim01"}"\n'
                   f'[lab.instruments.SIM02]\nconnect = "{lab_dir / "sim02"}"\n')
    parser = argparse.ArgumentParser()
    configure(parser)
    args = parser.parse_args(["--lab", "--config", str(cfg), "--timeout", "0.5"])
    with Instrument_(lab_dir / "sim01", fixed.sample(20, run_id=RUN1)):
        rows, instruments = make_fleet(args)
        got = {r["instrument"]: r for r in rows()}
    assert instruments == {"SIM01": Instrument(str(lab_dir / "sim01")), "SIM02": Instrument(str(lab_dir / "sim02"))}
    assert got["SIM01"]["state"] == "acquiring" and got["SIM01"]["run_id"] == RUN1 and got["SIM01"]["error"] is None
    assert got["SIM02"]["state"] == "unreachable" and got["SIM02"]["error"]
