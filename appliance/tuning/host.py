"""What a host offers, read from /proc and /sys under an injectable root.

Every path is resolved under ``root`` (``Path("/")`` on a live machine, a copied capture in
tests), so the same code plans against this machine and against a 2-socket server's tree.
Reading never writes and never runs a program.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from appliance.tuning.cpulist import parse_cpulist

__all__ = ["Host", "Irq", "CpufreqPolicy", "Mount", "read_text"]

_CPU = "sys/devices/system/cpu"
_NODE = "sys/devices/system/node"
_HUGE = "sys/kernel/mm/hugepages"


def read_text(path: Path) -> str | None:
    """The file's text, or ``None`` when it does not exist (or cannot be read)."""
    try:
        return path.read_text()
    except (FileNotFoundError, NotADirectoryError, PermissionError, OSError):
        return None


def is_writable(path: Path) -> bool:
    """Whether the kernel lets anyone write ``path``: the owner-write bit of its mode.

    ``os.access`` is useless here because root may write any plain file; the kernel marks
    attributes it will refuse (managed IRQs' affinity, for example) by dropping the bit.
    """
    try:
        return bool(path.stat().st_mode & stat.S_IWUSR)
    except OSError:
        return False


@dataclass(frozen=True)
class Irq:
    """One interrupt line: its number, the names of its handlers, whether it can move."""

    number: int
    names: tuple[str, ...]
    movable: bool
    affinity_path: Path

    def matches(self, pattern: str) -> bool:
        """Whether any handler name matches the shell-style ``pattern``."""
        return any(fnmatch.fnmatchcase(name, pattern) for name in self.names)


@dataclass(frozen=True)
class CpufreqPolicy:
    """A cpufreq policy directory and the CPUs it governs."""

    name: str
    path: Path
    cpus: frozenset[int]


@dataclass(frozen=True)
class Mount:
    """One line of /proc/mounts."""

    source: str
    target: str
    fstype: str
    options: tuple[str, ...]


