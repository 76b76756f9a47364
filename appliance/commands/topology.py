"""``appliance topology``: what sysfs says about CPUs, NUMA nodes, isolated CPUs and devices."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "show NUMA nodes, CPUs, isolated CPUs, SMT siblings and device NUMA nodes of this host"
DESCRIPTION = """\
Print the host topology the supervisor's CPU plan is computed from, read from sysfs:
online CPUs, NUMA nodes with their CPUs and memory, CPUs isolated by provisioning
(isolcpus= and nohz_full=), housekeeping CPUs, SMT sibling groups, and the NUMA node of
every GPU (PCI display/3D controller) and network interface; the PCIe link of each GPU and
NIC (generation and width, current against maximum, as lspci's LnkSta/LnkCap) and, where
`nvidia-smi` is there, the PCIe path between each GPU and each NIC (`nvidia-smi topo -m`).
It warns when a link trained below its maximum (a x16 card at x8 halves the copy ceiling,
silently) or when the GPU sits on another socket from the camera's NIC.

examples:
  appliance topology                     this host
  appliance topology --json              the same as JSON, for scripts
  appliance topology --root /tmp/host    a sysfs tree copied from another machine
  appliance topology --pci 0000:3b:00.0  also the NUMA node of one PCI device
  appliance topology --camera-nic ens6f0np0   warn if a GPU is on another socket from it
  appliance topology --nvidia-topo FILE  read a saved `nvidia-smi topo -m` instead of running it
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        default="/",
        metavar="DIR",
        help="filesystem root that holds sys/ (default /); for trees copied from another host",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--pci",
        action="append",
        default=[],
        metavar="ADDR",
        help="also report the NUMA node of this PCI device (repeatable)",
    )
    parser.add_argument(
        "--camera-nic",
        default="",
        metavar="IFACE",
        help="the camera's network interface (cpu.camera_nic): warn when a GPU is on another NUMA node",
    )
    parser.add_argument(
        "--nvidia-topo",
        default=None,
        metavar="FILE",
        help="a saved `nvidia-smi topo -m` output to read (default: run nvidia-smi when it is on PATH "
             "and --root is /)",
    )


def _nvidia_topo(args: argparse.Namespace) -> str | None:
    """The text of `nvidia-smi topo -m`: from --nvidia-topo, or by running it for this host."""
    import shutil
    import subprocess

    if args.nvidia_topo:
        with open(args.nvidia_topo) as f:
            return f.read()
    if str(args.root) != "/" or shutil.which("nvidia-smi") is None:
        return None
    try:
        done = subprocess.run(["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _node_text(node: int | None) -> str:
    return "unknown" if node is None else f"node {node}"


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 30):.1f} GiB"


def run(args: argparse.Namespace) -> int:
    from rt.topology import (
        TopologyError,
        format_cpulist,
        gpu_numa_nodes,
        network_numa_nodes,
        pci_device_numa_node,
        read_topology,
    )

    from rt.pcie import PATH_MEANING, link_warnings, net_interface_pci_address, parse_nvidia_topo, pcie_link

    try:
        topo = read_topology(args.root)
        gpus = gpu_numa_nodes(root=args.root)
        nets = network_numa_nodes(root=args.root)
        pci = {addr: pci_device_numa_node(addr, root=args.root) for addr in args.pci}
        nic_addrs = {name: net_interface_pci_address(name, root=args.root) for name in nets}
        links = {addr: pcie_link(addr, root=args.root) for addr in gpus}
        links.update({addr: pcie_link(addr, root=args.root) for addr in nic_addrs.values() if addr is not None})
        nic_node = None
        if args.camera_nic:
            from rt.topology import net_interface_numa_node

            nic_node = net_interface_numa_node(args.camera_nic, root=args.root)
        warnings = link_warnings(gpus, links, nic_node=nic_node, nic=args.camera_nic or None)
        topo_text = _nvidia_topo(args)
        matrix = parse_nvidia_topo(topo_text) if topo_text else None
    except (TopologyError, ValueError, OSError) as exc:
        print(f"appliance topology: {exc}", file=sys.stderr)
        return 1
    gpu_nic_paths = {}
    if matrix is not None:
        for a in matrix.devices:
            for b in matrix.devices:
                if a.startswith("GPU") and b.startswith("NIC"):
                    code = matrix.path(a, b) or "?"
                    name = f"{b} ({matrix.nic_names[b]})" if b in matrix.nic_names else b
                    gpu_nic_paths[f"{a}-{name}"] = code
                    if code == "SYS":
                        warnings.append(f"{a} and {name} are connected across sockets ({PATH_MEANING['SYS']})")

    if args.json:
        doc = topo.to_dict()
        doc["gpus"] = gpus
        doc["network_interfaces"] = nets
        if pci:
            doc["pci"] = pci
        doc["pcie_links"] = {addr: link.to_dict() for addr, link in links.items()}
        doc["gpu_nic_paths"] = gpu_nic_paths
        doc["warnings"] = warnings
        print(json.dumps(doc, indent=2))
        return 0

    def cpus(s: frozenset[int]) -> str:
        return f"{format_cpulist(s)} ({len(s)})" if s else "none"

    lines = [
        f"root:               {topo.root}",
        f"online CPUs:        {cpus(topo.online_cpus)}",
        f"housekeeping CPUs:  {cpus(topo.housekeeping_cpus)}",
        f"isolated CPUs:      {cpus(topo.isolated_cpus)}"
        f"  [isolcpus: {format_cpulist(topo.isolcpus) or 'none'},"
        f" nohz_full: {format_cpulist(topo.nohz_full) or 'none'}]",
        f"SMT:                {'yes' if topo.smt else 'no'} ({len(topo.cores)} cores)",
        f"NUMA nodes:         {len(topo.nodes)}",
    ]
    for node in topo.nodes:
        lines.append(
            f"  node {node.id}: CPUs {format_cpulist(node.cpus) or 'none'}, "
            f"memory {_gib(node.memory_total)} total, {_gib(node.memory_free)} free"
        )
    if topo.smt:
        lines.append("SMT sibling groups: " + " ".join(format_cpulist(c) for c in topo.cores))
    lines.append("GPUs:               " + ("none found" if not gpus else ""))
    for addr, node in gpus.items():
        lines.append(f"  {addr}: {_node_text(node)}, PCIe {links[addr].describe()}")
    lines.append("network interfaces: " + ("none with a device" if not nets else ""))
    for name, node in nets.items():
        addr = nic_addrs.get(name)
        link = f", PCIe {links[addr].describe()} at {addr}" if addr in links else ""
        lines.append(f"  {name}: {_node_text(node)}{link}")
    for addr, node in pci.items():
        lines.append(f"PCI {addr}: {_node_text(node)}")
    if gpu_nic_paths:
        lines.append("GPU-NIC paths (nvidia-smi topo -m):")
        for pair, code in gpu_nic_paths.items():
            lines.append(f"  {pair}: {code} = {PATH_MEANING.get(code, 'NVLink' if code.startswith('NV') else code)}")
    for warning in warnings:
        lines.append(f"warning: {warning}")
    print("\n".join(line.rstrip() for line in lines))
    return 0
