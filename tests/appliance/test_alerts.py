"""Alert rules as a pure state machine: samples in, raised/cleared alerts out."""

from __future__ import annotations

import re
from pathlib import Path

from appliance.alerts import RULES, AlertManager, AlertRules


def sample(occ=0, drops=0, restarts=0, checksum=0, disk_free=50, within=1.0, hb_age=0.1):
    return {
        "rings": {"raw.0.0": {"occupancy": occ, "n_slots": 64, "drops": drops, "consumer_alive": True, "consumer_heartbeat_age_s": hb_age}},
        "stages": {"writer-0": {"restarts": restarts, "checksum_failures": checksum, "within_budget_fraction": within, "frames_in": 100, "budget_ms": 50}},
        "host": {"disk_free": disk_free, "disk_total": 100},
    }


def actions(changes):
    return [(c.action, c.alert.rule, c.alert.subject) for c in changes]


def test_quiet_sample_raises_nothing():
    assert AlertManager().update(sample(), 0.0) == []


def test_ring_occupancy_must_hold_for_the_configured_time_then_clears():
    m = AlertManager(AlertRules(ring_occupancy=0.75, ring_occupancy_for_s=5))
    assert m.update(sample(occ=60), 0.0) == []
    assert m.update(sample(occ=60), 4.0) == []
    (change,) = m.update(sample(occ=60), 5.0)
    assert actions([change]) == [("raised", "ring_occupancy_high", "raw.0.0")]
    assert change.alert.first_seen == 5.0 and change.alert.severity == "warning"
    assert m.update(sample(occ=60), 6.0) == []  # still active, not raised again
    (cleared,) = m.update(sample(occ=10), 7.0)
    assert cleared.action == "cleared" and cleared.alert.cleared == 7.0
    assert m.update(sample(occ=60), 8.0) == []  # the hold time starts again


def test_counters_fire_while_they_grow():
    m = AlertManager()
    assert actions(m.update(sample(drops=3), 0)) == [("raised", "frames_dropped", "raw.0.0")]
    assert m.update(sample(drops=5), 1) == []
    assert actions(m.update(sample(drops=5), 2)) == [("cleared", "frames_dropped", "raw.0.0")]
    assert actions(m.update(sample(restarts=1, checksum=2), 3)) == [
        ("raised", "stage_restarted", "writer-0"),
        ("raised", "checksum_failures", "writer-0"),
    ]


def test_disk_budget_and_heartbeat_rules():
    m = AlertManager(AlertRules(disk_free_fraction=0.1, budget_within=0.95, heartbeat_stale_s=10))
    got = actions(m.update(sample(disk_free=5, within=0.5, hb_age=30), 0))
    assert ("raised", "disk_free_low", "data") in got
    assert ("raised", "stage_over_budget", "writer-0") in got
    assert ("raised", "heartbeat_stale", "raw.0.0") in got


def test_every_rule_has_a_runbook_entry():
    """The run's rules, and the alerts the offload orchestrator and the storage tierer raise."""
    from appliance.offload.admission import ALERT_RULE
    from appliance.offload.burst import ALERT_RULE as BURST_RULE
    from appliance.storage.manager import ALERTS
    from appliance.transfer import ALERT_RULE as TRANSFER_RULE

    runbook = (Path(__file__).parents[2] / "docs" / "runbook.md").read_text()
    headings = set(re.findall(r"^## `([a-z0-9_]+)`", runbook, re.M))
    every = {*RULES, ALERT_RULE, BURST_RULE, TRANSFER_RULE, *ALERTS}
    assert every <= headings, every - headings


def test_end_to_end_latency_budget():
    m = AlertManager()
    got = actions(m.update({"e2e_latency_ms_p99": 3000.0, "e2e_latency_budget_ms": 2000.0}, 0))
    assert got == [("raised", "e2e_latency_over_budget", "run")]
    assert actions(m.update({"e2e_latency_ms_p99": 100.0, "e2e_latency_budget_ms": 2000.0}, 1)) == [("cleared", "e2e_latency_over_budget", "run")]
    assert m.update({"e2e_latency_ms_p99": 3000.0, "e2e_latency_budget_ms": 0.0}, 2) == []  # no budget set
