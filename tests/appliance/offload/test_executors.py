"""The job wrapper and the executors with real processes and a real Dask LocalCluster."""

from __future__ import annotations

import hashlib
import json
import time
import os
import signal
from pathlib import Path

import pytest

from appliance.offload import AttemptSpec, DaskExecutor, Orchestrator, read_marker, run_attempt
from appliance.offload.executors import MARKER

from .conftest import fast_config, wait_for


def _spec(tmp_path, jid=1, attempt=1, **params) -> AttemptSpec:
    return AttemptSpec(job_id=jid, kind="test-hash", target="tests.appliance.offload._jobs:hash_file", params=params,
                       attempt=attempt, key=f"key-{jid}", data_root=str(tmp_path), output_dir=str(tmp_path / "out" / f"j{jid}"))


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_wrapper_commits_atomically_and_never_reruns_a_committed_key(tmp_path):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(5000))
    log = tmp_path / "completions.log"
    spec = _spec(tmp_path, path=str(src), log=str(log))
    first = run_attempt(spec)
    assert first["reused"] is False and first["result"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    out = Path(spec.output_dir)
    assert (out / "copy.bin").read_bytes() == src.read_bytes()
    assert read_marker(out, spec.key)["result"] == first["result"]
    # a second attempt of the same key (crash between commit and ledger update): not run again
    again = run_attempt(_spec(tmp_path, attempt=2, path=str(src), log=str(log)))
    assert again == {"result": first["result"], "reused": True}
    assert len(_lines(log)) == 1
    # a stale staging folder of a dead attempt is removed; an output of another key is replaced
    stale = out.parent / f".{out.name}.staging-1-1-deadbeef"
    stale.mkdir()
    (stale / "partial").write_text("x")
    newer = AttemptSpec(**{**spec.__dict__, "key": "key-1-new-inputs", "attempt": 3})
    res = run_attempt(newer)
    assert res["reused"] is False and read_marker(out, "key-1-new-inputs") is not None
    assert sorted(p.name for p in out.parent.iterdir()) == ["j1"]
    assert len(_lines(log)) == 2


def test_wrapper_failure_leaves_no_output(tmp_path):
    spec = AttemptSpec(job_id=2, kind="test-poison", target="tests.appliance.offload._jobs:poison", params={}, attempt=1,
                       key="k", data_root=str(tmp_path), output_dir=str(tmp_path / "out" / "p"))
    with pytest.raises(Exception, match="poison"):
        run_attempt(spec)
    assert list((tmp_path / "out").iterdir()) == []


def test_worker_killed_mid_job_is_retried_after_its_lease(tmp_path, jobs_plugin, no_leaked_threads):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(20000))
    flag, log = tmp_path / "go", tmp_path / "completions.log"
    # a lease of 3 s, not 1: on a loaded machine the worker spawned to replace the killed one can
    # take over a second to pick the retry up, and a second expiry counted a 3rd attempt
    orch = Orchestrator(fast_config(lease_s=3.0), tmp_path, scan=False)
    orch.start()
    try:
        job = orch.submit("test-hash", {"path": str(src), "log": str(log), "block_on": str(flag)}).job
        started = wait_for(lambda: list(tmp_path.glob("go.started.*")), what="the job to start")
        pid = int(started[0].read_text())
        os.kill(pid, signal.SIGKILL)
        flag.write_text("go")
        done = wait_for(lambda: (j := orch.ledger.get(job.id)).state == "succeeded" and j, what="the retried job to succeed")
    finally:
        orch.stop(10)
    assert done.attempts == 2
    with __import__("appliance.offload", fromlist=["Ledger"]).Ledger(orch.ledger_path) as led:
        reasons = [e["reason"] for e in led.events(job.id)]
    assert any("expired" in r for r in reasons), reasons
    out = Path(done.output_dir)
    assert (out / "copy.bin").read_bytes() == src.read_bytes()
    assert (out / "digest.txt").read_text().strip() == hashlib.sha256(src.read_bytes()).hexdigest()
    assert json.loads((out / MARKER).read_text())["key"] == done.key
    assert len(_lines(log)) == 1  # ran to completion once
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no staging left behind


def test_dask_executor_runs_jobs_on_a_local_cluster(tmp_path, jobs_plugin, dask_offload_thread, no_leaked_threads):
    src = tmp_path / "in.bin"
    src.write_bytes(b"dask" * 1000)
    log = tmp_path / "completions.log"
    cfg = fast_config(executor="dask")
    orch = Orchestrator(cfg, tmp_path, scan=False, executor=DaskExecutor(2, processes=False, config=cfg))
    orch.start()
    try:
        ids = [orch.submit("test-hash", {"path": str(src), "log": str(log), "n": i}).job.id for i in range(4)]
        bad = orch.submit("test-poison", {"permanent": True}).job.id
        wait_for(lambda: all(orch.ledger.get(i).state == "succeeded" for i in ids) and orch.ledger.get(bad).state == "held",
                 what="the Dask jobs to finish")
        jobs = [orch.ledger.get(i) for i in ids]
    finally:
        orch.stop(10)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    assert all(j.result["sha256"] == digest and j.attempts == 1 for j in jobs)
    assert all(read_marker(j.output_dir, j.key) for j in jobs)
    assert len(_lines(log)) == 4


