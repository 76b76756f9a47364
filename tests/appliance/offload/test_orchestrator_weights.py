"""The orchestrator's side of the fair share on a shared ledger: its slots and limits count only
its own attempts (another orchestrator's leases do not take them), and with
``offload.instrument_weights`` it hands the scheduler the jobs in flight per instrument."""

from __future__ import annotations

from appliance.offload import Ledger, Orchestrator

from .conftest import fast_config, wait_for


def test_another_owners_leases_do_not_take_this_orchestrators_slots(tmp_path, jobs_plugin, no_leaked_threads):
    src = tmp_path / "in.bin"
    src.write_bytes(b"z" * 1024)
    ledger_file = tmp_path / ".offload" / "ledger.sqlite"
    with Ledger(ledger_file) as led:
        ids = [led.submit("test-hash", {"path": str(src), "i": i}, priority="batch", instrument_id=inst).job.id
               for i, inst in enumerate(["A", "A", "B", "B", "A", "B"])]
        held = [led.lease_next("elsewhere", 600) for _ in range(2)]  # another host's orchestrator: batch at its limit (2)
    orch = Orchestrator(fast_config(instrument_weights={"A": 2.0}), tmp_path, scan=False)
    assert orch.policy.instrument_weights == {"A": 2.0}
    flight = orch._flight()
    assert orch._mine(flight) == {"realtime": 0, "batch": 0, "reprocess": 0}
    assert orch._in_flight(flight)["batch"] == {"A": 1, "B": 1}  # lease_next's fair share: A, then B
    orch.start()
    try:
        rest = [i for i in ids if i not in {h.id for h in held}]
        wait_for(lambda: all(orch.ledger.get(i).state == "succeeded" for i in rest), 60,
                 "this orchestrator to run the other jobs beside the other owner's two")
    finally:
        orch.stop(10)
    with Ledger(ledger_file) as led:
        assert all(led.get(h.id).state == "leased" and led.get(h.id).lease_owner == "elsewhere" for h in held)
