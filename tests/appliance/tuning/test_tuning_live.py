"""On the live machine, as root: apply a small real profile, verify, roll back, compare.

Marked ``rt``. Skips with the reason where the machine does not allow it (not root, /sys
read-only, no 2 MiB hugepages). Everything it changes is restored by rollback, and the test
checks that the machine reads exactly as before. The journal goes to a temporary directory,
so a real journal in /var/lib/appliance/sysconfig is neither used nor disturbed.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.tuning import (
    EXIT_OK,
    Journal,
    apply,
    load_profile,
    plan,
    rollback,
    verify,
)
from appliance.tuning.cpulist import format_cpulist, parse_cpulist
from appliance.tuning.host import Host

pytestmark = pytest.mark.rt

ROOT = Path("/")
HUGE_2M = Path("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages")


def _require_live_tuning() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: writes hugepages, IRQ affinity and sysctls")
    if not HUGE_2M.exists():
        pytest.skip("this kernel offers no 2 MiB hugepages")
    if os.statvfs("/sys").f_flag & os.ST_RDONLY or os.statvfs("/proc/sys").f_flag & os.ST_RDONLY:
        pytest.skip("/sys or /proc/sys is mounted read-only (a container?)")


def _snapshot(extra: list[Path]) -> dict[str, str | None]:
    """What the profiles here may touch, read back from the kernel."""
    paths = [
        *Path("/sys/kernel/mm/hugepages").glob("*/nr_hugepages"),
        *Path("/sys/devices/system/node").glob("node*/hugepages/*/nr_hugepages"),
        *Path("/proc/irq").glob("*/smp_affinity_list"),
        Path("/proc/irq/default_smp_affinity"),
        Path("/sys/kernel/mm/transparent_hugepage/enabled"),
        Path("/sys/kernel/mm/transparent_hugepage/defrag"),
        *extra,
    ]
    out: dict[str, str | None] = {}
    for p in paths:
        try:
            out[str(p)] = p.read_text()
        except OSError:
            out[str(p)] = None
    out["hugetlbfs mounts"] = "".join(
        ln
        for ln in Path("/proc/mounts").read_text().splitlines(keepends=True)
        if " hugetlbfs " in ln
    )
    out["/dev/hugepages exists"] = str(Path("/dev/hugepages").exists())
    return out


def _movable_irq() -> tuple[str, frozenset[int], frozenset[int]] | None:
    """A movable IRQ with a unique handler name, its current CPUs and a different target."""
    host = Host(ROOT)
    online = host.online_cpus
    if len(online) < 2:
        return None
    counts: dict[str, int] = {}
    for irq in host.irqs:
        for n in irq.names:
            counts[n] = counts.get(n, 0) + 1
    for irq in host.irqs:
        names = [n for n in irq.names if counts[n] == 1 and not any(c in n for c in "*?[]")]
        if irq.movable and names:
            current = parse_cpulist(irq.affinity_path.read_text())
            target = (
                frozenset({min(current)})
                if len(current) > 1
                else frozenset({min(online - current)})
            )
            return names[0], current, target
    return None


def _cycle(profile, tmp_path: Path, extra: list[Path]) -> None:
    before = _snapshot(extra)
    journal = Journal(ROOT, directory=tmp_path / "journal")
    report = apply(profile, ROOT, journal=journal)
    try:
        if report.failed:
            pytest.skip(f"the kernel refused a change here: {report.failed}")
        assert report.changed, "the profile was chosen to change something"
        result = verify(profile, ROOT)
        assert result.exit_code == EXIT_OK, result.to_text()
        assert apply(profile, ROOT, journal=journal).changed == []  # idempotent, live
    finally:
        back = rollback(ROOT, journal=journal)
    assert back.failed == [], back.to_text()
    assert _snapshot(extra) == before


def test_small_profile_on_the_live_machine(tmp_path):
    _require_live_tuning()
    irq = _movable_irq()
    text = '[cpus]\nhousekeeping = "0"\n\n[hugepages.2M]\ntotal = 4\n'
    if irq is not None:
        name, _, target = irq
        text += f'\n[[irq.pin]]\nmatch = "{name}"\ncpus = "{format_cpulist(target)}"\n'
    # 4 more than whatever the machine has now, so the test changes something either way
    text = text.replace("total = 4", f"total = {int(HUGE_2M.read_text()) + 4}")
    (tmp_path / "live-small.toml").write_text(text)
    profile = load_profile(str(tmp_path / "live-small.toml"))
    keys = {e.key for e in plan(profile, ROOT).entries if e.status == "change"}
    assert "hugepages:2M:total" in keys
    if irq is not None:
        assert any(k.startswith("irq:") for k in keys), "the pinned IRQ must be part of the test"
    _cycle(profile, tmp_path, [])


def test_dev_profile_on_the_live_machine(tmp_path):
    """The issue's acceptance check: plan, apply, verify, rollback of `dev` leave the host as it was."""
    _require_live_tuning()
    profile = load_profile("dev")
    sysctls = [Host(ROOT).sysctl_path(name) for name, _ in profile.sysctl]
    _cycle(profile, tmp_path, sysctls)
