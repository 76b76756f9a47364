"""Fixtures for the TUI tests: a real run's stats.jsonl, screen text, a pilot driver, and a
check that no test leaves a thread behind."""

from __future__ import annotations

import asyncio
import html
import re
import shutil
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from tests.runs import small_run_config

SIZE = (80, 24)


def run_config(root: Path, *extra: str):
    """A small real run as tests/appliance/pipeline does it, at the camera's default rate."""
    return small_run_config(root, "source.rate_hz=20", *extra)


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    """``(summary, state dir)`` of a real ~5 s run (2 tiles x 8 cycles at 20 frames/s) in
    which preprocess-0 is killed once mid-run (a restart and an alert to show), whose
    stats.jsonl and flight recorder the replay tests play back."""
    from appliance.pipeline import Supervisor

    root = tmp_path_factory.mktemp("tui-run")
    sup = Supervisor(run_config(root, "run.cycles=8", "control.enabled=false"), run_id="TUIRUN", faults={"preprocess-0": {"kill_after": 20}})
    summary = sup.run()
    return summary, sup.state_dir


@pytest.fixture(autouse=True)
def _no_leaked_threads(no_leaked_threads):
    """Fail a test that leaves a thread running (source threads, servers, supervisors)."""
    yield


@pytest.fixture
def sock_dir():
    """A short socket directory (Unix socket paths are limited to 107 bytes), removed after."""
    parent = Path(tempfile.mkdtemp(prefix="tui-", dir="/tmp"))
    yield parent / "sock"
    shutil.rmtree(parent, ignore_errors=True)


def publish_loop(server, stop: threading.Event, period_s: float = 0.1, **producers) -> threading.Thread:
    """A thread publishing ``producers[topic]()`` on each topic every ``period_s`` until
    ``stop`` is set (join it after setting ``stop``)."""

    def loop():
        while not stop.wait(period_s):
            for topic, produce in producers.items():
                server.publish(topic, produce())

    t = threading.Thread(target=loop, name="publisher")
    t.start()
    return t


def screen_lines(app) -> list[str]:
    """The text of the app's screen as exported to SVG (what a snapshot test compares),
    one string per non-empty screen line."""
    lines: dict[int, str] = defaultdict(str)
    svg = app.export_screenshot()
    for m in re.finditer(r'<text[^>]*clip-path="url\(#[^)]*-line-(\d+)\)"[^>]*>(.*?)</text>', svg, re.S):
        lines[int(m.group(1))] += html.unescape(m.group(2)).replace("\xa0", " ").replace("\n", "")
    return [lines[i] for i in sorted(lines) if lines[i].strip()]


def screen_text(app) -> str:
    return "\n".join(screen_lines(app))


def drive(app, script, size=SIZE):
    """Run ``await script(pilot)`` under Textual's test pilot (no pytest-asyncio needed)."""

    async def main():
        async with app.run_test(size=size) as pilot:
            await script(pilot)

    asyncio.run(main())


async def wait_until(pilot, predicate, timeout=30.0, what="condition"):
    """Let the app run until ``predicate()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}\nscreen:\n{screen_text(pilot.app)}")
        await pilot.pause(0.05)
