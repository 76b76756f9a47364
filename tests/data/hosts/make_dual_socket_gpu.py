#!/usr/bin/env python3
"""Rebuild tests/data/hosts/dual-socket-gpu: a RECONSTRUCTED (not captured) 2-socket server.

No such machine is reachable from CI, so this tree is written from the sysfs/procfs layouts
of real hosts of this class (2 x 16-core Ice Lake-SP with SMT, RHEL 9.4, kernel 5.14.0-427):

- 64 CPUs; node0 = 0-15,32-47 and node1 = 16-31,48-63 (Intel's SMT sibling numbering)
- 192 GiB per node; 2 MiB and 1 GiB hugepage pools per node, none reserved;
  /dev/hugepages mounted by systemd (dev-hugepages.mount), as on RHEL
- intel_pstate cpufreq, one policy per CPU, governor powersave, EPP balance_performance
- an NVIDIA A100 (0000:ca:00.0) and a dual-port ConnectX-6 Dx (mlx5, 0000:b1:00.0/.1),
  both on NUMA node 1; an NVMe SSD on node 0 whose I/O queue IRQs are kernel-managed
  (read-only affinity, listed in readonly.txt)
- /proc/interrupts with legacy IO-APIC lines, PCIe PME/AER, NVMe, 2 x 33 mlx5 vectors, nvidia
- BLS boot entries, /etc/default/grub and /etc/sysconfig/irqbalance as RHEL installs them

Run `python3 tests/data/hosts/make_dual_socket_gpu.py` to regenerate (deterministic).
"""

from __future__ import annotations

import shutil
from pathlib import Path

DEST = Path(__file__).resolve().parent / "dual-socket-gpu"
NCPU = 64
NODES = {0: list(range(0, 16)) + list(range(32, 48)), 1: list(range(16, 32)) + list(range(48, 64))}
KERNEL = "5.14.0-427.13.1.el9_4.x86_64"
MACHINE_ID = "6a3f0c2e9b7d4e18a5c1f0d2b3e4a596"
GPU, NIC0, NIC1, NVME = "0000:ca:00.0", "0000:b1:00.0", "0000:b1:00.1", "0000:01:00.0"
NODE_MEM_KB = 197_934_236

files: dict[str, str] = {}
readonly: list[str] = []


def put(rel: str, text: str, ro: bool = False) -> None:
    files[rel] = text
    if ro:
        readonly.append(rel)


def cpulist(cpus) -> str:
    cpus = sorted(cpus)
    out, i = [], 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def mask(cpus) -> str:
    v = 0
    for c in cpus:
        v |= 1 << c
    h = format(v, "016x")
    return f"{h[:8]},{h[8:]}"


ALL = range(NCPU)

# ---- CPUs, topology, cpufreq -------------------------------------------------------------
cpu = "sys/devices/system/cpu"
for f, v in (
    ("online", "0-63"),
    ("possible", "0-63"),
    ("present", "0-63"),
    ("offline", ""),
    ("isolated", ""),
    ("kernel_max", "8191"),
    ("nohz_full", "(null)"),
    ("smt/control", "on"),
    ("smt/active", "1"),
):
    put(f"{cpu}/{f}", v + "\n")
for c in ALL:
    node = 0 if c in NODES[0] else 1
    core = c % 16
    sib = [core + 32 * 0 + 16 * node, core + 32 + 16 * node]
    put(f"{cpu}/cpu{c}/topology/core_id", f"{core}\n")
    put(f"{cpu}/cpu{c}/topology/physical_package_id", f"{node}\n")
    put(f"{cpu}/cpu{c}/topology/die_id", "0\n")
    put(f"{cpu}/cpu{c}/topology/thread_siblings_list", cpulist(sib) + "\n")
    put(f"{cpu}/cpu{c}/topology/core_cpus_list", cpulist(sib) + "\n")
    put(f"{cpu}/cpu{c}/topology/core_siblings_list", cpulist(NODES[node]) + "\n")
    put(f"{cpu}/cpu{c}/topology/package_cpus_list", cpulist(NODES[node]) + "\n")
    if c:
        put(f"{cpu}/cpu{c}/online", "1\n")
    p = f"{cpu}/cpufreq/policy{c}"
    put(f"{p}/scaling_driver", "intel_pstate\n", ro=True)
    put(f"{p}/scaling_governor", "powersave\n")
    put(f"{p}/scaling_available_governors", "performance powersave\n", ro=True)
    put(f"{p}/energy_performance_preference", "balance_performance\n")
    put(
        f"{p}/energy_performance_available_preferences",
        "default performance balance_performance balance_power power \n",
        ro=True,
    )
    put(f"{p}/related_cpus", f"{c}\n", ro=True)
    put(f"{p}/affected_cpus", f"{c}\n", ro=True)
    put(f"{p}/cpuinfo_min_freq", "800000\n", ro=True)
    put(f"{p}/cpuinfo_max_freq", "3600000\n", ro=True)

