"""The lab ledger on a real private PostgreSQL server (tests/pg.py): many processes leasing from
one table, LISTEN/NOTIFY wake-ups, lost connections, the instrument's outbox across a server
restart, instrument ids, and the orchestrator on it. The backend-independent suite runs on
PostgreSQL too (test_ledger.py, parametrised)."""

from __future__ import annotations

import json
import multiprocessing as mp
import threading
import time
from collections import Counter

import pytest

from appliance.offload import Ledger, LedgerError, Orchestrator, RetryPolicy

from .conftest import fast_config, wait_for

FAST = RetryPolicy(max_attempts=3, backoff_s=0.1, backoff_cap_s=0.5)


# -- many processes on one ledger ----------------------------------------------------------------

def _submitter(dsn: str, me: int, n: int, go) -> None:
    with Ledger(dsn, policy=lambda k: FAST, instrument_id=f"INST{me}") as led:
        go.wait(60)
        for i in range(n):
            led.submit("k", {"shared": i}, priority="batch")  # every submitter submits these keys
            led.submit("k", {"own": i, "by": me}, priority="realtime" if i % 3 == 0 else "reprocess")


def _orchestrator(dsn: str, owner: str, use_skip_locked: bool, go, done_submitting) -> None:
    """An orchestrator's ledger work in a loop: expire, settle, lease (SKIP LOCKED in
    lease_next, or ready() + lease(id) as the dispatcher does), start, complete."""
    with Ledger(dsn, policy=lambda k: FAST) as led:
        go.wait(60)
        idle_since = None
        while True:
            led.expire_leases()
            led.resolve_dependencies()
            if use_skip_locked:
                job = led.lease_next(owner, 30)
            else:
                job = next((j for j in (led.lease(r.id, owner, 30) for r in led.ready(per_class=8)) if j is not None), None)
            if job is None:
                if done_submitting.is_set():
                    idle_since = idle_since or time.monotonic()
                    if time.monotonic() - idle_since > 1.0:
                        return
                time.sleep(0.005)
                continue
            idle_since = None
            assert led.start(job.id, owner)
            assert led.heartbeat(job.id, owner, 30)
            assert led.complete(job.id, owner, {"by": owner})


def test_two_orchestrators_and_several_submitters_share_one_pg_ledger(pg_dsn):
    Ledger(pg_dsn).close()
    ctx = mp.get_context("spawn")
    go, done_submitting = ctx.Event(), ctx.Event()
    n, submitters = 30, 3
    subs = [ctx.Process(target=_submitter, args=(pg_dsn, s, n, go)) for s in range(submitters)]
    orchs = [ctx.Process(target=_orchestrator, args=(pg_dsn, f"orch{i}", i == 0, go, done_submitting)) for i in range(2)]
    for p in subs + orchs:
        p.start()
    go.set()
    try:
        for p in subs:
            p.join(120)
            assert p.exitcode == 0
        done_submitting.set()
        for p in orchs:
            p.join(120)
            assert p.exitcode == 0
    finally:
        for p in subs + orchs:
            if p.is_alive():
                p.kill()
                p.join()
    with Ledger(pg_dsn) as led:
        jobs = led.jobs(limit=10_000)
        # nothing lost, nothing doubled: the shared keys once, every submitter's own keys once
        assert len(jobs) == n + submitters * n
        assert len({j.key for j in jobs}) == len(jobs)
        assert all(j.state == "succeeded" and j.attempts == 1 for j in jobs)
        owners = Counter()
        for j in jobs:  # each job leased once, by one owner, and its history in order
            ev = led.events(j.id)
            assert [e["to_state"] for e in ev] == ["queued", "leased", "running", "succeeded"]
            assert len({e["owner"] for e in ev[1:]}) == 1 and j.result == {"by": ev[1]["owner"]}
            owners[ev[1]["owner"]] += 1
        assert set(owners) <= {"orch0", "orch1"}
        own = [j for j in jobs if "own" in j.params]
        assert {j.instrument_id for j in own} == {f"INST{s}" for s in range(submitters)}
        assert all(j.instrument_id == f"INST{j.params['by']}" for j in own)


# -- LISTEN/NOTIFY -------------------------------------------------------------------------------

