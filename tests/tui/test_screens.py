"""The console's screens at 80x24, checked by their text: the main screen before any data,
the help screen (every key), and the stop confirmation."""

from __future__ import annotations

import re

from tests.tui.conftest import drive, screen_lines, screen_text, wait_until
from tui import ApplianceApp, ConfirmScreen, HelpScreen, LiveSource, ReplaySource
from tui.app import KEY_HELP


def test_main_screen_fits_80x24_with_every_panel(real_run):
    _, state_dir = real_run
    app = ApplianceApp(ReplaySource(state_dir, speed=0))

    async def script(pilot):
        await wait_until(pilot, lambda: app.model.state == "done", what="the replay")
        await pilot.pause(0.3)
        lines = screen_lines(app)
        assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
        text = "\n".join(lines)
        for title in ("─ Pipeline ─", "─ Alerts & events", "─ Log ─"):  # the alerts' title may count active ones
            assert title in text
        assert lines[0].lstrip().startswith("● REPLAY")
        # a replay's footer: its own keys, no commands
        assert "? Help" in lines[-1] and "space Hold" in lines[-1] and "q Quit" in lines[-1] and "s Stop" not in lines[-1]
        # the pipeline is drawn stage, ring, stage, ... in pipeline order
        order = [next(i for i, line in enumerate(lines) if name in line) for name in
                 ("source", "raw", "preprocess", "corrected", "kernel", "intensities", "basecall", "calls", "writer")]
        assert order == sorted(order)
        # the bottom area's other views fit too (a replay has no jobs or storage figures)
        for key, titles, note in (("j", ("Jobs", "Job failures"), "no job stats: a replay has only"),
                                  ("t", ("Storage",), "no storage stats: a replay has only the run's stats and events"),
                                  ("e", ("Alerts & events", "Log"), "")):
            await pilot.press(key)
            await wait_until(pilot, lambda: all(f"─ {t} " in screen_text(app) for t in titles) and note in screen_text(app),
                             what=f"the view of {key!r}")
            lines = screen_lines(app)
            assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
            assert any("─ Pipeline ─" in line for line in lines) and lines[-1].lstrip().startswith("? Help") and "q Quit" in lines[-1]

    drive(app, script)


def test_help_screen_lists_every_binding_with_its_key():
    app = ApplianceApp(LiveSource("/nonexistent-tui-test-socket-dir"))

    async def script(pilot):
        await pilot.press("question_mark")
        await wait_until(pilot, lambda: isinstance(app.screen, HelpScreen), what="the help screen")
        await pilot.pause(0.1)
        text = screen_text(app)
        assert app.BINDINGS
        for b in app.BINDINGS:
            action = b.action.split("(", 1)[0]
            if not app.binding_works(action):  # a replay key, in a live console
                assert KEY_HELP[action] not in text, action
                continue
            key = app.get_key_display(b)
            assert KEY_HELP[action] in text, action
            pattern = rf"(^|[\s│]){re.escape(key)} +{re.escape(b.description)} "
            assert any(re.search(pattern, line) for line in text.splitlines()), (key, b.description)
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, HelpScreen), what="the help screen to close")

    drive(app, script)


def test_commands_are_refused_while_disconnected_and_the_countdown_shows_at_80_columns():
    # No appliance at that socket directory: the status line says so and keeps retrying.
    app = ApplianceApp(LiveSource("/nonexistent-tui-test-socket-dir", min_backoff_s=0.1))

    async def script(pilot):
        await wait_until(pilot, lambda: "disconnected" in app.connection, what="the disconnected status")
        await pilot.pause(0.3)
        first = screen_lines(app)[0]
        assert re.match(r"○ LIVE disconnected, retry in \d+ s \(no control socket at /nonexistent-tui-test", first), first
        for key, cmd in (("s", "stop"), ("p", "pause"), ("r", "resume"), ("g", "start")):
            await pilot.press(key)
            await pilot.pause(0.1)
            assert not isinstance(app.screen, ConfirmScreen), key
            assert any(n.text.startswith(f"{cmd}: refused: not connected to the appliance") for n in app.model.alerts), cmd
        await pilot.pause(0.3)
        assert "error stop: refused: not connected" in screen_text(app)

    drive(app, script)


def test_alerts_panel_shows_the_newest_lines(real_run):
    _, state_dir = real_run
    app = ApplianceApp(ReplaySource(state_dir, speed=0))

    async def script(pilot):
        await wait_until(pilot, lambda: app.model.state == "done", what="the replay")
        for i in range(30):
            app.model.add_event("alert", {"t": 1.0 + i, "kind": "alert", "message": f"alert number {i}"})
        app._redraw()
        await pilot.pause(0.1)
        text = screen_text(app)
        assert "alert number 29" in text and "alert number 0 " not in text
        await pilot.press("c")
        await pilot.pause(0.1)
        assert "no alerts" in screen_text(app)

    drive(app, script)


def test_a_malformed_message_is_reported_not_fatal(real_run):
    from tui import Update

    _, state_dir = real_run
    app = ApplianceApp(ReplaySource(state_dir, speed=0))

    async def script(pilot):
        await wait_until(pilot, lambda: app.model.state == "done", what="the replay")
        app.updates.put(Update("stats", body={"t": "yesterday", "rings": []}))
        await wait_until(pilot, lambda: any("ignored a stats message" in n.text for n in app.model.alerts), what="the report")
        assert app.model.state == "done" and "DONE" in screen_text(app)

    drive(app, script)
