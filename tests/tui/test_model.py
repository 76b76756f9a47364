"""RunModel: rates, position, ETA and resets derived from stats samples."""

from __future__ import annotations

import pytest

from tui._model import RunModel, bar, format_duration, sparkline


def sample(t, acquired, *, run_id="R", state="acquiring", read=None, occupancy=0, restarts=0, alive=True):
    read = acquired if read is None else read
    return {
        "t": t, "run_id": run_id, "state": state, "frames_acquired": acquired, "frames_planned": 80,
        "tiles": [1101, 1102], "cycles": 10,
        "rings": {
            "raw.0.0": {"occupancy": occupancy, "n_slots": 16, "written": acquired, "read": read, "drops": 0},
            "corrected.0.0": {"occupancy": 0, "n_slots": 16, "written": read, "read": read, "drops": 1},
            "corrected.0.1": {"occupancy": 4, "n_slots": 16, "written": 0, "read": 0, "drops": 2},
        },
        "stages": {"source-0": {"alive": alive, "restarts": 0}, "kernel-0": {"alive": True, "restarts": restarts}, "kernel-1": {"alive": False, "restarts": 1}},
    }


def test_rates_position_and_eta():
    m = RunModel()
    for i in range(1, 6):  # 10 frames/s, sampled at 2 Hz; preprocess lags 2 frames behind
        m.update(sample(100 + 0.5 * i, 5 * i, read=max(0, 5 * i - 2), occupancy=2))
    assert m.stages["source"].rate == pytest.approx(10.0)
    assert m.stages["preprocess"].rate == pytest.approx(10.0)
    assert m.acquisition_rate == pytest.approx(10.0)
    assert m.frames_acquired == 25
    # 25 frames of 8 per cycle (2 tiles x 4 channels): cycle 4, first tile
    assert m.position == (4, 1101)
    assert m.eta_s == pytest.approx((80 - 25) / 10.0)
    k = m.stages["kernel"]
    assert (k.replicas, k.alive, k.restarts) == (2, 1, 1)
    c = m.edges["corrected"]
    assert (c.rings, c.occupancy, c.n_slots, c.drops) == (2, 4, 32, 3)
    assert list(m.edges["raw"].history) == [2 / 16] * 5


def test_a_new_run_or_time_going_back_resets_the_history():
    m = RunModel()
    m.update(sample(100, 10))
    m.update(sample(101, 20))
    m.update(sample(102, 0, run_id="OTHER"))
    assert m.samples == 1 and m.run_id == "OTHER" and len(m.edges["raw"].history) == 1
    m.update(sample(50, 0, run_id="OTHER"))
    assert m.samples == 1


def test_done_and_missing_fields():
    m = RunModel()
    m.update(sample(100, 80, state="done"))
    assert m.eta_s == 0.0 and m.position == (10, 1102)
    old = RunModel()  # a stats.jsonl of an older version: no run_id/state/planned/tiles
    old.update({"t": 1.0, "rings": {"raw.0.0": {"occupancy": 1, "n_slots": 4, "written": 7, "read": 6, "drops": 1}}, "stages": {}})
    assert old.frames_acquired == 8 and old.frames_planned is None and old.position is None and old.eta_s is None


def test_events_and_logs():
    m = RunModel(max_notices=2)
    m.add_event("alert", {"t": 1.0, "kind": "alert", "message": "ring raw above 75%"})
    m.add_event("event", {"t": 2.0, "kind": "stopping", "message": "drain requested"})
    m.add_event("event", {"t": 3.0, "kind": "event", "message": "acquisition paused"})
    assert [n.text for n in m.alerts] == ["drain requested", "acquisition paused"]
    m.add_log({"ts": 4.0, "level": "warning", "logger": "appliance.stage", "msg": "slow"})
    assert m.logs[-1].kind == "WARNING" and m.logs[-1].severe and m.logs[-1].text == "stage: slow"
    m.add_log({"t": 5.0, "level": "INFO", "logger": "appliance.supervisor", "message": "rings: 4", "exc": None})
    assert m.logs[-1].t == 5.0 and m.logs[-1].text == "supervisor: rings: 4"


