"""A control plane client: requests over a DEALER, subscriptions over a SUB.

``ControlClient(target)`` takes a socket directory (the local ``ipc://`` sockets), an
``ipc://.../control.sock`` endpoint, or ``tcp://HOST:PORT`` (with ``curve_keys``; events are
on PORT+1). ``request(cmd, **args)`` returns the result or raises :class:`ControlError` (the
server's error reply), :class:`ControlTimeout` (no reply in time) or
:class:`ControlUnreachable` (no connection). Each request carries a fresh id and replies to
older, timed-out requests are discarded, so a timeout never wedges the socket as it would a
REQ socket. A timed-out request may still have run on the server: commands are designed to
be idempotent.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import zmq

from appliance.control.curve import CurveKeys
from appliance.control.paths import CONTROL_SOCKET, EVENTS_SOCKET, default_socket_dir, ipc_endpoints
from appliance.control.protocol import TOPICS, ProtocolError, decode_pub, decode_reply, encode_request

__all__ = ["ControlClient", "ControlError", "ControlRefused", "ControlTimeout", "ControlUnreachable", "Subscription", "resolve_endpoints"]

_HANDSHAKE_FAILED = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


class ControlError(Exception):
    """The server answered with an error reply (or with something that is not a reply:
    code ``bad_reply``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class ControlUnreachable(ConnectionError):
    """No connection to the server: no socket there, or nobody accepted within the timeout."""


class ControlRefused(ControlUnreachable):
    """The server refused the connection's CURVE handshake (missing or unknown keys)."""


class ControlTimeout(ControlUnreachable, TimeoutError):
    """The request was sent but no reply came within the timeout."""


def resolve_endpoints(target: str | os.PathLike | None) -> tuple[str, str]:
    """``(command endpoint, events endpoint)`` for a socket directory, an ``ipc://`` endpoint
    of the command socket, or ``tcp://HOST:PORT`` (events on PORT+1). ``None``: the default
    socket directory."""
    if target is None:
        return ipc_endpoints(default_socket_dir())
    text = os.fspath(target)
    if text.startswith("tcp://"):
        host, _, port = text[len("tcp://"):].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"{text!r} is not tcp://HOST:PORT")
        return text, f"tcp://{host}:{int(port) + 1}"
    if text.startswith("ipc://"):
        path = Path(text[len("ipc://"):])
        if path.name == EVENTS_SOCKET:
            path = path.with_name(CONTROL_SOCKET)
        return f"ipc://{path}", f"ipc://{path.with_name(EVENTS_SOCKET)}"
    if "://" in text:
        raise ValueError(f"{text!r}: only ipc:// and tcp:// endpoints, or a socket directory, are supported")
    return ipc_endpoints(Path(text))


