"""apply / verify / rollback / persist on copied host trees, through the fake kernel.

Every cycle must leave the tree byte-identical (content and mode of every file, and the set
of directories) to the capture it started from.
"""

from __future__ import annotations

import json

import pytest
from tuning_helpers import HOST_NAMES, PROFILES, FakeKernel, copy_host, tree_digest

from appliance.tuning import (
    EXIT_DRIFT,
    EXIT_OK,
    EXIT_PENDING_REBOOT,
    Journal,
    apply,
    persist,
    plan,
    rollback,
    verify,
)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("host", HOST_NAMES)
def test_apply_verify_rollback_is_byte_identical(host, profile, tmp_path):
    root = copy_host(host, tmp_path)
    before = tree_digest(root)
    kernel = FakeKernel(root)
    planned = plan(profile, root)
    to_change = {e.key for e in planned.entries if e.status == "change"}
    assert to_change, "every profile changes something on these captures"

    report = apply(profile, root, runner=kernel)
    assert report.failed == []
    assert {c["key"] for c in report.changed} == to_change
    assert tree_digest(root) != before

    result = verify(profile, root)
    assert result.drift == [] or all(d["kind"] == "reboot" for d in result.drift)
    expect = EXIT_DRIFT if any(e.kind == "reboot" for e in planned.entries) else EXIT_OK
    assert result.exit_code == expect
    assert not result.missing

    back = rollback(root, runner=kernel)
    assert back.failed == [] and back.archived
    assert tree_digest(root) == before
    assert verify(profile, root).exit_code == EXIT_DRIFT


def test_apply_is_idempotent_and_rollback_restores_the_first_state(tmp_path):
    root = copy_host("dual-socket-gpu", tmp_path)
    before = tree_digest(root)
    kernel = FakeKernel(root)
    first = apply("instrument", root, runner=kernel)
    assert len(first.changed) > 100
    second = apply("instrument", root, runner=kernel)
    assert second.changed == [] and second.failed == []
    assert len(second.unchanged) == len(first.changed) + len(first.unchanged)
    # a different profile on top: rollback must still return to the capture
    apply("hpc-node", root, runner=kernel)
    assert rollback(root, runner=kernel).failed == []
    assert tree_digest(root) == before
    # the journal moved to history; a second rollback has nothing to do
    assert not Journal(root).path.exists()
    assert rollback(root, runner=kernel).restored == []


def test_verify_reports_drift_missing_unsupported_apart(tmp_path):
    root = copy_host("dual-socket-gpu", tmp_path)
    kernel = FakeKernel(root)
    apply("dev", root, runner=kernel)
    assert verify("dev", root).exit_code == EXIT_OK
    # someone changes a sysctl and unmounts the hugetlbfs mount behind our back
    (root / "proc/sys/vm/swappiness").write_text("60\n")
    kernel.run(["umount", str(root / "dev/hugepages")])
    (root / "proc/mounts").write_text(
        (root / "proc/mounts").read_text() + "tmpfs /dev/hugepages tmpfs rw 0 0\n"
    )
    result = verify("dev", root)
    assert result.exit_code == EXIT_DRIFT
    assert [d["key"] for d in result.drift] == ["sysctl:vm.swappiness"]
    assert result.drift[0]["current"] == "60" and result.drift[0]["desired"] == "10"
    assert [m["key"] for m in result.missing] == ["mount:/dev/hugepages"]
    assert {u["key"] for u in result.unsupported} >= {"irq:31", "irq:62"}  # managed NVMe queues
    assert json.loads(json.dumps(result.to_dict()))["exit_code"] == EXIT_DRIFT


