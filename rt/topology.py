"""Host topology read from sysfs: CPUs, NUMA nodes, isolated CPUs, SMT siblings, device nodes.

The supervisor's CPU plan needs to know which CPUs exist, which NUMA node each belongs
to, which CPUs provisioning took away from the general scheduler (``isolcpus=``,
``nohz_full=``), which CPUs share a physical core, and on which node the GPU and the
frame grabber's NIC sit. All of it is read from sysfs under an injectable ``root`` so that
tests (and ``appliance topology --root``) can point it at a fake tree.

The Linux cpulist format (``"0-3,8"``) is parsed and formatted here for every module.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

__all__ = [
    "NumaNode",
    "Topology",
    "TopologyError",
    "format_cpulist",
    "gpu_numa_nodes",
    "net_interface_numa_node",
    "network_numa_nodes",
    "normalize_pci_address",
    "parse_cpulist",
    "pci_device_numa_node",
    "read_topology",
]

_CPU_DIR = Path("sys/devices/system/cpu")
_NODE_DIR = Path("sys/devices/system/node")
_PCI_DIR = Path("sys/bus/pci/devices")
_NET_DIR = Path("sys/class/net")

# A PCI address as sysfs names it: domain:bus:device.function, e.g. 0000:3b:00.0.
# Callers may leave out the domain (lspci without -D prints 3b:00.0).
_PCI_ADDRESS = re.compile(r"^(?:([0-9a-fA-F]{4,8}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])$")
_NODE_NAME = re.compile(r"^node(\d+)$")
_MEMINFO_LINE = re.compile(r"^(?:Node\s+\d+\s+)?(\w+(?:\(\w+\))?):\s+(\d+)(\s+kB)?$")


class TopologyError(ValueError):
    """A sysfs file is missing or does not hold what the kernel writes there."""


# ---------------------------------------------------------------------------- cpulists


def parse_cpulist(text: str) -> frozenset[int]:
    """Parse a Linux cpulist (``"0-3,8"``, ``"0-15:2/4"``, ``""``) into a set of CPU numbers.

    This is the format of sysfs (``cpulist``, ``online``, ``isolated``) and of kernel
    parameters (``isolcpus=``); ``a-b:used/group`` takes the first ``used`` CPUs of every
    ``group`` CPUs in ``a-b``. Raises ``ValueError`` naming the bad part.
    """
    text = text.strip()
    cpus: set[int] = set()
    if not text or text == "(null)":  # nohz_full reads "(null)" when not configured
        return frozenset()
    for part in text.split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"empty entry in cpulist {text!r}")
        stride_used = stride_group = None
        if ":" in part:
            part, _, stride = part.partition(":")
            used, slash, group = stride.partition("/")
            if not slash or not used.isdigit() or not group.isdigit() or int(group) == 0:
                raise ValueError(
                    f"bad stride {stride!r} in cpulist {text!r} (expected a-b:used/group, e.g. 0-7:2/4)"
                )
            stride_used, stride_group = int(used), int(group)
        first, dash, last = part.partition("-")
        if not first.isdigit() or (dash and not last.isdigit()):
            raise ValueError(f"bad entry {part!r} in cpulist {text!r} (expected N or N-M, e.g. 0-3,8)")
        lo, hi = int(first), int(last) if dash else int(first)
        if hi < lo:
            raise ValueError(f"descending range {part!r} in cpulist {text!r}")
        if stride_group is None:
            cpus.update(range(lo, hi + 1))
        else:
            cpus.update(c for c in range(lo, hi + 1) if (c - lo) % stride_group < stride_used)
    return frozenset(cpus)


def format_cpulist(cpus: Iterable[int]) -> str:
    """Format CPU numbers as a Linux cpulist: ``{0, 1, 2, 3, 8}`` -> ``"0-3,8"``; empty -> ``""``."""
    numbers = sorted(set(cpus))
    for c in numbers:
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise ValueError(f"CPU numbers must be non-negative integers, got {c!r}")
    parts: list[str] = []
    i = 0
    while i < len(numbers):
        j = i
        while j + 1 < len(numbers) and numbers[j + 1] == numbers[j] + 1:
            j += 1
        parts.append(str(numbers[i]) if i == j else f"{numbers[i]}-{numbers[j]}")
        i = j + 1
    return ",".join(parts)


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class NumaNode:
    """One NUMA node: its CPUs (possibly none, for a memory-only node) and its memory."""

    id: int
    cpus: frozenset[int]
    #: bytes, from the node's meminfo (or /proc/meminfo on a machine without node dirs);
    #: None where the kernel does not report it
    memory_total: int | None = None
    memory_free: int | None = None


@dataclass(frozen=True)
class Topology:
    """What sysfs says about this host's CPUs and NUMA nodes, read once by :func:`read_topology`."""

    #: the filesystem root it was read from ("/" on a real host)
    root: Path
    online_cpus: frozenset[int]
    #: NUMA nodes by ascending id; a machine without node dirs is one node 0 with every CPU
    nodes: tuple[NumaNode, ...]
    #: CPUs out of the general scheduler's reach: ``isolcpus`` plus ``nohz_full``
    isolated_cpus: frozenset[int]
    #: CPUs from /sys/devices/system/cpu/isolated (``isolcpus=`` domain isolation)
    isolcpus: frozenset[int]
    #: CPUs from /sys/devices/system/cpu/nohz_full (tickless)
    nohz_full: frozenset[int]
    #: one entry per physical core: the online CPUs that are SMT siblings of each other
    cores: tuple[frozenset[int], ...] = field(default=())

    # -- lookups -----------------------------------------------------------------

    @property
    def housekeeping_cpus(self) -> frozenset[int]:
        """Online CPUs that are not isolated: where the OS, IRQs and non-critical work go."""
        return self.online_cpus - self.isolated_cpus

    @property
    def smt(self) -> bool:
        """True when at least one physical core runs more than one online hardware thread."""
        return any(len(core) > 1 for core in self.cores)

    def node(self, node_id: int) -> NumaNode:
        """The node with this id; ``KeyError`` naming the nodes that exist otherwise."""
        for n in self.nodes:
            if n.id == node_id:
                return n
        raise KeyError(
            f"no NUMA node {node_id} on this host (nodes: {', '.join(str(n.id) for n in self.nodes)})"
        )

    def node_of_cpu(self, cpu: int) -> int | None:
        """The NUMA node that holds ``cpu``, or None when no node lists it."""
        for n in self.nodes:
            if cpu in n.cpus:
                return n.id
        return None

    def siblings_of(self, cpu: int) -> frozenset[int]:
        """The online CPUs on the same physical core as ``cpu`` (itself included)."""
        for core in self.cores:
            if cpu in core:
                return core
        if cpu in self.online_cpus:
            return frozenset({cpu})
        raise KeyError(f"CPU {cpu} is not online (online: {format_cpulist(self.online_cpus)})")

    def pci_numa_node(self, address: str) -> int | None:
        """NUMA node of a PCI device on this host: see :func:`pci_device_numa_node`."""
        return pci_device_numa_node(address, root=self.root)

    def net_numa_node(self, interface: str) -> int | None:
        """NUMA node of a network interface on this host: see :func:`net_interface_numa_node`."""
        return net_interface_numa_node(interface, root=self.root)

    def to_dict(self) -> dict:
        """A JSON-ready description (cpulists as strings, memory in bytes)."""
        return {
            "root": str(self.root),
            "online_cpus": format_cpulist(self.online_cpus),
            "housekeeping_cpus": format_cpulist(self.housekeeping_cpus),
            "isolated_cpus": format_cpulist(self.isolated_cpus),
            "isolcpus": format_cpulist(self.isolcpus),
            "nohz_full": format_cpulist(self.nohz_full),
            "smt": self.smt,
            "cores": [format_cpulist(c) for c in self.cores],
            "nodes": [
                {
                    "id": n.id,
                    "cpus": format_cpulist(n.cpus),
                    "memory_total": n.memory_total,
                    "memory_free": n.memory_free,
                }
                for n in self.nodes
            ],
        }


