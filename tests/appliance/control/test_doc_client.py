"""docs/control-protocol.md is the contract: its examples, run as written (only the paths and
host names changed), drive a real server, and the points it promises hold on the wire."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from appliance.control import Arg, Command, CommandError, ControlServer, ControlServerError, SocketDirError
from appliance.control.protocol import MAX_NESTING, MAX_REQUEST_BYTES

DOC = Path(__file__).resolve().parents[3] / "docs" / "control-protocol.md"


def _python_blocks(section: str) -> list[str]:
    """The ```python blocks of one ``## section`` of the document, in order."""
    text = DOC.read_text()
    start = text.index(f"\n## {section}\n")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


def _handlers():
    def pause(args):
        raise CommandError("not_running", "nothing to pause")

    return {
        "echo": Command(lambda a: a, "return the arguments", (Arg("x", "any", required=True),)),
        "pause": Command(pause, "pause", (), {"not_running": "the run is not acquiring"}),
    }


@pytest.fixture
def server(sock_dir):
    with ControlServer(handlers=_handlers(), run_dir_for_sockets=sock_dir, pub_max_hz=50.0) as srv:
        yield srv


@pytest.fixture
def doc_client(server, capsys):
    """The document's request example, run as written against ``server``."""
    request_block, subscribe_block, _curve = _python_blocks("Examples with plain pyzmq")
    ns: dict = {}
    exec(request_block.replace("ipc:///run/appliance/control.sock", server.endpoints["command"]), ns)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "pong" and "'help'" in printed[1]  # what the example prints
    ns["subscribe_block"] = subscribe_block
    yield ns
    ns["s"].close()
    ns["ctx"].term()


def _raw(ns, frames: list[bytes], timeout_ms: int = 3000) -> dict:
    s = ns["s"]
    s.send_multipart(frames)
    assert s.poll(timeout_ms), "no reply"
    return msgpack.unpackb(s.recv_multipart()[-1], raw=False)


def test_the_documented_client_runs_commands_and_reads_errors(doc_client):
    request = doc_client["request"]
    assert request("echo", x=[1, {"a": b"\x00"}]) == {"x": [1, {"a": b"\x00"}]}
    with pytest.raises(RuntimeError, match="^not_running: "):
        request("pause")
    with pytest.raises(RuntimeError, match="^unknown_command: .*'echo'"):
        request("ecko")
    # help lists each command's own error codes, and the server's codes beside them
    help_all = request("help")
    assert help_all["commands"]["pause"]["errors"] == {"not_running": "the run is not acquiring"}
    assert help_all["commands"]["help"]["errors"] == {"unknown_command": "'command' names no command of this server"}
    assert {"bad_request", "bad_version", "too_large", "unknown_command", "bad_args", "internal"} <= set(help_all["error_codes"])


def test_the_documented_subscriber_gets_alerts_raised_and_cleared(server, doc_client):
    block = doc_client["subscribe_block"]
    setup, loop = block.split("while True:")
    ns = {"ctx": doc_client["ctx"], "msgpack": msgpack, "zmq": zmq}
    exec(setup.replace("ipc:///run/appliance/events.sock", server.endpoints["events"]), ns)
    sub = ns["sub"]
    try:
        deadline = time.monotonic() + 10
        got = []
        while time.monotonic() < deadline and len(got) < 2:
            server.publish("alert", {"kind": "alert", "rule": "frames_dropped", "message": "raised"})
            server.publish("alert", {"kind": "event", "rule": "frames_dropped", "message": "cleared: x", "cleared": 1.0})
            server.publish("event", {"kind": "event", "message": "not subscribed"})
            while sub.poll(100):
                topic, body = sub.recv_multipart()  # as the example reads them
                got.append((topic.decode(), msgpack.unpackb(body, raw=False)))
        assert {t for t, _ in got} == {"alert"}
        assert {m["data"]["message"] for _, m in got} >= {"raised", "cleared: x"}
        assert all(m["seq"] >= 1 and m["topic"] == "alert" for _, m in got)
    finally:
        sub.close()


def test_req_client_gets_bad_request_for_two_frames_and_can_go_on(server):
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    req.connect(server.endpoints["command"])
    try:
        body = msgpack.packb({"v": 1, "id": "two", "cmd": "ping"})
        req.send_multipart([body, body])
        assert req.poll(3000), "REQ never got the bad_request reply"
        reply = msgpack.unpackb(req.recv(), raw=False)
        assert reply["error"]["code"] == "bad_request" and "2 frames" in reply["error"]["message"]
        assert reply["id"] == "two"
        req.send(msgpack.packb({"v": 1, "id": "next", "cmd": "ping"}))  # the socket is not stuck
        assert req.poll(3000)
        assert msgpack.unpackb(req.recv(), raw=False) == {"v": 1, "id": "next", "ok": True, "result": "pong"}
    finally:
        req.close()
        ctx.term()


@pytest.mark.parametrize(
    "case",
    ["too_large", "bad_utf8_elsewhere", "too_deep_for_msgpack", "id_too_long", "three_frames_dealer"],
)
def test_the_id_is_echoed_whenever_it_can_be_read(doc_client, case):
    rid = "x" * 129 if case == "id_too_long" else f"id-{case}"
    head = b"\x84" + msgpack.packb("id") + msgpack.packb(rid) + msgpack.packb("v") + b"\x01" + msgpack.packb("cmd") + msgpack.packb("echo")
    if case == "too_large":
        frames = [msgpack.packb({"id": rid, "v": 1, "cmd": "echo", "args": {"x": "y" * MAX_REQUEST_BYTES}})]
        code = "too_large"
    elif case == "bad_utf8_elsewhere":
        frames = [head + msgpack.packb("args") + b"\x81\xa1x\xa2\xff\xfe"]  # args.x: invalid UTF-8
        code = "bad_request"
    elif case == "too_deep_for_msgpack":
        frames = [head + msgpack.packb("args") + b"\x81\xa1x" + b"\x91" * 5000 + b"\x01"]
        code = "bad_request"
    elif case == "id_too_long":
        frames = [msgpack.packb({"id": rid, "v": 1, "cmd": "ping"})]
        code = "bad_request"
    else:
        frames = [msgpack.packb({"id": rid, "v": 1, "cmd": "ping"}), b"extra"]
        code = "bad_request"
    reply = _raw(doc_client, frames)
    assert reply["ok"] is False and reply["error"]["code"] == code
    assert reply["id"] == rid


def test_nesting_limit_is_the_documented_one(doc_client):
    request = doc_client["request"]
    value: object = 1
    for _ in range(MAX_NESTING):
        value = [value]
    assert MAX_NESTING == 32  # what the document states
    assert request("echo", x=value) == {"x": value}  # 32 arrays inside args: accepted
    with pytest.raises(RuntimeError, match="^bad_request: .*nested more than 32"):
        request("echo", x=[value])


def test_a_too_long_socket_path_leaves_nothing_behind(tmp_path):
    parent = tmp_path / "p"
    d = parent / ("d" * 120)
    with pytest.raises(SocketDirError, match="bytes; Unix sockets allow 107"):
        ControlServer(handlers={}, run_dir_for_sockets=d).start()
    assert not parent.exists()


def test_the_documented_curve_recipe_and_the_secret_key_mode(tmp_path, capsys):
    recipe = _python_blocks("TCP with CURVE")[0]
    curve, home = tmp_path / "curve", tmp_path / "me"
    exec(recipe.replace("/etc/appliance/curve", str(curve)).replace("/home/me/.appliance", str(home))
         .replace("/path/to/me.key", str(home / "me.key")), {})
    assert (curve / "authorized_clients" / "me.key").is_file()
    # the recipe's keys are accepted, and the documented client code reaches the server over TCP
    with ControlServer(handlers={}, run_dir_for_sockets=tmp_path / "s", tcp="tcp://127.0.0.1:*", curve_dir=curve) as srv:
        _req, _sub, curve_block = _python_blocks("Examples with plain pyzmq")
        ctx = zmq.Context()
        s, sub = ctx.socket(zmq.DEALER), ctx.socket(zmq.SUB)
        try:
            for sock in (s, sub):
                sock.setsockopt(zmq.LINGER, 0)
            host_port = srv.endpoints["tcp_command"].rsplit(":", 1)[1]
            events_port = srv.endpoints["tcp_events"].rsplit(":", 1)[1]
            exec(curve_block.replace('"me.key_secret"', repr(str(home / "me.key_secret")))
                 .replace('"server.key"', repr(str(curve / "server.key")))
                 .replace("tcp://imager1:5560", f"tcp://127.0.0.1:{host_port}")
                 .replace("tcp://imager1:5561", f"tcp://127.0.0.1:{events_port}"), {"s": s, "sub": sub, "zmq": zmq})
            s.send(msgpack.packb({"v": 1, "id": "t1", "cmd": "ping"}))
            assert s.poll(5000), "no reply over CURVE"
            assert msgpack.unpackb(s.recv(), raw=False)["result"] == "pong"
        finally:
            s.close()
            sub.close()
            ctx.term()
    # a group- or world-readable secret key is refused, naming the fix
    os.chmod(curve / "server.key_secret", 0o644)
    with pytest.raises(ControlServerError, match=r"mode 0644.*chmod 600 .*server\.key_secret"):
        ControlServer(handlers={}, run_dir_for_sockets=tmp_path / "s2", tcp="tcp://127.0.0.1:*", curve_dir=curve).start()
    assert not (tmp_path / "s2" / "control.sock").exists()


def test_long_subscription_prefixes_match_nothing_and_do_not_hurt(server, doc_client):
    """The document: a prefix of 1015 bytes or more is never registered; others keep working."""
    ctx = doc_client["ctx"]
    long_sub, ok_sub = ctx.socket(zmq.SUB), ctx.socket(zmq.SUB)
    try:
        for s, prefix in ((long_sub, b"stats" + b"x" * 1010), (ok_sub, b"stats")):
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SUBSCRIBE, prefix)
            s.connect(server.endpoints["events"])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not ok_sub.poll(50):
            server.publish("stats", {"n": 1})
        assert ok_sub.poll(0), "the ordinary subscriber got nothing"
        assert not long_sub.poll(200)
        assert doc_client["request"]("ping") == "pong"
    finally:
        long_sub.close()
        ok_sub.close()
