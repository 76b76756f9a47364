"""Process placement for real-time stages: CPU pinning, memory locking, real-time scheduling.

Each pipeline stage pins itself to the CPUs the supervisor's plan gives it, optionally
locks its memory (so a page fault never stalls a frame) and optionally takes a real-time
scheduling class. Every refusal by the kernel is turned into an exception whose message
says *why* (the limit, capability or cgroup setting in the way) and how to fix it, because
"Operation not permitted" on an instrument at 3 a.m. helps nobody.

Linux only. Nothing happens at import time; libc is loaded on first use.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as _errno
import functools
import os
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from rt.topology import format_cpulist, parse_cpulist

__all__ = [
    "MemoryLockError",
    "PinError",
    "RealtimeError",
    "Schedule",
    "allowed_cpus",
    "current_affinity",
    "current_schedule",
    "mlockall",
    "munlockall",
    "pin",
    "realtime",
    "restore_schedule",
    "set_realtime",
    "try_mlockall",
]

# <sys/mman.h>
_MCL_CURRENT = 1
_MCL_FUTURE = 2
_MCL_ONFAULT = 4

# Capability bits (linux/capability.h) looked at when explaining a refusal.
_CAP_IPC_LOCK = 14
_CAP_SYS_NICE = 23

_SCHED_RESET_ON_FORK = getattr(os, "SCHED_RESET_ON_FORK", 0x40000000)
_POLICY_NAMES = {
    os.SCHED_OTHER: "other",
    os.SCHED_FIFO: "fifo",
    os.SCHED_RR: "rr",
    getattr(os, "SCHED_BATCH", 3): "batch",
    getattr(os, "SCHED_IDLE", 5): "idle",
    6: "deadline",
}
_POLICY_BY_NAME = {name: number for number, name in _POLICY_NAMES.items()}
_REALTIME_POLICIES = ("fifo", "rr")


class PinError(OSError):
    """The CPUs asked for cannot be (or were not) granted to the process."""


class MemoryLockError(OSError):
    """``mlockall`` was refused; the message names the limit or capability in the way."""


class RealtimeError(OSError):
    """A real-time scheduling class was refused; the message names the reason and the fix."""


# ---------------------------------------------------------------------------- helpers


@functools.cache
def _libc() -> ctypes.CDLL:
    # CDLL(None) is the running program's symbol table, which on Linux includes libc; it
    # avoids ctypes.util.find_library, which may run ldconfig/gcc in a subprocess.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mlockall.argtypes = [ctypes.c_int]
    libc.mlockall.restype = ctypes.c_int
    libc.munlockall.argtypes = []
    libc.munlockall.restype = ctypes.c_int
    return libc


def _status_field(pid: int, name: str) -> str | None:
    try:
        with open(f"/proc/{pid or 'self'}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == name:
                    return value.strip()
    except OSError:
        return None
    return None


def _has_capability(bit: int, pid: int = 0) -> bool:
    value = _status_field(pid, "CapEff")
    if value is None:
        return os.geteuid() == 0
    return bool(int(value, 16) >> bit & 1)


def _limit_text(value: int) -> str:
    return "unlimited" if value == resource.RLIM_INFINITY else str(value)


def _bytes_text(n: int) -> str:
    if n == resource.RLIM_INFINITY:
        return "unlimited"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def _as_cpu_set(cpus: Iterable[int] | str | int) -> frozenset[int]:
    if isinstance(cpus, str):
        result = parse_cpulist(cpus)
    elif isinstance(cpus, int):
        result = frozenset({cpus})
    else:
        result = frozenset(cpus)
    for c in result:
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise ValueError(f"CPU numbers must be non-negative integers, got {c!r}")
    if not result:
        raise ValueError("pin() needs at least one CPU")
    return result


# ---------------------------------------------------------------------------- pinning


def _cgroup_cpuset(pid: int) -> frozenset[int] | None:
    """The effective cpuset of the process's cgroup (v2 or v1), or None when unreadable."""
    try:
        lines = Path(f"/proc/{pid or 'self'}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2 unified hierarchy
            candidate = Path("/sys/fs/cgroup") / rel / "cpuset.cpus.effective"
        elif "cpuset" in controllers.split(","):
            candidate = Path("/sys/fs/cgroup/cpuset") / rel / "cpuset.effective_cpus"
        else:
            continue
        try:
            return parse_cpulist(candidate.read_text())
        except (OSError, ValueError):
            continue
    return None


def allowed_cpus(pid: int = 0) -> frozenset[int]:
    """CPUs this process may be pinned to: online CPUs within its cgroup's cpuset.

    This is wider than the current affinity (a pinned process may re-pin elsewhere).
    """
    try:
        online = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
    except (OSError, ValueError):
        online = frozenset(range(os.cpu_count() or 1))
    cpuset = _cgroup_cpuset(pid)
    return online if cpuset is None else online & cpuset


def current_affinity(pid: int = 0) -> frozenset[int]:
    """The CPUs the calling thread (or thread/process ``pid``) may run on now."""
    return frozenset(os.sched_getaffinity(pid))


def _threads(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return [pid]


def pin(cpus: Iterable[int] | str | int, *, pid: int | None = None) -> frozenset[int]:
    """Pin every thread of this process (or of process ``pid``) to ``cpus``; return the result.

    ``cpus`` is a CPU number, an iterable of them, or a cpulist such as ``"2-3"``. All
    threads are pinned, not only the caller, because libraries start threads at import
    (OpenBLAS, for one) and ``sched_setaffinity`` acts on one thread; threads started
    later inherit the affinity of the thread that starts them. Raises :class:`PinError`
    naming the CPUs that are offline or outside the process's cpuset, before changing
    anything, and when the kernel grants a different set than asked.
    """
    wanted = _as_cpu_set(cpus)
    target = os.getpid() if pid is None else pid
    allowed = allowed_cpus(target)
    missing = wanted - allowed
    if missing:
        raise PinError(
            _errno.EINVAL,
            f"cannot pin to CPU(s) {format_cpulist(missing)}: not online or not in this process's "
            f"cpuset (allowed: {format_cpulist(allowed) or 'none'}); pick CPUs from the allowed "
            "set (`appliance topology` lists them) or widen the cgroup's cpuset",
        )
    for tid in _threads(target):
        try:
            os.sched_setaffinity(tid, wanted)
        except ProcessLookupError:
            continue  # the thread exited between listing and pinning
        except OSError as exc:
            raise PinError(
                exc.errno,
                f"sched_setaffinity({tid}, {format_cpulist(wanted)}) refused: {exc.strerror}"
                + (
                    " (pinning another user's process needs CAP_SYS_NICE)"
                    if exc.errno == _errno.EPERM
                    else ""
                ),
            ) from exc
    granted = current_affinity(target)
    if granted != wanted:
        raise PinError(
            _errno.EINVAL,
            f"asked for CPU(s) {format_cpulist(wanted)} but the kernel granted "
            f"{format_cpulist(granted)} (a cpuset change or CPU hotplug raced the call)",
        )
    return granted


# ---------------------------------------------------------------------------- memory lock


def _memlock_reason(err: int) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    has_cap = _has_capability(_CAP_IPC_LOCK)
    vm_size = _status_field(0, "VmSize") or "?"
    limits = f"RLIMIT_MEMLOCK is {_bytes_text(soft)} (hard {_bytes_text(hard)})"
    fix = (
        "run with CAP_IPC_LOCK (systemd: AmbientCapabilities=CAP_IPC_LOCK) or raise the limit "
        "(systemd: LimitMEMLOCK=infinity; shell: ulimit -l unlimited; /etc/security/limits.conf: memlock)"
    )
    if err == _errno.EPERM:
        return f"{limits} and the process lacks CAP_IPC_LOCK; {fix}"
    if err == _errno.ENOMEM:
        if has_cap:
            return (
                f"not enough memory to lock the address space (VmSize {vm_size}); "
                "lock less (on_fault=True) or free memory"
            )
        return f"{limits}, smaller than the address space to lock (VmSize {vm_size}), and no CAP_IPC_LOCK; {fix}"
    if err == _errno.EINVAL:
        return "the kernel rejected the flags (MCL_ONFAULT needs Linux 4.4 or newer)"
    return os.strerror(err)


def mlockall(*, current: bool = True, future: bool = True, on_fault: bool = False) -> None:
    """Lock the process's pages in RAM (``MCL_CURRENT | MCL_FUTURE`` by default).

    A locked stage never waits for a page to be read back from swap or faulted in, which
    keeps frame latency flat. With ``future`` every later allocation is locked too, and an
    allocation that would exceed ``RLIMIT_MEMLOCK`` fails, so size the limit for the whole
    stage. ``on_fault`` locks pages only once touched (Linux 4.4+). Raises
    :class:`MemoryLockError` explaining the refusal.
    """
    flags = (_MCL_CURRENT if current else 0) | (_MCL_FUTURE if future else 0)
    if on_fault:
        flags |= _MCL_ONFAULT
    if not flags & (_MCL_CURRENT | _MCL_FUTURE):
        raise ValueError("mlockall() needs current=True or future=True")
    if _libc().mlockall(flags) != 0:
        err = ctypes.get_errno()
        raise MemoryLockError(err, f"mlockall refused ({os.strerror(err)}): {_memlock_reason(err)}")


def try_mlockall(**kwargs: bool) -> str | None:
    """:func:`mlockall`, returning None on success or the reason it was refused."""
    try:
        mlockall(**kwargs)
    except MemoryLockError as exc:
        return exc.strerror
    return None


def munlockall() -> None:
    """Undo :func:`mlockall` (pages may be swapped again, later allocations are not locked)."""
    if _libc().munlockall() != 0:
        err = ctypes.get_errno()
        raise MemoryLockError(err, f"munlockall failed: {os.strerror(err)}")


# ---------------------------------------------------------------------------- scheduling


@dataclass(frozen=True)
class Schedule:
    """A thread's scheduling class as the kernel reports it."""

    #: "other", "fifo", "rr", "batch", "idle" or "deadline"
    policy: str
    #: real-time priority (1-99 for fifo/rr, 0 otherwise)
    priority: int
    #: nice value (meaningful for other/batch)
    nice: int
    #: SCHED_RESET_ON_FORK: children start back in SCHED_OTHER
    reset_on_fork: bool = False

    @property
    def realtime(self) -> bool:
        return self.policy in _REALTIME_POLICIES


def current_schedule(pid: int = 0) -> Schedule:
    """Read back the scheduling class of the calling thread (or of thread/process ``pid``)."""
    raw = os.sched_getscheduler(pid)
    policy = raw & ~_SCHED_RESET_ON_FORK
    return Schedule(
        policy=_POLICY_NAMES.get(policy, str(policy)),
        priority=os.sched_getparam(pid).sched_priority,
        nice=os.getpriority(os.PRIO_PROCESS, pid),
        reset_on_fork=bool(raw & _SCHED_RESET_ON_FORK),
    )


def _cpu_cgroup_rt_runtime(pid: int) -> tuple[str, int] | None:
    """(cgroup file, value) of cpu.rt_runtime_us for a cgroup-v1 cpu controller, if any."""
    try:
        lines = Path(f"/proc/{pid or 'self'}/cgroup").read_text().splitlines()
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    cpu_path = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "cpu" in controllers.split(","):
            cpu_path = path
            break
    if cpu_path is None:
        return None
    for mount in mounts:
        # mountinfo: id parent major:minor root mountpoint options [optional...] - fstype source superoptions
        pre, sep, post = mount.partition(" - ")
        if not sep:
            continue
        fstype, _, superopts = (post.split(" ") + ["", ""])[:3]
        if fstype != "cgroup" or "cpu" not in superopts.split(","):
            continue
        fields = pre.split(" ")
        mount_root, mountpoint = fields[3], fields[4]
        rel = os.path.relpath(cpu_path, mount_root) if cpu_path.startswith(mount_root) else cpu_path
        candidate = Path(mountpoint) / rel.lstrip("/") / "cpu.rt_runtime_us"
        try:
            return str(candidate), int(candidate.read_text().strip())
        except (OSError, ValueError):
            return None
    return None


def _realtime_reason(err: int, policy: str, priority: int) -> str:
    reasons: list[str] = []
    if err == _errno.EPERM:
        soft, hard = resource.getrlimit(resource.RLIMIT_RTPRIO)
        if not _has_capability(_CAP_SYS_NICE) and (soft != resource.RLIM_INFINITY and soft < priority):
            reasons.append(
                f"RLIMIT_RTPRIO is {_limit_text(soft)} (hard {_limit_text(hard)}), below priority {priority}, "
                "and the process lacks CAP_SYS_NICE; fix: systemd LimitRTPRIO=99 or "
                "AmbientCapabilities=CAP_SYS_NICE, /etc/security/limits.conf `rtprio`, or `ulimit -r`"
            )
        cgroup = _cpu_cgroup_rt_runtime(0)
        if cgroup is not None and cgroup[1] == 0:
            reasons.append(
                f"the process's cgroup has no real-time budget ({cgroup[0]} is 0); fix: write a budget "
                "there (e.g. 950000, within its parent's) or run the stage in a cgroup that has one"
            )
        try:
            global_runtime = int(Path("/proc/sys/kernel/sched_rt_runtime_us").read_text())
        except (OSError, ValueError):
            global_runtime = None
        if global_runtime == 0:
            reasons.append("kernel.sched_rt_runtime_us is 0 (no real-time budget system-wide)")
        if not reasons:
            try:
                cgroup_lines = [ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.strip()]
            except OSError:
                cgroup_lines = []
            unified_only = bool(cgroup_lines) and all(ln.split(":", 2)[1] == "" for ln in cgroup_lines)
            cg_path = cgroup_lines[0].split(":", 2)[-1] if cgroup_lines else "/"
            if unified_only and cg_path != "/":
                reasons.append(
                    f"possibly cgroup v2 with CONFIG_RT_GROUP_SCHED: real-time threads are only allowed in "
                    f"the root cgroup, and this process is in {cg_path}"
                )
            else:
                reasons.append("the kernel gave no further reason (a security module, or a container runtime)")
    elif err == _errno.EINVAL:
        reasons.append(
            f"priority {priority} is outside {os.sched_get_priority_min(_POLICY_BY_NAME[policy])}"
            f"-{os.sched_get_priority_max(_POLICY_BY_NAME[policy])}"
        )
    else:
        reasons.append(os.strerror(err))
    return "; ".join(reasons)


def set_realtime(priority: int, policy: str = "fifo", *, pid: int = 0, reset_on_fork: bool = True) -> Schedule:
    """Put the calling thread (or thread ``pid``) in SCHED_FIFO/SCHED_RR at ``priority``.

    Returns the previous :class:`Schedule` for :func:`restore_schedule`. Scheduling is per
    thread on Linux: call it from the thread that runs the hot loop. ``reset_on_fork``
    (default on) keeps children from inheriting the real-time class by accident. Raises
    :class:`RealtimeError` explaining a refusal (RLIMIT_RTPRIO, CAP_SYS_NICE, a cgroup
    without real-time budget) and ``ValueError`` for a bad policy or priority.
    """
    if policy not in _REALTIME_POLICIES:
        raise ValueError(f"policy must be one of {', '.join(_REALTIME_POLICIES)}, got {policy!r}")
    number = _POLICY_BY_NAME[policy]
    lo, hi = os.sched_get_priority_min(number), os.sched_get_priority_max(number)
    if isinstance(priority, bool) or not isinstance(priority, int) or not lo <= priority <= hi:
        raise ValueError(f"priority for SCHED_{policy.upper()} must be an integer {lo}-{hi}, got {priority!r}")
    previous = current_schedule(pid)
    flags = number | (_SCHED_RESET_ON_FORK if reset_on_fork else 0)
    try:
        os.sched_setscheduler(pid, flags, os.sched_param(priority))
    except OSError as exc:
        raise RealtimeError(
            exc.errno,
            f"cannot set SCHED_{policy.upper()} priority {priority} ({exc.strerror}): "
            + _realtime_reason(exc.errno, policy, priority),
        ) from exc
    return previous


def restore_schedule(schedule: Schedule, *, pid: int = 0) -> None:
    """Put the calling thread (or ``pid``) back in ``schedule`` (from :func:`set_realtime`).

    Leaving a real-time class needs no privilege; returning to one needs the same as
    entering it.
    """
    number = _POLICY_BY_NAME.get(schedule.policy)
    if number is None:
        raise ValueError(f"unknown policy {schedule.policy!r} in {schedule}")
    if schedule.policy == "deadline":
        raise ValueError("SCHED_DEADLINE needs sched_setattr, which restore_schedule does not do")
    flags = number | (_SCHED_RESET_ON_FORK if schedule.reset_on_fork else 0)
    try:
        try:
            os.sched_setscheduler(pid, flags, os.sched_param(schedule.priority))
        except PermissionError:
            # Without CAP_SYS_NICE the kernel refuses to clear SCHED_RESET_ON_FORK (which
            # set_realtime sets); keep the flag rather than stay real-time.
            os.sched_setscheduler(pid, flags | _SCHED_RESET_ON_FORK, os.sched_param(schedule.priority))
        if not schedule.realtime and os.getpriority(os.PRIO_PROCESS, pid) != schedule.nice:
            os.setpriority(os.PRIO_PROCESS, pid, schedule.nice)
    except OSError as exc:
        raise RealtimeError(
            exc.errno,
            f"cannot restore {schedule}: {exc.strerror}"
            + (
                "; " + _realtime_reason(exc.errno, schedule.policy, schedule.priority)
                if schedule.realtime
                else ""
            ),
        ) from exc


@contextlib.contextmanager
def realtime(priority: int, policy: str = "fifo", *, pid: int = 0) -> Iterator[Schedule]:
    """Run the ``with`` body with the calling thread in a real-time class, then restore it.

    Yields the previous schedule. Raises :class:`RealtimeError` on entry when refused.
    """
    previous = set_realtime(priority, policy, pid=pid)
    try:
        yield previous
    finally:
        restore_schedule(previous, pid=pid)