def test_persist_then_verify_reports_pending_reboot(tmp_path):
    root = copy_host("dual-socket-gpu", tmp_path)
    before = tree_digest(root)
    kernel = FakeKernel(root)
    apply("instrument", root, runner=kernel)
    report = persist("instrument", root, runner=kernel)
    actions = {(o["what"], o["action"]) for o in report.outputs}
    assert ("sysctls", "written") in actions
    sysctl_d = (root / "etc/sysctl.d/90-appliance.conf").read_text()
    assert "kernel.sched_rt_runtime_us = -1\n" in sysctl_d
    irqbalance = (root / "etc/sysconfig/irqbalance").read_text()
    assert irqbalance.startswith("# irqbalance is a daemon")  # the comments are kept
    assert irqbalance.endswith("IRQBALANCE_BANNED_CPULIST=1-63\n")
    unit = (root / "etc/systemd/system/appliance-sysconfig.service").read_text()
    assert "-m appliance.tuning apply --profile" in unit and "instrument.toml" in unit
    for entry in (root / "boot/loader/entries").glob("*.conf"):
        options = next(ln for ln in entry.read_text().splitlines() if ln.startswith("options "))
        assert "isolcpus=managed_irq,domain,1-63" in options and "nohz_full=1-63" in options
        assert "crashkernel=1G-4G:192M,4G-64G:256M,64G-:512M" in options  # kept
    assert "$tuned_params" in next((root / "boot/loader/entries").glob("*el9_4*.conf")).read_text()

    result = verify("instrument", root)
    assert result.pending_reboot
    assert result.exit_code == EXIT_PENDING_REBOOT
    assert {r["key"] for r in result.reboot_pending_items} == {
        "cmdline:isolcpus",
        "cmdline:nohz_full",
        "cmdline:rcu_nocbs",
        "cmdline:irqaffinity",
        "cmdline:processor.max_cstate",
        "cmdline:intel_idle.max_cstate",
        "cmdline:skew_tick",
    }
    assert "isolcpus" not in result.running_cmdline
    assert "isolcpus=managed_irq,domain,1-63" in result.configured_cmdline

    # persist is idempotent too
    again = persist("instrument", root, runner=kernel)
    assert {o["action"] for o in again.outputs} <= {"unchanged", "print"}

    # and after the "reboot" (the running command line now has the parameters) it matches
    cmdline = root / "proc/cmdline"
    saved = cmdline.read_text()
    cmdline.write_text(saved.strip() + " " + result.configured_cmdline.split(" quiet ")[1] + "\n")
    assert verify("instrument", root).exit_code == EXIT_OK
    cmdline.write_text(saved)

    assert rollback(root, runner=kernel).failed == []
    assert tree_digest(root) == before


def test_persist_without_a_boot_loader_prints_the_line(tmp_path):
    root = copy_host("vm-2core", tmp_path)
    before = tree_digest(root)
    kernel = FakeKernel(root)
    report = persist("instrument", root, runner=kernel)
    printed = [o for o in report.outputs if o["what"] == "kernel command line"]
    assert printed and printed[0]["action"] == "print"
    assert (
        "isolcpus=managed_irq,domain,1 nohz_full=1 rcu_nocbs=1 irqaffinity=0"
        in printed[0]["detail"]
    )
    assert "isolcpus=managed_irq,domain,1" in report.to_text()
    assert (root / "etc/sysctl.d/90-appliance.conf").exists()
    assert rollback(root, runner=kernel).failed == []
    assert tree_digest(root) == before  # including the etc/ directories persist created


def test_persist_edits_etc_default_grub_when_there_is_no_bls(tmp_path):
    root = copy_host("dual-socket-gpu", tmp_path)
    before = tree_digest(root)
    for entry in (root / "boot/loader/entries").iterdir():
        entry.unlink()
    (root / "boot/loader/entries").rmdir()
    kernel = FakeKernel(root)
    persist("instrument", root, runner=kernel)
    grub = (root / "etc/default/grub").read_text()
    line = next(ln for ln in grub.splitlines() if ln.startswith("GRUB_CMDLINE_LINUX="))
    assert "rhgb quiet" in line and "isolcpus=managed_irq,domain,1-63" in line
    assert verify("instrument", root).pending_reboot
    assert rollback(root, runner=kernel).failed == []
    tree_digest(root)  # smoke: still walkable
    assert (root / "etc/default/grub").read_text() == (
        copy_host("dual-socket-gpu", tmp_path / "fresh") / "etc/default/grub"
    ).read_text()
    assert before  # (entries were removed by the test itself, so no full-tree comparison)


