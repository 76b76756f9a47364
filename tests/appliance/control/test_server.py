"""The control server over real ipc:// sockets: replies, errors, limits, files, PUB."""

from __future__ import annotations

import math
import os
import stat
import threading
import time

import msgpack
import pytest
import zmq

from appliance.control import (
    Arg,
    Command,
    CommandError,
    ControlClient,
    ControlError,
    ControlServer,
    ControlServerError,
    ControlTimeout,
    ControlUnreachable,
    MAX_REQUEST_BYTES,
)
from appliance.control.protocol import decode_reply, encode_request

from .conftest import wait_for


def _handlers(calls: list | None = None):
    def boom(args):
        raise RuntimeError("handler bug")

    def refuse(args):
        raise CommandError("not_running", "no run is in progress: start one with start_run")

    return {
        "echo": Command(lambda a: a, "return the arguments", (Arg("x", "int", required=True), Arg("note", "str"))),
        "boom": boom,
        "refuse": refuse,
        "bytes": lambda a: {"blob": b"\x00\x01", "n": 3},
    }


@pytest.fixture
def server(sock_dir):
    with ControlServer(handlers=_handlers(), run_dir_for_sockets=sock_dir, pub_max_hz=20.0) as srv:
        yield srv


@pytest.fixture
def client(server, sock_dir):
    with ControlClient(sock_dir, timeout_s=2.0) as c:
        yield c


@pytest.fixture
def raw(server):
    """A plain pyzmq DEALER on the command socket, for sending what a client library would not."""
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(server.endpoints["command"])
    yield s
    s.close()
    ctx.term()


def _recv(sock, timeout_ms=2000):
    assert sock.poll(timeout_ms), "no reply"
    return decode_reply(sock.recv_multipart()[-1])


def test_round_trips_and_builtins(client):
    assert client.request("ping") == "pong"
    assert client.request("version")["protocol"] == 1
    assert client.request("echo", x=3, note="hi") == {"x": 3, "note": "hi"}
    assert client.request("bytes") == {"blob": b"\x00\x01", "n": 3}
    helptext = client.request("help")
    assert {"ping", "version", "help", "control_status", "echo", "boom"} <= set(helptext["commands"])
    assert helptext["commands"]["echo"]["args"]["x"] == {"type": "int", "required": True, "help": ""}
    assert "bad_version" in helptext["error_codes"]
    assert set(helptext) == {"protocol", "commands", "error_codes", "topics"}
    # with `command`, only that command (docs/control-protocol.md, Built-in commands)
    assert client.request("help", command="echo") == {"commands": {"echo": helptext["commands"]["echo"]}}


def test_error_replies(client, server):
    cases = [
        (("nope", {}), "unknown_command"),
        (("ecko", {}), "unknown_command"),
        (("echo", {}), "bad_args"),
        (("echo", {"x": "3"}), "bad_args"),
        (("echo", {"x": 1, "y": 2}), "bad_args"),
        (("boom", {}), "internal"),
        (("refuse", {}), "not_running"),
        (("help", {"command": "nope"}), "unknown_command"),
    ]
    for (cmd, args), code in cases:
        with pytest.raises(ControlError) as info:
            client.request(cmd, **args)
        assert info.value.code == code, (cmd, info.value)
    with pytest.raises(ControlError, match="did you mean 'echo'"):
        client.request("ecko")
    with pytest.raises(ControlError, match="RuntimeError: handler bug"):
        client.request("boom")
    assert client.request("ping") == "pong"  # still serving after a handler exception
    errors = server.counters()["errors"]
    assert errors["internal"] == 2 and errors["unknown_command"] == 4 and errors["not_running"] == 1


def test_bad_version_and_unknown_fields_echo_the_id(raw):
    raw.send(msgpack.packb({"v": 2, "id": "r1", "cmd": "ping", "args": {}}))
    reply = _recv(raw)
    assert reply["id"] == "r1" and not reply["ok"] and reply["error"]["code"] == "bad_version"
    assert "version 1" in reply["error"]["message"]
    raw.send(msgpack.packb({"v": 1, "id": "r2", "cmd": "ping", "when": 1}))
    reply = _recv(raw)
    assert reply["id"] == "r2" and reply["error"]["code"] == "bad_request" and "'when'" in reply["error"]["message"]


def test_wrong_shapes_and_garbage_get_error_replies(raw, server):
    raw.send_multipart([b"a", b"b", b"c"])
    reply = _recv(raw)
    assert reply["id"] is None and reply["error"]["code"] == "bad_request" and "3 frames" in reply["error"]["message"]
    raw.send(b"\xc1\xff not msgpack")
    assert _recv(raw)["error"]["code"] == "bad_request"
    raw.send_multipart([b"", encode_request("ping", req_id="q")])  # a REQ-style envelope
    frames = raw.recv_multipart()
    assert frames[0] == b"" and decode_reply(frames[1])["result"] == "pong"


