"""The console against a live control plane: a real ``appliance run`` (its supervisor serves
the control plane), and a control server that goes away and comes back."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

from appliance.control import ControlServer
from tests.tui.conftest import drive, publish_loop, screen_text, wait_until
from tui import ApplianceApp, ConfirmScreen, LiveSource


def start_appliance(root: Path, sock_dir: Path, run_id: str) -> subprocess.Popen:
    """``appliance run`` in its own process, serving its control plane in ``sock_dir``."""
    sets = [
        f'output.root="{root}"', "source.synthetic.tile_size=256", 'edges.raw.policy="block"',
        "source.prerender=false", "source.rate_hz=10", f'control.socket_dir="{sock_dir}"',
    ]
    cmd = [sys.executable, "-m", "appliance", "run", "--run-id", run_id]
    for item in sets:
        cmd += ["--set", item]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_live_stats_appear_pause_resume_and_stop_drains_the_run(tmp_path, sock_dir):
    proc = start_appliance(tmp_path, sock_dir, "LIVE")
    app = ApplianceApp(LiveSource(sock_dir))

    async def confirm(pilot, key):
        await pilot.press(key)
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what=f"the confirmation for {key!r}")
        await pilot.press("y")

    async def script(pilot):
        await wait_until(pilot, lambda: app.connected, timeout=30, what="a connection")
        await wait_until(pilot, lambda: app.model.frames_acquired > 8, timeout=30, what="frames acquired")
        await pilot.pause(0.3)
        text = screen_text(app)
        assert "● LIVE connected to ipc://" in text and "run LIVE  ACQUIRING" in text
        assert "source" in text and "raw" in text and "frames " in text
        assert app.model.config and app.model.config["run"]["cycles"] == 26  # from `status`

        await confirm(pilot, "p")
        await wait_until(pilot, lambda: app.model.state == "paused", what="the paused state")
        assert any(n.text == "pause: acquisition paused" for n in app.model.alerts)  # readable, not a dict
        await confirm(pilot, "r")
        await wait_until(pilot, lambda: app.model.state == "acquiring", what="acquisition to resume")

        # Esc cancels: nothing is sent, the run goes on
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the stop confirmation")
        await pilot.press("escape")
        await pilot.pause(0.5)
        assert app.model.state == "acquiring"

        await confirm(pilot, "s")
        await wait_until(pilot, lambda: any(n.kind == "stopping" for n in app.model.alerts), what="the stopping event")
        # a run stopped before its last frame ends "stopped_early" (appliance.pipeline.RunState)
        await wait_until(pilot, lambda: app.model.state == "stopped_early", timeout=30, what="the run to drain")
        await pilot.pause(0.3)
        assert "STOPPED EARLY" in screen_text(app)

    try:
        drive(app, script)
        assert proc.wait(60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(30)
        proc.stderr.close()
    summary = json.loads((tmp_path / ".state" / "LIVE" / "summary.json").read_text())
    # drained: stopped early, every frame that entered was processed, none dropped (the
    # cycles never acquired are counted incomplete, as a stopped run's are)
    assert 0 < summary["frames_acquired"] < 2 * 26 * 4
    assert summary["frames_dropped"] == 0 and summary["checksum_failures"] == 0


def _publisher(server: ControlServer, sample: dict, stop: threading.Event) -> threading.Thread:
    return publish_loop(server, stop, stats=lambda: {**sample, "t": sample["t"] + 1})


def test_live_source_survives_the_appliance_going_away_and_coming_back(real_run, sock_dir):
    _, state_dir = real_run
    samples = [json.loads(line) for line in (state_dir / "stats.jsonl").read_text().splitlines()]
    first = {**samples[len(samples) // 2], "run_id": "FIRST"}
    second = {**samples[-1], "run_id": "SECOND"}
    source = LiveSource(sock_dir, stale_s=0.5, min_backoff_s=0.1, max_backoff_s=0.4, timeout_s=0.5)
    app = ApplianceApp(source)

    def serve(sample):
        server = ControlServer(handlers={"status": lambda a: dict(sample)}, run_dir_for_sockets=sock_dir)
        server.start()
        stop = threading.Event()
        return server, stop, _publisher(server, sample, stop)

    def shut(server, stop, pub):
        stop.set()
        pub.join()
        server.stop()

    async def script(pilot):
        await wait_until(pilot, lambda: "disconnected" in app.connection, what="'disconnected' with no appliance")
        assert "○ LIVE" in screen_text(app)
        running = serve(first)
        try:
            await wait_until(pilot, lambda: app.connected and app.model.run_id == "FIRST", what="the first appliance")
            assert "● LIVE connected" in screen_text(app)
            running[0].publish("log", {"t": 1.0, "level": "WARNING", "logger": "appliance.stage", "message": "writer slow", "exc": None})
            running[0].publish("alert", {"t": 1.0, "kind": "alert", "message": "ring calls above 75% for 10 s"})
            await wait_until(pilot, lambda: app.model.logs and app.model.alerts, what="a log record and an alert")
            await pilot.pause(0.3)
            text = screen_text(app)
            assert "WARNING stage:" in text and "alert ring calls above 75%" in text
        finally:
            shut(*running)
        await wait_until(pilot, lambda: not app.connected, what="the loss of the appliance")
        await pilot.pause(0.3)
        assert "○ LIVE disconnected" in screen_text(app)
        running = serve(second)
        try:
            await wait_until(pilot, lambda: app.connected and app.model.run_id == "SECOND", what="the restarted appliance")
            await pilot.pause(0.3)
            assert "run SECOND" in screen_text(app)
        finally:
            shut(*running)
        assert source.connections == 2

    drive(app, script)
