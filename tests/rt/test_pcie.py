"""PCIe links and the GPU-NIC path (rt.pcie) on the fake sysfs trees of tests/data/hosts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from rt.pcie import PcieLink, link_warnings, net_interface_pci_address, parse_nvidia_topo, pcie_link
from rt.topology import TopologyError, gpu_numa_nodes

HOSTS = Path(__file__).resolve().parents[1] / "data" / "hosts"
HOST = HOSTS / "dual-socket-gpu"
TOPO_M = HOSTS / "dual-socket-gpu-extra" / "nvidia-smi-topo-m.txt"
GPU, NIC0 = "0000:ca:00.0", "0000:b1:00.0"


@pytest.fixture
def host(tmp_path) -> Path:
    """A private copy of the dual-socket host, to retrain its links."""
    root = tmp_path / "host"
    shutil.copytree(HOST / "sys/bus/pci", root / "sys/bus/pci")
    shutil.copytree(HOST / "sys/class/net", root / "sys/class/net")
    return root


def _retrain(root: Path, addr: str, speed: str | None = None, width: str | None = None) -> None:
    dev = root / "sys/bus/pci/devices" / addr
    if speed is not None:
        (dev / "current_link_speed").write_text(speed + "\n")
    if width is not None:
        (dev / "current_link_width").write_text(width + "\n")


def test_links_of_the_dual_socket_host_are_gen4_x16_at_their_maximum():
    gpu = pcie_link("ca:00.0", root=HOST)  # lspci's short form works too
    assert gpu == PcieLink(GPU, 16.0, 16, 16.0, 16)
    assert (gpu.generation, gpu.max_generation, gpu.degraded) == (4, 4, False)
    assert gpu.describe() == "Gen4 x16 (max Gen4 x16)"
    nvme = pcie_link("0000:01:00.0", root=HOST)
    assert (nvme.current_width, nvme.max_width) == (4, 4)
    assert net_interface_pci_address("ens6f0np0", root=HOST) == NIC0
    assert link_warnings(gpu_numa_nodes(root=HOST), {GPU: gpu}, nic_node=1, nic="ens6f0np0") == []


def test_a_link_trained_narrow_or_slow_is_degraded_and_warned(host):
    _retrain(host, NIC0, width="8")
    _retrain(host, GPU, speed="8.0 GT/s PCIe")
    nic, gpu = pcie_link(NIC0, root=host), pcie_link(GPU, root=host)
    assert nic.degraded and nic.describe() == "Gen4 x8 (max Gen4 x16)"
    assert gpu.degraded and gpu.generation == 3
    warnings = link_warnings({GPU: 1}, {GPU: gpu, NIC0: nic})
    assert len(warnings) == 2
    assert any(w.startswith(f"device {NIC0}: PCIe link runs at Gen4 x8") for w in warnings)
    # a GPU trains its link down at idle: the warning says to look again under load
    assert any(w.startswith(f"GPU {GPU}") and "under load" in w for w in warnings)


def test_a_gpu_on_another_socket_from_the_camera_nic_is_warned():
    warnings = link_warnings({GPU: 0}, {}, nic_node=1, nic="ens6f0np0")
    assert warnings == [
        f"GPU {GPU} is on NUMA node 0 but the camera's NIC ens6f0np0 is on node 1: every frame crosses the "
        "socket interconnect (put the GPU and the frame grabber on one socket, or pin the kernel stage to the "
        "GPU's node)"
    ]
    assert link_warnings({GPU: None}, {}, nic_node=1) == []  # the kernel does not know: no guess


def test_old_kernel_speed_format_and_functions_without_a_link(host):
    _retrain(host, GPU, speed="16 GT/s")  # kernels before 4.19 write no ".0" and no "PCIe"
    assert pcie_link(GPU, root=host).current_speed == 16.0
    _retrain(host, GPU, speed="Unknown", width="0")
    link = pcie_link(GPU, root=host)
    assert (link.current_speed, link.current_width, link.degraded) == (None, None, False)
    (host / "sys/bus/pci/devices" / GPU / "max_link_speed").write_text("Unknown\n")
    (host / "sys/bus/pci/devices" / GPU / "max_link_width").write_text("255\n")
    assert pcie_link(GPU, root=host).describe() == "no link"


def test_malformed_link_files_and_missing_devices_are_named(host):
    _retrain(host, GPU, speed="fast")
    with pytest.raises(TopologyError, match="current_link_speed: 'fast' is not a PCIe link speed"):
        pcie_link(GPU, root=host)
    with pytest.raises(TopologyError, match="no PCI device 0000:99:00.0"):
        pcie_link("99:00.0", root=host)
    with pytest.raises(ValueError, match="not a PCI address"):
        pcie_link("gpu0", root=host)


def test_nvidia_smi_topo_matrix_is_parsed_with_its_nic_legend():
    m = parse_nvidia_topo(TOPO_M.read_text())
    assert m.devices == ("GPU0", "NIC0", "NIC1")
    assert m.path("GPU0", "NIC0") == "NODE" and m.path("NIC0", "NIC1") == "PIX" and m.path("GPU0", "GPU0") == "X"
    assert m.nic_names == {"NIC0": "mlx5_0", "NIC1": "mlx5_1"}
    with pytest.raises(ValueError, match="no `nvidia-smi topo -m` matrix"):
        parse_nvidia_topo("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver")


def test_a_cross_socket_matrix(tmp_path):
    text = "\tGPU0\tGPU1\tNIC0\tCPU Affinity\n GPU0\t X \tNV18\tSYS\t0-15\nGPU1\tNV18\t X \tPIX\t16-31\nNIC0\tSYS\tPIX\t X \n"
    m = parse_nvidia_topo(text)
    assert m.path("GPU0", "NIC0") == "SYS" and m.path("GPU1", "NIC0") == "PIX" and m.path("GPU0", "GPU1") == "NV18"


def test_topology_command_reports_links_paths_and_warnings(tmp_path, capsys):
    from appliance.cli import main

    args = ["topology", "--root", str(HOST), "--camera-nic", "ens6f0np0", "--nvidia-topo", str(TOPO_M)]
    assert main(args + ["--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pcie_links"][GPU]["generation"] == 4 and doc["pcie_links"][NIC0]["max_width"] == 16
    assert doc["gpu_nic_paths"] == {"GPU0-NIC0 (mlx5_0)": "NODE", "GPU0-NIC1 (mlx5_1)": "NODE"}
    assert doc["warnings"] == []
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"{GPU}: node 1, PCIe Gen4 x16 (max Gen4 x16)" in out
    assert "GPU0-NIC0 (mlx5_0): NODE = PCIe host bridges within one NUMA node" in out

    degraded = tmp_path / "degraded"
    shutil.copytree(HOST, degraded, symlinks=True)
    _retrain(degraded, NIC0, width="8")
    assert main(["topology", "--root", str(degraded), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["pcie_links"][NIC0]["degraded"] is True
    assert doc["warnings"] == [f"device {NIC0}: PCIe link runs at Gen4 x8 (max Gen4 x16), below its maximum"]
