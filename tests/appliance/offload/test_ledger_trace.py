"""The ledger's history carries the trace and span ids of each attempt (schema 4), on SQLite
and on PostgreSQL (a private server, tests/pg.py), and ``appliance jobs show`` prints them."""

from __future__ import annotations

import sqlite3

import pytest

from appliance.cli import main
from appliance.offload import Ledger
from appliance.offload.ledger import MIGRATIONS, PG_MIGRATIONS, SCHEMA_VERSION, RetryPolicy
from appliance.tracing import attempt_span_id, trace_hex

RUN = "261203_SIM01_0042_FC0042"
FAST = RetryPolicy(max_attempts=3, backoff_s=0.0, backoff_cap_s=0.0)


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "l.sqlite")
    return request.getfixturevalue("pg_dsn")


def _span(job_id: int, attempt: int) -> str:
    return f"{attempt_span_id(RUN, job_id, attempt):016x}"


def test_each_attempts_history_entries_carry_its_trace_and_span(target):
    with Ledger(target, policy=lambda kind: FAST) as led:
        job = led.submit("fastq", {"run": RUN}).job
        assert led.lease(job.id, "w", 30) is not None and led.start(job.id, "w", 30)
        led.fail(job.id, "w", "ECONNRESET", transient=True)
        assert led.lease(job.id, "w", 30) is not None and led.start(job.id, "w", 30)
        assert led.complete(job.id, "w", {"ok": True})
        other = led.submit("fastq", {"path": "/no/run"}).job  # reads no run: no trace
        led.lease(other.id, "w", 30)
        led.release(other.id, "w")
        history = [(e["to_state"], e["trace_id"], e["span_id"]) for e in led.events(job.id)]
        plain = [(e["to_state"], e["trace_id"], e["span_id"]) for e in led.events(other.id)]
    tid = trace_hex(RUN)
    assert history == [("queued", None, None),  # the submission belongs to no attempt
                       ("leased", tid, _span(job.id, 1)), ("running", tid, _span(job.id, 1)),
                       ("retrying", tid, _span(job.id, 1)),
                       ("leased", tid, _span(job.id, 2)), ("running", tid, _span(job.id, 2)),
                       ("succeeded", tid, _span(job.id, 2))]
    assert plain == [("queued", None, None), ("leased", None, None), ("queued", None, None)]


_V3_JOB = ("INSERT INTO jobs(key, kind, priority, params, state, attempts, max_attempts, next_attempt_at, created_at) "
           f"VALUES ('k1', 'fastq', 'realtime', '{{\"run\": \"{RUN}\"}}', 'queued', 0, 3, 0, 5.0)")
_V3_EVENT = "INSERT INTO events(job_id, at, to_state, reason) VALUES (1, 5.0, 'queued', 'submitted')"


def test_a_schema_3_ledger_is_migrated_and_keeps_its_history(target):
    """A ledger the previous release wrote (schema 3, a job with its history) gains the nullable
    columns; its old entries have no ids, the next attempt's entries do."""
    if target.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(target, autocommit=True) as c:
            for m in PG_MIGRATIONS[:3]:
                for stmt in m:
                    c.execute(stmt)
            c.execute("CREATE TABLE ledger_schema (version INTEGER NOT NULL)")
            c.execute("INSERT INTO ledger_schema VALUES (3)")
            c.execute(_V3_JOB)
            c.execute(_V3_EVENT)
    else:
        c = sqlite3.connect(target)
        with c:
            for m in MIGRATIONS[:3]:
                m(c)
            c.execute("PRAGMA user_version = 3")
            c.execute(_V3_JOB)
            c.execute(_V3_EVENT)
        c.close()
    assert SCHEMA_VERSION == 4
    with Ledger(target, policy=lambda kind: FAST) as led:
        assert led.schema_version == 4
        [job] = led.jobs()
        [e] = led.events(job.id)
        assert (e["to_state"], e["reason"], e["trace_id"], e["span_id"]) == ("queued", "submitted", None, None)
        led.lease(job.id, "w", 30)
        assert led.events(job.id)[-1]["span_id"] == _span(job.id, 1)


def test_jobs_show_prints_the_trace_and_span_of_each_attempt_line(tmp_path, capsys):
    with Ledger(tmp_path / ".offload" / "ledger.sqlite", policy=lambda kind: FAST) as led:
        job = led.submit("fastq", {"run": RUN}).job
        led.lease(job.id, "w", 30)
        led.fail(job.id, "w", "ENOENT", transient=False)
    capsys.readouterr()
    assert main(["jobs", "show", str(job.id), "--root", str(tmp_path)]) == 0
    history = capsys.readouterr().out.split("history:\n", 1)[1].splitlines()
    assert "span" not in history[0] and "queued" in history[0]
    for line in history[1:3]:
        assert line.endswith(f"trace {trace_hex(RUN)} span {_span(job.id, 1)}"), line
