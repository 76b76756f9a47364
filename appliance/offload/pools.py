"""Compute pools: several executors at once (``[offload.pools.NAME]``), each with its slots,
per-slot resources, the classes it serves, the data locations it can read and a relative cost.

* :class:`PoolConfig` and :func:`load_pools` validate the pool tables (errors name the key and
  the allowed values). No pool table means one pool, ``local`` (or ``dask`` with
  ``offload.executor = "dask"``), built from ``offload.executor``/``offload.workers``: nothing
  changes for a single instrument.
* :class:`PoolSet` drives one executor per pool behind the executor interface the orchestrator
  uses, plus :meth:`PoolSet.states` (what :func:`~appliance.offload.scheduler.place` needs) and
  :meth:`PoolSet.submit_to`.
* :func:`pool_report` and :func:`starved` are pure: figures per pool for ``appliance jobs pools``
  and the metrics, and the ``pool_starved`` alert's condition.

Data locations are names: ``hot`` (the instrument's data root), ``warm`` (the warm tier's path),
``object`` (the object store). A job is placed only on a pool that reads a location its inputs
are on (see :class:`~appliance.offload.kinds.JobKind.inputs`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["KINDS", "LOCATIONS", "POOL_STARVED", "PoolConfig", "PoolSet", "backlog_for", "default_pool", "load_pools",
           "burst_metrics", "pool_metrics", "pool_report", "pools_view", "read_status", "slurm_walltime", "starved", "status_path", "write_status"]

log = logging.getLogger(__name__)

KINDS = ("local", "dask", "slurm", "cloud")
LOCATIONS = ("hot", "warm", "object")
#: the alert raised while a pool has backlog but no workers (runbook: docs/runbook.md#pool_starved)
POOL_STARVED = "pool_starved"


@dataclass(frozen=True)
class PoolConfig:
    """One ``[offload.pools.NAME]`` table (see docs/offload.md "Compute pools")."""

    name: str
    kind: str = "local"
    slots: int = 2  #: local/dask: workers; slurm: worker slots per Slurm job (``processes``)
    cores: int = 0  #: per slot; 0 = not declared (any job's cores fit)
    memory_mb: int = 0  #: per slot; 0 = not declared
    gpus: int = 0  #: per slot
    classes: tuple[str, ...] = ("realtime", "batch", "reprocess")
    reads: tuple[str, ...] = LOCATIONS
    cost: float = 1.0
    address: str = ""  #: dask: "" = a LocalCluster here, else an external scheduler
    # slurm
    partition: str = ""
    account: str = ""
    qos: str = ""
    walltime_s: float = 0.0  #: slurm: each worker job's walltime; 0 = none (local, dask)
    min_jobs: int = 0
    max_jobs: int = 1
    job_extra: tuple[str, ...] = ()  #: extra ``#SBATCH`` options, e.g. "--constraint=avx2"
    prologue: tuple[str, ...] = ()  #: shell lines run before the worker starts (module load, venv)
    python: str = ""  #: the worker's python; "" = this interpreter (the path must exist on the nodes)
    interface: str = ""  #: network interface of the workers and scheduler; "" = default
    scheduler_host: str = ""  #: address the workers reach the scheduler at; "" = dask's default
    local_directory: str = ""  #: worker scratch (node-local); "" = dask-jobqueue's default
    log_directory: str = ""  #: where the Slurm jobs' stdout/stderr go; "" = the submit folder
    starved_s: float = 600.0  #: pool_starved after this long with backlog and no workers
    # cloud (appliance.offload.cloud): workers that see only the object store
    store: str = ""  #: cloud: where inputs go and outputs come from: "s3://bucket/prefix" (or a shared path)
    endpoint_url: str = ""  #: cloud: an S3-compatible endpoint; "" = AWS (credentials: the standard AWS chain)
    region: str = ""  #: cloud: the store's region; "" = the AWS chain's default
    refused_backoff_s: float = 60.0  #: cloud: no new job for this long after the store refused a write
    #: cloud: the burst policy (appliance.offload.burst.BurstConfig); None = no policy, every slot usable
    burst: Any = None

    def storage_options(self) -> dict:
        """s3fs options for the cloud pool's store (no credentials: the AWS chain supplies them)."""
        kw = {k: v for k, v in (("endpoint_url", self.endpoint_url), ("region_name", self.region)) if v}
        return {"client_kwargs": kw, "default_cache_type": "none", "skip_instance_cache": True} if kw or self.store.startswith("s3://") else {}

    @property
    def capacity_max(self) -> int:
        """Slots when fully scaled."""
        return self.slots * (self.max_jobs if self.kind == "slurm" else 1)