def test_drawing_helpers():
    assert bar(0.5, 4) == "██░░" and bar(0, 3) == "░░░" and bar(2, 2) == "██"
    assert sparkline([0, 1.0], 4) == "  ▁█" and sparkline([0.5] * 10, 3) == "▅▅▅"
    assert format_duration(3725) == "1:02:05" and format_duration(None) == "--:--"


def test_busy_latency_budget_and_finished_stages():
    m = RunModel()
    s = sample(100, 40)
    s["stages"] = {
        "source-0": {"alive": True, "restarts": 0, "busy_fraction": 0.1},
        "kernel-0": {"alive": True, "restarts": 0, "busy_fraction": 0.2, "stage_latency_ms_p99": 120.0, "budget_ms": 250.0},
        "kernel-1": {"alive": True, "restarts": 0, "busy_fraction": 0.6, "stage_latency_ms_p99": 300.0, "budget_ms": 250.0},
    }
    s["e2e_latency_ms_p99"], s["e2e_latency_budget_ms"] = 900.0, 1000.0
    m.update(s)
    k = m.stages["kernel"]
    assert k.busy == pytest.approx(0.4) and k.p99_ms == 300.0 and k.budget_ms == 250.0 and k.over_budget
    assert not m.stages["source"].over_budget and m.e2e_p99_ms == 900.0 and m.e2e_budget_ms == 1000.0
    # a stage down mid-run is not finished (a crash awaiting its restart) ...
    s = sample(101, 40, alive=False)
    m.update(s)
    assert not m.stages["source"].finished
    # ... but once every frame is acquired it is, and so is the next stage with its input drained
    s = sample(102, 80, alive=False)
    s["stages"]["preprocess-0"] = {"alive": False, "restarts": 0}
    s["rings"]["raw.0.0"]["occupancy"] = 0
    m.update(s)
    assert m.stages["source"].finished and m.stages["preprocess"].finished
    s["rings"]["raw.0.0"]["occupancy"] = 3  # frames still in its input: it did not finish, it died
    m.update({**s, "t": 103})
    assert m.stages["source"].finished and not m.stages["preprocess"].finished


# -- the jobs and storage panes' data ------------------------------------------------------------


def _ledger_with_jobs(path, **config):
    """A real ledger: three batch jobs queued, one realtime job held by a permanent failure."""
    from appliance.offload import Ledger, OffloadConfig, RetryPolicy

    led = Ledger(path, config=OffloadConfig(**config), policy=lambda kind: RetryPolicy(2, 1.0, 4.0))
    for i in range(3):
        led.submit("fastq", {"i": i}, priority="batch")
    job = led.submit("align-qc", {"x": 1}, priority="realtime").job
    led.lease(job.id, "w", 10)
    led.fail(job.id, "w", "minimap2 exited 1", transient=False)
    return led, job


def test_jobs_view_of_a_real_ledger(tmp_path):
    from tui._model import JobsView

    led, held = _ledger_with_jobs(tmp_path / "l.sqlite")
    try:
        v = JobsView.from_stats(led.stats())
    finally:
        led.close()
    assert [q.name for q in v.classes] == ["realtime", "batch", "reprocess"]
    rt, batch, _ = v.classes
    assert (batch.depth, batch.held, rt.depth, rt.held) == (3, 0, 0, 1)
    assert batch.oldest_s is not None and batch.oldest_s >= 0 and rt.oldest_s is None
    assert (v.depth, v.running, v.held, v.backpressure, v.refused) == (3, 0, 1, False, 0)
    assert v.failures[0].job == held.id and v.failures[0].state == "held" and "minimap2 exited 1" in v.failures[0].reason
    assert v.executor is None and v.busy_slots is None  # a bare ledger: no executor
    assert v.depth_high == 1000


