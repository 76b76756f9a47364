"""Snapshot tests (pytest-textual-snapshot) of the console's main screens at 80x24 and 160x48:
a replay (finished, and held at pre-render), a live console connected and after it lost its
appliance, a row opened whole, and the help. The data is fixed (tests/tui/fixed.py), the
console's clock is fixed and the zone is UTC, so a frame holds no clock of its own.

A live screen is fed through the console's input queue (``app.updates``, where its
LiveSource puts what it receives) while the LiveSource itself points at a socket directory
with nothing in it: a real one, a socket path on screen would differ between runs.

After a deliberate change of a screen: ``pytest tests/tui/test_snapshots.py --snapshot-update``
and review the SVGs in tests/tui/__snapshots__/ (open them in a browser)."""

from __future__ import annotations

import os
import time

import pytest

from tests.tui import fixed
from tests.tui.conftest import wait_until
from tui import ApplianceApp, LiveSource, ReplaySource, Update
from tui.app import NoticeList, NoticeScreen

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((160, 48), id="160x48")]
NOWHERE = "/nonexistent-tui-snapshot"  # no appliance there: the source says disconnected and waits


@pytest.fixture(autouse=True)
def utc():
    """Times on screen in UTC, whatever the machine's zone."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def _replay(tmp_path, **kw):
    source = ReplaySource(fixed.write_run(tmp_path), **kw)
    return source, ApplianceApp(source, clock=fixed.FixedClock(fixed.T0 + 30))


async def _settle(pilot):
    await pilot.pause(0.6)  # a few redraw ticks: everything queued is on screen


async def _done(pilot):
    await wait_until(pilot, lambda: pilot.app.model.state == "done", what="the end of the replay")
    await _settle(pilot)


@pytest.mark.parametrize("size", SIZES)
def test_replay_finished(snap_compare, tmp_path, size):
    _, app = _replay(tmp_path, speed=0)
    assert snap_compare(app, terminal_size=size, run_before=_done)


def test_replay_held_while_prerendering(snap_compare, tmp_path):
    source, app = _replay(tmp_path, speed=1)
    source.paused = True
    # up to the third sample: the source renders its frames, none acquired yet
    source.seek(1 + next(i for i, (_, body) in enumerate(source.timeline) if body is source.samples[2]))

    async def before(pilot):
        await wait_until(pilot, lambda: app.model.samples == 3 and "paused" in app.connection, what="three samples")
        await _settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)


def _live(clock):
    return ApplianceApp(LiveSource(NOWHERE, min_backoff_s=1000, max_backoff_s=1000), clock=clock)


async def _feed(pilot, samples=30):
    """A connection to the fixed run: its first events, samples and log records."""
    app = pilot.app
    await wait_until(pilot, lambda: "disconnected" in app.connection, what="the source's first try")
    app.updates.put(Update("status", text="connected to ipc:///run/appliance/control.sock", connected=True))
    app.updates.put(Update("config", body={"source": {"kind": "synthetic", "prerender": True}}))
    for topic, body in fixed.events()[:2]:
        app.updates.put(Update(topic, body=body))
    for s in fixed.samples()[:samples]:
        app.updates.put(Update("stats", body=s))
    for record in fixed.logs():
        app.updates.put(Update("log", body=record))
    await wait_until(pilot, lambda: app.model.samples == samples, what="the samples")
    await _settle(pilot)


@pytest.mark.parametrize("size", SIZES)
def test_live_connected(snap_compare, size):
    app = _live(fixed.FixedClock(fixed.T0 + 15))
    assert snap_compare(app, terminal_size=size, run_before=_feed)


@pytest.mark.parametrize("size", SIZES)
def test_live_disconnected(snap_compare, size):
    clock = fixed.FixedClock(fixed.T0 + 15)
    app = _live(clock)

    async def before(pilot):
        await _feed(pilot)
        # as LiveSource reports a loss: the reason, and when it tries again
        app.updates.put(Update("status", text="disconnected (no answer to ping: the appliance went away)", retry_s=4.0))
        clock.now += 12  # 12 s without a message
        await _settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=before)


def test_an_alert_opened_whole(snap_compare, tmp_path):
    _, app = _replay(tmp_path, speed=0)

    async def before(pilot):
        await _done(pilot)
        lst = app.query_one("#alerts", NoticeList)
        lst.focus()
        lst.highlighted = next(i for i, n in enumerate(lst.notices) if n.rule == "stage_over_budget")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, NoticeScreen), what="the notice")
        await _settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)


def test_help_live(snap_compare):
    app = _live(fixed.FixedClock(fixed.T0))

    async def before(pilot):
        await wait_until(pilot, lambda: "disconnected" in app.connection, what="the source's first try")
        await pilot.press("question_mark")
        await _settle(pilot)

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)