def _err(key: str, value: Any, allowed: str):
    from appliance.configfile import ConfigError

    return ConfigError(f"config key {key} = {value!r} is invalid: allowed {allowed}")


def default_pool(executor: str = "local", workers: int = 2, dask_address: str = "") -> PoolConfig:
    """The single pool of a config without ``[offload.pools]``."""
    return PoolConfig(name=executor, kind=executor, slots=workers, address=dask_address)


_FIELDS = {f for f in PoolConfig.__dataclass_fields__ if f != "name"}


def _int(t: dict, k: str, lo: int, hi: int, key: str) -> int:
    v = t[k]
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _err(f"{key}.{k}", v, f"an integer {lo}..{hi}")
    return v


def _float(t: dict, k: str, lo: float, hi: float, key: str) -> float:
    v = t[k]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise _err(f"{key}.{k}", v, f"a number {lo}..{hi}")
    return float(v)


def _strs(t: dict, k: str, key: str, allowed: Sequence[str] | None = None) -> tuple[str, ...]:
    v = t[k]
    if not isinstance(v, (list, tuple)) or not all(isinstance(s, str) and s for s in v):
        raise _err(f"{key}.{k}", v, "a list of strings" + (f" from {', '.join(allowed)}" if allowed else ""))
    if allowed is not None:
        bad = [s for s in v if s not in allowed]
        if bad or not v:
            raise _err(f"{key}.{k}", v, f"a non-empty list from {', '.join(allowed)}")
    return tuple(v)


def _walltime(v: Any, key: str) -> float:
    """Seconds from a number or "[D-]HH:MM:SS"."""
    if isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 86400 * 30:
        return float(v)
    if isinstance(v, str):
        days = 0
        s = v
        if "-" in s:
            d, _, s = s.partition("-")
            days = int(d) if d.isdigit() else -1
        parts = s.split(":")
        if days >= 0 and len(parts) == 3 and all(p.isdigit() for p in parts):
            h, m, sec = map(int, parts)
            return float(days * 86400 + h * 3600 + m * 60 + sec)
    raise _err(key, v, 'seconds (a number) or "HH:MM:SS" / "D-HH:MM:SS"')


