"""The run's status line: the pure view of a stats sample, and `appliance run` under a real
pty (the status line at the bottom, log lines above it) and without one (nothing extra)."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from appliance.progress import LiveLine, StatusReporter, describe, status_text
from tests.procs import cli_process

REPO = Path(__file__).resolve().parents[2]


def _sample(t, frames, *, state="acquiring", drops=0, alerts=0):
    return {
        "t": t, "run_id": "R1", "state": state, "frames_acquired": frames, "frames_planned": 2 * 4 * 26,
        "tiles": [1101, 1102], "cycles": 26, "rings": {"raw.0.0": {"drops": drops}, "calls.0.0": {"drops": 0}},
        "alerts": [{"rule": "x"}] * alerts,
    }


def test_phases_frames_rate_cycle_drops_and_eta():
    assert describe(None, now=0).phase == "starting" and status_text(describe({}, now=0)) == "starting"
    pre = describe(_sample(100.0, 0), now=100.0)
    assert pre.phase == "pre-render"
    later = describe(_sample(112.0, 0), pre, now=112.0)
    assert later.phase == "pre-render" and later.phase_s == pytest.approx(12.0)
    assert status_text(later) == "pre-render: run R1, 12 s"
    # the source says how far it got: shown as a fraction
    shown = describe({**_sample(113.0, 0), "prerender": {"done": 52, "total": 208}}, later, now=113.0)
    assert "52/208 frames rendered (25%)" in status_text(shown)
    first = describe(_sample(120.0, 40), later, now=120.0)
    second = describe(_sample(122.0, 80, drops=3, alerts=1), first, now=122.0)
    assert (second.phase, second.frames, second.drops, second.alerts) == ("acquiring", 80, 3, 1)
    assert second.fps == pytest.approx(20.0)  # (80 - 40) frames / 2 s
    assert second.cycle == 80 // 8 + 1 and second.cycles == 26
    assert second.eta_s == pytest.approx((208 - 80) / 20.0)
    assert status_text(second) == "acquiring: run R1, cycle 11/26, 80/208 frames, 20.0 frames/s, 3 drops, 1 alert, ETA 6 s"
    # smoothed: half the old rate, half the new one
    third = describe(_sample(124.0, 100), second, now=124.0)
    assert third.fps == pytest.approx(0.5 * 20.0 + 0.5 * 10.0)
    draining = describe(_sample(125.0, 104, state="draining"), third, now=125.0)
    assert draining.phase == "draining" and draining.eta_s is None and "draining: run R1" in status_text(draining)
    no_prerender = describe(_sample(1.0, 0), now=1.0, prerender=False)
    assert no_prerender.phase == "acquiring"
    off = describe(_sample(130.0, 208, state="done"), draining, now=130.0, phase="offload")
    off2 = describe(_sample(130.0, 208, state="done"), off, now=190.0, phase="offload")
    assert status_text(off2) == "offload: run R1, jobs running for 1 min 00 s"
    assert status_text(describe({"state": "idle", "run_id": "R0"}, now=0)) == "idle: waiting for `ctl start` (last run R0)"


def test_reporter_sends_a_line_per_tick_and_survives_a_failing_source():
    lines = []
    samples = iter([_sample(1.0, 8), _sample(2.0, 16)])
    reporter = StatusReporter(lambda: next(samples), lines.append, period=60.0)
    assert reporter.tick().startswith("acquiring: run R1, cycle 2/26, 8/208 frames")
    assert "8.0 frames/s" in reporter.tick()
    reporter.get_sample = lambda: 1 / 0
    with reporter:  # the thread's first tick raises; it keeps going and stops cleanly
        time.sleep(0.1)
    assert len(lines) == 2
    with pytest.raises(ValueError, match="period must be > 0"):
        StatusReporter(dict, print, period=0)


def test_reporter_samples_faster_than_it_sends_and_sends_a_new_phase_at_once():
    """A 60 s period: the first line, then the next only when the phase changes (the view is
    refreshed on every sample between them, sent or not)."""
    samples = [_sample(0.0, 0), _sample(1.0, 8), _sample(2.0, 16), _sample(3.0, 24), _sample(4.0, 208, state="done")]
    feed = iter(samples)
    last = samples[-1]
    lines = []
    sent = threading.Event()

    def sink(line):
        lines.append(line)
        if line.startswith("done"):
            sent.set()

    with StatusReporter(lambda: next(feed, last), sink, period=60.0, sample_period=0.02):
        assert sent.wait(10), lines
    assert lines[0].startswith("pre-render: run R1")
    assert lines[1].startswith("acquiring: run R1, cycle 2/26, 8/208 frames") and "frames/s" not in lines[1]
    assert lines[2].startswith("done: run R1") and len(lines) == 3, lines
    assert lines[2].startswith("done: run R1, cycle 26/26, 208/208 frames")
    with pytest.raises(ValueError, match="sample_period must be > 0"):
        StatusReporter(dict, print, period=1, sample_period=0)


def _read_pty(fd: int, proc: subprocess.Popen, timeout: float) -> bytes:
    out = bytearray()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other side closed
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return bytes(out)


def test_live_line_keeps_the_status_at_the_bottom_under_a_pty():
    """Log text written around status updates never lands on the status line's row."""
    master, slave = pty.openpty()
    try:
        live = LiveLine(slave, colour=True, width=80)
        live.show("acquiring: 1 frame")
        live.write(b"2026 INFO kernel-0 x: one\n2026 WARNING writer-0 x: two")
        live.write(b" halves\n")
        live.show("acquiring: 2 frames")
        live.close(final="done: 2 frames")
        out = b""
        while select.select([master], [], [], 0.2)[0]:
            out += os.read(master, 65536)
    finally:
        os.close(master)
        os.close(slave)
    text = out.replace(b"\r\n", b"\n").decode()
    assert "\r\033[K2026 INFO kernel-0 x: one\n" in text
    # the warning is coloured whole, and its two halves came out as one line
    assert "\033[33m2026 WARNING writer-0 x: two halves\033[0m\n" in text
    assert "\033[1macquiring: 2 frames\033[0m" in text
    assert text.endswith("\r\033[Kdone: 2 frames\n")


