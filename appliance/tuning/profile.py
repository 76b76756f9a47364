"""Tuning profiles: TOML files under ``sysconfig/profiles/``, validated once at load.

A profile names CPU sets symbolically (``housekeeping = "0"``, ``appliance = "all except
@housekeeping"``) and declares hugepage pools, IRQ placement, irqbalance, cpufreq, sysctls,
transparent hugepages and kernel command-line items. ``extends`` merges a parent profile
under this one (tables merge key by key, the child wins; arrays are replaced). Loading checks
every key, type and enumerated value here; checks that need the machine (CPU present, enough
memory) happen when the profile is resolved against a host, still before anything is written.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Profile",
    "HugepagePool",
    "IrqPin",
    "ProfileError",
    "load_profile",
    "find_profile",
    "default_profile_dirs",
    "list_profiles",
    "parse_size_kb",
]

THP_ENABLED = ("always", "madvise", "never")
THP_DEFRAG = ("always", "defer", "defer+madvise", "madvise", "never")
EPP_VALUES = ("default", "performance", "balance_performance", "balance_power", "power")

_TOP_KEYS = {
    "description": "a one-line description",
    "extends": "a profile name or a list of names",
    "cpus": "a table of named CPU sets",
    "hugepages": "a table of pools keyed by size (2M, 1G)",
    "irq": "a table (default_affinity, movable, pin)",
    "irqbalance": "a table (banned)",
    "cpufreq": "a table (governor, energy_performance_preference, cpus)",
    "sysctl": "a table of sysctl name = value",
    "thp": "a table (enabled, defrag)",
    "cmdline": "a table of kernel parameter = value",
}
_POOL_MODES = ("per_node", "nodes", "total")
_POOL_KEYS = _POOL_MODES + ("mount",)
_IRQ_KEYS = ("default_affinity", "movable", "pin")
_PIN_KEYS = ("match", "device", "netdev", "cpus", "required")
_CPUFREQ_KEYS = ("governor", "energy_performance_preference", "cpus")
_THP_KEYS = ("enabled", "defrag")
_SET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_SYSCTL_NAME = re.compile(r"^[a-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")
_PARAM_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ProfileError(ValueError):
    """A profile is malformed or cannot be applied to this host; the message says how to fix it."""


@dataclass(frozen=True)
class HugepagePool:
    """Hugepages of one size: per NUMA node, an explicit node map, or a global total."""

    size_kb: int
    per_node: int | None = None
    nodes: tuple[tuple[int, int], ...] = ()
    total: int | None = None
    mount: str | None = None

    @property
    def label(self) -> str:
        return format_size(self.size_kb)


@dataclass(frozen=True)
class IrqPin:
    """IRQs selected by handler name (glob), PCI device or network interface, pinned to CPUs."""

    cpus: str
    match: str | None = None
    device: str | None = None
    netdev: str | None = None
    required: bool = False

    @property
    def label(self) -> str:
        return self.match or (f"pci:{self.device}" if self.device else f"net:{self.netdev}")


@dataclass(frozen=True)
class Profile:
    """A validated, fully merged profile."""

    name: str
    sources: tuple[Path, ...]
    description: str = ""
    cpus: tuple[tuple[str, str], ...] = ()
    hugepages: tuple[HugepagePool, ...] = ()
    irq_default_affinity: str | None = None
    irq_movable: str | None = None
    irq_pins: tuple[IrqPin, ...] = ()
    irqbalance_banned: str | None = None
    cpufreq_governor: str | None = None
    cpufreq_epp: str | None = None
    cpufreq_cpus: str = "all"
    sysctl: tuple[tuple[str, str], ...] = ()
    thp: tuple[tuple[str, str], ...] = ()
    cmdline: tuple[tuple[str, str | None], ...] = field(default=())


def parse_size_kb(text: str) -> int:
    """``"2M"`` -> 2048, ``"1G"`` -> 1048576, ``"2048kB"`` -> 2048."""
    m = re.fullmatch(r"(\d+)\s*(k|kB|K|M|MB|G|GB)", str(text).strip())
    if not m:
        raise ValueError(f"bad size {text!r}: expected e.g. 2M, 1G or 2048kB")
    n, unit = int(m.group(1)), m.group(2)[0].upper()
    return n * {"K": 1, "M": 1024, "G": 1024 * 1024}[unit]


def format_size(size_kb: int) -> str:
    if size_kb % (1024 * 1024) == 0:
        return f"{size_kb // (1024 * 1024)}G"
    if size_kb % 1024 == 0:
        return f"{size_kb // 1024}M"
    return f"{size_kb}kB"


def default_profile_dirs() -> list[Path]:
    """Where profiles are looked up: /etc first (site overrides), then this checkout's."""
    checkout = Path(__file__).resolve().parents[2] / "sysconfig" / "profiles"
    return [Path("/etc/appliance/sysconfig/profiles"), checkout]


