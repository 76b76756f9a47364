"""Protocol fuzzing: arbitrary bytes, frame shapes and msgpack structures sent raw on a
DEALER. Every message must get exactly one decodable reply, and the server must still answer
a ping afterwards."""

from __future__ import annotations

import time

import msgpack
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.control import ERROR_CODES, ControlClient, ControlServer
from appliance.control.protocol import decode_reply

_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(), st.text(max_size=20), st.binary(max_size=20)
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-(2**63), 2**63 - 1)), inner, max_size=5)),
    max_leaves=20,
)
# Near-valid requests: the right field names with arbitrary values, plus stray fields.
_requestish = st.fixed_dictionaries(
    {},
    optional={
        "v": st.one_of(st.just(1), _values),
        "id": st.one_of(st.text(min_size=1, max_size=10), _values),
        "cmd": st.one_of(st.sampled_from(["ping", "help", "echo", "boom", "nope"]), _values),
        "args": st.one_of(st.dictionaries(st.text(max_size=5), _values, max_size=3), _values),
        "extra": _values,
    },
)


def _handlers():
    def boom(args):
        raise ValueError("fuzz")

    return {"echo": lambda a: a, "boom": boom}


def _expect_one_reply(sock):
    assert sock.poll(2000), "the server did not answer"
    reply = decode_reply(sock.recv_multipart()[-1])
    if not reply["ok"]:
        assert reply["error"]["code"] in ERROR_CODES, reply
    assert not sock.poll(0), "more than one reply"
    return reply


def test_fuzz_raw_messages(tmp_path):
    sock_dir = tmp_path / "s"
    with ControlServer(handlers=_handlers(), run_dir_for_sockets=sock_dir) as srv:
        ctx = zmq.Context()
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(srv.endpoints["command"])
        try:

            @_SETTINGS
            @given(st.binary(max_size=300))
            def random_bytes(data):
                dealer.send(data)
                _expect_one_reply(dealer)

            @_SETTINGS
            @given(st.lists(st.binary(max_size=40), min_size=1, max_size=5))
            def random_frames(frames):
                dealer.send_multipart(frames)
                _expect_one_reply(dealer)

            @_SETTINGS
            @given(st.one_of(_values, _requestish))
            def msgpack_structures(obj):
                dealer.send(msgpack.packb(obj, use_bin_type=True))
                reply = _expect_one_reply(dealer)
                if reply["ok"]:  # only a valid request can succeed
                    assert isinstance(obj, dict) and obj.get("v") == 1 and obj.get("cmd") in ("ping", "help", "echo")

            random_bytes()
            random_frames()
            msgpack_structures()
        finally:
            dealer.close()
            ctx.term()
        with ControlClient(sock_dir) as c:
            assert c.request("ping") == "pong"
        counters = srv.counters()
        assert srv.running and counters["requests"] >= 300 and counters["undeliverable_replies"] == 0


def test_fuzz_the_pub_socket(tmp_path):
    """Garbage sent to the events socket (a DEALER cannot talk to a PUB: the handshake fails;
    an XSUB sends arbitrary frames) does not take the server down."""
    sock_dir = tmp_path / "s"
    with ControlServer(handlers={}, run_dir_for_sockets=sock_dir) as srv:
        ctx = zmq.Context()
        xsub = ctx.socket(zmq.XSUB)
        xsub.setsockopt(zmq.LINGER, 0)
        xsub.connect(srv.endpoints["events"])
        for frame in (b"\x01stats", b"junk", b"\x00stats", b"\x02" * 100):
            xsub.send(frame)
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(srv.endpoints["events"])
        dealer.send(b"hello")
        try:
            with ControlClient(sock_dir) as c:
                assert c.request("ping") == "pong"
                # The XSUB's subscribe frames are counted, its junk frames dropped and counted.
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline:
                    status = c.request("control_status")
                    if status["subscriptions"] >= 1 and status["dropped_messages"] >= 2:
                        break
                    time.sleep(0.02)
            assert status["subscriptions"] >= 1 and status["dropped_messages"] >= 2
            assert srv.running
        finally:
            xsub.close()
            dealer.close()
            ctx.term()
