"""PCIe links of the GPU and the NICs, and the path between them, read from sysfs.

Frames reach the GPU over PCIe, and the camera's frames reach the host over the frame
grabber's NIC. A link that trained below its maximum (a x16 card running at x8 because of
a riser or a slot, a Gen4 card at Gen3 speed) halves the ceiling of the host-to-device copy
without any error anywhere; a GPU on the other socket from the NIC sends every frame across
the socket interconnect. Both are silent, so ``appliance topology`` reports them.

The link is read from the PCI function's sysfs attributes, as ``lspci -vv`` shows them in
``LnkCap``/``LnkSta``: ``current_link_speed``, ``current_link_width``, ``max_link_speed``,
``max_link_width``. Speeds are strings such as ``"16.0 GT/s PCIe"`` (kernels from 4.19 on;
older ones write ``"16 GT/s"``), or ``"Unknown"`` for a device that has no link (a root
complex integrated endpoint). The GPU-to-NIC path comes from ``nvidia-smi topo -m`` where
the driver is there (:func:`parse_nvidia_topo` parses its matrix; running it is the
caller's business): its legend names the PCIe hierarchy between two devices.

All reads take an injectable ``root``, as :mod:`rt.topology` does, so tests point them at a
fake sysfs tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rt.topology import TopologyError, normalize_pci_address

__all__ = [
    "PATH_MEANING",
    "PcieLink",
    "TopoMatrix",
    "link_warnings",
    "net_interface_pci_address",
    "parse_nvidia_topo",
    "pcie_link",
]

_PCI_DIR = Path("sys/bus/pci/devices")
_SPEED = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*GT/s")

# Transfer rate per lane (GT/s) -> PCIe generation (PCI-SIG base specifications 1.0 to 6.0).
_GENERATION = {2.5: 1, 5.0: 2, 8.0: 3, 16.0: 4, 32.0: 5, 64.0: 6}

#: what each entry of ``nvidia-smi topo -m`` means, from its own legend
PATH_MEANING = {
    "X": "the device itself",
    "PIX": "one PCIe bridge (the same switch)",
    "PXB": "several PCIe bridges, without crossing a host bridge",
    "PHB": "a PCIe host bridge (the same CPU)",
    "NODE": "PCIe host bridges within one NUMA node",
    "SYS": "the SMP interconnect between NUMA nodes (another socket)",
}


@dataclass(frozen=True)
class PcieLink:
    """One PCI function's link: what it runs at against what both ends can do.

    Speeds are GT/s per lane (None when sysfs says ``Unknown`` or has no such file); a
    width is the lane count. ``degraded`` is true when the link runs below its maximum in
    speed or in width."""

    address: str
    current_speed: float | None
    current_width: int | None
    max_speed: float | None
    max_width: int | None

    @property
    def generation(self) -> int | None:
        """The generation the link runs at now (from ``current_speed``)."""
        return _GENERATION.get(self.current_speed) if self.current_speed is not None else None

    @property
    def max_generation(self) -> int | None:
        return _GENERATION.get(self.max_speed) if self.max_speed is not None else None

    @property
    def degraded(self) -> bool:
        slow = None not in (self.current_speed, self.max_speed) and self.current_speed < self.max_speed
        narrow = None not in (self.current_width, self.max_width) and self.current_width < self.max_width
        return bool(slow or narrow)

    def describe(self) -> str:
        """``"Gen4 x16 (max Gen4 x16)"``; ``"no link"`` for a function without one."""
        if self.current_speed is None and self.current_width is None:
            return "no link"

        def one(speed: float | None, width: int | None) -> str:
            gen = _GENERATION.get(speed) if speed is not None else None
            rate = f"Gen{gen}" if gen is not None else (f"{speed:g} GT/s" if speed is not None else "?")
            return f"{rate} x{width if width is not None else '?'}"

        return f"{one(self.current_speed, self.current_width)} (max {one(self.max_speed, self.max_width)})"

    def to_dict(self) -> dict:
        return {
            "address": self.address,
            "current_speed_gt_s": self.current_speed,
            "current_width": self.current_width,
            "max_speed_gt_s": self.max_speed,
            "max_width": self.max_width,
            "generation": self.generation,
            "max_generation": self.max_generation,
            "degraded": self.degraded,
        }


def _speed(path: Path) -> float | None:
    if not path.exists():
        return None
    text = path.read_text().strip()
    if text.lower().startswith("unknown") or not text:
        return None
    m = _SPEED.match(text)
    if m is None:
        raise TopologyError(f"{path}: {text!r} is not a PCIe link speed (expected e.g. '16.0 GT/s PCIe')")
    return float(m.group(1))


def _width(path: Path) -> int | None:
    if not path.exists():
        return None
    text = path.read_text().strip()
    # A function without a link reads 0 (or, on some kernels, 255 for "unknown").
    if not text.isdigit():
        raise TopologyError(f"{path}: {text!r} is not a PCIe link width (expected a lane count, e.g. 16)")
    value = int(text)
    return None if value in (0, 255) else value


def pcie_link(address: str, *, root: Path | str = Path("/")) -> PcieLink:
    """The link of the PCI function at ``address`` (``0000:ca:00.0`` or ``ca:00.0``).

    Raises :class:`rt.topology.TopologyError` when there is no such device or a file holds
    something the kernel does not write there."""
    root = Path(root)
    addr = normalize_pci_address(address)
    device = root / _PCI_DIR / addr
    if not device.exists():
        raise TopologyError(f"no PCI device {addr} under {root / _PCI_DIR} (`lspci -D` lists the addresses)")
    return PcieLink(
        address=addr,
        current_speed=_speed(device / "current_link_speed"),
        current_width=_width(device / "current_link_width"),
        max_speed=_speed(device / "max_link_speed"),
        max_width=_width(device / "max_link_width"),
    )


def net_interface_pci_address(interface: str, *, root: Path | str = Path("/")) -> str | None:
    """The PCI function behind network interface ``interface``, or None for a virtual one
    (``lo``, a bridge) or a device that is not a PCI function (virtio under its transport
    answers with the transport's function, as its ``uevent`` names it)."""
    root = Path(root)
    device = root / "sys/class/net" / interface / "device"
    if not device.exists():
        return None
    uevent = device / "uevent"
    if uevent.exists():
        for line in uevent.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == "PCI_SLOT_NAME" and value.strip():
                return normalize_pci_address(value.strip())
    name = Path(device.resolve()).name
    try:
        return normalize_pci_address(name)
    except ValueError:
        return None


@dataclass(frozen=True)
class TopoMatrix:
    """``nvidia-smi topo -m``: device names in order, and the path between each pair."""

    devices: tuple[str, ...]
    paths: dict[tuple[str, str], str]
    nic_names: dict[str, str]  # "NIC0" -> "mlx5_0", from the legend at the end

    def path(self, a: str, b: str) -> str | None:
        return self.paths.get((a, b))


def parse_nvidia_topo(text: str) -> TopoMatrix:
    """Parse the matrix printed by ``nvidia-smi topo -m``.

    The header row names the columns (``GPU0 NIC0 NIC1 CPU Affinity NUMA Affinity ...``);
    each device row starts with its name, then one entry per device column (``X``, ``PIX``,
    ``PXB``, ``PHB``, ``NODE``, ``SYS`` or ``NV#``), then the affinity columns, which are
    ignored. The ``NIC Legend`` at the end maps ``NIC0`` to the interface's RDMA name.
    Raises ``ValueError`` for text that has no matrix."""
    # nvidia-smi colours the header with ANSI escapes on a terminal; strip them.
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).rstrip() for line in text.splitlines()]
    header_i = next((i for i, line in enumerate(lines) if re.match(r"^\s+GPU0\b", line)), None)
    if header_i is None:
        raise ValueError("no `nvidia-smi topo -m` matrix found (expected a header row starting with GPU0)")
    header = lines[header_i].split()
    devices = []
    for name in header:
        if re.fullmatch(r"(GPU|NIC|mlx5_)\d+", name):
            devices.append(name)
        else:
            break
    paths: dict[tuple[str, str], str] = {}
    for line in lines[header_i + 1:]:
        fields = line.split()
        if not fields or fields[0] not in devices:
            if fields and fields[0].lower().startswith("legend"):
                break
            continue
        row = fields[0]
        for col, value in zip(devices, fields[1:1 + len(devices)]):
            paths[(row, col)] = value
    nic_names = {}
    for line in lines:
        m = re.match(r"^\s*(NIC\d+):\s*(\S+)\s*$", line)
        if m:
            nic_names[m.group(1)] = m.group(2)
    return TopoMatrix(devices=tuple(devices), paths=paths, nic_names=nic_names)


