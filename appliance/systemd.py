"""systemd integration without libsystemd: the notify protocol, the watchdog, the environment.

Under a ``Type=notify`` unit systemd passes a datagram socket in ``NOTIFY_SOCKET``; the
service reports ``READY=1`` once it serves, ``STATUS=...`` lines for ``systemctl status``,
``STOPPING=1`` when it starts to drain, and ``WATCHDOG=1`` at least every ``WATCHDOG_USEC``
(systemd restarts a service that goes quiet). This module speaks that protocol with the
standard library only (``man sd_notify``). Every systemd environment variable the appliance
uses is read in one place, :meth:`SystemdEnvironment.from_environ`; outside systemd every call
is a cheap no-op, so the supervisor calls them unconditionally.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Liveness",
    "Notifier",
    "NotifyConfigError",
    "SystemdEnvironment",
    "WatchdogThread",
]

log = logging.getLogger(__name__)

# Set by systemd for the service's main process (man systemd.exec, sd_notify, sd_watchdog_enabled).
_NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
_FIELD_NAME = re.compile(r"[A-Z_][A-Z0-9_]*\Z")


# How long READY=1 and STOPPING=1 are retried while the receiver's queue is full.
_MUST_ARRIVE_S = 2.0


class NotifyConfigError(ValueError):
    """A systemd environment variable holds a value the protocol does not allow."""


@dataclass(frozen=True)
class SystemdEnvironment:
    """What systemd told this process through its environment (all ``None`` outside systemd).

    ``notify_socket`` is the socket address ready for ``sendto`` (an abstract ``@name`` becomes
    ``"\\0name"``); ``watchdog_usec``/``watchdog_pid`` come from ``WatchdogSec=``;
    ``journal_stream`` is the ``(st_dev, st_ino)`` of the journal stream stdout/stderr are
    connected to; ``runtime_directory``/``state_directory``/``logs_directory`` come from
    ``RuntimeDirectory=``, ``StateDirectory=`` and ``LogsDirectory=`` (the first entry where
    the unit lists several).
    """

    notify_socket: str | None = None
    watchdog_usec: int | None = None
    watchdog_pid: int | None = None
    journal_stream: tuple[int, int] | None = None
    runtime_directory: Path | None = None
    state_directory: Path | None = None
    logs_directory: Path | None = None

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str] | None = None, *, unset: bool = False
    ) -> SystemdEnvironment:
        """Read the variables from ``environ`` (default ``os.environ``).

        ``unset=True`` then removes ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``
        from ``os.environ`` (like ``sd_notify``'s ``unset_environment``) so the stage
        processes the supervisor spawns do not inherit them. Raises
        :class:`NotifyConfigError` naming the variable when a value is malformed.
        """
        env = os.environ if environ is None else environ
        parsed = cls(
            notify_socket=_parse_socket(env.get("NOTIFY_SOCKET")),
            watchdog_usec=_parse_positive("WATCHDOG_USEC", env.get("WATCHDOG_USEC"), "microseconds, set by systemd from WatchdogSec="),
            watchdog_pid=_parse_positive("WATCHDOG_PID", env.get("WATCHDOG_PID"), "the pid that must send the watchdog pings"),
            journal_stream=_parse_journal_stream(env.get("JOURNAL_STREAM")),
            runtime_directory=_first_dir(env.get("RUNTIME_DIRECTORY")),
            state_directory=_first_dir(env.get("STATE_DIRECTORY")),
            logs_directory=_first_dir(env.get("LOGS_DIRECTORY")),
        )
        if unset:
            for name in _NOTIFY_VARS:
                os.environ.pop(name, None)
        return parsed

    def stream_is_journal(self, stream: Any) -> bool:
        """True when ``stream`` (a file object or fd) is the journal stream systemd connected
        (``man systemd.exec``, ``$JOURNAL_STREAM``), so log lines may carry ``<N>`` priority
        prefixes that journald strips."""
        if self.journal_stream is None:
            return False
        try:
            fd = stream if isinstance(stream, int) else stream.fileno()
            st = os.fstat(fd)
        except (AttributeError, OSError, ValueError):
            return False
        return (st.st_dev, st.st_ino) == self.journal_stream


def _parse_socket(value: str | None) -> str | None:
    if not value:
        return None
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    raise NotifyConfigError(
        f"NOTIFY_SOCKET={value!r} is not supported: expected an absolute path or an abstract "
        "socket '@name' (systemd sets it for Type=notify units; unset it to run outside systemd)"
    )


def _parse_positive(name: str, value: str | None, meaning: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        number = int(value, 10)
    except ValueError:
        number = 0
    if number <= 0:
        raise NotifyConfigError(f"{name}={value!r} is not a positive integer ({meaning})")
    return number


def _parse_journal_stream(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    dev, _, ino = value.partition(":")
    try:
        return int(dev), int(ino)
    except ValueError:
        raise NotifyConfigError(
            f"JOURNAL_STREAM={value!r} is not 'DEVICE:INODE' (systemd sets it when stdout or "
            "stderr is connected to the journal)"
        ) from None


def _first_dir(value: str | None) -> Path | None:
    return Path(value.split(":")[0]) if value else None


class Notifier:
    """Sends notify messages to systemd; every method is a no-op returning False outside it.

    Build it with :meth:`from_environment` once, in the supervisor's main process (or
    directly: ``address`` is a socket path or ``"\\0name"`` for an abstract socket). Methods
    return True when the datagram was sent. A send that fails (the socket went away) is
    logged once as a warning and returns False: losing systemd must not stop a run.
    Thread-safe: the watchdog thread and the main loop may share one instance.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        watchdog_usec: int | None = None,
        watchdog_pid: int | None = None,
    ) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec
        self.watchdog_pid = watchdog_pid
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._warned = False
        self._last_ping: float | None = None

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier:
        """A notifier for what systemd passed in ``environ`` (default ``os.environ``); see
        :meth:`SystemdEnvironment.from_environ` for ``unset``."""
        return cls.from_systemd_environment(SystemdEnvironment.from_environ(environ, unset=unset))

    @classmethod
    def from_systemd_environment(cls, env: SystemdEnvironment) -> Notifier:
        return cls(env.notify_socket, watchdog_usec=env.watchdog_usec, watchdog_pid=env.watchdog_pid)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notify socket."""
        return self.address is not None

    def notify(self, *, retry_s: float = 0.0, **fields: Any) -> bool:
        """Send ``KEY=value`` fields in one datagram (systemd applies them together), e.g.
        ``notify(READY=1, STATUS="running")``. Keys are upper-case protocol names; values are
        converted with ``str`` and must not contain a newline.

        The socket is non-blocking, so a receiver whose queue is full (a unix datagram queue
        holds ``net.unix.max_dgram_qlen`` messages, 10 by default) makes the send fail at once
        and the message is dropped. ``retry_s`` > 0 retries such a send for up to that many
        seconds first: :meth:`ready` and :meth:`stopping` use it, as those two must not be lost,
        while periodic ``STATUS``/``WATCHDOG`` pings are dropped rather than stall the loop."""
        if not fields:
            raise ValueError("notify() needs at least one field, e.g. notify(READY=1)")
        lines = []
        for key, value in fields.items():
            if not _FIELD_NAME.match(key):
                raise ValueError(f"notify field name {key!r} is not an upper-case protocol name such as READY or STATUS")
            text = str(int(value)) if isinstance(value, bool) else str(value)
            if "\n" in text:
                raise ValueError(f"notify field {key} contains a newline; one field is one line")
            lines.append(f"{key}={text}")
        if self.address is None:
            return False
        return self._send("\n".join(lines).encode(), retry_s=retry_s)

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up finished; systemd considers the unit started."""
        return self.notify(READY=1, retry_s=_MUST_ARRIVE_S, **_status(status))

    def status(self, text: str) -> bool:
        """``STATUS=text``: one line shown by ``systemctl status`` (newlines become spaces)."""
        return self.notify(**_status(text))

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the service began to shut down (drain)."""
        return self.notify(STOPPING=1, retry_s=_MUST_ARRIVE_S, **_status(status))

    def reloading(self, status: str | None = None) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (as ``Type=notify-reload`` requires); send
        :meth:`ready` when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec, **_status(status))

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: while starting or stopping, ask for ``seconds`` more before
        systemd gives up (a long drain that is still making progress)."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(1, int(seconds * 1_000_000)))

    def watchdog_enabled(self) -> bool:
        """True when systemd expects watchdog pings from this process (``WATCHDOG_USEC`` set
        and ``WATCHDOG_PID``, when set, is our pid)."""
        if self.address is None or self.watchdog_usec is None:
            return False
        return self.watchdog_pid is None or self.watchdog_pid == os.getpid()

    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half of ``WATCHDOG_USEC`` (``man sd_watchdog_enabled``), or
        None when this process need not ping."""
        if not self.watchdog_enabled():
            return None
        assert self.watchdog_usec is not None
        return self.watchdog_usec / 2_000_000

    def watchdog(self) -> bool:
        """``WATCHDOG=1``; only sent when :meth:`watchdog_enabled` (the ``WATCHDOG_PID`` rule)."""
        if not self.watchdog_enabled():
            return False
        self._last_ping = time.monotonic()
        return self._send(b"WATCHDOG=1")

    def watchdog_if_due(self) -> bool:
        """Ping when at least :meth:`watchdog_interval` passed since the last ping: call it from
        the supervisor's main loop (a loop that hangs stops pinging). True when it pinged."""
        interval = self.watchdog_interval()
        if interval is None:
            return False
        last = self._last_ping
        if last is not None and time.monotonic() - last < interval:
            return False
        return self.watchdog()

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, data: bytes, *, retry_s: float = 0.0) -> bool:
        deadline = time.monotonic() + retry_s
        while True:
            with self._lock:
                try:
                    if self._sock is None:
                        # Non-blocking: a notify receiver that stops reading (a full datagram
                        # queue) must never stall the supervisor's loop; the message is dropped
                        # instead, unless the caller asked for a bounded retry.
                        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
                    self._sock.sendto(data, self.address)
                    return True
                except BlockingIOError as exc:
                    if time.monotonic() < deadline:
                        error: OSError | None = None
                    else:
                        error = exc
                except OSError as exc:
                    error = exc
                if error is not None:
                    if not self._warned:
                        self._warned = True
                        log.warning("systemd notify to %r failed: %s (further failures are not logged)", self.address, error)
                    return False
            time.sleep(0.01)  # the receiver's queue is full: give it a moment to read

    def __repr__(self) -> str:
        return (
            f"Notifier(address={self.address!r}, watchdog_usec={self.watchdog_usec}, "
            f"watchdog_pid={self.watchdog_pid})"
        )


