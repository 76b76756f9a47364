"""The real-time pipeline: stage processes wired by rings, supervised, writing a run folder."""

from appliance.pipeline.core import RunState, SupervisorCore
from appliance.pipeline.summary import format_summary, score_against_truth, summarize
from appliance.pipeline.supervisor import (
    CpuPlan,
    Done,
    GiveUp,
    Invocation,
    Restart,
    RestartPolicy,
    Supervisor,
    SupervisorError,
    hang_timeout_s,
    mark_interrupted_runs,
    plan_cpus,
    read_invocation,
    record_invocation,
    ring_budget,
)

__all__ = [
    "format_summary",
    "score_against_truth",
    "summarize",
    "CpuPlan",
    "Done",
    "GiveUp",
    "Invocation",
    "Restart",
    "RestartPolicy",
    "RunState",
    "Supervisor",
    "SupervisorCore",
    "SupervisorError",
    "hang_timeout_s",
    "mark_interrupted_runs",
    "plan_cpus",
    "read_invocation",
    "record_invocation",
    "ring_budget",
]
