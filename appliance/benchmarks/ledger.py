"""``appliance bench ledger``: ledger throughput and per-job dispatch overhead through Dask."""

from __future__ import annotations

import argparse
import json
import logging
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HELP = "job ledger jobs/s vs bare SQLite; per-job dispatch overhead of our DaskExecutor vs bare client.submit"
DESCRIPTION = """\
Two side-by-side measurements, in one run:

1. Ledger throughput: N jobs through submit + lease + start + complete on a fresh ledger file
   (WAL, one transaction per step, idempotency key, history rows), against the floor: the
   same four writes as bare SQLite statements on a one-table file with the same pragmas.
2. Dispatch overhead: N no-op jobs through the Orchestrator with our DaskExecutor (ledger,
   lease, heartbeat, staging folder, _SUCCESS.json marker, atomic rename, ledger update)
   against a bare `client.submit` of the same job function on the same LocalCluster
   (2 single-threaded workers, loopback TCP). Reports ms per job and the ratio. The local
   process-pool executor is timed on the same jobs for comparison.

3. With --backend postgresql --dsn URL (a role that may CREATE DATABASE): our ledger on that
   PostgreSQL server beside pgqueuer doing the same work (enqueue, dequeue, mark done) for
   --pg-jobs jobs with 1 and 4 worker processes, each on a fresh database
   (appliance/benchmarks/ledger_pg.py). Needs `pip install pgqueuer`.

4. With --slurm PARTITION (on a Slurm submit host): the same no-op jobs through our
   SlurmExecutor (dask-jobqueue's SLURMCluster, one batch job of 2 worker processes) against
   a bare `client.submit` on the same cluster once its workers are up.

Absolute figures on a shared machine are noisy; the ratios are what to compare.

examples:
  appliance bench ledger                   # or: scripts/bench ledger
  appliance bench ledger --jobs 500 --dask-jobs 50
  appliance bench ledger --slurm debug     # on a Slurm submit node
  appliance bench ledger --backend postgresql --dsn 'postgresql:///postgres?host=/run/postgresql'
"""


def noop_job(params: dict, ctx) -> dict:
    """The benchmark's job: writes one small file (so the commit path is exercised)."""
    (ctx.staging_dir / "out.txt").write_text(str(params.get("i")))
    return {"i": params.get("i")}


def _bare_noop(params: dict, staging: str) -> dict:
    Path(staging).mkdir(parents=True, exist_ok=True)
    (Path(staging) / "out.txt").write_text(str(params.get("i")))
    return {"i": params.get("i")}


def bench_ledger(n: int, folder: Path) -> dict[str, Any]:
    from appliance.offload import Ledger, OffloadConfig, RetryPolicy

    cfg = OffloadConfig(depth_high=10 ** 9)  # admission is still checked on every submit, never refuses
    with Ledger(folder / "ours.sqlite", config=cfg, policy=lambda k: RetryPolicy()) as led:
        t0 = time.perf_counter()
        ids = [led.submit("bench-noop", {"i": i}, priority="batch").job.id for i in range(n)]
        t_submit = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in ids:
            job = led.lease_next("bench", 60)
            led.start(job.id, "bench")
            led.complete(job.id, "bench", {"ok": True})
        t_rest = time.perf_counter() - t1
        assert led.stats()["states"]["succeeded"] == n
    ours = n / (t_submit + t_rest)

    c = sqlite3.connect(folder / "bare.sqlite", isolation_level=None)
    c.execute("PRAGMA journal_mode = WAL")
    c.execute("PRAGMA synchronous = NORMAL")
    c.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY, key TEXT UNIQUE, params TEXT, state TEXT, owner TEXT, result TEXT)")
    t0 = time.perf_counter()
    for i in range(n):
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO jobs(key, params, state) VALUES (?, ?, 'queued')", (f"k{i}", json.dumps({"i": i})))
        c.execute("COMMIT")
    for _ in range(n):
        for sql in ("UPDATE jobs SET state='leased', owner='b' WHERE id = (SELECT id FROM jobs WHERE state='queued' ORDER BY id LIMIT 1)",
                    "UPDATE jobs SET state='running' WHERE id = (SELECT id FROM jobs WHERE state='leased' LIMIT 1)",
                    "UPDATE jobs SET state='succeeded', result='{}' WHERE id = (SELECT id FROM jobs WHERE state='running' LIMIT 1)"):
            c.execute("BEGIN IMMEDIATE")
            c.execute(sql)
            c.execute("COMMIT")
    bare = n / (time.perf_counter() - t0)
    c.close()
    return {"jobs": n, "ours_jobs_per_s": ours, "ours_submit_per_s": n / t_submit, "bare_sqlite_jobs_per_s": bare,
            "ratio_bare_over_ours": bare / ours}


