"""Profile loading and validation: bad profiles fail with a clear error before any write."""

from __future__ import annotations

from pathlib import Path

import pytest
from tuning_helpers import FakeKernel, copy_host, tree_digest

from appliance.tuning import ProfileError, apply, load_profile, plan, resolve_cpusets, verify
from appliance.tuning.host import Host


def write(dirpath: Path, name: str, text: str) -> Path:
    dirpath.mkdir(parents=True, exist_ok=True)
    path = dirpath / f"{name}.toml"
    path.write_text(text)
    return path


def test_shipped_profiles_extend_base():
    for name in ("instrument", "hpc-node", "dev"):
        prof = load_profile(name)
        assert [p.stem for p in prof.sources] == ["base", name]
        assert dict(prof.cpus)["housekeeping"] == "0"
    inst = load_profile("instrument")
    # child values win, parent values stay
    assert dict(inst.sysctl)["vm.swappiness"] == "1"
    assert dict(inst.thp) == {"enabled": "madvise", "defrag": "defer+madvise"}
    hpc = load_profile("hpc-node")
    assert dict(hpc.thp)["enabled"] == "always" and hpc.irq_movable == "all"


def test_cpusets_resolve_symbolically_per_host(tmp_path):
    prof = load_profile("instrument")
    vm = resolve_cpusets(prof, Host(copy_host("vm-2core", tmp_path)))
    big = resolve_cpusets(prof, Host(copy_host("dual-socket-gpu", tmp_path)))
    assert vm == {"housekeeping": frozenset({0}), "appliance": frozenset({1})}
    assert big["appliance"] == frozenset(range(1, 64))


def test_cpuset_atoms(tmp_path):
    root = copy_host("dual-socket-gpu", tmp_path)
    d = tmp_path / "profiles"
    write(
        d,
        "p",
        """
[cpus]
hk = "0,16"
gpu_side = "pci:0000:ca:00.0 except @hk"
nic = "net:ens6f0np0"
tail = "60-N"
odd = "node0 except 0-15:1/2, 32-47:1/2"
rest = "all except @gpu_side, @hk"
""",
    )
    sets = resolve_cpusets(load_profile("p", [d]), Host(root))
    assert sets["gpu_side"] == frozenset(range(17, 32)) | frozenset(range(48, 64))
    assert sets["nic"] == frozenset(range(16, 32)) | frozenset(range(48, 64))
    assert sets["tail"] == frozenset({60, 61, 62, 63})
    assert sets["odd"] == frozenset(range(1, 16, 2)) | frozenset(range(33, 48, 2))
    assert sets["rest"] == frozenset(range(1, 16)) | frozenset(range(32, 48))


BAD = [
    ("unknown top-level key", "sysctls = {}\n", "unknown key 'sysctls'"),
    ("unknown nested key", "[hugepages.2M]\nper_nod = 4\n", "unknown key 'per_nod'"),
    (
        "unknown pin key",
        '[[irq.pin]]\nmatch = "x"\ncpus = "0"\npriority = 1\n',
        "unknown key 'priority'",
    ),
    (
        "bad THP value",
        '[thp]\nenabled = "sometimes"\n',
        "'sometimes' is not one of always, madvise, never",
    ),
    ("bad EPP", '[cpufreq]\nenergy_performance_preference = "fast"\n', "is not one of default"),
    ("bad size", "[hugepages.3X]\nper_node = 1\n", "bad size '3X'"),
    ("negative count", "[hugepages.2M]\nper_node = -1\n", "must be a whole number >= 0"),
    ("two pool modes", "[hugepages.2M]\nper_node = 1\ntotal = 2\n", "give only one of"),
    ("pin without selector", '[[irq.pin]]\ncpus = "0"\n', "give exactly one of match"),
    ("bad sysctl name", "[sysctl]\nswappiness = 1\n", "bad sysctl name 'swappiness'"),
    ("unknown extends", 'extends = "nosuch"\n', "extends = 'nosuch': unknown profile 'nosuch'"),
    ("not TOML", "[cpus\n", "is not valid TOML"),
]