def test_submit_and_complete_wake_a_waiting_dispatcher(pg_dsn):
    with Ledger(pg_dsn) as waiter, Ledger(pg_dsn) as other:
        assert waiter.wait_for_change(0.05) is False  # nothing happened: the wait runs out
        got = []

        def wait():
            got.append(waiter.wait_for_change(60))

        t = threading.Thread(target=wait)
        t.start()
        time.sleep(0.3)  # the waiter is listening (its LISTEN ran before the first wait returned)
        job = other.submit("k", {}, priority="batch").job
        t.join(60)
        assert got == [True]
        other.lease(job.id, "w", 10)
        assert waiter.wait_for_change(0.01) is False  # a lease is not a change a dispatcher waits for
        other.complete(job.id, "w", {})
        assert waiter.wait_for_change(60) is True
        # wake() ends a wait from another thread
        stop = threading.Event()
        got.clear()
        t = threading.Thread(target=lambda: got.append(waiter.wait_for_change(60, stop)))
        t.start()
        time.sleep(0.2)
        stop.set()
        waiter.wake()
        t.join(10)
        assert not t.is_alive() and got == [False]


def test_sqlite_has_no_notifications_and_waits_out_its_tick(tmp_path):
    with Ledger(tmp_path / "l.sqlite") as led:
        stop = threading.Event()
        stop.set()
        assert led.wait_for_change(30, stop) is False  # returns at once when told to stop
        assert led.wait_for_change(0.01) is False


# -- lost connections ----------------------------------------------------------------------------

def test_a_killed_connection_is_reopened_and_nothing_is_lost(pg_dsn, pg_server):
    import psycopg

    with Ledger(pg_dsn) as led:
        a = led.submit("k", {"i": 1}, priority="batch").job
        with psycopg.connect(pg_server.dsn(), autocommit=True) as admin:  # an admin kills our session
            n = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s "
                              "AND application_name = 'appliance-ledger'", (pg_dsn.split("/")[3].split("?")[0],)).fetchone()[0]
        assert n == 1
        b = led.submit("k", {"i": 2}, priority="batch").job  # transparently on a new connection
        assert led.lease(a.id, "w", 10) is not None
        assert {j.id for j in led.jobs()} == {a.id, b.id}


def test_an_operation_waits_out_a_short_outage_then_gives_up_with_a_message(pg_dsn, pg_server):
    with Ledger(pg_dsn, reconnect_s=60) as led:
        job = led.submit("k", {}, priority="batch").job
        pg_server.stop()
        result = []
        t = threading.Thread(target=lambda: result.append(led.lease(job.id, "w", 10)))
        try:
            t.start()
            time.sleep(1.0)
            assert t.is_alive()  # retrying with backoff
        finally:
            pg_server.start()
        t.join(60)
        assert result and result[0].state == "leased"
    with Ledger(pg_dsn, reconnect_s=0.5) as led:
        pg_server.stop()
        try:
            with pytest.raises(LedgerError, match="unreachable .*nothing was lost"):
                led.get(job.id)
        finally:
            pg_server.start()
        assert led.get(job.id).state == "leased"


# -- the outbox ----------------------------------------------------------------------------------

def _hand_over_all(led, timeout: float) -> int:
    delivered, deadline = 0, time.monotonic() + timeout
    while led.outbox_pending() and time.monotonic() < deadline:
        delivered += led.handover()
        time.sleep(0.1)
    return delivered


def test_instruments_on_one_data_root_keep_their_own_outboxes_and_drain_a_shared_one(pg_dsn, pg_server, tmp_path):
    from appliance.offload.config import OffloadConfig

    cfg = OffloadConfig()
    box_a, box_b, shared = (cfg.outbox_path(tmp_path, "SIM01"), cfg.outbox_path(tmp_path, "SIM02"), cfg.outbox_path(tmp_path))
    assert len({box_a, box_b, shared}) == 3 and box_a.name == "outbox-SIM01.sqlite"
    box_a.parent.mkdir(parents=True)
    with Ledger(pg_dsn, outbox=shared, instrument_id="OLD") as old:  # an earlier release's shared file
        pg_server.stop()
        try:
            legacy = old.submit("fastq", {"run": "R0"}, priority="batch").job
        finally:
            pg_server.start()
    with Ledger(pg_dsn, outbox=box_a, instrument_id="SIM01", drain_outboxes=(shared,)) as a, \
            Ledger(pg_dsn, outbox=box_b, instrument_id="SIM02", drain_outboxes=(shared,)) as b:
        pg_server.stop()
        try:
            ja = a.submit("fastq", {"run": "RA"}, priority="batch").job
            jb = b.submit("fastq", {"run": "RB"}, priority="batch").job
            assert ja.id < 0 and jb.id < 0
            assert a.outbox_pending() == 2 and b.outbox_pending() == 2  # its own, and the shared one's
        finally:
            pg_server.start()
        assert _hand_over_all(a, 4 * a.reconnect_s + 10) == 2  # its own and the shared entry, not SIM02's
        assert b.outbox_pending() == 1  # SIM02's own: the shared entry is delivered already
        assert _hand_over_all(b, 4 * b.reconnect_s + 10) == 1
        jobs = {j.params["run"]: j for j in a.jobs()}
        assert set(jobs) == {"R0", "RA", "RB"}  # each submission reached the lab exactly once
        assert (jobs["R0"].instrument_id, jobs["RA"].instrument_id, jobs["RB"].instrument_id) == ("OLD", "SIM01", "SIM02")
        assert a.by_key(legacy.key).id == jobs["R0"].id