def _run_orchestrated(executor, n: int, root: Path, tick_s: float) -> float:
    from appliance.offload import JobKind, KindRegistry, OffloadConfig, Orchestrator

    reg = KindRegistry([JobKind("bench-noop", f"{__name__}:noop_job", "batch", 3, 0.1, 1.0, 600.0)])
    cfg = OffloadConfig(workers=executor.capacity if hasattr(executor, "workers") else 2, tick_s=tick_s, lease_s=60.0,
                        heartbeat_s=5.0, reserved_realtime=0, limits={"realtime": 2, "batch": 64, "reprocess": 1},
                        depth_high=10 ** 6)
    orch = Orchestrator(cfg, root, registry=reg, executor=executor, scan=False)
    orch.start()
    try:
        ids = [orch.submit("bench-noop", {"i": -1 - k}).job.id for k in range(2)]  # warm-up
        _wait(orch, ids)
        t0 = time.perf_counter()
        ids = [orch.submit("bench-noop", {"i": i}).job.id for i in range(n)]
        _wait(orch, ids)
        return (time.perf_counter() - t0) / n
    finally:
        orch.stop(30)


def _wait(orch, ids: list[int], timeout: float = 600.0) -> None:
    # Every 20 ms: a tighter poll of the ledger's stats competes with the orchestrator for the
    # GIL and the ledger's lock and slows what it measures (it did, by ~8% of the samples);
    # 20 ms over a run of seconds is a resolution of well under 1%.
    deadline = time.monotonic() + timeout
    while orch.ledger.stats()["states"]["succeeded"] < len(ids) + (ids[0] - 1):
        if time.monotonic() > deadline:
            raise RuntimeError(f"benchmark jobs did not finish in {timeout} s: {orch.ledger.stats()['states']}")
        time.sleep(0.02)


def bench_dispatch(n: int, folder: Path, tick_s: float = 0.2, local: bool = True) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from appliance.offload import DaskExecutor, LocalExecutor

    out: dict[str, Any] = {"jobs": n, "tick_s": tick_s}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None, host="127.0.0.1",
                      protocol="tcp", silence_logs=logging.WARNING) as cluster:
        with Client(cluster, set_as_default=False) as client:
            client.submit(_bare_noop, {"i": -1}, str(folder / "bare" / "warm"), pure=False).result()
            t0 = time.perf_counter()
            futs = [client.submit(_bare_noop, {"i": i}, str(folder / "bare" / str(i)), pure=False) for i in range(n)]
            client.gather(futs)
            out["bare_client_submit_ms"] = (time.perf_counter() - t0) / n * 1e3
        ex = DaskExecutor(2, cluster.scheduler_address)
        out["ours_dask_ms"] = _run_orchestrated(ex, n, folder / "dask", tick_s) * 1e3
    out["ratio_ours_over_bare"] = out["ours_dask_ms"] / out["bare_client_submit_ms"]
    out["overhead_ms_per_job"] = out["ours_dask_ms"] - out["bare_client_submit_ms"]
    if local:
        out["ours_local_ms"] = _run_orchestrated(LocalExecutor(2), n, folder / "local", tick_s) * 1e3
    return out


def bench_dispatch_slurm(n: int, folder: Path, partition: str, tick_s: float = 0.2, timeout: float = 300.0) -> dict[str, Any]:
    """The same comparison on a Slurm pool: our SlurmExecutor (one Slurm job of 2 worker
    processes, dask-jobqueue's SLURMCluster) under the Orchestrator, against a bare
    ``client.submit`` of the same job function on the same SLURMCluster, its workers already up
    (the batch job's queue wait and start are not what is measured)."""
    import sys

    from appliance.offload.pools import load_pools
    from appliance.offload.slurm import SlurmExecutor

    logs = folder / "slurm-logs"
    logs.mkdir(parents=True, exist_ok=True)
    pool = load_pools({"hpc": {"kind": "slurm", "slots": 2, "cores": 1, "memory_mb": 1024, "walltime_s": "00:30:00",
                               "min_jobs": 1, "max_jobs": 1, "partition": partition, "python": sys.executable,
                               "scheduler_host": "127.0.0.1", "log_directory": str(logs)}},
                      classes=("realtime", "batch", "reprocess"))["hpc"]
    ex = SlurmExecutor(pool)
    out: dict[str, Any] = {"jobs": n, "tick_s": tick_s, "partition": partition}
    ex.start(timeout)
    try:
        t0 = time.monotonic()
        ex.client.wait_for_workers(2, timeout=timeout)
        out["workers_up_s"] = time.monotonic() - t0
        ex.client.submit(_bare_noop, {"i": -1}, str(folder / "bare-slurm" / "warm"), pure=False).result()
        t0 = time.perf_counter()
        futs = [ex.client.submit(_bare_noop, {"i": i}, str(folder / "bare-slurm" / str(i)), pure=False) for i in range(n)]
        ex.client.gather(futs)
        out["bare_client_submit_ms"] = (time.perf_counter() - t0) / n * 1e3
        out["ours_slurm_ms"] = _run_orchestrated(ex, n, folder / "slurm", tick_s) * 1e3  # stops the executor
    finally:
        ex.stop(30)
    out["ratio_ours_over_bare"] = out["ours_slurm_ms"] / out["bare_client_submit_ms"]
    return out


