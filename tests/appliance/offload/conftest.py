"""Shared fixtures of the offload tests: a fast config and helpers to wait on the ledger."""

from __future__ import annotations

import time

import pytest

from appliance.offload import OffloadConfig
from tests.pg import pg_dsn, pg_server  # noqa: F401  (fixtures: a private PostgreSQL server)

PLUGIN = "tests.appliance.offload._jobs"


def fast_config(**kw) -> OffloadConfig:
    """Short leases and ticks so a lost worker is noticed in about a second."""
    base = dict(workers=2, lease_s=1.0, heartbeat_s=0.2, tick_s=0.05, poll_s=0.2, plugins=(PLUGIN,),
                limits={"realtime": 2, "batch": 2, "reprocess": 2}, reserved_realtime=0)
    base.update(kw)
    return OffloadConfig(**base)


def wait_for(pred, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def jobs_plugin():
    import importlib

    return importlib.import_module(PLUGIN)


@pytest.fixture
def dask_offload_thread():
    """distributed starts one process-wide offload thread ("Dask-Offload_0") on first use and
    keeps it for the life of the process; start it before no_leaked_threads takes its snapshot
    so the check still catches the threads our executor would leak (clients, clusters)."""
    from distributed.utils import _offload_executor

    _offload_executor.submit(lambda: None).result()