def slurm_walltime(seconds: float) -> str:
    """"HH:MM:SS" for ``#SBATCH --time``."""
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def load_pools(d: Any, *, classes: Sequence[str], executor: str = "local", workers: int = 2,
               dask_address: str = "") -> dict[str, PoolConfig]:
    """Validate ``offload.pools`` (a table of name -> pool table); empty = the default pool."""
    if d is None or d == {} or d == []:  # defaults.toml's `pools = []`: the single default pool
        return {}
    if not isinstance(d, dict):
        raise _err("offload.pools", d, "a table of pool name -> {kind, slots, cores, memory_mb, gpus, classes, reads, cost, ...}")
    out: dict[str, PoolConfig] = {}
    for name, t in d.items():
        if isinstance(t, PoolConfig):
            out[name] = t
            continue
        key = f"offload.pools.{name}"
        if not isinstance(t, dict):
            raise _err(key, t, "a table")
        unknown = sorted(set(t) - _FIELDS)
        if unknown:
            raise _err(f"{key}.{unknown[0]}", t[unknown[0]], f"one of the keys {', '.join(sorted(_FIELDS))}")
        kw: dict[str, Any] = {"name": name}
        kind = t.get("kind", "local")
        if kind not in KINDS:
            raise _err(f"{key}.kind", kind, " | ".join(KINDS))
        kw["kind"] = kind
        if kind == "slurm":
            kw["slots"] = 1  # one worker process per Slurm job unless slots says otherwise
        for k, lo, hi in (("slots", 1, 1024), ("cores", 0, 4096), ("memory_mb", 0, 2**24), ("gpus", 0, 64),
                          ("min_jobs", 0, 10000), ("max_jobs", 1, 10000)):
            if k in t:
                kw[k] = _int(t, k, lo, hi, key)
        for k, lo, hi in (("cost", 0.0, 1e6), ("starved_s", 1.0, 86400.0 * 7), ("refused_backoff_s", 0.0, 86400.0)):
            if k in t:
                kw[k] = _float(t, k, lo, hi, key)
        if "classes" in t:
            kw["classes"] = _strs(t, "classes", key, classes)
        if "reads" in t:
            kw["reads"] = _strs(t, "reads", key, LOCATIONS)
        for k in ("job_extra", "prologue"):
            if k in t:
                kw[k] = _strs(t, k, key)
        if kind == "cloud" and "reads" not in t:
            kw["reads"] = ("object",)
        for k in ("address", "partition", "account", "qos", "python", "interface", "scheduler_host",
                  "local_directory", "log_directory", "store", "endpoint_url", "region"):
            if k in t:
                if not isinstance(t[k], str):
                    raise _err(f"{key}.{k}", t[k], "a string")
                kw[k] = t[k]
        if "walltime_s" in t:
            kw["walltime_s"] = _walltime(t["walltime_s"], f"{key}.walltime_s")
        pool = PoolConfig(**kw)
        slurm_only = [k for k in ("partition", "account", "qos", "walltime_s", "min_jobs", "max_jobs", "job_extra",
                                  "prologue", "python", "interface", "scheduler_host", "local_directory", "log_directory")
                      if k in t]
        if kind != "slurm" and slurm_only:
            raise _err(f"{key}.{slurm_only[0]}", t[slurm_only[0]], 'only in a pool of kind = "slurm"')
        if kind not in ("dask", "cloud") and pool.address:
            raise _err(f"{key}.address", pool.address, 'only in a pool of kind = "dask" or "cloud"')
        cloud_only = [k for k in ("store", "endpoint_url", "region", "refused_backoff_s", "burst") if k in t]
        if kind != "cloud" and cloud_only:
            raise _err(f"{key}.{cloud_only[0]}", t[cloud_only[0]], 'only in a pool of kind = "cloud"')
        if kind == "cloud":
            pool = _cloud(pool, t, key)
        if kind == "slurm":
            if pool.walltime_s <= 0:
                raise _err(f"{key}.walltime_s", t.get("walltime_s"), 'the Slurm jobs\' walltime, e.g. "04:00:00" (required for kind = "slurm")')
            if pool.cores < 1 or pool.memory_mb < 1:
                raise _err(f"{key}.{'cores' if pool.cores < 1 else 'memory_mb'}", t.get("cores" if pool.cores < 1 else "memory_mb"),
                           'at least 1: a Slurm pool must declare per-slot cores and memory_mb (they size the --cpus/--mem request)')
            if pool.min_jobs > pool.max_jobs:
                raise _err(f"{key}.min_jobs", pool.min_jobs, f"at most max_jobs ({pool.max_jobs})")
        out[name] = pool
    if "realtime" in classes and not any("realtime" in p.classes for p in out.values()):
        raise _err("offload.pools", sorted(out), "at least one pool whose classes include realtime (the instrument's real-time jobs must run)")
    return out