def test_req_socket_client(server):
    ctx = zmq.Context()
    try:
        s = ctx.socket(zmq.REQ)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(server.endpoints["command"])
        s.send(encode_request("echo", {"x": 1}, req_id="req-1"))
        assert s.poll(2000)
        assert decode_reply(s.recv()) == {"v": 1, "id": "req-1", "ok": True, "result": {"x": 1}}
        s.close()
    finally:
        ctx.term()


def test_oversized_requests(raw, server, sock_dir):
    raw.send(encode_request("echo", {"x": 1, "note": "x" * MAX_REQUEST_BYTES}, req_id="big"))
    reply = _recv(raw)
    assert reply["id"] == "big" and reply["error"]["code"] == "too_large"  # the id is echoed
    # Beyond the hard frame limit libzmq drops the connection: no reply, the server lives on.
    raw.send(b"\x00" * (2 * 1024 * 1024))
    assert not raw.poll(300)
    with ControlClient(sock_dir) as c:
        assert c.request("ping") == "pong"


def test_timeout_does_not_wedge_the_client(sock_dir):
    gate = threading.Event()

    def slow(args):
        gate.wait(2.0)
        return "late"

    with ControlServer(handlers={"slow": slow}, run_dir_for_sockets=sock_dir) as srv:
        with ControlClient(sock_dir, timeout_s=0.2) as c:
            with pytest.raises(ControlTimeout):
                c.request("slow")
            gate.set()
            assert c.request("ping", timeout_s=2.0) == "pong"  # the late 'late' reply is skipped
        assert srv.counters()["replies_ok"] == 2


def test_socket_files_and_permissions(sock_dir):
    sock_dir.mkdir(mode=0o755)
    os.chmod(sock_dir, 0o755)
    srv = ControlServer(handlers={}, run_dir_for_sockets=sock_dir).start()
    try:
        assert stat.S_IMODE(os.stat(sock_dir).st_mode) == 0o700
        for name in ("control.sock", "events.sock", "control.lock"):
            st = os.stat(sock_dir / name)
            assert stat.S_IMODE(st.st_mode) == 0o600, name
        assert stat.S_ISSOCK(os.stat(sock_dir / "control.sock").st_mode)
        assert srv.endpoints == {"command": f"ipc://{sock_dir}/control.sock", "events": f"ipc://{sock_dir}/events.sock"}
        with pytest.raises(ControlServerError, match="another appliance"):
            ControlServer(handlers={}, run_dir_for_sockets=sock_dir).start()
        with ControlClient(sock_dir) as c:  # the refused second server did not disturb the first
            assert c.request("ping") == "pong"
    finally:
        srv.stop()
        srv.stop()  # idempotent
    assert sorted(os.listdir(sock_dir)) == []
    with pytest.raises(ControlServerError, match="stopped"):
        srv.start()
    with ControlClient(sock_dir) as c, pytest.raises(ControlUnreachable, match="no control socket"):
        c.request("ping")
    with ControlServer(handlers={}, run_dir_for_sockets=sock_dir):  # the directory is free again
        pass


def test_constructor_checks(sock_dir):
    with pytest.raises(ControlServerError, match="built in"):
        ControlServer(handlers={"ping": lambda a: 1}, run_dir_for_sockets=sock_dir)
    with pytest.raises(ControlServerError, match="command name"):
        ControlServer(handlers={"Bad Name": lambda a: 1}, run_dir_for_sockets=sock_dir)
    with pytest.raises(ControlServerError, match="CURVE"):
        ControlServer(handlers={}, run_dir_for_sockets=sock_dir, tcp="tcp://127.0.0.1:5560")
    with pytest.raises(ControlServerError, match="ipc://"):
        ControlServer("tcp://127.0.0.1:5560", handlers={}, run_dir_for_sockets=sock_dir)


def test_stats_are_rate_limited_and_events_all_arrive(server, client):
    hz = server.pub_max_hz
    with client.subscribe(["stats", "event"], timeout_s=0.5) as sub:
        wait_for(lambda: server.counters()["subscriptions"] >= 2, what="subscriptions")
        t0 = time.monotonic()
        for i in range(1000):
            assert server.publish("stats", {"i": i})
            if i % 20 == 0:
                assert server.publish("event", {"i": i})
        stats, events, t_last = [], [], t0
        try:
            for topic, body in sub:
                (stats if topic == "stats" else events).append(body)
                if topic == "stats":
                    t_last = time.monotonic()
        except ControlTimeout:
            pass
    # Sends are at least 1/hz apart, so within [t0, t_last] at most floor(d*hz)+1 went out.
    assert 2 <= len(stats) <= math.ceil((t_last - t0) * hz) + 1
    assert stats[-1]["data"] == {"i": 999} and stats[-1]["seq"] == 1000  # the latest value wins
    assert [e["data"]["i"] for e in events] == list(range(0, 1000, 20))
    assert [e["seq"] for e in events] == list(range(1, 51))
    assert sub.missed == {"stats": 1000 - len(stats) - (stats[0]["seq"] - 1), "event": 0}
    pub = server.counters()["pub"]
    assert pub["stats"]["published"] == 1000
    assert pub["stats"]["sent"] + pub["stats"]["coalesced"] == 1000
    assert pub["event"] == {"published": 50, "sent": 50, "coalesced": 0, "dropped": 0}


