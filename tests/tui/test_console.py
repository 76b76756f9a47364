"""The console tells the truth: a lost appliance is shown as lost (dimmed panes with their
age, commands refused, a dialog opened before the loss sends nothing), rows open whole with
their runbook entry, each run has its own alerts and log, and a replay seeks. Against a real
control server (appliance.control) and the fixed run of tests/tui/fixed.py."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

from appliance.control import ControlServer
from tests.tui import fixed
from tests.tui.conftest import drive, publish_loop, screen_lines, screen_text, wait_until
from tui import ApplianceApp, ConfirmScreen, LiveSource, ReplaySource
from tui.app import NoticeList, NoticeScreen, runbook_entry

RUNBOOK = Path(__file__).resolve().parents[2] / "docs" / "runbook.md"


class Appliance:
    """A control server answering status and pause for one run, publishing its samples."""

    def __init__(self, sock_dir: Path, run_id: str, sample_index: int = 20) -> None:
        self.sample = fixed.sample(sample_index, run_id=run_id)
        self.paused: list[str] = []
        self.server = ControlServer(
            handlers={"status": lambda a: dict(self.sample), "pause": self._pause},
            run_dir_for_sockets=sock_dir,
        )
        self.stop = threading.Event()

    def _pause(self, args):
        self.paused.append(self.sample["run_id"])
        return {"paused": True}

    def __enter__(self) -> "Appliance":
        self.server.start()
        self.pub = publish_loop(self.server, self.stop, stats=lambda: dict(self.sample))
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.pub.join()
        self.server.stop()


def test_a_lost_appliance_is_shown_lost_and_a_dialog_opened_before_sends_nothing(sock_dir):
    source = LiveSource(sock_dir, stale_s=0.5, min_backoff_s=0.1, max_backoff_s=0.2, timeout_s=0.5)
    app = ApplianceApp(source)

    async def script(pilot):
        first = Appliance(sock_dir, "FIRST")
        with first:
            await wait_until(pilot, lambda: app.connected and app.model.run_id == "FIRST", what="the first appliance")
            await pilot.pause(0.3)
            assert "● LIVE connected" in screen_text(app) and not app.query_one("#pipeline").has_class("stale")
            await pilot.press("p")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the pause dialog")
        # the appliance is gone while the dialog is open: it says so, and y sends nothing
        await wait_until(pilot, lambda: not app.connected, what="the loss")
        await wait_until(pilot, lambda: app.screen.withdrawn, what="the dialog to be withdrawn")
        await pilot.pause(0.3)
        assert "The connection was lost: this will NOT be sent" in screen_text(app)
        await pilot.press("y")
        await wait_until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="the dialog to close")
        await pilot.pause(0.5)
        texts = [n.text for n in app.model.alerts]
        assert "pause: not sent: the connection was lost while the dialog was open" in texts
        assert any(t.startswith("lost (") for t in texts)  # written to the events pane
        lines = screen_lines(app)
        assert re.match(r"○ LIVE disconnected, retry in \d+ s, stale: \d+s old", lines[0]), lines[0]
        assert "run FIRST  last seen ACQUIRING" in lines[1]
        assert "Pipeline (stale: " in screen_text(app) and "● 1/1 up" not in screen_text(app)
        for wid in ("#progress", "#pipeline", "#alerts", "#log"):
            assert app.query_one(wid).has_class("stale"), wid  # dimmed
        await pilot.press("p")  # refused, no dialog
        await pilot.pause(0.2)
        assert not isinstance(app.screen, ConfirmScreen)
        assert any(n.text.startswith("pause: refused: not connected") for n in app.model.alerts)

        second = Appliance(sock_dir, "SECOND")
        with second:
            await wait_until(pilot, lambda: app.connected and app.model.run_id == "SECOND", what="the next run")
            assert any(n.text.startswith("regained: connected to") for r in app.model.runs for n in r.alerts)
            await pilot.pause(0.3)
            assert not app.query_one("#pipeline").has_class("stale") and "● 1/1 up" in screen_text(app)
            # a dialog opened now is for this run: y sends it, the reply is readable text
            await pilot.press("p")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the pause dialog")
            await pilot.press("y")
            await wait_until(pilot, lambda: any(n.text == "pause: acquisition paused" for n in app.model.alerts), what="the reply")
        assert first.paused == [] and second.paused == ["SECOND"]

    drive(app, script)


def test_a_dialog_for_one_run_is_not_sent_to_the_next(sock_dir):
    source = LiveSource(sock_dir, min_backoff_s=0.1, max_backoff_s=0.2, timeout_s=0.5)
    app = ApplianceApp(source)

    async def script(pilot):
        with Appliance(sock_dir, "FIRST") as appliance:
            await wait_until(pilot, lambda: app.model.run_id == "FIRST", what="the first run")
            await pilot.press("p")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the pause dialog")
            appliance.sample = fixed.sample(2, run_id="NEXT")  # under appliance serve: the next run starts
            await wait_until(pilot, lambda: app.model.run_id == "NEXT", what="the next run")
            await pilot.press("y")
            await wait_until(pilot, lambda: any("not sent: it was asked for run FIRST" in n.text for r in app.model.runs for n in r.alerts),
                             what="the refusal")
            assert appliance.paused == []

    drive(app, script)


def _replay(tmp_path, **kw) -> ReplaySource:
    return ReplaySource(fixed.write_run(tmp_path), **kw)


def _focus_alert(app, rule: str) -> NoticeList:
    lst = app.query_one("#alerts", NoticeList)
    lst.focus()
    lst.highlighted = next(i for i, n in enumerate(lst.notices) if n.rule == rule and n.kind == "alert")
    return lst


def test_a_row_opens_whole_with_its_fields_and_runbook_entry(tmp_path):
    app = ApplianceApp(_replay(tmp_path, speed=0))
    section = re.search(r"^## `stage_over_budget`\n(.*?)(?=^## )", RUNBOOK.read_text(), re.S | re.M).group(1).strip()
    assert runbook_entry("stage_over_budget") == section and runbook_entry("no_such_rule") is None

    async def script(pilot):
        await wait_until(pilot, lambda: app.model.state == "done", what="the replay")
        await pilot.pause(0.3)
        row = next(line for line in screen_lines(app) if "stage writer-0: only 62%" in line)
        assert "…" in row and len(row) <= 80  # cut on the list ...
        _focus_alert(app, "stage_over_budget")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, NoticeScreen), what="the notice")
        await pilot.pause(0.2)
        text = " ".join(screen_text(app).split())
        assert "the run will drop or stall" in text  # ... whole here
        assert "rule: stage_over_budget" in text and "subject: writer-0" in text and "severity: warning" in text
        assert "runbook: docs/runbook.md#stage_over_budget" in text
        assert " ".join(section.replace("**", "").split()[:8]) in text
        await pilot.press("escape")
        await wait_until(pilot, lambda: not isinstance(app.screen, NoticeScreen), what="the notice to close")

    drive(app, script)


def test_replay_seeks_to_events_and_times_and_its_footer_has_only_replay_keys(tmp_path):
    source = _replay(tmp_path, speed=1)
    source.paused = True  # held from the start: only seeks move it
    app = ApplianceApp(source)
    events = fixed.events()

    async def script(pilot):
        await wait_until(pilot, lambda: "replay" in app.connection, what="the replay")
        await wait_until(pilot, lambda: "q Quit" in screen_lines(app)[-1], what="the footer")
        footer = screen_lines(app)[-1]
        for key in ("space Hold", "[ Prev event", "] Next event", ": Seek", "q Quit"):
            assert key in footer, key
        for key in ("Stop", "Pause", "Resume", "Start"):
            assert key not in footer, key
        await pilot.press("right_square_bracket")
        await wait_until(pilot, lambda: source.now_t == events[0][1]["t"], what="the first event")
        await pilot.press("right_square_bracket")
        await wait_until(pilot, lambda: source.now_t == events[1][1]["t"], what="the second event")
        await wait_until(pilot, lambda: any(n.rule == "stage_over_budget" for n in app.model.alerts), what="its alert")
        await pilot.press("left_square_bracket")
        await wait_until(pilot, lambda: source.now_t == events[0][1]["t"], what="back to the first event")
        await wait_until(pilot, lambda: not any(n.rule == "stage_over_budget" for n in app.model.alerts), what="the alert gone")
        # a time: +M:SS from the start
        await pilot.press("colon")
        await pilot.pause(0.2)
        await pilot.press(*"+0:15", "enter")
        await wait_until(pilot, lambda: source.now_t == fixed.T0 + 15, what="the jump to +0:15")
        await pilot.pause(0.3)
        assert "at 0:15/0:19" in screen_lines(app)[0]
        assert app.model.frames_acquired == fixed.sample(30)["frames_acquired"]
        # a clock time (the tests run with the local zone of the machine: ask in it)
        import time as _time
        await pilot.press("colon")
        await pilot.pause(0.2)
        await pilot.press(*_time.strftime("%H:%M:%S", _time.localtime(fixed.T0 + 5)), "enter")
        await wait_until(pilot, lambda: source.now_t == fixed.T0 + 5, what="the jump to a clock time")
        await pilot.press("colon")
        await pilot.pause(0.2)
        await pilot.press(*"soon", "enter")
        await wait_until(pilot, lambda: any(n.text.startswith("seek: 'soon' is not a time") for n in app.model.alerts), what="the error")

    drive(app, script)


def test_prerendering_then_acquiring_then_draining_are_shown(tmp_path):
    source = _replay(tmp_path, speed=1)
    source.paused = True
    app = ApplianceApp(source)

    async def script(pilot):
        for index, state in ((2, "PRERENDERING"), (10, "ACQUIRING"), (38, "DRAINING"), (39, "DONE")):
            # up to sample `index` (and the events before it) at once
            source.seek(1 + next(i for i, (topic, body) in enumerate(source.timeline) if body is source.samples[index]))
            await wait_until(pilot, lambda: app.model.samples and app.model.last["t"] == source.samples[index]["t"], what=f"sample {index}")
            await pilot.pause(0.3)
            line = screen_lines(app)[1]
            assert f"{fixed.RUN_ID}  {state}" in line, line
            assert ("frames/s" in line) == (state in ("ACQUIRING", "DRAINING", "DONE")), line

    # the fixed run: the first samples have no frame (pre-render), the last but one every frame
    assert fixed.sample(2)["frames_acquired"] == 0 and fixed.sample(38)["frames_acquired"] == fixed.PLANNED
    drive(app, script)


def test_the_prerendering_state_with_its_progress_and_the_live_bottleneck_are_shown(tmp_path):
    """A supervisor that says ``prerendering`` (appliance.pipeline.RunState) with the source's
    progress: the header shows how far the rendering got, not a rate of 0 frames/s; then the
    live bottleneck verdict of a sample is on the pipeline pane."""
    app = ApplianceApp(_replay(tmp_path, speed=0))

    async def script(pilot):
        await wait_until(pilot, lambda: app.model.state == "done", what="the replay")
        from tui import Update

        body = {**fixed.sample(1, run_id="NEXT"), "state": "prerendering", "prerender": {"done": 52, "total": 208}}
        app.updates.put(Update("stats", body=body))
        await wait_until(pilot, lambda: app.model.run_id == "NEXT", what="the next run")
        await pilot.pause(0.3)
        line = screen_lines(app)[1]
        assert "NEXT  PRERENDERING" in line and "rendering 52/208 frames (25%)" in line and "frames/s" not in line, line
        # the live bottleneck verdict goes on the pipeline pane's border
        verdict = {"stage": "writer-0", "resource": "disk", "busy": 0.95, "text": "writer-0 bound by disk (95% busy)"}
        app.updates.put(Update("stats", body={**fixed.sample(12, run_id="NEXT"), "bottleneck": verdict}))
        await wait_until(pilot, lambda: app.model.last.get("bottleneck"), what="the verdict")
        await pilot.pause(0.3)
        assert "bottleneck: writer-0 (disk, 95% busy)" in screen_text(app)

    drive(app, script)


def test_each_run_has_its_own_alerts_and_log_and_earlier_runs_stay_reachable(tmp_path):
    app = ApplianceApp(_replay(tmp_path, speed=0))

    async def script(pilot):
        await wait_until(pilot, lambda: app.model.state == "done", what="the replay")
        from tui import Update

        app.updates.put(Update("stats", body=fixed.sample(1, run_id="NEXT")))
        app.updates.put(Update("event", body={"t": fixed.T0 + 99, "kind": "event", "message": "run NEXT started"}))
        await wait_until(pilot, lambda: app.model.run_id == "NEXT", what="the next run")
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "run NEXT started" in text and "crashed" not in text and "b earlier runs (1)" in text
        await pilot.press("b")
        await pilot.pause(0.3)
        text = screen_text(app)
        assert f"─ Run {fixed.RUN_ID} (earlier; b) ─" in text and "crashed" in text
        await pilot.press("b")  # back to the current run
        await pilot.pause(0.3)
        assert "crashed" not in screen_text(app) and "run NEXT started" in screen_text(app)

    drive(app, script)


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_the_bottom_area_takes_the_extra_rows_and_no_line_is_cut_without_a_way_in(tmp_path, size):
    app = ApplianceApp(_replay(tmp_path, speed=0))

    async def script(pilot):
        await wait_until(pilot, lambda: app.model.state == "done", what="the replay")
        await pilot.pause(0.3)
        lines = screen_lines(app)
        assert len(lines) <= size[1] and all(len(line) <= size[0] for line in lines)
        alerts = app.query_one("#alerts", NoticeList)
        assert alerts.outer_size.height == size[1] - 1 - 3 - 11 - 1  # everything but the fixed rows
        # a row cut with … is a list row, and Enter opens it whole (the test above)
        for line in lines:
            if "…" in line:
                assert any(n.text[:20] in line for n in app.model.alerts), line
        assert app.query_one("#log").has_class("empty")  # a replay has no log: the alerts get the width
        assert alerts.outer_size.width > app.query_one("#log").outer_size.width

    drive(app, script, size=size)
