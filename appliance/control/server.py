"""The control server: a ROUTER for commands and an XPUB for stats/events, in its own thread.

Local sockets are ``ipc://<dir>/control.sock`` and ``ipc://<dir>/events.sock`` (directory
0700, socket files 0600, see :mod:`appliance.control.paths`). TCP is optional and only with
CURVE: ``tcp="tcp://HOST:PORT"`` binds commands on PORT and events on PORT+1, and only clients
whose public key is in ``curve_dir/authorized_clients`` get through the ZAP handshake.

Handlers run in the server thread, one at a time, so they must be quick (set an event, read
a snapshot); a handler exception becomes an ``internal`` error reply and the server keeps
serving. ``publish()`` may be called from any thread: it hands the encoded message to the
server thread over an inproc PUSH socket (guarded by a lock, since ZeroMQ sockets are not
thread-safe). ``stats`` goes out at most ``pub_max_hz`` per second, latest value wins;
``event``, ``alert`` and ``log`` are never rate-limited. Every PUB message carries a per-topic
``seq``, so a subscriber sees any message it missed as a gap (``Subscription.missed``); what
the server itself could not queue is counted in :meth:`ControlServer.counters` (the
``control_status`` command). A subscriber that stops reading loses messages once its queue
(10000) is full, without holding back the others; ``lossless_pub=True`` instead makes such a
message go to no subscriber and counts it as dropped on the server.
"""

from __future__ import annotations

import difflib
import fcntl
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import zmq

from appliance._version import __version__
from appliance.control.commands import Arg, Command, CommandError, as_command
from appliance.control.paths import LOCK_FILE, ipc_endpoints, prepare_socket_dir
from appliance.control.protocol import (
    ERROR_CODES,
    PROTOCOL_VERSION,
    TOPICS,
    ProtocolError,
    decode_request,
    encode_error,
    encode_pub,
    encode_reply,
    read_id,
)

__all__ = ["ControlServer", "ControlServerError", "BUILTIN_COMMANDS", "THROTTLED_TOPICS"]

log = logging.getLogger(__name__)

#: Topics rate-limited to ``pub_max_hz`` (latest wins). All other topics are sent as published.
THROTTLED_TOPICS = frozenset({"stats"})

#: Commands every server answers; handlers may not replace them.
BUILTIN_COMMANDS = ("ping", "version", "help", "control_status")

# A frame larger than this makes libzmq drop the connection before we ever see the bytes
# (ZMQ_MAXMSGSIZE), so a client cannot make the server buffer arbitrarily large messages.
# Between MAX_REQUEST_BYTES and this a request gets a `too_large` reply.
_HARD_MAX_FRAME = 1024 * 1024
_PUB_HWM = 10_000  # messages queued per subscriber
_INPROC_HWM = 100_000  # publish() -> server thread
_BATCH = 256  # messages handled per socket per loop turn, so one flood cannot starve the rest
_ZAP_DOMAIN = "appliance"  # the ZAP domain of the TCP sockets; their keys are checked in it
_TCP_RE = re.compile(r"tcp://(?P<host>\[[^\]]+\]|[^:\[\]]+):(?P<port>\*|\d+)\Z")


class ControlServerError(RuntimeError):
    """The server cannot start (socket directory in use, bad endpoint, missing keys)."""


def _split_tcp(endpoint: str) -> tuple[str, int | None]:
    m = _TCP_RE.match(endpoint)
    if not m:
        raise ControlServerError(f"TCP endpoint {endpoint!r} is not tcp://HOST:PORT (PORT a number or '*'): e.g. tcp://0.0.0.0:5560")
    port = m["port"]
    if port != "*" and not 0 < int(port) < 65535:
        raise ControlServerError(f"TCP port {port} in {endpoint!r} must be 1..65534 (events use PORT+1)")
    return m["host"], None if port == "*" else int(port)


