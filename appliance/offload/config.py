"""``OffloadConfig``: the ``[offload]`` section (ledger, executor, priorities, admission), validated once.

Built by :func:`load_offload` from the merged TOML table; every problem is a
:class:`appliance.config.ConfigError` naming the key and what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.offload.classes import CLASSES
from appliance.offload.pools import load_pools

__all__ = ["CLASSES", "KindOverride", "OffloadConfig", "load_offload"]

#: priority classes, highest first
EXECUTORS = ("local", "dask")


@dataclass(frozen=True)
class KindOverride:
    """Per-kind retry and time limits (``[offload.kinds.<kind>]``); None keeps the kind's default."""

    max_attempts: int | None = None
    backoff_s: float | None = None
    backoff_cap_s: float | None = None
    timeout_s: float | None = None


@dataclass(frozen=True)
class OffloadConfig:
    """The ``[offload]`` section (see appliance/defaults.toml for what each key means)."""

    enabled: bool = True
    #: run jobs here; false: only submit them (an instrument whose jobs run on the lab's pool)
    dispatch: bool = True
    #: which run folders of the data root to submit jobs for: "all", or "own" (those whose
    #: RunInfo names this instrument: instruments sharing one data root)
    scan_runs: str = "all"
    ledger: str = ""
    executor: str = "local"
    dask_address: str = ""
    workers: int = 2
    limits: dict[str, int] = field(default_factory=lambda: {"realtime": 2, "batch": 2, "reprocess": 1})
    share: dict[str, float] = field(default_factory=lambda: {"batch": 0.2, "reprocess": 0.1})
    reserved_realtime: int = 1
    lease_s: float = 30.0
    heartbeat_s: float = 5.0
    poll_s: float = 2.0
    tick_s: float = 0.2
    depth_high: int = 1000
    oldest_age_s: float = 3600.0
    #: per instrument: its own queued + retrying jobs at which its batch/reprocess work waits (0 = none)
    instrument_depth_high: int = 0
    admission_wait_s: float = 0.0
    run_wait_s: float = 600.0
    plugins: tuple[str, ...] = ()
    kinds: dict[str, KindOverride] = field(default_factory=dict)
    #: ``[offload.instrument_weights]``: instrument id -> its weight in the fair share within a
    #: class (appliance.offload.scheduler); empty = equal weights, an instrument not named weighs 1.0
    instrument_weights: dict[str, float] = field(default_factory=dict)
    #: ``[offload.pools.NAME]`` compute pools (appliance.offload.pools); empty = one pool from executor/workers
    pools: dict = field(default_factory=dict)

    def ledger_path(self, data_root: str | Path) -> Path:
        """The ledger file: ``offload.ledger`` or ``<data_root>/.offload/ledger.sqlite``."""
        return Path(self.ledger) if self.ledger else Path(data_root) / ".offload" / "ledger.sqlite"

    @property
    def ledger_is_postgres(self) -> bool:
        """``offload.ledger`` names a PostgreSQL database (the lab ledger, docs/lab.md)."""
        return self.ledger.startswith(("postgresql://", "postgres://"))

    def ledger_target(self, data_root: str | Path) -> str | Path:
        """What :class:`~appliance.offload.Ledger` opens: the PostgreSQL URL, or the file."""
        return self.ledger if self.ledger_is_postgres else self.ledger_path(data_root)

    def outbox_path(self, data_root: str | Path, instrument_id: str = "") -> Path:
        """The instrument's outbox for a lab ledger it cannot reach:
        ``<data_root>/.offload/outbox-<instrument>.sqlite`` (``outbox.sqlite`` without an
        instrument id, as releases before per-instrument outboxes named every one), so
        instruments that share a data root hand over only their own submissions."""
        name = f"outbox-{instrument_id}.sqlite" if instrument_id else "outbox.sqlite"
        return Path(data_root) / ".offload" / name


def _err(key: str, value: Any, allowed: str):
    from appliance.configfile import ConfigError

    return ConfigError(f"config key {key} = {value!r} is invalid: allowed {allowed}")


def _num(d: dict, k: str, lo: float, hi: float, *, integer: bool = False, key: str = "offload") -> Any:
    v = d[k]
    ok = not isinstance(v, bool) and isinstance(v, int if integer else (int, float)) and lo <= v <= hi
    if not ok:
        raise _err(f"{key}.{k}", v, f"{'an integer' if integer else 'a number'} {lo}..{hi}")
    return v if integer else float(v)


#: the largest ratio of two instruments' weights that is meaningful (and the bounds of one weight)
MAX_WEIGHT = 1000.0


def _instrument_weights(table: Any) -> dict[str, float]:
    key = "offload.instrument_weights"
    if isinstance(table, (list, tuple)) and not table:  # defaults.toml's [] (no table): equal weights
        return {}
    if not isinstance(table, dict):
        raise _err(key, table, 'a table of instrument id -> weight, e.g. { NB501234 = 2.0, NB501235 = 1.0 }')
    out = {}
    for inst, w in table.items():
        if not isinstance(inst, str) or not inst:
            raise _err(f"{key}.{inst!r}", w, "a non-empty instrument id (RunInfo's Instrument) as the key")
        ok = not isinstance(w, bool) and isinstance(w, (int, float)) and 0 < w <= MAX_WEIGHT
        if not ok:
            raise _err(f"{key}.{inst}", w, f"a number more than 0, up to {MAX_WEIGHT:g} (1.0 is the default weight; "
                       "2.0 gets twice the share of 1.0; to stop an instrument's work, hold or cancel its jobs)")
        out[inst] = float(w)
    return out


