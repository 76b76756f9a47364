"""The ``sysconfig`` verb and the provisioning scripts in sysconfig/, on copied trees."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tuning_helpers import FakeKernel, copy_host, tree_digest

from appliance.commands import sysconfig as verb
from appliance.tuning import TuningDriftError, apply, rollback, startup_check
from appliance.tuning.__main__ import main

REPO = Path(__file__).resolve().parents[3]
SCRIPTS = ("plan", "apply", "verify", "rollback", "persist")


def test_sysconfig_dir_is_scripts_and_profiles_not_a_package():
    # Python's standard library owns the name `sysconfig`
    assert not (REPO / "sysconfig" / "__init__.py").exists()
    for name in SCRIPTS:
        assert os.access(REPO / "sysconfig" / name, os.X_OK), name
    assert {p.stem for p in (REPO / "sysconfig/profiles").glob("*.toml")} >= {
        "instrument",
        "hpc-node",
        "dev",
    }


def test_verb_contract():
    assert isinstance(verb.HELP, str) and "\n" not in verb.HELP
    assert "examples:" in verb.DESCRIPTION


def test_plan_json_and_verify_exit_codes(tmp_path, capsys):
    root = copy_host("vm-2core", tmp_path)
    assert main(["plan", "--profile", "dev", "--root", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["profile"] == "dev" and out["counts"]["change"] > 0
    assert main(["verify", "--profile", "dev", "--root", str(root), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["exit_code"] == 1 and result["drift"] and not result["missing"]
    assert {u["key"] for u in result["unsupported"]} >= {"cpufreq:scaling_governor", "irq:36"}


def test_list_shows_each_profile_with_its_description(tmp_path, capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ("instrument", "hpc-node", "dev"):
        desc = verb_description(name)
        assert desc and re.search(rf"^- {re.escape(name)} +{re.escape(desc)}$", out, re.M), out
    assert main(["list", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)["profiles"]}
    assert rows["instrument"]["description"] == verb_description("instrument")
    mine = tmp_path / "profiles"
    mine.mkdir()
    (mine / "lab.toml").write_text('description = "a lab profile"\nextends = "dev"\n')
    assert main(["list", "--profiles-dir", str(mine), "--profiles-dir", str(REPO / "sysconfig/profiles")]) == 0
    assert re.search(r"^- lab +a lab profile$", capsys.readouterr().out, re.M)
    empty = tmp_path / "none"
    empty.mkdir()
    assert main(["list", "--profiles-dir", str(empty)]) == 1
    assert "no profiles found" in capsys.readouterr().err


def test_plan_text_starts_with_the_description(tmp_path, capsys):
    root = copy_host("vm-2core", tmp_path)
    assert main(["plan", "--profile", "dev", "--root", str(root)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"  {verb_description('dev')}"
    assert main(["plan", "--profile", "dev", "--root", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["description"] == verb_description("dev")


def verb_description(name: str) -> str:
    import tomllib

    return tomllib.loads((REPO / "sysconfig/profiles" / f"{name}.toml").read_text())["description"]


def test_bad_profile_is_a_usage_error(tmp_path, capsys):
    root = copy_host("vm-2core", tmp_path)
    assert main(["plan", "--profile", "nosuch", "--root", str(root)]) == 2
    assert "unknown profile 'nosuch'" in capsys.readouterr().err
    assert main(["apply", "--root", str(root)]) == 2
    assert "--profile NAME is required" in capsys.readouterr().err


def test_scripts_run_from_a_checkout(tmp_path):
    root = copy_host("dual-socket-gpu", tmp_path)
    before = tree_digest(root)
    plan = subprocess.run(
        [REPO / "sysconfig/plan", "--profile", "instrument", "--root", root],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "cpu set appliance = 1-63" in plan.stdout
    verify = subprocess.run(
        [REPO / "sysconfig/verify", "--profile", "instrument", "--root", root, "--json"],
        capture_output=True,
        text=True,
    )
    assert verify.returncode == 1
    assert json.loads(verify.stdout)["pending_reboot"] is False
    assert tree_digest(root) == before


def test_startup_check_warns_or_refuses(tmp_path, caplog):
    root = copy_host("vm-2core", tmp_path)
    problems = startup_check("dev", strict=False, root=root)
    assert any("drift sysctl:vm.swappiness: is 60, profile wants 10" in p for p in problems)
    assert any("sysctl:vm.swappiness" in r.getMessage() for r in caplog.records)
    with pytest.raises(TuningDriftError, match="appliance sysconfig apply --profile dev"):
        startup_check("dev", strict=True, root=root)
    kernel = FakeKernel(root)
    apply("dev", root, runner=kernel)
    assert startup_check("dev", strict=True, root=root) == []
    rollback(root, runner=kernel)


def test_module_runs_as_a_program(tmp_path):
    root = copy_host("vm-2core", tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "appliance.tuning",
            "plan",
            "--profile",
            "hpc-node",
            "--root",
            str(root),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^! +reboot +cmdline:transparent_hugepage ", proc.stdout, re.M)  # one status column, risk-flagged


def test_apply_on_a_tree_never_runs_programs_on_the_live_machine(tmp_path, capsys):
    root = copy_host("vm-2core", tmp_path)
    assert main(["apply", "--profile", "dev", "--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "FAILED   mount:/dev/hugepages" in out and "the root is not /" in out
    assert "changed  sysctl:vm.swappiness: 60 -> 10" in out
    assert str(tmp_path) not in Path("/proc/mounts").read_text()  # nothing mounted in the tree
