"""Two real local pools under one orchestrator: placement by data locality, the pools' status
for ``appliance jobs pools``, and the config they come from."""

from __future__ import annotations

import json
import os
from pathlib import Path

from appliance.cli import main
from appliance.offload import Orchestrator
from appliance.offload.config import load_offload
from appliance.offload.pools import status_path
from tests.appliance.offload.conftest import PLUGIN, wait_for

POOLS = {
    "instr": {"kind": "local", "slots": 2, "classes": ["realtime", "batch"], "reads": ["hot", "warm"], "cost": 1.0},
    "warm": {"kind": "local", "slots": 2, "classes": ["batch", "reprocess"], "reads": ["warm"], "cost": 0.1},
}


def test_hot_tier_jobs_run_only_on_the_pool_that_reads_the_hot_tier(tmp_path, jobs_plugin, no_leaked_threads, capsys):
    cfg = load_offload({"lease_s": 5.0, "heartbeat_s": 0.2, "tick_s": 0.05, "poll_s": 0.2, "plugins": [PLUGIN],
                        "limits": {"realtime": 2, "batch": 4, "reprocess": 2}, "reserved_realtime": 0, "pools": POOLS})
    srcs = []
    for i in range(4):
        p = tmp_path / f"in{i}.bin"
        p.write_bytes(os.urandom(2048))
        srcs.append(p)
    orch = Orchestrator(cfg, tmp_path, scan=False)
    events: list[dict] = []
    orch.on_event = events.append
    orch.start()
    try:
        jobs = [orch.submit("test-hash", {"path": str(p)}).job for p in srcs]
        wait_for(lambda: all(orch.ledger.get(j.id).state == "succeeded" for j in jobs), 60, "the four jobs")
        wait_for(lambda: status_path(tmp_path).exists(), 10, "the pools' status file")
        assert main(["jobs", "pools", "--root", str(tmp_path), "--ledger", str(cfg.ledger_path(tmp_path)), "--json",
                     "--config", str(_config_file(tmp_path))]) == 0
        view = json.loads(capsys.readouterr().out)
    finally:
        orch.stop(10)
    started = {e["job"]: e.get("pool") for e in events if e.get("event") == "job_started"}
    # test-hash reads the hot tier (the kind's default inputs): the cheaper warm-only pool never gets one
    assert set(started.values()) == {"instr"}, started
    rows = {r["pool"]: r for r in view["pools"]}
    assert view["live"] and set(rows) == {"instr", "warm"}
    assert rows["instr"]["slots"] == 2 and rows["warm"]["slots"] == 2 and rows["instr"]["free"] + rows["instr"]["used"] == 2
    assert rows["warm"]["classes"] == ["batch", "reprocess"] and rows["warm"]["reads"] == ["warm"]
    assert rows["instr"]["backlog"] == 0


def _config_file(tmp_path: Path) -> Path:
    lines = []
    for name, t in POOLS.items():
        lines.append(f"[offload.pools.{name}]")
        for k, v in t.items():
            lines.append(f"{k} = {json.dumps(v)}")
    p = tmp_path / "pools.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_jobs_pools_without_an_orchestrator_shows_the_config_and_backlog(tmp_path, jobs_plugin, capsys):
    from appliance.offload.ledger import Ledger

    ledger = tmp_path / "ledger.sqlite"
    with Ledger(ledger) as led:
        led.submit("test-hash", {"path": "x"}, priority="batch")
        led.submit("test-hash-rt", {"path": "y"}, priority="realtime")
    assert main(["jobs", "pools", "--root", str(tmp_path), "--ledger", str(ledger), "--config", str(_config_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "instr" in out and "warm" in out and "no live figures" in out
    assert main(["jobs", "pools", "--root", str(tmp_path), "--ledger", str(ledger), "--json",
                 "--config", str(_config_file(tmp_path))]) == 0
    rows = {r["pool"]: r for r in json.loads(capsys.readouterr().out)["pools"]}
    assert rows["instr"]["backlog"] == 2 and rows["warm"]["backlog"] == 1  # the classes each serves
    assert rows["warm"]["used"] is None
