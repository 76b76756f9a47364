"""The ``appliance`` CLI: version, help, and the ring verbs against real rings."""

from __future__ import annotations

import json
import multiprocessing as mp
import re
import subprocess
import sys
from pathlib import Path

import pytest

import rt
from appliance import __version__
from appliance.cli import COMMANDS, main


def _create_and_abandon(name: str) -> None:
    ring = rt.Ring.create(name, payload_bytes=64, n_slots=4)
    ring.close()  # exits without unlinking: a crashed owner


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_verb_prints_help_and_fails(capsys):
    assert main([]) == 2
    assert "appliance run" in capsys.readouterr().out


@pytest.mark.parametrize("verb", sorted(COMMANDS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as info:
        main([verb, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: appliance" in out and "example" in out


def test_console_script_entry_point():
    out = subprocess.run([sys.executable, "-m", "appliance", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip().endswith(__version__)


def test_rings_lists_a_live_ring_as_json(ring_name, capsys):
    with rt.Ring.create(ring_name, payload_bytes=64, n_slots=4) as ring, ring.producer() as p:
        p.reserve()
        p.commit()
        assert main(["rings", "--json"]) == 0
        rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
        assert rows[ring_name]["written"] == 1 and rows[ring_name]["stale"] is False
        assert main(["rings"]) == 0
        assert ring_name in capsys.readouterr().out


def test_rings_shows_a_runs_status_block(ring_name, capsys):
    name = ring_name + ".status"
    with rt.StatusBlock.create(name, 2) as block:
        try:
            w = block.writer(1)
            w.publish(rt.StageState.RUNNING, 7, 3, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, 0, 0)
            assert main(["rings", "--json"]) == 0
            rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
            rec = rows[name]["records"][1]
            assert rows[name]["kind"] == "status_block" and not rows[name]["stale"]
            assert (rec["state"], rec["frames_in"], rec["frames_out"], rec["incarnation"]) == ("running", 7, 3, 1)
            assert main(["rings"]) == 0
            out = capsys.readouterr().out
            assert f"status block {name}" in out and "running" in out
        finally:
            block.unlink()


def test_clean_removes_ring_of_dead_owner_only(ring_name, capsys):
    dead = ring_name + ".dead"
    proc = mp.get_context("spawn").Process(target=_create_and_abandon, args=(dead,))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0 and Path("/dev/shm", dead).exists()
    with rt.Ring.create(ring_name, payload_bytes=64, n_slots=4):
        assert main(["clean", "--dry-run"]) == 0
        assert f"would remove {dead}" in capsys.readouterr().out
        assert Path("/dev/shm", dead).exists()
        assert main(["clean"]) == 0
        out = capsys.readouterr().out
        assert f"removed {dead}" in out and ring_name + "\n" not in out
        assert not Path("/dev/shm", dead).exists()
        assert Path("/dev/shm", ring_name).exists()


def test_clean_force_removes_a_half_created_segment(ring_name, capsys):
    Path("/dev/shm", ring_name).write_bytes(b"")
    assert main(["clean", "--force", ring_name]) == 0
    assert not Path("/dev/shm", ring_name).exists()


def _drifting_profile(tmp_path: Path) -> Path:
    """A profile that differs from this host in exactly one read-only-checked sysctl."""
    current = int(Path("/proc/sys/vm/swappiness").read_text())
    profile = tmp_path / "drift.toml"
    profile.write_text(f'description = "test"\n[sysctl]\n"vm.swappiness" = {(current + 7) % 100}\n')
    return profile


def test_run_strict_refuses_on_tuning_drift(tmp_path, capsys):
    assert main(["run", "--profile", str(_drifting_profile(tmp_path)), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "vm.swappiness" in err and "sysconfig apply" in err


def test_run_strict_needs_a_profile(capsys):
    assert main(["run", "--strict"]) == 2
    assert "--strict needs --profile" in capsys.readouterr().err


# --- options in the same place in every verb ---------------------------------------------------


def _verbs_with_actions():
    import argparse

    from appliance.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for verb, parser in sub.choices.items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                yield verb, parser, action


def test_a_verbs_options_are_accepted_after_its_action_too():
    from appliance.cli import build_parser

    found = list(_verbs_with_actions())
    assert {"storage", "algo", "bench"} <= {verb for verb, _, _ in found}
    for verb, parser, sub in found:
        options = [a for a in parser._actions if a.option_strings and a.dest not in ("help",)]
        for name, child in sub.choices.items():
            for opt in options:
                assert any(s in child._option_string_actions for s in opt.option_strings), f"{verb} {name} does not take {opt.option_strings}"
    parse = build_parser().parse_args
    for argv in (["storage", "ls", "--json"], ["storage", "--json", "ls"], ["algo", "ls", "--json"], ["algo", "--json", "ls"]):
        assert parse(argv).json is True, argv
    assert parse(["storage", "ls"]).json is False and parse(["algo", "ls"]).json is False
    # a value given after the action wins; one given before it is kept when none comes after
    args = parse(["storage", "--config", "a.toml", "ls", "--set", "storage.warm=/w"])
    assert (str(args.config), args.overrides) == ("a.toml", ["storage.warm=/w"])
    assert str(parse(["storage", "--config", "a.toml", "ls", "--config", "b.toml"]).config) == "b.toml"


def test_storage_ls_and_algo_ls_json_after_the_verb(tmp_path, capsys):
    assert main(["storage", "ls", "--json", "--set", f'output.root="{tmp_path}"']) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["algo", "ls", "--json", "--root", str(tmp_path)]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["algorithms"] and all("name" in a for a in listed["algorithms"])


@pytest.mark.parametrize("verb", ["run", "serve"])
def test_output_is_shorthand_for_set_output_root(verb, tmp_path):
    from appliance.cli import build_parser
    from appliance.commands.run import overrides_of
    from appliance.config import load_config

    weird = tmp_path / "true"  # a directory name TOML would otherwise read as a boolean
    args = build_parser().parse_args([verb, "--set", 'output.root="elsewhere"', "--output", str(weird)])
    assert load_config(None, overrides_of(args)).output.root == str(weird)
    relative = build_parser().parse_args([verb, "--output", "runs2"])
    assert load_config(None, overrides_of(relative)).output.root == str(Path("runs2").absolute())
    assert "--output DIR" in subprocess.run([sys.executable, "-m", "appliance", verb, "--help"], capture_output=True, text=True, check=True).stdout


def test_run_help_states_the_real_default_frame_rate():
    from appliance.config import load_config

    rate = load_config(None).source.rate_hz
    text = subprocess.run([sys.executable, "-m", "appliance", "run", "--help"], capture_output=True, text=True, check=True).stdout
    rates = {float(r) for r in re.findall(r"([\d.]+) frames/s", text)}
    assert rates == {rate}, f"run --help names {rates} frames/s; the defaults say {rate}"
