"""Starting the appliance's CLI as a real subprocess in tests, without leaking it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def cli_process(args: list[str], **kwargs) -> Iterator[subprocess.Popen]:
    """``Popen(args)`` in its own session. On the way out, whatever of it still runs (the
    process and the stage processes that share its pipes) is SIGKILLed as a group, and its
    pipes are closed: a failing or timed-out test leaves no process or open file behind."""
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass


class NotifyListener:
    """A systemd notify socket that is read continuously in a thread, as systemd reads it.

    A unix datagram queue holds only ``net.unix.max_dgram_qlen`` (10) messages; a test that
    reads the socket only now and then lets the queue fill while the run goes on, and the
    appliance's non-blocking notifier then drops what does not fit. Use as a context manager;
    ``messages`` is every message received so far, in order."""

    def __init__(self, path: str) -> None:
        import socket
        import threading

        self.path = path
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="notify-listener", daemon=True)

    def __enter__(self) -> "NotifyListener":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append(data.decode())
                self._cond.notify_all()

    def wait_for(self, predicate, timeout: float) -> list[str]:
        """Block until ``predicate(messages)`` is true; AssertionError after ``timeout``."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.messages), timeout=timeout):
                raise AssertionError(f"timed out after {timeout} s; notify messages so far: {self.messages}")
            return list(self.messages)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sock.close()
