"""Admission control: watermarks on the ledger's depth and its oldest waiting job's age.

Pure: figures in, a refusal message (or None) out. Past a watermark, batch and reprocess
submissions wait (up to ``offload.admission_wait_s``) and are then refused with
:class:`~appliance.offload.errors.AdmissionRefused`; the instrument's real-time jobs are always
admitted, because refusing them would stall acquisition's own outputs.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALERT_RULE", "Watermarks", "admits", "over_instrument_watermark", "over_watermark"]

#: the alert raised while a watermark is passed (runbook: docs/runbook.md#offload_backpressure)
ALERT_RULE = "offload_backpressure"


@dataclass(frozen=True)
class Watermarks:
    """``offload.depth_high`` (queued + retrying jobs), ``offload.oldest_age_s``, and
    ``offload.instrument_depth_high`` (one instrument's own queued + retrying jobs; 0 = none)."""

    depth: int = 1000
    oldest_age_s: float = 3600.0
    instrument_depth: int = 0


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


def over_instrument_watermark(instrument: str, depth: int, marks: Watermarks) -> str | None:
    """The message when ``instrument``'s own waiting jobs are at its watermark, else None."""
    if not marks.instrument_depth or depth < marks.instrument_depth:
        return None
    return (
        f"instrument {instrument or '(none)'} has {depth} jobs waiting (queued + retrying), at or above "
        f"offload.instrument_depth_high = {marks.instrument_depth}: its batch and reprocess submissions are held "
        "back while the other instruments' go on; let its queue drain, cancel its reprocess jobs "
        f"(appliance jobs ls --state queued), or raise offload.instrument_depth_high"
    )


def admits(priority: str, depth: int, oldest_age_s: float | None, marks: Watermarks,
           instrument: str = "", instrument_depth: int = 0) -> str | None:
    """None if a ``priority`` submission (from ``instrument``, which has ``instrument_depth``
    jobs waiting) is admitted now, else the refusal message: the lab-wide watermarks first."""
    if priority == "realtime":
        return None
    return over_watermark(depth, oldest_age_s, marks) or over_instrument_watermark(instrument, instrument_depth, marks)