# ---- NUMA nodes, memory, hugepages -------------------------------------------------------
node = "sys/devices/system/node"
for f in ("online", "possible", "has_cpu", "has_memory", "has_normal_memory"):
    put(f"{node}/{f}", "0-1\n")
SIZES = (2048, 1048576)
for n, cpus in NODES.items():
    put(f"{node}/node{n}/cpulist", cpulist(cpus) + "\n")
    put(f"{node}/node{n}/cpumap", mask(cpus) + "\n")
    put(f"{node}/node{n}/distance", "10 20\n" if n == 0 else "20 10\n")
    free = NODE_MEM_KB - (3_221_504 if n == 0 else 1_807_104)
    put(
        f"{node}/node{n}/meminfo",
        "".join(
            f"Node {n} {k:<16}{v:>11} kB\n"
            for k, v in (
                ("MemTotal:", NODE_MEM_KB),
                ("MemFree:", free),
                ("MemUsed:", NODE_MEM_KB - free),
            )
        ),
    )
    for s in SIZES:
        h = f"{node}/node{n}/hugepages/hugepages-{s}kB"
        put(f"{h}/nr_hugepages", "0\n")
        put(f"{h}/free_hugepages", "0\n", ro=True)
        put(f"{h}/surplus_hugepages", "0\n", ro=True)
for s in SIZES:
    h = f"sys/kernel/mm/hugepages/hugepages-{s}kB"
    put(f"{h}/nr_hugepages", "0\n")
    put(f"{h}/nr_overcommit_hugepages", "0\n")
    for f in ("free_hugepages", "resv_hugepages", "surplus_hugepages"):
        put(f"{h}/{f}", "0\n", ro=True)
put("sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never\n")
put("sys/kernel/mm/transparent_hugepage/defrag", "always defer defer+madvise [madvise] never\n")
total = 2 * NODE_MEM_KB
put(
    "proc/meminfo",
    "".join(
        f"{k:<16}{v:>8} kB\n" if k != "HugePages_Total:" else f"{k:<16}{v:>8}\n"
        for k, v in (
            ("MemTotal:", total),
            ("MemFree:", total - 5_028_608),
            ("MemAvailable:", total - 3_900_000),
            ("HugePages_Total:", 0),
            ("Hugepagesize:", 2048),
        )
    ),
)

# ---- PCI devices and network interfaces --------------------------------------------------
pci = "sys/bus/pci/devices"
DEVICES = {  # bdf: (vendor, device, class, node)
    NVME: ("0x144d", "0xa80a", "0x010802", 0),
    NIC0: ("0x15b3", "0x101d", "0x020000", 1),
    NIC1: ("0x15b3", "0x101d", "0x020000", 1),
    GPU: ("0x10de", "0x20f1", "0x030200", 1),
}
# PCIe links: the A100 and the ConnectX-6 Dx are Gen4 x16 cards, the NVMe SSD Gen4 x4.
LINKS = {NVME: ("16.0", 4), NIC0: ("16.0", 16), NIC1: ("16.0", 16), GPU: ("16.0", 16)}
for bdf, (vendor, device, cls, n) in DEVICES.items():
    put(f"{pci}/{bdf}/vendor", vendor + "\n")
    put(f"{pci}/{bdf}/device", device + "\n")
    put(f"{pci}/{bdf}/class", cls + "\n")
    put(f"{pci}/{bdf}/numa_node", f"{n}\n")
    put(f"{pci}/{bdf}/local_cpulist", cpulist(NODES[n]) + "\n")
    put(f"{pci}/{bdf}/local_cpus", mask(NODES[n]) + "\n")
    # PCIe link, as the kernel (>= 4.19) writes it: every device trained at its maximum.
    speed, width = LINKS[bdf]
    put(f"{pci}/{bdf}/current_link_speed", f"{speed} GT/s PCIe\n")
    put(f"{pci}/{bdf}/max_link_speed", f"{speed} GT/s PCIe\n")
    put(f"{pci}/{bdf}/current_link_width", f"{width}\n")
    put(f"{pci}/{bdf}/max_link_width", f"{width}\n")
for ifname, bdf in (("ens6f0np0", NIC0), ("ens6f1np1", NIC1)):
    put(
        f"sys/class/net/{ifname}/device/uevent",
        f"DRIVER=mlx5_core\nPCI_CLASS=20000\nPCI_ID=15B3:101D\nPCI_SUBSYS_ID=15B3:0016\n"
        f"PCI_SLOT_NAME={bdf}\nMODALIAS=pci:v000015B3d0000101Dsv000015B3sd00000016bc02sc00i00\n",
    )

