"""Symbolic CPU sets: the profile's names for the appliance's CPU plan, resolved on a host.

An expression is ``UNION [except UNION]`` where a union is comma-separated atoms:

- ``3``, ``0-7``, ``1-N`` (``N`` is the highest online CPU), ``0-15:1/2`` -- cpulist syntax
- ``all`` (online CPUs), ``isolated`` (what the running kernel isolated)
- ``node1`` (CPUs of NUMA node 1)
- ``pci:0000:3b:00.0`` / ``net:ens1f0`` (CPUs local to a PCI device / a NIC's device)
- ``@name`` (another set of the profile)

so ``appliance = "all except @housekeeping"`` and ``gpu_side = "pci:0000:af:00.0 except
@housekeeping"`` say what a CPU plan means rather than which numbers it has on one machine.
"""

from __future__ import annotations

import re

from appliance.tuning.cpulist import format_cpulist, parse_cpulist
from appliance.tuning.host import Host
from appliance.tuning.profile import Profile, ProfileError

__all__ = ["resolve_cpusets", "eval_cpuset", "expand_set_refs"]

_REF = re.compile(r"@([A-Za-z_][A-Za-z0-9_-]*)")


def resolve_cpusets(profile: Profile, host: Host) -> dict[str, frozenset[int]]:
    """Every named set of ``profile`` resolved on ``host``; raises :class:`ProfileError`."""
    exprs = dict(profile.cpus)
    resolved: dict[str, frozenset[int]] = {}

    def resolve(name: str, stack: tuple[str, ...]) -> frozenset[int]:
        if name in resolved:
            return resolved[name]
        if name not in exprs:
            known = ", ".join(sorted(exprs)) or "none defined"
            raise ProfileError(
                f"profile {profile.name}: unknown CPU set @{name} (sets in [cpus]: {known})"
            )
        if name in stack:
            raise ProfileError(
                f"profile {profile.name}: CPU sets refer to each other in a cycle: "
                + " -> ".join("@" + s for s in stack + (name,))
            )
        cpus = _eval(
            exprs[name],
            host,
            lambda ref: resolve(ref, stack + (name,)),
            f"cpus.{name}",
            profile.name,
        )
        resolved[name] = cpus
        return cpus

    for name in exprs:
        resolve(name, ())
    return resolved


def eval_cpuset(
    expr: str, host: Host, sets: dict[str, frozenset[int]], where: str, profile_name: str
) -> frozenset[int]:
    """Evaluate one CPU expression (``"@housekeeping"``, ``"node0 except 0"``) on ``host``."""

    def ref(name: str) -> frozenset[int]:
        if name not in sets:
            known = ", ".join(sorted(sets)) or "none defined"
            raise ProfileError(
                f"profile {profile_name}: {where} = {expr!r}: unknown CPU set @{name} "
                f"(sets in [cpus]: {known})"
            )
        return sets[name]

    return _eval(expr, host, ref, where, profile_name)


def expand_set_refs(
    text: str, host: Host, sets: dict[str, frozenset[int]], where: str, profile_name: str
) -> str:
    """Replace each ``@name`` inside ``text`` by its cpulist (``"domain,@appliance"`` -> ``"domain,1-3"``)."""
    return _REF.sub(
        lambda m: format_cpulist(eval_cpuset(m.group(0), host, sets, where, profile_name)), text
    )


def _eval(expr, host: Host, ref, where: str, profile_name: str) -> frozenset[int]:
    def fail(msg: str) -> ProfileError:
        return ProfileError(f"profile {profile_name}: {where} = {expr!r}: {msg}")

    include, sep, exclude = expr.partition(" except ")
    cpus = _union(include, host, ref, fail)
    if sep:
        cpus -= _union(exclude, host, ref, fail)
    if not cpus:
        raise fail(
            f"resolves to no CPUs on this host (online CPUs: {format_cpulist(host.online_cpus)})"
        )
    return frozenset(cpus)


def _union(text: str, host: Host, ref, fail) -> set[int]:
    online = host.online_cpus
    out: set[int] = set()
    atoms = [a.strip() for a in _split_atoms(text)]
    if not any(atoms):
        raise fail("empty CPU set expression")
    for atom in atoms:
        if atom == "all":
            out |= online
        elif atom == "isolated":
            out |= host.isolated_cpus
        elif atom.startswith("@"):
            out |= ref(atom[1:])
        elif re.fullmatch(r"node\d+", atom):
            node = int(atom[4:])
            if node not in host.numa_nodes:
                raise fail(
                    f"NUMA node {node} does not exist on this host "
                    f"(nodes: {', '.join(map(str, host.numa_nodes))})"
                )
            out |= host.numa_nodes[node]
        elif atom.startswith("pci:"):
            local = host.pci_local_cpus(atom[4:])
            if local is None:
                raise fail(f"no PCI device {atom[4:]} on this host (see /sys/bus/pci/devices)")
            out |= local & online
        elif atom.startswith("net:"):
            bdf = host.netdev_pci(atom[4:])
            local = host.pci_local_cpus(bdf) if bdf else None
            if local is None:
                raise fail(f"no PCI network interface {atom[4:]} on this host")
            out |= local & online
        else:
            text_ = atom.replace("N", str(max(online))) if re.fullmatch(r"\d+-N", atom) else atom
            try:
                cpus = parse_cpulist(text_)
            except ValueError as exc:
                raise fail(
                    f"{exc}; atoms are N, N-M, 1-N, all, isolated, nodeK, @set, pci:BDF, net:IFNAME"
                ) from None
            absent = cpus - online
            if absent:
                raise fail(
                    f"CPU {format_cpulist(absent)} not present on this host "
                    f"(online CPUs: {format_cpulist(online)})"
                )
            out |= cpus
    return out


def _split_atoms(text: str) -> list[str]:
    # "pci:0000:3b:00.0" contains no commas, so a plain split is enough.
    return text.split(",")