def _run_args(tmp_path: Path) -> list[str]:
    return [
        sys.executable, "-m", "appliance", "-v", "run", "--output", str(tmp_path / "runs"), "--no-offload",
        # 256 px: pre-rendering 48 frames takes longer than the status line's 0.5 s period,
        # so the line shows it (the run state turns prerendering the moment the source starts)
        "--set", "source.synthetic.tile_size=256", "--set", "run.cycles=6", "--set", "source.rate_hz=10",
        "--set", "control.enabled=false",
    ]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "NO_COLOR")}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), TERM="xterm", COLUMNS="120", **extra)
    return env


@pytest.mark.slow
def test_appliance_run_on_a_tty_shows_a_live_status_line(tmp_path):
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # 160 columns
    try:
        with cli_process(_run_args(tmp_path), stdin=slave, stdout=slave, stderr=slave, env=_env(), cwd=tmp_path) as proc:
            os.close(slave)
            slave = -1
            out = _read_pty(master, proc, timeout=600)
            assert proc.wait(timeout=60) == 0, out.decode(errors="replace")[-3000:]
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    text = out.decode(errors="replace").replace("\r\n", "\n")
    statuses = re.findall(r"\r\033\[K\033\[1m([^\033]*)\033\[0m", text)
    phases = [s.split(":")[0] for s in statuses]
    assert "pre-render" in phases and "acquiring" in phases, statuses
    acquiring = [s for s in statuses if s.startswith("acquiring:")]
    assert any(re.search(r"cycle \d+/6, \d+/\d+ frames, [\d.]+ frames/s, \d+ drops?", s) for s in acquiring), acquiring
    assert any("ETA" in s for s in acquiring), acquiring
    # the log and the summary scroll above the line: each starts at column 0 on a cleared row
    assert re.search(r"\r\033\[K[^\n]*INFO [^\n]*pre-rendered \d+ frames", text), text[-3000:]
    for line in text.split("\n"):
        if " INFO " in line:
            assert line.count("\033[1m") == 0 or line.rfind("\033[1m") < line.find(" INFO "), repr(line)
    # the last status line stays on screen, then the summary
    assert re.search(r"\r\033\[K(done|acquiring|draining): run \S+, cycle 6/6", text), statuses[-3:]
    assert (tmp_path / "runs").is_dir()


@pytest.mark.slow
def test_appliance_run_without_a_tty_prints_nothing_extra(tmp_path):
    with cli_process(_run_args(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), cwd=tmp_path) as proc:
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-3000:]
    both = out + err
    assert b"\033[" not in both and b"\r" not in both  # no status line, no colour
    assert b"frames/s" in out  # the summary