# ---------------------------------------------------------------------------- reading


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise TopologyError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _read_cpulist(path: Path, *, missing_ok: bool = False) -> frozenset[int]:
    if missing_ok and not path.exists():
        return frozenset()
    text = _read(path)
    try:
        return parse_cpulist(text)
    except ValueError as exc:
        raise TopologyError(f"{path}: malformed cpulist {text.strip()!r}: {exc}") from None


def _read_int(path: Path) -> int:
    text = _read(path)
    try:
        return int(text.strip())
    except ValueError:
        raise TopologyError(f"{path}: expected an integer, found {text.strip()!r}") from None


def _read_meminfo(path: Path) -> tuple[int | None, int | None]:
    """(MemTotal, MemFree) in bytes from a node meminfo or /proc/meminfo."""
    values: dict[str, int] = {}
    for line in _read(path).splitlines():
        if not line.strip():
            continue
        m = _MEMINFO_LINE.match(line.strip())
        if m is None:
            raise TopologyError(f"{path}: malformed meminfo line {line.strip()!r}")
        values[m.group(1)] = int(m.group(2)) * (1024 if m.group(3) else 1)
    return values.get("MemTotal"), values.get("MemFree")


def _read_nodes(root: Path, online: frozenset[int]) -> tuple[NumaNode, ...]:
    node_dir = root / _NODE_DIR
    ids: list[int] = []
    if node_dir.is_dir():
        for entry in node_dir.iterdir():
            m = _NODE_NAME.match(entry.name)
            if m and entry.is_dir():
                ids.append(int(m.group(1)))
    if not ids:
        # A kernel without CONFIG_NUMA (or a container that hides the node dirs): one node.
        meminfo = root / "proc/meminfo"
        total, free = _read_meminfo(meminfo) if meminfo.exists() else (None, None)
        return (NumaNode(0, online, total, free),)
    nodes = []
    for i in sorted(ids):
        d = node_dir / f"node{i}"
        cpus = _read_cpulist(d / "cpulist")
        total, free = _read_meminfo(d / "meminfo") if (d / "meminfo").exists() else (None, None)
        nodes.append(NumaNode(i, cpus, total, free))
    return tuple(nodes)


