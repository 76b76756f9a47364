"""The bandwidth limit shared across processes (the storage mover in ``appliance serve`` and the
transfers of an offload worker): real processes drawing on one state file, one of them
SIGKILLed while it holds the lock."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

from appliance.storage import SharedTokenBucket, StorageManager, load_policy, shared_bandwidth
from appliance.storage.mover import BANDWIDTH_FILE

REPO = Path(__file__).resolve().parents[3]

_DRAW = """
import json, sys, time
from appliance.storage import SharedTokenBucket
path, total = sys.argv[1], int(sys.argv[2])
b = SharedTokenBucket(path)  # rate=None: follows the limit the owner set in the file
sys.stdin.readline()  # start together
t0, n = time.monotonic(), 0
while n < total:
    k = min(b.chunk, total - n)
    b.take(k)
    n += k
print(json.dumps({"start": t0, "end": time.monotonic(), "bytes": n, "rate": b.rate}), flush=True)
"""


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _reap(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(30)
        for f in (p.stdin, p.stdout, p.stderr):
            if f is not None:
                f.close()


def test_two_processes_on_one_limit_stay_within_it_together(tmp_path):
    rate = 4e6  # bytes/s
    owner = shared_bandwidth(tmp_path, rate)  # what the storage manager does with mover.bandwidth_mb_s
    path = tmp_path / ".storage" / BANDWIDTH_FILE
    assert owner.path == path and owner.rate == rate
    each = 3_000_000
    procs = [_spawn(_DRAW, str(path), str(each)) for _ in range(2)]
    try:
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        got = [json.loads(p.stdout.readline() or p.stderr.read()) for p in procs]
    finally:
        _reap(procs)
        owner.close()
    assert all(g["rate"] == rate for g in got)  # both followed the owner's setting
    total = sum(g["bytes"] for g in got)
    elapsed = max(g["end"] for g in got) - min(g["start"] for g in got)
    # A token bucket lets at most burst + rate x elapsed bytes through. Per-process limits would
    # let the two through at twice the rate (in about half the time).
    burst = max(64 << 10, rate * 0.25)
    assert total == 2 * each
    assert elapsed >= 0.95 * (total - burst) / rate, (elapsed, total)


_HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(600)
"""

_SPIN = """
import sys
from appliance.storage import SharedTokenBucket
b = SharedTokenBucket(sys.argv[1])
print("drawing", flush=True)
while True:
    b.take(4096)
"""


def test_a_sigkilled_holder_does_not_block_the_others(tmp_path):
    path = tmp_path / BANDWIDTH_FILE
    bucket = SharedTokenBucket(path, rate=50e6)
    holder = _spawn(_HOLD, str(path))
    try:
        assert holder.stdout.readline().strip() == "held"
        done = threading.Event()
        t = threading.Thread(target=lambda: (bucket.take(1000), done.set()), daemon=True)
        t.start()
        assert not done.wait(0.5)  # the holder has the lock: the take waits for it
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
        assert done.wait(30)  # the kernel released the dead holder's flock
        t.join(30)
    finally:
        _reap([holder])
    # a process killed anywhere in its takes (many per ms) leaves a state the others read
    spinner = _spawn(_SPIN, str(path))
    try:
        assert spinner.stdout.readline().strip() == "drawing"
        time.sleep(0.3)
        spinner.send_signal(signal.SIGKILL)
        spinner.wait(30)
    finally:
        _reap([spinner])
    t0 = time.monotonic()
    n = 0
    while n < 20_000_000:
        bucket.take(bucket.chunk)
        n += bucket.chunk
    elapsed = time.monotonic() - t0
    assert bucket.rate == 50e6
    # the spinner's last debt is at most one take of 4 KiB; the limit still holds and is not stuck
    assert elapsed >= 0.95 * (n - bucket.burst) / bucket.rate
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody holds it now
    finally:
        os.close(fd)
    bucket.close()


def test_unlimited_and_the_managers_mover_uses_the_shared_limit(tmp_path):
    free = SharedTokenBucket(tmp_path / "none" / BANDWIDTH_FILE)  # no owner yet: unlimited
    t0 = time.monotonic()
    for _ in range(1000):
        free.take(1 << 20)
    assert free.rate == 0 and time.monotonic() - t0 < 30
    free.close()
    root = tmp_path / "hot"
    root.mkdir()
    policy = load_policy()
    with StorageManager(root, policy) as mgr:
        b = mgr.mover.bucket
        assert isinstance(b, SharedTokenBucket) and b.path == root / ".storage" / BANDWIDTH_FILE
        assert b.rate == policy.bandwidth_mb_s * 1e6
        follower = shared_bandwidth(root)  # what a transfer in another process opens
        assert follower.rate == b.rate
        follower.close()
