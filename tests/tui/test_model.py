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