def test_jobs_view_with_an_executor_and_backpressure():
    from tui._model import JobsView

    v = JobsView.from_stats({
        "classes": {"batch": {"queued": 5, "retrying": 2, "running": 1, "leased": 1, "oldest_queued_age_s": 4000.0}},
        "depth": 7, "oldest_queued_age_s": 4000.0, "running": 2, "held": 0, "recent_failures": [],
        "backpressure": {"active": True, "message": "the oldest waiting job has waited 4000 s", "depth_high": 1000,
                         "oldest_age_s": 3600.0, "refused_here": 2},
        "executor": {"name": "dask", "slots": 4, "free": 1, "running_here": [1, 2, 3]},
        "alerts": [], "errors": ["dispatch: ConnectionError"],
    })
    (b,) = v.classes
    assert (b.depth, b.running, b.retrying) == (7, 2, 2)
    assert v.backpressure and v.backpressure_message.startswith("the oldest") and v.refused == 2
    assert (v.executor, v.slots, v.free, v.busy_slots) == ("dask", 4, 1, 3)
    assert v.oldest_high_s == 3600.0 and v.errors == ("dispatch: ConnectionError",)


def test_jobs_view_shows_each_compute_pool():
    """The orchestrator's ``stats()["pools"]`` rows (appliance.offload.pools.pool_report's
    keys) become the jobs pane's pool lines: used/slots, pending Slurm jobs, backlog, and how
    long a pool with backlog has had no workers."""
    from tui._model import JobsView
    from tui.app import ApplianceApp

    body = {"classes": {}, "backpressure": {"active": False}, "executor": {"name": "pools", "slots": 6, "free": 3},
            "pools": [{"pool": "local", "kind": "local", "classes": ["realtime"], "slots": 2, "used": 1, "free": 1,
                       "pending_jobs": None, "backlog": 0, "starved_s": None},
                      {"pool": "hpc", "kind": "slurm", "classes": ["batch"], "slots": 0, "used": 0, "free": 0,
                       "pending_jobs": 2, "backlog": 7, "starved_s": 640.0}]}
    v = JobsView.from_stats(body)
    assert [(p.name, p.kind, p.used, p.slots, p.pending_jobs, p.backlog) for p in v.pools] == [
        ("local", "local", 1, 2, None, 0), ("hpc", "slurm", 0, 0, 2, 7)]
    text = ApplianceApp._render_queues(v).plain
    assert "pool local    local 1/2 used  backlog 0" in text
    assert "pool hpc      slurm 0/0 used  2 pending  backlog 7  no workers" in text
    with pytest.raises(TypeError, match="pool row"):
        JobsView.from_stats({**body, "pools": [{"kind": "local"}]})


def test_storage_view_of_a_real_manager(tmp_path):
    from tests.appliance.storage.conftest import manager, write_policy
    from tui._model import StorageView

    (tmp_path / "hot").mkdir()
    policy = write_policy(tmp_path / "policy.toml", str(tmp_path / "warm"), str(tmp_path / "cold"))
    with manager(tmp_path / "hot", policy) as mgr:
        stats = mgr.stats()
    v = StorageView.from_stats(stats)
    assert [t.name for t in v.tiers] == ["hot", "warm", "cold"]
    hot = v.tiers[0]
    assert hot.url.endswith("hot") and (hot.bytes, hot.files, hot.corrupt_files) == (0, 0, 0)
    assert hot.free_fraction == pytest.approx(stats["tiers"]["hot"]["free_bytes"] / stats["tiers"]["hot"]["total_bytes"])
    assert v.level == stats["level"] and (v.high, v.critical) == (0.15, 0.05)
    assert v.hot_free_fraction == stats["hot_free_fraction"]
    assert (v.pending_moves, v.verification_failures, v.corrupt_copies, v.last_gc, v.running) == (0, 0, 0, None, False)
    assert not v.damaged


def test_storage_view_of_damage_and_a_remote_tier():
    from tui._model import StorageView

    v = StorageView.from_stats({
        "tiers": {"cold": {"url": "s3://bucket/cold", "bytes": 10, "files": 1, "corrupt_files": 1, "free_bytes": None, "total_bytes": None},
                  "hot": {"url": "/data", "bytes": 20, "files": 2, "corrupt_files": 0, "free_bytes": 1, "total_bytes": 4}},
        "hot_free_fraction": 0.25, "watermarks": {"high": 0.3, "critical": 0.1}, "level": "high",
        "pending_moves": 3, "verification_failures": 1, "corrupt_copies": 1, "bytes_copied": 99,
        "last_gc": 1.7e9, "last_scrub": None, "running": True,
    })
    assert [t.name for t in v.tiers] == ["hot", "cold"] and v.tiers[1].free_fraction is None
    assert v.tiers[0].free_fraction == 0.25 and v.level == "high" and v.damaged and v.last_gc == 1.7e9


