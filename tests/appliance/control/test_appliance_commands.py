"""The appliance's own commands as docs/control-protocol.md describes them: `set` is typed and
shows in `status.config`, command error codes are in `help`, cleared alerts go out on `alert`,
and `control.enabled = false` serves nothing."""

from __future__ import annotations

import pytest

from appliance.config import load_config
from appliance.control import ControlClient, ControlError, ControlServer
from appliance.pipeline import Supervisor, SupervisorError
from appliance.pipeline.supervisor import start_control_server


def _config(tmp_path, *overrides):
    return load_config(None, [f'output.root="{tmp_path / "runs"}"', f'control.socket_dir="{tmp_path / "sock"}"', *overrides])


@pytest.fixture
def run(tmp_path):
    """A (not started) run's commands served as `appliance run` serves them, and a client."""
    sup = Supervisor(_config(tmp_path), run_id="DOC")
    sup.state_dir.mkdir(parents=True)
    server = start_control_server(sup.config.control, sup.control_commands())
    try:
        with ControlClient(tmp_path / "sock", timeout_s=5) as client:
            yield sup, client
    finally:
        server.stop()


def _error(client, cmd, **args) -> ControlError:
    with pytest.raises(ControlError) as info:
        client.request(cmd, **args)
    return info.value


def test_set_is_a_number_and_status_config_follows(run):
    sup, client = run
    spec = client.request("help", command="set")["commands"]["set"]
    assert spec["args"]["value"]["type"] == "float"  # not "any": only numbers are taken
    assert "source.rate_hz 0 to 100000" in spec["args"]["value"]["help"]
    assert set(spec["errors"]) == {"not_live", "bad_value"}
    assert client.request("status")["config"]["source"]["rate_hz"] != 7.0
    assert client.request("set", key="source.rate_hz", value=7)["source.rate_hz"] == 7.0
    assert client.request("status")["config"]["source"]["rate_hz"] == 7.0
    client.request("set", key="alerts.budget_within", value=0.5)
    assert client.request("status")["config"]["alerts"]["budget_within"] == 0.5
    assert sup.alerts.rules.budget_within == 0.5
    assert _error(client, "set", key="source.rate_hz", value="fast").code == "bad_args"
    assert _error(client, "set", key="run.cycles", value=3).code == "not_live"
    assert _error(client, "set", key="source.rate_hz", value=-1).code == "bad_value"


def test_help_lists_the_run_commands_error_codes(run):
    _, client = run
    commands = client.request("help")["commands"]
    assert set(commands["pause"]["errors"]) == {"not_running"}
    assert set(commands["resume"]["errors"]) == {"not_running"}
    assert commands["status"]["errors"] == {}


def test_cleared_alerts_are_published_on_alert(tmp_path):
    """Over the run's real control server: a SUB on `alert` gets the alert raised and cleared
    (kind "event", with its `cleared` time); a plain event goes out on `event`."""
    import time

    import msgpack
    import zmq

    sup = Supervisor(_config(tmp_path), run_id="AL")
    sup.state_dir.mkdir(parents=True)
    server = sup._start_control()  # what a run serves: sup.publish is the server's
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"alert")
        sub.setsockopt(zmq.SUBSCRIBE, b"event")
        sub.connect(server.endpoints["events"])
        deadline = time.monotonic() + 5
        while server.counters()["subscriptions"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        ring = {"occupancy": 0, "n_slots": 8, "written": 10, "read": 10, "drops": 3}
        for change in sup.alerts.update({"rings": {"raw.0.0": ring}}, 1.0) + sup.alerts.update({"rings": {"raw.0.0": ring}}, 2.0):
            a = change.alert
            if change.action == "raised":  # as the supervisor reports each change (_sample_stats)
                sup._event("alert", a.message, rule=a.rule, subject=a.subject, severity=a.severity, first_seen=a.first_seen)
            else:
                sup._event("event", f"cleared: {a.message}", rule=a.rule, subject=a.subject, cleared=a.cleared)
        sup._event("event", "acquisition paused")
        got = []
        while len(got) < 3 and sub.poll(5000):
            topic, body = sub.recv_multipart()
            got.append((topic.decode(), msgpack.unpackb(body, raw=False)["data"]))
    finally:
        sub.close()
        ctx.term()
        sup._stop_control(server)
    assert [(t, e.get("rule"), "cleared" in e) for t, e in got] == [
        ("alert", "frames_dropped", False), ("alert", "frames_dropped", True), ("event", None, False)]
    assert got[1][1]["kind"] == "event" and got[1][1]["message"].startswith("cleared: ")


def test_control_disabled_serves_nothing(tmp_path):
    from appliance.service import Service

    with pytest.raises(SupervisorError, match="control.enabled = false.*control.enabled = true"):
        Service(None, [f'output.root="{tmp_path / "runs"}"', f'control.socket_dir="{tmp_path / "sock"}"',
                       "offload.enabled=false", "control.enabled=false"]).start()
    assert not (tmp_path / "sock").exists()
    cfg = _config(tmp_path, "control.enabled=false")
    with pytest.raises(SupervisorError, match="control.enabled = false"):
        start_control_server(cfg.control, {})
    assert not (tmp_path / "sock").exists()
    # enabled: the same directory serves
    with ControlServer(handlers={}, run_dir_for_sockets=tmp_path / "sock"):
        assert (tmp_path / "sock" / "control.sock").exists()


def test_the_document_lists_every_run_state(run):
    import re
    from pathlib import Path

    from appliance.pipeline.core import RunState

    doc = (Path(__file__).resolve().parents[3] / "docs" / "control-protocol.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| `status` |"))
    listed = set(re.findall(r"`([a-z_]+)`", row.split("`state`", 1)[1].split("`config`", 1)[0]))
    assert listed == {s.value for s in RunState}
    _, client = run
    assert client.request("status")["state"] in listed


def test_serve_describes_the_same_codes_and_types_as_a_run(tmp_path):
    """`appliance serve` forwards run commands to its current run: its `help` gives them the run's
    argument types and error codes (plus not_running while idle), and `start` its own codes."""
    from appliance.service import Service

    svc = Service(None, (f'output.root="{tmp_path / "runs"}"', f'control.socket_dir="{tmp_path / "sock"}"', "offload.enabled=false"))
    cmds = {name: c.describe() for name, c in svc._commands().items()}
    assert cmds["set"]["args"]["value"]["type"] == "float"
    assert set(cmds["set"]["errors"]) == {"not_running", "not_live", "bad_value"}
    assert {"stop", "pause", "resume"} <= {n for n, c in cmds.items() if "not_running" in c["errors"]}
    assert set(cmds["start"]["errors"]) == {"busy", "bad_config", "tuning_drift"}
    with pytest.raises(Exception) as info:  # idle: the code help promised
        svc._commands()["pause"]({})
    assert info.value.code == "not_running"