def _check_ipc(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        path = Path(endpoint[len("ipc://"):])
        if not path.exists():
            raise ControlUnreachable(f"no control socket at {path}: is the appliance running? (the socket directory is set with --socket-dir)")


class ControlClient:
    """A connection to one appliance's control plane. Not thread-safe: use one per thread."""

    def __init__(
        self,
        target: str | os.PathLike | None = None,
        timeout_s: float = 2.0,
        curve_keys: CurveKeys | None = None,
    ) -> None:
        self.endpoint, self.events_endpoint = resolve_endpoints(target)
        self.timeout_s = float(timeout_s)
        self.curve_keys = curve_keys
        self._ctx = zmq.Context()
        self._ids = itertools.count(1)
        self._prefix = uuid.uuid4().hex[:8]
        self._dealer: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None
        self._subs: set[Subscription] = set()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _secure(self, s: zmq.Socket) -> None:
        if self.curve_keys is not None:
            s.setsockopt(zmq.CURVE_SERVERKEY, self.curve_keys.server_public)
            s.setsockopt(zmq.CURVE_PUBLICKEY, self.curve_keys.public)
            s.setsockopt(zmq.CURVE_SECRETKEY, self.curve_keys.secret)

    def _connect(self) -> zmq.Socket:
        if self._dealer is None:
            _check_ipc(self.endpoint)
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            # Queue a request only on a completed connection (handshake done), so a request
            # made while the server is away fails now instead of running minutes later.
            s.setsockopt(zmq.IMMEDIATE, 1)
            self._secure(s)
            if self.endpoint.startswith("tcp://"):
                self._monitor = s.get_monitor_socket(_HANDSHAKE_FAILED)
            s.connect(self.endpoint)
            self._dealer = s
        return self._dealer

    def _refused(self) -> str | None:
        """A description of a failed CURVE handshake seen on the monitor, if any."""
        if self._monitor is None:
            return None
        from zmq.utils.monitor import recv_monitor_message

        reason = None
        while self._monitor.poll(0):
            ev = recv_monitor_message(self._monitor)
            if ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                reason = "the server rejected this client's key: add its public .key to the server's authorized_clients directory"
            elif reason is None:
                reason = "the CURVE handshake failed: this client needs keys (--client-key, --server-key) and the server's public key must match"
        return reason

    def request(self, cmd: str, /, timeout_s: float | None = None, **args: Any) -> Any:
        """Send ``cmd`` with ``args``; return the result or raise (see the module docstring)."""
        timeout = self.timeout_s if timeout_s is None else float(timeout_s)
        s = self._connect()
        req_id = f"{self._prefix}-{next(self._ids)}"
        data = encode_request(cmd, args, req_id=req_id)
        deadline = time.monotonic() + timeout
        # Wait for a connection to take the request (IMMEDIATE), then send.
        if not s.poll(max(0, int(timeout * 1000)), zmq.POLLOUT):
            reason = self._refused()
            if reason:
                raise ControlRefused(f"{self.endpoint}: {reason}")
            raise ControlUnreachable(f"could not connect to {self.endpoint} within {timeout:g} s: is the appliance running and reachable?")
        s.send(data)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not s.poll(max(1, int(left * 1000)), zmq.POLLIN):
                reason = self._refused()
                if reason:
                    raise ControlRefused(f"{self.endpoint}: {reason}")
                raise ControlTimeout(f"no reply to {cmd!r} from {self.endpoint} within {timeout:g} s (the command may still run)")
            frames = s.recv_multipart()
            try:
                reply = decode_reply(frames[-1])
            except ProtocolError as exc:
                raise ControlError(exc.code, exc.message) from None
            if reply.get("id") not in (req_id, None):
                continue  # the late reply to an earlier request that timed out
            if reply["ok"]:
                if reply.get("id") != req_id:
                    continue
                return reply.get("result")
            err = reply["error"]
            raise ControlError(err["code"], err["message"])

    def subscribe(self, topics: Iterable[str] = TOPICS, timeout_s: float | None = None) -> Subscription:
        """A :class:`Subscription` to ``topics`` (default all). Iterating it yields
        ``(topic, body)``; with ``timeout_s`` it raises ControlTimeout after that long without
        a message (default: wait forever). Messages published before the subscription reached
        the server are not received (ZeroMQ's slow-joiner behaviour)."""
        topics = list(topics)
        for t in topics:
            if t not in TOPICS:
                raise ValueError(f"unknown topic {t!r}; topics: {', '.join(TOPICS)}")
        _check_ipc(self.events_endpoint)
        s = self._ctx.socket(zmq.SUB)
        s.setsockopt(zmq.LINGER, 0)
        self._secure(s)
        for t in topics:
            s.setsockopt(zmq.SUBSCRIBE, t.encode())
        s.connect(self.events_endpoint)
        sub = Subscription(self, s, set(topics), timeout_s)
        self._subs.add(sub)
        return sub

    def close(self) -> None:
        """Close every socket and the context (idempotent)."""
        for sub in list(self._subs):
            sub.close()
        if self._monitor is not None and self._dealer is not None:
            self._dealer.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        if self._dealer is not None:
            self._dealer.close(linger=0)
            self._dealer = None
        if not self._ctx.closed:
            self._ctx.term()


class Subscription:
    """An open SUB socket: iterate for ``(topic, body)``; close it (or use ``with``) when done."""

    def __init__(self, client: ControlClient, sock: zmq.Socket, topics: set[str], timeout_s: float | None) -> None:
        self._client = client
        self._sock = sock
        self.topics = topics
        self.timeout_s = timeout_s
        #: messages missed per topic, from gaps in ``seq`` since the first message received
        #: (for ``stats`` gaps are normal: the server coalesces snapshots to its rate limit)
        self.missed: dict[str, int] = {t: 0 for t in topics}
        self._last_seq: dict[str, int] = {}

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        while True:
            yield self.recv(self.timeout_s)

    def recv(self, timeout_s: float | None = None) -> tuple[str, dict[str, Any]]:
        """The next ``(topic, body)``; ControlTimeout after ``timeout_s`` (None: no limit).
        A message that does not decode raises ControlError('bad_reply')."""
        ms = None if timeout_s is None else max(0, int(timeout_s * 1000))
        if not self._sock.poll(ms, zmq.POLLIN):
            raise ControlTimeout(f"no message on {', '.join(sorted(self.topics))} within {timeout_s:g} s")
        frames = self._sock.recv_multipart()
        try:
            topic, body = decode_pub(frames)
        except ProtocolError as exc:
            raise ControlError(exc.code, exc.message) from None
        seq = body.get("seq")
        if isinstance(seq, int):
            last = self._last_seq.get(topic)
            if last is not None and seq > last + 1:
                self.missed[topic] = self.missed.get(topic, 0) + seq - last - 1
            self._last_seq[topic] = seq
        return topic, body

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.close(linger=0)
        self._client._subs.discard(self)