class Host:
    """Read-only view of a Linux host's tunables under ``root``."""

    def __init__(self, root: Path = Path("/")) -> None:
        self.root = Path(root)

    def path(self, rel: str | os.PathLike[str]) -> Path:
        """``rel`` (absolute or relative) resolved under the root."""
        return self.root / str(rel).lstrip("/")

    def read(self, rel: str) -> str | None:
        return read_text(self.path(rel))

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.root))

    @cached_property
    def _capture_readonly(self) -> frozenset[str]:
        """Files a capture (scripts/capture-host) recorded as read-only in ``readonly.txt``.

        Git keeps no file modes, so a checked-out capture lists them instead; a live root
        (``/``) never has this file and is judged by the real modes alone.
        """
        if self.root == Path("/"):
            return frozenset()
        text = read_text(self.root / "readonly.txt") or ""
        return frozenset(
            ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")
        )

    # ---- CPUs and NUMA --------------------------------------------------------------

    @cached_property
    def online_cpus(self) -> frozenset[int]:
        text = self.read(f"{_CPU}/online")
        if text is None:
            raise FileNotFoundError(
                f"{self.path(_CPU + '/online')} is missing: is {self.root} a Linux root "
                "(or a capture made by scripts/capture-host)?"
            )
        return parse_cpulist(text)

    @cached_property
    def isolated_cpus(self) -> frozenset[int]:
        return parse_cpulist(self.read(f"{_CPU}/isolated") or "")

    @cached_property
    def nr_cpu_ids(self) -> int:
        """Number of CPU ids the kernel sizes masks for (highest possible CPU + 1)."""
        possible = parse_cpulist(self.read(f"{_CPU}/possible") or "") or self.online_cpus
        return max(possible) + 1

    @cached_property
    def numa_nodes(self) -> dict[int, frozenset[int]]:
        """NUMA node -> its CPUs. A kernel without NUMA reports one node 0 with every CPU."""
        nodes: dict[int, frozenset[int]] = {}
        node_dir = self.path(_NODE)
        if node_dir.is_dir():
            for entry in node_dir.iterdir():
                if entry.name.startswith("node") and entry.name[4:].isdigit():
                    nodes[int(entry.name[4:])] = parse_cpulist(read_text(entry / "cpulist") or "")
        return dict(sorted(nodes.items())) or {0: self.online_cpus}

    @property
    def has_numa_dirs(self) -> bool:
        return self.path(f"{_NODE}/node0").is_dir()

    def node_mem_total_kb(self, node: int) -> int | None:
        """MemTotal of one node in kB (the whole machine's when there are no node dirs)."""
        if self.has_numa_dirs:
            text = self.read(f"{_NODE}/node{node}/meminfo")
            for line in (text or "").splitlines():
                # "Node 0 MemTotal:       4417740 kB"
                fields = line.split()
                if len(fields) >= 4 and fields[2] == "MemTotal:":
                    return int(fields[3])
            return None
        return self.mem_total_kb

    @cached_property
    def mem_total_kb(self) -> int | None:
        for line in (self.read("proc/meminfo") or "").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
        return None

    def pci_local_cpus(self, bdf: str) -> frozenset[int] | None:
        """CPUs local to PCI device ``bdf`` (``0000:3b:00.0``), ``None`` if there is no such device."""
        text = self.read(f"sys/bus/pci/devices/{bdf}/local_cpulist")
        return None if text is None else parse_cpulist(text)

    def netdev_pci(self, ifname: str) -> str | None:
        """PCI address of network interface ``ifname`` (via its ``device`` link or uevent)."""
        uevent = self.read(f"sys/class/net/{ifname}/device/uevent") or ""
        for line in uevent.splitlines():
            if line.startswith("PCI_SLOT_NAME="):
                return line.split("=", 1)[1].strip()
        link = self.path(f"sys/class/net/{ifname}/device")
        return link.resolve().name if link.exists() else None

    # ---- hugepages ------------------------------------------------------------------

    @cached_property
    def hugepage_sizes_kb(self) -> tuple[int, ...]:
        """Hugepage sizes the kernel offers, in kB (e.g. ``(2048, 1048576)``)."""
        sizes = []
        d = self.path(_HUGE)
        if d.is_dir():
            for entry in d.iterdir():
                if entry.name.startswith("hugepages-") and entry.name.endswith("kB"):
                    sizes.append(int(entry.name[len("hugepages-") : -2]))
        return tuple(sorted(sizes))

    def hugepages_path(self, size_kb: int, node: int | None) -> Path:
        """The ``nr_hugepages`` file for one size on one node (``node=None``: the global pool)."""
        if node is None:
            return self.path(f"{_HUGE}/hugepages-{size_kb}kB/nr_hugepages")
        return self.path(f"{_NODE}/node{node}/hugepages/hugepages-{size_kb}kB/nr_hugepages")

    # ---- IRQs -----------------------------------------------------------------------

    @cached_property
    def irqs(self) -> tuple[Irq, ...]:
        """Every numbered IRQ under /proc/irq with its handler names and movability."""
        names_from_interrupts = self._interrupt_names()
        out = []
        irq_dir = self.path("proc/irq")
        if not irq_dir.is_dir():
            return ()
        for entry in irq_dir.iterdir():
            if not entry.name.isdigit():
                continue
            number = int(entry.name)
            # Each registered handler ("action") is a subdirectory named after it.
            names = tuple(sorted(p.name for p in entry.iterdir() if p.is_dir()))
            if not names:
                names = names_from_interrupts.get(number, ())
            affinity = entry / "smp_affinity_list"
            movable = is_writable(affinity) and self._rel(affinity) not in self._capture_readonly
            out.append(Irq(number, names, movable, affinity))
        return tuple(sorted(out, key=lambda irq: irq.number))

    def _interrupt_names(self) -> dict[int, tuple[str, ...]]:
        """IRQ number -> handler names as the last column of /proc/interrupts shows them."""
        text = self.read("proc/interrupts") or ""
        lines = text.splitlines()
        if not lines:
            return {}
        ncpus = len(lines[0].split())
        names: dict[int, tuple[str, ...]] = {}
        for line in lines[1:]:
            head, _, rest = line.partition(":")
            if not head.strip().isdigit():
                continue
            fields = rest.split()
            # counts (one per CPU), chip name, hwirq + trigger, then "name1, name2"
            tail = fields[ncpus + 2 :]
            if tail:
                names[int(head)] = tuple(n.strip() for n in " ".join(tail).split(",") if n.strip())
        return names

    def pci_irqs(self, bdf: str) -> frozenset[int]:
        """IRQ numbers of PCI device ``bdf``'s MSI/MSI-X vectors (plus its legacy line)."""
        out: set[int] = set()
        msi = self.path(f"sys/bus/pci/devices/{bdf}/msi_irqs")
        if msi.is_dir():
            out.update(int(p.name) for p in msi.iterdir() if p.name.isdigit())
        if not out:
            legacy = self.read(f"sys/bus/pci/devices/{bdf}/irq")
            if legacy and legacy.strip().isdigit() and int(legacy) > 0:
                out.add(int(legacy))
        return frozenset(out)

    # ---- cpufreq, THP, cmdline, mounts, sysctls ---------------------------------------

    @cached_property
    def cpufreq_policies(self) -> tuple[CpufreqPolicy, ...]:
        d = self.path(f"{_CPU}/cpufreq")
        out = []
        if d.is_dir():
            for entry in d.iterdir():
                if entry.name.startswith("policy") and entry.name[6:].isdigit():
                    cpus = read_text(entry / "related_cpus") or read_text(entry / "affected_cpus")
                    # related_cpus is space-separated ("0 1"), not a cpulist
                    ids = frozenset(int(c) for c in (cpus or entry.name[6:]).split())
                    out.append(CpufreqPolicy(entry.name, entry, ids))
        return tuple(sorted(out, key=lambda p: int(p.name[6:])))

    @property
    def cmdline(self) -> str | None:
        text = self.read("proc/cmdline")
        return None if text is None else text.strip()

    @property
    def mounts(self) -> tuple[Mount, ...]:
        out = []
        for line in (self.read("proc/mounts") or "").splitlines():
            fields = line.split()
            if len(fields) >= 4:
                # /proc/mounts escapes spaces in paths as \040
                target = fields[1].replace("\\040", " ")
                out.append(Mount(fields[0], target, fields[2], tuple(fields[3].split(","))))
        return tuple(out)

    def sysctl_path(self, name: str) -> Path:
        """``vm.swappiness`` -> ``<root>/proc/sys/vm/swappiness``."""
        return self.path("proc/sys/" + name.replace(".", "/"))

    @cached_property
    def boot_id(self) -> str | None:
        text = self.read("proc/sys/kernel/random/boot_id")
        return None if text is None else text.strip()
