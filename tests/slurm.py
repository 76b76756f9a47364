"""A private one-node Slurm cluster for the tests: munged, slurmctld and slurmd started as root
from a ``slurm.conf`` written in a temp folder, stopped again by their pids.

Everything lives under the folder it is given (config, munge key and socket, spool and state
folders, logs, the job-completion file), on private ports, so it neither needs nor touches
``/etc/slurm`` or a cluster the machine may already run. Clients (``sbatch``, ``squeue``,
``scancel``, dask-jobqueue) find it through ``SLURM_CONF``, which :func:`slurm_cluster` sets for
the life of the fixture.

Skips (with the reason) only where the binaries or root are missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["SlurmCluster", "missing", "slurm_cluster", "start_slurm"]

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")


def missing() -> str | None:
    """Why a private Slurm cannot start here, or None."""
    if os.geteuid() != 0:
        return "the Slurm tests start munged/slurmctld/slurmd as root; run them as root"
    for b in BINARIES:
        if shutil.which(b) is None and not Path("/usr/sbin", b).exists():
            return f"{b} is not installed (Debian packages slurm-wlm and munge; scripts/system-deps installs them)"
    return None


def _bin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    node: str
    partition: str
    jobcomp: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> str:
        p = subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=60)
        if check and p.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def squeue(self) -> list[dict]:
        """The queue as ``[{"id", "name", "state"}]``."""
        out = self.run("squeue", "-h", "-o", "%i|%j|%T")
        return [dict(zip(("id", "name", "state"), line.split("|"))) for line in out.splitlines() if line.strip()]

    def completed(self) -> str:
        """The job-completion log (jobcomp/filetxt): one line per finished batch job."""
        try:
            return self.jobcomp.read_text()
        except FileNotFoundError:
            return ""

    def log(self, name: str) -> str:
        try:
            return (self.root / f"{name}.log").read_text()[-4000:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        """Cancel what is queued, then stop slurmd, slurmctld and munged by their pids."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "-u", "root"], env=self.env, capture_output=True, timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.pop(name, None)
            if p is None:
                continue
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
        # slurmstepd of a job slurmd left behind (they outlive slurmd by design)
        for pid in _stepds(self.root):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _stepds(root: Path) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if b"slurmstepd" in cmd and str(root).encode() in cmd:
            out.append(int(d.name))
    return out


def _memory_mb() -> int:
    import psutil

    return max(1024, int(psutil.virtual_memory().total / 2**20) - 2048)


def start_slurm(root: Path, timeout: float = 60.0) -> SlurmCluster:
    """Write the config and start the daemons; waits until the node is idle."""
    root = Path(root)
    for d in ("state", "spool", "munge"):
        (root / d).mkdir(parents=True, exist_ok=True)
    node = socket.gethostname().split(".")[0]
    munge_sock = root / "munge" / "munge.socket"
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    (root / "munge").chmod(0o700)
    jobcomp = root / "jobcomp.txt"
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=applab",
        f"SlurmctldHost={node}(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_sock}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "SlurmUser=root",
        "ReturnToService=2",
        "MpiDefault=none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/filetxt",
        f"JobCompLoc={jobcomp}",
        "SchedulerParameters=sched_interval=1",
        "MinJobAge=30",
        "KillWait=2",
        f"NodeName={node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 1} RealMemory={_memory_mb()} State=UNKNOWN",
        f"PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    cluster = SlurmCluster(root, conf, node, "debug", jobcomp)
    env = cluster.env
    try:
        with open(root / "munged.log", "ab") as lg:
            cluster.procs["munged"] = subprocess.Popen(
                [_bin("munged"), "--foreground", "--force", f"--socket={munge_sock}", f"--key-file={key}",
                 f"--pid-file={root / 'munge' / 'munged.pid'}", f"--seed-file={root / 'munge' / 'seed'}",
                 f"--log-file={root / 'munged.log'}"], stdout=lg, stderr=subprocess.STDOUT)
        _wait(lambda: munge_sock.exists(), 20, "munged's socket", cluster, "munged")
        with open(root / "slurmctld.out", "ab") as lg:
            cluster.procs["slurmctld"] = subprocess.Popen([_bin("slurmctld"), "-D", "-i", "-f", str(conf)], env=env,
                                                          stdout=lg, stderr=subprocess.STDOUT)
        _wait(lambda: subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True).stdout.count("UP") > 0,
              timeout, "slurmctld to answer scontrol ping", cluster, "slurmctld")
        with open(root / "slurmd.out", "ab") as lg:
            cluster.procs["slurmd"] = subprocess.Popen([_bin("slurmd"), "-D", "-f", str(conf)], env=env,
                                                       stdout=lg, stderr=subprocess.STDOUT)
        _wait(lambda: "idle" in subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout,
              timeout, "the node to be idle in sinfo", cluster, "slurmd")
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _wait(pred, timeout: float, what: str, cluster: SlurmCluster, daemon: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        p = cluster.procs.get(daemon)
        if p is not None and p.poll() is not None:
            raise RuntimeError(f"{daemon} exited ({p.returncode}) while waiting for {what}: {cluster.log(daemon)}"
                               f"{(cluster.root / (daemon + '.out')).read_text()[-2000:] if (cluster.root / (daemon + '.out')).exists() else ''}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}: {cluster.log(daemon)}")
        time.sleep(0.2)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running private one-node Slurm (``SLURM_CONF`` set while it lives)."""
    why = missing()
    if why:
        pytest.skip(why)
    # a short path: slurmd's spool and munge's socket paths must stay under the unix-socket limit
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="slurm-", dir="/tmp"))
    cluster = start_slurm(root)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    try:
        yield cluster
    finally:
        cluster.stop()
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        shutil.rmtree(root, ignore_errors=True)
