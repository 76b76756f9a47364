"""``appliance bench ledger --backend postgresql``: our ledger on PostgreSQL beside pgqueuer.

The same work for both, on the same server, in the same run. N jobs are enqueued by one
process. Then W worker processes (1 and 4) dequeue and mark done until none is left:

- ours: ``Ledger.submit`` (idempotency key, admission check, history row, NOTIFY), then
  ``lease_next`` (``FOR UPDATE SKIP LOCKED``, history row) and ``complete`` (history row,
  NOTIFY), one transaction each; the history row and the NOTIFY go in the statement that
  changes the job, and ``complete`` is that one statement;
- pgqueuer: ``Queries.enqueue`` (with a dedupe key, as our idempotency key), then ``dequeue``
  (batch size 1) and ``log_jobs(successful)``, through its psycopg driver.

Each side gets a fresh database on the server that ``--dsn`` names (the role needs CREATEDB);
they are dropped afterwards. jobs/s = N / (enqueue time + drain time); drain/s = N / drain time.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
import uuid
from typing import Any

__all__ = ["bench_postgres", "format_pg"]


def _with_db(dsn: str, db: str) -> str:
    """``dsn`` with database ``db`` (an empty host, a unix socket URL, is kept)."""
    scheme, rest = dsn.split("://", 1)
    netloc, _, tail = rest.partition("/")
    query = tail.partition("?")[2]
    return f"{scheme}://{netloc}/{db}" + (f"?{query}" if query else "")


def _admin(dsn: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql)


# -- ours ----------------------------------------------------------------------------------------

def _ours_worker(dsn: str, owner: str, go, out) -> None:
    from appliance.offload import Ledger, OffloadConfig, RetryPolicy

    done = 0
    with Ledger(dsn, config=OffloadConfig(depth_high=10 ** 9), policy=lambda k: RetryPolicy()) as led:
        go.wait(120)
        while True:
            job = led.lease_next(owner, 60)
            if job is None:
                break
            led.complete(job.id, owner, {"ok": True})
            done += 1
    out.put(done)


def _ours(dsn: str, n: int, workers: int) -> dict[str, Any]:
    from appliance.offload import Ledger, OffloadConfig, RetryPolicy

    with Ledger(dsn, config=OffloadConfig(depth_high=10 ** 9), policy=lambda k: RetryPolicy()) as led:
        t0 = time.perf_counter()
        for i in range(n):
            led.submit("bench-noop", {"i": i}, priority="batch")
        t_enqueue = time.perf_counter() - t0
        t_drain, done = _drain(_ours_worker, dsn, workers)
        assert led.stats()["states"]["succeeded"] == n == done, "every job done once"
    return {"enqueue_s": t_enqueue, "drain_s": t_drain, "jobs_s": n / (t_enqueue + t_drain)}


# -- pgqueuer ------------------------------------------------------------------------------------

async def _pgq_connect(dsn: str):
    import psycopg
    from pgqueuer.queries import Queries

    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    return conn, Queries.from_psycopg_connection(conn)


def _pgq_worker(dsn: str, owner: str, go, out) -> None:
    async def main() -> int:
        from datetime import timedelta

        from pgqueuer.queries import EntrypointExecutionParameter

        conn, q = await _pgq_connect(dsn)
        done = 0
        qm = uuid.uuid4()
        try:
            await asyncio.get_running_loop().run_in_executor(None, go.wait, 120)
            while True:
                jobs = await q.dequeue(batch_size=1, entrypoints={"bench": EntrypointExecutionParameter(0)},
                                       queue_manager_id=qm, global_concurrency_limit=None,
                                       heartbeat_timeout=timedelta(seconds=60))
                if not jobs:
                    break
                await q.log_jobs([(job, "successful", None) for job in jobs])
                done += len(jobs)
        finally:
            await conn.close()
        return done

    out.put(asyncio.run(main()))


def _pgq(dsn: str, n: int, workers: int) -> dict[str, Any]:
    async def setup_and_enqueue() -> float:
        conn, q = await _pgq_connect(dsn)
        try:
            await q.install()
            t0 = time.perf_counter()
            for i in range(n):
                await q.enqueue("bench", f'{{"i": {i}}}'.encode(), dedupe_key=f"k{i}")
            return time.perf_counter() - t0
        finally:
            await conn.close()

    async def count_done() -> int:
        conn, q = await _pgq_connect(dsn)
        try:
            left = sum(s.count for s in await q.queue_size())
        finally:
            await conn.close()
        return left

    t_enqueue = asyncio.run(setup_and_enqueue())
    t_drain, done = _drain(_pgq_worker, dsn, workers)
    assert done == n and asyncio.run(count_done()) == 0, "every job done once"
    return {"enqueue_s": t_enqueue, "drain_s": t_drain, "jobs_s": n / (t_enqueue + t_drain)}


# -- both ----------------------------------------------------------------------------------------

def _drain(target, dsn: str, workers: int) -> tuple[float, int]:
    ctx = mp.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=target, args=(dsn, f"w{i}", go, out)) for i in range(workers)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let the workers import and connect before the clock starts
    t0 = time.perf_counter()
    go.set()
    done = sum(out.get(timeout=600) for _ in procs)
    t = time.perf_counter() - t0
    for p in procs:
        p.join(60)
    return t, done


def bench_postgres(dsn: str, n: int, workers: tuple[int, ...] = (1, 4)) -> dict[str, Any]:
    """Ours and pgqueuer at each worker count, each on a fresh database of ``dsn``'s server."""
    try:
        import pgqueuer  # noqa: F401
    except ImportError:
        raise SystemExit("bench ledger --backend postgresql needs pgqueuer: pip install pgqueuer") from None
    rows = []
    for w in workers:
        row: dict[str, Any] = {"workers": w}
        for name, fn in (("ours", _ours), ("pgqueuer", _pgq)):
            db = f"bench_{name}_{uuid.uuid4().hex[:8]}"
            _admin(dsn, f'CREATE DATABASE "{db}"')
            try:
                row[name] = fn(_with_db(dsn, db), n, w)
            finally:
                _admin(dsn, f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        row["ratio"] = row["ours"]["jobs_s"] / row["pgqueuer"]["jobs_s"]
        rows.append(row)
    return {"jobs": n, "rows": rows}


def format_pg(result: dict[str, Any]) -> str:
    n = result["jobs"]
    lines = [f"PostgreSQL ledger vs pgqueuer ({n} jobs: enqueue, dequeue, done)",
             "  workers   ours jobs/s (enq/s, drain/s)   pgqueuer jobs/s (enq/s, drain/s)   ours/pgqueuer (drain)"]
    for r in result["rows"]:
        o, p = r["ours"], r["pgqueuer"]
        lines.append(f"  {r['workers']:>7}   {o['jobs_s']:8.0f} ({n / o['enqueue_s']:6.0f}, {n / o['drain_s']:6.0f})"
                     f"       {p['jobs_s']:8.0f} ({n / p['enqueue_s']:6.0f}, {n / p['drain_s']:6.0f})"
                     f"          {r['ratio']:.2f} ({p['drain_s'] / o['drain_s']:.2f})")
    return "\n".join(lines)