def list_profiles(dirs: list[Path] | None = None) -> list[str]:
    names: set[str] = set()
    for d in dirs or default_profile_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.toml"))
    return sorted(names)


def find_profile(name: str, dirs: list[Path] | None = None) -> Path:
    """Path of profile ``name`` (a bare name, or a path to a .toml file)."""
    if name.endswith(".toml") or "/" in name:
        path = Path(name)
        if not path.is_file():
            raise ProfileError(f"profile file {path} does not exist")
        return path
    dirs = dirs or default_profile_dirs()
    for d in dirs:
        candidate = d / f"{name}.toml"
        if candidate.is_file():
            return candidate
    available = ", ".join(list_profiles(dirs)) or "none"
    searched = ", ".join(str(d) for d in dirs)
    raise ProfileError(
        f"unknown profile {name!r} (searched {searched}); available profiles: {available}"
    )


def load_profile(name: str, dirs: list[Path] | None = None) -> Profile:
    """Load, merge (``extends``) and validate a profile. Raises :class:`ProfileError`."""
    path = find_profile(name, dirs)
    # a parent is looked up next to the child, then in the given and the default places,
    # so a site profile in /etc (or a test's tmp dir) can extend the shipped ones
    search = [path.parent] + list(dirs or []) + default_profile_dirs()
    raw, chain = _load_merged(path, search, ())
    return _validate(path.stem, raw, chain)


