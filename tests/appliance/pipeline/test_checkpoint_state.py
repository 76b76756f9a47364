"""Each stage's checkpoint state without stage processes: frames go through real rings in
this process, straight into the handler; the state is the handler's frozen dataclass. Its
size must not grow with the run's length. And the pure parts of the resume protocol."""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from dataclasses import FrozenInstanceError

import numpy as np
import pytest

import rt
from appliance.pipeline import handlers
from appliance.pipeline._checkpoint import (
    Checkpoint, RuntimeState, epoch_path, epochs_on_disk, load_checkpoint, plan_resume, prune_epochs, save_checkpoint,
    save_epoch, write_commit,
)
from appliance.pipeline._spec import StageSpec, frame_key
from appliance.pipeline.runtime import Emitter, StageStats
from appliance.pipeline.stage import Frame
from tests.runs import small_run_config


class Harness:
    """One handler fed through a real ring; what it emits is read back from a real ring."""

    def __init__(self, tmp_path, stage: str, *extra: str, n_slots: int = 8) -> None:
        self.config = small_run_config(tmp_path, 'run.tiles=[1101]', *extra)
        tag = uuid.uuid4().hex[:8]
        self.names = (f"test.ckpt.{tag}.in", f"test.ckpt.{tag}.out")
        side = self.config.source.synthetic.tile_size
        self.rings = [rt.Ring.create(n, payload_bytes=side * side * 2, n_slots=n_slots) for n in self.names]
        self.producer, self.consumer = rt.Producer(self.names[0]), rt.Consumer(self.names[0])
        out_producer, self.out = rt.Producer(self.names[1]), rt.Consumer(self.names[1])
        self.spec = StageSpec(stage=stage, replica=0, inputs=(self.names[0],), outputs=(self.names[1],), config=self.config,
                              run_id="CKPT", run_dir=tmp_path / "CKPT", state_dir=tmp_path / ".state" / "CKPT",
                              parent_pid=os.getpid(), stage_index=2)
        self.spec.state_dir.mkdir(parents=True)
        self.stats = StageStats()
        self.handler = handlers.make_handler(self.spec, self.stats)
        self.emitter = Emitter(self.spec, [out_producer], threading.Event(), self.stats)
        self.watermarks: dict = {}
        self.emitted: list[tuple] = []
        self.payloads: list[np.ndarray] = []  #: what was emitted, copied out of the ring (keep_payloads)
        self.keep_payloads = False
        self._extra = [out_producer]

    def feed(self, kind: int, tile: int, cycle: int, channel: int, array: np.ndarray) -> None:
        slot = self.producer.reserve(timeout=5)
        h = slot.header
        h["kind"], h["tile"], h["cycle"], h["channel"], h["flags"] = kind, tile, cycle, channel, 0
        h["t_mono_ns"] = 1
        slot.write(np.ascontiguousarray(array), with_checksum=True)
        self.producer.commit()
        got = self.consumer.acquire(timeout=5)
        k, t, c, ch = frame_key(got.header)
        self.handler.on_frame(Frame(got), self.emitter)  # as the runtime hands it over
        self.watermarks[(k, t)] = (c, ch)
        self.consumer.release(1)
        self._drain()

    def _drain(self) -> None:
        while True:
            try:
                s = self.out.acquire_nowait()
            except rt.WouldBlock:
                return
            self.emitted.append(frame_key(s.header))
            if self.keep_payloads:
                self.payloads.append(np.array(Frame(s).array()))
            self.out.release(1)

    def checkpoint_bytes(self) -> int:
        path = self.spec.state_dir / "probe.ckpt"
        return save_checkpoint(path, Checkpoint(RuntimeState(dict(self.watermarks), 0), self.handler.snapshot()))

    def close(self) -> None:
        for c in (self.consumer, self.out):
            c.close()
        for p in (self.producer, *self._extra):
            p.close()
        for r in self.rings:
            r.close()
            r.unlink()


