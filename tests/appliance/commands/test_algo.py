"""``appliance algo`` and its control commands, on a real registry file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from appliance.analysis.algorithms import AlgorithmRegistry
from appliance.analysis.control import control_commands
from appliance.commands.algo import latest_report
from appliance.control import CommandError


def algo(root, *args):
    return subprocess.run([sys.executable, "-m", "appliance", "algo", "--root", str(root), *args], capture_output=True, text=True, timeout=60)


def test_register_candidate_promote_rollback_through_the_cli(tmp_path):
    params = tmp_path / "p.toml"
    params.write_text("[chain]\nbackground_percentile = 25.0\n[basecall]\nlag = 1\n")
    assert algo(tmp_path, "register", "chain", "2", "--params", str(params)).returncode == 0
    assert algo(tmp_path, "candidate", "chain", "2").returncode == 0
    ls = algo(tmp_path, "ls")
    assert ls.returncode == 0 and "* chain@1" in ls.stdout and "c chain@2" in ls.stdout
    assert algo(tmp_path, "promote").stdout.strip() == "production: chain@2"
    assert AlgorithmRegistry(tmp_path).production().params == {"basecall": {"lag": 1}, "chain": {"background_percentile": 25.0}}
    shown = json.loads(algo(tmp_path, "show", "chain", "2").stdout)
    assert shown["entry"] == "kernels.chain:TileChain"
    assert "rolled back to chain@1" in algo(tmp_path, "rollback").stdout
    r = algo(tmp_path, "rollback")
    assert r.returncode == 1 and "nothing to roll back" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[chain]\npsf = 1\n")
    r = algo(tmp_path, "register", "x", "1", "--params", str(bad))
    assert r.returncode == 1 and "allowed: psf_sigma" in r.stderr


def test_compare_prints_the_latest_report(tmp_path):
    r = algo(tmp_path, "compare", "RUN")
    assert r.returncode == 1 and "no comparison report" in r.stderr
    out = tmp_path / "Analysis" / "RUN" / "compare" / "chain@2"
    out.mkdir(parents=True)
    (out / "compare.json").write_text(json.dumps({"verdict": "promote"}))
    (out / "compare.md").write_text("# report\n**Verdict: promote**\n")
    assert latest_report(tmp_path, "RUN") == out / "compare.json"
    r = algo(tmp_path, "compare", "RUN")
    assert r.returncode == 0 and "**Verdict: promote**" in r.stdout


def test_control_commands(tmp_path):
    cmds = control_commands(tmp_path)
    assert set(cmds) == {"algo.ls", "algo.candidate", "algo.promote", "algo.rollback"}
    assert cmds["algo.ls"].handler({})["production"] == "chain@1"
    AlgorithmRegistry(tmp_path).register("chain", "2", {"basecall": {"lag": 1}})
    cmds["algo.candidate"].validate({"name": "chain", "version": "2"})
    assert cmds["algo.candidate"].handler({"name": "chain", "version": "2"}) == {"candidate": "chain@2"}
    assert cmds["algo.promote"].handler({}) == {"production": "chain@2"}
    assert cmds["algo.rollback"].handler({}) == {"dropped_candidate": None, "production": "chain@1"}
    with pytest.raises(CommandError) as err:
        cmds["algo.promote"].handler({})
    assert err.value.code == "algorithm_refused" and "no candidate" in err.value.message
