"""``appliance ctl`` against a real control server: JSON output and exit codes."""

from __future__ import annotations

import json
import threading
import time

import pytest

from appliance.cli import main
from appliance.commands.ctl import parse_params
from appliance.control import Arg, Command, CommandError, ControlServer

from .conftest import wait_for


def _handlers():
    def stop(args):
        raise CommandError("not_running", "no run is in progress")

    return {
        "status": Command(lambda a: {"state": "acquiring", "tiles": [1101, 1102]}, "run state"),
        "set": Command(lambda a: a, "set live parameters", (Arg("exposure_ms", "float", True), Arg("label", "str"), Arg("tiles", "list"))),
        "stop": stop,
        "slow": lambda a: time.sleep(1.0),
    }


@pytest.fixture
def served(tmp_path):
    d = tmp_path / "s"
    with ControlServer(handlers=_handlers(), run_dir_for_sockets=d) as srv:
        yield srv, d


def _ctl(capsys, *argv):
    rc = main(["ctl", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_json_results(served, capsys):
    _, d = served
    rc, out, _ = _ctl(capsys, "--socket-dir", str(d), "--json", "status")
    assert rc == 0 and json.loads(out) == {"state": "acquiring", "tiles": [1101, 1102]}
    rc, out, _ = _ctl(capsys, "--socket-dir", str(d), "set", "exposure_ms=2.5", "label=run 7", "tiles=[1,2]", "--json")
    assert rc == 0 and json.loads(out) == {"exposure_ms": 2.5, "label": "run 7", "tiles": [1, 2]}
    rc, out, _ = _ctl(capsys, "--connect", f"ipc://{d}/control.sock", "ping")
    assert rc == 0 and out == "pong\n"
    rc, out, _ = _ctl(capsys, "--socket-dir", str(d), "help")
    assert rc == 0 and "exposure_ms=float (required)" in out and "control_status" in out


def test_error_reply_exits_1(served, capsys):
    _, d = served
    rc, out, _ = _ctl(capsys, "--socket-dir", str(d), "--json", "stop")
    assert rc == 1 and json.loads(out) == {"error": {"code": "not_running", "message": "no run is in progress"}}
    rc, out, err = _ctl(capsys, "--socket-dir", str(d), "set", "exposure_ms=fast")
    assert rc == 1 and out == "" and "bad_args" in err and "exposure_ms" in err
    rc, out, _ = _ctl(capsys, "--socket-dir", str(d), "--json", "no_such_command")
    assert rc == 1 and json.loads(out)["error"]["code"] == "unknown_command"


def test_unreachable_exits_3(tmp_path, served, capsys):
    rc, out, _ = _ctl(capsys, "--socket-dir", str(tmp_path / "nothing"), "--json", "status")
    assert rc == 3 and json.loads(out)["error"]["code"] == "unreachable"
    _, d = served
    rc, out, _ = _ctl(capsys, "--socket-dir", str(d), "--timeout", "0.2", "--json", "slow")
    assert rc == 3 and "no reply" in json.loads(out)["error"]["message"]


def test_usage_errors_exit_2(served, capsys):
    _, d = served
    assert _ctl(capsys, "--socket-dir", str(d), "set", "novalue")[0] == 2
    assert _ctl(capsys, "--socket-dir", str(d), "watch", "metrics")[0] == 2
    assert _ctl(capsys, "--connect", "http://x", "ping")[0] == 2


def test_too_long_socket_dir_exits_2_with_the_message(tmp_path, capsys):
    """A socket path over 107 bytes is bad usage (exit 2, named), not a traceback."""
    long_dir = str(tmp_path / ("d" * 120))
    rc, out, err = _ctl(capsys, "--socket-dir", long_dir, "ping")
    assert rc == 2 and out == "" and "usage" in err and "107" in err and "shorter socket directory" in err
    rc, out, _ = _ctl(capsys, "--socket-dir", long_dir, "--json", "watch", "event")
    assert rc == 2 and json.loads(out)["error"]["code"] == "usage"


def test_watch_streams_json_lines(served, capsys):
    srv, d = served
    stop = threading.Event()

    def publisher():
        wait_for(lambda: srv.counters()["subscriptions"] >= 1, what="the watch subscription")
        i = 0
        while not stop.is_set():
            srv.publish("event", {"i": i})
            srv.publish("log", {"i": i})  # not watched: must not appear
            i += 1
            time.sleep(0.01)

    t = threading.Thread(target=publisher)
    t.start()
    try:
        rc, out, _ = _ctl(capsys, "--socket-dir", str(d), "watch", "event", "--count", "3", "--duration", "10")
    finally:
        stop.set()
        t.join()
    lines = [json.loads(line) for line in out.splitlines()]
    assert rc == 0 and len(lines) == 3
    assert all(line["topic"] == "event" and set(line) == {"topic", "seq", "t", "data"} for line in lines)
    assert [line["seq"] for line in lines] == sorted(line["seq"] for line in lines)
    rc, out, _ = _ctl(capsys, "--socket-dir", str(d), "watch", "alert", "--duration", "0.2")
    assert rc == 0 and out == ""


def test_parse_params():
    assert parse_params(["a=1", "b=x", "c=true", "d=null", "e={\"k\": 1}", "f=", "g=a=b"]) == {
        "a": 1, "b": "x", "c": True, "d": None, "e": {"k": 1}, "f": "", "g": "a=b",
    }
    for bad in (["a"], ["=1"], ["a=1", "a=2"]):
        with pytest.raises(ValueError):
            parse_params(bad)
