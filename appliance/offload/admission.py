"""Admission control: watermarks on the ledger's depth and its oldest waiting job's age.

Pure: figures in, a refusal message (or None) out. Past a watermark, batch and reprocess
submissions wait (up to ``offload.admission_wait_s``) and are then refused with
:class:`~appliance.offload.errors.AdmissionRefused`; the instrument's real-time jobs are always
admitted, because refusing them would stall acquisition's own outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALERT_RULE", "Watermarks", "admits", "over_watermark"]

#: the alert raised while a watermark is passed (runbook: docs/runbook.md#offload_backpressure)
ALERT_RULE = "offload_backpressure"


@dataclass(frozen=True)
class Watermarks:
    """``offload.depth_high`` (queued + retrying jobs) and ``offload.oldest_age_s``."""

    depth: int = 1000
    oldest_age_s: float = 3600.0


def over_watermark(depth: int, oldest_age_s: float | None, marks: Watermarks) -> str | None:
    """Which watermark the ledger is past, as a message with the fix; None when under both."""
    if depth >= marks.depth:
        return (
            f"ledger depth {depth} jobs (queued + retrying) is at or above offload.depth_high = {marks.depth}: "
            "batch and reprocess submissions are held back until workers drain the queue; "
            "add workers (offload.workers), cancel reprocess jobs (appliance jobs ls --state queued; "
            "appliance jobs cancel ID) or raise offload.depth_high"
        )
    if oldest_age_s is not None and oldest_age_s >= marks.oldest_age_s:
        return (
            f"the oldest waiting job has waited {oldest_age_s:.0f} s, at or above offload.oldest_age_s = "
            f"{marks.oldest_age_s:.0f} s: batch and reprocess submissions are held back; check that the "
            "orchestrator is running (appliance jobs stats), add workers, or cancel stale jobs"
        )
    return None


def admits(priority: str, depth: int, oldest_age_s: float | None, marks: Watermarks) -> str | None:
    """None if a ``priority`` submission is admitted now, else the refusal message."""
    if priority == "realtime":
        return None
    return over_watermark(depth, oldest_age_s, marks)
