"""Golden-file tests of ``plan`` for every profile on every captured host tree.

The golden files are tests/data/golden/plan-<host>-<profile>.json. After an intended change
to profiles, items or captures, regenerate them and review the diff:

    APPLIANCE_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/appliance/tuning/test_tuning_plan_golden.py
"""

from __future__ import annotations

import json
import os
import re

import pytest
from tuning_helpers import GOLDEN, HOST_NAMES, PROFILES, copy_host, tree_digest

from appliance.tuning import plan

UPDATE = os.environ.get("APPLIANCE_UPDATE_GOLDEN") == "1"


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("host", HOST_NAMES)
def test_plan_matches_golden(host, profile, tmp_path):
    root = copy_host(host, tmp_path)
    before = tree_digest(root)
    result = plan(profile, root).to_dict()
    result["root"] = f"<{host}>"
    text = json.dumps(result, indent=2) + "\n"
    golden = GOLDEN / f"plan-{host}-{profile}.json"
    if UPDATE:
        golden.write_text(text)
    assert golden.exists(), f"{golden} missing: regenerate with APPLIANCE_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"plan differs from {golden} (see module docstring)"
    assert tree_digest(root) == before, "plan must not write anything"
    assert not (root / "var").exists(), "plan must not create the journal"


def test_plan_text_lists_every_item(tmp_path):
    root = copy_host("dual-socket-gpu", tmp_path)
    p = plan("instrument", root)
    text = p.to_text()
    from appliance.tuning import parse_cpulist

    grouped = {f"irq:{n}" for g in re.findall(r"\(irq ([\d,-]+)", text) for n in parse_cpulist(g)}
    for head, g, tail in re.findall(r"\b(cpufreq:policy)([\d,-]+)(:\w+)", text):
        grouped |= {f"{head}{n}{tail}" for n in parse_cpulist(g)}
    for entry in p.entries:  # by its key, or in a group row that names its number
        assert entry.key in text or entry.key in grouped, entry.key
    assert "bls /boot/loader/entries/" in text
    lines = text.splitlines()
    assert lines[1] == "  instrument computer: isolated cores, hugepage rings, RT, steady write-back"  # the description
    # IRQs of one device and pin rule are one row, as tuna shows them
    assert re.search(r"^ +change +32 IRQs of pci:0000:b1:00\.0 \(mlx5_comp\*\) +CPU 16-31,48-63 -> CPU 0 +\(irq 71-102\)$", text, re.M)
    assert not re.search(r"\birq:7[1-9]\b", text)
    assert re.search(r"^ +change +cpufreq:policy0-63:scaling_governor +powersave -> performance", text, re.M)
    # no repeated status/kind column ("reboot reboot")
    assert "reboot reboot" not in re.sub(r" +", " ", text) and "KIND" not in lines[5]
    # risky changes are flagged, each with its why on the next line
    for key in ("sysctl:kernel.sched_rt_runtime_us", "cmdline:processor.max_cstate"):
        i = next(n for n, line in enumerate(lines) if key in line)
        assert lines[i].startswith("!"), lines[i]
        assert lines[i + 1].startswith("    ! ") and len(lines[i + 1]) > 30
    assert "RT throttling off" in text and "deep idle" in text
    risky = [e for e in p.entries if e.risk]
    assert {e.key for e in risky} >= {"sysctl:kernel.sched_rt_runtime_us", "cmdline:processor.max_cstate", "cmdline:intel_idle.max_cstate"}
    assert text.rstrip().endswith(f"; {len(risky)} risky (marked !)")
    assert not any(line.startswith("!") for line in lines if "sysctl:vm.swappiness" in line)


def test_risk_lookup_is_by_key_and_value():
    from appliance.tuning.risk import risk_of

    assert risk_of("sysctl:kernel.sched_rt_runtime_us", "-1")
    assert risk_of("sysctl:kernel.sched_rt_runtime_us", "950000") == ""  # the default is not risky
    assert risk_of("cmdline:processor.max_cstate", "processor.max_cstate=1")
    assert risk_of("sysctl:vm.swappiness", "1") == ""