@pytest.fixture
def harness(tmp_path):
    made = []

    def make(stage, *extra, **kw):
        h = Harness(tmp_path / f"h{len(made)}", stage, *extra, **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def _images(config, cycles: int):
    from kernels.synthetic import SyntheticInstrument

    inst = SyntheticInstrument(handlers.synthetic_params(config), seed=config.run.seed)
    for cycle in range(1, cycles + 1):
        for ch in range(4):
            yield cycle, ch, inst.render(tile=1101, cycle=cycle, channel=ch)


def _kernel_over(harness, cycles: int, run_cycles: int, keep_payloads: bool = False):
    h = harness("kernel", f"run.cycles={run_cycles}")
    h.keep_payloads = keep_payloads
    for cycle, ch, image in _images(h.config, cycles):
        h.feed(rt.FrameKind.IMAGE, 1101, cycle, ch, image)
    return h


def test_the_kernel_checkpoint_does_not_grow_with_the_run(harness):
    n = 6
    short, long = _kernel_over(harness, n, 10 * n), _kernel_over(harness, 10 * n, 10 * n)
    assert len([k for k in long.emitted if k[0] == rt.FrameKind.INTENSITIES]) == 10 * n  # it did the work
    a, b = short.checkpoint_bytes(), long.checkpoint_bytes()
    assert abs(a - b) / a < 0.03, (a, b)
    state = long.handler.snapshot()
    assert isinstance(state, handlers.KernelState) and not state.results and not state.incomplete and not state.stacks
    with pytest.raises(FrozenInstanceError):
        state.results = {}


def _restarted_kernel(harness, first, cycles_done: int, files: str, keep=lambda name: True):
    """The kernel's state through a checkpoint file, as a restarted stage reads it: a new
    kernel stage (its state folder given the files ``first`` wrote that match ``files`` and
    ``keep``) restores it and is fed the cycles after ``cycles_done``. Returns (state, kernel)."""
    path = first.spec.state_dir / "kernel.ckpt"
    save_checkpoint(path, first.handler.snapshot())
    state = load_checkpoint(path)
    again = harness("kernel", "run.cycles=8")
    again.keep_payloads = first.keep_payloads
    for f in first.spec.state_dir.glob(files):  # the restarted stage's state folder is the same one
        if keep(f.name):
            shutil.copy(f, again.spec.state_dir / f.name)
    again.handler.restore(state)
    for cycle, ch, image in _images(again.config, 8):
        if cycle > cycles_done:
            again.feed(rt.FrameKind.IMAGE, 1101, cycle, ch, image)
    return state, again


def test_the_kernel_restored_from_its_state_goes_on_as_if_never_stopped(harness):
    whole = _kernel_over(harness, 8, 8)
    first = _kernel_over(harness, 5, 8)
    state, again = _restarted_kernel(harness, first, 5, "*.chain.ckpt")
    # the built chain is in its own file beside the checkpoints, which names it
    assert all(isinstance(c, handlers.ChainFile) for c in state.chains.values())
    assert first.emitted + again.emitted == whole.emitted


def test_the_kernel_restored_while_building_its_template_goes_on_bit_for_bit(harness):
    """Before its template is built (cycles 1-3 of 4) the kernel's checkpoint names each
    template cycle's frames, written once to their own file, instead of carrying the chain;
    a kernel restored from it builds the same chain and emits the same bytes."""
    whole = _kernel_over(harness, 8, 8, keep_payloads=True)
    first = _kernel_over(harness, 3, 8, keep_payloads=True)
    assert first.checkpoint_bytes() < 16 * 1024  # no frames or spectra in the checkpoint itself
    state, again = _restarted_kernel(harness, first, 3, "*.held.ckpt")
    assert isinstance(state.chains[1101], handlers.TemplateCycles)
    assert [c for c, _ in state.chains[1101].files] == [1, 2, 3]
    assert first.emitted + again.emitted == whole.emitted
    for a, b in zip(first.payloads + again.payloads, whole.payloads, strict=True):
        np.testing.assert_array_equal(a, b)
    # a template cycle's file gone is named in the error, not a crash-loop on a KeyError
    with pytest.raises(RuntimeError, match="c0002.held.ckpt.*template cycle 2.*is missing"):
        _restarted_kernel(harness, first, 3, "*.held.ckpt", keep=lambda name: ".c0002." not in name)


def _basecall_over(harness, intensities, cycles: int, run_cycles: int, keep_payloads: bool = False):
    h = harness("basecall", f"run.cycles={run_cycles}", n_slots=64)  # cycle 25 emits ~20 calls frames at once
    h.keep_payloads = keep_payloads
    n = intensities.shape[0]
    h.feed(rt.FrameKind.POSITIONS, 1101, 0, 0, np.random.default_rng(0).random((n, 2), np.float32) * 128)
    for c in range(1, cycles + 1):
        h.feed(rt.FrameKind.INTENSITIES, 1101, c, 0, np.ascontiguousarray(intensities[:, c - 1]))
    return h


def test_the_basecall_checkpoint_is_bounded_by_the_callers_window(harness):
    """The basecall stage's checkpoint per write is at most what the streaming caller's
    window needs (its float32 rows, provisional calls and no-call mask, bounded by the
    phasing history and the lags, not the run), and the same size at cycle N and 2N."""
    from kernels.basecall import _AHEAD, _HISTORY
    from kernels.synthetic import InstrumentParams, SyntheticInstrument

    n_cycles = 120
    params = InstrumentParams(tile_shape=(128, 128), layout="patterned", n_cycles=n_cycles)
    intensities = SyntheticInstrument(params, seed=3).cluster_intensities(1101)
    half, whole = _basecall_over(harness, intensities, n_cycles // 2, n_cycles), _basecall_over(harness, intensities, n_cycles, n_cycles)
    calls = [k for k in whole.emitted if k[0] == rt.FrameKind.CALLS]
    assert len(calls) == n_cycles - whole.handler.callers[1101].max_lag  # it did the work
    caller = whole.handler.callers[1101]
    n = caller.n_clusters
    window_bytes = n * (16 * (_HISTORY + caller.lag + caller.window + _AHEAD) + (_HISTORY + _AHEAD) + caller.max_lag + 13)
    a, b = half.checkpoint_bytes(), whole.checkpoint_bytes()
    # the rows are in the tile's row log: the checkpoint holds four per-cluster vectors
    # (13 B a cluster) and the rest (model, quality table, counters)
    assert b <= n * 13 + 32 * 1024, (b, n)
    assert abs(a - b) <= 64, (a, b)
    # what the log holds for the caller's live rows is bounded by the window as before
    live = sum(part.nbytes for _lo, _hi, part in caller.rows_since({}).values())
    assert live <= window_bytes, (live, window_bytes)


def test_the_basecall_stage_restored_from_its_row_log_goes_on_bit_for_bit(harness, monkeypatch):
    """The caller's rows go to the tile's row log once each (a new generation every
    COMPACT_EVERY appends, the older ones removed); a basecall stage restored from a
    checkpoint and that log, with a torn append after it cut off, emits the same bytes
    as one never stopped. A log missing is named in the error."""
    from appliance.pipeline import _rowlog
    from kernels.synthetic import InstrumentParams, SyntheticInstrument

    monkeypatch.setattr(_rowlog, "COMPACT_EVERY", 8)  # several generations within the run
    n_cycles, stop_at = 60, 33
    params = InstrumentParams(tile_shape=(128, 128), layout="patterned", n_cycles=n_cycles)
    intensities = SyntheticInstrument(params, seed=3).cluster_intensities(1101)
    whole = _basecall_over(harness, intensities, n_cycles, n_cycles, keep_payloads=True)
    first = _basecall_over(harness, intensities, stop_at, n_cycles, keep_payloads=True)
    logs = sorted(p.name for p in first.spec.state_dir.glob("*.rows.ckpt"))
    assert len(logs) == 1 and ".g0004." in logs[0], logs  # generations 0-3 compacted away
    save_checkpoint(first.spec.checkpoint_path, first.handler.snapshot())
    state = load_checkpoint(first.spec.checkpoint_path)
    ref = state.callers[1101]
    assert isinstance(ref, _rowlog.CallerLog) and ref.log == logs[0]
    with open(first.spec.state_dir / ref.log, "ab") as f:
        f.write(b"torn append of a crash")

    def restarted(keep=lambda name: True):
        again = harness("basecall", f"run.cycles={n_cycles}", n_slots=64)
        again.keep_payloads = True
        for f in first.spec.state_dir.glob("*.rows.ckpt"):
            if keep(f.name):
                shutil.copy(f, again.spec.state_dir / f.name)
        again.handler.restore(state)
        return again

    again = restarted()
    assert (again.spec.state_dir / ref.log).stat().st_size == ref.length  # the torn part cut off
    for c in range(stop_at + 1, n_cycles + 1):
        again.feed(rt.FrameKind.INTENSITIES, 1101, c, 0, np.ascontiguousarray(intensities[:, c - 1]))
    again.handler.finish(again.emitter)
    whole.handler.finish(whole.emitter)
    again._drain()
    whole._drain()
    assert first.emitted + again.emitted == whole.emitted
    for x, y in zip(first.payloads + again.payloads, whole.payloads, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(RuntimeError, match=r"rows.ckpt \(the base caller's rows, named by the checkpoint\) is missing"):
        restarted(keep=lambda name: False)
    # a generation that a kept checkpoint names outlives the compaction after it
    for c in range(stop_at + 1, stop_at + 10):
        first.feed(rt.FrameKind.INTENSITIES, 1101, c, 0, np.ascontiguousarray(intensities[:, c - 1]))
    assert sorted(p.name.split(".")[2] for p in first.spec.state_dir.glob("*.rows.ckpt")) == ["g0004", "g0005"]


def test_preprocess_and_writer_state_is_counters_not_history(harness):
    pre_short, pre_long = harness("preprocess"), harness("preprocess")
    image = np.full((256, 256), 65535, np.uint16)
    for h, n in ((pre_short, 8), (pre_long, 80)):
        for i in range(n):
            h.feed(rt.FrameKind.IMAGE, 1101, 1 + i // 4, i % 4, image)
    assert pre_long.handler.snapshot() == handlers.PreprocessState(saturated=80 * image.size, kept=0)
    assert abs(pre_short.checkpoint_bytes() - pre_long.checkpoint_bytes()) <= 8

    sizes = []
    for cycles in (4, 40):
        w = harness("writer", f"run.cycles={cycles}")
        n = 50
        w.feed(rt.FrameKind.POSITIONS, 1101, 0, 0, np.random.default_rng(0).random((n, 2), np.float32) * 256)
        for c in range(1, cycles + 1):
            w.feed(rt.FrameKind.INTENSITIES, 1101, c, 0, np.ones((n, 4), np.float32))
            w.feed(rt.FrameKind.CALLS, 1101, c, 0, np.stack([np.zeros(n, np.uint8), np.full(n, 30, np.uint8)]))
        state = w.handler.snapshot()
        assert state == handlers.WriterState(completed_through=cycles, cycle_tiles={}, raw_bytes=0, raw_frames=0)
        sizes.append(w.checkpoint_bytes())
    assert abs(sizes[0] - sizes[1]) <= 8, sizes


def test_plan_resume_restores_the_committed_epoch_that_every_stage_has():
    names = ["source-0", "kernel-0", "writer-0"]
    epochs = {"source-0": [7, 8, 9], "kernel-0": [7, 8], "writer-0": [6, 7]}
    plan = plan_resume(7, epochs, names, 8, reacquirable=True)
    assert (plan.epoch, plan.source_index, plan.lost_frames) == (7, 56, 0)
    assert plan.restore == {n: 7 for n in names}
    # a stage without the committed epoch: the newest one every stage has
    plan = plan_resume(8, epochs, names, 8, reacquirable=True)
    assert plan.epoch == 7 and "lacks" in plan.reason
    # nothing committed: from the start, nothing restored
    assert plan_resume(0, epochs, names, 8, reacquirable=True).restore == {}


def test_plan_resume_with_a_live_camera_counts_the_frames_lost():
    epochs = {"source-0": [3], "writer-0": [3]}
    plan = plan_resume(3, epochs, ["source-0", "writer-0"], 8, reacquirable=False, acquired_before=37)
    assert (plan.epoch, plan.source_index, plan.lost_frames) == (3, 37, 13)


def test_epoch_checkpoints_are_kept_from_the_committed_epoch_on(tmp_path):
    for e in range(1, 6):
        save_epoch(tmp_path, "kernel-0", e, Checkpoint(RuntimeState(), handlers.PreprocessState(e, 0), e))
    assert epochs_on_disk(tmp_path) == {"kernel-0": [1, 2, 3, 4, 5]}  # nothing committed yet
    write_commit(tmp_path, 4, 32)
    prune_epochs(tmp_path, "kernel-0")
    assert epochs_on_disk(tmp_path) == {"kernel-0": [4, 5]}
    assert load_checkpoint(epoch_path(tmp_path, "kernel-0", 4)).handler == handlers.PreprocessState(4, 0)
    assert not list(tmp_path.glob("*.tmp"))


def test_preprocess_allocates_nothing_per_frame_in_steady_state(harness):
    """The hot path reuses its buffers: after a warm-up, handling a frame allocates no
    frame-sized array (tracemalloc's peak over each frame stays far below one 256 x 256
    boolean mask, 64 KiB) and the traced memory does not grow with the frames."""
    import tracemalloc

    from rt import FrameKind

    h = harness("preprocess")
    image = np.full((256, 256), 100, np.uint16)
    image[:4, :4] = 65535
    for i in range(8):  # warm-up: buffers, first-use caches
        h.feed(FrameKind.IMAGE, 1101, 1 + i // 4, i % 4, image)
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        worst = 0
        for i in range(8, 208):
            before = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            h.feed(FrameKind.IMAGE, 1101, 1 + i // 4, i % 4, image)
            worst = max(worst, tracemalloc.get_traced_memory()[1] - before)
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    assert h.handler.saturated == 16 * 208
    assert worst < 16 * 1024, f"a frame allocated {worst} bytes at its peak (a frame-sized buffer?)"
    # what is left is the harness's own list of emitted keys (~100 bytes a frame)
    assert grown < 200 * 512, f"traced memory grew {grown} bytes over 200 frames"