def test_publish_from_many_threads(server, client):
    with client.subscribe(["alert", "log"], timeout_s=2.0) as sub:
        wait_for(lambda: server.counters()["subscriptions"] >= 2, what="subscriptions")

        def worker(k):
            for i in range(200):
                server.publish("alert" if i % 2 else "log", {"k": k, "i": i})

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        got = {(b["data"]["k"], b["data"]["i"]) for _, b in (sub.recv(2.0) for _ in range(800))}
    assert got == {(k, i) for k in range(4) for i in range(200)}
    with pytest.raises(ValueError, match="topic"):
        server.publish("metrics", {})


def test_publish_after_stop_is_counted(sock_dir):
    srv = ControlServer(handlers={}, run_dir_for_sockets=sock_dir).start()
    srv.stop()
    assert srv.publish("event", {"x": 1}) is False
    assert srv.counters()["pub"]["event"]["dropped"] == 1
    with pytest.raises(TypeError):
        srv.publish("event", object())


def _stalled_subscriber(ctx, endpoint):
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 10)
    s.setsockopt(zmq.SUBSCRIBE, b"event")
    s.connect(endpoint)
    return s


def test_a_stalled_subscriber_does_not_hold_back_the_others(server, sock_dir):
    """A subscriber that stops reading loses messages (its gap shows in seq) while a healthy
    one gets every event."""
    ctx = zmq.Context()
    stalled = _stalled_subscriber(ctx, server.endpoints["events"])
    n = 25_000
    try:
        with ControlClient(sock_dir) as c, c.subscribe(["event"], timeout_s=5.0) as healthy:
            wait_for(lambda: server.counters()["subscriptions"] >= 2, what="subscriptions")
            got = 0
            for i in range(n):
                server.publish("event", {"i": i, "pad": "x" * 200})
                while healthy._sock.poll(0):  # read as we go, like a live TUI
                    healthy.recv(0)
                    got += 1
            while got < n:
                healthy.recv(5.0)
                got += 1
            assert healthy.missed == {"event": 0}
        assert server.counters()["pub"]["event"] == {"published": n, "sent": n, "coalesced": 0, "dropped": 0}
        seqs = []
        while stalled.poll(200):
            seqs.append(msgpack.unpackb(stalled.recv_multipart()[1])["seq"])
        assert 0 < len(seqs) < n and seqs == list(range(1, len(seqs) + 1))  # the head, then lost
        server.publish("event", {"i": n})  # the stalled subscriber reads again: it sees the gap
        assert stalled.poll(2000)
        assert msgpack.unpackb(stalled.recv_multipart()[1])["seq"] == n + 1
    finally:
        stalled.close()
        ctx.term()


def test_lossless_pub_counts_drops(sock_dir):
    """With lossless_pub a message that a stalled subscriber cannot take goes to nobody and is
    counted: sent + dropped adds up to what was published."""
    ctx = zmq.Context()
    with ControlServer(handlers={}, run_dir_for_sockets=sock_dir, lossless_pub=True) as srv:
        stalled = _stalled_subscriber(ctx, srv.endpoints["events"])
        try:
            wait_for(lambda: srv.counters()["subscriptions"] >= 1, what="subscription")
            n = 25_000
            for i in range(n):
                srv.publish("event", {"i": i, "pad": "x" * 200})
            wait_for(lambda: sum(srv.counters()["pub"]["event"][k] for k in ("sent", "dropped")) == n, what="the publish queue to drain")
            pub = srv.counters()["pub"]["event"]
            assert pub["published"] == n and pub["dropped"] > 0 and pub["sent"] > 0
        finally:
            stalled.close()
    ctx.term()


def test_log_handler_publishes_records(server, client):
    import logging

    from appliance.control.logs import PublishingLogHandler

    logger = logging.getLogger("appliance.test_control_logs")
    handler = PublishingLogHandler(server)
    logger.addHandler(handler)
    try:
        with client.subscribe(["log"], timeout_s=2.0) as sub:
            wait_for(lambda: server.counters()["subscriptions"] >= 1, what="subscription")
            logger.warning("disk at %d%%", 91)
            try:
                raise OSError("full")
            except OSError:
                logger.exception("write failed")
            first, second = sub.recv(2.0)[1]["data"], sub.recv(2.0)[1]["data"]
    finally:
        logger.removeHandler(handler)
    assert first["level"] == "WARNING" and first["message"] == "disk at 91%" and first["logger"] == logger.name
    assert first["exc"] is None and "OSError: full" in second["exc"]