def test_dask_completions_wake_the_dispatcher_instead_of_the_tick(tmp_path, jobs_plugin, dask_offload_thread, no_leaked_threads):
    """With a one-minute tick, jobs still start when submitted and the next ones when a slot's
    future is done (its callback wakes the dispatcher): 6 jobs on 2 slots end long before the
    first tick would have come round."""
    src = tmp_path / "in.bin"
    src.write_bytes(b"w" * 100)
    log = tmp_path / "completions.log"
    cfg = fast_config(executor="dask", tick_s=60.0)
    orch = Orchestrator(cfg, tmp_path, scan=False, executor=DaskExecutor(2, processes=False, config=cfg))
    orch.start()
    try:
        t0 = time.monotonic()
        ids = [orch.submit("test-hash", {"path": str(src), "log": str(log), "n": i}).job.id for i in range(6)]
        wait_for(lambda: all(orch.ledger.get(i).state == "succeeded" for i in ids), timeout=45, what="the jobs, before the tick")
        took = time.monotonic() - t0
    finally:
        orch.stop(10)
    assert took < 45 and len(_lines(log)) == 6


def test_dask_lost_future_is_a_transient_failure_in_the_ledger(tmp_path, jobs_plugin, dask_offload_thread, no_leaked_threads):
    """The cluster dies with a job on it: the ledger, not Dask, keeps the job, and retries it."""
    import logging

    from distributed import LocalCluster

    src = tmp_path / "in.bin"
    src.write_bytes(b"z" * 10)
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None, host="127.0.0.1",
                           protocol="tcp", silence_logs=logging.WARNING)
    cfg = fast_config(executor="dask", lease_s=30.0, heartbeat_s=0.2)
    orch = Orchestrator(cfg, tmp_path, scan=False, executor=DaskExecutor(1, cluster.scheduler_address, config=cfg))
    try:
        orch.start(timeout=3)  # the client's connect/reconnect timeout: a dead scheduler is given up after 3 s
        job = orch.submit("test-hash", {"path": str(src), "block_on": str(tmp_path / "never")}).job
        wait_for(lambda: list(tmp_path.glob("never.started.*")), what="the job to start on the cluster")
        # an in-process worker cannot be killed: let the job end while the cluster goes away
        import threading

        release = threading.Timer(0.5, lambda: (tmp_path / "never").write_text(""))
        release.start()
        cluster.close(timeout=20)
        release.join()
        j = wait_for(lambda: (x := orch.ledger.get(job.id)).state in ("retrying", "held") and x, what="the lost future to be recorded")
        assert j.state == "retrying" and j.error_transient, j
    finally:
        (tmp_path / "never").write_text("")
        orch.stop(5)
        cluster.close(timeout=10)


def test_dask_worker_process_killed_mid_job_ends_with_one_correct_output(tmp_path, jobs_plugin, dask_offload_thread, no_leaked_threads):
    """A real worker process (under its nanny) SIGKILLed mid-job: Dask reschedules the task or
    the ledger retries it; either way the job succeeds once, with one correct output."""
    import logging

    from distributed import LocalCluster

    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(30000))
    flag, log = tmp_path / "go", tmp_path / "completions.log"
    cluster = LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1",
                           protocol="tcp", silence_logs=logging.ERROR)
    cfg = fast_config(executor="dask", lease_s=30.0, heartbeat_s=0.2)
    orch = Orchestrator(cfg, tmp_path, scan=False, executor=DaskExecutor(1, cluster.scheduler_address, config=cfg))
    try:
        orch.start(timeout=30)
        job = orch.submit("test-hash", {"path": str(src), "log": str(log), "block_on": str(flag)}).job
        started = wait_for(lambda: list(tmp_path.glob("go.started.*")), 60, "the job to start in the worker process")
        pid = int(started[0].read_text())
        assert pid != os.getpid()  # a real worker process, not this one
        os.kill(pid, signal.SIGKILL)
        flag.write_text("go")
        done = wait_for(lambda: (j := orch.ledger.get(job.id)).state in ("succeeded", "held") and j, 90,
                        "the job to end after its worker was killed")
    finally:
        flag.write_text("go")
        orch.stop(10)
        cluster.close(timeout=30)
    assert done.state == "succeeded", done
    out = Path(done.output_dir)
    assert (out / "copy.bin").read_bytes() == src.read_bytes()
    assert json.loads((out / MARKER).read_text())["key"] == done.key
    assert len(_lines(log)) == 1  # ran to completion once
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no staging left behind