def test_submissions_go_to_the_outbox_while_the_server_is_down(pg_dsn, pg_server, tmp_path):
    outbox = tmp_path / "outbox.sqlite"
    with Ledger(pg_dsn, outbox=outbox, instrument_id="SIM07") as led:
        before = led.submit("k", {"i": 0}, priority="realtime").job
        assert before.id > 0 and led.outbox_pending() == 0
        pg_server.stop()
        try:
            t0 = time.monotonic()
            a = led.submit("fastq", {"run": "R1"}, priority="realtime")
            b = led.submit("align-qc", {"run": "R1"}, priority="batch", depends_on=a.job.id)
            again = led.submit("fastq", {"run": "R1"}, priority="realtime")
            took = time.monotonic() - t0
            assert a.created and a.job.id < 0 and b.job.id < 0 and b.job.depends_on == a.job.id
            assert not again.created and again.job.id == a.job.id
            led.set_output_dir(a.job.id, "/data/Analysis/R1/fastq")
            assert led.get(a.job.id).output_dir == "/data/Analysis/R1/fastq"
            assert led.by_key(b.job.key).id == b.job.id
            assert led.outbox_pending() == 2 and led.handover() == 0
            assert took < led.reconnect_s  # it did not wait for the server to come back
        finally:
            pg_server.start()
        # handover is called on the orchestrator's tick: it skips while the last failure's
        # backoff runs, then delivers everything at once
        delivered, deadline = 0, time.monotonic() + 4 * led.reconnect_s + 10
        while led.outbox_pending() and time.monotonic() < deadline:
            delivered += led.handover()
            time.sleep(0.1)
        assert delivered == 2 and led.outbox_pending() == 0
        fastq, align = led.by_key(a.job.key), led.by_key(b.job.key)
        assert fastq.id > 0 and align.depends_on == fastq.id and fastq.output_dir == "/data/Analysis/R1/fastq"
        assert fastq.instrument_id == "SIM07" and led.get(a.job.id).id == fastq.id  # the old id still resolves
        assert led.submit("fastq", {"run": "R1"}, priority="realtime").job.id == fastq.id
        assert len(led.jobs()) == 3
    with Ledger(pg_dsn, outbox=outbox) as led:  # a new process finds nothing left to hand over
        assert led.handover() == 0 and len(led.jobs()) == 3


def _submit_through_restarts(dsn: str, outbox: str, n: int, out) -> None:
    with Ledger(dsn, outbox=outbox, instrument_id="SIM01", connect_timeout_s=1) as led:
        outboxed = 0
        for i in range(n):
            outboxed += led.submit("cycle-qc", {"run": "R9", "cycle": i}, priority="realtime").job.id < 0
            time.sleep(0.01)
        deadline = time.monotonic() + 60
        while led.outbox_pending() and time.monotonic() < deadline:
            led.handover()
            time.sleep(0.1)
        out.put({"outboxed": outboxed, "pending": led.outbox_pending()})


def test_pg_restarted_while_submitting_every_job_arrives_exactly_once(pg_dsn, pg_server, tmp_path):
    Ledger(pg_dsn).close()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    n = 150
    p = ctx.Process(target=_submit_through_restarts, args=(pg_dsn, str(tmp_path / "outbox.sqlite"), n, out))
    p.start()
    try:
        with Ledger(pg_dsn) as watch:
            wait_for(lambda: len(watch.jobs(limit=1000)) >= 10, timeout=120, what="the first submissions")
        pg_server.restart()  # pg_ctl restart -m fast: every connection is cut
        time.sleep(0.3)
        pg_server.stop()  # and an outage long enough that submissions must wait in the outbox
        time.sleep(1.5)
        pg_server.start()
        report = out.get(timeout=180)
        p.join(60)
        assert p.exitcode == 0
    finally:
        if not pg_server.running():
            pg_server.start()
        if p.is_alive():
            p.kill()
            p.join()
    assert report["pending"] == 0 and report["outboxed"] > 0
    with Ledger(pg_dsn) as led:
        jobs = led.jobs(limit=10_000)
        assert sorted(j.params["cycle"] for j in jobs) == list(range(n))  # each once, none lost
        for j in jobs:
            assert [e["to_state"] for e in led.events(j.id)] == ["queued"] and j.instrument_id == "SIM01"


