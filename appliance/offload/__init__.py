"""Offload: the durable job ledger, executors (local processes, Dask), priorities, retries,
admission control and the orchestrator that turns completed runs into analysis jobs.

See docs/offload.md. Nothing is imported at package import beyond these modules' own
standard-library imports; Dask is imported only when a :class:`DaskExecutor` starts.
"""

from appliance.offload.admission import Watermarks
from appliance.offload.config import CLASSES, KindOverride, OffloadConfig, load_offload
from appliance.offload.context import JobContext
from appliance.offload.errors import (
    AdmissionRefused,
    JobError,
    LedgerError,
    OffloadError,
    PermanentJobError,
    TransientJobError,
    is_transient,
)
from appliance.offload.executors import AttemptSpec, DaskExecutor, LocalExecutor, Outcome, read_marker, run_attempt
from appliance.offload.kinds import JobKind, KindRegistry, default_registry, register_kind
from appliance.offload.ledger import STATES, Job, Ledger, RetryPolicy, Submitted, job_key, run_inputs
from appliance.offload.orchestrator import Orchestrator, output_dir_for
from appliance.offload.control import control_commands, job_summary
from appliance.offload.pools import PoolConfig, PoolSet, load_pools
from appliance.offload.scheduler import Candidate, Placement, PoolState, SchedulerPolicy, SchedulerState, place, plan
from appliance.offload.slurm import SlurmExecutor

__all__ = [
    "AdmissionRefused", "AttemptSpec", "CLASSES", "Candidate", "DaskExecutor", "Job", "JobContext", "JobError",
    "JobKind", "KindOverride", "KindRegistry", "Ledger", "LedgerError", "LocalExecutor", "OffloadConfig",
    "OffloadError", "Orchestrator", "Outcome", "PermanentJobError", "RetryPolicy", "STATES", "SchedulerPolicy",
    "SchedulerState", "Submitted", "TransientJobError", "Watermarks", "default_registry", "is_transient", "job_key",
    "Placement", "PoolConfig", "PoolSet", "PoolState", "SlurmExecutor", "load_pools", "place",
    "control_commands", "job_summary", "load_offload", "output_dir_for", "plan", "read_marker", "register_kind", "run_attempt", "run_inputs",
]