def _cloud(pool: PoolConfig, t: dict, key: str) -> PoolConfig:
    """A cloud pool's own checks: a scheduler address, a store, reads only the object store, and
    its burst policy (``[offload.pools.NAME.burst]``; ``burst = false``: none)."""
    import dataclasses

    from appliance.offload.burst import load_burst

    if not pool.address:
        raise _err(f"{key}.address", pool.address, 'the cloud cluster\'s Dask scheduler, e.g. "tls://scheduler.example:8786" '
                   '(required for kind = "cloud"; docs/burst.md)')
    if not pool.store or not (pool.store.startswith(("s3://", "file://", "/"))):
        raise _err(f"{key}.store", pool.store, '"s3://BUCKET/PREFIX" (or a shared path) the workers read and write (required for kind = "cloud")')
    if pool.reads != ("object",):
        raise _err(f"{key}.reads", list(pool.reads), '["object"]: a cloud pool\'s workers read only the object store')
    b = t.get("burst", {})
    if b is False:
        return pool
    if not isinstance(b, dict):
        raise _err(f"{key}.burst", b, "a table of the burst policy's keys (docs/burst.md), or false for no policy")
    from appliance.configfile import ConfigError

    try:
        cfg = load_burst(b)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("config key burst.", f"config key {key}.burst.")) from None
    return dataclasses.replace(pool, burst=cfg)


# -- pure figures -----------------------------------------------------------------------------

def pool_report(pools: Mapping[str, PoolConfig], running: Mapping[str, int], free: Mapping[str, int],
                capacity: Mapping[str, int], pending: Mapping[str, int], backlog: Mapping[str, int],
                starved_since: Mapping[str, float | None] | None = None, now: float = 0.0) -> list[dict]:
    """One row per pool: slots used/free, pending Slurm jobs, the backlog it serves."""
    rows = []
    for name, p in pools.items():
        since = (starved_since or {}).get(name)
        rows.append({
            "pool": name, "kind": p.kind, "classes": list(p.classes), "reads": list(p.reads), "cost": p.cost,
            "slots": int(capacity.get(name, 0)), "used": int(running.get(name, 0)), "free": int(free.get(name, 0)),
            "max_slots": p.capacity_max, "pending_jobs": int(pending.get(name, 0)), "backlog": int(backlog.get(name, 0)),
            "starved_s": None if since is None else round(max(0.0, now - since), 1),
        })
    return rows


def starved(backlog: int, workers: int, since: float | None, now: float, threshold_s: float) -> tuple[float | None, bool]:
    """``(since, alert)``: when the pool became starved (backlog and no worker), and whether it
    has been so for at least ``threshold_s``."""
    if backlog <= 0 or workers > 0:
        return None, False
    since = now if since is None else since
    return since, now - since >= threshold_s


def backlog_for(pool: PoolConfig, ready_by_class: Mapping[str, int]) -> int:
    """Ready jobs of the classes ``pool`` serves."""
    return sum(int(ready_by_class.get(c, 0)) for c in pool.classes)


# -- the executors behind the pools -----------------------------------------------------------