# -- instruments, the CLI and the orchestrator on PostgreSQL ---------------------------------------

def test_jobs_carry_their_instrument_and_the_cli_shows_it(pg_dsn, capsys):
    from appliance.cli import main

    with Ledger(pg_dsn, instrument_id="SIM02") as led:
        a = led.submit("k", {"i": 1}, priority="batch").job
        b = led.submit("k", {"i": 2}, priority="batch", instrument_id="SIM03").job
        assert (a.instrument_id, b.instrument_id) == ("SIM02", "SIM03")
        assert [j.id for j in led.jobs(instrument="SIM03")] == [b.id]
    assert main(["jobs", "ls", "--ledger", pg_dsn, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["jobs"]
    assert {r["id"]: r["instrument"] for r in rows} == {a.id: "SIM02", b.id: "SIM03"}
    assert main(["jobs", "ls", "--ledger", pg_dsn]) == 0
    table = capsys.readouterr().out
    assert "INSTRUMENT" in table and "SIM03" in table
    assert main(["jobs", "show", str(b.id), "--ledger", pg_dsn, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["job"]["instrument_id"] == "SIM03"


def test_orchestrator_runs_jobs_from_a_pg_ledger(pg_dsn, tmp_path, jobs_plugin, no_leaked_threads):
    src = tmp_path / "in.bin"
    src.write_bytes(b"y" * 4096)
    orch = Orchestrator(fast_config(ledger=pg_dsn, tick_s=2.0), tmp_path, scan=False, instrument_id="SIM05")
    assert orch.ledger.backend == "postgresql" and orch.ledger_path == pg_dsn
    orch.start()
    try:
        job = orch.submit("test-hash", {"path": str(src), "log": str(tmp_path / "done.log")}).job
        done = wait_for(lambda: (j := orch.ledger.get(job.id)).state == "succeeded" and j, what="the job to succeed")
        assert done.instrument_id == "SIM05" and done.result
    finally:
        orch.stop(10)
    assert not (tmp_path / ".offload" / "ledger.sqlite").exists()  # the lab ledger was used, not a local file


def test_ledger_url_is_validated_in_the_config():
    from appliance.config import ConfigError
    from appliance.offload import load_offload

    assert load_offload({"ledger": "postgresql:///lab?host=/run/postgresql"}).ledger_is_postgres
    assert load_offload({"ledger": "/data/ledger.sqlite"}).ledger_is_postgres is False
    with pytest.raises(ConfigError, match="offload.ledger .*PostgreSQL URL"):
        load_offload({"ledger": "mysql://lab"})
    with pytest.raises(LedgerError, match="looks like a PostgreSQL URL but is not one"):
        Ledger("postgresql:/lab?host=/run/postgresql")  # not silently a SQLite file of that name


def test_an_instrument_role_uses_the_ledger_its_owner_created(pg_server):
    """docs/lab.md's grants: the owner role creates and migrates the schema; an instrument's role
    (SELECT, INSERT, UPDATE; no CREATE) submits, leases and completes, and is told what to do
    when the schema is missing."""
    import uuid

    import psycopg

    tag = uuid.uuid4().hex[:8]
    owner, inst, db = f"owner_{tag}", f"sim_{tag}", f"lab_{tag}"
    pg_server.sql(f"CREATE ROLE {owner} LOGIN")
    pg_server.sql(f"CREATE ROLE {inst} LOGIN")
    pg_server.sql(f"CREATE DATABASE {db} OWNER {owner}")
    try:
        pg_server.sql("REVOKE CREATE ON SCHEMA public FROM PUBLIC", db=db)
        base = f"postgresql:///{db}?host={pg_server.folder}"
        with pytest.raises(LedgerError, match="open it once as the database's owner role"):
            Ledger(f"{base}&user={inst}")
        Ledger(f"{base}&user={owner}").close()
        with psycopg.connect(f"{base}&user={owner}", autocommit=True) as c:
            c.execute(f"GRANT SELECT, INSERT, UPDATE ON jobs, events TO {inst}")
            c.execute(f"GRANT SELECT ON ledger_schema TO {inst}")
            c.execute(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {inst}")
        with Ledger(f"{base}&user={inst}", instrument_id="SIM01") as led:
            job = led.submit("k", {}, priority="batch").job
            assert led.lease_next("w", 10).id == job.id and led.complete(job.id, "w", {})
            assert led.get(job.id).state == "succeeded"
    finally:
        pg_server.drop_database(db)
        pg_server.sql(f"DROP ROLE IF EXISTS {inst}")
        pg_server.sql(f"DROP ROLE IF EXISTS {owner}")