def link_warnings(
    gpus: dict[str, int | None],
    links: dict[str, PcieLink],
    nic_node: int | None = None,
    nic: str | None = None,
) -> list[str]:
    """What an operator should look at, one line each (pure; the caller reads sysfs).

    ``gpus`` maps a GPU's PCI address to its NUMA node, ``links`` maps addresses (GPUs and
    NICs) to their links, and ``nic_node`` is the NUMA node of the camera's NIC ``nic``
    when one is configured."""
    warnings = []
    for addr, link in sorted(links.items()):
        if link.degraded:
            kind = "GPU" if addr in gpus else "device"
            note = (
                " (GPUs train their link down at idle to save power: check again under load,"
                " e.g. during `appliance bench kernels`)"
                if kind == "GPU" else ""
            )
            warnings.append(f"{kind} {addr}: PCIe link runs at {link.describe()}, below its maximum{note}")
    if nic_node is not None:
        for addr, node in sorted(gpus.items()):
            if node is not None and node != nic_node:
                warnings.append(
                    f"GPU {addr} is on NUMA node {node} but the camera's NIC {nic or ''} is on node "
                    f"{nic_node}: every frame crosses the socket interconnect (put the GPU and the "
                    "frame grabber on one socket, or pin the kernel stage to the GPU's node)"
                )
    return warnings
