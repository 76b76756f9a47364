"""A compute pool on a Slurm cluster: Dask workers that ``dask_jobqueue.SLURMCluster`` launches
as batch jobs, driven through the existing Dask executor (the ledger stays the record).

What this adds over :class:`~appliance.offload.executors.DaskExecutor`:

* the ``SLURMCluster`` built from a :class:`~appliance.offload.pools.PoolConfig` (partition,
  account, QoS, per-slot cores/memory, walltime, ``--gres=gpu:N``, extra ``#SBATCH`` lines, the
  worker's environment set-up commands): :func:`cluster_kwargs` is pure;
* adaptive scaling between ``min_jobs`` and ``max_jobs`` Slurm jobs driven by the ledger's backlog
  for the pool's classes (:func:`scale_target`, pure), not by Dask's task queue;
* one attempt per worker process, each placed on a worker with enough walltime left for the
  kind's ``timeout_s`` (:meth:`SlurmExecutor.free_time_left`);
* a worker lost with its Slurm job (``scancel``, walltime, preemption, node drain) is normal:
  its attempt is reported ``lost`` with ``release`` so the orchestrator gives the job back to
  the queue without counting the attempt, and the Slurm job is replaced while work remains.

No Slurm launcher of our own: jobs are submitted, listed and cancelled by dask-jobqueue
(``sbatch``/``squeue``/``scancel`` underneath).
"""

from __future__ import annotations

import logging
import math
import sys
import time
import uuid
from typing import Any

from appliance.offload.executors import AttemptSpec, DaskExecutor, Outcome, _dask_attempt, _dask_transient, _describe
from appliance.offload.pools import PoolConfig, slurm_walltime

__all__ = ["SlurmExecutor", "cluster_kwargs", "scale_target"]

log = logging.getLogger(__name__)

#: a worker must have this much walltime left beyond the kind's timeout_s (registration delay)
WALLTIME_MARGIN_S = 15.0
#: idle Slurm jobs are given back after the demand has been below them this long
SCALE_DOWN_AFTER_S = 30.0


def cluster_kwargs(pool: PoolConfig, python: str | None = None) -> dict[str, Any]:
    """``SLURMCluster(**kwargs)`` for ``pool``: one Slurm job = ``slots`` worker processes, each
    with ``cores`` threads and ``memory_mb``; one attempt per worker process at a time."""
    extra = []
    if pool.qos:
        extra.append(f"--qos={pool.qos}")
    if pool.gpus:
        extra.append(f"--gres=gpu:{pool.gpus * pool.slots}")
    extra.extend(pool.job_extra)
    kw: dict[str, Any] = dict(
        cores=pool.cores * pool.slots,
        processes=pool.slots,
        memory=f"{pool.memory_mb * pool.slots}MB",
        walltime=slurm_walltime(pool.walltime_s),
        job_extra_directives=extra,
        job_script_prologue=list(pool.prologue),
        python=pool.python or python or sys.executable,
        name=f"appliance-{pool.name}",
        # a worker must not outlive its Slurm allocation with half a job: dask's own lifetime
        # stops it a little before the walltime (placement already keeps jobs off it)
        worker_extra_args=["--lifetime", f"{max(1, int(pool.walltime_s - WALLTIME_MARGIN_S))}s"],
    )
    if pool.partition:
        kw["queue"] = pool.partition
    if pool.account:
        kw["account"] = pool.account
    if pool.interface:
        kw["interface"] = pool.interface
    opts: dict[str, Any] = {"dashboard_address": None}
    if pool.scheduler_host:
        opts["host"] = pool.scheduler_host
    kw["scheduler_options"] = opts
    if pool.local_directory:
        kw["local_directory"] = pool.local_directory
    if pool.log_directory:
        kw["log_directory"] = pool.log_directory
    return kw


def scale_target(demand_slots: int, current_jobs: int, busy_jobs: int, pool: PoolConfig) -> int:
    """Slurm jobs to have: enough for ``demand_slots`` (backlog served + running), between
    ``min_jobs`` and ``max_jobs``; never fewer than the jobs with a busy worker (scaling down
    only removes idle ones)."""
    want = math.ceil(max(0, demand_slots) / max(1, pool.slots))
    want = max(pool.min_jobs, min(pool.max_jobs, want))
    if want < current_jobs:
        want = max(want, busy_jobs)
    return want


