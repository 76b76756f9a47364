"""The orchestrator with real worker processes: poison jobs, triggers from a real run folder,
priorities under a flood, and recovery from SIGKILL of `appliance jobs work`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from appliance.offload import JobKind, KindRegistry, Ledger, Orchestrator, output_dir_for

from .conftest import PLUGIN, fast_config, wait_for

REPO = Path(__file__).resolve().parents[3]


def test_poison_job_is_held_after_its_retry_limit_and_can_be_requeued(tmp_path, jobs_plugin, no_leaked_threads):
    # a lease of 5 s, not fast_config's 1 s: on a loaded machine a just-spawned worker can take
    # longer than 1 s to pick an attempt up, and the expired lease counted a 4th attempt
    orch = Orchestrator(fast_config(lease_s=5.0), tmp_path, scan=False)
    orch.start()
    try:
        job = orch.submit("test-poison", {"n": 1}).job
        held = wait_for(lambda: (j := orch.ledger.get(job.id)).state == "held" and j, what="the poison job to be held")
        assert held.attempts == 3 and held.error_transient and "poison" in held.error
        states = [e["to_state"] for e in orch.ledger.events(job.id)]
        assert states.count("retrying") == 2 and states[-1] == "held"
        assert orch.stats()["recent_failures"][0]["job"] == job.id
        again = orch.ledger.requeue(job.id)
        assert again.state == "queued" and again.attempts == 0
        wait_for(lambda: orch.ledger.get(job.id).state == "held", what="the requeued job to be held again")
        assert orch.ledger.get(job.id).attempts == 3
    finally:
        orch.stop(10)
    # a permanent error is held at once
    orch = Orchestrator(fast_config(), tmp_path, scan=False)
    orch.start()
    try:
        p = orch.submit("test-poison", {"permanent": True}).job
        wait_for(lambda: orch.ledger.get(p.id).state == "held", what="a permanent failure to be held")
        assert orch.ledger.get(p.id).attempts == 1
    finally:
        orch.stop(10)


def test_resubmission_is_idempotent_and_output_single(tmp_path, jobs_plugin, no_leaked_threads):
    src = tmp_path / "in.bin"
    src.write_bytes(b"x" * 999)
    log = tmp_path / "done.log"
    orch = Orchestrator(fast_config(), tmp_path, scan=False)
    orch.start()
    try:
        first = orch.submit("test-hash", {"path": str(src), "log": str(log)})
        wait_for(lambda: orch.ledger.get(first.job.id).state == "succeeded")
        second = orch.submit("test-hash", {"path": str(src), "log": str(log)})
        assert first.created and not second.created and second.job.id == first.job.id
        assert second.job.state == "succeeded"
    finally:
        orch.stop(10)
    assert len(log.read_text().splitlines()) == 1


def test_realtime_starts_first_under_a_reprocess_flood(tmp_path, jobs_plugin, no_leaked_threads):
    """3 slots, one reserved for realtime: with 30 reprocess jobs queued and running, every
    realtime job is dispatched at the first dispatch after it is submitted."""
    src = tmp_path / "in.bin"
    src.write_bytes(b"y" * 100)
    cfg = fast_config(workers=3, reserved_realtime=1, limits={"realtime": 2, "batch": 2, "reprocess": 3})
    orch = Orchestrator(cfg, tmp_path, scan=False)
    orch.start()
    try:
        for i in range(30):
            orch.submit("test-hash", {"path": str(src), "i": i, "sleep": 0.2}, priority="reprocess")
        wait_for(lambda: orch.ledger.running_by_class()["reprocess"] >= 2, what="the flood to run")
        rt_ids = []
        for i in range(4):
            n_before = len(orch.dispatched)
            j = orch.submit("test-hash", {"path": str(src), "rt": i}, priority="realtime").job
            rt_ids.append(j.id)
            wait_for(lambda: any(d[0] == j.id for d in orch.dispatched), what="the realtime job to start")
            # counted in dispatch slots, not seconds: nothing else was dispatched before it
            after = orch.dispatched[n_before:]
            assert after[0][0] == j.id, after
            time.sleep(0.3)
        assert orch.ledger.stats()["classes"]["reprocess"]["depth"] > 0  # the flood was still there
        assert all(cls == "reprocess" for jid, cls, _ in orch.dispatched if jid not in rt_ids)
    finally:
        orch.stop(10, drain=False)


def _registry_of_recorders() -> KindRegistry:
    rec = f"{PLUGIN}:record"
    return KindRegistry([
        JobKind("cycle-qc", rec, "realtime", 2, 0.05, 0.1), JobKind("fastq", rec, "realtime", 2, 0.05, 0.1),
        JobKind("align-qc", rec, "batch", 2, 0.05, 0.1), JobKind("reprocess", rec, "reprocess", 2, 0.05, 0.1),
        JobKind("compare", rec, "reprocess", 2, 0.05, 0.1),
    ])


@pytest.fixture(scope="module")
def run_root(tmp_path_factory) -> Path:
    from appliance.pipeline import Supervisor
    from tests.runs import small_run_config

    root = tmp_path_factory.mktemp("runs")
    cfg = small_run_config(root, "run.cycles=5", "run.tiles=[1101]", "output.keep_raw_every=1", "control.enabled=false")
    Supervisor(cfg, run_id="RUN1").run()
    return root


def test_completed_run_triggers_its_jobs_once(run_root, tmp_path, jobs_plugin, no_leaked_threads):
    import shutil

    root = tmp_path / "root"
    shutil.copytree(run_root / "RUN1", root / "RUN1")
    cand = SimpleNamespace(name="chain", version="2")
    orch = Orchestrator(fast_config(), root, registry=_registry_of_recorders(), algorithms=lambda r: cand)
    orch.start()
    try:
        wait_for(lambda: orch.ledger.stats()["states"]["succeeded"] == 5 + 4, what="5 cycle-qc + fastq, align-qc, reprocess, compare")
        orch.scan()
        orch.scan()  # re-scans are harmless
        jobs = {(j.kind, j.params.get("cycle")): j for j in orch.ledger.jobs(limit=100)}
    finally:
        orch.stop(10)
    assert len(jobs) == 9 and all(j.state == "succeeded" for j in jobs.values())
    assert sorted(c for k, c in jobs if k == "cycle-qc") == [1, 2, 3, 4, 5]
    fastq, align = jobs[("fastq", None)], jobs[("align-qc", None)]
    rep, cmp_ = jobs[("reprocess", None)], jobs[("compare", None)]
    assert align.depends_on == fastq.id and align.params["fastq"] == fastq.output_dir
    assert align.started_at >= fastq.finished_at
    assert (fastq.priority, align.priority, rep.priority, cmp_.priority) == ("realtime", "batch", "reprocess", "reprocess")
    assert Path(fastq.output_dir) == root / "Analysis" / "RUN1" / "fastq"
    assert Path(rep.output_dir) == root / "Analysis" / "RUN1" / "reprocess" / "chain@2"
    assert cmp_.depends_on == rep.id and cmp_.params == {"run": "RUN1", "candidate": rep.output_dir, "algorithm": "chain", "version": "2"}
    doc = json.loads((Path(rep.output_dir) / "params.json").read_text())
    assert (doc["algorithm"], doc["version"]) == ("chain", "2")
    assert Path(jobs[("cycle-qc", 2)].output_dir) == root / "Analysis" / "RUN1" / "cycle-qc" / "cycle_0002"
    assert output_dir_for(root, fastq) == Path(fastq.output_dir)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(x) for x in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "State:\tZ" not in status


def test_orchestrator_killed_and_restarted_loses_nothing_runs_nothing_twice(tmp_path, jobs_plugin):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(4096))
    log = tmp_path / "completions.log"
    conf = tmp_path / "appliance.toml"
    conf.write_text(
        f'[output]\nroot = "{tmp_path}"\n[offload]\nworkers = 2\nlease_s = 1.0\nheartbeat_s = 0.2\ntick_s = 0.05\n'
        f'poll_s = 0.2\nreserved_realtime = 0\nplugins = ["{PLUGIN}"]\n')
    with Ledger(tmp_path / ".offload" / "ledger.sqlite") as led:
        ids = [led.submit("test-hash", {"path": str(src), "log": str(log), "i": i, "sleep": 0.4}, priority="batch").job.id
               for i in range(8)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "appliance", "jobs", "work", "--config", str(conf)]

    def succeeded() -> int:
        with Ledger(tmp_path / ".offload" / "ledger.sqlite") as led:
            return sum(led.get(i).state == "succeeded" for i in ids)

    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        def mid_run() -> bool:
            with Ledger(tmp_path / ".offload" / "ledger.sqlite") as led:
                st = led.stats()["states"]
            return st["succeeded"] >= 2 and st["running"] >= 1

        wait_for(mid_run, 60, "some jobs finished and some running before the kill")
        workers = _children(proc.pid)
        assert workers, "the orchestrator has worker processes"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_for(lambda: not any(_alive(w) for w in workers), 10, "the workers to die with their parent")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert succeeded() < len(ids)
    with Ledger(tmp_path / ".offload" / "ledger.sqlite") as led:
        assert led.stats()["running"] >= 1  # killed with attempts in flight (their leases now expire)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: succeeded() == len(ids), 60, "every job to succeed after the restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    runs = Counter(int(line.split()[0]) for line in log.read_text().splitlines())
    assert sorted(runs) == sorted(ids) and set(runs.values()) == {1}, runs  # none lost, none twice
    with Ledger(tmp_path / ".offload" / "ledger.sqlite") as led:
        for i in ids:
            j = led.get(i)
            assert (Path(j.output_dir) / "copy.bin").read_bytes() == src.read_bytes()


def test_one_slot_warns_that_nothing_is_reserved_for_realtime(tmp_path, caplog, no_leaked_threads):
    for workers, warned in ((1, True), (2, False)):
        caplog.clear()
        orch = Orchestrator(fast_config(workers=workers, reserved_realtime=1), tmp_path / str(workers), scan=False)
        orch.start()
        try:
            hits = [r for r in caplog.records if "none can be reserved for real-time" in r.getMessage()]
            assert bool(hits) == warned and all(r.levelname == "WARNING" for r in hits)
            assert not hits or "offload.workers >= 2" in hits[0].getMessage()
        finally:
            orch.stop(10)