@pytest.mark.parametrize("text,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_profiles_are_rejected_at_load(tmp_path, text, message):
    d = tmp_path / "profiles"
    write(d, "bad", text)
    with pytest.raises(ProfileError, match="bad.toml") as err:
        load_profile("bad", [d])
    assert message in str(err.value)


def test_extends_cycle_is_rejected(tmp_path):
    d = tmp_path / "profiles"
    write(d, "a", 'extends = "b"\n')
    write(d, "b", 'extends = "a"\n')
    with pytest.raises(ProfileError, match=r"cycle \(a -> b -> a\)"):
        load_profile("a", [d])


def test_unknown_profile_lists_the_available_ones():
    with pytest.raises(ProfileError, match="available profiles: .*dev.*instrument"):
        load_profile("nosuch")


HOST_BAD = [
    (
        "CPU not present",
        '[cpus]\nhousekeeping = "0"\nappliance = "1-5"\n[irq]\nmovable = "@housekeeping"\n',
        "cpus.appliance = '1-5': CPU 2-5 not present on this host (online CPUs: 0-1)",
    ),
    # 64 GiB of 1G pages plus the 128 MiB of 2M pages dev asks for
    (
        "more hugepages than memory",
        "[hugepages.1G]\nper_node = 64\n",
        "hugepages ask for 65664 MiB on NUMA node 0, which has only",
    ),
    ("NUMA node absent", "[hugepages.2M]\nnodes = { 1 = 8 }\n", "NUMA node 1 does not exist"),
    ("unknown set", '[irq]\nmovable = "@nosuch"\n', "unknown CPU set @nosuch"),
    ("empty set", '[cpus]\nx = "0-1 except all"\n', "resolves to no CPUs"),
    ("bad atom", '[cpus]\nx = "first"\n', "atoms are N, N-M, 1-N, all, isolated"),
]


@pytest.mark.parametrize("text,message", [b[1:] for b in HOST_BAD], ids=[b[0] for b in HOST_BAD])
def test_profiles_impossible_on_this_host_fail_before_any_write(tmp_path, text, message):
    root = copy_host("vm-2core", tmp_path)
    before = tree_digest(root)
    d = tmp_path / "profiles"
    write(d, "bad", 'extends = "dev"\n' + text)
    prof = load_profile("bad", [d])  # loads: the problem is only visible on a host
    for action in (lambda: plan(prof, root), lambda: apply(prof, root, runner=FakeKernel(root))):
        with pytest.raises(ProfileError) as err:
            action()
        assert message in str(err.value)
    assert tree_digest(root) == before
    assert not (root / "var").exists(), "no journal may be created for a rejected profile"


def test_irq_pins_by_device_netdev_and_required(tmp_path):
    root = copy_host("dual-socket-gpu", tmp_path)
    d = tmp_path / "profiles"
    write(
        d,
        "pins",
        """
[cpus]
hk = "0"
[[irq.pin]]
netdev = "ens6f1np1"
cpus = "16"
[[irq.pin]]
device = "0000:ca:00.0"
cpus = "pci:0000:ca:00.0 except 17-63"
[[irq.pin]]
match = "frame_grabber*"
cpus = "@hk"
required = true
[irq]
movable = "@hk"
""",
    )
    entries = {e.key: e for e in plan("pins", root, [d]).entries}
    nic = [e for e in entries.values() if "@pci:0000:b1:00.1" in e.reason]
    assert len(nic) == 33 and all(
        e.desired == "16" and "pin net:ens6f1np1" in e.reason for e in nic
    )
    assert (
        entries["irq:140"].desired == "16"
        and "nvidia; pin pci:0000:ca:00.0" == entries["irq:140"].reason
    )
    assert entries["irq:70"].desired == "0"  # the other port's IRQs stay movable
    assert entries["irq-pin:frame_grabber*"].status == "missing"
    result = verify("pins", root, [d])
    assert [m["key"] for m in result.missing] == ["irq-pin:frame_grabber*"]
    assert result.exit_code == 1
