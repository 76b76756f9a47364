"""The tunable items: one class per kind of knob, each able to observe and change itself.

A profile resolved on a host becomes a list of items (:func:`build_items`). Each item knows
its key (``sysctl:vm.swappiness``), whether it applies at runtime or needs a reboot, how to
read its current value, and how to change it -- always journalling the undo first.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.tuning.bootloader import (
    BootConfig,
    boot_config,
    format_param,
    parse_cmdline,
)
from appliance.tuning.cpulist import (
    format_cpulist,
    format_cpumask,
    parse_cpulist,
    parse_cpumask,
)
from appliance.tuning.cpusets import eval_cpuset, expand_set_refs, resolve_cpusets
from appliance.tuning.host import Host, Irq, read_text
from appliance.tuning.journal import Journal
from appliance.tuning.profile import Profile, ProfileError, format_size
from appliance.tuning.runner import Runner

__all__ = [
    "Item",
    "Observation",
    "ItemError",
    "Context",
    "build_items",
    "STATUSES",
    "irqbalance_env_path",
]

#: plan/verify statuses: already right; runtime change needed; change needs persist + reboot;
#: configured for next boot but not yet running; the host lacks the knob; a declared object
#: (an IRQ by name, a mount) is absent.
STATUSES = ("ok", "change", "reboot", "pending-reboot", "unsupported", "missing")


class ItemError(RuntimeError):
    """One item could not be changed (the kernel refused, allocation fell short, ...)."""


@dataclass(frozen=True)
class Observation:
    status: str
    current: str | None
    reason: str = ""


@dataclass
class Context:
    """What an item needs to change the machine."""

    host: Host
    runner: Runner
    journal: Journal

    def rel(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.host.root))

    def change_attr(self, key: str, path: Path, old: str, new: str) -> None:
        """Journal ``old`` for ``path``, then write ``new`` to the kernel attribute."""
        self.journal.undo(key, {"op": "attr", "path": self.rel(path), "value": old})
        try:
            self.runner.write_attr(path, new)
        except OSError as exc:
            reason = errno.errorcode.get(exc.errno or 0, str(exc))
            raise ItemError(
                f"the kernel refused {new.strip()!r} for {self.rel(path)} ({reason})"
            ) from exc

    def make_dirs(self, key: str, directory: Path) -> None:
        """Create ``directory`` and its missing parents, journalling each for removal."""
        missing = []
        parent = directory
        while not parent.exists() and parent != self.host.root:
            missing.append(parent)
            parent = parent.parent
        for d in reversed(missing):
            self.journal.undo(key, {"op": "rmdir", "path": self.rel(d)})
            self.runner.make_dir(d)

    def change_file(self, key: str, path: Path, text: str, after: list[str] | None = None) -> None:
        """Journal the old content (or its absence) of a config file, then replace it."""
        old = read_text(path) if path.exists() else None
        mode = path.stat().st_mode & 0o7777 if path.exists() else 0o644
        self.make_dirs(key, path.parent)
        undo: dict[str, Any] = {"op": "file", "path": self.rel(path), "text": old, "mode": mode}
        if after:
            undo["after"] = after
        self.journal.undo(key, undo)
        self.runner.write_file(path, text, mode)


class Item:
    """A single tunable: key, kind (runtime or reboot), desired value, observe and apply."""

    key: str
    kind: str = "runtime"
    desired: str

    def observe(self, host: Host) -> Observation:
        raise NotImplementedError

    def apply(self, ctx: Context) -> None:
        raise NotImplementedError

    def _cmp(self, current: str | None, ok: bool) -> Observation:
        return Observation("ok" if ok else "change", current)


def _same_value(a: str, b: str) -> bool:
    """Sysctl equality: whitespace-insensitive, numerically for numbers (``"10"`` == ``"010"``)."""
    fa, fb = a.split(), b.split()
    if len(fa) != len(fb):
        return False
    for x, y in zip(fa, fb, strict=True):
        try:
            if int(x) != int(y):
                return False
        except ValueError:
            if x != y:
                return False
    return True


class SysctlItem(Item):
    def __init__(self, name: str, value: str, host: Host) -> None:
        self.key = f"sysctl:{name}"
        self.name = name
        self.desired = value
        self.path = host.sysctl_path(name)

    def observe(self, host: Host) -> Observation:
        text = read_text(self.path)
        if text is None:
            return Observation("unsupported", None, "this kernel has no such sysctl")
        return self._cmp(text.strip(), _same_value(text, self.desired))

    def apply(self, ctx: Context) -> None:
        ctx.change_attr(self.key, self.path, read_text(self.path) or "", self.desired + "\n")


def _selected(text: str) -> tuple[str | None, list[str]]:
    """``"always [madvise] never"`` -> ``("madvise", ["always", "madvise", "never"])``."""
    words = text.split()
    chosen = next((w[1:-1] for w in words if w.startswith("[") and w.endswith("]")), None)
    return chosen, [w.strip("[]") for w in words]


class ThpItem(Item):
    def __init__(self, field: str, value: str, host: Host) -> None:
        self.key = f"thp:{field}"
        self.desired = value
        self.path = host.path(f"sys/kernel/mm/transparent_hugepage/{field}")

    def observe(self, host: Host) -> Observation:
        text = read_text(self.path)
        if text is None:
            return Observation("unsupported", None, "kernel built without transparent hugepages")
        chosen, offered = _selected(text)
        if self.desired not in offered:
            return Observation("unsupported", chosen, f"kernel offers {', '.join(offered)}")
        return self._cmp(chosen, chosen == self.desired)

    def apply(self, ctx: Context) -> None:
        chosen, _ = _selected(read_text(self.path) or "")
        ctx.change_attr(self.key, self.path, f"{chosen}\n", self.desired + "\n")


class HugepagesItem(Item):
    def __init__(self, size_kb: int, node: int | None, count: int, host: Host) -> None:
        where = "total" if node is None else f"node{node}"
        self.key = f"hugepages:{format_size(size_kb)}:{where}"
        self.size_kb = size_kb
        self.node = node
        self.count = count
        self.desired = str(count)
        self.path = host.hugepages_path(size_kb, node)

    def observe(self, host: Host) -> Observation:
        text = read_text(self.path)
        if text is None:
            return Observation(
                "unsupported",
                None,
                f"no {format_size(self.size_kb)} hugepages on this host (sizes offered: "
                f"{', '.join(format_size(s) for s in host.hugepage_sizes_kb) or 'none'})",
            )
        return self._cmp(text.strip(), int(text) == self.count)

    def apply(self, ctx: Context) -> None:
        ctx.change_attr(self.key, self.path, read_text(self.path) or "0\n", f"{self.count}\n")
        got = int(read_text(self.path) or 0)
        if got != self.count:
            raise ItemError(
                f"{self.key}: asked for {self.count} pages, the kernel allocated {got} "
                "(memory too fragmented: reserve them at boot with hugepages= on the kernel "
                "command line, or apply earlier after boot)"
            )


def _pagesize_kb(options: tuple[str, ...]) -> int | None:
    for opt in options:
        if opt.startswith("pagesize="):
            from appliance.tuning.profile import parse_size_kb

            return parse_size_kb(opt.split("=", 1)[1])
    return None


class MountItem(Item):
    """A hugetlbfs mount of one page size, so processes can map that pool by file."""

    def __init__(self, target: str, size_kb: int, host: Host) -> None:
        self.key = f"mount:{target}"
        self.target = target
        self.size_kb = size_kb
        self.desired = f"hugetlbfs pagesize={format_size(self.size_kb)}"

    def _current(self, host: Host):
        for m in host.mounts:
            if m.target == self.target:
                return m
        return None

    def observe(self, host: Host) -> Observation:
        if self.size_kb not in host.hugepage_sizes_kb:
            return Observation(
                "unsupported", None, f"no {format_size(self.size_kb)} hugepages on this host"
            )
        m = self._current(host)
        if m is None:
            return Observation("change", None, "not mounted")
        # hugetlbfs without pagesize= uses the default size (the smallest one offered)
        size = _pagesize_kb(m.options) or (host.hugepage_sizes_kb or (0,))[0]
        current = (
            f"{m.fstype} pagesize={format_size(size)}" if m.fstype == "hugetlbfs" else m.fstype
        )
        if m.fstype != "hugetlbfs" or size != self.size_kb:
            return Observation("missing", current, "something else is mounted there; unmount it")
        return Observation("ok", current)

    def apply(self, ctx: Context) -> None:
        path = ctx.host.path(self.target)
        ctx.make_dirs(self.key, path)
        ctx.journal.undo(self.key, {"op": "umount", "path": self.target})
        ctx.runner.run(
            [
                "mount",
                "-t",
                "hugetlbfs",
                "-o",
                f"pagesize={format_size(self.size_kb)}",
                "hugetlbfs",
                str(path),
            ]
        )


class IrqAffinityItem(Item):
    def __init__(self, irq: Irq, cpus: frozenset[int], why: str) -> None:
        self.key = f"irq:{irq.number}"
        self.irq = irq
        self.cpus = cpus
        self.why = why
        self.desired = format_cpulist(cpus)

    def observe(self, host: Host) -> Observation:
        text = read_text(self.irq.affinity_path)
        if text is None:
            return Observation("missing", None, "IRQ disappeared")
        names = ", ".join(self.irq.names) or "?"
        if not self.irq.movable:
            return Observation(
                "unsupported", text.strip(), f"{names}; managed IRQ, the kernel places it"
            )
        return Observation(
            "ok" if parse_cpulist(text) == self.cpus else "change",
            text.strip(),
            f"{names}; {self.why}",
        )

    def apply(self, ctx: Context) -> None:
        old = read_text(self.irq.affinity_path) or ""
        ctx.change_attr(self.key, self.irq.affinity_path, old, self.desired + "\n")


class IrqDefaultAffinityItem(Item):
    def __init__(self, cpus: frozenset[int], host: Host) -> None:
        self.key = "irq:default_smp_affinity"
        self.cpus = cpus
        self.path = host.path("proc/irq/default_smp_affinity")
        self.desired = format_cpulist(cpus)
        self.nbits = host.nr_cpu_ids

    def observe(self, host: Host) -> Observation:
        text = read_text(self.path)
        if text is None:
            return Observation("unsupported", None, "no /proc/irq/default_smp_affinity")
        current = parse_cpumask(text)
        return self._cmp(format_cpulist(current), current == self.cpus)

    def apply(self, ctx: Context) -> None:
        ctx.change_attr(
            self.key,
            self.path,
            read_text(self.path) or "",
            format_cpumask(self.cpus, self.nbits) + "\n",
        )


class PinNoMatchItem(Item):
    """An ``[[irq.pin]]`` rule that matched no IRQ on this host."""

    def __init__(self, label: str, cpus: frozenset[int], required: bool) -> None:
        self.key = f"irq-pin:{label}"
        self.required = required
        self.desired = format_cpulist(cpus)

    def observe(self, host: Host) -> Observation:
        if self.required:
            return Observation("missing", None, "no IRQ matches (required = true)")
        return Observation("unsupported", None, "no IRQ matches on this host")

    def apply(self, ctx: Context) -> None:  # pragma: no cover - never in "change" state
        raise ItemError(f"{self.key}: nothing to apply")


def irqbalance_env_path(host: Host) -> Path:
    """/etc/sysconfig/irqbalance on Red Hat-like systems, /etc/default/irqbalance elsewhere."""
    if host.path("etc/sysconfig").is_dir():
        return host.path("etc/sysconfig/irqbalance")
    return host.path("etc/default/irqbalance")


def _env_value(text: str, name: str) -> str | None:
    value = None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith(f"{name}="):
            value = line.split("=", 1)[1].strip().strip('"').strip("'")
    return value


class IrqbalanceItem(Item):
    """irqbalance's banned CPUs, so it never moves IRQs onto the appliance's cores."""

    VAR = "IRQBALANCE_BANNED_CPULIST"

    def __init__(self, cpus: frozenset[int], host: Host) -> None:
        self.key = "irqbalance:banned_cpulist"
        self.cpus = cpus
        self.desired = format_cpulist(cpus)
        self.path = irqbalance_env_path(host)

    def _installed(self, host: Host) -> bool:
        return self.path.exists() or any(
            host.path(p).exists() for p in ("usr/sbin/irqbalance", "usr/bin/irqbalance")
        )

    def observe(self, host: Host) -> Observation:
        if not self._installed(host):
            return Observation("unsupported", None, "irqbalance is not installed")
        value = _env_value(read_text(self.path) or "", self.VAR)
        ok = value is not None and parse_cpulist(value) == self.cpus
        return Observation("ok" if ok else "change", value, str(self.path.relative_to(host.root)))

    def new_text(self, host: Host) -> str:
        old = read_text(self.path) or ""
        lines = [ln for ln in old.splitlines() if not ln.strip().startswith(f"{self.VAR}=")]
        lines.append(f"{self.VAR}={self.desired}")
        return "\n".join(lines) + "\n"

    def apply(self, ctx: Context) -> None:
        restart = None
        if ctx.host.root == Path("/") and ctx.runner.which("systemctl"):
            restart = ["systemctl", "try-restart", "irqbalance.service"]
        ctx.change_file(self.key, self.path, self.new_text(ctx.host), after=restart)
        if restart:
            ctx.runner.run(restart)


class CpufreqItem(Item):
    def __init__(self, policy_name: str, path: Path, attr: str, value: str) -> None:
        self.key = f"cpufreq:{policy_name}:{attr}"
        self.path = path / attr
        self.available = (
            path
            / {
                "scaling_governor": "scaling_available_governors",
                "energy_performance_preference": "energy_performance_available_preferences",
            }[attr]
        )
        self.desired = value

    def observe(self, host: Host) -> Observation:
        text = read_text(self.path)
        if text is None:
            return Observation("unsupported", None, "this cpufreq driver lacks it")
        offered = (read_text(self.available) or "").split()
        if offered and self.desired not in offered:
            return Observation("unsupported", text.strip(), f"driver offers {', '.join(offered)}")
        return self._cmp(text.strip(), text.strip() == self.desired)

    def apply(self, ctx: Context) -> None:
        ctx.change_attr(self.key, self.path, read_text(self.path) or "", self.desired + "\n")


class CpufreqAbsentItem(Item):
    def __init__(self, attr: str, value: str) -> None:
        self.key = f"cpufreq:{attr}"
        self.desired = value

    def observe(self, host: Host) -> Observation:
        return Observation("unsupported", None, "no cpufreq policies (a VM, or no driver)")

    def apply(self, ctx: Context) -> None:  # pragma: no cover - never in "change" state
        raise ItemError(f"{self.key}: nothing to apply")


class CmdlineItem(Item):
    """A kernel parameter: takes effect only at boot; ``persist`` configures the boot loader."""

    kind = "reboot"

    def __init__(self, name: str, value: str | None, boot: BootConfig | None) -> None:
        self.key = f"cmdline:{name}"
        self.name = name
        self.value = value
        self.desired = format_param(name, value)
        self.boot = boot

    def observe(self, host: Host) -> Observation:
        running = parse_cmdline(host.cmdline or "")
        current = format_param(self.name, running[self.name]) if self.name in running else None
        if self.name in running and running[self.name] == self.value:
            return Observation("ok", current)
        if self.boot is not None:
            configured = parse_cmdline(self.boot.cmdline)
            if self.name in configured and configured[self.name] == self.value:
                return Observation(
                    "pending-reboot",
                    current,
                    f"configured in {self.boot.path.relative_to(host.root)}",
                )
        return Observation("reboot", current, "run persist, then reboot")

    def apply(self, ctx: Context) -> None:  # pragma: no cover - apply skips reboot items
        raise ItemError(f"{self.key}: needs persist and a reboot")


def build_items(profile: Profile, host: Host) -> tuple[list[Item], dict[str, frozenset[int]]]:
    """Resolve ``profile`` on ``host`` into items, in apply order, and the named CPU sets.

    Every host-dependent check (CPUs present, NUMA nodes present, hugepages within memory)
    happens here, so a bad profile fails before anything is written.
    """
    sets = resolve_cpusets(profile, host)
    items: list[Item] = []

    def cpus(expr: str, where: str) -> frozenset[int]:
        return eval_cpuset(expr, host, sets, where, profile.name)

    items += _hugepage_items(profile, host)
    items += [ThpItem(field, value, host) for field, value in profile.thp]
    items += [SysctlItem(name, value, host) for name, value in profile.sysctl]

    if profile.cpufreq_governor or profile.cpufreq_epp:
        wanted = cpus(profile.cpufreq_cpus, "cpufreq.cpus")
        policies = [p for p in host.cpufreq_policies if p.cpus & wanted]
        for attr, value in (
            ("scaling_governor", profile.cpufreq_governor),
            ("energy_performance_preference", profile.cpufreq_epp),
        ):
            if value is None:
                continue
            if not policies:
                items.append(CpufreqAbsentItem(attr, value))
            items += [CpufreqItem(p.name, p.path, attr, value) for p in policies]

    if profile.irq_default_affinity:
        items.append(
            IrqDefaultAffinityItem(cpus(profile.irq_default_affinity, "irq.default_affinity"), host)
        )
    claimed: set[int] = set()
    for i, pin in enumerate(profile.irq_pins):
        target = cpus(pin.cpus, f"irq.pin[{i}].cpus")
        matched = _pin_irqs(pin, host)
        fresh = [irq for irq in matched if irq.number not in claimed]
        if not matched:
            items.append(PinNoMatchItem(pin.label, target, pin.required))
        for irq in fresh:
            claimed.add(irq.number)
            items.append(IrqAffinityItem(irq, target, f"pin {pin.label}"))
    if profile.irq_movable:
        target = cpus(profile.irq_movable, "irq.movable")
        for irq in host.irqs:
            if irq.number not in claimed:
                items.append(IrqAffinityItem(irq, target, "movable"))

    if profile.irqbalance_banned:
        items.append(IrqbalanceItem(cpus(profile.irqbalance_banned, "irqbalance.banned"), host))

    boot = boot_config(host)
    for name, value in profile.cmdline:
        if value is not None:
            value = expand_set_refs(value, host, sets, f"cmdline.{name}", profile.name)
        items.append(CmdlineItem(name, value, boot))
    return items, sets


def _pin_irqs(pin, host: Host) -> list[Irq]:
    if pin.match:
        return [irq for irq in host.irqs if irq.matches(pin.match)]
    bdf = pin.device or host.netdev_pci(pin.netdev or "")
    numbers = host.pci_irqs(bdf) if bdf else frozenset()
    return [irq for irq in host.irqs if irq.number in numbers]


def _hugepage_items(profile: Profile, host: Host) -> list[Item]:
    items: list[Item] = []
    per_node_kb: dict[int | None, int] = {}
    for pool in profile.hugepages:
        where = f"profile {profile.name}: hugepages.{pool.label}"
        counts: list[tuple[int | None, int]] = []
        if pool.total is not None:
            counts = [(None, pool.total)]
        elif pool.per_node is not None:
            nodes = list(host.numa_nodes) if host.has_numa_dirs else [None]
            counts = [(n, pool.per_node) for n in nodes]
        else:
            for node, n in pool.nodes:
                if node not in host.numa_nodes:
                    raise ProfileError(
                        f"{where}.nodes: NUMA node {node} does not exist on this host "
                        f"(nodes: {', '.join(map(str, host.numa_nodes))})"
                    )
                counts.append((node if host.has_numa_dirs else None, n))
        for node, n in counts:
            per_node_kb[node] = per_node_kb.get(node, 0) + n * pool.size_kb
            items.append(HugepagesItem(pool.size_kb, node, n, host))
    for node, kb in per_node_kb.items():
        mem = host.mem_total_kb if node is None else host.node_mem_total_kb(node)
        if mem is not None and kb > mem:
            where = "the machine" if node is None else f"NUMA node {node}"
            raise ProfileError(
                f"profile {profile.name}: hugepages ask for {kb // 1024} MiB on {where}, which "
                f"has only {mem // 1024} MiB of memory; lower the page counts in [hugepages]"
            )
    for pool in profile.hugepages:
        if pool.mount:
            items.append(MountItem(pool.mount, pool.size_kb, host))
    return items
