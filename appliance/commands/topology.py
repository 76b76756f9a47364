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
every GPU (PCI display/3D controller) and network interface.

examples:
  appliance topology                     this host
  appliance topology --json              the same as JSON, for scripts
  appliance topology --root /tmp/host    a sysfs tree copied from another machine
  appliance topology --pci 0000:3b:00.0  also the NUMA node of one PCI device
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

    try:
        topo = read_topology(args.root)
        gpus = gpu_numa_nodes(root=args.root)
        nets = network_numa_nodes(root=args.root)
        pci = {addr: pci_device_numa_node(addr, root=args.root) for addr in args.pci}
    except (TopologyError, ValueError) as exc:
        print(f"appliance topology: {exc}", file=sys.stderr)
        return 1

    if args.json:
        doc = topo.to_dict()
        doc["gpus"] = gpus
        doc["network_interfaces"] = nets
        if pci:
            doc["pci"] = pci
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
        lines.append(f"  {addr}: {_node_text(node)}")
    lines.append("network interfaces: " + ("none with a device" if not nets else ""))
    for name, node in nets.items():
        lines.append(f"  {name}: {_node_text(node)}")
    for addr, node in pci.items():
        lines.append(f"PCI {addr}: {_node_text(node)}")
    print("\n".join(line.rstrip() for line in lines))
    return 0
