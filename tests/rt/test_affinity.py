"""rt.affinity in real spawned child processes: pinning, mlockall, real-time scheduling.

Everything that changes a process's placement, memory locking or scheduling class runs in
a child, so the test runner itself is never pinned, locked or made real-time.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import resource
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from rt.affinity import (
    MemoryLockError,
    PinError,
    RealtimeError,
    allowed_cpus,
    current_affinity,
    current_schedule,
    mlockall,
    munlockall,
    pin,
    realtime,
    restore_schedule,
    set_realtime,
)

_CAP_IPC_LOCK = 14
_CAP_SYS_NICE = 23
_NOBODY = 65534


# ---------------------------------------------------------------------------- harness


def _child_main(conn, fn, args):
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as exc:  # report everything; the parent decides
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def call_in_child(fn, *args, timeout: float = 60.0):
    """Run ``fn(*args)`` in a fresh spawned process and return its result (or raise)."""
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(sender, fn, args))
    proc.start()
    sender.close()
    try:
        if not receiver.poll(timeout):
            raise AssertionError(f"child {fn.__name__} gave no answer in {timeout} s")
        kind, value = receiver.recv()
    finally:
        receiver.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
    if kind == "error":
        raise AssertionError(f"child {fn.__name__} failed: {value}")
    return value


def _capability(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return os.geteuid() == 0


def _drop_privileges() -> None:
    """Become nobody (losing every capability) if root; a no-op otherwise."""
    if os.geteuid() == 0:
        os.setgroups([])
        os.setresgid(_NOBODY, _NOBODY, _NOBODY)
        os.setresuid(_NOBODY, _NOBODY, _NOBODY)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


# ---------------------------------------------------------------------------- pinning


def _pin_self(cpu: int) -> dict:
    # A thread that exists before pin(), like the ones OpenBLAS starts at import.
    release = threading.Event()
    early = threading.Thread(target=release.wait)
    early.start()
    try:
        granted = pin(cpu)
        threads = {int(t): sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
        later: list[list[int]] = []
        late = threading.Thread(target=lambda: later.append(sorted(current_affinity())))
        late.start()
        late.join()
    finally:
        release.set()
        early.join()
    return {"granted": sorted(granted), "threads": threads, "later_thread": later[0]}


def test_pin_spawned_child_to_one_cpu():
    cpu = max(allowed_cpus())
    result = call_in_child(_pin_self, cpu)
    assert result["granted"] == [cpu]
    assert len(result["threads"]) >= 2, "the early thread should be listed"
    assert all(aff == [cpu] for aff in result["threads"].values()), result["threads"]
    assert result["later_thread"] == [cpu]


def _sleep_until_told(conn):
    conn.recv()
    return True


def test_pin_another_process_from_outside():
    cpu = min(allowed_cpus())
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe()
    proc = ctx.Process(target=_sleep_until_told, args=(sender,))
    proc.start()
    try:
        assert pin(str(cpu), pid=proc.pid) == {cpu}
        for tid in os.listdir(f"/proc/{proc.pid}/task"):
            assert os.sched_getaffinity(int(tid)) == {cpu}
        assert os.sched_getaffinity(0) != {cpu} or len(allowed_cpus()) == 1  # we are untouched
    finally:
        receiver.send("done")
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        receiver.close()
        sender.close()


def test_pin_refuses_cpus_not_allowed_and_changes_nothing():
    before = current_affinity()
    bogus = max(allowed_cpus()) + 4000
    with pytest.raises(PinError, match=rf"cannot pin to CPU\(s\) {bogus}: not online .*allowed: ") as info:
        pin({min(allowed_cpus()), bogus})
    assert info.value.errno == errno.EINVAL
    assert current_affinity() == before


@pytest.mark.parametrize("bad", ["", [], [-1], "x-1"])
def test_pin_rejects_bad_cpu_arguments(bad):
    with pytest.raises(ValueError):
        pin(bad)


# ---------------------------------------------------------------------------- mlockall


def _lock_and_unlock() -> dict:
    before = _status_kib("VmLck")
    mlockall()
    locked = _status_kib("VmLck")
    big = bytearray(32 << 20)  # MCL_FUTURE: a later allocation is locked too
    locked_after_alloc = _status_kib("VmLck")
    del big
    munlockall()
    return {"before": before, "locked": locked, "after_alloc": locked_after_alloc, "after": _status_kib("VmLck")}


def test_mlockall_in_child():
    soft, _ = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    if not (_capability(_CAP_IPC_LOCK) or soft == resource.RLIM_INFINITY):
        pytest.skip("needs CAP_IPC_LOCK (root) or an unlimited RLIMIT_MEMLOCK to lock a whole interpreter")
    result = call_in_child(_lock_and_unlock)
    assert result["before"] == 0
    assert result["locked"] > 1024  # an interpreter maps megabytes
    assert result["after_alloc"] >= result["locked"] + (32 << 10)
    assert result["after"] == 0


def _mlockall_unprivileged(limit: int):
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (limit, limit))
    _drop_privileges()
    if _capability(_CAP_IPC_LOCK):
        return "skip: still holds CAP_IPC_LOCK after dropping privileges"
    try:
        mlockall()
    except MemoryLockError as exc:
        return {"errno": exc.errno, "message": str(exc)}
    munlockall()
    return "skip: mlockall succeeded"


@pytest.mark.parametrize(
    ("limit", "expected_errno", "text"),
    [
        (64 << 10, errno.ENOMEM, "RLIMIT_MEMLOCK is 64.0 KiB (hard 64.0 KiB), smaller than the address space"),
        (0, errno.EPERM, "RLIMIT_MEMLOCK is 0 B (hard 0 B) and the process lacks CAP_IPC_LOCK"),
    ],
    ids=["64KiB-ENOMEM", "zero-EPERM"],
)
def test_mlockall_refused_names_the_limit(limit, expected_errno, text):
    result = call_in_child(_mlockall_unprivileged, limit)
    if isinstance(result, str):
        pytest.skip(result)
    assert result["errno"] == expected_errno
    assert text in result["message"]
    assert "LimitMEMLOCK=infinity" in result["message"]  # the fix is named


def test_mlockall_rejects_no_flags():
    with pytest.raises(ValueError, match="current=True or future=True"):
        mlockall(current=False, future=False)


# ---------------------------------------------------------------------------- scheduling


def _realtime_round_trip():
    try:
        previous = set_realtime(10, "fifo")
    except RealtimeError as exc:
        return f"skip: {exc}"
    fifo = current_schedule()
    # SCHED_RESET_ON_FORK: a child of a real-time stage starts in SCHED_OTHER.
    child_policy = subprocess.run(
        [sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    restore_schedule(previous)
    restored = current_schedule()
    with realtime(5, "rr") as before_rr:
        rr = current_schedule()
    after_rr = current_schedule()
    return {
        "previous": previous,
        "fifo": fifo,
        "child_policy": int(child_policy),
        "restored": restored,
        "before_rr": before_rr,
        "rr": rr,
        "after_rr": after_rr,
    }


@pytest.mark.rt
def test_realtime_in_child_and_restore():
    result = call_in_child(_realtime_round_trip)
    if isinstance(result, str):
        pytest.skip(result)
    assert result["previous"].policy == "other" and not result["previous"].realtime
    assert (result["fifo"].policy, result["fifo"].priority, result["fifo"].reset_on_fork) == ("fifo", 10, True)
    assert result["child_policy"] == os.SCHED_OTHER
    assert result["restored"] == result["previous"]
    assert result["before_rr"] == result["previous"]
    assert (result["rr"].policy, result["rr"].priority) == ("rr", 5)
    assert result["after_rr"] == result["previous"]


def _realtime_unprivileged():
    resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))
    _drop_privileges()
    if _capability(_CAP_SYS_NICE):
        return "skip: still holds CAP_SYS_NICE after dropping privileges"
    try:
        set_realtime(10)
    except RealtimeError as exc:
        return {"errno": exc.errno, "message": str(exc), "schedule": current_schedule()}
    return "skip: SCHED_FIFO was granted"


def test_realtime_refused_names_rlimit_rtprio():
    result = call_in_child(_realtime_unprivileged)
    if isinstance(result, str):
        pytest.skip(result)
    assert result["errno"] == errno.EPERM
    assert "cannot set SCHED_FIFO priority 10" in result["message"]
    assert "RLIMIT_RTPRIO is 0 (hard 0), below priority 10" in result["message"]
    assert "LimitRTPRIO=99" in result["message"]
    assert result["schedule"].policy == "other"  # nothing changed


def _cpu_cgroup_dir() -> Path | None:
    """This process's cgroup-v1 cpu controller directory, when it has cpu.rt_runtime_us."""
    path = None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, cg = line.split(":", 2)
        if "cpu" in controllers.split(","):
            path = cg
    if path is None:
        return None
    for mount in Path("/proc/self/mountinfo").read_text().splitlines():
        pre, _, post = mount.partition(" - ")
        fstype, _, superopts = (post.split(" ") + ["", ""])[:3]
        if fstype == "cgroup" and "cpu" in superopts.split(","):
            fields = pre.split(" ")
            mount_root, mountpoint = fields[3], fields[4]
            rel = os.path.relpath(path, mount_root)
            d = Path(mountpoint) / rel
            return d if (d / "cpu.rt_runtime_us").exists() else None
    return None


