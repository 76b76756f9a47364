"""The run's and the service's control commands over real sockets: argument checks answer
``bad_args`` (never ``internal``), and a control plane that cannot start is a named error."""

from __future__ import annotations

import os

import pytest

from appliance.cli import main
from appliance.config import load_config
from appliance.control import ControlClient, ControlError
from appliance.pipeline import Supervisor, SupervisorError
from appliance.pipeline.supervisor import start_control_server


def _config(tmp_path, *overrides):
    return load_config(None, [f'output.root="{tmp_path / "runs"}"', f'control.socket_dir="{tmp_path / "sock"}"', *overrides])


def _error(client, cmd, **args) -> ControlError:
    with pytest.raises(ControlError) as info:
        client.request(cmd, **args)
    return info.value


@pytest.fixture
def run_client(tmp_path):
    """A client of a (not started) run's control commands, served as `appliance run` does."""
    cfg = _config(tmp_path)
    sup = Supervisor(cfg, run_id="CMD")
    sup.state_dir.mkdir(parents=True)  # set_live keeps the live parameters there
    server = start_control_server(cfg.control, sup.control_commands())
    try:
        with ControlClient(tmp_path / "sock", timeout_s=5) as client:
            yield client
    finally:
        server.stop()


@pytest.fixture
def service(tmp_path):
    """An `appliance serve` service on a private socket directory, and a client of it."""
    from appliance.service import Service

    svc = Service(None, [f'output.root="{tmp_path / "runs"}"', f'control.socket_dir="{tmp_path / "sock"}"', "offload.enabled=false"]).start()
    try:
        with ControlClient(tmp_path / "sock", timeout_s=5) as client:
            yield svc, client
    finally:
        svc.shutdown()


def test_run_set_requires_key_and_value(run_client):
    err = _error(run_client, "set")  # was `internal: KeyError`
    assert err.code == "bad_args" and "'key'" in err.message
    err = _error(run_client, "set", key="source.rate_hz")
    assert err.code == "bad_args" and "'value'" in err.message
    spec = run_client.request("help", command="set")["commands"]["set"]["args"]
    assert spec["key"]["required"] and spec["value"]["required"]
    assert run_client.request("set", key="source.rate_hz", value=5) == {"source.rate_hz": 5.0}


def test_run_events_last_is_at_least_zero(run_client):
    for rate in (5, 6, 7):  # each change is an event
        run_client.request("set", key="source.rate_hz", value=rate)
    assert len(run_client.request("events")) == 3
    assert run_client.request("events", last=0) == []  # was every event
    assert [e["message"] for e in run_client.request("events", last=1)] == ["live parameter source.rate_hz set to 7"]
    assert len(run_client.request("events", last=100)) == 3
    err = _error(run_client, "events", last=-2)
    assert err.code == "bad_args" and "'last'" in err.message
    assert run_client.request("help", command="events")["commands"]["events"]["args"]["last"]["min"] == 0


def test_service_set_requires_key_and_value(service):
    _, client = service
    err = _error(client, "set")
    assert err.code == "bad_args" and "'key'" in err.message
    spec = client.request("help", command="set")["commands"]["set"]["args"]
    assert spec["key"]["required"] and spec["value"]["required"]


def test_service_start_checks_each_override(service):
    _, client = service
    # each item of `set` must be a "key=value" string (was `internal: TypeError` for [1])
    for bad, shown in (([1], "item 0 is 1"), (["run.cycles=3", "nokey"], "item 1 is 'nokey'"), (["=3"], "item 0")):
        err = _error(client, "start", set=bad)
        assert err.code == "bad_args" and shown in err.message and "section.key=value" in err.message
    assert client.request("status")["state"] == "idle"  # nothing was started


def test_service_events_last_is_at_least_zero(service):
    svc, client = service
    assert _error(client, "events", last=-1).code == "bad_args"
    # between runs, `events` answers from the last run, with the same rules
    last = Supervisor(svc.base, run_id="LAST")
    last.pause(), last.resume(), last.pause()
    svc.supervisor = last
    assert client.request("events", last=0) == []
    assert [e["message"] for e in client.request("events", last=2)] == ["acquisition resumed", "acquisition paused"]
    assert len(client.request("events")) == 3
    assert _error(client, "events", last=-1).code == "bad_args"