def _status(text: str | None) -> dict[str, str]:
    if text is None:
        return {}
    return {"STATUS": " ".join(str(text).splitlines())}


class Liveness:
    """A health callback for :class:`WatchdogThread`: healthy while :meth:`beat` was called
    within ``max_age`` seconds. The supervisor beats once per main-loop iteration, so a hung
    loop stops the pings and systemd restarts the service."""

    def __init__(self, max_age: float) -> None:
        if max_age <= 0:
            raise ValueError(f"max_age must be > 0 seconds, got {max_age!r}")
        self.max_age = max_age
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def age(self) -> float:
        return time.monotonic() - self._last

    def __call__(self) -> bool:
        return self.age() <= self.max_age


class WatchdogThread:
    """Pings systemd's watchdog every ``interval`` seconds (default: the notifier's
    :meth:`~Notifier.watchdog_interval`) while ``healthy()`` returns True.

    An unhealthy answer, or an exception from ``healthy``, skips the ping (logged when the
    state changes), so a supervisor whose main loop hangs is restarted by systemd. A no-op
    when the watchdog is not enabled. Use as a context manager or call :meth:`start` and
    :meth:`stop`.
    """

    def __init__(
        self,
        notifier: Notifier,
        healthy: Callable[[], bool],
        *,
        interval: float | None = None,
        name: str = "systemd-watchdog",
    ) -> None:
        if interval is not None and interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
        self.notifier = notifier
        self.healthy = healthy
        self.interval = interval if interval is not None else notifier.watchdog_interval()
        self.name = name
        self.pings = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> WatchdogThread:
        if self._thread is not None:
            raise RuntimeError("WatchdogThread already started")
        if self.interval is None or not self.notifier.watchdog_enabled():
            return self
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> WatchdogThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        assert self.interval is not None
        was_healthy = True
        deadline = time.monotonic()
        while not self._stop.is_set():
            try:
                ok = bool(self.healthy())
            except Exception:
                log.exception("watchdog health check raised; not pinging systemd")
                ok = False
            if ok:
                if self.notifier.watchdog():
                    self.pings += 1
                if not was_healthy:
                    log.warning("supervisor healthy again; systemd watchdog pings resumed")
            elif was_healthy:
                log.error("supervisor unhealthy; systemd watchdog pings stopped (systemd restarts the service after WatchdogSec)")
            was_healthy = ok
            # fixed-rate schedule; after a stall, continue from now rather than burst
            deadline = max(deadline + self.interval, time.monotonic())
            self._stop.wait(deadline - time.monotonic())
