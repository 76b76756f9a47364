"""The jobs and storage panes against a real control server publishing a real ledger's and a real
storage manager's stats, switched with their keys; and what they say when nothing arrives."""

from __future__ import annotations

import json
import re
import threading

import pytest

from appliance.control import ControlServer
from tests.appliance.storage.conftest import manager, write_policy
from tests.tui.conftest import drive, publish_loop, screen_lines, screen_text, wait_until
from tests.tui.test_model import _ledger_with_jobs
from tui import ApplianceApp, LiveSource
from tui._model import JobsView, StorageView


def _fits(lines):
    assert len(lines) <= 24 and all(len(line) <= 80 for line in lines), "\n".join(lines)


def _styles(text, needle):
    """The styles of the spans that cover ``needle`` in a rendered Text."""
    start = text.plain.index(needle)
    return {str(s.style) for s in text.spans if s.start <= start < s.end}


@pytest.fixture
def served(tmp_path, sock_dir, real_run):
    """A control server in ``sock_dir`` publishing a stats sample of the real run, the jobs of
    a real ledger (3 batch jobs queued, 1 held; backpressure at 3) and a real storage manager's
    stats (hot, warm, cold over tmp dirs; watermarks at 0.99 so the hot tier is below them):
    ``(ledger, manager, stop)``; set ``stop`` to end the publishing early."""
    _, state_dir = real_run
    sample = json.loads((state_dir / "stats.jsonl").read_text().splitlines()[-1])
    led, _ = _ledger_with_jobs(tmp_path / "ledger.sqlite", depth_high=3)
    (tmp_path / "hot").mkdir()
    policy = write_policy(tmp_path / "policy.toml", str(tmp_path / "warm"), str(tmp_path / "cold"))
    mgr = manager(tmp_path / "hot", policy, policy={"high": 0.99, "critical": 0.99})
    server = ControlServer(handlers={"status": lambda a: dict(sample)}, run_dir_for_sockets=sock_dir)
    server.start()
    stop = threading.Event()
    pub = publish_loop(server, stop, stats=lambda: sample, jobs=led.stats, storage=mgr.stats)
    try:
        yield led, mgr, stop
    finally:
        stop.set()
        pub.join()
        server.stop()
        mgr.close()
        led.close()


def test_jobs_and_storage_panes_switch_with_their_keys_and_fit_80x24(served, sock_dir, monkeypatch):
    led, mgr, stop = served
    app = ApplianceApp(LiveSource(sock_dir))

    async def script(pilot):
        await wait_until(pilot, lambda: app.model.jobs is not None and app.model.storage is not None and app.model.samples,
                         what="jobs, storage and stats")
        text = screen_text(app)
        assert "─ Alerts & events" in text and "j jobs  t storage" in text and "─ Jobs ─" not in text

        await pilot.press("j")
        await wait_until(pilot, lambda: "─ Jobs ─" in screen_text(app), what="the jobs pane")
        await pilot.pause(0.2)
        lines = screen_lines(app)
        _fits(lines)
        text = "\n".join(lines)
        assert "─ Pipeline ─" in text and "─ Job failures ─" in text and "Alerts & events" not in text
        row = {line.split("│")[1].split()[0]: line.split("│")[1].split() for line in lines
               if line.startswith("│") and line.split("│")[1].split()[:1] in (["realtime"], ["batch"], ["reprocess"])}
        assert row["batch"][1] == "3" and row["realtime"][4] == "1"  # depth 3 batch, 1 realtime held
        assert "BACKPRESSURE depth 3 >= 3" in text  # the ledger's watermark is 3
        assert "ledger depth 3 jobs" in text  # its message heads the failures panel
        assert "held 1" in text
        await wait_until(pilot, lambda: "align-qc held" in screen_text(app), what="the held job under the message")
        assert re.search(r"e events( \(\d+ alerts?\))?  t storage", text)  # the run's active alerts counted, if any

        await pilot.press("t")
        await wait_until(pilot, lambda: "─ Storage ─" in screen_text(app), what="the storage pane")
        await pilot.pause(0.2)
        lines = screen_lines(app)
        _fits(lines)
        text = "\n".join(lines)
        shown = re.search(r"│hot free +(\d+)% \S{20} (OK|HIGH|CRITICAL) ", text)
        stats = mgr.stats()  # the disk is shared: its free space moves a little meanwhile
        assert shown and abs(int(shown[1]) - 100 * stats["hot_free_fraction"]) <= 2, text
        assert shown[2] == app.model.storage.level.upper() and "(high <99%, critical <99%)" in text
        for tier in ("hot", "warm", "cold"):
            assert any(line.startswith(f"│{tier} ") and "0 files" in line for line in lines), tier
        assert "pending moves 0  verify failures 0  corrupt copies 0  copied 0 B" in text
        assert "last gc never  last scrub never  tierer stopped" in text  # this manager was not started

        # the publisher goes quiet: the pane says how old its figures are
        monkeypatch.setattr("tui._model.STALE_S", 0.5)
        stop.set()
        await wait_until(pilot, lambda: "─ Storage (stale: " in screen_text(app), what="the stale storage title")
        assert app.query_one("#storage").has_class("stale")

        await pilot.press("e")
        await wait_until(pilot, lambda: "─ Alerts & events" in screen_text(app), what="the events view")
        assert app.view == "events"

    drive(app, script)


