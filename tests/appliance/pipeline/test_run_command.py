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
import urllib.request

from appliance.cli import main
from appliance.runfolder import RunFolder
from tests.procs import NotifyListener, cli_process


def test_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    assert main(["run", "--set", "edges.raw.n_slots=3", "--set", f'output.root="{tmp_path}"']) == 2
    err = capsys.readouterr().err
    assert "edges.raw.n_slots = 3" in err and "power of two" in err


def test_run_offloads_its_own_run_and_reports_the_alignment(tmp_path, capsys):
    """`appliance run` ends by running the run's jobs through the ledger: fastq and align-qc
    agree with the run's own ground-truth score."""
    from appliance.offload import Ledger

    root = tmp_path / "runs"
    args = ["run", "--run-id", "OFF", "--json", str(tmp_path / "s.json"), "--set", f'output.root="{root}"',
            "--set", "source.synthetic.tile_size=256", "--set", "source.rate_hz=0", "--set", 'edges.raw.policy="block"',
            "--set", "run.cycles=16", "--set", "control.enabled=false"]
    assert main(args) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "s.json").read_text())
    off = summary["offload"]
    assert off["ended"] and off["jobs"] == {"cycle-qc": {"succeeded": 16}, "fastq": {"succeeded": 1}, "align-qc": {"succeeded": 1}}
    assert off["fastq"]["pf_reads"] > 0 and off["align-qc"]["pct_aligned"] > 95
    acc = summary["accuracy"]
    # minimap2's mismatches against the reference vs the synthetic truth (docs/analysis.md)
    assert abs(off["align-qc"]["error_rate"] - acc["error_rate"]) < 0.002
    assert "align-qc  " in out and "% aligned" in out
    with Ledger(root / ".offload" / "ledger.sqlite") as ledger:
        assert {j.state for j in ledger.jobs(run="OFF")} == {"succeeded"}
        assert ledger.jobs(run="OTHER") == []
    assert main(["jobs", "ls", "--root", str(root), "--run", "OFF", "--kind", "fastq", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(j["kind"], j["run"], j["state"]) for j in listed["jobs"]] == [("fastq", "OFF", "succeeded")]
    # an operator's submission of the same job gets the same key (the run's manifest checksum)
    assert main(["jobs", "submit", "fastq", "run=OFF", "--root", str(root), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["created"] is False and again["job"]["id"] == listed["jobs"][0]["id"]


def test_headless_run_notifies_systemd_and_drains_on_sigterm(tmp_path):
    sock_path = tmp_path / "notify.sock"
    env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), WATCHDOG_USEC="2000000")
    args = [
        sys.executable, "-m", "appliance", "run", "--headless", "--run-id", "HEADLESS",
        "--set", f'output.root="{tmp_path / "runs"}"', "--set", "source.synthetic.tile_size=256",
        "--set", "source.rate_hz=20", "--json", str(tmp_path / "summary.json"),
    ]
    # Read in a thread, as systemd does: a reader that pauses lets the 10-message datagram
    # queue fill while the run goes on, and the notifier drops what does not fit.
    with NotifyListener(str(sock_path)) as notify, \
            cli_process(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        notify.wait_for(lambda ms: any("READY=1" in m for m in ms), timeout=120)
        notify.wait_for(lambda ms: sum("WATCHDOG=1" in m for m in ms) >= 2, timeout=60)  # pinged at half WATCHDOG_USEC
        lane = tmp_path / "runs" / "HEADLESS" / "Data" / "Intensities" / "L001"
        deadline = time.monotonic() + 120
        # Stop once both tiles have their clusters (after the template cycles), mid-run.
        while not all((lane / f"s_1_{t}.locs").exists() for t in (1101, 1102)):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)  # systemd's stop: only the main process gets it
        out, err = proc.communicate(timeout=120)
        messages = notify.wait_for(lambda ms: any("STOPPING=1" in m for m in ms), timeout=10)
    assert proc.returncode == 0, err[-3000:]
    assert any("STOPPING=1" in m for m in messages)
    summary = json.loads((tmp_path / "summary.json").read_text())
    # Drained: fewer frames than the run plans, all of them through, nothing dropped.
    assert 0 < summary["frames_acquired"] < 2 * 26 * 4
    assert summary["frames_dropped"] == 0
    # stopped mid-run: the cycles never acquired are not written as no-calls, so the folder is
    # not complete, and says how far it got
    from appliance.runfolder import read_completion

    assert not RunFolder(tmp_path / "runs" / "HEADLESS").is_complete
    done = read_completion(tmp_path / "runs" / "HEADLESS")
    assert done.status == "StoppedByUser" and 0 < done.cycles_completed < 26
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
    with cli_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
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
    assert proc.returncode == 0, err[-3000:]
    assert "run CTL" in out
    assert not (sock_dir / "control.sock").exists()  # removed at exit


def test_fault_option_is_parsed_and_bad_ones_are_named(tmp_path, capsys):
    from appliance.commands.run import parse_faults

    assert parse_faults(["writer-0:slow_ms=50", "kernel-0:kill_after=3"]) == {"writer-0": {"slow_ms": 50.0}, "kernel-0": {"kill_after": 3}}
    assert main(["run", "--fault", "writer-0:fast=1", "--set", f'output.root="{tmp_path}"']) == 2
    assert "KEY one of slow_ms, kill_after, corrupt_frame" in capsys.readouterr().err


def test_a_stage_class_that_does_not_import_is_a_config_error(tmp_path, capsys):
    assert main(["run", "--set", f'output.root="{tmp_path}"', "--set", 'stages.kernel.handler="nowhere.at_all:Kernel"']) == 2
    err = capsys.readouterr().err
    assert "stages.kernel.handler" in err and "cannot import 'nowhere.at_all'" in err
    assert not any(tmp_path.iterdir())  # refused before anything started


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_starts_runs_on_command_and_drains_on_sigterm(tmp_path):
    from appliance.control import ControlClient, ControlError
    from appliance.control.paths import default_socket_dir

    args = [
        sys.executable, "-m", "appliance", "serve",
        "--set", f'output.root="{tmp_path / "runs"}"', "--set", "source.synthetic.tile_size=256",
        "--set", "source.rate_hz=0", "--set", 'edges.raw.policy="block"',
        "--set", "storage.enabled=true", "--set", f'storage.warm="{tmp_path / "warm"}"', "--set", "offload.poll_s=0.2",
        "--set", f"metrics.port={_free_port()}",
    ]
    with cli_process(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
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
            started = client.request("start", run_id="S1", set=["run.cycles=12"])
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
            # the service's orchestrator offloads the completed run: its jobs end succeeded
            while True:
                jobs = client.request("jobs.ls", limit=100)["jobs"]
                mine = [j for j in jobs if j["run"] == "S1"]
                if {j["kind"] for j in mine} >= {"cycle-qc", "fastq", "align-qc"} and all(j["state"] == "succeeded" for j in mine):
                    break
                assert not any(j["state"] == "held" for j in mine), mine
                assert time.monotonic() < deadline + 240, mine
                time.sleep(0.5)
            assert sum(j["kind"] == "cycle-qc" for j in mine) == 12
            align = next(j for j in mine if j["kind"] == "align-qc")
            shown = client.request("jobs.show", id=align["id"])["job"]
            assert shown["result"]["pct_aligned"] > 90 and shown["result"]["error_rate"] < 0.01
            sub = client.subscribe(("jobs", "storage"))  # after the jobs ended: no older sample
            topics = set()
            while topics != {"jobs", "storage"}:  # published once a second
                topic, msg = sub.recv(5.0)
                topics.add(topic)
                if topic == "jobs":
                    assert msg["data"]["classes"]["realtime"]["succeeded"] >= 13  # 12 cycle-qc + fastq
            sub.close()
            assert client.request("storage.status")["tiers"]["warm"]["url"].endswith("warm")
            assert client.request("algo.ls")["production"]
            # one exporter for the service's life: the offload and storage gauges are there
            port = int(args[-1].split("=")[1])
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
            # every series carries the instrument (run.instrument_id)
            assert 'appliance_jobs{class="realtime",instrument="SIM01",state="succeeded"} 13.0' in metrics
            assert 'appliance_storage_files{instrument="SIM01",tier="warm"}' in metrics
            client.request("start", run_id="S2", set=['source.rate_hz=10'])
            time.sleep(2)
        proc.send_signal(signal.SIGTERM)  # drains S2, then exits
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "run S2" in out
    assert RunFolder(tmp_path / "runs" / "S1").is_complete


def test_headless_serve_with_a_malformed_notify_socket_exits_2(tmp_path):
    """As `appliance run --headless`: a NOTIFY_SOCKET systemd would never set is named, exit 2,
    no traceback (and nothing is started)."""
    env = dict(os.environ, NOTIFY_SOCKET="relative/notify.sock")
    args = [sys.executable, "-m", "appliance", "serve", "--headless", "--set", f'output.root="{tmp_path / "runs"}"',
            "--set", f'control.socket_dir="{tmp_path / "sock"}"']
    with cli_process(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err[-3000:]
    assert "error: NOTIFY_SOCKET='relative/notify.sock' is not supported" in err and "Traceback" not in err
    assert not (tmp_path / "sock").exists()
