"""Executors: where job attempts run. One job wrapper (:func:`run_attempt`) for all of them.

* :class:`LocalExecutor` (the embedded default): a pool of spawned worker processes. Each attempt
  runs in a worker that marks the job running, heartbeats its lease into the ledger and records
  the outcome itself, so a worker killed mid-job simply stops heartbeating: its lease expires and
  the job is retried. Workers exit when their parent dies.
* :class:`DaskExecutor`: a ``distributed.LocalCluster`` by default, or an external scheduler
  (``offload.dask_address``: an HPC or cloud cluster, e.g. one started by dask-jobqueue). The
  ledger, not Dask, is the record: the orchestrator heartbeats leases while a future is alive
  and records its outcome; a lost future (KilledWorker, cluster gone) is a transient failure.

The wrapper writes outputs under a staging folder next to ``output_dir`` and commits with one
atomic rename plus a ``_SUCCESS.json`` marker holding the idempotency key and the result. If
``output_dir`` already holds a marker with the same key (a job re-run after a crash between
commit and ledger update), the function is not run again: the recorded result is returned. So a
job runs to completion at most once per key and leaves one correct output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.offload.context import JobContext
from appliance.offload.errors import PermanentJobError, is_transient

__all__ = ["AttemptSpec", "DaskExecutor", "LocalExecutor", "MARKER", "NoExecutor", "Outcome", "read_marker", "run_attempt"]

log = logging.getLogger(__name__)

MARKER = "_SUCCESS.json"


@dataclass(frozen=True)
class AttemptSpec:
    """Everything one attempt needs, picklable (sent to a worker process or a Dask worker)."""

    job_id: int
    kind: str
    target: str  #: "module:function"
    params: dict
    attempt: int
    key: str
    data_root: str
    output_dir: str
    owner: str = ""
    ledger_path: str = ""
    lease_s: float = 30.0
    heartbeat_s: float = 5.0
    timeout_s: float = 3600.0
    retry: tuple[int, float, float] = (3, 5.0, 300.0)  #: the kind's max_attempts, backoff_s, backoff_cap_s
    algorithm: str | None = None
    algorithm_version: str | None = None
    priority: str = "batch"


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended. ``recorded``: the worker already wrote it into the ledger."""

    job_id: int
    attempt: int
    ok: bool
    result: dict | None = None
    error: str | None = None
    transient: bool = False
    reused: bool = False
    recorded: bool = False
    lost: bool = False  #: the worker died: nothing recorded, the lease expiry retries the job
    extra: dict = field(default_factory=dict)


# -- the job wrapper --------------------------------------------------------------------------