def test_panes_say_so_when_the_topics_never_arrive(real_run, sock_dir):
    _, state_dir = real_run
    sample = json.loads((state_dir / "stats.jsonl").read_text().splitlines()[-1])
    server = ControlServer(handlers={"status": lambda a: dict(sample)}, run_dir_for_sockets=sock_dir)
    server.start()
    stop = threading.Event()
    pub = publish_loop(server, stop, stats=lambda: sample)
    app = ApplianceApp(LiveSource(sock_dir))

    async def script(pilot):
        await wait_until(pilot, lambda: app.connected and app.model.samples, what="the stats")
        await pilot.press("j")
        await wait_until(pilot, lambda: "no job stats: offload is off or the" in screen_text(app), what="the missing jobs note")
        assert "appliance does not publish them" in screen_text(app)  # wrapped in the narrow pane
        await pilot.press("t")
        await wait_until(pilot, lambda: "no storage stats: storage is off or the appliance does not publish them"
                         in screen_text(app), what="the missing storage note")

    try:
        drive(app, script)
    finally:
        stop.set()
        pub.join()
        server.stop()


def test_a_malformed_jobs_message_is_noted_once_and_the_last_good_one_kept(tmp_path, sock_dir):
    led, _ = _ledger_with_jobs(tmp_path / "ledger.sqlite")
    good = led.stats()
    led.close()
    server = ControlServer(handlers={"status": lambda a: {}}, run_dir_for_sockets=sock_dir)
    server.start()
    bad = threading.Event()
    stop = threading.Event()
    pub = publish_loop(server, stop, jobs=lambda: {"classes": {"batch": "three"}} if bad.is_set() else good)
    app = ApplianceApp(LiveSource(sock_dir))

    async def script(pilot):
        await pilot.press("j")
        await wait_until(pilot, lambda: app.model.jobs is not None, what="a good jobs message")
        bad.set()
        await wait_until(pilot, lambda: "jobs" in app.model.malformed, what="the malformed message")
        await pilot.pause(1.0)  # ten more of them
        notes = [n.text for n in app.model.alerts if "ignored a jobs message" in n.text]
        assert notes == ["ignored a jobs message: TypeError: jobs: classes.batch is a str, not a map"]
        await wait_until(pilot, lambda: "─ Jobs (last message malformed) ─" in screen_text(app), what="the title")
        assert "align-qc held" in screen_text(app)  # the last good figures are still shown

    try:
        drive(app, script)
    finally:
        stop.set()
        pub.join()
        server.stop()


def test_warnings_are_drawn_in_red():
    jobs = JobsView.from_stats({
        "classes": {"batch": {"queued": 1200, "held": 2}}, "depth": 1200, "held": 2,
        "backpressure": {"active": True, "message": "ledger depth 1200 jobs ...", "depth_high": 1000, "oldest_age_s": 3600},
    })
    t = ApplianceApp._render_queues(jobs)
    assert "BACKPRESSURE depth 1200 >= 1000" in t.plain and "bold red" in _styles(t, "BACKPRESSURE")
    f = ApplianceApp._render_failures(jobs, lines=5, width=30)
    assert f.plain.startswith("ledger depth 1200 jobs ...") and "red" in _styles(f, "ledger depth")

    storage = {"tiers": {"hot": {"url": "/d", "bytes": 1, "files": 1, "corrupt_files": 0, "free_bytes": 1, "total_bytes": 100}},
               "hot_free_fraction": 0.01, "watermarks": {"high": 0.15, "critical": 0.05}, "level": "critical",
               "pending_moves": 0, "verification_failures": 0, "corrupt_copies": 0, "bytes_copied": 0, "running": True}
    t = ApplianceApp._render_storage(StorageView.from_stats(storage), 76)
    assert "bold red" in _styles(t, "CRITICAL") and "bold red" in _styles(t, "▎│░")  # the gauge, colored by level
    assert "bold red" not in _styles(t, "verify failures") and "bold red" not in _styles(t, "corrupt copies")
    t = ApplianceApp._render_storage(StorageView.from_stats({**storage, "level": "ok", "hot_free_fraction": 0.5,
                                                             "verification_failures": 1, "corrupt_copies": 2}), 76)
    assert "green" in _styles(t, "OK") and "green" in _styles(t, "█")
    assert "bold red" in _styles(t, "verify failures 1") and "bold red" in _styles(t, "corrupt copies 2")
    assert "held" not in t.plain
    t = ApplianceApp._render_storage(StorageView.from_stats({**storage, "corrupt_copies": 2, "held_copies": 2}), 76)
    assert "bold red" in _styles(t, "(2 held: storage verify RUN)")
