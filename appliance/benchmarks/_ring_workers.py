"""Producer and consumer bodies for the ring benchmark (module level, so ``spawn`` can import them).

Every transport moves the same messages: the producer copies a prepared source buffer of
the message size into the transport, the consumer receives it (without reading every byte:
the ring hands out a view, the others have already copied into the consumer's memory).
The producer reports when it started sending, the consumer when the last message arrived.
"""

from __future__ import annotations

import time

import numpy as np

_PACE_SPIN_NS = 30_000  # spin (not sleep) for the last 30 us before a paced send


def _precise_sleep() -> None:
    """Ask for 1 ns timer slack (default 50 us), so the pacing sleeps end on time and the
    producer does not have to busy-wait through most of each period."""
    import ctypes

    try:
        ctypes.CDLL(None).prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK
    except (OSError, AttributeError):
        pass


def _pace(next_ns: int) -> None:
    remaining = next_ns - time.monotonic_ns()
    if remaining > 2 * _PACE_SPIN_NS:
        time.sleep((remaining - _PACE_SPIN_NS) / 1e9)
    while time.monotonic_ns() < next_ns:
        pass


# -- our ring ---------------------------------------------------------------------------------


def ring_producer(name, size, n, batch, ready, go, results) -> None:
    import rt

    src = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    with rt.Producer(name) as p:
        ready.set()
        go.wait()
        t0 = time.monotonic_ns()
        sent = 0
        if batch > 1:
            while sent < n:
                frames = p.reserve_many(min(batch, n - sent))
                frames.data[:, :size] = src  # one NumPy copy fills every frame of the batch
                p.commit(len(frames))
                sent += len(frames)
        else:
            while sent < n:
                slot = p.reserve()
                slot.data[:size] = src
                p.commit()
                sent += 1
    results.put(("start", t0))


def ring_consumer(name, n, batch, ready, results) -> None:
    import rt

    with rt.Consumer(name) as c:
        ready.set()
        got = 0
        checksum = 0
        while got < n:
            if batch > 1:
                frames = c.acquire_batch(batch)
                checksum += int(frames.data[-1, 0])
                c.release(len(frames))
                got += len(frames)
            else:
                slot = c.acquire()
                checksum += int(slot.data[0])
                c.release()
                got += 1
        t1 = time.monotonic_ns()
    results.put(("end", t1))


def ring_latency_producer(name, n, rate, ready, go, results) -> None:
    import rt

    period = int(1e9 / rate)
    _precise_sleep()
    with rt.Producer(name) as p:
        ready.set()
        go.wait()
        next_ns = time.monotonic_ns() + 1_000_000
        for _ in range(n):
            _pace(next_ns)
            slot = p.reserve()
            slot.header["t_mono_ns"] = time.monotonic_ns()
            p.commit()
            next_ns += period
    results.put(("start", 0))


def ring_latency_consumer(name, n, ready, results) -> None:
    import rt

    lat = np.empty(n, np.int64)
    with rt.Consumer(name) as c:
        ready.set()
        for i in range(n):
            slot = c.acquire()
            lat[i] = time.monotonic_ns() - int(slot.header["t_mono_ns"])
            c.release()
    results.put(("lat", lat))


# -- multiprocessing.Queue --------------------------------------------------------------------


def queue_producer(q, size, n, ready, go, results) -> None:
    src = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    ready.set()
    go.wait()
    t0 = time.monotonic_ns()
    for _ in range(n):
        q.put(src)
    results.put(("start", t0))


def queue_consumer(q, n, ready, results) -> None:
    ready.set()
    for _ in range(n):
        q.get()
    results.put(("end", time.monotonic_ns()))


def queue_latency_producer(q, n, rate, ready, go, results) -> None:
    period = int(1e9 / rate)
    _precise_sleep()
    ready.set()
    go.wait()
    next_ns = time.monotonic_ns() + 1_000_000
    for _ in range(n):
        _pace(next_ns)
        q.put(time.monotonic_ns().to_bytes(8, "little") + bytes(56))
        next_ns += period
    results.put(("start", 0))


def queue_latency_consumer(q, n, ready, results) -> None:
    lat = np.empty(n, np.int64)
    ready.set()
    for i in range(n):
        msg = q.get()
        lat[i] = time.monotonic_ns() - int.from_bytes(msg[:8], "little")
    results.put(("lat", lat))


# -- ZeroMQ PUSH/PULL over ipc:// -------------------------------------------------------------


def zmq_producer(addr, size, n, ready, go, results) -> None:
    import zmq

    src = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1000)
    sock.connect(addr)
    ready.set()
    go.wait()
    t0 = time.monotonic_ns()
    copy = size < 65536  # zero-copy sends pay off only for large frames
    for _ in range(n):
        sock.send(src, copy=copy)
    results.put(("start", t0))
    sock.close(linger=10_000)  # bounded: a lost peer must not hang the benchmark
    ctx.term()


def zmq_consumer(addr, n, ready, results) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.setsockopt(zmq.RCVHWM, 1000)
    sock.bind(addr)
    ready.set()
    got = 0
    # Rarely (seen about once in 30 suite runs) ZeroMQ never delivers some messages; a silence
    # of 10 s ends the run and reports the loss instead of hanging the benchmark.
    while got < n and sock.poll(10_000):
        sock.recv(copy=False)
        got += 1
    results.put(("end", time.monotonic_ns() if got == n else -(n - got)))
    sock.close(linger=0)
    ctx.term()


def zmq_latency_producer(addr, n, rate, ready, go, results) -> None:
    import zmq

    period = int(1e9 / rate)
    _precise_sleep()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.connect(addr)
    ready.set()
    go.wait()
    next_ns = time.monotonic_ns() + 1_000_000
    for _ in range(n):
        _pace(next_ns)
        sock.send(time.monotonic_ns().to_bytes(8, "little") + bytes(56))
        next_ns += period
    results.put(("start", 0))
    sock.close(linger=10_000)  # bounded: a lost peer must not hang the benchmark
    ctx.term()


def zmq_latency_consumer(addr, n, ready, results) -> None:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.bind(addr)
    ready.set()
    lat = np.empty(n, np.int64)
    got = 0
    while got < n and sock.poll(10_000):  # see zmq_consumer: a silence ends the run
        msg = sock.recv()
        lat[got] = time.monotonic_ns() - int.from_bytes(msg[:8], "little")
        got += 1
    results.put(("lat", lat[:got]))
    sock.close(linger=0)
    ctx.term()


def ring_link(name, n, link, last, ready, results) -> None:
    """Link ``link`` of a chained ring: read each frame in place (one byte) and release it;
    the last link reports when it has seen all ``n``."""
    import rt

    with rt.Consumer(name, link=link) as c:
        ready.set()
        checksum = 0
        for _ in range(n):
            slot = c.acquire()
            checksum += int(slot.data[0])
            c.release()
        t1 = time.monotonic_ns()
    if last:
        results.put(("end", t1))


def ring_relay(src, dst, n, size, ready, results) -> None:
    """What a chain replaces: a stage that copies each frame into a ring of its own."""
    import rt

    with rt.Consumer(src) as c, rt.Producer(dst) as p:
        ready.set()
        for _ in range(n):
            slot = c.acquire()
            out = p.reserve()
            out.data[:size] = slot.data[:size]
            p.commit()
            c.release()
