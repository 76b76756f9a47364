"""``appliance tui --replay``: a real run's stats.jsonl played back on the 80x24 screen."""

from __future__ import annotations

import json
import time

import pytest

from tests.tui.conftest import drive, screen_lines, screen_text, wait_until
from tui import ApplianceApp, ReplaySource, SourceError, resolve_stats_file
from tui._model import EDGES, STAGES
from tui.app import REDRAW_HZ


def test_replay_of_a_real_run_shows_stages_rings_and_progress(real_run):
    summary, state_dir = real_run
    last = json.loads((state_dir / "stats.jsonl").read_text().splitlines()[-1])
    source = ReplaySource(state_dir, speed=0)
    app = ApplianceApp(source)

    async def script(pilot):
        t0, redraws0 = time.monotonic(), app.redraws
        await wait_until(pilot, lambda: source.position == len(source.samples) and app.model.state == "done", what="the end of the replay")
        await pilot.pause(0.3)  # one more redraw tick
        # every sample arrived at once (speed 0), yet the screen is redrawn at most at REDRAW_HZ
        assert app.redraws - redraws0 <= (time.monotonic() - t0) * REDRAW_HZ + 2
        text = screen_text(app)
        for name in (*STAGES, *EDGES):
            assert name in text
        planned = summary["frames_acquired"]
        assert f"frames {planned}/{planned}" in text and "100%" in text
        assert "cycle 8/8" in text and "tile 1102" in text
        assert "e2e p99 " in text and "busy " in text and "p99 " in text and "G free" in text
        for stage in STAGES:  # the run is over: every stage finished, none crashed
            assert app.model.stages[stage].finished, stage
        assert "run TUIRUN" in text and "DONE" in text
        assert f"sample {len(source.samples)}/{len(source.samples)} at " in text and "(finished)" in text
        # the restart, and its alert from the flight recorder
        assert any(line.lstrip("│").startswith("preprocess") and "restarts 1" in line for line in screen_lines(app))
        assert summary["restarts"] == {"preprocess-0": 1}
        assert "alert stage preprocess-0 crashed" in text
        # ring capacities as the run reported them, per edge
        for key, ring in last["rings"].items():
            assert f"/{ring['n_slots']}" in text, key

    drive(app, script)


def test_replay_at_real_speed_advances_holds_and_resumes(real_run):
    _, state_dir = real_run
    source = ReplaySource(state_dir / "stats.jsonl", speed=4)
    app = ApplianceApp(source)

    async def script(pilot):
        await wait_until(pilot, lambda: app.model.samples >= 2, what="two samples")
        await pilot.press("space")  # hold
        held_at = source.position
        await pilot.pause(0.6)  # > 2 samples' worth at x4
        assert source.position <= held_at + 1 and source.paused
        await pilot.press("space")
        await wait_until(pilot, lambda: source.position > held_at + 1, what="playback to continue")
        await pilot.press("plus")
        assert source.speed == 8
        await pilot.press("minus", "minus")
        assert source.speed == 2
        await pilot.press("home")  # start over: the model forgets the run and refills
        await wait_until(pilot, lambda: source.position <= 2, what="a restart")
        await pilot.pause(0.3)  # the restart reaches the screen (it clears the alerts panel)
        # commands do not exist in a replay: not in the footer, and the key opens no dialog
        assert "s Stop" not in screen_lines(app)[-1] and "space Hold" in screen_lines(app)[-1]
        await pilot.press("s")
        await pilot.pause(0.3)
        assert type(app.screen).__name__ == "Screen"

    drive(app, script)


def test_rates_and_eta_come_from_successive_samples(real_run):
    summary, state_dir = real_run
    source = ReplaySource(state_dir, speed=0)
    app = ApplianceApp(source)
    acquiring = [s for s in source.samples if s.get("state") == "acquiring" and 0 < s["frames_acquired"] < s["frames_planned"]]
    assert len(acquiring) >= 3, "the run is too short to have samples mid-acquisition"
    # play the file up to mid-acquisition only: the rate and ETA must be live values there
    cut = source.samples.index(acquiring[len(acquiring) // 2]) + 1
    source.samples = source.samples[:cut]

    async def script(pilot):
        await wait_until(pilot, lambda: source.position == cut, what="the cut")
        await pilot.pause(0.3)
        m = app.model
        assert m.stages["source"].rate and m.stages["source"].rate > 0
        assert m.eta_s is not None and m.eta_s > 0
        lines = screen_lines(app)
        assert any(line.strip().startswith("run TUIRUN  ACQUIRING") for line in lines)
        assert not any("ETA --:--" in line for line in lines)

    drive(app, script)


def test_replay_paths_resolve_and_bad_ones_are_named(real_run, tmp_path):
    _, state_dir = real_run
    stats = state_dir / "stats.jsonl"
    run_folder = state_dir.parent.parent / state_dir.name  # ROOT/RUN_ID next to ROOT/.state/RUN_ID
    assert resolve_stats_file(stats) == stats
    assert resolve_stats_file(state_dir) == stats
    assert resolve_stats_file(run_folder) == stats
    with pytest.raises(SourceError, match="does not exist"):
        resolve_stats_file(tmp_path / "nope")
    with pytest.raises(SourceError, match="no stats.jsonl"):
        resolve_stats_file(tmp_path)
    empty = tmp_path / "stats.jsonl"
    empty.write_text('{"truncated": \n')
    with pytest.raises(SourceError, match="no stats samples"):
        ReplaySource(empty)
    with pytest.raises(SourceError, match="speed"):
        ReplaySource(stats, speed=-1)


def test_replay_of_the_flight_recorder_folder(real_run):
    _, state_dir = real_run
    recorder = state_dir.parent / "recorder"
    source = ReplaySource(recorder, speed=0)
    stats = ReplaySource(state_dir, speed=0)
    assert resolve_stats_file(recorder) == recorder
    # the recorder holds the same samples as stats.jsonl, and the run's events
    assert [s["t"] for s in source.samples] == [s["t"] for s in stats.samples]
    assert any("crashed" in body["message"] for _, body in source.events)
    app = ApplianceApp(source)

    async def script(pilot):
        await wait_until(pilot, lambda: app.model.state == "done", what="the end of the replay")
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "replay recorder sample" in text and "run TUIRUN  DONE" in text
        assert any("crashed" in n.text for n in app.model.alerts)  # in the list (scrolled to the newest rows)

    drive(app, script)
