"""TCP only with CURVE: a keyed client works, no keys or an unknown key gets nothing."""

from __future__ import annotations

import pytest
import zmq

from appliance.control import (
    ControlClient,
    ControlRefused,
    ControlServer,
    CurveKeyError,
    CurveKeys,
    authorize_client,
    create_client_keys,
    create_server_keys,
)
from appliance.control.protocol import encode_request

from .conftest import wait_for


@pytest.fixture
def keyed(tmp_path):
    curve_dir = tmp_path / "curve"
    server_public, _ = create_server_keys(curve_dir)
    _, good_secret = create_client_keys(tmp_path / "good", "operator")
    authorize_client(curve_dir, tmp_path / "good" / "operator.key")
    _, stranger_secret = create_client_keys(tmp_path / "stranger", "stranger")
    return {
        "curve_dir": curve_dir,
        "good": CurveKeys.from_files(good_secret, server_public),
        "stranger": CurveKeys.from_files(stranger_secret, server_public),
        "server_public": server_public,
        "good_secret_file": good_secret,
    }


@pytest.fixture
def tcp_server(tmp_path, keyed):
    with ControlServer(handlers={"status": lambda a: {"state": "idle"}}, run_dir_for_sockets=tmp_path / "s",
                       tcp="tcp://127.0.0.1:*", curve_dir=keyed["curve_dir"]) as srv:
        yield srv


def test_keyed_client_commands_and_events(tcp_server, keyed):
    ep = tcp_server.endpoints["tcp_command"]
    assert tcp_server.endpoints["tcp_events"].rsplit(":", 1)[1] == str(int(ep.rsplit(":", 1)[1]) + 1)
    with ControlClient(ep, timeout_s=3.0, curve_keys=keyed["good"]) as c:
        assert c.request("ping") == "pong"
        assert c.request("status") == {"state": "idle"}
        with c.subscribe(["event"], timeout_s=3.0) as sub:
            wait_for(lambda: tcp_server.counters()["subscriptions"] >= 1, what="subscription over TCP")
            tcp_server.publish("event", {"kind": "hello"})
            assert sub.recv(3.0)[1]["data"] == {"kind": "hello"}
    assert "tcp" not in repr(keyed["good"]) and keyed["good"].secret.decode() not in repr(keyed["good"])


def test_client_without_keys_is_refused(tcp_server):
    ep = tcp_server.endpoints["tcp_command"]
    with ControlClient(ep, timeout_s=1.0) as c, pytest.raises(ControlRefused, match="handshake failed"):
        c.request("ping")
    # A plain pyzmq DEALER (no IMMEDIATE) queues the request and never gets an answer.
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(ep)
    s.send(encode_request("ping", req_id="x"))
    try:
        assert not s.poll(500)
    finally:
        s.close()
        ctx.term()
    assert tcp_server.counters()["requests"] == 0
    wait_for(lambda: tcp_server.counters()["auth_failures"] >= 2, what="the failed handshakes to be counted")


def test_unknown_key_is_refused(tcp_server, keyed):
    with ControlClient(tcp_server.endpoints["tcp_command"], timeout_s=1.0, curve_keys=keyed["stranger"]) as c:
        with pytest.raises(ControlRefused, match="authorized_clients"):
            c.request("ping")
    assert tcp_server.counters()["requests"] == 0
    wait_for(lambda: tcp_server.counters()["auth_failures"] >= 1, what="the refused key to be counted")


def test_ipc_still_works_beside_tcp(tcp_server, tmp_path):
    with ControlClient(tmp_path / "s") as c:
        assert c.request("ping") == "pong"


def test_key_errors(tmp_path, keyed):
    with pytest.raises(CurveKeyError, match="no secret"):
        CurveKeys.from_files(keyed["server_public"], keyed["server_public"])
    with pytest.raises(CurveKeyError, match="does not exist"):
        CurveKeys.from_files(tmp_path / "nope.key_secret", keyed["server_public"])
    (tmp_path / "empty").mkdir()
    from appliance.control import ControlServerError

    with pytest.raises(ControlServerError, match="does not exist"):
        ControlServer(handlers={}, run_dir_for_sockets=tmp_path / "s2", tcp="tcp://127.0.0.1:*", curve_dir=tmp_path / "empty").start()
    assert not (tmp_path / "s2" / "control.sock").exists()


def test_ctl_over_tcp(tcp_server, keyed, capsys):
    import json

    from appliance.cli import main

    ep = tcp_server.endpoints["tcp_command"]
    keys = ["--client-key", str(keyed["good_secret_file"]), "--server-key", str(keyed["server_public"])]
    assert main(["ctl", "--connect", ep, *keys, "--json", "status"]) == 0
    assert json.loads(capsys.readouterr().out) == {"state": "idle"}
    assert main(["ctl", "--connect", ep, "--timeout", "1", "--json", "status"]) == 3
    err = json.loads(capsys.readouterr().out)["error"]
    assert err["code"] == "unreachable" and "handshake" in err["message"]
    assert main(["ctl", "--connect", ep, "--client-key", str(keyed["server_public"]), "--server-key", str(keyed["server_public"]), "ping"]) == 2
    assert "no secret" in capsys.readouterr().err


def test_ctl_refuses_a_client_key_others_can_read(tcp_server, keyed, capsys):
    """As ssh refuses such a private key: exit 2, naming the file and the chmod that fixes it."""
    import os

    from appliance.cli import main

    secret = keyed["good_secret_file"]
    keys = ["--client-key", str(secret), "--server-key", str(keyed["server_public"])]
    os.chmod(secret, 0o640)
    assert main(["ctl", "--connect", tcp_server.endpoints["tcp_command"], *keys, "ping"]) == 2
    err = capsys.readouterr().err
    assert f"chmod 600 {secret}" in err and "mode 0640" in err
    os.chmod(secret, 0o600)  # fixed as the message says: the same key works
    assert main(["ctl", "--connect", tcp_server.endpoints["tcp_command"], *keys, "ping"]) == 0
    assert capsys.readouterr().out.strip() == "pong"
