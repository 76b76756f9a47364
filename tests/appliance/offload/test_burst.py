"""The burst policy as a pure function over traces: bursts only when an SLO is threatened, stays in
budget (and alerts when it is reached), does not flap, never sends reprocess work by default,
prefers the smallest inputs per CPU-hour; the simulation and the CLI over a synthetic day."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from appliance.commands import jobs as jobs_cmd
from appliance.config import ConfigError
from appliance.offload.burst import (
    GB,
    BurstConfig,
    BurstInputs,
    BurstState,
    WaitingJob,
    compare,
    decide,
    load_burst,
    read_log,
    simulate,
    synthetic_trace,
)

CFG = BurstConfig(daily_budget=50.0, core_hour_price=0.05, egress_per_gb=0.09, slot_cores=8, max_slots=8,
                  min_dwell_s=900.0)


def batch(i: int, age: float, cpu_h: float = 16.0, gb: float = 20.0, cls: str = "batch") -> WaitingJob:
    return WaitingJob(i, cls, age, cpu_h, int(gb * GB), 8)


def test_no_burst_while_the_local_pools_drain_in_time():
    d = decide(BurstInputs(0.0, (batch(1, 600), batch(2, 60)), local_cores=24.0), BurstState(), CFG)
    assert d.slots == 0 and d.classes == () and "no class is threatened" in d.reason
    assert d.per_class["batch"]["threatened"] is False


def test_a_threatened_class_bursts_with_enough_slots_and_the_reason_says_why():
    waiting = tuple(batch(i, 3600, cpu_h=16.0) for i in range(10))  # 160 CPU-h behind 1 h of waiting
    d = decide(BurstInputs(0.0, waiting, local_cores=16.0), BurstState(), CFG)
    assert d.classes == ("batch",) and d.slots >= 1
    # enough cloud cores that the backlog drains inside what is left of the SLO
    left_h = (CFG.slo_s["batch"] - 3600) / 3600
    assert 16.0 + d.slots * CFG.slot_cores >= 160 / left_h or d.slots == CFG.max_slots
    assert "batch: projected" in d.reason and "burst" in d.reason
    rec = d.log_record(BurstInputs(0.0, waiting, local_cores=16.0))
    assert rec["inputs"]["waiting"]["batch"]["jobs"] == 10 and rec["reason"] == d.reason
    json.dumps(rec)  # a log line


def test_running_work_on_the_local_pools_counts_toward_the_projection():
    """Non-preemptive pools: a real-time job waits for the running batch work."""
    rt = WaitingJob(1, "realtime", 60.0, 0.1, int(0.2 * GB), 1)
    idle = decide(BurstInputs(0.0, (rt,), local_cores=16.0), BurstState(), CFG)
    busy = decide(BurstInputs(0.0, (rt,), local_cores=16.0, running_core_hours=32.0), BurstState(), CFG)
    assert idle.slots == 0 and busy.classes == ("realtime",) and busy.jobs == (1,)


def test_reprocess_never_bursts_unless_configured():
    waiting = tuple(batch(i, 20 * 3600, cpu_h=40.0, cls="reprocess") for i in range(6))
    inp = BurstInputs(0.0, waiting, local_cores=8.0)
    d = decide(inp, BurstState(), CFG)
    assert d.per_class["reprocess"]["threatened"] and d.slots == 0 and not d.jobs
    assert "never bursts (burst.allow_reprocess = false)" in d.reason
    d2 = decide(inp, BurstState(), replace(CFG, allow_reprocess=True))
    assert d2.classes == ("reprocess",) and d2.slots >= 1


def test_prefers_the_smallest_inputs_per_cpu_hour():
    waiting = (batch(1, 3 * 3600, cpu_h=10, gb=50), batch(2, 3 * 3600, cpu_h=10, gb=5), batch(3, 3 * 3600, cpu_h=20, gb=20))
    d = decide(BurstInputs(0.0, waiting, local_cores=4.0), BurstState(), replace(CFG, max_slots=2))
    assert d.jobs == (2, 3)  # 0.5 and 1 GB per CPU-hour before 5 GB per CPU-hour


def test_budget_reached_stops_asking_and_alerts_once_then_clears_next_day():
    waiting = tuple(batch(i, 3 * 3600) for i in range(8))
    spent = CFG.daily_budget
    d1 = decide(BurstInputs(0.0, waiting, local_cores=8.0, spent_today=spent), BurstState(), CFG)
    assert d1.slots == 0 and d1.jobs == () and "daily budget reached" in d1.reason
    assert [a["action"] for a in d1.alerts] == ["raised"] and d1.alerts[0]["rule"] == "burst_budget"
    d2 = decide(BurstInputs(60.0, waiting, local_cores=8.0, spent_today=spent), d1.state, CFG)
    assert d2.slots == 0 and d2.alerts == ()  # raised once, not every tick
    d3 = decide(BurstInputs(86400.0, waiting, local_cores=8.0, spent_today=0.0, day=1), d2.state, CFG)
    assert [a["action"] for a in d3.alerts] == ["cleared"] and d3.slots >= 1


def test_the_jobs_sent_fit_in_the_remaining_budget():
    waiting = tuple(batch(i, 3 * 3600, cpu_h=16, gb=20) for i in range(8))  # 2.60 each
    d = decide(BurstInputs(0.0, waiting, local_cores=4.0, spent_today=CFG.daily_budget - 6.0), BurstState(), CFG)
    per_job = 16 * CFG.core_hour_price + 20 * CFG.egress_per_gb
    assert len(d.jobs) == int(6.0 // per_job) and d.estimated_cost <= 6.0


def test_hysteresis_and_dwell_no_flapping_on_a_load_that_hovers_at_the_threshold():
    """A backlog oscillating around the entry threshold: the policy enters once and stays until
    the load is well below it and the dwell is over."""
    cfg = CFG
    state = BurstState()
    changes = []
    slots_prev = 0
    for step in range(240):  # 4 h in minutes
        t = step * 60.0
        # projected = age + 40 CPU-h / 16 cores (2.5 h); age hovers 0.5 to 1.0 h: 0.75 to 0.875 x SLO
        age = 1800 + 1800 * ((step // 5) % 2) if step < 180 else 0.0
        waiting = (batch(1, age, cpu_h=20), batch(2, age / 2, cpu_h=20)) if step < 180 else ()
        d = decide(BurstInputs(t, waiting, local_cores=16.0), state, cfg)
        if (d.slots > 0) != (slots_prev > 0):
            changes.append((t, d.slots))
        slots_prev, state = d.slots, d.state
    assert len(changes) == 2, changes  # on once, off once
    on, off = changes
    assert on[1] > 0 and off[1] == 0 and off[0] - on[0] >= cfg.min_dwell_s


def test_slots_go_down_only_after_the_dwell():
    big = tuple(batch(i, 3 * 3600) for i in range(8))
    d1 = decide(BurstInputs(0.0, big, local_cores=8.0), BurstState(), CFG)
    d2 = decide(BurstInputs(300.0, big[:2], local_cores=8.0), d1.state, CFG)
    assert d1.slots > 2 and d2.slots == d1.slots
    d3 = decide(BurstInputs(1200.0, big[:2], local_cores=8.0), d2.state, CFG)
    assert d3.slots < d1.slots


def test_config_is_validated_naming_the_key():
    assert load_burst({"daily_budget": 20, "slo_s": {"batch": 7200}}).slo_s["batch"] == 7200.0
    for bad, key in (({"daily_budget": -1}, "burst.daily_budget"), ({"slo_s": {"nope": 1}}, "burst.slo_s"),
                     ({"exit_ratio": 0.9}, "burst.exit_ratio"), ({"colour": 1}, "burst.colour"),
                     ({"allow_reprocess": "yes"}, "burst.allow_reprocess"), ({"slot_cores": 0}, "burst.slot_cores")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_burst(bad)


def test_simulation_of_a_day_the_policy_beats_never_and_costs_less_than_at_once():
    trace = synthetic_trace(instruments=6, seed=1)
    r = compare(trace, CFG)
    miss = {k: sum(r[k]["slo_misses"].values()) for k in ("policy", "never", "at_once")}
    assert miss["never"] > 0, "the synthetic day should overload the local pools"
    assert miss["policy"] < miss["never"]
    assert r["policy"]["cost"] < r["at_once"]["cost"]
    assert r["policy"]["cost"] <= CFG.daily_budget and r["never"]["cost"] == 0
    assert r["policy"]["egress_gb"] < r["at_once"]["egress_gb"]
    tight = simulate(trace, replace(CFG, daily_budget=1.0), "policy")
    assert tight["cost"] <= 1.0 + CFG.slot_cores * CFG.max_slots * CFG.core_hour_price * trace["step_s"] / 3600 * 2


def test_cli_trace_simulate_and_explain(tmp_path, capsys):
    from appliance.cli import main

    assert main(["jobs", "burst", "trace", "--instruments", "3", "--seed", "2"]) == 0
    trace = json.loads(capsys.readouterr().out)
    assert trace["instruments"] == 3 and trace["jobs"]
    path = tmp_path / "day.json"
    path.write_text(json.dumps(trace))
    log = tmp_path / "decisions.jsonl"
    policy = tmp_path / "policy.toml"
    policy.write_text("[burst]\ndaily_budget = 25.0\n[burst.slo_s]\nbatch = 10800\n")
    assert main(["jobs", "burst", "simulate", str(path), "--policy", str(policy), "--decision-log", str(log), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["config"]["daily_budget"] == 25.0 and set(out) >= {"policy", "never", "at_once"}
    assert len(read_log(log, 10_000)) == out["decisions"] > 0
    assert main(["jobs", "burst", "--explain", "--decision-log", str(log)]) == 0
    text = capsys.readouterr().out
    assert "inputs:" in text and "slots=" in text
    assert main(["jobs", "burst", "simulate"]) == jobs_cmd.EXIT_USAGE
    assert "appliance jobs burst trace" in capsys.readouterr().err
    policy.write_text("[burst]\nmax_slots = -3\n")
    assert main(["jobs", "burst", "simulate", str(path), "--policy", str(policy), "--decision-log", str(log)]) == 2
    assert "burst.max_slots" in capsys.readouterr().err


def test_simulate_draws_its_plot_and_keeps_the_live_decision_log(tmp_path, capsys):
    """``--plot`` writes a PNG of the three modes' timelines; a simulation without
    ``--decision-log`` writes burst-simulation.jsonl and leaves the live decision log alone."""
    from appliance.cli import main
    from appliance.offload.burst import BurstConfig, compare, synthetic_trace

    trace = synthetic_trace(2, 6.0, seed=1)
    timelines: dict = {}
    result = compare(trace, BurstConfig(), None, timelines)
    assert set(timelines) == {"policy", "never", "at_once"}
    for mode, tl in timelines.items():
        assert tl[0]["t"] == 0 and all(b["t"] - a["t"] >= 600 for a, b in zip(tl, tl[1:]))
        assert tl[-1]["spent"] == pytest.approx(result[mode]["cost"], abs=0.5)
    assert max(p["slots"] for p in timelines["never"]) == 0
    path = tmp_path / "day.json"
    path.write_text(json.dumps(trace))
    live = tmp_path / ".offload" / "burst-decisions.jsonl"
    live.parent.mkdir()
    live.write_text('{"live": 1}\n')
    png = tmp_path / "sim.png"
    assert main(["jobs", "burst", "simulate", str(path), "--root", str(tmp_path), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert f"plot: {png}" in out and "burst-simulation.jsonl" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    assert live.read_text() == '{"live": 1}\n'
    assert (tmp_path / ".offload" / "burst-simulation.jsonl").stat().st_size > 0