def test_hugepage_shortfall_is_reported_and_rolled_back(tmp_path):
    root = copy_host("dual-socket-gpu", tmp_path)
    before = tree_digest(root)
    kernel = FakeKernel(root, hugepage_limit=300)
    report = apply("instrument", root, runner=kernel)
    failed = {f["key"]: f["error"] for f in report.failed}
    assert set(failed) == {"hugepages:2M:node0", "hugepages:2M:node1"}
    assert "asked for 1024 pages, the kernel allocated 300" in failed["hugepages:2M:node0"]
    assert report.exit_code != 0
    assert {c["key"] for c in report.changed} >= {"hugepages:1G:node0", "sysctl:vm.swappiness"}
    assert rollback(root, runner=kernel).failed == []
    assert tree_digest(root) == before


class _CrashAfterFirstWrite(FakeKernel):
    def write_attr(self, path, value):
        if self.writes:
            raise RuntimeError("injected crash between two writes")
        super().write_attr(path, value)


def test_crash_between_two_writes_leaves_a_journal_rollback_can_use(tmp_path):
    root = copy_host("vm-2core", tmp_path)
    before = tree_digest(root)
    with pytest.raises(RuntimeError, match="injected crash"):
        apply("dev", root, runner=_CrashAfterFirstWrite(root))
    assert tree_digest(root) != before  # the first write happened
    records = Journal(root).records()
    undos = [r for r in records if r["type"] == "undo"]
    # every completed change and the interrupted one were journalled before they happened
    assert [u["key"] for u in undos] == ["hugepages:2M:node0"] + ["mount:/dev/hugepages"] * 3 + [
        "thp:defrag"
    ]
    assert (root / "sys/kernel/mm/transparent_hugepage/defrag").read_text() == (
        "always defer defer+madvise [madvise] never\n"
    )  # the crash came before this write
    assert "hugetlbfs /dev/hugepages" in (root / "proc/mounts").read_text()
    # a torn final record (the crash hit mid-append) is tolerated
    with open(Journal(root).path, "a") as f:
        f.write('{"type": "undo", "key": "torn')
    back = rollback(root, runner=FakeKernel(root))
    assert back.failed == []
    assert tree_digest(root) == before


def test_journal_is_written_before_each_change(tmp_path):
    root = copy_host("vm-2core", tmp_path)
    seen = []

    class Watching(FakeKernel):
        def write_attr(self, path, value):
            rel = "/" + str(path.relative_to(root))
            journalled = [
                r["undo"].get("path") for r in Journal(root).records() if r["type"] == "undo"
            ]
            seen.append(rel in journalled)
            super().write_attr(path, value)

    apply("dev", root, runner=Watching(root))
    assert seen and all(seen)
    rollback(root, runner=FakeKernel(root))


def test_rollback_keeps_a_directory_someone_else_filled(tmp_path):
    root = copy_host("vm-2core", tmp_path)
    kernel = FakeKernel(root)
    persist("dev", root, runner=kernel)
    (root / "etc/sysctl.d/99-site.conf").write_text("vm.overcommit_memory = 1\n")
    back = rollback(root, runner=kernel)
    assert back.failed == []
    assert any(r["what"] == "kept directory /etc/sysctl.d (not empty)" for r in back.restored)
    assert not (root / "etc/sysctl.d/90-appliance.conf").exists()
    assert (root / "etc/sysctl.d/99-site.conf").exists()
