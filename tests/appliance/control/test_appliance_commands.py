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
    sup = Supervisor(_config(tmp_path), run_id="AL")
    sent: list[tuple[str, dict]] = []
    sup.publish = lambda topic, ev: sent.append((topic, ev))
    ring = {"occupancy": 0, "n_slots": 8, "written": 10, "read": 10, "drops": 3}
    for change in sup.alerts.update({"rings": {"raw.0.0": ring}}, 1.0) + sup.alerts.update({"rings": {"raw.0.0": ring}}, 2.0):
        a = change.alert
        if change.action == "raised":  # as the supervisor reports each change
            sup._event("alert", a.message, rule=a.rule, subject=a.subject, severity=a.severity, first_seen=a.first_seen)
        else:
            sup._event("event", f"cleared: {a.message}", rule=a.rule, subject=a.subject, cleared=a.cleared)
    assert [(t, e["rule"], "cleared" in e) for t, e in sent] == [("alert", "frames_dropped", False), ("alert", "frames_dropped", True)]
    sup._event("event", "acquisition paused")
    assert sent[-1][0] == "event"


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