@pytest.mark.parametrize("topic, body, problem", [
    ("jobs", ["not", "a", "map"], "not a map"),
    ("jobs", {"classes": {"batch": 3}}, "classes.batch is a int"),
    ("jobs", {"classes": {"batch": {"queued": "many"}}}, "'queued' is 'many', not a number"),
    ("jobs", {"recent_failures": {"job": 1}}, "'recent_failures' is a dict, not a list"),
    ("storage", {"tiers": []}, "'tiers' is a list, not a map"),
    ("storage", {"hot_free_fraction": "full"}, "'hot_free_fraction' is 'full'"),
])
def test_a_malformed_body_is_refused_and_the_last_good_one_kept(topic, body, problem):
    m = RunModel()
    update = m.update_jobs if topic == "jobs" else m.update_storage
    update({}, now=10.0)  # an empty body is a valid one: nothing queued, no tiers
    good = getattr(m, topic)
    with pytest.raises((TypeError, ValueError), match=problem):
        update(body, now=11.0)
    assert getattr(m, topic) is good and problem in m.malformed[topic] and m.age(topic, now=12.0) == 2.0
    update({}, now=13.0)
    assert topic not in m.malformed and m.age(topic, now=13.0) == 0.0


def test_age_and_staleness():
    from tui._model import STALE_S

    m = RunModel()
    assert m.jobs is None and m.age("jobs") is None and not m.stale("jobs")
    m.update_jobs({"classes": {}}, now=100.0)
    m.update({"t": 1.0, "rings": {}, "stages": {}, "run_id": "A"})
    m.update({"t": 2.0, "rings": {}, "stages": {}, "run_id": "B"})  # a new run: the service's figures stay
    assert m.jobs is not None and m.age("jobs", now=103.0) == 3.0
    assert not m.stale("jobs", now=100.0 + STALE_S) and m.stale("jobs", now=100.1 + STALE_S)
    assert m.age("storage", now=103.0) is None


def test_pane_formatting_helpers():
    from tui._model import format_age, format_bytes, gauge

    assert [format_age(s) for s in (None, 0, 42.9, 63, 7800, 3 * 86400 + 4 * 3600)] == ["-", "0s", "42s", "1m03s", "2h10m", "3d04h"]
    assert [format_bytes(n) for n in (None, 0, 512, 1536, 3 * 2**30, 5 * 2**40, 2**52)] == \
        ["-", "0 B", "512 B", "1.5 KiB", "3.0 GiB", "5.0 TiB", "4096.0 TiB"]
    assert gauge(0.5, (0.15, 0.05), 20) == "█│█│██████░░░░░░░░░░"
    assert gauge(0.0, (0.5,), 4) == "░░│░" and gauge(1.0, (), 3) == "███"


def test_the_shown_state_adds_prerendering_and_draining():
    from tui._model import display_state

    kw = dict(frames_planned=80, source_alive=True, prerender=True)
    assert display_state("acquiring", frames_acquired=0, **kw) == "prerendering"
    assert display_state("acquiring", frames_acquired=0, **{**kw, "prerender": None}) == "prerendering"  # no config yet
    assert display_state("acquiring", frames_acquired=0, **{**kw, "prerender": False}) == "acquiring"
    assert display_state("acquiring", frames_acquired=0, **{**kw, "source_alive": False}) == "acquiring"
    assert display_state("acquiring", frames_acquired=5, **kw) == "acquiring"
    assert display_state("acquiring", frames_acquired=80, **kw) == "draining"  # every frame in, not done
    for state in ("paused", "draining", "done"):
        assert display_state(state, frames_acquired=0, **kw) == state
    m = RunModel()
    m.config = {"source": {"kind": "synthetic", "prerender": True}}
    m.update(sample(100, 0))
    assert m.state == "acquiring" and m.shown_state == "prerendering"
    m.config = {"source": {"kind": "genicam", "prerender": True}}  # a camera does not pre-render
    assert m.shown_state == "acquiring"