class SlurmExecutor(DaskExecutor):
    """Attempts as Dask futures on workers that are Slurm batch jobs (one pool of kind slurm)."""

    name = "slurm"
    records_itself = False

    def __init__(self, pool: PoolConfig, config=None) -> None:
        super().__init__(workers=pool.slots, config=config)
        self.pool = pool
        self._seen: dict[str, float] = {}  #: worker address -> when first seen (its walltime clock)
        self._busy: dict[str, int] = {}  #: worker address -> job id
        self._jobs_seen: set[str] = set()  #: Slurm job names that had a worker connected
        self._target = pool.min_jobs
        self.lost: list[tuple[int, str]] = []  #: (job id, worker) of attempts lost with their worker
        self.replaced = 0  #: Slurm jobs that ended under us and were replaced
        self._ws: dict[str, dict] | None = None
        self._low_since: float | None = None
        self._ws_at = 0.0

    def start(self, timeout: float = 60.0) -> None:
        if self.client is not None:
            return
        from dask_jobqueue import SLURMCluster
        from distributed import Client

        try:
            self._cluster = SLURMCluster(**cluster_kwargs(self.pool))
            self.client = Client(self._cluster, timeout=timeout, set_as_default=False)
            if self.pool.min_jobs:
                self._cluster.scale(jobs=self.pool.min_jobs)
        except BaseException:
            self.stop()
            raise

    # -- workers ----------------------------------------------------------------------------------

    def _workers(self) -> dict[str, dict]:
        if self.client is None:
            return {}
        try:
            return dict(self.client.scheduler_info(n_workers=-1)["workers"])
        except TypeError:  # older distributed without n_workers
            return dict(self.client.scheduler_info()["workers"])
        except Exception:
            return {}

    def _refresh(self, max_age_s: float = 0.25) -> dict[str, dict]:
        """The scheduler's workers (one round trip, reused for ``max_age_s`` within a tick)."""
        now = time.monotonic()
        if self._ws is not None and now - self._ws_at < max_age_s:
            return self._ws
        ws = self._workers()
        self._ws, self._ws_at = ws, now
        for addr in ws:
            self._seen.setdefault(addr, now)
        for addr in list(self._seen):
            if addr not in ws:
                del self._seen[addr]
        return ws

    @property
    def capacity(self) -> int:
        return len(self._refresh())

    def free_slots(self) -> int:
        ws = self._refresh()
        return sum(1 for a in ws if a not in self._busy)

    def free_time_left(self) -> list[float]:
        """Per idle worker: the walltime it has left, less a margin."""
        ws = self._refresh()
        now = time.monotonic()
        return [self.pool.walltime_s - (now - self._seen[a]) - WALLTIME_MARGIN_S for a in ws if a not in self._busy]

    def pending_jobs(self) -> int:
        """Slurm jobs asked for whose worker has not connected (queued or starting)."""
        if self._cluster is None:
            return 0
        names = {w.get("name") for w in self._refresh().values()}
        return sum(1 for k in list(self._cluster.worker_spec) if not _connected(k, names))

    def slurm_jobs(self) -> dict[str, str]:
        """Dask job name -> Slurm job id, for the jobs dask-jobqueue submitted."""
        if self._cluster is None:
            return {}
        return {k: str(getattr(j, "job_id", "") or "") for k, j in list(self._cluster.workers.items())}

    def slurm_job_of(self, job_id: int) -> str | None:
        """The Slurm job id whose worker runs ``job_id``'s attempt (None if not running here)."""
        addr = next((a for a, j in self._busy.items() if j == job_id), None)
        if addr is None:
            return None
        name = self._refresh().get(addr, {}).get("name")
        for k, sid in self.slurm_jobs().items():
            if name is not None and _connected(k, {name}):
                return sid or None
        return None

    # -- attempts ---------------------------------------------------------------------------------

    def submit(self, spec: AttemptSpec) -> None:
        ws = self._refresh()
        now = time.monotonic()
        need = spec.timeout_s + WALLTIME_MARGIN_S
        idle = [(self.pool.walltime_s - (now - self._seen[a]), a) for a in ws if a not in self._busy]
        fit = sorted(x for x in idle if x[0] >= need)
        if not fit:
            most = max((x[0] for x in idle), default=0.0)
            raise RuntimeError(f"pool {self.pool.name}: no idle worker has {need:.0f} s of walltime left "
                               f"(most {most:.0f} s); the job waits for a new worker")
        addr = fit[0][1]
        fut = self.client.submit(_dask_attempt, spec, key=f"offload-{spec.job_id}-{spec.attempt}-{uuid.uuid4().hex[:8]}",
                                 pure=False, retries=0, workers=[addr], allow_other_workers=False)
        self._futures[spec.job_id] = (fut, spec, time.monotonic() + spec.timeout_s)
        self._busy[addr] = spec.job_id
        if self.on_done is not None:  # a finished attempt wakes the dispatcher (as on DaskExecutor)
            try:
                self._track(fut)
            except Exception:  # the tick still collects it: slower, never lost
                log.exception("offload: cannot track the attempt's completion; the dispatch tick collects it")

    def _free(self, job_id: int) -> str | None:
        for a, j in list(self._busy.items()):
            if j == job_id:
                del self._busy[a]
                return a
        return None

    def poll(self) -> list[Outcome]:
        ws = self._refresh(0.0)
        out: list[Outcome] = []
        now = time.monotonic()
        for jid, (fut, spec, deadline) in list(self._futures.items()):
            addr = next((a for a, j in self._busy.items() if j == jid), None)
            status = fut.status
            if status == "finished":
                try:
                    done = fut.result(timeout=10)
                except Exception as exc:
                    out.append(Outcome(jid, spec.attempt, False, error=f"dask: result lost ({_describe(exc)})", transient=True))
                else:
                    out.append(Outcome(jid, spec.attempt, True, result=done["result"], reused=done["reused"]))
            elif status == "error":
                exc = fut.exception(timeout=10)
                if _dask_transient(exc) and addr is not None and addr not in ws:
                    out.append(self._lost(jid, spec, addr, fut))
                else:
                    out.append(Outcome(jid, spec.attempt, False, error=_describe(exc), transient=_dask_transient(exc)))
            elif addr is not None and addr not in ws or status in ("cancelled", "lost"):
                out.append(self._lost(jid, spec, addr or "?", fut))
            elif now > deadline:
                fut.cancel()
                out.append(Outcome(jid, spec.attempt, False, error=f"timed out after {spec.timeout_s:.0f} s (kind limit)", transient=True))
            else:
                continue
            del self._futures[jid]
            self._free(jid)
        return out

    def _lost(self, jid: int, spec: AttemptSpec, addr: str, fut) -> Outcome:
        try:
            fut.cancel()
        except Exception:
            pass
        self.lost.append((jid, addr))
        del self.lost[:-100]
        return Outcome(jid, spec.attempt, False, error=f"worker {addr} left (its Slurm job ended: scancel, walltime, "
                       "preemption or node drain); the job goes back to the queue", transient=True, lost=True,
                       extra={"release": True})

    def cancel(self, job_id: int) -> bool:
        self._free(job_id)
        return super().cancel(job_id)

    def stop(self, timeout: float = 10.0) -> None:
        self._busy = {}
        super().stop(timeout)

    # -- scaling ----------------------------------------------------------------------------------

    def scale_for(self, demand_slots: int) -> int:
        """Scale to the demand (backlog served + running attempts); replaces Slurm jobs whose
        worker left. Returns the target number of Slurm jobs."""
        if self._cluster is None:
            return 0
        names = {w.get("name") for w in self._refresh().values()}
        spec = self._cluster.worker_spec
        for k in list(spec):
            if _connected(k, names):
                self._jobs_seen.add(k)
            elif k in self._jobs_seen:  # it had a worker that is gone: the Slurm job ended
                self._jobs_seen.discard(k)
                spec.pop(k, None)
                # and its dask-jobqueue Job, or the cluster thinks the name is still running and
                # does not submit the replacement (the Slurm job is over: nothing to cancel)
                self._cluster.workers.pop(k, None)
                self.replaced += 1
                log.warning("pool %s: Slurm job %s ended under its worker; replacing it", self.pool.name, k)
        busy_names = {self._refresh().get(a, {}).get("name") for a in self._busy}
        busy_jobs = sum(1 for k in spec if any(_connected(k, {n}) for n in busy_names if n))
        target = scale_target(demand_slots, len(spec), busy_jobs, self.pool)
        now = time.monotonic()
        if target < len(spec):
            # shrink only after the demand has stayed low for a while: a dependent job (align-qc
            # after fastq) would otherwise wait in the Slurm queue for a new worker
            self._low_since = now if self._low_since is None else self._low_since
            if now - self._low_since < SCALE_DOWN_AFTER_S:
                return len(spec)
        else:
            self._low_since = None
        if target != len(spec) or target != self._target:
            self._target = target
            self._cluster.scale(jobs=target)
        return target


def _connected(job_name: str, worker_names: set) -> bool:
    return any(n == job_name or (isinstance(n, str) and n.startswith(job_name + "-")) for n in worker_names)
