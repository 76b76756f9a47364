"""Fixtures for the control plane tests: a short socket directory and a thread-leak check."""

from __future__ import annotations

import time

import pytest


@pytest.fixture(autouse=True)
def _no_leaked_threads(no_leaked_threads):
    """Fail a test that leaves a thread running (server threads, ZAP authenticators)."""
    yield


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
