"""rt.topology against fake sysfs trees (a 2-socket SMT server, this VM's layout) and the real /sys."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.commands import topology as topology_verb
from rt.topology import (
    TopologyError,
    format_cpulist,
    gpu_numa_nodes,
    net_interface_numa_node,
    network_numa_nodes,
    normalize_pci_address,
    parse_cpulist,
    pci_device_numa_node,
    read_topology,
)


class Link(str):
    """A symlink target in a fake tree (relative, like the kernel's own links)."""


def build_tree(root: Path, files: dict[str, str | Link]) -> Path:
    """Write ``files`` (path under root -> content, or Link(target)) and return ``root``."""
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Link):
            path.symlink_to(content)
        else:
            path.write_text(content)
    return root


def _meminfo(node: int, total_kb: int, free_kb: int) -> str:
    return (
        f"Node {node} MemTotal:       {total_kb} kB\n"
        f"Node {node} MemFree:        {free_kb} kB\n"
        f"Node {node} MemUsed:        {total_kb - free_kb} kB\n"
        f"Node {node} Active(anon):   1536 kB\n"
        f"Node {node} HugePages_Total:     0\n"
    )


def two_socket_server() -> dict[str, str | Link]:
    """2 sockets x 8 cores x 2 threads: node 0 = CPUs 0-7,16-23, node 1 = 8-15,24-31.

    The GPU (0000:af:00.0) and the frame grabber's NIC (ens2f0 at 0000:d8:00.0) sit on
    node 1; the management NIC (eno1 at 0000:3b:00.0) on node 0. Provisioning isolated
    node 1's cores 10-15 and their siblings 26-31 (isolcpus) and made 12-15,28-31 tickless.
    """
    files: dict[str, str | Link] = {
        "sys/devices/system/cpu/online": "0-31\n",
        "sys/devices/system/cpu/possible": "0-31\n",
        "sys/devices/system/cpu/isolated": "10-15,26-31\n",
        "sys/devices/system/cpu/nohz_full": "12-15,28-31\n",
        "sys/devices/system/node/online": "0-1\n",
        "sys/devices/system/node/node0/cpulist": "0-7,16-23\n",
        "sys/devices/system/node/node1/cpulist": "8-15,24-31\n",
        "sys/devices/system/node/node0/meminfo": _meminfo(0, 196_608_000, 150_000_000),
        "sys/devices/system/node/node1/meminfo": _meminfo(1, 196_608_000, 190_000_000),
        "proc/meminfo": "MemTotal:       393216000 kB\nMemFree:        340000000 kB\n",
    }
    for cpu in range(32):
        core = cpu % 16
        files[f"sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list"] = f"{core},{core + 16}\n"
        files[f"sys/devices/system/cpu/cpu{cpu}/topology/core_id"] = f"{core % 8}\n"
        files[f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id"] = f"{core // 8}\n"
    pci = {
        # address: (class, numa_node, host bridge)
        "0000:00:00.0": ("0x060000", "0", "pci0000:00"),
        "0000:3b:00.0": ("0x020000", "0", "pci0000:3a"),
        "0000:af:00.0": ("0x030200", "1", "pci0000:ae"),
        "0000:d8:00.0": ("0x020000", "1", "pci0000:d7"),
    }
    for addr, (cls, node, bridge) in pci.items():
        dev = f"sys/devices/{bridge}/{addr}"
        files[f"{dev}/class"] = cls + "\n"
        files[f"{dev}/numa_node"] = node + "\n"
        files[f"sys/bus/pci/devices/{addr}"] = Link(f"../../../devices/{bridge}/{addr}")
    for name, addr, bridge in (("eno1", "0000:3b:00.0", "pci0000:3a"), ("ens2f0", "0000:d8:00.0", "pci0000:d7")):
        files[f"sys/devices/{bridge}/{addr}/net/{name}/address"] = "00:11:22:33:44:55\n"
        files[f"sys/devices/{bridge}/{addr}/net/{name}/device"] = Link("../../../" + addr)
        files[f"sys/class/net/{name}"] = Link(f"../../devices/{bridge}/{addr}/net/{name}")
    files["sys/devices/virtual/net/lo/address"] = "00:00:00:00:00:00\n"
    files["sys/class/net/lo"] = Link("../../devices/virtual/net/lo")
    return files


def this_vm() -> dict[str, str | Link]:
    """The layout of the 2-CPU VM this project is developed on (read from its /sys).

    One node, no SMT, nothing isolated (``isolated`` is an empty line, ``nohz_full``
    absent), every PCI ``numa_node`` -1, and eth0 a virtio device *under* PCI function
    0000:00:03.0, so its ``device`` has no ``numa_node`` of its own.
    """
    files: dict[str, str | Link] = {
        "sys/devices/system/cpu/online": "0-1\n",
        "sys/devices/system/cpu/possible": "0-1\n",
        "sys/devices/system/cpu/isolated": "\n",
        "sys/devices/system/cpu/cpu0/topology/thread_siblings_list": "0\n",
        "sys/devices/system/cpu/cpu1/topology/thread_siblings_list": "1\n",
        "sys/devices/system/node/online": "0\n",
        "sys/devices/system/node/has_cpu": "0\n",
        "sys/devices/system/node/node0/cpulist": "0-1\n",
        "sys/devices/system/node/node0/meminfo": _meminfo(0, 4_417_740, 3_936_196),
    }
    for addr, cls in (
        ("0000:00:00.0", "0x060000"),
        ("0000:00:01.0", "0xffff00"),
        ("0000:00:02.0", "0x018000"),
        ("0000:00:03.0", "0x020000"),
    ):
        files[f"sys/devices/pci0000:00/{addr}/class"] = cls + "\n"
        files[f"sys/devices/pci0000:00/{addr}/numa_node"] = "-1\n"
        files[f"sys/bus/pci/devices/{addr}"] = Link(f"../../../devices/pci0000:00/{addr}")
    files["sys/devices/pci0000:00/0000:00:03.0/virtio2/vendor"] = "0x1af4\n"
    files["sys/devices/pci0000:00/0000:00:03.0/virtio2/net/eth0/device"] = Link("../../../virtio2")
    files["sys/class/net/eth0"] = Link("../../devices/pci0000:00/0000:00:03.0/virtio2/net/eth0")
    files["sys/devices/virtual/net/lo/address"] = "00:00:00:00:00:00\n"
    files["sys/class/net/lo"] = Link("../../devices/virtual/net/lo")
    return files


# ---------------------------------------------------------------------------- cpulists


@pytest.mark.parametrize(
    ("text", "cpus"),
    [
        ("0-3,8", {0, 1, 2, 3, 8}),
        ("0", {0}),
        ("", set()),
        ("\n", set()),
        ("(null)\n", set()),
        ("0-1\n", {0, 1}),
        ("2,4-5,7", {2, 4, 5, 7}),
        ("0-15:2/4", {0, 1, 4, 5, 8, 9, 12, 13}),
    ],
)
def test_parse_cpulist(text, cpus):
    assert parse_cpulist(text) == frozenset(cpus)


@pytest.mark.parametrize("text", ["a", "0-", "-3", "3-1", "0,,1", "1-2-3", "0-7:2", "0-7:2/0", "0 1"])
def test_parse_cpulist_rejects_malformed(text):
    with pytest.raises(ValueError, match="cpulist"):
        parse_cpulist(text)


def test_format_cpulist():
    assert format_cpulist({0, 1, 2, 3, 8}) == "0-3,8"
    assert format_cpulist([5]) == "5"
    assert format_cpulist({0, 1}) == "0-1"
    assert format_cpulist(set()) == ""
    with pytest.raises(ValueError, match="non-negative"):
        format_cpulist({-1})


@given(st.frozensets(st.integers(min_value=0, max_value=300), max_size=64))
def test_cpulist_round_trip(cpus):
    assert parse_cpulist(format_cpulist(cpus)) == cpus


# ---------------------------------------------------------------------------- fake trees


def test_two_socket_server(tmp_path):
    root = build_tree(tmp_path, two_socket_server())
    topo = read_topology(root)

    assert topo.online_cpus == frozenset(range(32))
    assert [n.id for n in topo.nodes] == [0, 1]
    assert topo.node(0).cpus == parse_cpulist("0-7,16-23")
    assert topo.node(1).cpus == parse_cpulist("8-15,24-31")
    assert topo.node(1).memory_total == 196_608_000 * 1024
    assert topo.node(1).memory_free == 190_000_000 * 1024
    assert topo.node_of_cpu(9) == 1 and topo.node_of_cpu(17) == 0

    assert topo.isolcpus == parse_cpulist("10-15,26-31")
    assert topo.nohz_full == parse_cpulist("12-15,28-31")
    assert topo.isolated_cpus == parse_cpulist("10-15,26-31")
    assert topo.housekeeping_cpus == parse_cpulist("0-9,16-25")

    assert topo.smt
    assert len(topo.cores) == 16
    assert topo.siblings_of(3) == frozenset({3, 19})
    assert topo.siblings_of(27) == frozenset({11, 27})

    # The GPU and the frame grabber's NIC are on node 1; the management NIC on node 0.
    assert topo.pci_numa_node("0000:af:00.0") == 1
    assert pci_device_numa_node("af:00.0", root=root) == 1  # lspci without -D
    assert topo.net_numa_node("ens2f0") == 1
    assert topo.net_numa_node("eno1") == 0
    assert topo.net_numa_node("lo") is None  # virtual: no device
    assert gpu_numa_nodes(root=root) == {"0000:af:00.0": 1}
    assert network_numa_nodes(root=root) == {"eno1": 0, "ens2f0": 1}

    with pytest.raises(KeyError, match="no NUMA node 2 .*nodes: 0, 1"):
        topo.node(2)


def test_this_vm_layout(tmp_path):
    root = build_tree(tmp_path, this_vm())
    topo = read_topology(root)
    assert topo.online_cpus == {0, 1}
    assert len(topo.nodes) == 1 and topo.nodes[0].cpus == {0, 1}
    assert topo.nodes[0].memory_total == 4_417_740 * 1024
    assert topo.isolated_cpus == frozenset() and topo.nohz_full == frozenset()
    assert topo.housekeeping_cpus == {0, 1}
    assert not topo.smt and topo.cores == (frozenset({0}), frozenset({1}))
    assert topo.pci_numa_node("0000:00:03.0") is None  # numa_node -1: unknown
    # eth0's device (virtio2) has no numa_node; the PCI function above it answers (-1).
    assert net_interface_numa_node("eth0", root=root) is None
    assert gpu_numa_nodes(root=root) == {}
    assert network_numa_nodes(root=root) == {"eth0": None}


def test_virtio_nic_takes_node_of_parent_pci_function(tmp_path):
    files = this_vm()
    files["sys/devices/pci0000:00/0000:00:03.0/numa_node"] = "0\n"
    root = build_tree(tmp_path, files)
    assert net_interface_numa_node("eth0", root=root) == 0


def test_nic_in_a_tree_copied_without_links(tmp_path):
    # `cp -r` of sysfs turns the device link into a plain dir; its uevent names the function.
    files = two_socket_server()
    del files["sys/class/net/ens2f0"]
    files["sys/class/net/ens2f0/device/uevent"] = "DRIVER=mlx5_core\nPCI_SLOT_NAME=0000:d8:00.0\n"
    root = build_tree(tmp_path, files)
    assert net_interface_numa_node("ens2f0", root=root) == 1


HOSTS = Path(__file__).resolve().parents[1] / "data" / "hosts"


def test_sysconfig_host_tree_dual_socket_gpu():
    """The shared fake host of tests/data/hosts (facts from its README)."""
    root = HOSTS / "dual-socket-gpu"
    if not (root / "sys/devices/system/cpu/online").exists():
        pytest.skip(f"{root} is not there")
    topo = read_topology(root)
    assert topo.online_cpus == frozenset(range(64))
    assert topo.node(0).cpus == parse_cpulist("0-15,32-47")
    assert topo.node(1).cpus == parse_cpulist("16-31,48-63")
    assert topo.smt and topo.siblings_of(5) == {5, 37}
    assert topo.pci_numa_node("0000:ca:00.0") == 1  # the A100
    assert topo.pci_numa_node("0000:b1:00.0") == 1  # the ConnectX-6 Dx
    assert gpu_numa_nodes(root=root) == {"0000:ca:00.0": 1}
    nets = network_numa_nodes(root=root)
    assert nets and set(nets.values()) == {1}, nets


def test_sysconfig_host_tree_vm():
    root = HOSTS / "vm-2core"
    if not (root / "sys/devices/system/cpu/online").exists():
        pytest.skip(f"{root} is not there")
    topo = read_topology(root)
    assert topo.online_cpus == {0, 1} and len(topo.nodes) == 1 and not topo.smt


def test_machine_without_node_dirs_is_one_node(tmp_path):
    root = build_tree(
        tmp_path,
        {
            "sys/devices/system/cpu/online": "0-3\n",
            "proc/meminfo": "MemTotal:       8000000 kB\nMemFree:        1000000 kB\nHugePages_Total:       0\n",
        },
    )
    topo = read_topology(root)
    assert len(topo.nodes) == 1
    assert topo.nodes[0].id == 0 and topo.nodes[0].cpus == {0, 1, 2, 3}
    assert topo.nodes[0].memory_total == 8_000_000 * 1024
    assert topo.nodes[0].memory_free == 1_000_000 * 1024
    # No topology dirs: every CPU is its own core.
    assert topo.cores == tuple(frozenset({c}) for c in range(4))


def test_memory_only_node(tmp_path):
    files = two_socket_server()
    files["sys/devices/system/node/node2/cpulist"] = "\n"  # CXL / HBM memory without CPUs
    files["sys/devices/system/node/node2/meminfo"] = _meminfo(2, 1000, 1000)
    topo = read_topology(build_tree(tmp_path, files))
    assert [n.id for n in topo.nodes] == [0, 1, 2]
    assert topo.node(2).cpus == frozenset() and topo.node(2).memory_total == 1000 * 1024


def test_real_sys_agrees_with_the_kernel():
    """This machine's /sys: the CPUs we may run on are online and on some node."""
    topo = read_topology("/")
    affinity = frozenset(os.sched_getaffinity(0))
    assert affinity <= topo.online_cpus
    assert len(topo.online_cpus) <= os.cpu_count()
    every_node_cpu = frozenset().union(*(n.cpus for n in topo.nodes))
    assert topo.online_cpus <= every_node_cpu
    assert frozenset().union(*topo.cores) == topo.online_cpus
    assert topo.housekeeping_cpus  # a host always keeps a CPU for the OS


# ---------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("rel", "content", "message"),
    [
        ("sys/devices/system/cpu/online", "0-x\n", r"cpu/online: malformed cpulist '0-x'"),
        ("sys/devices/system/cpu/online", "\n", r"cpu/online: lists no online CPU"),
        ("sys/devices/system/cpu/isolated", "10-8\n", r"cpu/isolated: malformed cpulist '10-8'"),
        ("sys/devices/system/node/node1/cpulist", "eight\n", r"node1/cpulist: malformed cpulist 'eight'"),
        (
            "sys/devices/system/node/node0/meminfo",
            "Node 0 MemTotal: lots\n",
            r"node0/meminfo: malformed meminfo line 'Node 0 MemTotal: lots'",
        ),
        (
            "sys/devices/system/cpu/cpu3/topology/thread_siblings_list",
            "4,20\n",
            r"cpu3/topology/thread_siblings_list: lists '4,20', which lacks cpu3",
        ),
    ],
)
def test_malformed_files_name_file_and_content(tmp_path, rel, content, message):
    files = two_socket_server()
    files[rel] = content
    root = build_tree(tmp_path, files)
    with pytest.raises(TopologyError, match=message):
        read_topology(root)


def test_malformed_numa_node(tmp_path):
    files = two_socket_server()
    files["sys/devices/pci0000:ae/0000:af:00.0/numa_node"] = "one\n"
    root = build_tree(tmp_path, files)
    with pytest.raises(TopologyError, match=r"0000:af:00.0/numa_node: expected an integer, found 'one'"):
        pci_device_numa_node("0000:af:00.0", root=root)
    files["sys/devices/pci0000:ae/0000:af:00.0/numa_node"] = "-7\n"
    build_tree(tmp_path / "b", files)
    with pytest.raises(TopologyError, match="NUMA node -7 is not valid"):
        pci_device_numa_node("0000:af:00.0", root=tmp_path / "b")


def test_missing_root_and_devices(tmp_path):
    with pytest.raises(TopologyError, match="does not look like a Linux sysfs root"):
        read_topology(tmp_path)
    root = build_tree(tmp_path, two_socket_server())
    with pytest.raises(TopologyError, match=r"no PCI device 0000:01:00.0 .*lspci -D"):
        pci_device_numa_node("0000:01:00.0", root=root)
    with pytest.raises(TopologyError, match=r"no network interface 'eth9' .*interfaces: eno1, ens2f0, lo"):
        net_interface_numa_node("eth9", root=root)
    with pytest.raises(ValueError, match="not a PCI address"):
        pci_device_numa_node("gpu0", root=root)


def test_normalize_pci_address():
    assert normalize_pci_address("AF:00.0") == "0000:af:00.0"
    assert normalize_pci_address("0001:3b:00.1") == "0001:3b:00.1"
    with pytest.raises(ValueError, match="0000:3b:00.0"):
        normalize_pci_address("3b:00")


# ---------------------------------------------------------------------------- the verb


def _verb(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="appliance topology")
    topology_verb.configure(parser)
    return topology_verb.run(parser.parse_args(argv))


def test_verb_json(tmp_path, capsys):
    root = build_tree(tmp_path, two_socket_server())
    assert _verb(["--root", str(root), "--json", "--pci", "d8:00.0"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["online_cpus"] == "0-31"
    assert doc["isolated_cpus"] == "10-15,26-31"
    assert doc["housekeeping_cpus"] == "0-9,16-25"
    assert [n["cpus"] for n in doc["nodes"]] == ["0-7,16-23", "8-15,24-31"]
    assert doc["gpus"] == {"0000:af:00.0": 1}
    assert doc["network_interfaces"] == {"eno1": 0, "ens2f0": 1}
    assert doc["pci"] == {"d8:00.0": 1}
    assert doc["smt"] is True


def test_verb_text(tmp_path, capsys):
    root = build_tree(tmp_path, two_socket_server())
    assert _verb(["--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "node 1: CPUs 8-15,24-31" in out
    assert "isolated CPUs:      10-15,26-31 (12)" in out
    assert "0000:af:00.0: node 1" in out
    assert "ens2f0: node 1" in out


def test_verb_reports_errors(tmp_path, capsys):
    assert _verb(["--root", str(tmp_path)]) == 1
    assert "does not look like a Linux sysfs root" in capsys.readouterr().err


def test_verb_on_this_host(capsys):
    assert _verb(["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert parse_cpulist(doc["online_cpus"]) == read_topology("/").online_cpus