def _read_cores(root: Path, online: frozenset[int]) -> tuple[frozenset[int], ...]:
    cores: set[frozenset[int]] = set()
    for cpu in online:
        path = root / _CPU_DIR / f"cpu{cpu}" / "topology" / "thread_siblings_list"
        if path.exists():
            siblings = _read_cpulist(path) & online
            if cpu not in siblings:
                raise TopologyError(f"{path}: lists {format_cpulist(siblings)!r}, which lacks cpu{cpu} itself")
        else:
            siblings = frozenset({cpu})  # no topology dir: report each CPU as its own core
        cores.add(siblings)
    return tuple(sorted(cores, key=min))


def read_topology(root: Path | str = Path("/")) -> Topology:
    """Read CPUs, NUMA nodes, isolated CPUs and SMT siblings from sysfs under ``root``.

    Raises :class:`TopologyError` naming the file and its content when a file is missing
    or malformed.
    """
    root = Path(root)
    online_path = root / _CPU_DIR / "online"
    if not online_path.exists():
        raise TopologyError(
            f"{online_path} does not exist: {root} does not look like a Linux sysfs root "
            "(pass the directory that holds sys/devices/system/cpu)"
        )
    online = _read_cpulist(online_path)
    if not online:
        raise TopologyError(f"{online_path}: lists no online CPU")
    isolcpus = _read_cpulist(root / _CPU_DIR / "isolated", missing_ok=True)
    nohz_full = _read_cpulist(root / _CPU_DIR / "nohz_full", missing_ok=True)
    return Topology(
        root=root,
        online_cpus=online,
        nodes=_read_nodes(root, online),
        isolated_cpus=isolcpus | nohz_full,
        isolcpus=isolcpus,
        nohz_full=nohz_full,
        cores=_read_cores(root, online),
    )


# ---------------------------------------------------------------------------- devices


def _node_value(path: Path) -> int | None:
    value = _read_int(path)
    if value < -1:
        raise TopologyError(f"{path}: NUMA node {value} is not valid (-1 or a node id)")
    return None if value == -1 else value


def normalize_pci_address(address: str) -> str:
    """``"3b:00.0"`` or ``"0000:3B:00.0"`` -> ``"0000:3b:00.0"``; ``ValueError`` otherwise."""
    m = _PCI_ADDRESS.match(address.strip())
    if m is None:
        raise ValueError(
            f"{address!r} is not a PCI address (expected domain:bus:device.function "
            "such as 0000:3b:00.0, as `lspci -D` prints it)"
        )
    domain, bus, dev, fn = m.groups()
    return f"{int(domain or '0', 16):04x}:{bus.lower()}:{dev.lower()}.{fn}"


