"""The ``appliance`` CLI: version, help, and the ring verbs against real rings."""

from __future__ import annotations

import json
import multiprocessing as mp
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
