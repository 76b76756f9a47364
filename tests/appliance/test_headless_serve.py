"""`appliance serve --headless` as systemd runs it: the environment a unit with
RuntimeDirectory=/LogsDirectory= gives, a real notify socket read in a thread, a real run
started over the control plane. STATUS= says the service's state every few seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.procs import NotifyListener, cli_process

REPO = Path(__file__).resolve().parents[2]


def _statuses(messages):
    return [line[len("STATUS="):] for m in messages for line in m.splitlines() if line.startswith("STATUS=")]


@pytest.mark.slow
def test_serve_headless_reports_state_in_status_and_logs_run_id(tmp_path):
    from appliance.control import ControlClient

    run_dir, logs, sock = tmp_path / "runs", tmp_path / "log", tmp_path / "rt"
    logs.mkdir()
    sock.mkdir(mode=0o700)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM")}
    env.update(PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""), NOTIFY_SOCKET=str(tmp_path / "notify.sock"),
               LOGS_DIRECTORY=str(logs), RUNTIME_DIRECTORY=str(sock))
    args = [sys.executable, "-m", "appliance", "serve", "--headless", "--output", str(run_dir),
            "--set", "source.synthetic.tile_size=128", "--set", "source.rate_hz=10", "--set", "offload.enabled=false"]
    with NotifyListener(env["NOTIFY_SOCKET"]) as notify, \
            cli_process(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path) as proc:
        notify.wait_for(lambda ms: any("READY=1" in m for m in ms), timeout=120)
        # the reporter's own STATUS after READY's: the idle state, every 5 s
        notify.wait_for(lambda ms: _statuses(ms).count("idle: waiting for `ctl start`") >= 2, timeout=60)
        with ControlClient(sock, timeout_s=10) as client:
            assert client.request("start", run_id="H1", set=["run.cycles=16"])["run_id"] == "H1"
            got = notify.wait_for(lambda ms: any(s.startswith("acquiring: run H1, cycle") and "frames/s" in s for s in _statuses(ms)), timeout=300)
            deadline = time.monotonic() + 300
            while client.request("status")["state"] != "idle":
                assert time.monotonic() < deadline, "the run did not finish"
                time.sleep(0.5)
        notify.wait_for(lambda ms: "idle: waiting for `ctl start` (last run H1)" in _statuses(ms), timeout=60)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        messages = notify.wait_for(lambda ms: any("STOPPING=1" in m for m in ms), timeout=30)
    assert proc.returncode == 0, err[-3000:]
    statuses = _statuses(messages)
    # before its first frame the run says what it does: its processes start, then (for long
    # enough to be seen at larger tiles) the source pre-renders; never "acquiring" at 0 frames/s
    assert any(s.startswith(("starting: run H1", "pre-render: run H1")) for s in statuses), statuses
    acquiring = [s for s in _statuses(got) if s.startswith("acquiring: run H1")]
    assert all("drop" in s and "/16, " in s for s in acquiring), acquiring
    # the supervisor's JSON-lines copy in LogsDirectory carries the run id of the run's records
    records = [json.loads(line) for line in (logs / "appliance.jsonl").read_text().splitlines()]
    assert records and any(r.get("run_id") == "H1" for r in records)
    assert all(r.get("run_id") in (None, "H1") for r in records)