def _load_merged(
    path: Path, dirs: list[Path], seen: tuple[Path, ...]
) -> tuple[dict[str, Any], tuple[Path, ...]]:
    if path.resolve() in seen:
        cycle = " -> ".join(p.stem for p in seen + (path,))
        raise ProfileError(f"profile {path}: 'extends' forms a cycle ({cycle})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"profile {path} is not valid TOML: {exc}") from None
    parents = data.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
        raise ProfileError(f"profile {path}: 'extends' must be a profile name or a list of names")
    merged: dict[str, Any] = {}
    chain: tuple[Path, ...] = ()
    for parent in parents:
        try:
            parent_path = find_profile(parent, dirs)
        except ProfileError as exc:
            raise ProfileError(f"profile {path}: extends = {parent!r}: {exc}") from None
        parent_data, parent_chain = _load_merged(parent_path, dirs, seen + (path.resolve(),))
        merged = _merge(merged, parent_data)
        chain += parent_chain
    # A child that sizes a pool (per_node, nodes or total) replaces the parent's sizing of
    # that pool instead of adding a second, conflicting one; its mount is inherited.
    for size, spec in (data.get("hugepages") or {}).items():
        parent_pool = (merged.get("hugepages") or {}).get(size)
        if (
            isinstance(spec, dict)
            and isinstance(parent_pool, dict)
            and set(spec) & set(_POOL_MODES)
        ):
            merged["hugepages"][size] = {
                k: v for k, v in parent_pool.items() if k not in _POOL_MODES
            }
    return _merge(merged, data), chain + (path,)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _err(where: str, msg: str) -> ProfileError:
    return ProfileError(f"{where}: {msg}")


def _check_keys(where: str, table: Any, allowed: tuple[str, ...] | dict[str, str]) -> dict:
    if not isinstance(table, dict):
        raise _err(where, f"must be a table, got {table!r}")
    for key in table:
        if key not in allowed:
            raise _err(where, f"unknown key {key!r}; allowed keys: {', '.join(sorted(allowed))}")
    return table


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _err(where, f"must be a non-empty string, got {value!r}")
    return value.strip()


def _count(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _err(where, f"must be a whole number >= 0, got {value!r}")
    return value


def _choice(where: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _err(where, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _validate(name: str, raw: dict[str, Any], chain: tuple[Path, ...]) -> Profile:
    where0 = f"profile {chain[-1]}"
    _check_keys(where0, raw, _TOP_KEYS)
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise _err(f"{where0}: description", f"must be a string, got {description!r}")

    cpus = []
    for set_name, expr in _check_keys(f"{where0}: [cpus]", raw.get("cpus", {}), _AnyKey()).items():
        if not _SET_NAME.match(set_name) or set_name in ("all", "isolated"):
            raise _err(
                f"{where0}: [cpus]",
                f"bad set name {set_name!r}: use letters, digits, _ "
                "or - (not 'all' or 'isolated', which are built in)",
            )
        cpus.append((set_name, _str(f"{where0}: cpus.{set_name}", expr)))

    pools = []
    for size, spec in _check_keys(
        f"{where0}: [hugepages]", raw.get("hugepages", {}), _AnyKey()
    ).items():
        where = f"{where0}: hugepages.{size}"
        try:
            size_kb = parse_size_kb(size)
        except ValueError as exc:
            raise _err(where, str(exc)) from None
        _check_keys(where, spec, _POOL_KEYS)
        modes = [k for k in ("per_node", "nodes", "total") if k in spec]
        if len(modes) > 1:
            raise _err(where, f"give only one of per_node, nodes, total (got {', '.join(modes)})")
        nodes = []
        for node, n in _check_keys(f"{where}.nodes", spec.get("nodes", {}), _AnyKey()).items():
            if not str(node).isdigit():
                raise _err(f"{where}.nodes", f"bad NUMA node {node!r}: expected 0, 1, ...")
            nodes.append((int(node), _count(f"{where}.nodes.{node}", n)))
        mount = spec.get("mount")
        if mount is not None and (not isinstance(mount, str) or not mount.startswith("/")):
            raise _err(f"{where}.mount", f"must be an absolute path, got {mount!r}")
        pools.append(
            HugepagePool(
                size_kb=size_kb,
                per_node=_count(f"{where}.per_node", spec["per_node"])
                if "per_node" in spec
                else None,
                nodes=tuple(sorted(nodes)),
                total=_count(f"{where}.total", spec["total"]) if "total" in spec else None,
                mount=mount,
            )
        )

    irq = _check_keys(f"{where0}: [irq]", raw.get("irq", {}), _IRQ_KEYS)
    pins = []
    pin_list = irq.get("pin", [])
    if not isinstance(pin_list, list):
        raise _err(f"{where0}: irq.pin", "must be an array of tables ([[irq.pin]])")
    for i, pin in enumerate(pin_list):
        where = f"{where0}: irq.pin[{i}]"
        _check_keys(where, pin, _PIN_KEYS)
        selectors = [k for k in ("match", "device", "netdev") if k in pin]
        if len(selectors) != 1:
            raise _err(
                where,
                "give exactly one of match (handler-name glob), device (PCI "
                f"address) or netdev (interface name); got {selectors or 'none'}",
            )
        if "cpus" not in pin:
            raise _err(where, "missing 'cpus' (the CPU set these IRQs go to)")
        required = pin.get("required", False)
        if not isinstance(required, bool):
            raise _err(f"{where}.required", f"must be true or false, got {required!r}")
        pins.append(
            IrqPin(
                cpus=_str(f"{where}.cpus", pin["cpus"]),
                match=_str(f"{where}.match", pin["match"]) if "match" in pin else None,
                device=_str(f"{where}.device", pin["device"]) if "device" in pin else None,
                netdev=_str(f"{where}.netdev", pin["netdev"]) if "netdev" in pin else None,
                required=required,
            )
        )

    irqbalance = _check_keys(f"{where0}: [irqbalance]", raw.get("irqbalance", {}), ("banned",))
    cpufreq = _check_keys(f"{where0}: [cpufreq]", raw.get("cpufreq", {}), _CPUFREQ_KEYS)
    epp = cpufreq.get("energy_performance_preference")
    if epp is not None:
        epp = _choice(f"{where0}: cpufreq.energy_performance_preference", epp, EPP_VALUES)

    sysctls = []
    for key, value in _flatten(raw.get("sysctl", {}), f"{where0}: [sysctl]").items():
        if not _SYSCTL_NAME.match(key):
            raise _err(
                f"{where0}: [sysctl]", f"bad sysctl name {key!r}: expected e.g. vm.swappiness"
            )
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _err(f"{where0}: sysctl.{key}", f"must be a number or a string, got {value!r}")
        sysctls.append((key, str(value)))

    thp_table = _check_keys(f"{where0}: [thp]", raw.get("thp", {}), _THP_KEYS)
    thp = []
    if "enabled" in thp_table:
        thp.append(
            ("enabled", _choice(f"{where0}: thp.enabled", thp_table["enabled"], THP_ENABLED))
        )
    if "defrag" in thp_table:
        thp.append(("defrag", _choice(f"{where0}: thp.defrag", thp_table["defrag"], THP_DEFRAG)))

    cmdline = []
    for key, value in _check_keys(
        f"{where0}: [cmdline]", raw.get("cmdline", {}), _AnyKey()
    ).items():
        where = f"{where0}: cmdline.{key}"
        if not _PARAM_NAME.match(key):
            raise _err(where, "bad kernel parameter name")
        if value is True:
            cmdline.append((key, None))
        elif isinstance(value, bool) or not isinstance(value, (int, str)):
            raise _err(where, f"must be a string, a number or true (a bare flag), got {value!r}")
        else:
            cmdline.append((key, str(value)))

    return Profile(
        name=name,
        sources=chain,
        description=description,
        cpus=tuple(cpus),
        hugepages=tuple(sorted(pools, key=lambda p: p.size_kb)),
        irq_default_affinity=_opt_str(
            f"{where0}: irq.default_affinity", irq.get("default_affinity")
        ),
        irq_movable=_opt_str(f"{where0}: irq.movable", irq.get("movable")),
        irq_pins=tuple(pins),
        irqbalance_banned=_opt_str(f"{where0}: irqbalance.banned", irqbalance.get("banned")),
        cpufreq_governor=_opt_str(f"{where0}: cpufreq.governor", cpufreq.get("governor")),
        cpufreq_epp=epp,
        cpufreq_cpus=_opt_str(f"{where0}: cpufreq.cpus", cpufreq.get("cpus")) or "all",
        sysctl=tuple(sorted(sysctls)),
        thp=tuple(thp),
        cmdline=tuple(cmdline),
    )


def _opt_str(where: str, value: Any) -> str | None:
    return None if value is None else _str(where, value)


def _flatten(table: Any, where: str, prefix: str = "") -> dict[str, Any]:
    """``{"vm": {"swappiness": 10}}`` and ``{"vm.swappiness": 10}`` both -> ``vm.swappiness``."""
    if not isinstance(table, dict):
        raise _err(where, f"must be a table, got {table!r}")
    out: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, where, full + "."))
        else:
            out[full] = value
    return out


class _AnyKey:
    """Stands for 'any key is allowed' in :func:`_check_keys`."""

    def __contains__(self, key: object) -> bool:
        return True

    def __iter__(self):
        return iter(())
