"""A stand-in cloud for the tests: a real Dask scheduler and workers as separate processes on
loopback, started in a working folder outside any data root, given only the object store's
endpoint and the standard AWS environment (as EC2 workers get an instance profile).

Run as root (as CI is), the scheduler and workers run as ``nobody`` (``setpriv``), so the
pytest data roots (under ``/tmp/pytest-of-root``, mode 0700) are unreadable to them: a worker
that tried to open a path on the instrument's disk would fail. Not root: they run as this user,
and ``CloudCluster.isolated`` is False (the tests that need the isolation skip, saying so).

``cloud_cluster`` (module scope) yields a :class:`CloudCluster`; everything is killed and the
working folder removed after the module.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

__all__ = ["CloudCluster", "cloud_cluster"]

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534


class CloudCluster:
    """A scheduler and ``workers`` single-threaded workers (``python -m dask ...``)."""

    def __init__(self, workers: int = 2, env: dict | None = None) -> None:
        self.n = workers
        self.isolated = os.geteuid() == 0 and shutil.which("setpriv") is not None
        self.folder = Path(tempfile.mkdtemp(prefix="cloud-pool-"))
        os.chmod(self.folder, 0o755)
        self.scheduler_file = self.folder / "scheduler.json"
        self.procs: list[subprocess.Popen] = []
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.folder), "PYTHONPATH": str(REPO),
                    "DASK_DISTRIBUTED__WORKER__DAEMON": "false", "PYTHONDONTWRITEBYTECODE": "1", **(env or {})}

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"] if self.isolated else []
        log = open(self.folder / f"{name}.log", "wb")
        try:
            p = subprocess.Popen(prefix + [sys.executable, "-m", "dask", *args], cwd=self.folder, env=self.env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()
        self.procs.append(p)
        return p

    @property
    def address(self) -> str:
        return json.loads(self.scheduler_file.read_text())["address"]

    def start(self, timeout: float = 90.0) -> None:
        if self.isolated:
            os.chown(self.folder, NOBODY, NOBODY)
        self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", str(self.scheduler_file)])
        self._wait(lambda: self.scheduler_file.exists(), timeout, "the scheduler's file")
        for i in range(self.n):
            work = self.folder / f"worker-{i}"
            work.mkdir()
            if self.isolated:
                os.chown(work, NOBODY, NOBODY)
            self._spawn(f"worker-{i}", ["worker", "--scheduler-file", str(self.scheduler_file), "--nthreads", "1",
                                        "--no-nanny", "--no-dashboard", "--local-directory", str(work),
                                        "--host", "127.0.0.1", "--name", f"cloud-{i}"])
        from distributed import Client

        with Client(self.address, timeout=timeout, set_as_default=False) as c:
            c.wait_for_workers(self.n, timeout=timeout)

    def _wait(self, pred, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {f.name}\n{f.read_text(errors='replace')[-1500:]}" for f in sorted(self.folder.glob("*.log")))
                self.stop()
                raise RuntimeError(f"the cloud cluster did not start ({what}):\n{logs}")
            time.sleep(0.1)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs = []
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def cloud_cluster(s3_server):
    """A running :class:`CloudCluster` whose workers reach the test's S3 server (``s3_server``)."""
    aws = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION") if k in os.environ}
    cluster = CloudCluster(2, {**aws, "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"})
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
