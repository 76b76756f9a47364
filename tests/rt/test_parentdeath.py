"""Parent-death detection with real processes: SIGKILL a middle process, watch the grandchild.

The chain is test -> harness -> middle -> grandchild. The harness makes itself a child
subreaper, so the orphaned grandchild is re-parented to it and the harness can ``waitpid``
it and report exactly how it ended (a signal or an exit code) and how long it took. On a
timeout the harness kills the grandchild, so nothing outlives a test.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rt._parentdeath import exit_when_parent_dies

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 10.0  # seconds the grandchild has to go after its parent is killed

HARNESS = textwrap.dedent(
    """
    import ctypes, json, os, signal, subprocess, sys, time

    PR_SET_CHILD_SUBREAPER = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "PR_SET_CHILD_SUBREAPER")
    grandchild_code, timeout = sys.argv[1], float(sys.argv[2])
    middle_code = (
        "import subprocess, sys, time\\n"
        "subprocess.Popen([sys.executable, '-c', sys.argv[1]])\\n"
        "time.sleep(120)\\n"
    )
    middle = subprocess.Popen([sys.executable, "-c", middle_code, grandchild_code], stdout=subprocess.PIPE)
    line = middle.stdout.readline()  # the grandchild prints its pid once it is armed
    if not line:
        middle.kill(); middle.wait()
        print(json.dumps({"error": "grandchild did not start"})); sys.exit(0)
    grandchild = int(line)
    os.kill(middle.pid, signal.SIGKILL)
    middle.wait()
    killed_at = time.monotonic()
    status = None
    while time.monotonic() - killed_at < timeout:
        try:
            pid, st = os.waitpid(grandchild, os.WNOHANG)
        except ChildProcessError:  # not re-parented to us yet
            pid, st = 0, 0
        if pid:
            status = st
            break
        time.sleep(0.005)
    seconds = time.monotonic() - killed_at
    if status is None:
        os.kill(grandchild, signal.SIGKILL)
        os.waitpid(grandchild, 0)
        print(json.dumps({"exited": False, "seconds": seconds}))
    else:
        print(json.dumps({
            "exited": True,
            "seconds": seconds,
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        }))
    """
)


def orphan_grandchild(grandchild_code: str) -> dict:
    """Run the chain with ``grandchild_code``; SIGKILL the middle; report the grandchild's end."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, textwrap.dedent(grandchild_code), str(TIMEOUT)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT + 50,
        cwd=REPO,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in report, proc.stderr
    return report


@pytest.mark.parametrize("watcher", [True, False], ids=["kernel+watcher", "kernel-only"])
def test_grandchild_gets_sigterm_when_parent_is_killed(watcher):
    report = orphan_grandchild(
        f"""
        import os, sys, time
        from rt import _parentdeath
        watch = _parentdeath.exit_when_parent_dies(watcher={watcher})
        assert watch.pdeathsig_set and watch.parent_pid == os.getppid()
        print(os.getpid(), flush=True)
        time.sleep(60)
        sys.exit(99)
        """
    )
    assert report["exited"], report
    assert report["signal"] == signal.SIGTERM, report


def test_chosen_signal_with_handler_that_only_sets_the_event():
    # The stage drains before exiting: the handler sets the event, the main loop acts.
    report = orphan_grandchild(
        """
        import os, signal, sys
        from rt import _parentdeath
        watch = _parentdeath.exit_when_parent_dies(sig=signal.SIGUSR1, handle_signal=True)
        print(os.getpid(), flush=True)
        sys.exit(17 if watch.wait(60) else 98)
        """
    )
    assert report["exited"], report
    assert (report["signal"], report["code"]) == (None, 17), report


@pytest.mark.parametrize("use_pidfd", [True, False], ids=["pidfd", "getppid-poll"])
def test_watcher_alone_detects_parent_death(use_pidfd):
    # Without the kernel signal, the watcher thread notices and calls the callback.
    report = orphan_grandchild(
        f"""
        import os, sys, time
        if not {use_pidfd}:
            del os.pidfd_open
        from rt import _parentdeath
        watch = _parentdeath.exit_when_parent_dies(
            pdeathsig=False, on_death=lambda: os._exit(23), poll_interval=0.05
        )
        assert not watch.pdeathsig_set
        print(os.getpid(), flush=True)
        time.sleep(60)
        sys.exit(99)
        """
    )
    assert report["exited"], report
    assert report["code"] == 23, report


def test_watcher_alone_sends_the_signal_by_default():
    report = orphan_grandchild(
        """
        import os, sys, time
        from rt import _parentdeath
        _parentdeath.exit_when_parent_dies(pdeathsig=False, poll_interval=0.05)
        print(os.getpid(), flush=True)
        time.sleep(60)
        sys.exit(99)
        """
    )
    assert report["exited"], report
    assert report["signal"] == signal.SIGTERM, report


def test_parent_dead_before_the_call_acts_at_once():
    # The race prctl alone misses: the parent dies before PR_SET_PDEATHSIG is set.
    report = orphan_grandchild(
        """
        import os, sys, time
        original = os.getppid()
        print(os.getpid(), flush=True)
        while os.getppid() == original:  # wait until the middle is dead and we are orphaned
            time.sleep(0.005)
        from rt import _parentdeath
        _parentdeath.exit_when_parent_dies(parent_pid=original, watcher=False)
        time.sleep(60)
        sys.exit(99)
        """
    )
    assert report["exited"], report
    assert report["signal"] == signal.SIGTERM, report


# ---------------------------------------------------------------------------- in-process


def _report_parent_pid(conn):
    watch = exit_when_parent_dies(watcher=False, pdeathsig=False)
    conn.send((watch.parent_pid, watch.parent_alive()))
    conn.close()


def test_default_parent_pid_in_a_spawned_child():
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_report_parent_pid, args=(sender,))
    proc.start()
    sender.close()
    try:
        assert receiver.poll(60)
        assert receiver.recv() == (os.getpid(), True)
    finally:
        receiver.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def test_callback_when_expected_parent_is_not_the_parent():
    calls = []
    watch = exit_when_parent_dies(
        parent_pid=os.getppid() + 1_000_000, pdeathsig=False, on_death=lambda: calls.append(1)
    )
    assert calls == [1]
    assert watch.parent_died.is_set() and not watch.parent_alive()
    assert watch.wait(0)


def test_watcher_stops_cleanly():
    calls = []
    watch = exit_when_parent_dies(
        os.getppid(), pdeathsig=False, on_death=lambda: calls.append(1), poll_interval=0.05
    )
    assert watch.parent_alive()
    assert not watch.wait(0.1)
    watch.stop()
    assert watch._thread is not None and not watch._thread.is_alive()
    assert calls == []


def test_rejects_bad_poll_interval():
    with pytest.raises(ValueError, match="poll_interval"):
        exit_when_parent_dies(os.getppid(), pdeathsig=False, poll_interval=0)
