"""The orchestrator: watches the data root, submits jobs as runs complete, and dispatches them.

One dispatch loop (a thread): expire leases, settle dependencies, collect finished attempts,
heartbeat leases the executor does not heartbeat itself (Dask), ask the scheduler which ready
jobs to start and lease them to the executor, and every ``offload.poll_s`` scan the data root.

Triggers: as a run's cycles complete (``Manifest/cycle_NNNN.json``) a realtime ``cycle-qc`` job
per cycle; when the run is complete (``Manifest/run.json`` complete + ``CopyComplete.txt``)
``fastq`` (realtime), ``align-qc`` depending on it (batch) and, when the algorithm registry has a
candidate and the run kept raw frames (``Raw/``), ``reprocess`` with the candidate and
``compare`` depending on it (reprocess class). Idempotency keys make re-scans harmless.

The ledger is the record: an orchestrator killed with SIGKILL loses nothing (its workers die with
it, their leases expire and the jobs are retried; an attempt that had already committed its
output is not run again, see :func:`~appliance.offload.executors.run_attempt`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

from appliance.offload.config import CLASSES, OffloadConfig
from appliance.offload.errors import AdmissionRefused, OffloadError
from appliance.offload.executors import AttemptSpec, DaskExecutor, LocalExecutor, NoExecutor
from appliance.offload.kinds import KindRegistry, default_registry, load_plugins
from appliance.offload.ledger import Job, Ledger, RetryPolicy, Submitted, run_inputs
from appliance.offload.pools import POOL_STARVED, PoolConfig, PoolSet, status_path, write_status
from appliance.offload.scheduler import Candidate, SchedulerPolicy, SchedulerState, in_flight_of, place, plan

__all__ = ["ENDED", "Orchestrator", "output_dir_for", "run_jobs_summary"]

#: states a job does not leave by itself
ENDED = frozenset({"succeeded", "held", "cancelled"})

log = logging.getLogger(__name__)


def _pool_executor(pool: PoolConfig, config: OffloadConfig, data_root: Path | None = None, *, instrument_id: str = "",
                   on_alert: Callable[[dict], None] | None = None):
    """The executor behind one compute pool."""
    if pool.kind == "cloud":
        from appliance.offload.cloud import CloudExecutor

        return CloudExecutor(pool, data_root, namespace=instrument_id, config=config, on_alert=on_alert)
    if pool.kind == "slurm":
        from appliance.offload.slurm import SlurmExecutor

        return SlurmExecutor(pool, config=config)
    if pool.kind == "dask":
        return DaskExecutor(pool.slots, pool.address, config=config)
    return LocalExecutor(pool.slots, config=config)


def output_dir_for(data_root: str | Path, job: Job) -> Path:
    """Where a job's output lands: ``Analysis/<run>/<kind>[/cycle_NNNN][/<alg>@<ver>]``; jobs
    without a run go to ``Analysis/_jobs/<kind>/<key prefix>``."""
    base = Path(data_root) / "Analysis"
    run = job.params.get("run")
    if not run:
        return base / "_jobs" / job.kind / job.key[:16]
    out = base / str(run) / job.kind
    if "cycle" in job.params:
        out = out / f"cycle_{int(job.params['cycle']):04d}"
    if job.algorithm:
        out = out / f"{job.algorithm}@{job.algorithm_version}"
    return out


class Orchestrator:
    """Submit, dispatch and record offload jobs for one data root."""

    def __init__(
        self,
        config: OffloadConfig,
        data_root: str | Path,
        *,
        registry: KindRegistry | None = None,
        executor=None,
        on_event: Callable[[dict], None] | None = None,
        scan: bool = True,
        algorithms: Callable[[Path], Any] | None = None,
        runs: "tuple[str, ...] | list[str] | None" = None,
        instrument_id: str = "",
        tracing=None,
    ) -> None:
        self.config = config
        self.data_root = Path(data_root)
        self.registry = registry or default_registry()
        self.on_event = on_event
        self.scan_enabled = scan
        #: scan only these run folders (``appliance run`` offloads its own run); None = every run
        self.runs = None if runs is None else frozenset(runs)
        self._algorithms = algorithms
        self.owner = f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"
        #: the SQLite file, or the lab ledger's PostgreSQL URL (then submissions the server cannot
        #: take now wait in the data root's outbox, docs/lab.md)
        self.ledger_path = config.ledger_target(self.data_root)
        outbox = config.outbox_path(self.data_root, instrument_id) if config.ledger_is_postgres else None
        # the shared outbox of an earlier release, still to be handed over (same keys: once each)
        legacy = config.outbox_path(self.data_root) if outbox is not None and instrument_id else None
        self.ledger = Ledger(self.ledger_path, config=config, policy=self._policy, on_alert=self._alert,
                             instrument_id=instrument_id, outbox=outbox,
                             drain_outboxes=(legacy,) if legacy is not None and legacy.exists() else ())
        self.instrument_id = instrument_id
        self.executor = executor or (self._make_executor() if config.dispatch else NoExecutor())
        self._wire_completions(self.executor)
        self.policy = SchedulerPolicy(slots=self.executor.capacity, limits=dict(config.limits),
                                      shares=dict(config.share), reserved_realtime=config.reserved_realtime,
                                      instrument_weights=dict(config.instrument_weights))
        self._sched = SchedulerState()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self._last_scan = 0.0
        self._last_beat = 0.0
        self.dispatched: list[tuple[int, str, str]] = []  #: (job id, class, reason) of recent dispatches
        self.errors: list[str] = []
        self.alerts: list[dict] = []
        self.ready_by_class: dict[str, int] = {}  #: ready jobs per class at the last pool dispatch
        self.waiting: dict[int, str] = {}  #: job id -> why placement did not start it (pools)
        self._last_status = 0.0
        self._started = False
        #: the config's [tracing]: every ended job becomes a span of its run's trace
        #: (appliance.tracing; files under <data_root>/.offload/traces/ without an OTLP endpoint)
        self.tracing = tracing
        self.tracer = None

    # -- setup ------------------------------------------------------------------------------------

    def _wire_completions(self, executor) -> None:
        """Executors that can tell when an attempt is done (Dask futures) wake the dispatcher
        then, so a job's end is recorded and the next job started without waiting for the tick."""
        for ex in _each_executor(executor):
            if hasattr(ex, "on_done"):
                ex.on_done = self.ledger.wake

    def _make_executor(self):
        if self.config.pools:
            from appliance.offload.cloud import BurstController

            executors = {n: _pool_executor(p, self.config, self.data_root, instrument_id=self.instrument_id, on_alert=self._alert)
                         for n, p in self.config.pools.items()}
            burst = {n: BurstController(p, self.data_root / ".offload", interval_s=max(self.config.tick_s, 1.0))
                     for n, p in self.config.pools.items() if p.kind == "cloud" and p.burst is not None}
            return PoolSet(self.config.pools, executors, burst)
        if self.config.executor == "dask":
            return DaskExecutor(self.config.workers, self.config.dask_address, config=self.config)
        return LocalExecutor(self.config.workers, config=self.config)

    def _policy(self, kind: str) -> RetryPolicy:
        try:
            k = self.registry.get(kind, self.config)
        except KeyError:
            return RetryPolicy()
        return RetryPolicy(k.max_attempts, k.backoff_s, k.backoff_cap_s)

    def _emit(self, event: dict) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a broken subscriber must not stop dispatching
                log.exception("offload event callback failed")

    def _alert(self, alert: dict) -> None:
        self.alerts.append(alert)
        del self.alerts[:-50]
        log.warning("offload alert %s %s: %s", alert["rule"], alert["action"], alert["message"])
        self._emit({"topic": "alert", **alert})

    def start(self, timeout: float = 60.0) -> None:
        """Load plug-ins, start the executor and the dispatch thread (idempotent; on failure
        everything started is stopped again)."""
        with self._lock:
            if self._started:
                return
            try:
                load_plugins(self.config.plugins)
                self._start_tracer()
                self.executor.start(timeout)
                self.policy = SchedulerPolicy(slots=max(1, self.executor.capacity), limits=dict(self.config.limits),
                                              shares=dict(self.config.share), reserved_realtime=self.config.reserved_realtime,
                                              instrument_weights=dict(self.config.instrument_weights))
                if self.policy.slots == 1 and self.config.reserved_realtime > 0 and self.config.dispatch:
                    log.warning("offload: the executor has 1 slot, so none can be reserved for real-time jobs "
                                "(offload.reserved_realtime): a running batch or reprocess job delays cycle-qc until "
                                "it ends; set offload.workers >= 2 for the real-time start bound")
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="offload-dispatch", daemon=True)
                self._thread.start()
                self._started = True
            except BaseException:
                self.executor.stop(5)
                raise

    def stop(self, timeout: float = 30.0, drain: bool = True) -> None:
        """Stop dispatching; with ``drain`` wait up to ``timeout`` for running attempts to finish,
        then release the rest back to the queue, stop the executor (ask, wait, terminate, join)
        and close the ledger. Idempotent."""
        if not self._started:
            self.ledger.close()
            return
        self._stop.set()
        self.ledger.wake()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join()
        with self._lock:
            if not self._started:
                return
            deadline = time.monotonic() + (timeout if drain else 0)
            while drain and self.executor.running() and time.monotonic() < deadline:
                self._collect()
                self._heartbeat(force=False)
                time.sleep(0.05)
            self._collect()
            for job_id in list(self.executor.running()):
                self.executor.cancel(job_id)
                self.ledger.release(job_id, self.owner, "released: orchestrator stopped before the attempt finished")
            self.executor.stop(max(1.0, deadline - time.monotonic()))
            self.ledger.close()
            if self.tracer is not None:
                for ex in _each_executor(self.executor):
                    if getattr(ex, "tracer", None) is self.tracer:
                        ex.tracer = None
                self.tracer.close()
                self.tracer = None
            self._started = False

    # -- the loop ---------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # the ledger busy, a bad run folder: log, keep going
                msg = f"{type(exc).__name__}: {exc}"
                log.exception("offload dispatch failed")
                self.errors.append(msg)
                del self.errors[:-20]
            # the tick is the poll; on PostgreSQL a submission or completion anywhere in the lab
            # (NOTIFY) ends the wait at once
            self.ledger.wait_for_change(self.config.tick_s, self._stop)

    def tick(self) -> list[int]:
        """One dispatch round; returns the ids of the jobs started."""
        with self._lock:
            now = time.monotonic()
            self.ledger.handover()  # the outbox's submissions, once the lab ledger is reachable
            if self.scan_enabled and now - self._last_scan >= self.config.poll_s:
                self._last_scan = now
                self.scan()
            for job in self.ledger.expire_leases():
                self._emit({"topic": "event", "event": "job_lease_expired", "job": job.id, "state": job.state})
            self.ledger.resolve_dependencies()
            if not self.config.dispatch:  # submit only: the lab's pool runs the jobs
                return []
            self._collect()
            self._heartbeat()
            return self._dispatch()

    def _start_tracer(self) -> None:
        if self.tracing is None or self.tracer is not None:
            return
        from appliance.tracing import make_tracer

        try:
            self.tracer = make_tracer(self.tracing, self.data_root / ".offload", f"offload-{os.getpid()}", None)
        except Exception as exc:  # diagnostics never stop the dispatcher
            log.warning("offload: tracing off: %s", exc)
            return
        for ex in _each_executor(self.executor):  # executors that move data make its transfers spans (cloud)
            if hasattr(ex, "tracer"):
                ex.tracer = self.tracer

    def _trace(self, job_id: int) -> None:
        if self.tracer is None:
            return
        try:
            job = self.ledger.get(job_id)
            if job.state in ("succeeded", "held", "cancelled"):
                # its history entries carry each attempt's span id: one span per attempt
                self.tracer.job(job, self.ledger.events(job_id))
        except Exception as exc:
            log.debug("offload: no span for job %s: %s", job_id, exc)

    def _collect(self) -> None:
        for o in self.executor.poll():
            if o.lost and o.extra.get("release"):
                # a worker lost with its HPC allocation (scancel, walltime, preemption): not the
                # job's fault, so it goes back to the queue without spending an attempt
                self.ledger.release(o.job_id, self.owner, o.error or "worker lost")
            elif not o.recorded and not o.lost:
                if o.ok:
                    self.ledger.complete(o.job_id, self.owner, o.result)
                else:
                    self.ledger.fail(o.job_id, self.owner, o.error or "failed", o.transient)
            self._emit({"topic": "event", "event": "job_succeeded" if o.ok else "job_failed", "job": o.job_id,
                        "error": o.error, "reused": o.reused})
            self._trace(o.job_id)

    def _heartbeat(self, force: bool = True) -> None:
        if getattr(self.executor, "records_itself", False):
            return
        now = time.monotonic()
        if now - self._last_beat < self.config.heartbeat_s:
            return
        self._last_beat = now
        running = self.executor.running_unrecorded() if isinstance(self.executor, PoolSet) else self.executor.running()
        for job_id in list(running):
            if not self.ledger.heartbeat(job_id, self.owner, self.config.lease_s):
                log.warning("job %s: lease lost (cancelled?): stopping its attempt", job_id)
                self.executor.cancel(job_id)

    def _flight(self) -> list:
        """Leased and running jobs of every owner (the lab ledger's, with other orchestrators'),
        counted per class, owner and instrument."""
        return self.ledger.in_flight()

    def _mine(self, flight: list) -> dict[str, int]:
        """This orchestrator's attempts per class: its limits, slots and reserved slots are its own."""
        return {c: sum(r.n for r in flight if r.priority == c and r.lease_owner == self.owner) for c in CLASSES}

    def _in_flight(self, flight: list | None = None):
        """Leased and running jobs per class and instrument, for ``offload.instrument_weights``
        (None without weights: the ledger's order is the equal-weight fair share)."""
        if not self.policy.instrument_weights:
            return None
        return in_flight_of(self._flight() if flight is None else flight)

    def _dispatch(self) -> list[int]:
        if isinstance(self.executor, PoolSet):
            return self._dispatch_pools()
        free = self.executor.free_slots()
        if free <= 0:
            return []
        ready = self.ledger.ready(per_class=max(8, free * 2))
        # plan's slots, reserved slots and limits are this executor's: count only this
        # orchestrator's attempts (another orchestrator on a lab ledger has slots of its own)
        flight = self._flight()
        decision = plan([Candidate(j.id, j.priority, instrument=j.instrument_id) for j in ready],
                        self._mine(flight), free, self.policy, self._sched, self._in_flight(flight))
        self._sched = decision.state
        return self._start_jobs(ready, [(j, None) for j in decision.start], decision.reasons)

    def _dispatch_pools(self) -> list[int]:
        """Placement across the compute pools (``[offload.pools]``): scale the adaptive pools to
        the backlog they serve, raise or clear ``pool_starved``, then :func:`place`."""
        pools: PoolSet = self.executor
        ready = self.ledger.ready(per_class=max(8, pools.capacity * 2, 16))
        by_class = {c: 0 for c in CLASSES}
        for j in ready:
            by_class[j.priority] = by_class.get(j.priority, 0) + 1
        self.ready_by_class = by_class
        pools.scale(by_class)
        for name, firing, msg in pools.check_starved(by_class):
            self._alert({"rule": POOL_STARVED, "action": "raised" if firing else "cleared", "severity": "warning",
                         "subject": f"pool {name}", "pool": name, "message": msg})
        cands = []
        for j in ready:
            try:
                cands.append(self.registry.get(j.kind, self.config).candidate(j.id, j.priority))
            except KeyError:
                cands.append(Candidate(j.id, j.priority))  # leased and failed with the reason below
        if pools.burst:  # the cloud pools' burst policy: their slots, and which jobs may go there
            for alert in pools.burst_step(ready, lambda name: self.registry.get(name, self.config), self.data_root):
                self._alert(alert)
            cands = pools.gate(cands)
        cands = [dataclasses.replace(c, instrument=j.instrument_id) for c, j in zip(cands, ready)]
        flight = self._flight()
        placement = place(cands, self._mine(flight), pools.states(), self.policy, self._sched, self._in_flight(flight))
        self._sched = placement.state
        self.waiting = dict(placement.waiting)
        now = time.monotonic()
        if now - self._last_status >= 1.0:
            self._last_status = now
            try:
                write_status(status_path(self.data_root), pools.report(by_class), self.owner)
            except OSError as exc:
                log.warning("offload: cannot write the pools' status: %s", exc)
        return self._start_jobs(ready, list(placement.start), placement.reasons)

    def _start_jobs(self, ready: list[Job], chosen: list, reasons) -> list[int]:
        by_id = {j.id: j for j in ready}
        started = []
        for (job_id, pool), why in zip(chosen, reasons):
            job = by_id[job_id]
            try:
                kind = self.registry.get(job.kind, self.config)
            except KeyError as exc:
                leased = self.ledger.lease(job_id, self.owner, self.config.lease_s)
                if leased is not None:
                    self.ledger.fail(job_id, self.owner, f"{exc.args[0]} (add it to offload.plugins)", False)
                continue
            leased = self.ledger.lease(job_id, self.owner, self.config.lease_s)
            if leased is None:
                continue  # another orchestrator took it
            out = leased.output_dir or str(output_dir_for(self.data_root, leased))
            if leased.output_dir is None:
                self.ledger.set_output_dir(job_id, out)
            spec = AttemptSpec(
                job_id=job_id, kind=leased.kind, target=kind.target, params=leased.params, attempt=leased.attempts,
                key=leased.key, data_root=str(self.data_root), output_dir=out, owner=self.owner,
                ledger_path=str(self.ledger_path), lease_s=self.config.lease_s, heartbeat_s=self.config.heartbeat_s,
                timeout_s=kind.timeout_s, retry=(kind.max_attempts, kind.backoff_s, kind.backoff_cap_s),
                algorithm=leased.algorithm, algorithm_version=leased.algorithm_version, priority=leased.priority,
            )
            records = self.executor.records_itself_for(pool) if pool else getattr(self.executor, "records_itself", False)
            if not records:
                self.ledger.start(job_id, self.owner, self.config.lease_s)
            try:
                if pool:
                    self.executor.submit_to(pool, spec)
                else:
                    self.executor.submit(spec)
            except Exception as exc:
                self.ledger.fail(job_id, self.owner, f"executor refused the job: {type(exc).__name__}: {exc}", True)
                continue
            started.append(job_id)
            self.dispatched.append((job_id, leased.priority, why))
            del self.dispatched[:-1000]
            self._emit({"topic": "event", "event": "job_started", "job": job_id, "kind": leased.kind, "class": leased.priority,
                        **({"pool": pool} if pool else {})})
        return started

    def run_until(self, stop: threading.Event, timeout: float = 30.0) -> None:
        """Start, wait for ``stop``, then stop (draining up to ``timeout``): ``appliance jobs work``."""
        self.start()
        try:
            while not stop.wait(0.5):
                pass
        finally:
            self.stop(timeout)

    # -- submission and triggers ------------------------------------------------------------------

    def submit(self, kind: str, params: dict | None = None, **kw) -> Submitted:
        """Submit a job of a registered kind (its class and limits from the registry)."""
        k = self.registry.get(kind, self.config)
        kw.setdefault("priority", k.priority)
        kw.setdefault("max_attempts", k.max_attempts)
        sub = self.ledger.submit(kind, params or {}, **kw)
        if sub.created:
            self.ledger.wake()  # a new job starts at once, not at the next tick
        return sub

    def _candidate(self):
        if self._algorithms is not None:
            return self._algorithms(self.data_root)
        try:
            from appliance.analysis.algorithms import AlgorithmRegistry
        except ImportError:
            return None
        with AlgorithmRegistry.open(self.data_root, self.config) as reg:  # the lab's registry with a PostgreSQL ledger
            return reg.candidate()

    def scan(self) -> list[Submitted]:
        """Submit the jobs the data root's run folders call for (harmless to repeat)."""
        from appliance.runfolder import RunFolder
        from appliance.runfolder.errors import RunFolderError
        from appliance.runfolder.layout import RUNINFO

        out: list[Submitted] = []
        try:
            entries = sorted(p for p in self.data_root.iterdir() if p.is_dir() and not p.name.startswith((".", "Analysis")))
        except FileNotFoundError:
            return out
        for run_dir in entries:
            if not (run_dir / RUNINFO).is_file() or (self.runs is not None and run_dir.name not in self.runs):
                continue
            try:
                rf = RunFolder(run_dir)
                if self.config.scan_runs == "own" and rf.info.instrument != self.ledger.instrument_id:
                    continue  # another instrument's run on a shared data root: it submits its own
                run_id = rf.info.run_id
                manifest = rf.manifest()
                complete = (run_dir / "CopyComplete.txt").is_file() and manifest.complete
                out.extend(self._submit_for_run(run_dir, run_id, manifest, complete, rf.info.instrument))
            except (RunFolderError, OffloadError, OSError, ValueError) as exc:
                if isinstance(exc, AdmissionRefused):
                    log.warning("offload: %s", exc)
                else:
                    log.warning("offload: skipping %s: %s", run_dir, exc)
        return out

    def _submit_for_run(self, run_dir: Path, run_id: str, manifest, complete: bool,
                        instrument: str = "") -> list[Submitted]:
        out = []
        submit = functools.partial(self.submit, instrument_id=instrument or self.ledger.instrument_id)
        try:  # the run's algorithm and whether a pin chose it (its algorithm.json), on every job's history
            from appliance.analysis.algorithms import run_algorithm_info

            info = run_algorithm_info(self.data_root, run_id)
        except (ImportError, ValueError):
            info = None
        if info:
            how = f"pin of {info['pinned_instrument']}" if info["algorithm_source"] == "pin" else "production"
            tag = f" [algorithm {info['algorithm']}, {how}]"
            plain = submit

            def submit(kind, params, **kw):  # every job's history says which algorithm made its inputs
                return plain(kind, params, **{**kw, "reason": kw.get("reason", "") + tag})
        for cycle in manifest.complete_cycles:
            if "cycle-qc" in self.registry:
                out.append(submit("cycle-qc", {"run": run_id, "cycle": cycle}, inputs=run_inputs(run_dir, cycle),
                                       reason=f"cycle {cycle} of run {run_id} complete"))
        if not complete:
            return out
        inputs = run_inputs(run_dir)
        fastq = submit("fastq", {"run": run_id}, inputs=inputs, reason=f"run {run_id} complete")
        out.append(fastq)
        fastq_dir = fastq.job.output_dir or str(output_dir_for(self.data_root, fastq.job))
        if fastq.job.output_dir is None:
            self.ledger.set_output_dir(fastq.job.id, fastq_dir)
        out.append(submit("align-qc", {"run": run_id, "fastq": fastq_dir}, inputs=inputs,
                               depends_on=fastq.job.id, reason=f"run {run_id} complete (after fastq {fastq.job.id})"))
        cand = self._candidate() if (run_dir / "Raw").is_dir() else None
        if cand is not None:
            rep = submit("reprocess", {"run": run_id}, inputs=inputs, algorithm=cand.name,
                              algorithm_version=str(cand.version), reason=f"candidate {cand.name}@{cand.version} in shadow")
            out.append(rep)
            rep_dir = rep.job.output_dir or str(output_dir_for(self.data_root, rep.job))
            if rep.job.output_dir is None:
                self.ledger.set_output_dir(rep.job.id, rep_dir)
            out.append(submit("compare", {"run": run_id, "candidate": rep_dir, "algorithm": cand.name,
                                               "version": str(cand.version)}, inputs=inputs, depends_on=rep.job.id,
                                   algorithm=cand.name, algorithm_version=str(cand.version),
                                   reason=f"compare candidate {cand.name}@{cand.version}"))
        return out

    def wait_for_run(self, run_id: str, timeout: float, poll_s: float = 0.2) -> tuple[list[Job], bool]:
        """Scan now, then wait until every job of ``run_id`` has ended (succeeded, held or
        cancelled) or ``timeout`` passed: ``(jobs oldest first, all ended)``. The dispatch loop
        must be running (:meth:`start`); ``appliance run`` uses this to offload its own run."""
        with self._lock:
            self.scan()
        deadline = time.monotonic() + timeout
        while True:
            jobs = sorted(self.ledger.jobs(run=run_id, limit=100_000), key=lambda j: j.id)
            done = bool(jobs) and all(j.state in ENDED for j in jobs)
            if done or time.monotonic() >= deadline:
                return jobs, done
            time.sleep(poll_s)

    # -- figures ----------------------------------------------------------------------------------

    def stats(self) -> dict:
        """The ledger's stats plus this orchestrator's executor, slots and recent alerts."""
        s = self.ledger.stats()
        s["executor"] = {"name": self.executor.name, "slots": self.policy.slots, "free": self.executor.free_slots(),
                         "running_here": sorted(self.executor.running())}
        if isinstance(self.executor, PoolSet):
            s["pools"] = self.executor.report(self.ready_by_class)
            if self.executor.burst:
                s["burst"] = self.executor.burst_report()
        s["alerts"] = list(self.alerts[-10:])
        s["errors"] = list(self.errors[-5:])
        return s


