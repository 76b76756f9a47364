"""SIGKILL of one of two orchestrators (real ``appliance jobs work`` processes) leasing from one
PostgreSQL ledger (a private server, tests/pg.py): the other takes the killed one's jobs once
their leases expire; every job completes exactly once, with one correct output, and the
history shows the lost attempt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from appliance.offload import Ledger

from .conftest import PLUGIN, wait_for
from .test_orchestrator import REPO, _alive, _children
N_JOBS = 6


def _tails(folder: Path) -> str:
    return "\n".join(f"{p.name}:\n{p.read_text(errors='replace')[-2000:]}" for p in sorted(folder.glob("work*.log")))


def _owner_pid(owner: str | None) -> int | None:
    """The orchestrator's pid in a lease owner ``host/pid/tag``."""
    return int(owner.split("/")[1]) if owner else None


def test_sigkill_of_one_orchestrator_on_a_pg_ledger_the_other_finishes_its_jobs_exactly_once(pg_dsn, tmp_path, jobs_plugin):
    src = tmp_path / "in.bin"
    src.write_bytes(os.urandom(4096))
    log, flag = tmp_path / "completions.log", tmp_path / "go"
    confs = []
    for n in range(2):  # each orchestrator on its own host: its own data root (its outbox), one lab ledger
        (tmp_path / f"host{n}").mkdir()
        confs.append(tmp_path / f"host{n}" / "appliance.toml")
        # two slots each and a lab-wide batch limit of 4: both orchestrators hold two jobs at the kill
        confs[n].write_text(
            f'[output]\nroot = "{tmp_path / f"host{n}"}"\n[offload]\nledger = "{pg_dsn}"\nworkers = 2\nlease_s = 2.0\n'
            f'heartbeat_s = 0.2\ntick_s = 0.05\npoll_s = 0.2\nreserved_realtime = 0\nplugins = ["{PLUGIN}"]\n'
            '[offload.limits]\nrealtime = 2\nbatch = 4\nreprocess = 1\n')
    with Ledger(pg_dsn) as led:
        ids = [led.submit("test-hash", {"path": str(src), "log": str(log), "i": i, "block_on": str(flag)},
                          priority="batch", instrument_id="SIM01").job.id for i in range(N_JOBS)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "appliance", "jobs", "work", "--no-scan", "--config"]
    logs = [open(tmp_path / f"work{n}.log", "wb") for n in range(2)]  # noqa: SIM115 - closed below
    procs = [subprocess.Popen([*cmd, str(c)], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
             for c, f in zip(confs, logs)]
    killed, survivor = procs
    try:
        def holding() -> dict[int, int]:
            """Running job id -> its orchestrator's pid, once both run two jobs each and every
            attempt's worker has begun (the test kind's ``block_on`` marker), else {}."""
            with Ledger(pg_dsn) as led:
                run = {j.id: (_owner_pid(j.lease_owner), j.attempts) for j in led.jobs(state="running")}
            pids = Counter(pid for pid, _ in run.values())
            begun = all((tmp_path / f"go.started.{i}.{n}").exists() for i, (_, n) in run.items())
            return {i: pid for i, (pid, _) in run.items()} if pids == {killed.pid: 2, survivor.pid: 2} and begun else {}

        wait_for(lambda: holding() or any(p.poll() is not None for p in procs), 60,
                 "both orchestrators to run two jobs each")
        assert all(p.poll() is None for p in procs), _tails(tmp_path)
        lost = sorted(i for i, pid in holding().items() if pid == killed.pid)
        assert len(lost) == 2
        workers = _children(killed.pid)
        assert workers, "the orchestrator has worker processes"
        killed.send_signal(signal.SIGKILL)
        killed.wait(10)
        wait_for(lambda: not any(_alive(w) for w in workers), 10, "the killed orchestrator's workers to die with it")
        flag.write_text("go")  # the survivor's attempts (and every later one) run to the end

        def states() -> Counter:
            with Ledger(pg_dsn) as led:
                return Counter(led.get(i).state for i in ids)

        wait_for(lambda: states()["succeeded"] == N_JOBS, 60, "every job to succeed on the surviving orchestrator")
        survivor.send_signal(signal.SIGTERM)
        assert survivor.wait(30) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in logs:
            f.close()
    runs = Counter(int(line.split()[0]) for line in log.read_text().splitlines())
    assert sorted(runs) == sorted(ids) and set(runs.values()) == {1}, runs  # none lost, none twice
    with Ledger(pg_dsn) as led:
        for i in ids:
            j = led.get(i)
            assert (Path(j.output_dir) / "copy.bin").read_bytes() == src.read_bytes()
            assert j.result["sha256"] and _owner_pid(j.lease_owner) is None
            history = [(e["to_state"], _owner_pid(e["owner"]), e["reason"]) for e in led.events(i)]
            assert history[-1][:2] == ("succeeded", survivor.pid), history
            if i in lost:
                # the lost attempt: leased by the killed one, its lease expired, then the survivor's
                k = max(n for n, h in enumerate(history) if h[:2] == ("leased", killed.pid))
                assert history[k + 1][0] == "running" and history[k + 2][0] == "retrying", history
                assert "expired" in history[k + 2][2] and history[k + 3][:2] == ("leased", survivor.pid), history
                assert j.attempts >= 2 and j.result["attempt"] == j.attempts