class ControlServer:
    """The appliance's control plane server; see the module docstring and
    docs/control-protocol.md. ``start()``/``stop()`` are idempotent; it is a context manager.

    ``handlers`` maps command names to callables taking the request's ``args`` dict (or to
    :class:`~appliance.control.Command` objects that also describe and check the arguments).
    ``run_dir_for_sockets`` is the socket directory (``default_socket_dir()`` for the
    standard one). ``endpoint`` overrides the command socket's ``ipc://`` path only (the
    events socket and the lock stay in the directory). ``tcp="tcp://HOST:PORT"`` (PORT may be
    ``*``) adds CURVE-only TCP sockets, with keys from ``curve_dir`` (:mod:`.curve`).
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        handlers: Mapping[str, Callable[[dict], Any] | Command],
        run_dir_for_sockets: Path,
        tcp: str | None = None,
        curve_dir: Path | None = None,
        pub_max_hz: float = 10.0,
        lossless_pub: bool = False,
    ) -> None:
        if endpoint is not None and not endpoint.startswith("ipc://"):
            raise ControlServerError(f"endpoint {endpoint!r} must be ipc://PATH: TCP goes through tcp= and requires CURVE keys (curve_dir=)")
        if tcp is not None:
            _split_tcp(tcp)
            if curve_dir is None:
                raise ControlServerError("a TCP endpoint needs CURVE keys: pass curve_dir= (server.key_secret and authorized_clients/, see docs/control-protocol.md); unauthenticated TCP is not offered")
        if not (pub_max_hz > 0):
            raise ControlServerError(f"pub_max_hz must be > 0, got {pub_max_hz!r}")
        self._commands: dict[str, Command] = self._builtins()
        for name, handler in handlers.items():
            if name in self._commands:
                raise ControlServerError(f"command {name!r} is built in and cannot be replaced")
            if not re.fullmatch(r"[a-z][a-z0-9_.]{0,63}", name):
                raise ControlServerError(f"command name {name!r} must be lower case letters, digits, '_' and '.' (at most 64)")
            self._commands[name] = as_command(handler)
        self._socket_dir = Path(run_dir_for_sockets)
        self._endpoint_override = endpoint
        self._tcp = tcp
        self._curve_dir = Path(curve_dir) if curve_dir is not None else None
        self._period = 1.0 / float(pub_max_hz)
        self.pub_max_hz = float(pub_max_hz)
        self.lossless_pub = bool(lossless_pub)

        self._state_lock = threading.Lock()  # start/stop
        # Counters and the publish PUSH socket. Reentrant, so a log handler that publishes can
        # never deadlock against a log call made while it is held.
        self._lock = threading.RLock()
        self._started = False
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._auth = None
        self._monitors: list[zmq.Socket] = []
        self._push: zmq.Socket | None = None
        self._lock_fd: int | None = None
        self._files: list[Path] = []
        self._wake_addr = ""
        self.endpoints: dict[str, str] = {}
        self._fatal: BaseException | None = None
        self._t0 = time.monotonic()
        self._seq = {t: 0 for t in TOPICS}
        self._c: dict[str, Any] = {
            "requests": 0,
            "replies_ok": 0,
            "errors": {},
            "dropped_messages": 0,
            "undeliverable_replies": 0,
            "subscriptions": 0,
            "unsubscriptions": 0,
            "auth_failures": 0,
            "pub": {t: {"published": 0, "sent": 0, "coalesced": 0, "dropped": 0} for t in TOPICS},
        }

    # -- built-in commands ---------------------------------------------------------------
    def _builtins(self) -> dict[str, Command]:
        return {
            "ping": Command(lambda a: "pong", "answer 'pong' (a liveness check)"),
            "version": Command(
                lambda a: {"protocol": PROTOCOL_VERSION, "appliance": __version__, "zmq": zmq.zmq_version(), "pyzmq": zmq.__version__},
                "protocol and software versions",
            ),
            "help": Command(
                self._help,
                "list the commands with their arguments, and the error codes",
                (Arg("command", "str", help="describe only this command"),),
                {"unknown_command": "'command' names no command of this server"},
            ),
            "control_status": Command(lambda a: self.counters(), "the control server's own counters: requests, errors, PUB messages sent, coalesced and dropped"),
        }

    def _help(self, args: dict) -> dict:
        name = args.get("command")
        if name is not None:
            if name not in self._commands:
                raise CommandError("unknown_command", self._unknown_message(name))
            return {"commands": {name: self._commands[name].describe()}}
        return {
            "protocol": PROTOCOL_VERSION,
            "commands": {n: c.describe() for n, c in sorted(self._commands.items())},
            "error_codes": dict(ERROR_CODES),
            "topics": list(TOPICS),
        }

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._commands), n=3)
        hint = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
        return f"no command {name!r}{hint} ('help' lists the commands)"

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> ControlServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> ControlServer:
        """Bind the sockets and start the server thread. Errors (directory in use, bad keys)
        are raised here, in the caller's thread. A stopped server cannot be restarted."""
        with self._state_lock:
            if self._stopped:
                raise ControlServerError("this ControlServer was stopped; create a new one")
            if self._started:
                return self
            try:
                self._bind_all()
            except BaseException:
                self._teardown()
                raise
            self._started = True
            self._t0 = time.monotonic()
            self._thread = threading.Thread(target=self._serve_thread, name="control-server", daemon=True)
            self._thread.start()
            log.info("control server on %s", ", ".join(f"{k}={v}" for k, v in self.endpoints.items()))
            return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, close every socket, remove the socket files and the lock."""
        with self._state_lock:
            if self._stopped:
                return
            self._stopped = True
            if self._thread is not None:
                with self._lock:
                    assert self._push is not None
                    self._push.send_multipart([b"stop"])  # a one-frame message: the stop signal
                self._thread.join(timeout)
                if self._thread.is_alive():
                    raise ControlServerError(f"the control server thread did not stop within {timeout} s: a handler is blocking it")
            self._teardown()

    def _lock_dir(self, d: Path) -> None:
        path = d / LOCK_FILE
        for _ in range(5):
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                try:
                    owner = path.read_text().strip() or "?"
                except OSError:
                    owner = "?"
                raise ControlServerError(f"another appliance (pid {owner}) serves the control sockets in {d}: stop it, or give this one another socket directory") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not unlinked by a previous holder between our open and our lock
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                self._lock_fd = fd
                return
            os.close(fd)
        raise ControlServerError(f"could not lock {path}: it keeps being replaced")

    def _bind_all(self) -> None:
        d = prepare_socket_dir(self._socket_dir)
        self._lock_dir(d)
        cmd_ep, ev_ep = ipc_endpoints(d)
        if self._endpoint_override is not None:
            cmd_ep = self._endpoint_override
        ctx = self._ctx = zmq.Context()
        self._routers: list[zmq.Socket] = []
        self._xpubs: list[zmq.Socket] = []
        self._routers.append(self._router(ctx))
        self._xpubs.append(self._xpub(ctx))
        self._routers[0].bind(cmd_ep)
        self._xpubs[0].bind(ev_ep)
        for ep in (cmd_ep, ev_ep):
            p = Path(ep[len("ipc://"):])
            self._files.append(p)
            os.chmod(p, 0o600)
        self.endpoints = {"command": cmd_ep, "events": ev_ep}
        if self._tcp is not None:
            self._bind_tcp(ctx)
        self._wake_addr = f"inproc://control-publish-{id(self):x}"
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, _INPROC_HWM)
        self._pull.bind(self._wake_addr)
        self._push = ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, _INPROC_HWM)
        self._push.setsockopt(zmq.LINGER, 0)
        self._push.connect(self._wake_addr)

    def _router(self, ctx: zmq.Context) -> zmq.Socket:
        s = ctx.socket(zmq.ROUTER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unroutable reply raises instead of vanishing
        s.setsockopt(zmq.MAXMSGSIZE, _HARD_MAX_FRAME)
        return s

    def _xpub(self, ctx: zmq.Context) -> zmq.Socket:
        s = ctx.socket(zmq.XPUB)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, _PUB_HWM)
        if self.lossless_pub:
            # A full subscriber queue makes the send fail (EAGAIN): the message goes to no
            # subscriber and is counted as dropped. Otherwise ZeroMQ drops it for the stalled
            # subscriber only, which sees the gap in `seq`.
            s.setsockopt(zmq.XPUB_NODROP, 1)
        s.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscription, for the counters
        s.setsockopt(zmq.MAXMSGSIZE, 1024)  # subscribers send only short subscription frames
        return s

    def _bind_tcp(self, ctx: zmq.Context) -> None:
        from zmq.auth.thread import ThreadAuthenticator

        from appliance.control.curve import CurveKeyError, load_server_keys

        assert self._tcp is not None and self._curve_dir is not None
        try:
            public, secret, authorized = load_server_keys(self._curve_dir)
        except CurveKeyError as exc:
            raise ControlServerError(str(exc)) from None
        self._auth = ThreadAuthenticator(ctx, log=logging.getLogger(__name__ + ".auth"))
        self._auth.start()
        # Every CURVE client is checked against the public keys in `authorized`; the ZAP
        # handler refuses the handshake for any other key (and for clients without keys).
        self._auth.configure_curve(domain=_ZAP_DOMAIN, location=str(authorized))
        router, xpub = self._router(ctx), self._xpub(ctx)
        for s in (router, xpub):
            s.setsockopt(zmq.CURVE_SERVER, 1)
            s.setsockopt(zmq.CURVE_PUBLICKEY, public)
            s.setsockopt(zmq.CURVE_SECRETKEY, secret)
            s.setsockopt(zmq.ZAP_DOMAIN, _ZAP_DOMAIN.encode())
        self._routers.append(router)
        self._xpubs.append(xpub)
        # Failed CURVE handshakes (no keys, unknown key) are counted from socket monitors.
        failed = zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        self._monitors = [router.get_monitor_socket(failed), xpub.get_monitor_socket(failed)]
        host, port = _split_tcp(self._tcp)
        if port is not None:
            router.bind(f"tcp://{host}:{port}")
            xpub.bind(f"tcp://{host}:{port + 1}")
        else:  # a free pair of adjacent ports
            for _ in range(50):
                p = router.bind_to_random_port(f"tcp://{host}", min_port=20000, max_port=60000)
                try:
                    xpub.bind(f"tcp://{host}:{p + 1}")
                    port = p
                    break
                except zmq.ZMQError:
                    router.unbind(router.getsockopt_string(zmq.LAST_ENDPOINT))
            else:
                raise ControlServerError(f"no two adjacent free TCP ports on {host}")
        self.endpoints["tcp_command"] = f"tcp://{host}:{port}"
        self.endpoints["tcp_events"] = f"tcp://{host}:{port + 1}"

    def _teardown(self) -> None:
        """Close everything start() created (the server thread is gone or never ran)."""
        for s in [*self._monitors, *getattr(self, "_routers", []), *getattr(self, "_xpubs", []), getattr(self, "_pull", None), self._push]:
            if s is not None and not s.closed:
                s.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        for p in self._files:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        self._files = []
        if self._lock_fd is not None:
            try:
                (self._socket_dir.absolute() / LOCK_FILE).unlink()
            except FileNotFoundError:
                pass
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- publishing --------------------------------------------------------------------------
    def publish(self, topic: str, obj: Any) -> bool:
        """Queue ``obj`` for the PUB socket under ``topic`` (one of TOPICS); thread-safe and
        non-blocking. Returns False, and counts a drop, when it could not be queued (server
        not running, or the queue full). ``obj`` must be msgpack-encodable (TypeError if not)."""
        if topic not in self._seq:
            raise ValueError(f"topic {topic!r} is not one of {', '.join(TOPICS)}")
        now = time.time()
        with self._lock:
            self._seq[topic] += 1
            pub = self._c["pub"][topic]
            pub["published"] += 1
            frames = encode_pub(topic, self._seq[topic], now, obj)
            if not self.running or self._push is None or self._stopped:
                pub["dropped"] += 1
                return False
            try:
                self._push.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                pub["dropped"] += 1
                return False
            return True

    def counters(self) -> dict[str, Any]:
        """A snapshot of the server's counters (what ``control_status`` answers)."""
        with self._lock:
            c = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self._c.items()}
            c["pub"] = {t: dict(v) for t, v in self._c["pub"].items()}
        c["uptime_s"] = round(time.monotonic() - self._t0, 3) if self._started else 0.0
        c["endpoints"] = dict(self.endpoints)
        c["pub_max_hz"] = self.pub_max_hz
        c["running"] = self.running
        return c

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._c[key] += n

    def _count_error(self, code: str) -> None:
        with self._lock:
            self._c["errors"][code] = self._c["errors"].get(code, 0) + 1

    # -- the server thread ---------------------------------------------------------------------
    def _serve_thread(self) -> None:
        try:
            self._serve()
        except BaseException as exc:  # pragma: no cover - a bug; keep it visible
            self._fatal = exc
            log.exception("control server thread died")
        finally:
            # The thread owns its sockets: close them here, in the thread that used them.
            for s in [*self._routers, *self._xpubs, self._pull]:
                s.close(linger=0)
            for m in self._monitors:
                m.close(linger=0)

    def _serve(self) -> None:
        poller = zmq.Poller()
        for s in (*self._routers, *self._xpubs, self._pull, *self._monitors):
            poller.register(s, zmq.POLLIN)
        next_slot: dict[str, float] = {t: 0.0 for t in THROTTLED_TOPICS}
        pending: dict[str, list[bytes]] = {}
        while True:
            now = time.monotonic()
            for topic, frames in list(pending.items()):
                if now >= next_slot[topic]:
                    del pending[topic]
                    next_slot[topic] = now + self._period
                    self._send_pub(topic, frames)
            timeout_ms = 1000.0
            if pending:
                timeout_ms = max(0.0, min(next_slot[t] for t in pending) - now) * 1000.0
            ready = dict(poller.poll(timeout_ms))
            for s in self._routers:
                if s in ready:
                    for _ in range(_BATCH):
                        try:
                            frames = s.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._handle(s, frames)
            for s in self._xpubs:
                if s in ready:
                    self._drain_subscriptions(s)
            for m in self._monitors:
                if m in ready:
                    self._drain_monitor(m)
            if self._pull in ready:
                for _ in range(_BATCH * 16):
                    try:
                        frames = self._pull.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    if len(frames) == 1:  # stop signal: flush the latest stats first
                        for topic, pending_frames in pending.items():
                            self._send_pub(topic, pending_frames)
                        return
                    topic = frames[0].decode()
                    if topic in THROTTLED_TOPICS:
                        now = time.monotonic()
                        if now >= next_slot[topic] and topic not in pending:
                            next_slot[topic] = now + self._period
                            self._send_pub(topic, frames)
                        else:
                            if topic in pending:
                                with self._lock:
                                    self._c["pub"][topic]["coalesced"] += 1
                            pending[topic] = frames  # the latest value wins
                    else:
                        self._send_pub(topic, frames)

    def _send_pub(self, topic: str, frames: list[bytes]) -> None:
        sent = dropped = 0
        for s in self._xpubs:
            try:
                s.send_multipart(frames, zmq.NOBLOCK)
                sent += 1
            except zmq.ZMQError:  # Again: a subscriber's queue is full (lossless_pub only)
                dropped += 1
        with self._lock:
            pub = self._c["pub"][topic]
            pub["sent"] += 1 if sent else 0
            pub["dropped"] += 1 if dropped else 0

    def _drain_monitor(self, m: zmq.Socket) -> None:
        for _ in range(_BATCH):
            try:
                frames = m.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 2:  # a monitor event: [event id + value, endpoint]
                self._count("auth_failures")
                log.warning("control: refused a TCP client whose CURVE handshake failed (%s)", frames[1].decode(errors="replace"))

    def _drain_subscriptions(self, s: zmq.Socket) -> None:
        for _ in range(_BATCH):
            try:
                frames = s.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            first = frames[0][:1] if frames and frames[0] else b""
            key = {b"\x01": "subscriptions", b"\x00": "unsubscriptions"}.get(first, "dropped_messages")
            self._count(key)

    def _handle(self, router: zmq.Socket, frames: list[bytes]) -> None:
        """Answer one ROUTER message: [identity, body] (DEALER) or [identity, b'', body] (REQ)."""
        self._count("requests")
        if len(frames) < 2 or not frames[0]:
            self._count("dropped_messages")  # nothing to address a reply to
            return
        ident = frames[0]
        if len(frames) == 2:
            envelope, body = [ident], frames[1]
        elif len(frames) == 3 and frames[1] == b"":
            envelope, body = [ident, b""], frames[2]
        else:
            # A REQ client's message starts with the empty delimiter: the reply must carry it
            # too, or REQ drops the reply and its socket stays stuck waiting for one.
            envelope = [ident, b""] if frames[1] == b"" else [ident]
            bodies = frames[len(envelope):]
            rid = next((i for i in map(read_id, bodies) if i is not None), None)
            shape = f"an empty delimiter and {len(bodies)} frames" if len(envelope) == 2 else f"{len(bodies)} frames"
            self._reply(router, envelope, encode_error(rid, "bad_request", f"a request is one frame (from a DEALER) or an empty delimiter and one frame (from a REQ); got {shape}: send the whole request as one msgpack frame"), "bad_request")
            return
        try:
            req = decode_request(body)
        except ProtocolError as exc:
            self._reply(router, envelope, encode_error(exc.req_id, exc.code, exc.message), exc.code)
            return
        command = self._commands.get(req.cmd)
        if command is None:
            self._reply(router, envelope, encode_error(req.id, "unknown_command", self._unknown_message(req.cmd)), "unknown_command")
            return
        try:
            command.validate(req.args)
            result = command(req.args)
            data = encode_reply(req.id, result)
        except CommandError as exc:
            self._reply(router, envelope, encode_error(req.id, exc.code, exc.message), exc.code)
            return
        except Exception as exc:
            log.exception("control command %r failed", req.cmd)
            msg = f"command {req.cmd!r} failed: {type(exc).__name__}: {exc} (the server logged the traceback)"
            self._reply(router, envelope, encode_error(req.id, "internal", msg[:2000]), "internal")
            return
        self._reply(router, envelope, data, None)

    def _reply(self, router: zmq.Socket, envelope: list[bytes], data: bytes, error: str | None) -> None:
        if error is None:
            self._count("replies_ok")
        else:
            self._count_error(error)
        try:
            router.send_multipart([*envelope, data], zmq.NOBLOCK)
        except zmq.ZMQError:  # the client is gone (EHOSTUNREACH) or not reading (EAGAIN)
            self._count("undeliverable_replies")