def format_table(result: dict[str, Any]) -> str:
    led, dis = result["ledger"], result["dispatch"]
    lines = [
        f"ledger: {led['jobs']} jobs through submit + lease + start + complete",
        f"  ours (Ledger)            {led['ours_jobs_per_s']:10.0f} jobs/s   (submit alone {led['ours_submit_per_s']:.0f}/s)",
        f"  bare SQLite, same writes {led['bare_sqlite_jobs_per_s']:10.0f} jobs/s   ratio bare/ours {led['ratio_bare_over_ours']:.2f}",
        f"dispatch: {dis['jobs']} no-op jobs, LocalCluster 2 workers x 1 thread, loopback TCP",
        f"  bare client.submit       {dis['bare_client_submit_ms']:10.2f} ms/job",
        f"  ours DaskExecutor        {dis['ours_dask_ms']:10.2f} ms/job   ratio ours/bare {dis['ratio_ours_over_bare']:.2f}"
        f"  (+{dis['overhead_ms_per_job']:.2f} ms/job: ledger, lease, marker, rename)",
    ]
    if "ours_local_ms" in dis:
        lines.append(f"  ours LocalExecutor       {dis['ours_local_ms']:10.2f} ms/job   (2 worker processes)")
    sl = result.get("slurm")
    if sl:
        lines += [f"dispatch on Slurm: {sl['jobs']} no-op jobs, one batch job of 2 workers on partition {sl['partition']} "
                  f"(workers up after {sl['workers_up_s']:.1f} s)",
                  f"  bare client.submit       {sl['bare_client_submit_ms']:10.2f} ms/job",
                  f"  ours SlurmExecutor       {sl['ours_slurm_ms']:10.2f} ms/job   ratio ours/bare {sl['ratio_ours_over_bare']:.2f}"]
    return "\n".join(lines)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=2000, help="jobs through the ledger (default 2000)")
    parser.add_argument("--dask-jobs", type=int, default=200, help="jobs through the executors (default 200)")
    parser.add_argument("--tick-s", type=float, default=0.2,
                        help="orchestrator dispatch period (default 0.2, the product's offload.tick_s: submissions and completions wake the dispatcher)")
    parser.add_argument("--no-local", action="store_true", help="skip the LocalExecutor row")
    parser.add_argument("--slurm", metavar="PARTITION",
                        help="also the dispatch overhead on a Slurm pool: run on a submit host (sbatch on PATH, "
                             "SLURM_CONF set); one batch job of 2 workers on PARTITION, against a bare client.submit on it")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite",
                        help="postgresql: also our ledger on --dsn's server beside pgqueuer (default sqlite only)")
    parser.add_argument("--dsn", help="--backend postgresql: the server (postgresql://USER@HOST/DB or postgresql:///DB?host=SOCKETDIR)")
    parser.add_argument("--pg-jobs", type=int, default=500, help="--backend postgresql: jobs per run (default 500)")
    parser.add_argument("--json", type=Path, default=Path("out/bench-ledger.json"), help="where to write the JSON (default out/bench-ledger.json)")


def run(args: argparse.Namespace) -> int:
    if args.jobs < 1 or args.dask_jobs < 1:
        print("error: --jobs and --dask-jobs must be at least 1", file=sys.stderr)
        return 2
    if args.backend == "postgresql" and not (args.dsn or "").startswith(("postgresql://", "postgres://")):
        print("error: --backend postgresql needs --dsn postgresql://... (a role that may CREATE DATABASE)", file=sys.stderr)
        return 2
    from appliance.benchmarks._machine import machine_description

    result: dict[str, Any] = {"machine": machine_description(), "options": vars(args) | {"json": str(args.json)}}
    result["options"].pop("_suite_run", None)
    result["options"].pop("_run", None)
    logging.getLogger("distributed").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
        result["ledger"] = bench_ledger(args.jobs, Path(tmp))
        result["dispatch"] = bench_dispatch(args.dask_jobs, Path(tmp), args.tick_s, local=not args.no_local)
        if args.slurm:
            result["slurm"] = bench_dispatch_slurm(args.dask_jobs, Path(tmp), args.slurm, args.tick_s)
    if args.backend == "postgresql":
        from appliance.benchmarks.ledger_pg import bench_postgres

        result["postgresql"] = bench_postgres(args.dsn, args.pg_jobs)
    result["wall_s"] = time.perf_counter() - t0
    print(format_table(result))
    if "postgresql" in result:
        from appliance.benchmarks.ledger_pg import format_pg

        print(format_pg(result["postgresql"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\nJSON written to {args.json}")
    return 0
