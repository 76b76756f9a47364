"""Offload on a real one-node Slurm (tests/slurm.py starts munged, slurmctld and slurmd): jobs
on Dask workers that dask-jobqueue launches as batch jobs, worker loss, outputs equal to the
local pool's."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import pytest

from appliance.offload import Orchestrator
from appliance.offload.config import load_offload
from appliance.offload.executors import MARKER
from tests.appliance.offload.conftest import PLUGIN, wait_for
from tests.slurm import slurm_cluster  # noqa: F401  (the session fixture)

pytestmark = pytest.mark.slow


def _config(tmp_path: Path, ledger: Path, **pool) -> object:
    hpc = {"kind": "slurm", "cores": 1, "memory_mb": 2048, "walltime_s": "00:30:00", "min_jobs": 0, "max_jobs": 1,
           "scheduler_host": "127.0.0.1", "log_directory": str(tmp_path / "slurm-logs"), "partition": "debug",
           "python": sys.executable, "starved_s": 600}
    hpc.update(pool)
    return load_offload({
        "ledger": str(ledger), "lease_s": 20.0, "heartbeat_s": 0.5, "tick_s": 0.1, "poll_s": 0.5, "plugins": [PLUGIN],
        "limits": {"realtime": 2, "batch": 2, "reprocess": 1}, "reserved_realtime": 0, "pools": {"hpc": hpc},
    })


def _lines(p: Path) -> list[str]:
    return p.read_text().splitlines() if p.exists() else []


@pytest.mark.timeout(600)
def test_scancel_of_a_worker_mid_attempt_retries_once_and_scales_a_new_worker(slurm_cluster, tmp_path):  # noqa: F811
    src = tmp_path / "in.bin"
    src.write_bytes(bytes(range(256)) * 200)
    flag, log = tmp_path / "go", tmp_path / "completions.log"
    orch = Orchestrator(_config(tmp_path, tmp_path / "ledger.sqlite"), tmp_path, scan=False)
    pool = orch.executor.executors["hpc"]
    try:
        orch.start(timeout=60)
        job = orch.submit("test-hash", {"path": str(src), "log": str(log), "block_on": str(flag)}).job
        wait_for(lambda: list(tmp_path.glob("go.started.*")), 120, "the attempt to start on a Slurm worker")
        first = wait_for(lambda: pool.slurm_job_of(job.id), 30, "the Slurm job of the worker running it")
        assert any(q["id"] == first and q["state"] == "RUNNING" for q in slurm_cluster.squeue()), slurm_cluster.squeue()
        slurm_cluster.run("scancel", first)
        wait_for(lambda: any("left" in e["reason"] for e in orch.ledger.events(job.id)), 60,
                 "the lost attempt to go back to the queue")
        flag.write_text("go")
        done = wait_for(lambda: (x := orch.ledger.get(job.id)).state in ("succeeded", "held") and x, 180,
                        "the job to succeed on a new worker")
        second = set(pool.slurm_jobs().values())
        replaced = pool.replaced
        events = [e["reason"] for e in orch.ledger.events(job.id)]
    finally:
        flag.write_text("go")
        orch.stop(20)
    assert done.state == "succeeded", done
    assert any("worker" in r and "left" in r for r in events), events  # released: the worker's loss, not the job's fault
    assert done.attempts == 1  # the released attempt was not counted against the job
    assert replaced >= 1 and second and first not in second  # a new Slurm job replaced the cancelled one
    assert f"JobId={first} " in slurm_cluster.completed()  # the batch job ran under Slurm (jobcomp/filetxt)
    out = Path(done.output_dir)
    assert (out / "copy.bin").read_bytes() == src.read_bytes()
    assert json.loads((out / MARKER).read_text())["key"] == done.key
    assert len(_lines(log)) == 1  # ran to completion once
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no staging left behind


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    from appliance.pipeline import Supervisor
    from tests.runs import small_run_config

    root = tmp_path_factory.mktemp("slurm-runs")
    cfg = small_run_config(root, "run.cycles=5", "run.tiles=[1101]", "control.enabled=false")
    Supervisor(cfg, run_id="RUNS").run()
    return root


def _outputs(root: Path) -> dict[str, bytes]:
    out = {}
    for kind in ("fastq", "align-qc"):
        d = root / "Analysis" / "RUNS" / kind
        for p in sorted(d.rglob("*")):
            if p.is_file() and p.name != MARKER:
                out[str(p.relative_to(root))] = p.read_bytes()
    return out


@pytest.mark.timeout(1500)
def test_a_runs_fastq_and_align_qc_on_slurm_equal_the_local_pools_outputs(slurm_cluster, one_run, tmp_path):  # noqa: F811
    root = tmp_path / "root"
    shutil.copytree(one_run / "RUNS", root / "RUNS")
    # the local pool first (the default single pool) ...
    local = Orchestrator(load_offload({"ledger": str(tmp_path / "local.sqlite"), "tick_s": 0.1, "poll_s": 0.5}), root,
                         runs=["RUNS"])
    local.start()
    try:
        jobs, ended = local.wait_for_run("RUNS", 600)
    finally:
        local.stop(20)
    assert ended and all(j.state == "succeeded" for j in jobs), [(j.kind, j.state, j.error) for j in jobs]
    want = _outputs(root)
    assert any("fastq" in k for k in want) and any("align-qc" in k for k in want)
    shutil.rmtree(root / "Analysis")
    # ... then the same run on the Slurm pool, from an empty ledger
    # align-qc may run 7200 s (its timeout_s): the workers' walltime must allow it
    orch = Orchestrator(_config(tmp_path, tmp_path / "slurm.sqlite", max_jobs=2, walltime_s="03:00:00"), root, runs=["RUNS"])
    seen: set[str] = set()  # Slurm job ids squeue lists as running while attempts start
    slurm_ids: set[str] = set()  # the Slurm job ids of the pool's workers at those moments
    pool = orch.executor.executors["hpc"]
    pools_used: list = []

    def on_event(ev: dict) -> None:
        if ev.get("event") == "job_started":
            pools_used.append(ev.get("pool"))
            seen.update(q["id"] for q in slurm_cluster.squeue() if q["state"] == "RUNNING")
            slurm_ids.update(i for i in pool.slurm_jobs().values() if i)

    orch.on_event = on_event
    orch.start(timeout=60)
    try:
        jobs, ended = orch.wait_for_run("RUNS", 900)
    finally:
        orch.stop(20)
    assert ended and all(j.state == "succeeded" for j in jobs), [(j.kind, j.state, j.error) for j in jobs]
    assert {j.kind for j in jobs} >= {"fastq", "align-qc"}
    assert set(pools_used) == {"hpc"} and len(pools_used) >= len(jobs)
    assert _outputs(root) == want  # byte for byte
    assert seen and slurm_ids & seen  # the workers were Slurm batch jobs (squeue while they ran)
    wait_for(lambda: all(f"JobId={i} " in slurm_cluster.completed() for i in slurm_ids & seen), 60,
             "the batch jobs in the job-completion log after the pool stopped")


@pytest.mark.timeout(600)
def test_a_down_partition_starves_the_pool_and_raises_then_clears_pool_starved(slurm_cluster, tmp_path):  # noqa: F811
    src = tmp_path / "in.bin"
    src.write_bytes(b"starved" * 100)
    slurm_cluster.run("scontrol", "update", f"PartitionName={slurm_cluster.partition}", "State=DOWN")
    orch = Orchestrator(_config(tmp_path, tmp_path / "ledger.sqlite", starved_s=2), tmp_path, scan=False)
    try:
        orch.start(timeout=60)
        job = orch.submit("test-hash", {"path": str(src)}).job
        raised = wait_for(lambda: [a for a in orch.alerts if a["rule"] == "pool_starved" and a["action"] == "raised"], 60,
                          "pool_starved while the partition is down")
        row = next(r for r in orch.stats()["pools"] if r["pool"] == "hpc")
        assert row["slots"] == 0 and row["backlog"] == 1 and row["pending_jobs"] == 1 and row["starved_s"] >= 2
        assert orch.ledger.get(job.id).state == "queued"
        slurm_cluster.run("scontrol", "update", f"PartitionName={slurm_cluster.partition}", "State=UP")
        done = wait_for(lambda: (x := orch.ledger.get(job.id)).state == "succeeded" and x, 180, "the job once the partition is up")
        wait_for(lambda: orch.alerts[-1]["rule"] == "pool_starved" and orch.alerts[-1]["action"] == "cleared", 30,
                 "pool_starved to clear")
    finally:
        slurm_cluster.run("scontrol", "update", f"PartitionName={slurm_cluster.partition}", "State=UP", check=False)
        orch.stop(20)
    assert "pool hpc" in raised[0]["subject"] and "docs/runbook.md#pool_starved" in raised[0]["message"]
    assert done.attempts == 1


@pytest.mark.timeout(300)
def test_slurm_completions_wake_the_dispatcher_instead_of_the_tick(slurm_cluster, tmp_path):  # noqa: F811
    """With a one-minute tick, once the pool's workers are up, 6 jobs on 2 Slurm workers end long
    before the next tick: each finished attempt wakes the dispatcher (it used to wait for the
    tick: 105 ms per no-op job at the default 0.2 s tick in `bench ledger --slurm`)."""
    src = tmp_path / "in.bin"
    src.write_bytes(b"s" * 100)
    cfg = load_offload({
        "ledger": str(tmp_path / "ledger.sqlite"), "lease_s": 20.0, "heartbeat_s": 0.5, "tick_s": 60.0, "poll_s": 60.0,
        "plugins": [PLUGIN], "limits": {"realtime": 2, "batch": 2, "reprocess": 1}, "reserved_realtime": 0,
        "pools": {"hpc": {"kind": "slurm", "slots": 2, "cores": 1, "memory_mb": 1024, "walltime_s": "00:30:00", "min_jobs": 1,
                          "max_jobs": 1, "scheduler_host": "127.0.0.1", "log_directory": str(tmp_path / "slurm-logs"),
                          "partition": "debug", "python": sys.executable}},
    })
    orch = Orchestrator(cfg, tmp_path, scan=False)
    orch.start(timeout=60)
    try:
        orch.executor.executors["hpc"].client.wait_for_workers(2, timeout=120)
        t0 = time.monotonic()
        ids = [orch.submit("test-hash", {"path": str(src), "n": i}).job.id for i in range(6)]
        wait_for(lambda: all(orch.ledger.get(i).state == "succeeded" for i in ids), 45, "the jobs, before the next tick")
        took = time.monotonic() - t0
    finally:
        orch.stop(20)
    assert took < 45