def test_a_control_plane_that_cannot_start_is_a_supervisor_error(tmp_path):
    # the constructor's errors (a TCP endpoint without a port) ...
    (tmp_path / "curve").mkdir()
    cfg = _config(tmp_path, 'control.tcp="tcp://127.0.0.1"', f'control.curve_dir="{tmp_path / "curve"}"')
    with pytest.raises(SupervisorError, match="control plane: TCP endpoint 'tcp://127.0.0.1' is not tcp://HOST:PORT"):
        start_control_server(cfg.control, {})
    # ... and an unusable socket directory (SocketDirError, an OSError), not tracebacks
    cfg = load_config(None, [f'control.socket_dir="{tmp_path / ("d" * 120)}"'])
    with pytest.raises(SupervisorError, match="control plane: .*107"):
        start_control_server(cfg.control, {})
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)
    cfg = load_config(None, [f'control.socket_dir="{shared}"'])
    with pytest.raises(SupervisorError, match="control plane: socket directory .* is shared"):
        start_control_server(cfg.control, {})
    assert os.stat(shared).st_mode & 0o7777 == 0o1777


def test_serve_with_an_unusable_control_plane_exits_1_naming_it(tmp_path, capsys):
    rc = main(["serve", "--set", f'output.root="{tmp_path / "runs"}"', "--set", "offload.enabled=false",
               "--set", 'control.tcp="tcp://127.0.0.1"', "--set", f'control.curve_dir="{tmp_path}"'])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("error: control plane: TCP endpoint") and "Traceback" not in err


def test_a_run_that_fails_to_start_releases_its_control_plane(tmp_path):
    """The metrics port is taken: the run fails before any stage starts, and its control
    server is stopped (sockets and lock released), not left serving a dead run."""
    import socket

    from tests.runs import small_run_config

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        cfg = small_run_config(tmp_path / "runs", f'control.socket_dir="{tmp_path / "sock"}"',
                               f"metrics.port={busy.getsockname()[1]}", 'metrics.address="127.0.0.1"')
        with pytest.raises(OSError):
            Supervisor(cfg, run_id="FAILS").run()
    assert not (tmp_path / "sock" / "control.sock").exists()
    server = start_control_server(cfg.control, {})  # the directory's lock was released
    server.stop()


def test_service_start_checks_the_host_against_the_sysconfig_profile(service):
    """supervisor.sysconfig_profile / strict hold under `appliance serve` as under `appliance run`."""
    from appliance.tuning import startup_check

    _, client = service
    err = _error(client, "start", set=['supervisor.sysconfig_profile="no-such-profile"'])
    assert err.code == "bad_config" and "no-such-profile" in err.message
    drift = startup_check("dev", strict=False)  # this host, as it is
    strict = ['supervisor.sysconfig_profile="dev"', "supervisor.strict=true"]
    if drift:
        err = _error(client, "start", set=strict)
        assert err.code == "tuning_drift" and drift[0][:40] in err.message
        assert client.request("status")["state"] == "idle"  # refused: nothing started
    else:  # a host tuned to the profile: the run starts (and is stopped at once)
        assert client.request("start", set=strict)["started"]
        client.request("stop")


def test_jobs_an_operator_submits_to_the_service_carry_its_instrument(tmp_path):
    from appliance.service import Service

    svc = Service(None, [f'output.root="{tmp_path / "runs"}"', f'control.socket_dir="{tmp_path / "sock"}"',
                         'run.instrument_id="SIM09"', "offload.poll_s=0.2"]).start()
    try:
        with ControlClient(tmp_path / "sock", timeout_s=5) as client:
            job = client.request("jobs.submit", kind="fastq", params={"run": "NONE"})["job"]
        assert svc.orchestrator.ledger.get(job["id"]).instrument_id == "SIM09"
    finally:
        svc.shutdown()