def test_command_replies_read_as_text():
    from tui._model import format_reply

    assert format_reply("pause", {"paused": True}) == "pause: acquisition paused"
    assert format_reply("resume", {"paused": False}) == "resume: acquisition resumed"
    assert format_reply("stop", {"stopping": True, "run_id": "R1"}) == "stop: draining: acquisition ends, frames in flight are written, run R1"
    assert format_reply("start", {"run_id": "R2"}) == "start: run R2 started"
    assert format_reply("set", {"key": "source.rate_hz", "value": 50.0, "applied": True}) == "set: key source.rate_hz, value 50, applied yes"
    assert format_reply("ping", None) == "ping: done"
    for reply in (format_reply("x", {"a": {"b": [1, 2]}}), format_reply("x", [1, 2])):
        assert "{" not in reply and "[" not in reply


def test_attaching_mid_run_lists_the_active_alerts_and_the_message_replaces_them():
    m = RunModel()
    active = {"rule": "ring_occupancy_high", "subject": "calls.0.0", "severity": "warning", "message": "ring calls.0.0 78% full", "first_seen": 90.0}
    m.update({**sample(100, 10), "alerts": [active]})
    assert len(m.active_alerts) == 1 and [(n.kind, n.text, n.t) for n in m.alerts] == [("alert", "ring calls.0.0 78% full", 90.0)]
    assert m.alerts[0].rule == "ring_occupancy_high" and m.alerts[0].fields["listed"]
    m.update({**sample(101, 12), "alerts": [active]})
    assert len(m.alerts) == 1  # listed once
    m.add_event("alert", {"t": 90.0, "kind": "alert", "message": "ring calls.0.0 78% full", "rule": "ring_occupancy_high", "subject": "calls.0.0"})
    assert len(m.alerts) == 1 and "listed" not in m.alerts[0].fields
    fresh = RunModel()  # the alert seen as it was raised: no second row from the sample
    fresh.add_event("alert", {"t": 99.0, "kind": "alert", "message": "ring calls.0.0 78% full", "rule": "ring_occupancy_high", "subject": "calls.0.0"})
    fresh.update({**sample(100, 10), "alerts": [active]})
    assert len(fresh.alerts) == 1


def test_each_run_keeps_its_own_notices():
    m = RunModel()
    m.add_event("event", {"t": 1.0, "kind": "event", "message": "before any sample"})
    m.update(sample(100, 10, run_id="A"))
    m.add_log({"t": 2.0, "level": "WARNING", "logger": "appliance.stage", "message": "slow", "stage": "writer-0"})
    m.update(sample(200, 0, run_id="B"))
    m.add_event("alert", {"t": 3.0, "kind": "alert", "message": "B's alert"})
    assert [r.run_id for r in m.runs] == ["A", "B"]
    assert [n.text for n in m.alerts] == ["B's alert"] and not m.logs
    a = m.run_notices("A")
    assert [n.text for n in a.alerts] == ["before any sample"] and a.logs[0].fields == {"logger": "appliance.stage", "stage": "writer-0"}
    m.update(sample(300, 0, run_id="A"))  # back to A (a replay of the recorder): its notices come back
    assert [n.text for n in m.alerts] == ["before any sample"]
    for i in range(RunModel.MAX_RUNS + 2):
        m.update(sample(400 + i, 0, run_id=f"R{i}"))
    assert len(m.runs) == RunModel.MAX_RUNS and m.runs[-1].run_id == f"R{RunModel.MAX_RUNS + 1}"


def test_replay_seek_times_parse():
    import time as _time

    from tui._source import format_offset, parse_seek

    start = _time.mktime((2025, 11, 25, 18, 2, 0, 0, 0, -1))  # a local time
    assert parse_seek("+90", start) == start + 90
    assert parse_seek("+1:30", start) == start + 90
    assert parse_seek("+1:00:05", start) == start + 3605
    assert parse_seek("18:05", start) == start + 180
    assert parse_seek("18:05:30", start) == start + 210
    assert parse_seek("00:10", start) == start + 6 * 3600 - 2 * 60 + 10 * 60  # after midnight: the next day
    for bad in ("", "soon", "25:00", "18", "+-1", "1:2:3:4"):
        with pytest.raises(ValueError, match=r"\+SECONDS, \+M:SS or \+H:MM:SS"):
            parse_seek(bad, start)
    assert format_offset(75) == "1:15" and format_offset(3725) == "1:02:05"