def load_offload(d: dict | None) -> OffloadConfig:
    """Validate the merged ``[offload]`` table (None = the built-in defaults)."""
    if d is None:
        return OffloadConfig()
    d = dict(d)
    known = {f for f in OffloadConfig.__dataclass_fields__}
    unknown = sorted(set(d) - known)
    if unknown:
        raise _err(f"offload.{unknown[0]}", d[unknown[0]], f"one of the keys {', '.join(sorted(known))}")
    base = OffloadConfig()
    full = {k: d.get(k, getattr(base, k)) for k in known}
    if full["scan_runs"] not in ("all", "own"):
        raise _err("offload.scan_runs", full["scan_runs"], '"all" or "own"')
    for k in ("enabled", "dispatch"):
        if not isinstance(full[k], bool):
            raise _err(f"offload.{k}", full[k], "true or false")
    for k in ("ledger", "dask_address"):
        if not isinstance(full[k], str):
            raise _err(f"offload.{k}", full[k], "a string")
    if "://" in full["ledger"] and not full["ledger"].startswith(("postgresql://", "postgres://")):
        raise _err("offload.ledger", full["ledger"], '"" (the data root\'s SQLite file), a file path, or a PostgreSQL URL '
                   '"postgresql://USER@HOST/DB" / "postgresql:///DB?host=/run/postgresql"')
    if full["executor"] not in EXECUTORS:
        raise _err("offload.executor", full["executor"], " or ".join(EXECUTORS))
    if full["dask_address"] and full["executor"] != "dask":
        raise _err("offload.dask_address", full["dask_address"], '"" unless offload.executor = "dask"')
    workers = _num(full, "workers", 1, 1024, integer=True)
    limits = full["limits"]
    if not isinstance(limits, dict) or set(limits) != set(CLASSES):
        raise _err("offload.limits", limits, f"a table with exactly the keys {', '.join(CLASSES)}")
    limits = {c: _num(limits, c, 0, 1024, integer=True, key="offload.limits") for c in CLASSES}
    if limits["realtime"] < 1:
        raise _err("offload.limits.realtime", limits["realtime"], "at least 1 (the instrument's real-time jobs must run)")
    share = full["share"]
    if not isinstance(share, dict) or set(share) != {"batch", "reprocess"}:
        raise _err("offload.share", share, "a table with exactly the keys batch, reprocess")
    share = {c: _num(share, c, 0.0, 0.5, key="offload.share") for c in ("batch", "reprocess")}
    reserved = _num(full, "reserved_realtime", 0, 1024, integer=True)
    if reserved >= workers and workers > 1:
        raise _err("offload.reserved_realtime", reserved, f"fewer than offload.workers ({workers}) so batch work can run")
    lease_s = _num(full, "lease_s", 0.1, 86400)
    heartbeat_s = _num(full, "heartbeat_s", 0.02, 3600)
    if heartbeat_s * 2 > lease_s:
        raise _err("offload.heartbeat_s", heartbeat_s, f"at most half of offload.lease_s ({lease_s}) so one missed heartbeat does not lose the lease")
    plugins = full["plugins"]
    if not isinstance(plugins, (list, tuple)) or not all(isinstance(p, str) and p for p in plugins):
        raise _err("offload.plugins", plugins, 'a list of module names (e.g. ["mylab.jobs"])')
    kinds_in = full["kinds"]
    if not isinstance(kinds_in, dict):
        raise _err("offload.kinds", kinds_in, "a table of kind name -> {max_attempts, backoff_s, backoff_cap_s, timeout_s}")
    kinds: dict[str, KindOverride] = {}
    for name, t in kinds_in.items():
        if isinstance(t, KindOverride):
            kinds[name] = t
            continue
        key = f"offload.kinds.{name}"
        if not isinstance(t, dict) or set(t) - set(KindOverride.__dataclass_fields__):
            raise _err(key, t, "a table with keys max_attempts, backoff_s, backoff_cap_s, timeout_s")
        kw = {}
        if "max_attempts" in t:
            kw["max_attempts"] = _num(t, "max_attempts", 1, 1000, integer=True, key=key)
        for k, hi in (("backoff_s", 86400), ("backoff_cap_s", 86400 * 7), ("timeout_s", 86400 * 7)):
            if k in t:
                kw[k] = _num(t, k, 0.0, hi, key=key)
        kinds[name] = KindOverride(**kw)
    return OffloadConfig(
        enabled=full["enabled"],
        dispatch=full["dispatch"],
        scan_runs=full["scan_runs"],
        ledger=full["ledger"],
        executor=full["executor"],
        dask_address=full["dask_address"],
        workers=workers,
        limits=limits,
        share=share,
        reserved_realtime=reserved,
        lease_s=lease_s,
        heartbeat_s=heartbeat_s,
        poll_s=_num(full, "poll_s", 0.01, 3600),
        tick_s=_num(full, "tick_s", 0.005, 60),
        depth_high=_num(full, "depth_high", 1, 10**9, integer=True),
        oldest_age_s=_num(full, "oldest_age_s", 1, 10**9),
        instrument_depth_high=_num(full, "instrument_depth_high", 0, 10**9, integer=True),
        admission_wait_s=_num(full, "admission_wait_s", 0, 3600),
        run_wait_s=_num(full, "run_wait_s", 0, 86400),
        plugins=tuple(plugins),
        kinds=kinds,
        instrument_weights=_instrument_weights(full["instrument_weights"]),
        pools=load_pools(full["pools"], classes=CLASSES, executor=full["executor"], workers=workers,
                         dask_address=full["dask_address"]),
    )
