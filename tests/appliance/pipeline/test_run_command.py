"""``appliance run`` as a process: headless under a (test) systemd notify socket, SIGTERM
drains, JSON log lines, and a bad config gives the named error."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from appliance.cli import main
from appliance.runfolder import RunFolder


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    assert main(["run", "--set", "edges.raw.n_slots=3", "--set", f'output.root="{tmp_path}"']) == 2
    err = capsys.readouterr().err
    assert "edges.raw.n_slots = 3" in err and "power of two" in err


def test_headless_run_notifies_systemd_and_drains_on_sigterm(tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock_path = tmp_path / "notify.sock"
    notify.bind(str(sock_path))
    notify.settimeout(120)
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="2000000")
    args = [
        sys.executable, "-m", "appliance", "run", "--headless", "--run-id", "HEADLESS",
        "--set", f'output.root="{tmp_path / "runs"}"', "--set", "source.synthetic.tile_size=256",
        "--set", "source.rate_hz=20", "--json", str(tmp_path / "summary.json"),
    ]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(notify.recv(4096).decode())
        while sum("WATCHDOG=1" in m for m in messages) < 2:  # pinged at half WATCHDOG_USEC
            messages.append(notify.recv(4096).decode())
        lane = tmp_path / "runs" / "HEADLESS" / "Data" / "Intensities" / "L001"
        deadline = time.monotonic() + 120
        # Stop once both tiles have their clusters (after the template cycles), mid-run.
        while not all((lane / f"s_1_{t}.locs").exists() for t in (1101, 1102)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # systemd's stop: only the main process gets it
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        notify.settimeout(0.5)
        try:
            while True:
                messages.append(notify.recv(4096).decode())
        except (TimeoutError, BlockingIOError):
            pass
        notify.close()
    assert proc.returncode == 0, err[-3000:]
    assert any("STOPPING=1" in m for m in messages)
    summary = json.loads((tmp_path / "summary.json").read_text())
    # Drained: fewer frames than the run plans, all of them through, nothing dropped.
    assert 0 < summary["frames_acquired"] < 2 * 26 * 4
    assert summary["frames_dropped"] == 0
    assert RunFolder(tmp_path / "runs" / "HEADLESS").is_complete
    records = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert records and all({"ts", "level", "msg"} <= set(r) for r in records)
    assert "run HEADLESS" in out


def test_ctl_against_a_running_appliance_pause_resume_stop(tmp_path):
    """The CLI client and the live stats stream against a real `appliance run` process."""
    from appliance.control import ControlClient
    from appliance.control.paths import default_socket_dir

    args = [
        sys.executable, "-m", "appliance", "run", "--run-id", "CTL",
        "--set", f'output.root="{tmp_path / "runs"}"', "--set", "source.synthetic.tile_size=256",
        "--set", "source.rate_hz=10",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sock_dir = default_socket_dir()
        deadline = time.monotonic() + 60
        while not (sock_dir / "control.sock").exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "no control socket"
            time.sleep(0.1)
        with ControlClient(sock_dir, timeout_s=5) as client:
            with client.subscribe(["stats"]) as sub:
                topic, body = sub.recv(timeout_s=10)
            assert topic == "stats" and body["data"]["run_id"] == "CTL"
            assert client.request("pause") == {"paused": True}
            assert client.request("status")["state"] == "paused"
            assert client.request("resume") == {"paused": False}
            assert client.request("stop")["stopping"] is True
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "run CTL" in out
    assert not (sock_dir / "control.sock").exists()  # removed at exit


def test_fault_option_is_parsed_and_bad_ones_are_named(tmp_path, capsys):
    from appliance.commands.run import parse_faults

    assert parse_faults(["writer-0:slow_ms=50", "kernel-0:kill_after=3"]) == {"writer-0": {"slow_ms": 50.0}, "kernel-0": {"kill_after": 3}}
    assert main(["run", "--fault", "writer-0:fast=1", "--set", f'output.root="{tmp_path}"']) == 2
    assert "KEY one of slow_ms, kill_after, corrupt_frame" in capsys.readouterr().err


def test_serve_starts_runs_on_command_and_drains_on_sigterm(tmp_path):
    from appliance.control import ControlClient, ControlError
    from appliance.control.paths import default_socket_dir

    args = [
        sys.executable, "-m", "appliance", "serve",
        "--set", f'output.root="{tmp_path / "runs"}"', "--set", "source.synthetic.tile_size=256",
        "--set", "source.rate_hz=0", "--set", 'edges.raw.policy="block"',
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        sock_dir = default_socket_dir()
        deadline = time.monotonic() + 60
        while not (sock_dir / "control.sock").exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        with ControlClient(sock_dir, timeout_s=5) as client:
            assert client.request("status")["state"] == "idle"
            try:
                client.request("pause")
                raise AssertionError("pause without a run must fail")
            except ControlError as exc:
                assert exc.code == "not_running"
            started = client.request("start", run_id="S1", set=["run.cycles=26"])
            assert started["run_id"] == "S1"
            try:
                client.request("start", run_id="S2")
                raise AssertionError("a second concurrent run must be refused")
            except ControlError as exc:
                assert exc.code == "busy"
            while client.request("status")["state"] != "idle":
                assert time.monotonic() < deadline + 120
                time.sleep(0.5)
            last = client.request("status")["last_summary"]
            assert last["run_id"] == "S1" and last["run_complete"] and last["frames_dropped"] == 0
            client.request("start", run_id="S2", set=['source.rate_hz=10'])
            time.sleep(2)
        proc.send_signal(signal.SIGTERM)  # drains S2, then exits
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert "run S2" in out
    assert RunFolder(tmp_path / "runs" / "S1").is_complete