def run_jobs_summary(jobs: list[Job], ended: bool) -> dict:
    """What the offload of one run gave, for the run summary: job states per kind, and the
    headline figures of fastq, align-qc and compare (from their ledger results)."""
    kinds: dict[str, dict[str, int]] = {}
    for j in jobs:
        kinds.setdefault(j.kind, {}).setdefault(j.state, 0)
        kinds[j.kind][j.state] += 1
    out: dict[str, Any] = {"ended": ended, "jobs": kinds}
    latest = {j.kind: j for j in jobs}  # oldest first: the last of a kind wins
    for kind, keys in (("fastq", ("reads", "pf_reads", "files")), ("align-qc", ("pct_aligned", "error_rate", "pf_reads", "aligned")),
                       ("compare", ("verdict",))):
        j = latest.get(kind)
        if j is None:
            continue
        fig: dict[str, Any] = {"state": j.state, "output": j.output_dir}
        if j.result:
            fig.update({k: j.result[k] for k in keys if k in j.result})
        if j.state != "succeeded" and j.error:
            fig["error"] = j.error
        out[kind] = fig
    return out


def _each_executor(executor):
    """The executors behind ``executor``: each pool's of a :class:`PoolSet`, or itself."""
    return list(executor.executors.values()) if isinstance(executor, PoolSet) else [executor]
