"""The real-time pipeline: stage processes wired by rings, supervised, writing a run folder."""

from appliance.pipeline.summary import format_summary, score_against_truth, summarize
from appliance.pipeline.supervisor import (
    CpuPlan,
    Done,
    GiveUp,
    Restart,
    RestartPolicy,
    Supervisor,
    SupervisorError,
    hang_timeout_s,
    plan_cpus,
    ring_budget,
)

__all__ = [
    "format_summary",
    "score_against_truth",
    "summarize",
    "CpuPlan",
    "Done",
    "GiveUp",
    "Restart",
    "RestartPolicy",
    "Supervisor",
    "SupervisorError",
    "hang_timeout_s",
    "plan_cpus",
    "ring_budget",
]
