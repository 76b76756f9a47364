"""The ledger on both backends, a real SQLite file and a real PostgreSQL database (a private
server, tests/pg.py): idempotent submission, leases, retries, dead-letter, migrations, admission
and several processes at once. Every test takes ``target`` (or ``ledger``, opened on it) and runs
once per backend."""

from __future__ import annotations

import json
import multiprocessing as mp
import random
import sqlite3
import time

import pytest

from appliance.offload import AdmissionRefused, Ledger, LedgerError, OffloadConfig, RetryPolicy, job_key
from appliance.offload.ledger import MIGRATIONS, PG_MIGRATIONS, SCHEMA_VERSION, backoff_delay, run_inputs


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


FAST = RetryPolicy(max_attempts=3, backoff_s=1.0, backoff_cap_s=4.0)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path) -> str:
    """Where a test's ledger lives: a fresh SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "l.sqlite")
    return request.getfixturevalue("pg_dsn")


def _pg(target: str):
    import psycopg

    return psycopg.connect(target, autocommit=True)


@pytest.fixture
def ledger(target, clock):
    with Ledger(target, policy=lambda kind: FAST, clock=clock, rng=random.Random(1)) as led:
        yield led


def test_file_is_wal_and_current_schema(ledger, target):
    assert ledger.schema_version == SCHEMA_VERSION
    if ledger.backend == "sqlite":
        with sqlite3.connect(ledger.path) as c:
            assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    else:
        assert ledger.backend == "postgresql" and target.startswith("postgresql://")
        with _pg(target) as c:
            assert c.execute("SELECT version FROM ledger_schema").fetchone()[0] == SCHEMA_VERSION


def test_submit_is_idempotent(ledger):
    a = ledger.submit("k", {"x": 1}, priority="batch")
    b = ledger.submit("k", {"x": 1}, priority="batch")
    c = ledger.submit("k", {"x": 2}, priority="batch")
    assert a.created and not b.created and c.created
    assert a.job.id == b.job.id != c.job.id
    assert len(ledger.jobs()) == 2
    # the key covers inputs and algorithm version too
    assert job_key("k", {}, {"m": "1"}) != job_key("k", {}, {"m": "2"})
    assert job_key("k", {}, algorithm="a", algorithm_version="1") != job_key("k", {}, algorithm="a", algorithm_version="2")


def test_run_inputs_hash_the_manifest(tmp_path):
    (tmp_path / "Manifest").mkdir()
    (tmp_path / "Manifest" / "run.json").write_bytes(b'{"a": 1}')
    (tmp_path / "Manifest" / "cycle_0003.json").write_bytes(b'{"c": 3}')
    whole, cyc = run_inputs(tmp_path), run_inputs(tmp_path, 3)
    assert list(whole) == ["Manifest/run.json"] and list(cyc) == ["Manifest/cycle_0003.json"]
    (tmp_path / "Manifest" / "run.json").write_bytes(b'{"a": 2}')
    assert run_inputs(tmp_path) != whole
    with pytest.raises(Exception, match="cannot read the manifest"):
        run_inputs(tmp_path, 9)


def test_lease_complete_and_history(ledger, clock):
    job = ledger.submit("k", {}, priority="batch").job
    leased = ledger.lease(job.id, "w1", 10)
    assert leased.state == "leased" and leased.attempts == 1 and leased.lease_owner == "w1"
    assert ledger.lease(job.id, "w2", 10) is None  # taken
    assert ledger.start(job.id, "w1")
    clock.t += 5
    assert ledger.heartbeat(job.id, "w1", 10)
    assert not ledger.heartbeat(job.id, "w2", 10)
    assert ledger.get(job.id).lease_expires == clock.t + 10
    assert ledger.complete(job.id, "w1", {"n": 3})
    done = ledger.get(job.id)
    assert done.state == "succeeded" and done.result == {"n": 3} and done.lease_owner is None
    assert [e["to_state"] for e in ledger.events(job.id)] == ["queued", "leased", "running", "succeeded"]
    assert not ledger.complete(job.id, "w1", {"n": 4})  # once


def test_transient_failures_back_off_then_hold_and_requeue(ledger, clock):
    job = ledger.submit("k", {}, priority="batch").job
    for attempt in (1, 2):
        assert ledger.lease(job.id, "w", 10) is not None
        j = ledger.fail(job.id, "w", "busy", transient=True)
        assert j.state == "retrying" and j.error_transient
        cap = min(FAST.backoff_cap_s, FAST.backoff_s * 2 ** (attempt - 1))
        assert clock.t <= j.next_attempt_at <= clock.t + cap
        assert ledger.lease(job.id, "w", 10) is None or j.next_attempt_at == clock.t  # not before the backoff
        clock.t = j.next_attempt_at
        assert [r.id for r in ledger.ready()] == [job.id]
    assert ledger.lease(job.id, "w", 10).attempts == 3
    held = ledger.fail(job.id, "w", "busy", transient=True)
    assert held.state == "held" and held.attempts == 3
    assert ledger.stats()["held"] == 1
    with pytest.raises(LedgerError, match="only held or cancelled"):
        ledger.requeue(ledger.submit("k", {"other": 1}, priority="batch").job.id)
    again = ledger.requeue(job.id)
    assert again.state == "queued" and again.attempts == 0 and again.error is None


def test_permanent_failure_holds_at_once_and_retry_gives_one_more(ledger):
    job = ledger.submit("k", {}, priority="batch").job
    ledger.lease(job.id, "w", 10)
    assert ledger.fail(job.id, "w", "bad input", transient=False).state == "held"
    j = ledger.retry(job.id)
    assert j.state == "queued" and j.max_attempts >= 2
    ledger.lease(job.id, "w", 10)
    assert ledger.complete(job.id, "w", {})


def test_expired_lease_is_retried_then_held(ledger, clock):
    job = ledger.submit("k", {}, priority="batch", max_attempts=2).job
    ledger.lease(job.id, "dead", 1.0)
    ledger.start(job.id, "dead")
    assert ledger.expire_leases() == []
    clock.t += 2
    [j] = ledger.expire_leases()
    assert j.state == "retrying" and "expired" in j.error
    assert not ledger.heartbeat(job.id, "dead", 1.0)  # the dead owner cannot revive it
    clock.t = j.next_attempt_at
    ledger.lease(job.id, "w2", 1.0)
    clock.t += 2
    [j] = ledger.expire_leases()
    assert j.state == "held"


def test_release_does_not_count_the_attempt(ledger):
    job = ledger.submit("k", {}, priority="batch").job
    ledger.lease(job.id, "w", 10)
    assert ledger.release(job.id, "w")
    j = ledger.get(job.id)
    assert j.state == "queued" and j.attempts == 0


def test_dependencies_wait_and_follow_held_or_cancelled(ledger):
    a = ledger.submit("a", {}, priority="realtime").job
    b = ledger.submit("b", {}, priority="batch", depends_on=a.id).job
    c = ledger.submit("c", {}, priority="batch", depends_on=b.id).job
    assert [j.id for j in ledger.ready()] == [a.id]
    ledger.lease(a.id, "w", 10)
    ledger.fail(a.id, "w", "bad", transient=False)
    ledger.resolve_dependencies()
    assert ledger.get(b.id).state == "held" and ledger.get(c.id).state == "held"
    ledger.requeue(a.id)  # requeues the dependents held because of it
    assert ledger.get(b.id).state == "queued" and ledger.get(c.id).state == "queued"
    ledger.lease(a.id, "w", 10)
    ledger.complete(a.id, "w", {})
    assert [j.id for j in ledger.ready()] == [b.id]
    ledger.cancel(b.id)
    ledger.resolve_dependencies()
    assert ledger.get(c.id).state == "cancelled"
    with pytest.raises(LedgerError, match="nothing to cancel"):
        ledger.cancel(a.id)


def test_cancel_running_job_refuses_its_heartbeat_and_result(ledger):
    job = ledger.submit("k", {}, priority="batch").job
    ledger.lease(job.id, "w", 10)
    ledger.cancel(job.id)
    assert not ledger.heartbeat(job.id, "w", 10)
    assert not ledger.complete(job.id, "w", {})
    assert ledger.get(job.id).state == "cancelled"


def test_stats_shape(ledger, clock):
    ledger.submit("k", {"a": 1}, priority="reprocess")
    clock.t += 30
    ledger.submit("k", {"a": 2}, priority="realtime")
    j = ledger.submit("k", {"a": 3}, priority="batch").job
    ledger.lease(j.id, "w", 10)
    ledger.fail(j.id, "w", "boom", transient=False)
    s = ledger.stats()
    assert s["depth"] == 2 and s["held"] == 1 and s["running"] == 0
    assert s["classes"]["reprocess"]["queued"] == 1 and s["classes"]["reprocess"]["oldest_queued_age_s"] == 30
    assert s["classes"]["realtime"]["oldest_queued_age_s"] == 0
    assert s["recent_failures"][0]["job"] == j.id and "boom" in s["recent_failures"][0]["reason"]
    assert s["backpressure"]["active"] is False
    json.dumps(s)


def test_admission_refuses_batch_past_depth_but_admits_realtime(target, clock):
    alerts = []
    cfg = OffloadConfig(depth_high=3, oldest_age_s=100.0)
    with Ledger(target, config=cfg, clock=clock, on_alert=alerts.append) as led:
        for i in range(3):
            led.submit("k", {"i": i}, priority="reprocess")
        with pytest.raises(AdmissionRefused, match="offload.depth_high = 3"):
            led.submit("k", {"i": 99}, priority="batch", wait_s=0)
        assert led.submit("k", {"i": 100}, priority="realtime").created
        assert led.submit("k", {"i": 0}, priority="reprocess").created is False  # existing keys are not refused
        assert [a["action"] for a in alerts] == ["raised"] and alerts[0]["rule"] == "offload_backpressure"
        assert led.stats()["backpressure"]["active"]
        # drained: admitted again, the alert clears
        for j in led.jobs(priority="reprocess") + led.jobs(priority="realtime"):
            led.cancel(j.id)
        assert led.submit("k", {"i": 99}, priority="batch").created
        assert [a["action"] for a in alerts] == ["raised", "cleared"]


def test_a_per_instrument_watermark_holds_back_only_that_instrument(target, clock):
    """offload.instrument_depth_high: instrument A at its own watermark is refused batch work
    (named, with the fix) while B's batch work and A's realtime jobs are admitted."""
    cfg = OffloadConfig(depth_high=100, instrument_depth_high=3)
    with Ledger(target, config=cfg, clock=clock) as led:
        for i in range(3):
            led.submit("k", {"i": i}, priority="reprocess", instrument_id="A")
        with pytest.raises(AdmissionRefused, match=r"instrument A has 3 jobs waiting .* offload.instrument_depth_high = 3"):
            led.submit("k", {"i": 99}, priority="batch", wait_s=0, instrument_id="A")
        assert led.submit("k", {"i": 100}, priority="realtime", instrument_id="A").created
        assert led.submit("k", {"i": 101}, priority="batch", instrument_id="B").created
        led.cancel(led.jobs(instrument="A", priority="reprocess", state="queued")[0].id)
        # A's realtime job counts too (it waits): 3 again, still held back; one more gone, admitted
        with pytest.raises(AdmissionRefused, match="instrument A"):
            led.submit("k", {"i": 99}, priority="batch", wait_s=0, instrument_id="A")
        led.cancel(led.jobs(instrument="A", priority="reprocess", state="queued")[0].id)
        assert led.submit("k", {"i": 99}, priority="batch", instrument_id="A").created


def test_admission_by_age_and_waiting_submission(target, clock):
    cfg = OffloadConfig(depth_high=100, oldest_age_s=60.0)
    with Ledger(target, config=cfg, clock=clock) as led:
        old = led.submit("k", {"i": 0}, priority="batch").job
        clock.t += 61
        with pytest.raises(AdmissionRefused, match="offload.oldest_age_s"):
            led.submit("k", {"i": 1}, priority="batch", wait_s=0)
        # a waiting submission is admitted as soon as the old job is gone (another process in real life)
        import threading

        t = threading.Timer(0.2, lambda: led.cancel(old.id))
        t.start()
        try:
            led._clock = _Advancing(clock.t)
            assert led.submit("k", {"i": 2}, priority="batch", wait_s=5).created
        finally:
            t.join()
        assert led.refused == 1


class _Advancing:
    """A clock that follows the wall clock from ``t`` (for a waiting submission)."""

    def __init__(self, t: float) -> None:
        import time

        self.t0, self.w0, self._time = t, time.monotonic(), time.monotonic

    def __call__(self) -> float:
        return self.t0 + self._time() - self.w0


def test_backoff_is_full_jitter_and_capped():
    rng = random.Random(3)
    xs = [backoff_delay(5, 1.0, 4.0, rng) for _ in range(2000)]
    assert 0 <= min(xs) < 0.1 and 3.9 < max(xs) <= 4.0
    assert all(0 <= backoff_delay(1, 2.0, 100.0, rng) <= 2.0 for _ in range(100))


_V1_JOB = ("INSERT INTO jobs(key, kind, priority, params, state, attempts, max_attempts, next_attempt_at, created_at) "
           "VALUES ('k1', 'fastq', 'realtime', '{\"run\": \"R1\"}', 'held', 3, 3, 0, 5.0)")


def _set_version(target: str, version: int, schema=None) -> None:
    """Write a ledger at schema ``version`` by hand (the first migrations of ``schema``)."""
    if not target.startswith("postgresql://"):
        with sqlite3.connect(target) as c:
            for m in (schema or ())[:version]:
                m(c)
            c.execute(f"PRAGMA user_version = {version}")
            if schema:
                c.execute(_V1_JOB)
        c.close()
        return
    with _pg(target) as c:
        for m in (schema or ())[:version]:
            for stmt in m:
                c.execute(stmt)
        c.execute("CREATE TABLE ledger_schema (version INTEGER NOT NULL)")
        c.execute("INSERT INTO ledger_schema VALUES (%s)", (version,))
        if schema:
            c.execute(_V1_JOB)


def test_migration_upgrades_a_version_1_file(target):
    path = target
    _set_version(target, 1, PG_MIGRATIONS if target.startswith("postgresql://") else MIGRATIONS)
    with Ledger(path) as led:
        assert led.schema_version == SCHEMA_VERSION
        [job] = led.jobs()
        assert job.kind == "fastq" and job.params == {"run": "R1"} and job.algorithm is None and job.depends_on is None
        assert job.instrument_id == ""
        assert [e["to_state"] for e in led.events(job.id)] == ["held"]
        led.requeue(job.id)
        assert led.get(job.id).state == "queued"
    with Ledger(path) as led:  # reopening an up-to-date file is a no-op
        assert len(led.jobs()) == 1


def test_newer_or_corrupt_file_is_a_clear_error(tmp_path, target):
    _set_version(target, SCHEMA_VERSION + 1)
    with pytest.raises(LedgerError, match="newer than this"):
        Ledger(target)
    if target.startswith("postgresql://"):
        with pytest.raises(LedgerError, match="cannot connect to the ledger database .*check offload.ledger"):
            Ledger(target.replace("/t_", "/no_such_db_"))
        return
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="not a readable SQLite database"):
        Ledger(bad)
    assert bad.read_bytes().startswith(b"this is not sqlite")  # left alone


def _hammer(path: str, owner: str, n: int) -> None:
    with Ledger(path, policy=lambda k: FAST) as led:
        for i in range(n):
            led.submit("k", {"i": i}, priority="batch")  # both processes submit the same keys
        done = 0
        while True:
            job = led.lease_next(owner, 30)
            if job is None:
                break
            led.start(job.id, owner)
            assert led.complete(job.id, owner, {"by": owner})
            done += 1


def test_several_processes_share_one_ledger(target):
    path = target
    Ledger(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(path, f"p{i}", 40)) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Ledger(path) as led:
        jobs = led.jobs(limit=1000)
        assert len(jobs) == 40 and all(j.state == "succeeded" and j.attempts == 1 for j in jobs)
        for j in jobs:  # each job leased and completed exactly once
            assert [e["to_state"] for e in led.events(j.id)] == ["queued", "leased", "running", "succeeded"]


def _submit_until_refused(path: str, owner: str, n: int, go) -> None:
    with Ledger(path, config=OffloadConfig(depth_high=10)) as led:
        go.wait(30)
        for i in range(n):
            try:
                led.submit("k", {"owner": owner, "i": i}, priority="batch", wait_s=0)
            except AdmissionRefused:
                pass


def test_admission_is_exact_across_processes(target):
    """Three processes submit at once against depth_high = 10: the decision is taken inside
    the write transaction, so exactly 10 jobs get in, not 10 plus whoever raced past."""
    path = target
    Ledger(path).close()
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_submit_until_refused, args=(path, f"p{i}", 20, go)) for i in range(3)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with Ledger(path) as led:
        assert len(led.jobs(limit=1000)) == 10


def test_admission_rechecks_inside_the_write_transaction(target):
    """Deterministic form of the race above: another process's submission lands just before
    this one's insert; the decision, taken inside the insert's transaction, sees it."""
    path = target
    cfg = OffloadConfig(depth_high=10)
    raced = []
    calls = [0]

    def racing_clock() -> float:
        # the ledger reads the clock for its deadline, then for the job's time just before its
        # write transaction (older versions: just after reading the depth): the other commits there
        calls[0] += 1
        if calls[0] == 2 and not raced:
            raced.append(other.submit("k", {"by": "other"}, priority="batch", wait_s=0).created)
        return time.time()

    with Ledger(path, config=cfg) as other:
        for i in range(9):
            other.submit("k", {"i": i}, priority="batch")
        with Ledger(path, config=cfg, clock=racing_clock) as led:
            with pytest.raises(AdmissionRefused, match="offload.depth_high = 10"):
                led.submit("k", {"by": "me"}, priority="batch", wait_s=0)
        assert raced == [True]  # the other submission did land in the window
        assert len(other.jobs(limit=100)) == 10


def test_fair_share_an_instruments_backlog_does_not_hold_back_another_instruments_job(ledger):
    """Instrument A floods the realtime class; B's job, submitted after all of A's, is leased
    as soon as a slot frees (A has a job in flight, B none), not after A's whole backlog.
    Within one instrument the order stays oldest first."""
    flood = [ledger.submit("k", {"i": i}, priority="realtime", instrument_id="A").job for i in range(20)]
    first = ledger.lease_next("w1", 60)
    assert first.id == flood[0].id  # nobody in flight: the oldest
    b = ledger.submit("k", {"i": "b"}, priority="realtime", instrument_id="B").job
    second = ledger.lease_next("w2", 60)
    assert second.id == b.id and second.instrument_id == "B"  # A has one in flight, B none
    third = ledger.lease_next("w3", 60)
    assert third.id == flood[1].id  # A's next, in order
    ledger.complete(first.id, "w1", {})
    ledger.complete(second.id, "w2", {})
    ledger.complete(third.id, "w3", {})
    # the classes stay strict: a batch job of an idle instrument waits for realtime work
    ledger.submit("k", {"i": "c"}, priority="batch", instrument_id="C")
    assert ledger.lease_next("w4", 60).priority == "realtime"


def test_fair_share_in_the_dispatch_order_of_ready(ledger):
    """The orchestrator dispatches from ready() (then scheduler.plan, which keeps the order
    within a class): with A's 100 realtime jobs waiting and one in flight, B's job, submitted
    last, is first in the list, not beyond the first per_class (64) of A's backlog."""
    for i in range(100):
        ledger.submit("k", {"i": i}, priority="realtime", instrument_id="A")
    a1 = ledger.lease_next("w1", 60)
    b = ledger.submit("k", {"i": "b"}, priority="realtime", instrument_id="B").job
    ready = [j for j in ledger.ready(per_class=64) if j.priority == "realtime"]
    assert len(ready) == 64 and ready[0].id == b.id
    assert [j.instrument_id for j in ready[1:]] == ["A"] * 63
    ids = [j.id for j in ready[1:]]
    assert ids == sorted(ids) and a1.id not in ids  # A's own jobs oldest first
    # two instruments with nothing in flight: round robin by each one's waiting order
    ledger.complete(a1.id, "w1", {})
    c = [ledger.submit("k", {"i": f"c{i}"}, priority="realtime", instrument_id="C").job for i in range(2)]
    ready = [j for j in ledger.ready(per_class=6) if j.priority == "realtime"]
    assert [j.instrument_id for j in ready] == ["A", "B", "C", "A", "C", "A"] and ready[4].id == c[1].id