# ---- IRQs ---------------------------------------------------------------------------------
# (number, chip, hwirq, names, affinity cpus, managed, device)
irqs: list[tuple[int, str, str, str, list[int], bool, str | None]] = [
    (0, "IR-IO-APIC", "2-edge", "timer", list(ALL), False, None),
    (8, "IR-IO-APIC", "8-edge", "rtc0", list(ALL), False, None),
    (9, "IR-IO-APIC", "9-fasteoi", "acpi", list(ALL), False, None),
    (16, "IR-IO-APIC", "16-fasteoi", "i801_smbus", list(ALL), False, None),
]
for i, hw in enumerate(("16384", "163840", "344064", "446464")):
    irqs.append((25 + i, "PCI-MSI", f"{hw}-edge", "PCIe PME, aerdrv", list(ALL), False, None))
irqs.append((30, "IR-PCI-MSIX-" + NVME, "0-edge", "nvme0q0", list(ALL), False, NVME))
for q in range(1, 33):  # managed I/O queues: two CPUs each, in CPU order
    irqs.append(
        (
            30 + q,
            "IR-PCI-MSIX-" + NVME,
            f"{q}-edge",
            f"nvme0q{q}",
            [2 * (q - 1), 2 * (q - 1) + 1],
            True,
            NVME,
        )
    )
nxt = 70
for bdf in (NIC0, NIC1):
    irqs.append(
        (nxt, "IR-PCI-MSIX-" + bdf, "0-edge", f"mlx5_async0@pci:{bdf}", NODES[1], False, bdf)
    )
    for v in range(32):  # mlx5 sets an affinity hint per completion vector, one CPU each
        irqs.append(
            (
                nxt + 1 + v,
                "IR-PCI-MSIX-" + bdf,
                f"{v + 1}-edge",
                f"mlx5_comp{v}@pci:{bdf}",
                [NODES[1][v]],
                False,
                bdf,
            )
        )
    nxt += 33
irqs.append((140, "IR-PCI-MSI-" + GPU, "0-edge", "nvidia", list(ALL), False, GPU))


def count(irq: int, c: int) -> int:
    return (irq * 7919 + c * 104729) % 9973 if (irq + c) % 5 == 0 else 0


header = " " * 4 + "".join(f"{'CPU' + str(c):>11}" for c in ALL) + "\n"
lines = []
for number, chip, hw, names, aff, managed, dev in irqs:
    d = f"proc/irq/{number}"
    put(f"{d}/smp_affinity", mask(aff) + "\n", ro=managed)
    put(f"{d}/smp_affinity_list", cpulist(aff) + "\n", ro=managed)
    put(f"{d}/effective_affinity", mask([aff[0]]) + "\n")
    put(f"{d}/effective_affinity_list", f"{aff[0]}\n")
    put(f"{d}/node", f"{DEVICES[dev][3] if dev else 0}\n")
    if dev and chip.startswith(("IR-PCI-MSI", "PCI-MSI")):
        put(f"{pci}/{dev}/msi_irqs/{number}", "msix\n" if "MSIX" in chip else "msi\n")
    counts = "".join(f"{count(number, c):>11}" for c in ALL)
    lines.append(f"{number:>3}:{counts}  {chip:<22} {hw:<12} {names}\n")
for bdf in DEVICES:
    put(f"{pci}/{bdf}/irq", "0\n" if bdf != GPU else "140\n")
tail = [
    ("NMI", "Non-maskable interrupts"),
    ("LOC", "Local timer interrupts"),
    ("SPU", "Spurious interrupts"),
    ("PMI", "Performance monitoring interrupts"),
    ("IWI", "IRQ work interrupts"),
    ("RES", "Rescheduling interrupts"),
    ("CAL", "Function call interrupts"),
    ("TLB", "TLB shootdowns"),
]
for i, (name, desc) in enumerate(tail):
    counts = "".join(f"{(c * 31 + i * 977) % 100000:>11}" for c in ALL)
    lines.append(f"{name}:{counts}   {desc}\n")
lines.append("ERR:          0\nMIS:          0\n")
put("proc/interrupts", header + "".join(lines))
put("proc/irq/default_smp_affinity", mask(ALL) + "\n")

