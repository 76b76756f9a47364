"""Suite-wide fixtures: unique ring names and a leak check on /dev/shm after every test."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

SHM = Path("/dev/shm")


def _ours() -> set[str]:
    """Our segments: named by this test process's pid (``ring_name`` and the benchmarks
    embed it), so a second pytest running beside this one is never blamed or cleaned."""
    tag = f".{os.getpid()}."
    try:
        return {p for p in os.listdir(SHM) if tag in p and ("appliance" in p or "aptest" in p)}
    except FileNotFoundError:
        return set()


@pytest.fixture(autouse=True)
def no_shared_memory_leaks():
    """Fail any test that leaves a ring or semaphore of ours behind in /dev/shm."""
    before = _ours()
    yield
    leaked = _ours() - before
    if leaked:
        for name in leaked:  # clean up so one leak does not fail every later test
            try:
                (SHM / name).unlink()
            except FileNotFoundError:
                pass
        pytest.fail(f"test leaked shared-memory segments: {sorted(leaked)}")


@pytest.fixture
def ring_name() -> str:
    """A ring name unique to this test."""
    return f"aptest.{os.getpid()}.{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True, scope="session")
def private_control_socket_dir():
    """Every appliance started by the tests (in-process or as a subprocess) puts its control
    sockets in a private, short runtime directory instead of /run/appliance, so a test run
    never collides with a real appliance or with another test session on the same machine."""
    old = os.environ.get("XDG_RUNTIME_DIR")
    folder = tempfile.mkdtemp(prefix="aprt-")
    os.environ["XDG_RUNTIME_DIR"] = folder
    yield Path(folder)
    if old is None:
        os.environ.pop("XDG_RUNTIME_DIR", None)
    else:
        os.environ["XDG_RUNTIME_DIR"] = old
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def no_leaked_threads():
    """Fail the test if it leaves a thread running (give threads 3 s to finish)."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 3.0
    while True:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if leaked:
        pytest.fail(f"test leaked threads: {[t.name for t in leaked]}")
