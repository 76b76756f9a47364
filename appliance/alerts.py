"""Alert rules over the supervisor's stats samples: a pure state machine (samples in,
raised/cleared alerts out), tested without processes.

Every rule has a runbook entry in docs/runbook.md under the rule's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from appliance.schema import HostSample

__all__ = ["AlertRules", "Alert", "AlertChange", "AlertManager", "RULES"]

#: rule name -> severity
RULES = {
    "ring_occupancy_high": "warning",
    "frames_dropped": "critical",
    "stage_restarted": "warning",
    "checksum_failures": "critical",
    "disk_free_low": "critical",
    "heartbeat_stale": "warning",
    "stage_over_budget": "warning",
    "e2e_latency_over_budget": "warning",
}


@dataclass(frozen=True)
class AlertRules:
    """Thresholds (the ``[alerts]`` config section)."""

    ring_occupancy: float = 0.75  #: fraction of a ring's slots ...
    ring_occupancy_for_s: float = 5.0  #: ... held for this long
    disk_free_fraction: float = 0.10  #: data disk free below this fraction
    heartbeat_stale_s: float = 10.0  #: a live consumer's ring heartbeat older than this
    budget_within: float = 0.95  #: a stage with fewer frames than this within its time budget


@dataclass
class Alert:
    rule: str
    subject: str  #: the ring, stage or path it is about
    severity: str
    message: str
    first_seen: float
    last_seen: float
    cleared: float | None = None


@dataclass(frozen=True)
class AlertChange:
    action: str  #: "raised" or "cleared"
    alert: Alert


@dataclass
class AlertManager:
    rules: AlertRules = field(default_factory=AlertRules)
    active: dict[tuple[str, str], Alert] = field(default_factory=dict)
    _pending: dict[tuple[str, str], float] = field(default_factory=dict)
    _seen_counts: dict[tuple[str, str], int] = field(default_factory=dict)

    def update(self, sample: dict, now: float) -> list[AlertChange]:
        """Evaluate every rule on one sample; return what was raised and what cleared."""
        firing: dict[tuple[str, str], str] = {}
        r = self.rules
        for name, ring in sample.get("rings", {}).items():
            frac = ring["occupancy"] / ring["n_slots"] if ring["n_slots"] else 0.0
            key = ("ring_occupancy_high", name)
            if frac > r.ring_occupancy:
                since = self._pending.setdefault(key, now)
                if now - since >= r.ring_occupancy_for_s:
                    firing[key] = f"ring {name} {frac:.0%} full for {now - since:.0f} s (threshold {r.ring_occupancy:.0%}): the stage after it is slower than the one before"
            else:
                self._pending.pop(key, None)
            if ring.get("drops"):
                if self._grew(("frames_dropped", name), ring["drops"]):
                    firing[("frames_dropped", name)] = f"{ring['drops']} frames dropped at ring {name}"
            age = ring.get("consumer_heartbeat_age_s")
            if age is not None and ring.get("consumer_alive") and age > r.heartbeat_stale_s:
                firing[("heartbeat_stale", name)] = f"the consumer of ring {name} has not shown life for {age:.0f} s"
        for stage, st in sample.get("stages", {}).items():
            if st.get("restarts") and self._grew(("stage_restarted", stage), st["restarts"]):
                firing[("stage_restarted", stage)] = f"stage {stage} restarted ({st['restarts']} so far)"
            if st.get("checksum_failures") and self._grew(("checksum_failures", stage), st["checksum_failures"]):
                firing[("checksum_failures", stage)] = f"{st['checksum_failures']} frames failed their checksum at {stage} (quarantined)"
            within = st.get("within_budget_fraction")
            if within is not None and st.get("budget_ms") and (st.get("frames_in") or 0) >= 20 and within < r.budget_within:
                firing[("stage_over_budget", stage)] = f"stage {stage}: only {within:.0%} of frames within its {st.get('budget_ms')} ms budget"
        p99, budget = sample.get("e2e_latency_ms_p99"), sample.get("e2e_latency_budget_ms")
        if p99 is not None and budget and p99 > budget:
            firing[("e2e_latency_over_budget", "run")] = f"end-to-end latency p99 {p99:.0f} ms over its {budget:.0f} ms budget (supervisor.e2e_latency_p99_ms)"
        free = HostSample.from_dict(sample.get("host")).disk_free_fraction
        if free is not None:
            if free < r.disk_free_fraction:
                firing[("disk_free_low", "data")] = f"data disk {free:.1%} free (watermark {r.disk_free_fraction:.0%})"
        return self._transition(firing, now)

    def _grew(self, key: tuple[str, str], count: int) -> bool:
        """Counter rules fire while the counter grows, and clear one sample after it stops."""
        grew = count > self._seen_counts.get(key, 0)
        self._seen_counts[key] = count
        return grew

    def _transition(self, firing: dict[tuple[str, str], str], now: float) -> list[AlertChange]:
        changes = []
        for key, message in firing.items():
            if key in self.active:
                self.active[key].last_seen = now
                self.active[key].message = message
            else:
                alert = Alert(key[0], key[1], RULES[key[0]], message, now, now)
                self.active[key] = alert
                changes.append(AlertChange("raised", alert))
        for key in [k for k in self.active if k not in firing]:
            alert = self.active.pop(key)
            alert.cleared = now
            changes.append(AlertChange("cleared", alert))
        return changes