def _try_realtime_when_told(conn):
    conn.recv()  # the parent moved us into the cgroup
    try:
        set_realtime(10)
    except RealtimeError as exc:
        return {"errno": exc.errno, "message": str(exc)}
    finally:
        conn.close()
    return "granted"


@pytest.mark.rt
def test_realtime_refused_by_cgroup_without_budget():
    parent = _cpu_cgroup_dir()
    if parent is None or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup-v1 cpu controller with real-time group scheduling")
    group = parent / f"appliance-test-{uuid.uuid4().hex[:8]}"
    try:
        group.mkdir()  # a new group's cpu.rt_runtime_us is 0
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup under {parent}: {exc.strerror}")
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    tell_r, tell_w = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(sender, _try_realtime_when_told, (tell_r,)))
    try:
        assert (group / "cpu.rt_runtime_us").read_text().strip() == "0"
        proc.start()
        sender.close()
        tell_r.close()
        (group / "cgroup.procs").write_text(str(proc.pid))
        tell_w.send("go")
        assert receiver.poll(60), "child gave no answer"
        kind, value = receiver.recv()
    finally:
        tell_w.close()
        receiver.close()
        if proc.pid is not None:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        group.rmdir()
    assert kind == "ok", value
    assert value != "granted"
    assert value["errno"] == errno.EPERM
    assert f"{group}/cpu.rt_runtime_us is 0" in value["message"]


def test_set_realtime_rejects_bad_arguments():
    before = current_schedule()
    with pytest.raises(ValueError, match="1-99"):
        set_realtime(0)
    with pytest.raises(ValueError, match="1-99"):
        set_realtime(100, "rr")
    with pytest.raises(ValueError, match="policy must be one of fifo, rr"):
        set_realtime(10, "deadline")
    assert current_schedule() == before


def test_current_schedule_of_this_process():
    s = current_schedule()
    assert s.policy in {"other", "batch", "idle", "fifo", "rr", "deadline"}
    assert s.nice == os.getpriority(os.PRIO_PROCESS, 0)
    assert s.priority == os.sched_getparam(0).sched_priority
