"""The simulated lab: the pure figures over recorded jobs, and a real simulation of two
instruments (real `appliance serve` processes) against a private PostgreSQL server that goes
down mid-run, with one executor pool (`appliance jobs work --no-scan`)."""

from __future__ import annotations

import json

import psutil
import pytest

from appliance.labsim import (SimSettings, expected_jobs, format_result, instrument_overrides, parse_weight, summarize,
                              worker_overrides)


def _job(i, inst, kind, run, *, cycle=None, state="succeeded", created=0.0, started=1.0, finished=2.0, priority="realtime"):
    params = {"run": run, **({"cycle": cycle} if cycle else {})}
    return {"id": i, "instrument_id": inst, "kind": kind, "params": params, "state": state, "priority": priority,
            "created_at": created, "started_at": started, "finished_at": finished}


def test_summarize_gives_throughput_waits_fairness_and_exactly_once():
    runs = {"SIM01": [{"run_id": "A1", "frames_acquired": 32, "frames_dropped": 0, "run_complete": True, "cycles_complete": 2}],
            "SIM02": [{"run_id": "B1", "frames_acquired": 32, "frames_dropped": 1, "run_complete": False, "cycles_complete": 1}]}
    jobs = [
        _job(1, "SIM01", "cycle-qc", "A1", cycle=1, created=10, started=11, finished=12),
        _job(2, "SIM01", "cycle-qc", "A1", cycle=2, created=10, started=13, finished=14),
        _job(3, "SIM01", "fastq", "A1", created=10, started=12, finished=20, priority="batch"),
        _job(4, "SIM01", "align-qc", "A1", created=10, started=21, finished=30, priority="batch"),
        _job(5, "SIM02", "cycle-qc", "B1", cycle=1, created=10, started=10.5, finished=11),
    ]
    r = summarize(jobs, runs, t0=10.0, t1=30.0)
    assert r["instruments"]["SIM01"]["jobs_succeeded"] == 4 and r["instruments"]["SIM02"]["jobs_succeeded"] == 1
    assert r["span_s"] == pytest.approx(20.0)
    assert r["instruments"]["SIM01"]["jobs_per_s"] == pytest.approx(4 / 20)
    assert r["fairness"] == pytest.approx(4.0)  # max/min jobs/s
    assert r["total"]["frames_dropped"] == 1
    assert r["wait_s"]["realtime"]["n"] == 3 and r["wait_s"]["realtime"]["p50"] == pytest.approx(1.0)
    assert r["wait_s"]["batch"]["p99"] == pytest.approx(2 + 0.99 * 9)
    assert r["exactly_once"]["ok"]
    assert r["completions"]["SIM01"] == [2.0, 4.0, 10.0, 20.0]
    # one job missing, one submitted twice: said, by name
    broken = summarize(jobs[1:] + [_job(6, "SIM02", "cycle-qc", "B1", cycle=1)], runs, t0=10.0, t1=30.0)
    once = broken["exactly_once"]
    assert not once["ok"] and once["missing"] == ["A1 cycle-qc cycle 1"] and once["duplicated"] == ["B1 cycle-qc cycle 1"]
    text = format_result(broken)
    assert "NOT exactly once: 1 missing (A1 cycle-qc cycle 1), 1 duplicated (B1 cycle-qc cycle 1)" in text
    # an instrument that finished nothing: fairness is not a number
    assert summarize(jobs[:4], runs, t0=10.0, t1=30.0)["fairness"] is None


def test_expected_jobs_and_the_instruments_overrides(tmp_path):
    assert expected_jobs({"cycles_complete": 3, "run_complete": False}) == {("cycle-qc", 1): 1, ("cycle-qc", 2): 1, ("cycle-qc", 3): 1}
    assert set(expected_jobs({"cycles_complete": 1, "run_complete": True})) == {("cycle-qc", 1), ("fastq", None), ("align-qc", None)}
    o = instrument_overrides(SimSettings(), "SIM03", tmp_path / "lab", tmp_path, "postgresql:///x?host=/tmp")
    assert 'run.instrument_id="SIM03"' in o and "offload.dispatch=false" in o and 'offload.scan_runs="own"' in o
    from appliance.config import load_config

    cfg = load_config(overrides=o)  # every override is a valid key
    assert cfg.offload.dispatch is False and cfg.offload.scan_runs == "own" and cfg.run.instrument_id == "SIM03"
    with pytest.raises(ValueError, match="--instruments 0"):
        SimSettings(instruments=0).check()
    with pytest.raises(ValueError, match="--ledger-down"):
        SimSettings(ledger_down_s=5).check()


