"""The stages' status blocks (rt.status): seqlock reads, the event ring, parameters, crash
semantics and clean-up, with real shared memory and real processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import uuid

import numpy as np
import pytest

import rt
from rt import StageState, StatusBlock
from rt.status import EVENT_SLOTS, MAGIC


@pytest.fixture
def name():
    n = f"appliance.test.{uuid.uuid4().hex[:8]}.status"
    yield n
    rt.clean_dead_status_blocks(force=(n, n + ".live"))  # whatever a failed test left


def _publish(w, n: int, state=StageState.RUNNING, extra=None) -> None:
    # frames_in == frames_out == n, bytes_* == 10 n: a torn read would break the relation
    w.publish(state, n, n, 10 * n, 10 * n, 0, 0, n // 10, 100 * (n // 10), n, 0.001 * n, 5.0, n, 2 * n, extra)


def test_a_record_round_trips_and_starts_empty(name):
    with StatusBlock.create(name, 3) as block:
        assert [s.state for s in block.read_all()] == [StageState.EMPTY] * 3
        w = block.writer(1)
        st = block.read(1)
        assert st.state == StageState.STARTING and st.pid == os.getpid() and st.incarnation == 1
        _publish(w, 42, extra=b'{"phase": "acquiring"}')
        w.stage_latency_hist[7] += 3
        st = block.read(1)
        assert (st.frames_in, st.frames_out, st.bytes_in, st.checkpoints, st.checkpoint_bytes) == (42, 42, 420, 4, 400)
        assert st.busy_s == pytest.approx(0.042) and st.budget_ms == 5.0 and st.stage_latency_sum_ns == 42
        assert st.extra == {"phase": "acquiring"} and st.stage_latency_hist[7] == 3 and st.consistent
        # extra is kept until the next publish that brings one
        _publish(w, 43)
        assert block.read(1).extra == {"phase": "acquiring"}
        assert block.read(0).state == StageState.EMPTY and block.read(2).frames_in == 0
        with pytest.raises(IndexError, match="has 3"):
            block.read(3)
        block.unlink()


def test_a_restart_is_a_new_incarnation_from_zero_that_keeps_the_event_count(name):
    with StatusBlock.create(name, 1) as block:
        w = block.writer(0)
        _publish(w, 100)
        w.post(b'{"message": "one"}')
        w.stage_latency_hist[1] = 9
        w2 = block.writer(0)  # the restarted stage
        st = block.read(0)
        assert (st.incarnation, st.frames_in, st.events_written, int(st.stage_latency_hist.sum())) == (2, 0, 1, 0)
        events, cursor, lost = block.events(0, 0)
        assert events == [b'{"message": "one"}'] and cursor == 1 and lost == 0
        w2.post(b'{"message": "two"}')
        assert block.events(0, cursor) == ([b'{"message": "two"}'], 2, 0)
        block.unlink()


def test_a_reader_that_falls_behind_is_told_how_many_events_it_lost(name):
    with StatusBlock.create(name, 1) as block:
        w = block.writer(0)
        for k in range(EVENT_SLOTS + 5):
            w.post(json.dumps({"k": k}).encode())
        events, cursor, lost = block.events(0, 0)
        assert lost == 5 and cursor == EVENT_SLOTS + 5
        assert [json.loads(e)["k"] for e in events] == list(range(5, EVENT_SLOTS + 5))
        assert block.events(0, cursor) == ([], cursor, 0)
        block.unlink()


def test_a_writer_killed_mid_write_leaves_a_torn_record_that_reads_as_such(name):
    with StatusBlock.create(name, 1) as block:
        w = block.writer(0)
        _publish(w, 5)
        w._begin()  # as if killed inside publish: seq stays odd
        st = block.read(0)
        assert not st.consistent and st.frames_in == 5
        block.writer(0)  # the restart makes it whole again
        assert block.read(0).consistent
        block.unlink()


def test_parameters_go_from_the_owner_to_the_stages(name):
    with StatusBlock.create(name, 2) as block:
        w = block.writer(1)
        assert w.params() == (0, {}) and w.params_seq() == 0
        seq = block.set_params({"source.rate_hz": 50.0})
        assert w.params_seq() == seq and w.params() == (seq, {"source.rate_hz": 50.0})
        with pytest.raises(ValueError, match="at most"):
            block.set_params({"x": "y" * 5000})
        block.unlink()


def _writer_proc(name: str, n: int) -> None:
    with StatusBlock.attach(name) as block:
        w = block.writer(0)
        for i in range(1, n + 1):
            _publish(w, i)
            if i % 1000 == 0:
                w.post(json.dumps({"i": i}).encode())
            if i % 10 == 0:
                time.sleep(0)  # a stage publishes once a frame, not back to back: leave readers a gap
        _publish(w, n, StageState.FINISHED)


def test_reads_under_a_writer_in_another_process_are_never_torn_and_only_grow(name):
    n = 100_000
    with StatusBlock.create(name, 1) as block:
        proc = mp.get_context("spawn").Process(target=_writer_proc, args=(name, n))
        proc.start()
        try:
            last, reads, cursor, events, lost_in_all = 0, 0, 0, [], 0
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                st = block.read(0)
                reads += 1
                assert st.consistent
                assert st.frames_out == st.frames_in and st.bytes_in == 10 * st.frames_in == st.bytes_out, st
                assert st.frames_in >= last
                last = st.frames_in
                got, cursor, lost = block.events(0, cursor)
                lost_in_all += lost  # only when this reader was descheduled for EVENT_SLOTS events
                events += [json.loads(e)["i"] for e in got]
                if st.state == StageState.FINISHED:
                    break
            assert last == n and reads > 10
            got, cursor, lost = block.events(0, cursor)
            events += [json.loads(e)["i"] for e in got]
            lost_in_all += lost
            # every event arrives once, in order, or is counted as lost: never torn, never twice
            assert events == sorted(set(events)) and set(events) <= set(range(1000, n + 1, 1000))
            assert len(events) + lost_in_all == n // 1000
        finally:
            proc.join(30)
        assert proc.exitcode == 0
        block.unlink()


def _create_and_die(name: str) -> None:
    StatusBlock.create(name, 1)
    os._exit(0)  # the owner dies without unlinking


def test_a_dead_owners_block_is_cleaned_and_a_live_ones_is_kept(name):
    proc = mp.get_context("spawn").Process(target=_create_and_die, args=(name,))
    proc.start()
    proc.join(30)
    live = name + ".live"
    with StatusBlock.create(live, 1) as mine:
        assert name in rt.list_status_blocks() and live in rt.list_status_blocks()
        assert name in rt.clean_dead_status_blocks(dry_run=True) and live not in rt.clean_dead_status_blocks(dry_run=True)
        assert name in rt.clean_dead_rings()  # `appliance clean` and the supervisor's start-up
        assert name not in rt.list_status_blocks() and live in rt.list_status_blocks()
        assert mine.statistics().owner_alive
        mine.unlink()


def test_not_a_status_block_and_missing_blocks_are_named(name):
    with pytest.raises(rt.RingNotFound, match="no status block"):
        StatusBlock.attach(name)
    with StatusBlock.create(name, 1) as block:
        block._header["version"] = 99
        with pytest.raises(rt.RingFormatError, match="version 99"):
            StatusBlock.attach(name)
        block._header["version"] = 1
        block._header["magic"] = b"NOTMAGIC"
        with pytest.raises(rt.RingFormatError, match="not a status block"):
            StatusBlock.attach(name)
        block._header["magic"] = MAGIC
        block.unlink()
    with pytest.raises(ValueError):
        StatusBlock.create(name, 0)


def test_the_record_dtype_is_cache_line_aligned_and_holds_the_histograms():
    dt = rt.stage_status_dtype(512)
    assert dt.itemsize % 64 == 0
    assert dt.fields["stage_latency_hist"][0].shape == (512,) and dt.fields["e2e_latency_hist"][0].base == np.dtype("<i8")