# ---- procfs odds and ends, sysctls --------------------------------------------------------
BOOT = (
    "root=/dev/mapper/rhel-root ro crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M "
    "resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap rhgb quiet"
)
put("proc/cmdline", f"BOOT_IMAGE=(hd0,gpt2)/vmlinuz-{KERNEL} {BOOT}\n")
put(
    "proc/mounts",
    "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0\n"
    "sysfs /sys sysfs rw,seclabel,nosuid,nodev,noexec,relatime 0 0\n"
    "devtmpfs /dev devtmpfs rw,seclabel,nosuid,size=4096k,nr_inodes=49483426,mode=755,inode64 0 0\n"
    "hugetlbfs /dev/hugepages hugetlbfs rw,seclabel,relatime,pagesize=2M 0 0\n",
)
put("proc/filesystems", "nodev\tsysfs\nnodev\tproc\nnodev\ttmpfs\nnodev\thugetlbfs\n\txfs\n")
SYSCTLS = {
    "vm.swappiness": "60",
    "vm.dirty_ratio": "20",
    "vm.dirty_background_ratio": "10",
    "vm.dirty_bytes": "0",
    "vm.dirty_background_bytes": "0",
    "vm.dirty_expire_centisecs": "3000",
    "vm.stat_interval": "1",
    "vm.zone_reclaim_mode": "0",
    "vm.nr_hugepages": "0",
    "kernel.sched_rt_runtime_us": "950000",
    "kernel.sched_rt_period_us": "1000000",
    "kernel.numa_balancing": "1",
    "kernel.timer_migration": "1",
    "net.core.rmem_max": "212992",
    "net.core.wmem_max": "212992",
    "net.core.netdev_max_backlog": "1000",
}
for k, v in SYSCTLS.items():
    put("proc/sys/" + k.replace(".", "/"), v + "\n")

# ---- /etc and /boot as RHEL 9 installs them ------------------------------------------------
put(
    f"boot/loader/entries/{MACHINE_ID}-{KERNEL}.conf",
    f"title Red Hat Enterprise Linux (5.14.0-427.13.1.el9_4.x86_64) 9.4 (Plow)\n"
    f"version {KERNEL}\nlinux /vmlinuz-{KERNEL}\ninitrd /initramfs-{KERNEL}.img $tuned_initrd\n"
    f"options {BOOT} $tuned_params\ngrub_users $grub_users\ngrub_arg --unrestricted\n"
    f"grub_class rhel\n",
)
put(
    f"boot/loader/entries/{MACHINE_ID}-0-rescue.conf",
    f"title Red Hat Enterprise Linux (0-rescue-{MACHINE_ID}) 9.4 (Plow)\n"
    f"version 0-rescue-{MACHINE_ID}\nlinux /vmlinuz-0-rescue-{MACHINE_ID}\n"
    f"initrd /initramfs-0-rescue-{MACHINE_ID}.img\noptions {BOOT}\n"
    f"grub_users $grub_users\ngrub_arg --unrestricted\ngrub_class rhel\n",
)
put(
    "etc/default/grub",
    "GRUB_TIMEOUT=5\nGRUB_DISTRIBUTOR=\"$(sed 's, release .*$,,g' /etc/system-release)\"\n"
    'GRUB_DEFAULT=saved\nGRUB_DISABLE_SUBMENU=true\nGRUB_TERMINAL_OUTPUT="console"\n'
    f'GRUB_CMDLINE_LINUX="{BOOT.replace("root=/dev/mapper/rhel-root ro ", "")}"\n'
    'GRUB_DISABLE_RECOVERY="true"\nGRUB_ENABLE_BLSCFG=true\n',
)
put(
    "etc/sysconfig/irqbalance",
    "# irqbalance is a daemon process that distributes interrupts across\n"
    "# CPUs on SMP systems.  The default is to rebalance once every 10\n"
    "# seconds.  This is the environment file that is specified to systemd via the\n"
    "# EnvironmentFile key in the service unit file (or via whatever method the init\n"
    "# system you're using has).\n#\n"
    "# IRQBALANCE_BANNED_CPULIST\n"
    "# The CPUs list which represents the CPUs that are excluded from IRQ balancing.\n"
    "#IRQBALANCE_BANNED_CPULIST=\n#\n"
    "# IRQBALANCE_ARGS\n# Append any args here to the irqbalance daemon as documented in the man\n"
    "# page.\n#\n#IRQBALANCE_ARGS=\n",
)


def main() -> None:
    if DEST.exists():
        shutil.rmtree(DEST)
    for rel, text in sorted(files.items()):
        out = DEST / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    (DEST / "readonly.txt").write_text(
        "# files the kernel marks read-only (re-applied by tests; git keeps no modes)\n"
        + "".join(r + "\n" for r in sorted(readonly))
    )
    (DEST / "README.md").write_text(
        __doc__.split("\n\n", 1)[1].replace("Run `python3", "Regenerate with `python3")
    )
    print(f"wrote {len(files)} files to {DEST}")


if __name__ == "__main__":
    main()