class PoolSet:
    """One executor per pool behind the executor interface (start, stop, capacity, free_slots,
    running, submit, poll, cancel), plus :meth:`states` and :meth:`submit_to` for placement."""

    name = "pools"
    records_itself = False  #: per pool: see :meth:`records_itself_for`

    def __init__(self, pools: Mapping[str, PoolConfig], executors: Mapping[str, Any],
                 burst: Mapping[str, Any] | None = None) -> None:
        if set(pools) != set(executors) or not pools:
            raise ValueError("PoolSet: one executor per pool")
        self.pools = dict(pools)
        self.executors = dict(executors)
        #: cloud pool -> its :class:`~appliance.offload.cloud.BurstController` (pools with a burst policy)
        self.burst = dict(burst or {})
        self._where: dict[int, str] = {}
        self._began: dict[int, tuple[str, float]] = {}  #: job -> (kind, when submitted): observed durations
        self._starved_since: dict[str, float | None] = {n: None for n in pools}
        self._firing: dict[str, bool] = {n: False for n in pools}

    def start(self, timeout: float = 60.0) -> None:
        started = []
        try:
            for name, ex in self.executors.items():
                ex.start(timeout)
                started.append(ex)
        except BaseException:
            for ex in started:
                ex.stop(5)
            raise

    def stop(self, timeout: float = 10.0) -> None:
        for ex in self.executors.values():
            try:
                ex.stop(timeout)
            except Exception as exc:
                log.warning("stopping an offload pool: %s", exc)
        self._where = {}

    @property
    def capacity(self) -> int:
        return sum(max(0, ex.capacity) for ex in self.executors.values())

    def free_slots(self) -> int:
        return sum(ex.free_slots() for ex in self.executors.values())

    def running(self) -> dict:
        out = {}
        for ex in self.executors.values():
            out.update(ex.running())
        return out

    def running_unrecorded(self) -> dict:
        """Running attempts whose lease the orchestrator heartbeats (pools not recording themselves)."""
        out = {}
        for ex in self.executors.values():
            if not getattr(ex, "records_itself", False):
                out.update(ex.running())
        return out

    def records_itself_for(self, pool: str) -> bool:
        return bool(getattr(self.executors[pool], "records_itself", False))

    def pool_of(self, job_id: int) -> str | None:
        return self._where.get(job_id)

    def submit(self, spec) -> None:
        """Submit to the cheapest pool with a free slot serving the spec's class (placement
        normally chooses: :meth:`submit_to`)."""
        for name in sorted(self.pools, key=lambda n: (self.pools[n].cost, n)):
            if spec.priority in self.pools[name].classes and self.executors[name].free_slots() > 0:
                return self.submit_to(name, spec)
        raise RuntimeError(f"no pool serving class {spec.priority} has a free slot")

    def submit_to(self, pool: str, spec) -> None:
        self.executors[pool].submit(spec)
        self._where[spec.job_id] = pool
        self._began[spec.job_id] = (spec.kind, time.monotonic())

    def poll(self) -> list:
        out = []
        now = time.monotonic()
        for name, ex in self.executors.items():
            for o in ex.poll():
                self._where.pop(o.job_id, None)
                began = self._began.pop(o.job_id, None)
                if began is not None and o.ok and not o.reused and self.pools[name].kind != "cloud":
                    for ctl in self.burst.values():  # the local and HPC pools' observed rate
                        ctl.observe(began[0], now - began[1])
                out.append(o)
        return out

    # -- the burst policy (cloud pools) ---------------------------------------------------------
    def burst_step(self, ready: Sequence[Any], kind_of, data_root, now: float | None = None) -> list[dict]:
        """Run each cloud pool's burst policy over the ready jobs (``kind_of``: kind name ->
        JobKind) and grant the pool its slots; returns the alerts the decisions raise or clear."""
        if not self.burst:
            return []
        now = time.time() if now is None else now
        mono = time.monotonic()
        local_cores = 0.0
        running_ch = 0.0
        estimate = next(iter(self.burst.values())).expected_s  # every controller learns the same durations
        for name, p in self.pools.items():
            if p.kind == "cloud":
                continue
            ex = self.executors[name]
            local_cores += max(0, ex.capacity) * max(1, p.cores)
            for jid, spec in ex.running().items():
                try:
                    kind = kind_of(spec.kind)
                except KeyError:
                    continue
                elapsed = mono - self._began.get(jid, (spec.kind, mono))[1]
                running_ch += max(0.0, estimate(kind) - elapsed) * max(1, kind.cores) / 3600.0
        alerts = []
        for name, ctl in self.burst.items():
            ex = self.executors[name]
            alerts += ctl.step(now, ready, kind_of, Path(data_root), local_cores=local_cores, running_core_hours=running_ch,
                               cloud_running=len(ex.running()), usage=dict(ex.usage))
            ex.grant(ctl.decision.slots if ctl.decision is not None else 0)
        return alerts

    def gate(self, candidates: Sequence[Any]) -> list:
        """With a burst policy, only the jobs it chose may go to a cloud pool: they read the
        object store (their inputs are staged there); the others keep their other inputs."""
        if not self.burst:
            return list(candidates)
        import dataclasses

        allowed = frozenset().union(*(ctl.allowed for ctl in self.burst.values()))
        out = []
        for c in candidates:
            if c.id in allowed:
                out.append(c if "object" in c.inputs else dataclasses.replace(c, inputs=c.inputs + ("object",)))
            elif "object" in c.inputs and len(c.inputs) > 1:
                out.append(dataclasses.replace(c, inputs=tuple(i for i in c.inputs if i != "object")))
            else:
                out.append(c)
        return out

    def burst_report(self) -> list[dict]:
        return [ctl.report() for ctl in self.burst.values()]

    def cancel(self, job_id: int) -> bool:
        self._began.pop(job_id, None)
        pool = self._where.pop(job_id, None)
        if pool is not None:
            return self.executors[pool].cancel(job_id)
        return any(ex.cancel(job_id) for ex in self.executors.values())

    def states(self, running_by_pool_class: Mapping[str, Mapping[str, int]] | None = None) -> list:
        """The pools as :class:`~appliance.offload.scheduler.PoolState` for ``place()``."""
        from appliance.offload.scheduler import PoolState

        out = []
        for name, p in self.pools.items():
            ex = self.executors[name]
            free_left = tuple(ex.free_time_left()) if hasattr(ex, "free_time_left") else (math.inf,) * ex.free_slots()
            run = {c: 0 for c in p.classes}
            for spec in ex.running().values():
                run[spec.priority] = run.get(spec.priority, 0) + 1
            classes = p.classes
            ctl = self.burst.get(name)
            if ctl is not None:  # the classes the burst policy lets go now
                classes = tuple(c for c in p.classes if ctl.decision is not None and c in ctl.decision.classes)
            out.append(PoolState(name=name, slots=max(0, ex.capacity), free_time_left=free_left, running=run,
                                 classes=classes, reads=p.reads, cores=p.cores, memory_mb=p.memory_mb, gpus=p.gpus,
                                 cost=p.cost, walltime_s=p.walltime_s))
        return out

    def scale(self, ready_by_class: Mapping[str, int]) -> None:
        """Adaptive pools (slurm) scale to the backlog of the classes they serve."""
        for name, p in self.pools.items():
            ex = self.executors[name]
            if hasattr(ex, "scale_for"):
                ex.scale_for(backlog_for(p, ready_by_class) + len(ex.running()))

    def report(self, ready_by_class: Mapping[str, int], now: float | None = None) -> list[dict]:
        now = time.time() if now is None else now
        running = {n: len(ex.running()) for n, ex in self.executors.items()}
        free = {n: ex.free_slots() for n, ex in self.executors.items()}
        cap = {n: max(0, ex.capacity) for n, ex in self.executors.items()}
        pending = {n: ex.pending_jobs() if hasattr(ex, "pending_jobs") else 0 for n, ex in self.executors.items()}
        backlog = {n: backlog_for(p, ready_by_class) for n, p in self.pools.items()}
        return pool_report(self.pools, running, free, cap, pending, backlog, self._starved_since, now)

    def check_starved(self, ready_by_class: Mapping[str, int], now: float | None = None) -> list[tuple[str, bool, str]]:
        """Per pool whose alert state changed: ``(pool, firing, message)``."""
        now = time.time() if now is None else now
        changes = []
        for name, p in self.pools.items():
            ex = self.executors[name]
            before = self._starved_since.get(name)
            was = self._firing.get(name, False)
            since, firing = starved(backlog_for(p, ready_by_class), max(0, ex.capacity), before, now, p.starved_s)
            self._starved_since[name] = since
            self._firing[name] = firing
            if firing != was:
                msg = (f"pool {name} ({p.kind}) has had backlog for {now - (since or now):.0f} s but no workers "
                       f"(threshold {p.starved_s:.0f} s): check the Slurm queue (squeue), the partition (sinfo) and "
                       f"the worker logs; see docs/runbook.md#pool_starved") if firing else f"pool {name} has workers again"
                changes.append((name, firing, msg))
        return changes