def pci_device_numa_node(address: str, *, root: Path | str = Path("/")) -> int | None:
    """NUMA node of the PCI device at ``address`` (e.g. ``"0000:3b:00.0"``).

    Returns None when the kernel does not know (``numa_node`` is -1, as on most
    single-socket machines and VMs). Raises :class:`TopologyError` when there is no
    such device.
    """
    root = Path(root)
    addr = normalize_pci_address(address)
    device = root / _PCI_DIR / addr
    if not device.exists():
        raise TopologyError(f"no PCI device {addr} under {root / _PCI_DIR} (`lspci -D` lists the addresses)")
    path = device / "numa_node"
    if not path.exists():
        return None  # kernels without CONFIG_NUMA do not create the file
    return _node_value(path)


def _uevent_pci_slot(path: Path) -> str | None:
    if not path.exists():
        return None
    for line in _read(path).splitlines():
        key, _, value = line.partition("=")
        if key == "PCI_SLOT_NAME" and value.strip():
            return value.strip()
    return None


def net_interface_numa_node(interface: str, *, root: Path | str = Path("/")) -> int | None:
    """NUMA node of network interface ``interface`` (e.g. ``"eth0"``), or None if unknown.

    A virtual interface (``lo``, bridges, ...) has no device and gives None. When the
    device is not itself a PCI function (a virtio device under its PCI transport, say),
    the nearest parent device that has a ``numa_node`` answers, or the PCI function its
    ``uevent`` names (``PCI_SLOT_NAME``).
    """
    root = Path(root)
    if not interface or "/" in interface or interface in (".", ".."):
        raise ValueError(f"{interface!r} is not a network interface name")
    iface = root / _NET_DIR / interface
    if not iface.exists():
        available = sorted(p.name for p in (root / _NET_DIR).iterdir()) if (root / _NET_DIR).is_dir() else []
        raise TopologyError(
            f"no network interface {interface!r} under {root / _NET_DIR} "
            f"(interfaces: {', '.join(available) or 'none'})"
        )
    device = iface / "device"
    if not device.exists():
        return None
    # Walk from the resolved device towards /sys/devices, staying inside root.
    resolved = Path(os.path.realpath(device))
    stop = Path(os.path.realpath(root / "sys/devices"))
    current = resolved
    while True:
        candidate = current / "numa_node"
        if candidate.exists():
            return _node_value(candidate)
        # A tree copied without its links has a plain device dir; its uevent still names
        # the PCI function (PCI_SLOT_NAME), whose numa_node answers.
        slot = _uevent_pci_slot(current / "uevent")
        if slot is not None and (root / _PCI_DIR / slot).exists():
            return pci_device_numa_node(slot, root=root)
        if current == stop or stop not in current.parents:
            return None
        current = current.parent


# PCI class codes of display controllers: VGA (0x0300) and 3D (0x0302, most datacenter GPUs).
_GPU_CLASSES = ("0x0300", "0x0302")


def gpu_numa_nodes(*, root: Path | str = Path("/")) -> dict[str, int | None]:
    """PCI address -> NUMA node (None if unknown) of every display/3D controller under ``root``."""
    root = Path(root)
    pci = root / _PCI_DIR
    result: dict[str, int | None] = {}
    if not pci.is_dir():
        return result
    for device in sorted(pci.iterdir()):
        cls = device / "class"
        if cls.exists() and _read(cls).strip().lower().startswith(_GPU_CLASSES):
            result[device.name] = pci_device_numa_node(device.name, root=root)
    return result


def network_numa_nodes(*, root: Path | str = Path("/")) -> dict[str, int | None]:
    """Interface name -> NUMA node (None if unknown) of every interface backed by a device."""
    root = Path(root)
    net = root / _NET_DIR
    result: dict[str, int | None] = {}
    if not net.is_dir():
        return result
    for iface in sorted(net.iterdir()):
        if (iface / "device").exists():
            result[iface.name] = net_interface_numa_node(iface.name, root=root)
    return result
