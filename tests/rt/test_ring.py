"""Single-process semantics of every ring call."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import pytest

import rt
from rt import _shm
from rt._ordering import check_platform


def make(name, **kw):
    kw.setdefault("payload_bytes", 64)
    kw.setdefault("n_slots", 8)
    return rt.Ring.create(name, **kw)


def fill(producer, value, n=1):
    for _ in range(n):
        slot = producer.reserve(timeout=1)
        slot.write(np.array([value], np.uint32))
        producer.commit()


def test_create_open_unlink(ring_name):
    with make(ring_name) as ring:
        assert Path("/dev/shm", ring_name).exists()
        other = rt.Ring.open(ring_name, n_slots=8)
        assert other.geometry == ring.geometry
        other.close()
        other.close()  # idempotent
        with pytest.raises(rt.RingClosed):
            other.statistics()
    assert not Path("/dev/shm", ring_name).exists()
    with pytest.raises(rt.RingNotFound):
        rt.Ring.open(ring_name)


def test_create_twice_is_a_clear_error(ring_name):
    with make(ring_name):
        with pytest.raises(rt.RingError, match="already exists"):
            make(ring_name)


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"n_slots": 6}, "power of two"),
        ({"n_slots": 1}, "power of two"),
        ({"payload_bytes": 0}, "positive"),
        ({"policy": "drop_oldest"}, "allowed values are block, drop_newest"),
        ({"wait": "busy"}, "allowed values are spin, yield, sleep, kernel"),
        ({"hugepages": "3M"}, "allowed values are none, auto"),
    ],
)
def test_bad_geometry_rejected_before_anything_is_created(ring_name, kw, match):
    with pytest.raises(ValueError, match=match):
        make(ring_name, **kw)
    assert not Path("/dev/shm", ring_name).exists()


def test_bad_name_rejected(ring_name):
    with pytest.raises(ValueError, match="ring name"):
        make("a/b")


def test_geometry_mismatch_on_open(ring_name):
    with make(ring_name):
        with pytest.raises(rt.RingFormatError, match="n_slots=8, expected 16"):
            rt.Ring.open(ring_name, n_slots=16)
        with pytest.raises(rt.RingFormatError, match="policy"):
            rt.Consumer(ring_name, policy="drop_newest")


def test_wrong_segment_is_refused(ring_name):
    path = Path("/dev/shm", ring_name)
    path.write_bytes(b"not a ring" * 1000)
    try:
        with pytest.raises(rt.RingFormatError, match="not an appliance ring"):
            rt.Ring.open(ring_name)
    finally:
        path.unlink()


def test_stale_version_is_refused(ring_name):
    ring = make(ring_name)
    try:
        ring._m.ctl[1] = 999  # layout version word
        with pytest.raises(rt.RingFormatError, match="layout version 999"):
            rt.Ring.open(ring_name)
    finally:
        ring.close()
        ring.unlink()


def test_fifo_order_seq_and_payload(ring_name):
    with make(ring_name) as ring, ring.producer() as p, ring.consumer() as c:
        for i in range(20):
            fill(p, i)
            slot = c.acquire(timeout=1)
            assert int(slot.header["seq"]) == i
            assert slot.array().tolist() == [i]
            assert int(slot.header["magic"]) == rt.frame.FRAME_MAGIC
            c.release()


def test_reserve_timeout_and_nowait_when_full(ring_name):
    with make(ring_name, n_slots=4) as ring, ring.producer() as p, ring.consumer():
        fill(p, 1, 4)
        with pytest.raises(rt.WouldBlock, match="full"):
            p.reserve_nowait()
        t0 = time.monotonic()
        with pytest.raises(rt.RingTimeout):
            p.reserve(timeout=0.05)
        assert time.monotonic() - t0 >= 0.05
        st = ring.statistics()
        assert st.full_waits == 1 and st.occupancy == 4 and st.peak_occupancy == 4


def test_acquire_timeout_and_nowait_when_empty(ring_name):
    with make(ring_name) as ring, ring.producer(), ring.consumer() as c:
        with pytest.raises(rt.WouldBlock, match="empty"):
            c.acquire_nowait()
        with pytest.raises(rt.RingTimeout):
            c.acquire(timeout=0.02)
        assert ring.statistics().empty_waits == 1


def test_release_and_commit_misuse(ring_name):
    with make(ring_name) as ring, ring.producer() as p, ring.consumer() as c:
        with pytest.raises(rt.RingError, match="reserved"):
            p.commit()
        with pytest.raises(rt.RingError, match="acquired"):
            c.release()


def test_several_outstanding_reservations_commit_in_order(ring_name):
    with make(ring_name) as ring, ring.producer() as p, ring.consumer() as c:
        a, b = p.reserve(), p.reserve()
        b.write(np.array([2], np.uint32))
        a.write(np.array([1], np.uint32))
        p.commit()
        assert c.acquire(timeout=1).array().tolist() == [1]
        with pytest.raises(rt.WouldBlock):
            c.acquire_nowait()  # b reserved but not committed: invisible
        p.commit()
        assert c.acquire(timeout=1).array().tolist() == [2]
        c.release(2)


def test_acquire_many_and_release_many(ring_name):
    with make(ring_name, n_slots=16) as ring, ring.producer() as p, ring.consumer() as c:
        for i in range(10):
            fill(p, i)
        slots = c.acquire_many(4, timeout=1)
        assert [s.array()[0] for s in slots] == [0, 1, 2, 3]
        slots = c.acquire_many(100, timeout=1)
        assert [s.array()[0] for s in slots] == list(range(4, 10))
        c.release(10)
        st = ring.statistics()
        assert (st.written, st.read, st.occupancy) == (10, 10, 0)


def test_end_of_stream_after_last_frame(ring_name):
    with make(ring_name) as ring, ring.consumer() as c:
        with ring.producer() as p:
            fill(p, 7, 2)
        assert ring.statistics().end_of_stream
        c.acquire(timeout=1)
        c.acquire(timeout=1)
        c.release(2)
        with pytest.raises(rt.EndOfStream):
            c.acquire(timeout=1)
        with pytest.raises(rt.EndOfStream):
            c.acquire_nowait()


def test_closed_ends_raise(ring_name):
    with make(ring_name) as ring:
        p, c = ring.producer(), ring.consumer()
        p.close(end_of_stream=False)
        c.close()
        for call in (p.reserve, p.reserve_nowait, p.commit, c.acquire, c.acquire_nowait, c.release, p.statistics):
            with pytest.raises(rt.RingClosed):
                call()
        p.close()
        c.close()  # idempotent


def test_second_live_producer_or_consumer_is_busy(ring_name):
    with make(ring_name) as ring, ring.producer(), ring.consumer():
        # Same process re-attaching is allowed (a restart in place); another live pid is not.
        ring._m.ctl[52] = os.getppid()  # pretend the producer is our (live) parent
        ring._m.ctl[53] = rt._proc.process_start_ticks(os.getppid())
        with pytest.raises(rt.RingBusy, match="single-producer"):
            rt.Producer(ring_name)


def test_drop_newest_counts_and_scratch_slot(ring_name):
    with make(ring_name, n_slots=4, policy="drop_newest") as ring, ring.producer() as p, ring.consumer() as c:
        dropped = []
        for i in range(10):
            slot = p.reserve_nowait()
            slot.write(np.array([i], np.uint32))
            if slot.dropped:
                dropped.append(i)
            p.commit()
        assert dropped == [4, 5, 6, 7, 8, 9]
        assert ring.statistics().drops == 6
        got = [int(s.array()[0]) for s in c.acquire_many(10, timeout=1)]
        assert got == [0, 1, 2, 3]
        c.release(4)


def test_checksum_write_verify_and_corruption(ring_name):
    with make(ring_name, payload_bytes=4096) as ring, ring.producer() as p, ring.consumer() as c:
        data = np.arange(1024, dtype=np.float32)
        p.reserve().write(data, with_checksum=True)
        p.commit()
        slot = c.acquire(timeout=1)
        assert slot.verify()
        np.testing.assert_array_equal(slot.array(), data)
        slot.data[5] ^= 0xFF  # a flipped bit in shared memory
        assert not slot.verify()
        c.release()


def test_write_too_large_payload_is_a_clear_error(ring_name):
    with make(ring_name) as ring, ring.producer() as p:
        with pytest.raises(ValueError, match="does not fit"):
            p.reserve().write(np.zeros(100, np.uint8))


@pytest.mark.parametrize("wait", ["spin", "yield", "sleep", "kernel"])
def test_every_wait_strategy_moves_frames(ring_name, wait):
    with make(ring_name, wait=wait, n_slots=4) as ring, ring.producer() as p, ring.consumer() as c:
        for i in range(50):
            fill(p, i)
            assert c.acquire(timeout=1).array()[0] == i
            c.release()
        with pytest.raises(rt.RingTimeout):
            c.acquire(timeout=0.02)
        assert ring.statistics().wait == wait


def test_kernel_wait_semaphores_are_unlinked(ring_name):
    with make(ring_name, wait="kernel"):
        assert Path("/dev/shm", f"sem.{ring_name}.items").exists()
    assert not Path("/dev/shm", f"sem.{ring_name}.items").exists()


def test_observer_sees_latest_without_touching_counters(ring_name):
    with make(ring_name) as ring, ring.producer() as p, ring.consumer() as c, ring.observer() as o:
        assert o.latest() is None
        fill(p, 1)
        fill(p, 2)
        before = ring.statistics()
        header, payload = o.latest()
        assert int(header["seq"]) == 1 and payload.view(np.uint32).tolist() == [2]
        after = ring.statistics()
        assert (before.written, before.read, before.empty_waits) == (after.written, after.read, after.empty_waits)
        c.acquire_many(2)
        c.release(2)


def test_observer_detects_overwrite_during_copy(ring_name):
    with make(ring_name, n_slots=2) as ring, ring.producer() as p, ring.consumer() as c, ring.observer() as o:
        fill(p, 1)
        # Simulate the producer lapping the observer: reserved far beyond the slot it reads.
        ring._m.ctl[48] = 10
        assert o.latest(retries=2) is None and o.torn_reads == 2
        c.acquire(timeout=1)
        c.release()


def test_statistics_is_frozen(ring_name):
    with make(ring_name) as ring:
        st = ring.statistics()
        with pytest.raises(AttributeError):
            st.written = 5  # type: ignore[misc]
        assert st.owner_pid == os.getpid() and st.owner_alive


def test_platform_refusal():
    with pytest.raises(rt.UnsupportedPlatform, match="aarch64"):
        check_platform(machine="aarch64")
    with pytest.raises(rt.UnsupportedPlatform, match="big-endian"):
        check_platform(machine="x86_64", byteorder="big")
    check_platform(machine="x86_64", byteorder="little")


def test_hugepage_fallback_order_and_reasons(tmp_path, caplog):
    mounts = tmp_path / "mounts"
    meminfo = tmp_path / "meminfo"
    sysfs = tmp_path / "hugepages"
    meminfo.write_text("Hugepagesize:       2048 kB\n")
    for kb, free in ((1048576, 0), (2048, 512)):
        d = sysfs / f"hugepages-{kb}kB"
        d.mkdir(parents=True)
        (d / "free_hugepages").write_text(f"{free}\n")
    mounts.write_text("none /mnt/huge1g hugetlbfs rw,pagesize=1024M 0 0\nnone /mnt/huge2m hugetlbfs rw 0 0\n")
    kw = dict(proc_mounts=mounts, meminfo=meminfo, sysfs=sysfs)
    choice = _shm.choose_backing(8 << 20, "auto", **kw)
    assert (choice.page_size, str(choice.directory)) == (2 << 20, "/mnt/huge2m")
    (sysfs / "hugepages-1048576kB" / "free_hugepages").write_text("1\n")
    assert _shm.choose_backing(8 << 20, "1G", **kw).page_size == 1 << 30
    with caplog.at_level(logging.WARNING, logger="rt.shm"):
        choice = _shm.choose_backing(4 << 30, "auto", **kw)
    assert choice.page_size == 4096 and choice.directory is None
    assert "need 4 free pages, 1 free" in choice.reason and "need 2048 free pages, 512 free" in choice.reason
    assert "falling back to 4K" in caplog.text
    mounts.write_text("")
    assert "no hugetlbfs mount with pagesize=2M" in _shm.choose_backing(1, "2M", **kw).reason
    assert _shm.choose_backing(1, "none", **kw).directory is None


def test_ring_too_big_for_shm_is_a_clear_error(ring_name):
    free = os.statvfs("/dev/shm").f_bavail * os.statvfs("/dev/shm").f_frsize
    n_slots = 1 << max(1, (free // (64 << 20)).bit_length() + 1)
    with pytest.raises(rt.RingError, match="cannot provide it"):
        rt.Ring.create(ring_name, payload_bytes=64 << 20, n_slots=n_slots)
    assert not Path("/dev/shm", ring_name).exists()


def test_clean_removes_only_rings_of_dead_owners(ring_name):
    with make(ring_name + ".live"):
        dead = make(ring_name + ".dead")
        for word in (10, 11):  # owner pid / start: a process that cannot exist
            dead._m.ctl[word] = 2**31 - 7
        dead.close()
        removed = rt.clean_dead_rings()
        assert ring_name + ".dead" in removed
        assert ring_name + ".live" not in removed
        assert Path("/dev/shm", ring_name + ".live").exists()


def test_list_rings_finds_ours(ring_name):
    with make(ring_name):
        assert ring_name in [n for n, _ in rt.list_rings()]


def test_reserve_many_and_acquire_batch_as_arrays(ring_name):
    with make(ring_name, payload_bytes=16, n_slots=8) as ring, ring.producer() as p, ring.consumer() as c:
        p.reserve().write(np.array([99], np.uint64))
        p.commit()
        batch = p.reserve_many(100)
        assert len(batch) == 7  # stops at the end of the ring
        batch.data[:, :8] = np.arange(7, dtype=np.uint64).view(np.uint8).reshape(7, 8)
        batch.headers["payload_bytes"] = 8
        p.commit(len(batch))
        assert [int(s) for s in ring._m.headers["seq"]] == list(range(8))
        first = c.acquire_batch(3)
        assert first.data[:, :8].copy().view(np.uint64).ravel().tolist() == [99, 0, 1]
        rest = c.acquire_batch(100)
        assert rest.data[:, :8].copy().view(np.uint64).ravel().tolist() == [2, 3, 4, 5, 6]
        assert rest.headers["seq"].tolist() == [3, 4, 5, 6, 7]
        c.release(8)
        wrapped = p.reserve_many(5)  # positions 8..12 start again at slot 0
        assert wrapped.start == 8 and len(wrapped) == 5
        p.commit(5)
        assert c.acquire_batch(10).headers["seq"].tolist() == [8, 9, 10, 11, 12]
        c.release(5)


def test_reserve_many_under_drop_newest_gives_empty_batch(ring_name):
    with make(ring_name, n_slots=2, policy="drop_newest") as ring, ring.producer() as p, ring.consumer() as c:
        assert len(p.reserve_many(5)) == 2
        p.commit(2)
        batch = p.reserve_many(5)
        assert len(batch) == 0
        p.count_drops(5)
        assert ring.statistics().drops == 5
        c.acquire_many(2)
        c.release(2)


def test_mixed_drops_and_reservations_commit_in_reservation_order(ring_name):
    with make(ring_name, n_slots=2, policy="drop_newest") as ring, ring.producer() as p, ring.consumer() as c:
        a = p.reserve()
        b = p.reserve()
        d = p.reserve()
        assert not a.dropped and not b.dropped and d.dropped
        p.commit(3)
        assert ring.statistics().written == 2 and ring.statistics().drops == 1
        c.acquire_many(2)
        c.release(2)


def test_heartbeat_refreshes_while_waiting(ring_name):
    with make(ring_name) as ring, ring.producer(), ring.consumer(peer_check_interval=0.01) as c:
        time.sleep(0.3)
        assert ring.statistics().consumer_heartbeat_age_s >= 0.3
        with pytest.raises(rt.RingTimeout):
            c.acquire(timeout=0.1)
        assert ring.statistics().consumer_heartbeat_age_s < 0.1
