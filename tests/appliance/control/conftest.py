"""Fixtures for the control plane tests: a short socket directory and a thread-leak check."""

from __future__ import annotations

import threading
import time

import pytest


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail a test that leaves a thread running (server threads, ZAP authenticators)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if leaked:
        pytest.fail(f"test leaked threads: {[t.name for t in leaked]}")


@pytest.fixture
def sock_dir(tmp_path):
    """A socket directory (not yet created: the server creates it 0700)."""
    return tmp_path / "sock"


def wait_for(predicate, timeout=5.0, what="condition"):
    """Poll ``predicate`` until it is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)
