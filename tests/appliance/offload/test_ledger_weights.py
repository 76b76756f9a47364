"""The ledger's own dispatch order weighted by ``offload.instrument_weights`` (``ready`` and
``lease_next``), and the one-statement paths on PostgreSQL (``complete``, ``heartbeat``,
``lease_next`` across the classes) keeping every state, history entry and trace id. On a real
SQLite file and a real PostgreSQL database (a private server, tests/pg.py)."""

from __future__ import annotations

import pytest

from appliance.offload import Ledger, LedgerError, OffloadConfig, RetryPolicy
from appliance.tracing import attempt_ids

FAST = RetryPolicy(max_attempts=3, backoff_s=0.0, backoff_cap_s=0.0)
RUN = "261203_SIM01_0042_FC0042"


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "l.sqlite")
    return request.getfixturevalue("pg_dsn")


def _open(target: str, weights: dict[str, float] | None = None) -> Ledger:
    return Ledger(target, config=OffloadConfig(instrument_weights=weights or {}), policy=lambda kind: FAST)


def _flood(led: Ledger, n: int, instruments=("A", "B"), priority: str = "batch") -> None:
    for i in range(n):
        for inst in instruments:
            led.submit("k", {"i": i, "by": inst, "class": priority}, priority=priority, instrument_id=inst)


def test_a_deep_backlog_fills_the_ready_window_by_weight(target):
    """Weights 2:1, both instruments with a backlog far deeper than the window: the window
    holds 2:1 of their jobs (not 1:1), each instrument's oldest first, also with jobs in flight."""
    with _open(target, {"A": 2.0, "B": 1.0}) as led:
        _flood(led, 60)
        window = led.ready(per_class=12)
        assert [j.instrument_id for j in window].count("A") == 8 and len(window) == 12
        for inst in "AB":
            ids = [j.id for j in window if j.instrument_id == inst]
            assert ids == sorted(ids)
        # the scheduler's weighted least-served-first: A's k-th job at (k-1)/2, B's at k-1;
        # ties: the instrument's earlier job first, then the oldest
        assert [j.instrument_id for j in window[:6]] == ["A", "B", "A", "B", "A", "A"]
        # in flight counts: A 4 (load 2 per unit), B 0 -> B's first jobs lead, then 2:1 again
        for _ in range(4):
            led.lease(next(j for j in led.ready(per_class=60) if j.instrument_id == "A").id, "w", 60)
        window = led.ready(per_class=12)
        assert [j.instrument_id for j in window[:2]] == ["B", "B"]
        # A's k-th at (4+k-1)/2, B's at k-1: through the window A reaches 10 (5 per unit), B 6
        assert [j.instrument_id for j in window].count("A") == 6


def test_lease_next_takes_the_weighted_share(target):
    with _open(target, {"A": 2.0}) as led:  # B is not named: weight 1
        _flood(led, 30)
        leased = [led.lease_next(f"w{i}", 60) for i in range(30)]
        assert [j.instrument_id for j in leased].count("A") == 20
        assert all(j.priority == "batch" for j in leased)


def test_without_weights_the_window_is_the_equal_share(target):
    with _open(target) as led:
        _flood(led, 30)
        window = led.ready(per_class=12)
        assert [j.instrument_id for j in window] == ["A", "B"] * 6
        assert [led.lease_next("w", 60).instrument_id for _ in range(6)] == ["A", "B"] * 3


def test_lease_next_takes_the_highest_class_first_in_one_statement(target):
    with _open(target, {"A": 2.0}) as led:
        _flood(led, 2, priority="reprocess")
        _flood(led, 2, priority="batch")
        rt = led.submit("k", {"rt": 1}, priority="realtime", instrument_id="B").job
        got = [led.lease_next("w", 60) for _ in range(5)]
        assert got[0].id == rt.id
        assert [j.priority for j in got[1:]] == ["batch"] * 4
        assert led.lease_next("w", 60, priority="realtime") is None
        assert led.lease_next("w", 60, priority="reprocess").priority == "reprocess"
        assert [e["reason"] for e in led.events(rt.id)] == ["submitted", "attempt 1 of 3"]


@pytest.mark.parametrize("params", [{"run": RUN}, {"run": ""}, {"path": "/no/run"}, {"run": 42}, {"run": None}],
                        ids=["run", "empty", "none", "number", "null"])
def test_complete_writes_the_same_history_and_ids_on_both_paths(target, params):
    """complete is one statement on PostgreSQL (a string run id or none) and a transaction
    otherwise, lease_next writes its history entry in its statement or after it; either way the
    states, reasons and the attempt's trace and span ids are those appliance.tracing computes."""
    with _open(target) as led:
        job = led.submit("fastq", params).job
        assert led.lease(job.id, "w", 30) is not None and led.start(job.id, "w", 30)
        assert led.heartbeat(job.id, "w", 30) and not led.heartbeat(job.id, "other", 30)
        assert led.fail(job.id, "w", "ECONNRESET", transient=True).state == "retrying"
        assert led.lease_next("w", 30).id == job.id  # its history entry in the same statement on PG
        assert led.complete(job.id, "late", {"ok": True})  # by another owner: accepted, said so
        assert not led.complete(job.id, "w", {"ok": False})  # once
        done = led.get(job.id)
        history = [(e["to_state"], e["owner"], e["reason"], e["trace_id"], e["span_id"]) for e in led.events(job.id)]
        assert not led.heartbeat(job.id, "w", 30)
    assert done.state == "succeeded" and done.result == {"ok": True} and done.lease_owner is None
    assert done.lease_expires is None and done.error is None and done.error_transient is None
    run = params.get("run")
    assert history[-1] == ("succeeded", "late", "completed by late (lease had been lost)", *attempt_ids(run, job.id, 2))
    assert [h[0] for h in history] == ["queued", "leased", "running", "retrying", "leased", "succeeded"]
    assert history[1][3:] == attempt_ids(run, job.id, 1) and history[4][3:] == attempt_ids(run, job.id, 2)


def test_complete_of_a_cancelled_or_missing_job(target):
    with _open(target) as led:
        job = led.submit("k", {"run": RUN}).job
        led.lease(job.id, "w", 30)
        led.cancel(job.id)
        assert not led.complete(job.id, "w", {})
        assert led.get(job.id).state == "cancelled"
        with pytest.raises(LedgerError, match="no job 999"):
            led.complete(999, "w", {})
        assert led.complete(led.lease_next("w", 30).id if led.submit("k", {"n": 2}).created else 0, "w", {})
        assert [e["reason"] for e in led.events()][-1] == "completed"