# -- the status file the orchestrator leaves for ``appliance jobs pools`` ----------------------

STATUS_FILE = "pools.json"


def status_path(data_root) -> Path:
    return Path(data_root) / ".offload" / STATUS_FILE


def write_status(path, rows: list[dict], owner: str, now: float | None = None) -> None:
    """Atomically replace the pools' status (rows of :func:`pool_report`)."""
    import json
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"at": time.time() if now is None else now, "owner": owner, "pools": rows}, sort_keys=True))
    os.replace(tmp, path)


def read_status(path) -> dict | None:
    import json

    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("pools"), list) else None


def pools_view(pools: Mapping[str, PoolConfig], backlog_by_class: Mapping[str, int], status: dict | None,
               now: float, stale_s: float = 30.0) -> dict:
    """What ``appliance jobs pools`` prints: every configured pool with the backlog it serves
    (from the ledger) and, from a fresh orchestrator status, its live slots and pending jobs."""
    live = {}
    age = None
    if status is not None:
        age = now - float(status.get("at", 0))
        if age <= stale_s:
            live = {r["pool"]: r for r in status["pools"] if isinstance(r, dict) and "pool" in r}
    rows = []
    for name, p in pools.items():
        r = live.get(name)
        rows.append({
            "pool": name, "kind": p.kind, "classes": list(p.classes), "reads": list(p.reads), "cost": p.cost,
            "max_slots": p.capacity_max, "backlog": backlog_for(p, backlog_by_class),
            "slots": r["slots"] if r else None, "used": r["used"] if r else None, "free": r["free"] if r else None,
            "pending_jobs": r["pending_jobs"] if r else None, "starved_s": r.get("starved_s") if r else None,
        })
    return {"pools": rows, "status_age_s": None if age is None else round(age, 1), "live": bool(live),
            "owner": status.get("owner") if status else None}