def test_weights_reach_the_pool_and_the_report_gives_each_instruments_share(tmp_path):
    from appliance.config import load_config

    s = SimSettings(instruments=2, workers=1, weights=(parse_weight("SIM01=2"),))
    s.check()
    assert s.weight("SIM01") == 2.0 and s.weight("SIM02") == 1.0
    cfg = load_config(overrides=worker_overrides(s, tmp_path / "lab", "postgresql:///x?host=/tmp"))
    assert cfg.offload.instrument_weights == {"SIM01": 2.0}
    assert load_config(overrides=worker_overrides(SimSettings(), tmp_path, "postgresql:///x")).offload.instrument_weights == {}
    runs = {n: [{"run_id": f"{n}-1", "frames_acquired": 32, "frames_dropped": 0, "run_complete": False, "cycles_complete": 0}]
            for n in ("SIM01", "SIM02")}
    jobs = [_job(i, "SIM01" if i <= 6 else "SIM02", "cycle-qc", "x", cycle=i, created=10, started=11, finished=12 + i)
            for i in range(1, 10)]  # 6 : 3, as the weights 2 : 1 ask
    r = summarize(jobs, runs, t0=10.0, t1=30.0, settings=s)
    assert r["instruments"]["SIM01"]["share"] == pytest.approx(6 / 9) and r["instruments"]["SIM02"]["weight"] == 1.0
    assert r["fairness"] == pytest.approx(1.0)  # per unit of weight
    text = format_result(r)
    assert "fairness (max/min jobs/s per unit of weight): 1.00" in text and " 66.7%" in text and " 33.3%" in text
    assert summarize(jobs, runs, t0=10.0, t1=30.0)["fairness"] == pytest.approx(2.0)  # unweighted: max/min jobs/s
    for bad, msg in ((("SIM09", 2.0),), "no such instrument; allowed SIM01, SIM02"), ((("SIM01", 0.0),), "more than 0"):
        with pytest.raises(ValueError, match=msg):
            SimSettings(instruments=2, weights=bad).check()
    with pytest.raises(ValueError, match="give INSTRUMENT=WEIGHT"):
        parse_weight("SIM01")


def test_offload_dispatch_and_scan_runs_are_validated():
    from appliance.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"offload.scan_runs = 'mine' is invalid: allowed \"all\" or \"own\""):
        load_config(overrides=['offload.scan_runs="mine"'])
    with pytest.raises(ConfigError, match="offload.dispatch"):
        load_config(overrides=['offload.dispatch="no"'])


def test_two_instruments_share_one_ledger_and_one_pool_through_a_database_outage(tmp_path, capsys):
    """`appliance lab simulate` for real: two instruments acquire with no drop while the lab's
    PostgreSQL server is down for 5 s; every job their runs call for arrives once and runs on
    the one pool; the report and the JSON are written; nothing it started is left running."""
    pytest.importorskip("psycopg")
    from appliance.pgserver import find_bindir

    if find_bindir() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql")
    from appliance.cli import main

    work = tmp_path / "work"
    out = tmp_path / "result.json"
    rc = main(["lab", "simulate", "--instruments", "2", "--minutes", "0.3", "--restart-ledger-at", "6", "--ledger-down", "5",
               "--workdir", str(work), "--report", str(tmp_path / "report"), "--json", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    r = json.loads(out.read_text())
    assert set(r["instruments"]) == {"SIM01", "SIM02"}
    for name, p in r["instruments"].items():
        assert p["runs"] >= 1 and p["runs_complete"] == p["runs"], (name, p)
        assert p["frames_dropped"] == 0 and p["frames_acquired"] == p["runs"] * 32
        assert p["jobs_succeeded"] == p["jobs"] > 0
    assert r["exactly_once"]["ok"] and r["drained"] and r["ledger_restarted_at_s"] >= 6
    assert r["wait_s"]["realtime"]["n"] > 0
    assert "every job submitted exactly once" in text and "fairness (max/min jobs/s)" in text
    assert (tmp_path / "report" / "index.html").is_file() and (tmp_path / "report" / "jobs.png").stat().st_size > 0
    assert not work.exists()  # removed (no --keep)
    left = [p.info["cmdline"] for p in psutil.process_iter(["cmdline"]) if any(str(work) in a for a in (p.info["cmdline"] or []))]
    assert not left, left
