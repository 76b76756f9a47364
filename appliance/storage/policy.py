"""The tiering policy: tiers, per-class rules by age and run state, copies, watermarks.

A policy is TOML (``appliance/storage/default_policy.toml`` is the embedded default), loaded
once into frozen dataclasses; every problem is a :class:`PolicyError` naming the key, the bad
value and what is allowed. The run config's ``[storage]`` section (:class:`StorageSection`)
names the policy file and overrides the keys an operator tunes most.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from appliance.configfile import ConfigError

__all__ = [
    "CLASSES",
    "STATES",
    "TIERS",
    "NEVER",
    "ClassRule",
    "Policy",
    "PolicyError",
    "StorageSection",
    "classify",
    "load_policy",
    "parse_duration",
    "storage_section",
]

TIERS = ("hot", "warm", "cold")
#: data classes, in no particular order (eviction order is the policy's ``evict.order``)
CLASSES = ("raw", "basecalls", "intensities", "reports", "logs", "analysis")
#: run states a rule may require (``when``)
STATES = ("running", "complete", "offloaded", "analysed")
#: "never" as seconds: beyond any age, and unlike inf it stays valid JSON in config dumps
NEVER = 1e18
_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class PolicyError(ConfigError):
    """The tiering policy is malformed; the message names the key and the allowed values."""


def _err(key: str, value: Any, allowed: str) -> PolicyError:
    return PolicyError(f"storage policy key {key} = {value!r} is invalid: allowed {allowed}")


def parse_duration(value: Any, key: str) -> float:
    """Seconds from a number, ``"30s"``/``"15m"``/``"1h"``/``"7d"`` or ``"never"`` (:data:`NEVER`)."""
    if isinstance(value, bool):
        raise _err(key, value, 'seconds (a number >= 0), "30s", "15m", "1h", "7d" or "never"')
    if isinstance(value, (int, float)) and 0 <= value < NEVER:
        return float(value)
    if isinstance(value, str):
        if value.strip() == "never":
            return NEVER
        m = _DUR_RE.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise _err(key, value, 'seconds (a number >= 0), "30s", "15m", "1h", "7d" or "never"')


def classify(rel: str) -> str:
    """The data class of a catalogued path (relative to the data root, see docs/storage.md)."""
    parts = rel.split("/")
    if parts[0] == "Analysis":
        return "analysis"
    if parts[0] == ".state":
        name = parts[-1]
        return "logs" if name.endswith((".jsonl", ".log")) else "reports"
    sub = "/".join(parts[1:])
    if sub.startswith("Raw/"):
        return "raw"
    if sub.startswith("Data/Intensities/") and not sub.startswith("Data/Intensities/BaseCalls/"):
        if sub.endswith(".npy") or sub == "Data/Intensities/intensities.json":
            return "intensities"
    return "basecalls"


@dataclass(frozen=True)
class ClassRule:
    """What happens to one data class: the run state required, then ages (seconds; NEVER = never)."""

    when: str = "complete"
    warm: float = NEVER
    cold: float = NEVER
    hot_delete: float = NEVER
    warm_delete: float = NEVER

    def copy_after(self, tier: str) -> float:
        return self.warm if tier == "warm" else self.cold if tier == "cold" else NEVER

    def delete_after(self, tier: str) -> float:
        return self.hot_delete if tier == "hot" else self.warm_delete if tier == "warm" else NEVER


@dataclass(frozen=True)
class Policy:
    """A validated tiering policy. ``tiers`` maps tier -> path or fsspec URL ("" = none;
    hot "" = the data root, resolved by the manager)."""

    tiers: dict[str, str]
    rules: dict[str, ClassRule]
    verified_copies: int = 2
    high: float = 0.15
    critical: float = 0.05
    bandwidth_mb_s: float = 200.0
    interval_s: float = 60.0
    restore_pin_s: float = 7 * 86400.0
    scrub_interval_s: float = 86400.0
    scrub_sample: int = 200
    evict_order: tuple[str, ...] = ("raw", "intensities", "logs", "reports", "basecalls", "analysis")
    source: str = "<embedded default>"
    streams: int = 4
    #: automatic copy attempts of a copy that keeps failing verification before it is held
    max_attempts: int = 5

    def configured(self, tier: str) -> bool:
        return tier == "hot" or bool(self.tiers.get(tier))

    def evict_rank(self, data_class: str) -> int:
        return self.evict_order.index(data_class)


_TOP = {"tiers", "copies", "watermarks", "mover", "scrub", "evict", "rules"}


def _table(doc: dict, key: str, allowed: set[str], prefix: str = "") -> dict:
    t = doc.get(key, {})
    if not isinstance(t, dict):
        raise _err(prefix + key, t, f"a table with keys {', '.join(sorted(allowed))}")
    for k in t:
        if k not in allowed:
            raise PolicyError(f"unknown storage policy key {prefix}{key}.{k}; known keys here: {', '.join(sorted(allowed))}")
    return t


def _number(t: dict, key: str, name: str, default: float, lo: float, hi: float, allowed: str) -> float:
    v = t.get(name, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise _err(f"{key}.{name}", v, allowed)
    return float(v)


def _parse(doc: dict, source: str) -> Policy:
    for k in doc:
        if k not in _TOP:
            raise PolicyError(f"unknown storage policy key {k}; known keys: {', '.join(sorted(_TOP))}")
    tiers_t = _table(doc, "tiers", set(TIERS))
    tiers = {}
    for tier in TIERS:
        v = tiers_t.get(tier, "")
        if not isinstance(v, str):
            raise _err(f"tiers.{tier}", v, 'a path or an fsspec URL (e.g. "/mnt/warm", "s3://bucket/prefix"), or ""')
        tiers[tier] = v
    copies = _table(doc, "copies", {"verified"})
    n = copies.get("verified", 2)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 2:
        raise _err("copies.verified", n, "1 or 2 (verified copies on the other tiers before a copy is deleted)")
    wm = _table(doc, "watermarks", {"high", "critical"})
    high = _number(wm, "watermarks", "high", 0.15, 0.0, 0.99, "a free fraction from 0 to 0.99")
    critical = _number(wm, "watermarks", "critical", 0.05, 0.0, 0.99, "a free fraction from 0 to 0.99")
    if critical > high:
        raise _err("watermarks.critical", critical, f"at most watermarks.high ({high}): critical is the lower free fraction")
    mover = _table(doc, "mover", {"bandwidth_mb_s", "interval_s", "restore_pin", "streams", "max_attempts"})
    streams = mover.get("streams", 4)
    if isinstance(streams, bool) or not isinstance(streams, int) or not 1 <= streams <= 16:
        raise _err("mover.streams", streams, "an integer 1..16 (files copied at once)")
    max_attempts = mover.get("max_attempts", 5)
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 1 <= max_attempts <= 1000:
        raise _err("mover.max_attempts", max_attempts, "an integer 1..1000 (copy attempts of a copy that fails verification before it is held)")
    bw = _number(mover, "mover", "bandwidth_mb_s", 200.0, 0.0, 1e6, "0 (unlimited) to 1000000 MB/s")
    interval = _number(mover, "mover", "interval_s", 60.0, 0.05, 86400.0, "0.05 to 86400 seconds")
    pin = parse_duration(mover.get("restore_pin", "7d"), "mover.restore_pin")
    scrub = _table(doc, "scrub", {"interval", "sample"})
    scrub_interval = parse_duration(scrub.get("interval", "1d"), "scrub.interval")
    sample = scrub.get("sample", 200)
    if isinstance(sample, bool) or not isinstance(sample, int) or not 0 <= sample <= 10_000_000:
        raise _err("scrub.sample", sample, "an integer 0..10000000 (copies re-read per pass)")
    ev = _table(doc, "evict", {"order"})
    order = ev.get("order", list(Policy.evict_order))
    if not isinstance(order, list) or sorted(order) != sorted(CLASSES):
        raise _err("evict.order", order, f"a list naming each data class once: {', '.join(CLASSES)}")
    rules_t = _table(doc, "rules", set(CLASSES))
    rules = {}
    for cls in CLASSES:
        r = _table(rules_t, cls, {"when", "warm", "cold", "hot_delete", "warm_delete"}, "rules.") if cls in rules_t else {}
        when = r.get("when", "complete")
        if when not in STATES:
            raise _err(f"rules.{cls}.when", when, ", ".join(STATES))
        ages = {k: parse_duration(r.get(k, "never"), f"rules.{cls}.{k}") for k in ("warm", "cold", "hot_delete", "warm_delete")}
        rule = ClassRule(when, **ages)
        if rule.hot_delete < NEVER and when == "running":
            raise _err(f"rules.{cls}.when", when, "complete, offloaded or analysed when hot_delete is set (a running run's files are never deleted)")
        rules[cls] = rule
    return Policy(tiers, rules, n, high, critical, bw, interval, pin, scrub_interval, sample, tuple(order), source, streams, max_attempts)


def _default_text() -> str:
    return resources.files("appliance.storage").joinpath("default_policy.toml").read_text()


def load_policy(path: str | Path | None = None) -> Policy:
    """The policy in the TOML file at ``path`` (None or "": the embedded default)."""
    if not path:
        return _parse(tomllib.loads(_default_text()), "<embedded default>")
    from appliance.configfile import read_toml

    p = Path(path)
    doc = read_toml(p, "storage policy (storage.policy)", error=PolicyError,
                    hint='; give a readable TOML file or "" for the embedded default')
    return _parse(doc, str(p))


@dataclass(frozen=True)
class StorageSection:
    """The run config's ``[storage]`` section; ``policy`` is the loaded, overridden policy."""

    enabled: bool = False
    policy_file: str = ""
    catalog: str = ""
    warm: str = ""
    cold: str = ""
    high: float = 0.0
    critical: float = 0.0
    bandwidth_mb_s: float = 0.0
    policy: Policy = field(default_factory=load_policy)