def read_marker(output_dir: str | Path, key: str) -> dict | None:
    """The ``_SUCCESS.json`` record in ``output_dir`` if it is valid and for ``key``, else None."""
    try:
        doc = json.loads((Path(output_dir) / MARKER).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("key") != key or not isinstance(doc.get("result"), dict):
        return None
    return doc


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(parent: Path, prefixes: tuple[str, ...]) -> None:
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        if name.startswith(prefixes):
            shutil.rmtree(parent / name, ignore_errors=True)


def run_attempt(spec: AttemptSpec, extra: dict | None = None, commit_guard=None) -> dict:
    """Run one attempt of a job and commit its output; returns ``{"result": ..., "reused": bool}``.

    Raises whatever the job function raised (the caller classifies it with ``is_transient``).
    ``commit_guard`` (a context-manager factory) wraps the commit, from the function's return to
    the rename: the local worker defers its parent-death signal there, so a function that ran to
    completion is committed rather than run again.
    """
    out = Path(spec.output_dir)
    rec = read_marker(out, spec.key)
    if rec is not None:
        return {"result": rec["result"], "reused": True}
    out.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{out.name}.staging-{spec.job_id}-"
    # staging folders of this job's dead attempts, and old outputs moved aside by a dead commit
    _remove_leftovers(out.parent, (prefix, f".{out.name}.old-"))
    staging = out.parent / f"{prefix}{spec.attempt}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        from appliance.offload.kinds import resolve_target

        fn = resolve_target(spec.target)
        ctx = JobContext(
            job_id=spec.job_id, kind=spec.kind, attempt=spec.attempt, data_root=Path(spec.data_root),
            staging_dir=staging, output_dir=out, algorithm=spec.algorithm,
            algorithm_version=spec.algorithm_version, extra=dict(extra or {}), ledger=spec.ledger_path,
        )
        result = fn(dict(spec.params), ctx)
        if result is None:
            result = {}
        if not isinstance(result, dict):
            raise PermanentJobError(f"job kind {spec.kind}: {spec.target} returned {type(result).__name__}, not a dict")
        with commit_guard() if commit_guard is not None else contextlib.nullcontext():
            return _write_marker_and_commit(spec, staging, out, result)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _write_marker_and_commit(spec: AttemptSpec, staging: Path, out: Path, result: dict) -> dict:
    try:
        marker = json.dumps({"key": spec.key, "job_id": spec.job_id, "attempt": spec.attempt, "kind": spec.kind,
                             "result": result, "finished_at": time.time()}, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise PermanentJobError(f"job kind {spec.kind}: its result is not JSON ({exc})") from None
    with open(staging / MARKER, "w") as f:
        f.write(marker)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(staging)
    return _commit(staging, out, spec.key, result)


def _commit(staging: Path, out: Path, key: str, result: dict) -> dict:
    for _ in range(5):
        try:
            os.rename(staging, out)
        except OSError:
            rec = read_marker(out, key)
            if rec is not None:  # another attempt of the same job committed first
                return {"result": rec["result"], "reused": True}
            if not out.exists():
                raise
            # an output of another key (older inputs) or a partial one: move it aside, replace it
            trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            try:
                os.rename(out, trash)
            except FileNotFoundError:
                continue
            shutil.rmtree(trash, ignore_errors=True)
            continue
        _fsync_dir(out.parent)
        return {"result": result, "reused": False}
    raise OSError(f"cannot commit {staging} onto {out}: it keeps being replaced")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- local process pool -----------------------------------------------------------------------

_DEFERRED = {signal.SIGTERM}


@contextlib.contextmanager
def _deferred_termination():
    """Hold SIGTERM (what parent death sends) in this thread while the commit runs; a pending
    one is delivered, with its default action, when the block ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _attempt_in_worker(spec: AttemptSpec, ledger, extra: dict) -> Outcome:
    """Run ``spec`` in this worker: mark running, heartbeat, record the outcome in the ledger."""
    if not ledger.start(spec.job_id, spec.owner, spec.lease_s):
        return Outcome(spec.job_id, spec.attempt, False, error="lease lost before start", transient=True, recorded=True)
    stop = threading.Event()

    def beat() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)  # termination is taken by the main thread
        while not stop.wait(spec.heartbeat_s):
            try:
                if not ledger.heartbeat(spec.job_id, spec.owner, spec.lease_s):
                    log.warning("job %s: lease lost (cancelled or expired); its result will be refused", spec.job_id)
                    return
            except Exception as exc:  # a busy ledger: try again at the next beat
                log.warning("job %s: heartbeat failed: %s", spec.job_id, exc)

    t = threading.Thread(target=beat, name=f"heartbeat-{spec.job_id}", daemon=True)
    t.start()
    try:
        try:
            done = run_attempt(spec, extra, commit_guard=_deferred_termination)
        except BaseException as exc:  # noqa: BLE001 - every failure is recorded
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            transient = is_transient(exc)
            msg = _describe(exc)
            log.debug("job %s failed: %s", spec.job_id, traceback.format_exc())
            ledger.fail(spec.job_id, spec.owner, msg, transient)
            return Outcome(spec.job_id, spec.attempt, False, error=msg, transient=transient, recorded=True)
        ledger.complete(spec.job_id, spec.owner, done["result"])
        return Outcome(spec.job_id, spec.attempt, True, result=done["result"], reused=done["reused"], recorded=True)
    finally:
        stop.set()
        t.join()


def _worker_main(conn, index: int, parent_pid: int, config) -> None:
    """A local worker: take attempt specs from ``conn`` until None or EOF."""
    import rt
    from appliance.offload.errors import LedgerError
    from appliance.offload.ledger import Ledger, RetryPolicy

    from appliance.proctitle import set_title

    set_title(f"offload-worker-{index}")  # ps: "appliance: offload-worker-0"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent drains on Ctrl-C, not the workers
    # the parent-death watcher thread inherits a mask holding SIGTERM, so the signal it (or the
    # kernel) sends is taken by the main thread, which defers it during a commit
    with _deferred_termination():
        rt.exit_when_parent_dies(parent_pid)
    current: list[RetryPolicy] = [RetryPolicy()]
    ledgers: dict[str, Any] = {}
    extra = {"worker": index, "pid": os.getpid(), "host": socket.gethostname()}
    try:
        while True:
            try:
                spec = conn.recv()
            except (EOFError, OSError):
                return
            if spec is None:
                return
            current[0] = RetryPolicy(*spec.retry)
            led = ledgers.get(spec.ledger_path)
            if led is None:
                try:
                    led = ledgers[spec.ledger_path] = Ledger(spec.ledger_path, config=config, policy=lambda kind: current[0])
                except LedgerError as exc:
                    # The lab ledger is unreachable (a server restart): the attempt never began, so
                    # the job goes back to the queue without spending an attempt (release), and
                    # this worker tries to connect again with its next job.
                    conn.send(Outcome(spec.job_id, spec.attempt, False, error=f"worker cannot reach the ledger: {exc}",
                                      transient=True, lost=True, extra={"release": True}))
                    continue
            try:
                outcome = _attempt_in_worker(spec, led, extra)
            except Exception as exc:  # the ledger itself failed: report, the lease expiry retries
                outcome = Outcome(spec.job_id, spec.attempt, False, error=_describe(exc), transient=True)
            conn.send(outcome)
    finally:
        for led in ledgers.values():
            led.close()
        conn.close()


@dataclass
class _Worker:
    proc: Any
    conn: Any
    spec: AttemptSpec | None = None
    deadline: float = 0.0


class NoExecutor:
    """No slots: an orchestrator that only submits (``offload.dispatch = false``, an
    instrument whose jobs run on the lab's pool, ``appliance jobs work`` elsewhere)."""

    name = "none"
    records_itself = True
    capacity = 0

    def start(self, timeout: float = 30.0) -> None:
        pass

    def free_slots(self) -> int:
        return 0

    def running(self) -> dict[int, AttemptSpec]:
        return {}

    def submit(self, spec: AttemptSpec) -> None:
        raise RuntimeError("this orchestrator only submits (offload.dispatch = false): it runs no job")

    def poll(self) -> list[Outcome]:
        return []

    def cancel(self, job_id: int) -> bool:
        return False

    def stop(self, timeout: float = 10.0) -> None:
        pass


class LocalExecutor:
    """A pool of ``workers`` spawned processes running one attempt each at a time."""

    name = "local"
    records_itself = True  #: workers record outcomes and heartbeat leases themselves

    def __init__(self, workers: int = 2, config=None) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.config = config
        self._ctx = mp.get_context("spawn")
        self._pool: list[_Worker] = []
        self._started = False
        #: called (from this executor's waiter thread) when a busy worker has an outcome to
        #: read or died: the orchestrator sets it to wake its dispatcher (see _wait_loop)
        self.on_done = None
        self._waiter: threading.Thread | None = None
        self._kick = threading.Event()  # submit(): a worker became busy
        self._polled = threading.Event()  # poll() ran: what woke the waiter has been read
        self._closing = threading.Event()

    @property
    def capacity(self) -> int:
        return self.workers

    def _spawn(self, index: int) -> _Worker:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(child, index, os.getpid(), self.config),
                                 name=f"offload-worker-{index}", daemon=True)
        proc.start()
        child.close()
        return _Worker(proc, parent)

    def start(self, timeout: float = 30.0) -> None:
        """Spawn the workers (idempotent); on failure the ones started are stopped again."""
        if self._started:
            return
        try:
            for i in range(self.workers):
                self._pool.append(self._spawn(i))
        except BaseException:
            self.stop(timeout)
            raise
        self._started = True
        if self.on_done is not None:
            self._closing.clear()
            self._waiter = threading.Thread(target=self._wait_loop, name="offload-local-completions", daemon=True)
            self._waiter.start()

    def _wait_loop(self) -> None:
        """Wake the dispatcher when a busy worker's pipe has its outcome, or a busy worker died,
        then wait until :meth:`poll` has read it (so a readable pipe wakes it once)."""
        from multiprocessing.connection import wait

        while not self._closing.is_set():
            busy = [w for w in list(self._pool) if w.spec is not None]
            if not busy:
                self._kick.wait(0.5)
                self._kick.clear()
                continue
            try:
                ready = wait([h for w in busy for h in (w.conn, w.proc.sentinel)], timeout=0.5)
            except (OSError, ValueError):  # a worker replaced meanwhile: look again
                ready = []
            if ready and not self._closing.is_set():
                self._polled.clear()
                try:
                    self.on_done()
                except Exception:
                    log.exception("offload: completion callback failed")
                self._polled.wait(1.0)

    def free_slots(self) -> int:
        return sum(1 for w in self._pool if w.spec is None)

    def running(self) -> dict[int, AttemptSpec]:
        return {w.spec.job_id: w.spec for w in self._pool if w.spec is not None}

    def submit(self, spec: AttemptSpec) -> None:
        for w in self._pool:
            if w.spec is None:
                w.conn.send(spec)
                w.spec = spec
                w.deadline = time.monotonic() + spec.timeout_s
                self._kick.set()
                return
        raise RuntimeError("LocalExecutor.submit: no free worker (check free_slots() first)")

    def _replace(self, i: int) -> None:
        w = self._pool[i]
        if w.proc.is_alive():
            w.proc.kill()
        w.proc.join(5)
        w.conn.close()
        w.proc.close()
        self._pool[i] = self._spawn(i)

    def poll(self) -> list[Outcome]:
        """Finished attempts since the last call; dead workers are replaced."""
        out: list[Outcome] = []
        now = time.monotonic()
        try:
            return self._poll(out, now)
        finally:
            self._polled.set()

    def _poll(self, out: list[Outcome], now: float) -> list[Outcome]:
        for i, w in enumerate(self._pool):
            if w.spec is None:
                if not w.proc.is_alive():
                    self._replace(i)
                continue
            spec = w.spec
            try:
                if w.conn.poll():
                    out.append(w.conn.recv())
                    w.spec = None
                    continue
            except (EOFError, OSError):
                pass
            if not w.proc.is_alive():
                out.append(Outcome(spec.job_id, spec.attempt, False, error=f"worker process died (exit code {w.proc.exitcode})",
                                   transient=True, lost=True))
                self._replace(i)
            elif now > w.deadline:
                out.append(Outcome(spec.job_id, spec.attempt, False, error=f"timed out after {spec.timeout_s:.0f} s (kind limit)",
                                   transient=True))
                self._replace(i)
        return out

    def cancel(self, job_id: int) -> bool:
        """Stop the attempt of ``job_id`` by replacing its worker (nothing is recorded)."""
        for i, w in enumerate(self._pool):
            if w.spec is not None and w.spec.job_id == job_id:
                self._replace(i)
                return True
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the workers to exit (after their current attempt), wait up to ``timeout``, then
        terminate and join the rest (and this executor's completion waiter)."""
        self._closing.set()
        self._kick.set()
        self._polled.set()
        if self._waiter is not None:
            self._waiter.join(2.0)  # it waits at most 0.5 s at a time
            self._waiter = None
        for w in self._pool:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        for w in self._pool:
            w.proc.join(max(0.0, deadline - time.monotonic()))
        for w in self._pool:
            if w.proc.is_alive():
                w.proc.terminate()
                w.proc.join(2)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
            w.proc.close()
        self._pool = []
        self._started = False


# -- Dask -------------------------------------------------------------------------------------

def _dask_attempt(spec: AttemptSpec) -> dict:
    """What runs on a Dask worker: the same wrapper, with the worker's address for the logs."""
    extra: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        from distributed import get_worker

        extra["worker"] = get_worker().address
    except (ImportError, ValueError):
        pass
    return run_attempt(spec, extra)


class DaskExecutor:
    """Attempts as Dask futures on a ``LocalCluster`` (``address=""``) or an external scheduler."""

    name = "dask"
    records_itself = False  #: the orchestrator heartbeats and records

    def __init__(self, workers: int = 2, address: str = "", *, processes: bool = True, config=None) -> None:
        self.workers = workers
        self.address = address
        self.processes = processes
        self.config = config
        self.client = None
        self._cluster = None
        self._futures: dict[int, tuple[Any, AttemptSpec, float]] = {}
        #: called (from the Dask client's thread) when an attempt's future is done: the
        #: orchestrator sets it to wake its dispatcher, so a finished job is recorded and the
        #: next one started at once instead of at the next offload.tick_s
        self.on_done = None
        self._completed = None  # distributed.as_completed of the attempts (with on_done)
        self._waiter: threading.Thread | None = None
        self._kick = threading.Event()
        self._closing = threading.Event()

    def start(self, timeout: float = 60.0) -> None:
        """Start the LocalCluster or connect to ``address`` (idempotent; closed again on failure)."""
        if self.client is not None:
            return
        from distributed import Client, LocalCluster

        try:
            if self.address:
                self.client = Client(self.address, timeout=timeout, set_as_default=False)
            else:
                self._cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=self.processes,
                                             dashboard_address=None, host="127.0.0.1", protocol="tcp",
                                             silence_logs=logging.WARNING)
                self.client = Client(self._cluster, timeout=timeout, set_as_default=False)
        except BaseException:
            self.stop()
            raise

    @property
    def capacity(self) -> int:
        if self.address and self.client is not None:
            try:
                return max(1, sum(w["nthreads"] for w in self.client.scheduler_info()["workers"].values()))
            except Exception:  # scheduler unreachable: dispatch nothing new until it is back
                return 0
        return self.workers

    def free_slots(self) -> int:
        return max(0, self.capacity - len(self._futures))

    def running(self) -> dict[int, AttemptSpec]:
        return {jid: spec for jid, (_, spec, _) in self._futures.items()}

    def submit(self, spec: AttemptSpec) -> None:
        fut = self.client.submit(_dask_attempt, spec, key=f"offload-{spec.job_id}-{spec.attempt}-{uuid.uuid4().hex[:8]}",
                                 pure=False, retries=0)
        self._futures[spec.job_id] = (fut, spec, time.monotonic() + spec.timeout_s)
        if self.on_done is not None:
            try:
                self._track(fut)
            except Exception:  # the tick still collects it: slower, never lost
                log.exception("offload: cannot track the attempt's completion; the dispatch tick collects it")

    def _track(self, fut) -> None:
        """Hand ``fut`` to this executor's completion waiter (started on first use). Not
        ``Future.add_done_callback``: distributed runs those on a process-wide thread pool that
        outlives the executor; this thread is ours and is joined at :meth:`stop`."""
        if self._completed is None:
            from distributed import as_completed

            self._closing.clear()
            self._completed = as_completed(loop=self.client.loop)  # not default_client(): ours is not the default
            self._waiter = threading.Thread(target=self._wait_loop, name="offload-dask-completions", daemon=True)
            self._waiter.start()
        self._completed.add(fut)
        self._kick.set()

    def _wait_loop(self) -> None:
        completed = self._completed
        while not self._closing.is_set():
            if completed.is_empty():
                self._kick.wait(0.5)
                self._kick.clear()
                continue
            try:
                next(completed)  # blocks until one attempt's future is done (or cancelled)
            except StopIteration:
                continue
            try:
                self.on_done()
            except Exception:  # the dispatcher's wake must not end the waiter
                log.exception("offload: completion callback failed")

    def poll(self) -> list[Outcome]:
        out = []
        now = time.monotonic()
        for jid, (fut, spec, deadline) in list(self._futures.items()):
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
                out.append(Outcome(jid, spec.attempt, False, error=_describe(exc), transient=_dask_transient(exc)))
            elif status in ("cancelled", "lost"):
                out.append(Outcome(jid, spec.attempt, False, error=f"dask future {status} (cluster or worker gone)", transient=True))
            elif now > deadline:
                fut.cancel()
                out.append(Outcome(jid, spec.attempt, False, error=f"timed out after {spec.timeout_s:.0f} s (kind limit)", transient=True))
            else:
                continue
            del self._futures[jid]
        return out

    def cancel(self, job_id: int) -> bool:
        item = self._futures.pop(job_id, None)
        if item is None:
            return False
        item[0].cancel()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is left, close the client, then the LocalCluster (if we started one)."""
        self._closing.set()
        for fut, _, _ in self._futures.values():
            try:
                fut.cancel()
            except Exception:
                pass
        self._futures = {}
        self._kick.set()
        if self._waiter is not None:
            # the cancelled futures end its wait; a future the client can no longer reach may not
            self._waiter.join(timeout)
            self._waiter = None
        self._completed = None
        if self.client is not None:
            lost = self.client.status == "closed"  # it gave up on a dead scheduler by itself
            try:
                self.client.close(timeout=timeout)
            except Exception as exc:
                log.warning("closing the Dask client: %s", exc)
            if lost:
                # Client.close() returns early for a client that closed itself, leaving its event-loop
                # thread running; stop it so a dead cluster does not leak a thread per executor.
                runner = getattr(self.client, "_loop_runner", None)
                if runner is not None:
                    runner.stop()
            self.client = None
        if self._cluster is not None:
            try:
                self._cluster.close(timeout=timeout)
            except Exception as exc:
                log.warning("closing the LocalCluster: %s", exc)
            self._cluster = None


def _dask_transient(exc: BaseException) -> bool:
    """Lost workers and connections are transient; the job's own errors are classified as usual."""
    try:
        from distributed.scheduler import KilledWorker
    except ImportError:  # pragma: no cover
        KilledWorker = ()  # type: ignore[assignment]
    if KilledWorker and isinstance(exc, KilledWorker):
        return True
    if type(exc).__module__.startswith(("distributed", "tornado", "asyncio")) or isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return is_transient(exc)
