"""The cloud pool: jobs on Dask workers that cannot see the instrument's disk.

A pool of ``kind = "cloud"`` (``[offload.pools.NAME]``, see docs/burst.md) is a Dask cluster
reached by address (a ``dask-cloudprovider`` ``EC2Cluster``/``FargateCluster``, or any cluster
whose workers reach only the object store). Its workers read inputs and write outputs only
through the store (``store = "s3://bucket/prefix"``). One attempt goes:

1. **Push** (here, on the instrument): the job's inputs, what :func:`stage_plan` finds in its
   params (the run folder as its manifests list it, and any earlier job's output folder it
   names), go to ``<store>/<namespace>/<path under the data root>`` through
   :func:`appliance.transfer.push`: resumable, verified at the store, recorded in the transfer
   journal, each input set with its own completion marker. A second job on the same run sends
   nothing again.
2. **Run** (on a cloud worker, :func:`run_remote`): refuse inputs whose completion marker does not
   match (a job never starts on unverified inputs), download them into the worker's scratch
   folder checking every CRC32C, run the job function there through the usual wrapper
   (:func:`~appliance.offload.executors.run_attempt`) with the scratch folder as its data root,
   then publish the outputs to ``<store>/<namespace>/outputs/<job>-<key>`` (verified, with
   ``_OUTPUTS.json``). An attempt that finds its outputs already published (the pull of an
   earlier attempt failed) does not run the job again.
3. **Pull** (here): the outputs come back verified and are committed with ``_SUCCESS.json`` and
   one rename (:func:`pull_outputs`), so a cloud job that ran twice still
   leaves one correct output.

A destination that refuses writes (quota, a full path, denied access) raises the
``transfer_refused`` alert; the job goes back to the queue without spending an attempt and the
pool takes no new job for ``refused_backoff_s``. Nothing verified is sent again.

The pool's slots are what the cluster's workers offer, at most the pool's ``slots``, and, with
the burst policy on (the default for a cloud pool), at most what the policy grants
(:meth:`CloudExecutor.grant`, driven by :class:`appliance.offload.pools.PoolSet`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

from appliance.offload.errors import PermanentJobError, TransientJobError
from appliance.offload.executors import MARKER, AttemptSpec, Outcome, _dask_transient, _describe, run_attempt

__all__ = ["BurstController", "CloudExecutor", "InputSet", "RemoteJob", "pull_job", "pull_outputs", "run_remote", "stage_plan"]

log = logging.getLogger(__name__)

#: a job's result carries what the cloud did under this key (the job's own keys are unchanged)
CLOUD_KEY = "cloud"


@dataclass(frozen=True)
class InputSet:
    """One folder a job reads: its path under the data root, the files, its subject at the store."""

    rel: str
    subject: str
    entries: tuple  #: of appliance.runfolder.FileEntry


@dataclass(frozen=True)
class RemoteJob:
    """What a cloud worker gets: the attempt (params rewritten relative to the data root), the
    store, and the input sets to fetch."""

    spec: AttemptSpec
    store: str
    storage_options: dict
    inputs: tuple[InputSet, ...]
    outputs: str  #: the subject its outputs are published under

    @property
    def output_name(self) -> str:
        return Path(self.spec.output_dir).name or "out"


def _under(root: Path, value: Any) -> str | None:
    """``value`` as a path relative to ``root`` if it names something under it, else None."""
    if not isinstance(value, str) or not value or "\n" in value:
        return None
    p = Path(value)
    if not p.is_absolute():
        if ".." in p.parts:
            return None
        p = root / p
    try:
        rel = p.resolve().relative_to(root.resolve())
    except (ValueError, OSError):
        return None
    return rel.as_posix() if rel.parts else None


def stage_plan(params: dict, data_root: str | Path, namespace: str) -> tuple[list[InputSet], dict]:
    """The input sets a job's ``params`` name, and the params as a cloud worker sees them
    (absolute paths under the data root made relative, so they resolve under its scratch root).

    * ``run``: the run folder, exactly what its manifests list as complete (a run that is not
      complete cannot be staged: PermanentJobError).
    * any other value that names a folder under the data root holding a committed job output
      (``_SUCCESS.json``): that folder, every file in it (align-qc's ``fastq``).
    * a value naming another existing path outside those (a file of the instrument's disk the
      worker cannot read) is refused with the reason, rather than failing on the worker.
    """
    from appliance.runfolder import RunFolderError
    from appliance.transfer import entries_of_dir, run_entries

    root = Path(data_root)
    sets: list[InputSet] = []
    out = dict(params)
    for name, value in params.items():
        rel = _under(root, value)
        if rel is None:
            if name != "run" and isinstance(value, str) and value.startswith("/") and os.path.exists(value):
                raise PermanentJobError(f"param {name}={value!r} names a path outside the data root {root}; a cloud worker "
                                        "cannot read it: keep the job's inputs under the data root, or run it on a local pool")
            continue
        path = root / rel
        if name == "run":
            if not path.is_dir():
                raise PermanentJobError(f"run folder {path} does not exist; check the run id and the data root")
            try:
                entries = run_entries(path)
            except (RunFolderError, OSError, ValueError) as exc:
                raise PermanentJobError(f"{path}: cannot stage the run for a cloud worker ({exc}); only a complete run "
                                        "(Manifest/run.json) can be sent") from None
        elif path.is_dir() and (path / MARKER).is_file():
            entries = entries_of_dir(path)
        elif path.exists():
            raise PermanentJobError(f"param {name}={value!r} names {path}, which is not a run folder or a committed job "
                                    "output; a cloud worker can read only those (staged through the object store)")
        else:
            continue
        sets.append(InputSet(rel, f"{namespace}/{rel}", tuple(entries)))
        out[name] = rel
    return sets, out


# -- on the cloud worker ----------------------------------------------------------------------

def _fetch(dest, subject: str, entries, into: Path) -> int:
    """Download ``entries`` of ``subject`` into ``into``, checking size and CRC32C of each."""
    from appliance.transfer import fetch_file

    total = 0
    for e in entries:
        total += fetch_file(dest, f"{subject}/{e.path}", into / e.path, e.size, e.crc32c)
    return total


def _scratch_root() -> Path:
    try:
        from distributed import get_worker

        base = Path(get_worker().local_directory)
    except (ImportError, ValueError):
        base = Path(tempfile.gettempdir())
    return base


def run_remote(job: RemoteJob) -> dict:
    """What runs on a cloud worker (see the module doc): fetch, run, publish. Returns
    ``{"result", "reused", "fetched_bytes", "published_bytes", "worker", "seconds"}``."""
    from appliance.transfer import Destination, Journal, inputs_verified, publish_outputs

    t0 = time.monotonic()
    dest = Destination(job.store, job.storage_options)
    worker = f"{socket.gethostname()}/{os.getpid()}"
    done = dest.read_doc(f"{job.outputs}/{MARKER}")
    if done is not None and done.get("key") == job.spec.key and isinstance(done.get("result"), dict):
        # an earlier attempt ran and published; its pull did not finish: do not run the job again
        return {"result": done["result"], "reused": True, "fetched_bytes": 0, "published_bytes": 0, "worker": worker,
                "seconds": time.monotonic() - t0}
    for s in job.inputs:
        if not inputs_verified(dest, s.subject, s.entries):
            raise TransientJobError(f"{dest.display(s.subject)}: the inputs have not verified at the store (no matching "
                                    "completion marker); the instrument sends them again before the next attempt")
    scratch = Path(tempfile.mkdtemp(prefix=f"job-{job.spec.job_id}-{job.spec.attempt}-", dir=_scratch_root()))
    try:
        root = scratch / "root"
        fetched = sum(_fetch(dest, s.subject, s.entries, root / s.rel) for s in job.inputs)
        out = scratch / "out" / job.output_name
        spec = replace(job.spec, data_root=str(root), output_dir=str(out), ledger_path="")
        done = run_attempt(spec, {"worker": worker, "pool": "cloud"})
        with Journal(scratch / "transfers.sqlite") as journal:
            rep = publish_outputs(out, dest, journal, subject=job.outputs, job_id=job.spec.job_id)
        return {"result": done["result"], "reused": False, "fetched_bytes": fetched, "published_bytes": rep.bytes_sent,
                "worker": worker, "seconds": time.monotonic() - t0}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def pull_job(params: dict, ctx) -> dict:
    """The job function of the pull (``appliance.offload.cloud:pull_job``): the outputs into
    the staging folder (:func:`appliance.transfer.pull_into_staging`), and the job's own result,
    from the remote ``_SUCCESS.json``, as the committed result, with the pull under ``cloud``."""
    import json

    from appliance.transfer import pull_into_staging

    pulled = pull_into_staging(params, ctx)
    try:
        remote = json.loads((Path(ctx.staging_dir) / MARKER).read_bytes())
    except (OSError, ValueError):
        raise TransientJobError(f"{params['url']}/{params['subject']}: the outputs have no {MARKER}; pulled again at the next attempt") from None
    if remote.get("key") != params.get("key") or not isinstance(remote.get("result"), dict):
        raise PermanentJobError(f"{params['url']}/{params['subject']}: {MARKER} is for another job key; "
                                "delete that prefix at the store and retry the job")
    result = dict(remote["result"])
    result[CLOUD_KEY] = {**params.get("cloud", {}), "pulled_files": pulled["pulled_files"], "pulled_bytes": pulled["pulled_bytes"],
                         "egress_bytes": pulled["egress_bytes"], "verification": pulled["verification"]}
    return result


# -- on the instrument ------------------------------------------------------------------------

def pull_outputs(url: str, subject: str, *, job_id: int, key: str, output_dir: str | Path, data_root: str | Path,
                 storage_options: dict | None = None, journal=None, attempt: int = 1,
                 bandwidth_mb_s: float = 0.0, bucket=None,
                 target: str = "appliance.transfer:pull_into_staging", extra_params: dict | None = None,
                 tracer=None, run_id: str | None = None) -> dict:
    """Pull a remote job's outputs into ``output_dir`` through the offload job wrapper
    (:func:`~appliance.offload.executors.run_attempt`: staging folder, ``_SUCCESS.json``, one rename), so a
    job that ran (or was pulled) twice leaves one correct output. ``bucket``: a shared bandwidth
    limit (the storage mover's), else ``bandwidth_mb_s``. ``target``: the job function that pulls
    (default :func:`appliance.transfer.pull_into_staging`; the cloud pool's, :func:`pull_job`,
    wraps it to commit the job's own result),
    given ``extra_params`` besides the pull's. ``tracer``, ``run_id``: as for ``push`` (a
    ``transfer pull`` span). Returns the wrapper's result."""
    from appliance.transfer import transfer_span

    spec = AttemptSpec(job_id=job_id, kind="pull", target=target,
                       params={**(extra_params or {}), "url": url, "subject": subject, "storage_options": storage_options or {},
                               "bandwidth_mb_s": bandwidth_mb_s},
                       attempt=attempt, key=key, data_root=str(data_root), output_dir=str(output_dir))
    t0, start_ns = time.monotonic(), time.time_ns()
    dest = f"{url.rstrip('/')}/{subject}"
    verification = "CRC32C of every byte pulled"
    try:
        done = run_attempt(spec, {"bucket": bucket} if bucket is not None else None)
    except BaseException as exc:
        error = f"{type(exc).__name__}: {exc}"
        if journal is not None:
            tid = journal.begin(f"pull:{url}:{subject}", "pull", url, subject, job_id, [])
            journal.add_bytes(tid, duration_s=time.monotonic() - t0)
            journal.finish(tid, "failed", verification, error)
        transfer_span(tracer, "pull", start_ns, destination=dest, files=0, bytes_sent=0, bytes_reread=0, egress_bytes=0,
                      verification=verification, state="failed", error=error, job_id=job_id, run_id=run_id)
        raise
    r = done["result"]
    fig = r if "pulled_bytes" in r else r.get("cloud", {})  # a wrapping target keeps them under "cloud"
    pulled, egress = int(fig.get("pulled_bytes", 0)), int(fig.get("egress_bytes", 0))
    verification = fig.get("verification", verification)
    if journal is not None and not done["reused"]:
        tid = journal.begin(f"pull:{url}:{subject}", "pull", url, subject, job_id, [])
        journal.add_bytes(tid, sent=0, reread=pulled, egress=egress, duration_s=time.monotonic() - t0)
        journal.finish(tid, "verified", verification)
    transfer_span(tracer, "pull", start_ns, destination=dest, files=int(fig.get("pulled_files", 0)),
                  bytes_sent=0, bytes_reread=0 if done["reused"] else pulled, egress_bytes=0 if done["reused"] else egress,
                  verification=verification, state="reused" if done["reused"] else "verified", job_id=job_id, run_id=run_id)
    return done



@dataclass
class _Job:
    spec: AttemptSpec
    submitted: float
    stop: threading.Event
    phase: str = "queued"  #: queued, push, remote, pull
    future: Any = None

    def halt(self) -> None:
        """Stop the attempt: its push stops at the next chunk, its remote future is cancelled."""
        self.stop.set()
        if self.future is not None:
            try:
                self.future.cancel()
            except Exception:  # a client already closed: nothing left to cancel
                pass


class CloudExecutor:
    """The executor of a ``kind = "cloud"`` pool (module doc). ``records_itself`` is False: the
    orchestrator holds the job's lease and records its end."""

    name = "cloud"
    records_itself = False

    def __init__(self, pool, data_root: str | Path, *, namespace: str = "", config=None,
                 on_alert: Callable[[dict], None] | None = None, bucket=None, journal_path: str | Path | None = None) -> None:
        self.pool = pool
        self.data_root = Path(data_root)
        self.config = config
        self.on_alert = on_alert
        self.bucket = bucket  #: None: the host's shared limit (appliance.storage.shared_bandwidth), opened at start
        self._own_bucket = False
        self._slots_at = (0.0, 0)  #: (when, threads the workers offered): asked of the scheduler at most once a second
        self.namespace = namespace or "data-" + hashlib.sha256(f"{socket.gethostname()}:{self.data_root.resolve()}".encode()).hexdigest()[:12]
        self.journal_path = Path(journal_path) if journal_path else self.data_root / ".offload" / "transfers.sqlite"
        self.storage_options = pool.storage_options()
        self.client = None
        self._jobs: dict[int, _Job] = {}
        self._done: list[Outcome] = []
        self._lock = threading.Lock()
        self._threads: ThreadPoolExecutor | None = None
        self.granted: int | None = None  #: slots the burst policy allows (None: no policy)
        self.refused_until = 0.0  #: the store refused writes: no new job until then
        self.on_done = None  #: the orchestrator's wake-up, called when an attempt ends
        #: the orchestrator's tracer (appliance.tracing): each push and pull is a span of the
        #: job's run (``transfer push``, ``transfer pull``); None: no spans
        self.tracer = None
        #: what the pool has done, for the burst policy's spend and `appliance jobs pools`
        self.usage = {"core_seconds": 0.0, "bytes_sent": 0, "bytes_pulled": 0, "egress_bytes": 0, "jobs": 0}

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> None:
        """Connect to the pool's Dask scheduler (idempotent)."""
        if self.client is not None:
            return
        from distributed import Client

        if self.bucket is None:  # the host's one bandwidth limit, shared with the storage mover
            from appliance.storage import shared_bandwidth

            self.bucket = shared_bandwidth(self.data_root)
            self._own_bucket = True
        self.client = Client(self.pool.address, timeout=timeout, set_as_default=False)
        self._threads = ThreadPoolExecutor(max(4, self.pool.slots), thread_name_prefix=f"cloud-{self.pool.name}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every attempt (pushes stop at their next chunk; what verified stays), then close."""
        with self._lock:
            jobs = list(self._jobs.values())
        for j in jobs:
            j.halt()
        if self._threads is not None:
            self._threads.shutdown(wait=True, cancel_futures=True)
            self._threads = None
        with self._lock:
            self._jobs = {}
        if self.client is not None:
            try:
                self.client.close(timeout=timeout)
            except Exception as exc:
                log.warning("closing the cloud pool's Dask client: %s", exc)
            self.client = None
        if self._own_bucket and self.bucket is not None:
            self.bucket.close()
            self.bucket, self._own_bucket = None, False

    # -- slots ------------------------------------------------------------------------------------
    @property
    def workers_slots(self) -> int:
        """Threads the cluster's workers offer now (0: no worker, or the scheduler is unreachable)."""
        if self.client is None:
            return 0
        now = time.monotonic()
        if now - self._slots_at[0] < 1.0:
            return self._slots_at[1]
        try:
            n = sum(w["nthreads"] for w in self.client.scheduler_info()["workers"].values())
        except Exception:
            n = 0
        self._slots_at = (now, n)
        return n

    @property
    def capacity(self) -> int:
        if time.monotonic() < self.refused_until:
            return 0
        cap = min(self.workers_slots, self.pool.slots)
        return cap if self.granted is None else min(cap, self.granted)

    def grant(self, slots: int | None) -> None:
        """The burst policy's slot count (None: no policy, the cluster's slots)."""
        self.granted = None if slots is None else max(0, int(slots))

    def free_slots(self) -> int:
        with self._lock:
            busy = len(self._jobs)
        return max(0, self.capacity - busy)

    def running(self) -> dict[int, AttemptSpec]:
        with self._lock:
            return {jid: j.spec for jid, j in self._jobs.items()}

    def phases(self) -> dict[int, str]:
        with self._lock:
            return {jid: j.phase for jid, j in self._jobs.items()}

    # -- attempts ---------------------------------------------------------------------------------
    def submit(self, spec: AttemptSpec) -> None:
        if self.client is None or self._threads is None:
            raise RuntimeError(f"cloud pool {self.pool.name} is not started")
        job = _Job(spec, time.monotonic(), threading.Event())
        with self._lock:
            self._jobs[spec.job_id] = job
        self._threads.submit(self._attempt, job)

    def _finish(self, job: _Job, outcome: Outcome) -> None:
        with self._lock:
            if self._jobs.get(job.spec.job_id) is not job:
                return  # cancelled meanwhile
            del self._jobs[job.spec.job_id]
            self._done.append(outcome)
        if self.on_done is not None:
            try:
                self.on_done()
            except Exception:
                log.exception("cloud pool: completion callback failed")

    def _attempt(self, job: _Job) -> None:
        from appliance.transfer import DestinationRefused, SourceMismatch, TransferVerifyFailed

        spec = job.spec
        try:
            outcome = self._run(job)
        except DestinationRefused as exc:
            self.refused_until = time.monotonic() + self.pool.refused_backoff_s
            outcome = Outcome(spec.job_id, spec.attempt, False, error=str(exc), transient=True, lost=True,
                              extra={"release": True, "pool": self.pool.name})
        except SourceMismatch as exc:
            outcome = Outcome(spec.job_id, spec.attempt, False, error=f"cannot stage the inputs: {exc}", transient=False)
        except TransferVerifyFailed as exc:
            outcome = Outcome(spec.job_id, spec.attempt, False, error=str(exc), transient=True)
        except TimeoutError:
            if job.future is not None:
                job.future.cancel()
            outcome = Outcome(spec.job_id, spec.attempt, False, error=f"timed out after {spec.timeout_s:.0f} s (kind limit)",
                              transient=True)
        except Exception as exc:
            if job.stop.is_set():
                return  # cancelled or stopping: the lease's expiry or the cancel decides
            outcome = Outcome(spec.job_id, spec.attempt, False, error=f"cloud pool {self.pool.name}: {_describe(exc)}",
                              transient=_dask_transient(exc))
        self._finish(job, outcome)

    def _run(self, job: _Job) -> Outcome:
        from appliance.transfer import Destination, Journal, push

        spec = job.spec
        dest = Destination(self.pool.store, self.storage_options)
        sets, params = stage_plan(spec.params, self.data_root, self.namespace)
        run_id = (spec.params or {}).get("run")
        run_id = str(run_id) if run_id else None
        sent = 0
        job.phase = "push"
        with Journal(self.journal_path) as journal:
            for s in sets:
                rep = push(self.data_root / s.rel, s.entries, dest, journal, subject=s.subject, job_id=spec.job_id,
                           bucket=self.bucket, stop=job.stop, on_alert=self.on_alert, tracer=self.tracer, run_id=run_id)
                sent += rep.bytes_sent
        outputs = f"{self.namespace}/outputs/{spec.job_id}-{spec.key[:16]}"
        remote = RemoteJob(replace(spec, params=params), self.pool.store, self.storage_options, tuple(sets), outputs)
        job.phase = "remote"
        job.future = self.client.submit(run_remote, remote, key=f"cloud-{spec.job_id}-{spec.attempt}-{uuid.uuid4().hex[:8]}",
                                        pure=False, retries=0)
        if job.stop.is_set():
            job.future.cancel()
            raise RuntimeError("cancelled")
        done = job.future.result(timeout=spec.timeout_s)
        job.phase = "pull"
        cloud = {"pool": self.pool.name, "worker": done["worker"], "remote_s": round(done["seconds"], 3),
                 "fetched_bytes": done["fetched_bytes"], "pushed_bytes": sent, "reused_remote": done["reused"]}
        with Journal(self.journal_path) as journal:
            pulled = pull_outputs(self.pool.store, outputs, job_id=spec.job_id, key=spec.key, output_dir=spec.output_dir,
                                  data_root=self.data_root, storage_options=self.storage_options, journal=journal,
                                  attempt=spec.attempt, bucket=self.bucket, target="appliance.offload.cloud:pull_job",
                                  extra_params={"key": spec.key, "cloud": cloud}, tracer=self.tracer, run_id=run_id)
        result = pulled["result"]
        c = result.get(CLOUD_KEY, {})
        with self._lock:
            u = self.usage
            u["jobs"] += 1
            u["core_seconds"] += 0.0 if done["reused"] else done["seconds"] * max(1, self.pool.cores or 1)
            u["bytes_sent"] += sent
            u["bytes_pulled"] += int(c.get("pulled_bytes", 0)) if not pulled["reused"] else 0
            u["egress_bytes"] += int(c.get("egress_bytes", 0)) if not pulled["reused"] else 0
        return Outcome(spec.job_id, spec.attempt, True, result=result, reused=pulled["reused"],
                       extra={"pool": self.pool.name, "worker": done["worker"]})

    def poll(self) -> list[Outcome]:
        with self._lock:
            out, self._done = self._done, []
        return out

    def cancel(self, job_id: int) -> bool:
        with self._lock:
            job = self._jobs.pop(job_id, None)
        if job is None:
            return False
        job.halt()
        return True


# -- the burst policy in the live system ------------------------------------------------------

#: the decision log `appliance jobs burst --explain` reads, and the controller's state, under <data root>/.offload/
DECISION_LOG = "burst-decisions.jsonl"
STATE_FILE = "burst-state.json"
_EWMA = 0.3  #: weight of a new observed duration in a kind's running estimate


@dataclass(frozen=True)
class BurstSnapshot:
    """What the controller saves between decisions (bounded: one entry per job kind): the policy's
    :class:`~appliance.offload.burst.BurstState`, the day's spend and the observed durations."""

    day: int = 0
    spent: float = 0.0
    bursting: tuple[tuple[str, float], ...] = ()
    slots: int = 0
    slots_since: float = 0.0
    budget_alert: int | None = None
    durations: tuple[tuple[str, float], ...] = ()  #: kind -> observed seconds per attempt (EWMA)


def _day(now: float) -> int:
    return int(now // 86400)


class BurstController:
    """Runs :func:`~appliance.offload.burst.decide` for one cloud pool each dispatch (at most
    every ``interval_s``): builds its inputs from the ready jobs and the other pools, grants the
    pool its slots, says which jobs may go, appends every decision that changes the classes or
    slots (and one a minute otherwise) to the decision log, and saves a :class:`BurstSnapshot`."""

    def __init__(self, pool, folder: str | Path, *, interval_s: float = 5.0) -> None:
        from appliance.offload.burst import BurstState

        self.pool = pool
        self.cfg = pool.burst
        self.folder = Path(folder)
        self.log_path = self.folder / DECISION_LOG
        self.state_path = self.folder / STATE_FILE
        self.interval_s = interval_s
        snap = self._load()
        self.snapshot = self._saved = snap
        self.state = BurstState(snap.bursting, snap.slots, snap.slots_since, snap.budget_alert)
        self.durations = dict(snap.durations)
        self.decision = None
        self.allowed: frozenset[int] = frozenset()
        self._last = 0.0
        self._last_logged: tuple | None = None
        self._last_log_at = 0.0
        self._usage_seen: dict[str, float] = {}
        self._sizes: dict[tuple, int] = {}

    def _load(self) -> BurstSnapshot:
        import json

        try:
            doc = json.loads(self.state_path.read_text())
            return BurstSnapshot(int(doc["day"]), float(doc["spent"]), tuple((str(c), float(t)) for c, t in doc["bursting"]),
                                 int(doc["slots"]), float(doc["slots_since"]), doc.get("budget_alert"),
                                 tuple((str(k), float(v)) for k, v in doc.get("durations", [])))
        except FileNotFoundError:
            return BurstSnapshot()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("burst: %s is unreadable (%s); starting from no burst and no spend today", self.state_path, exc)
            return BurstSnapshot()

    def _save(self) -> None:
        import json
        from dataclasses import asdict

        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self.snapshot), sort_keys=True))
        os.replace(tmp, self.state_path)

    def expected_s(self, kind) -> float:
        """Seconds one attempt of ``kind`` takes: observed here, else the kind's declared estimate."""
        return self.durations.get(kind.name, kind.expected_s)

    def observe(self, kind: str, seconds: float) -> None:
        """An attempt of ``kind`` took ``seconds`` on a local or HPC pool."""
        old = self.durations.get(kind)
        self.durations[kind] = seconds if old is None else (1 - _EWMA) * old + _EWMA * seconds

    def input_bytes(self, job, data_root: Path) -> int:
        """The bytes the job would send: what its run folder's manifests list, plus any job output
        it reads (cached: a complete run's files do not change)."""
        key = tuple(sorted((k, v) for k, v in job.params.items() if isinstance(v, str)))
        if key not in self._sizes:
            try:
                sets, _ = stage_plan(job.params, data_root, "size")
                self._sizes[key] = sum(e.size for s in sets for e in s.entries)
            except Exception:  # not stageable: it is not sent; size 0 keeps it out of the way
                self._sizes[key] = 0
            if len(self._sizes) > 4096:
                self._sizes.pop(next(iter(self._sizes)))
        return self._sizes[key]

    def spend(self, usage: dict, now: float) -> float:
        """The day's spend, from the cloud executor's cumulative usage (core-seconds, bytes)."""
        cfg = self.cfg
        day = _day(now)
        delta = {k: float(usage.get(k, 0)) - self._usage_seen.get(k, 0.0) for k in ("core_seconds", "bytes_sent", "bytes_pulled")}
        self._usage_seen = {k: float(usage.get(k, 0)) for k in delta}
        cost = delta["core_seconds"] / 3600.0 * cfg.core_hour_price + (delta["bytes_sent"] + delta["bytes_pulled"]) / 1e9 * cfg.egress_per_gb
        spent = self.snapshot.spent if self.snapshot.day == day else 0.0
        return spent + max(0.0, cost)

    def step(self, now: float, ready, kind_of, data_root: Path, *, local_cores: float, running_core_hours: float,
             cloud_running: int, usage: dict) -> list[dict]:
        """One decision (if ``interval_s`` has passed): returns the alerts to raise or clear."""
        from appliance.offload.burst import BurstInputs, WaitingJob, decide

        spent = self.spend(usage, now)
        if self.decision is not None and now - self._last < self.interval_s:
            self.snapshot = replace(self.snapshot, day=_day(now), spent=spent)
            return []
        self._last = now
        waiting = []
        stageable = set()
        for j in ready:
            try:
                kind = kind_of(j.kind)
            except KeyError:  # an unknown kind: the dispatcher fails it with the reason; it never bursts
                continue
            if "object" in kind.inputs:
                stageable.add(j.id)
            size = self.input_bytes(j, data_root) if "object" in kind.inputs else 0
            waiting.append(WaitingJob(j.id, j.priority, max(0.0, now - j.created_at),
                                      self.expected_s(kind) * max(1, kind.cores) / 3600.0, size, max(1, kind.cores)))
        inputs = BurstInputs(now=now, waiting=tuple(waiting), local_cores=local_cores, spent_today=spent,
                             cloud_running=cloud_running, day=_day(now), running_core_hours=running_core_hours)
        d = decide(inputs, self.state, self.cfg)
        self.decision, self.state = d, d.state
        self.allowed = frozenset(i for i in d.jobs if i in stageable)
        self.snapshot = BurstSnapshot(_day(now), spent, d.state.bursting, d.state.slots, d.state.slots_since,
                                      d.state.budget_alert, tuple(sorted(self.durations.items())))
        sig = (d.classes, d.slots)
        if sig != self._last_logged or now - self._last_log_at >= 60.0 or d.alerts:
            from appliance.offload.burst import write_log

            self._last_logged, self._last_log_at = sig, now
            try:
                write_log(self.log_path, {**d.log_record(inputs), "pool": self.pool.name})
            except OSError as exc:
                log.warning("burst: cannot append to the decision log %s: %s", self.log_path, exc)
        if self.snapshot != self._saved:  # a file write only when something changed
            try:
                self._save()
                self._saved = self.snapshot
            except OSError as exc:
                log.warning("burst: cannot save %s: %s", self.state_path, exc)
        return list(d.alerts)

    def report(self) -> dict:
        """For stats, metrics and the TUI: the last decision in short."""
        d = self.decision
        return {"pool": self.pool.name, "classes": list(d.classes) if d else [], "slots": d.slots if d else 0,
                "jobs": len(self.allowed), "reason": d.reason if d else "no decision yet",
                "spent_today": round(self.snapshot.spent, 4), "daily_budget": self.cfg.daily_budget,
                "at": d.at if d else None}