_SECTION_KEYS = ("enabled", "policy", "catalog", "warm", "cold", "high", "critical", "bandwidth_mb_s")


def storage_section(d: dict) -> StorageSection:
    """Validate the ``[storage]`` table and load its policy (with the section's overrides)."""
    for k in d:
        if k not in _SECTION_KEYS:
            raise ConfigError(f"unknown config key storage.{k}; known keys here: {', '.join(_SECTION_KEYS)}")

    def cerr(k, v, allowed):
        return ConfigError(f"config key storage.{k} = {v!r} is invalid: allowed {allowed}")

    if not isinstance(d.get("enabled", False), bool):
        raise cerr("enabled", d["enabled"], "true or false")
    for k in ("policy", "catalog", "warm", "cold"):
        if not isinstance(d.get(k, ""), str):
            raise cerr(k, d[k], "a string")
    for k in ("high", "critical"):
        v = d.get(k, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 0.99:
            raise cerr(k, v, "0 (the policy's) or a free fraction up to 0.99")
    bw = d.get("bandwidth_mb_s", 0.0)
    if isinstance(bw, bool) or not isinstance(bw, (int, float)) or bw < 0:
        raise cerr("bandwidth_mb_s", bw, "0 (the policy's) or a positive number of MB/s")
    policy = load_policy(d.get("policy", ""))
    tiers = dict(policy.tiers)
    if d.get("warm"):
        tiers["warm"] = d["warm"]
    if d.get("cold"):
        tiers["cold"] = d["cold"]
    high = float(d.get("high") or policy.high)
    critical = float(d.get("critical") or policy.critical)
    if critical > high:
        raise cerr("critical", critical, f"at most the high watermark ({high})")
    policy = replace(policy, tiers=tiers, high=high, critical=critical, bandwidth_mb_s=float(bw or policy.bandwidth_mb_s))
    enabled = bool(d.get("enabled", False))
    if enabled and not (tiers["warm"] or tiers["cold"]):
        raise cerr("enabled", True, "false unless a lower tier is set: storage.warm or storage.cold (or tiers.warm/cold in the policy file)")
    return StorageSection(enabled, d.get("policy", ""), d.get("catalog", ""), tiers["warm"], tiers["cold"], high, critical, float(bw), policy)
