"""Request validation and encoding, without sockets."""

from __future__ import annotations

import msgpack
import pytest

from appliance.control.commands import Arg, Command, CommandError, as_command
from appliance.control.protocol import (
    MAX_REQUEST_BYTES,
    ProtocolError,
    decode_pub,
    decode_reply,
    decode_request,
    encode_error,
    encode_pub,
    encode_reply,
    encode_request,
)


def _raw(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_round_trip():
    req = decode_request(encode_request("start_run", {"cycles": 3}, req_id="a1"))
    assert (req.id, req.cmd, req.args) == ("a1", "start_run", {"cycles": 3})
    assert decode_request(_raw({"v": 1, "id": "x", "cmd": "ping"})).args == {}  # args optional
    reply = decode_reply(encode_reply("a1", {"ok": [1, 2]}))
    assert reply == {"v": 1, "id": "a1", "ok": True, "result": {"ok": [1, 2]}}
    err = decode_reply(encode_error("a1", "not_running", "no run"))
    assert err["error"] == {"code": "not_running", "message": "no run"}


@pytest.mark.parametrize(
    "obj, code, has_id",
    [
        ([1, 2], "bad_request", False),
        ({"v": 1, "cmd": "ping"}, "bad_request", False),  # no id
        ({"v": 1, "id": "", "cmd": "ping"}, "bad_request", False),
        ({"v": 1, "id": 5, "cmd": "ping"}, "bad_request", False),
        ({"v": 1, "id": "x" * 129, "cmd": "ping"}, "bad_request", "x" * 129),  # readable: echoed
        ({"v": 1, "id": "r", "cmd": "ping", "extra": 1}, "bad_request", True),
        ({"v": 2, "id": "r", "cmd": "ping"}, "bad_version", True),
        ({"v": 0, "id": "r", "cmd": "ping"}, "bad_version", True),
        # the version is checked right after the id: a field of another version is not bad_request
        ({"v": 2, "id": "r", "cmd": "ping", "extra": 1}, "bad_version", True),
        ({"v": 2, "id": "r", "cmd": 7, "args": [1]}, "bad_version", True),
        ({"v": "1", "id": "r", "cmd": "ping"}, "bad_request", True),
        ({"v": True, "id": "r", "cmd": "ping"}, "bad_request", True),
        ({"id": "r", "cmd": "ping"}, "bad_request", True),
        ({"v": 1, "id": "r", "cmd": "Ping"}, "bad_request", True),
        ({"v": 1, "id": "r", "cmd": 3}, "bad_request", True),
        ({"v": 1, "id": "r", "cmd": "ping", "args": [1]}, "bad_request", True),
        ({"v": 1, "id": "r", "cmd": "ping", "args": {"a": {1: 2}}}, "bad_request", True),
    ],
)
def test_invalid_requests_name_the_problem(obj, code, has_id):
    with pytest.raises(ProtocolError) as info:
        decode_request(_raw(obj))
    assert info.value.code == code
    assert info.value.req_id == (has_id if isinstance(has_id, str) else "r" if has_id else None)
    assert len(info.value.message) > 20


def test_garbage_ext_types_and_size():
    for data in (b"", b"\xc1", b"\x92\x01", _raw(1) + _raw(2)):
        with pytest.raises(ProtocolError) as info:
            decode_request(data)
        assert info.value.code == "bad_request"
    ext = _raw({"v": 1, "id": "r", "cmd": "ping", "args": {"t": msgpack.ExtType(5, b"xx")}})
    with pytest.raises(ProtocolError, match="ext type"):
        decode_request(ext)
    big = encode_request("ping", {"blob": b"x" * MAX_REQUEST_BYTES}, req_id="r")
    with pytest.raises(ProtocolError) as info:
        decode_request(big)
    assert info.value.code == "too_large"
    assert info.value.req_id == "r"  # the id is read from the oversized body and echoed


def test_pub_frames():
    frames = encode_pub("event", 7, 12.5, {"kind": "stopping"})
    topic, body = decode_pub(frames)
    assert topic == "event" and body == {"v": 1, "topic": "event", "seq": 7, "t": 12.5, "data": {"kind": "stopping"}}
    with pytest.raises(ProtocolError):
        decode_pub([b"stats", frames[1]])  # topic frame and body disagree


def test_command_arg_validation():
    cmd = Command(lambda a: a, "set", (Arg("rate", "float", required=True), Arg("mode", "str", choices=("a", "b"))))
    cmd.validate({"rate": 1})  # an int is a valid float
    for bad in ({}, {"rate": True}, {"rate": "1"}, {"rate": 1.0, "mode": "c"}, {"rate": 1.0, "x": 1}):
        with pytest.raises(CommandError) as info:
            cmd.validate(bad)
        assert info.value.code == "bad_args"
    with pytest.raises(ValueError):
        CommandError("Not Snake", "x")
    with pytest.raises(ValueError):
        Arg("a", "complex")
    last = Command(lambda a: a, "events", (Arg("last", "int", min=0),))
    last.validate({"last": 0})
    with pytest.raises(CommandError, match="at least 0") as info:
        last.validate({"last": -1})
    assert info.value.code == "bad_args"
    assert last.describe()["args"]["last"]["min"] == 0
    with pytest.raises(ValueError):
        Arg("name", "str", min=0)

    def documented(args):
        """Start a run.

        More text."""

    assert as_command(documented).describe() == {"help": "Start a run.", "args": None, "errors": {}}
    coded = Command(lambda a: a, "pause", (), {"not_running": "nothing to pause"})
    assert coded.describe()["errors"] == {"not_running": "nothing to pause"}
    with pytest.raises(ValueError, match="lower_snake_case"):
        Command(lambda a: a, "x", (), {"NotRunning": "bad code"})