#: (metric name, help, the report row's field) of the per-pool gauges
POOL_GAUGES = (
    ("appliance_pool_slots", "Live slots of an offload compute pool (workers connected)", "slots"),
    ("appliance_pool_slots_used", "Slots of the pool running an attempt", "used"),
    ("appliance_pool_slots_free", "Idle slots of the pool", "free"),
    ("appliance_pool_pending_jobs", "Slurm jobs asked for whose worker has not connected", "pending_jobs"),
    ("appliance_pool_backlog", "Waiting jobs of the classes the pool serves", "backlog"),
    ("appliance_pool_starved_seconds", "How long the pool has had backlog but no workers (0: not starved)", "starved_s"),
)


def pool_metrics(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, dict[str, float]]]:
    """Per-pool gauges from ``stats()["pools"]``: ``[(name, help, {pool: value})]`` (a
    Prometheus collector turns each into a gauge family labelled ``pool``)."""
    return [(name, doc, {str(r["pool"]): float(r.get(field) or 0) for r in rows}) for name, doc, field in POOL_GAUGES]


def burst_metrics(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, list[str], dict[tuple[str, ...], float]]]:
    """The burst policy's gauges from ``stats()["burst"]`` (one row per cloud pool):
    ``[(name, help, label names, {label values: value})]``."""
    from appliance.offload.classes import CLASSES

    slots = {(str(r["pool"]),): float(r.get("slots") or 0) for r in rows}
    jobs = {(str(r["pool"]),): float(r.get("jobs") or 0) for r in rows}
    spent = {(str(r["pool"]),): float(r.get("spent_today") or 0) for r in rows}
    budget = {(str(r["pool"]),): float(r.get("daily_budget") or 0) for r in rows}
    bursting = {(str(r["pool"]), c): 1.0 if c in (r.get("classes") or ()) else 0.0 for r in rows for c in CLASSES}
    return [
        ("appliance_burst_slots", "Cloud slots the burst policy grants the pool now", ["pool"], slots),
        ("appliance_burst_jobs_chosen", "Ready jobs the burst policy lets go to the pool now", ["pool"], jobs),
        ("appliance_burst_bursting", "1 while the class may burst to the pool", ["pool", "class"], bursting),
        ("appliance_burst_spent_today", "Money spent on the pool today (compute and transfer, the policy's prices)", ["pool"], spent),
        ("appliance_burst_daily_budget", "The pool's daily burst budget", ["pool"], budget),
    ]
