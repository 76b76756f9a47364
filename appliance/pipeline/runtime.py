"""The stage process: attach to rings, run a handler over frames, checkpoint, release, emit.

``stage_main(spec)`` is the ``spawn`` target for every stage. The loop acquires frames from
the stage's input rings, drops duplicates by a watermark per stream (kind, tile), verifies
checksums where configured (a mismatch is counted, logged with the frame's identity and
quarantined), hands each frame to the stage's handler, and releases input frames only after
a checkpoint that covers them (see ``_checkpoint``). Barrier frames (the end of an epoch,
one cycle) are aligned across the inputs: once the barrier of epoch k has arrived on every
input the stage writes its durable epoch-k checkpoint, forwards the barrier to every output,
and the last stage commits k as the global restore point (docs/architecture.md). When every
input has reached end of stream it calls ``handler.finish`` and closes its outputs, which
propagates end of stream downstream: that is how a stop drains.

SIGTERM only sets an event. When the supervisor has died (the kernel sends SIGTERM then),
the loop checkpoints, detaches without end of stream and exits. While the supervisor lives,
a SIGTERM (sent to the whole process group by a terminal or ``timeout``) is ignored: the
supervisor drains the pipeline through the source, which ends the stream.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np

import rt
from appliance.pipeline._checkpoint import (
    BARRIER_KIND,
    Checkpoint,
    RuntimeState,
    link_live,
    load_checkpoint,
    save_checkpoint,
    save_epoch,
    write_commit,
)
from appliance.config import STAGES
from appliance.pipeline._flags import AnyFlag, SharedFlag
from appliance.pipeline.histogram import LatencyHistogram, percentile_of, sparse_counts
from appliance.pipeline._spec import StageSpec
from appliance.pipeline.stage import Frame

__all__ = ["stage_main", "Emitter", "StageStats", "live_figures"]

log = logging.getLogger("appliance.stage")
#: the stages a frame passes, in the order of its trace stamps (appliance.tracing)
_TRACE_STAGES = ("source", *STAGES)


class Stopping(Exception):
    """The stage was asked to stop while it waited to emit."""


class _Figures(dict):
    """A stage's own figures (``StageStats.extra``): a dict that notes a change, so its JSON
    copy in the status block is rewritten only then."""

    changed = True

    def __setitem__(self, key, value) -> None:
        self.changed = True
        super().__setitem__(key, value)

    def __delitem__(self, key) -> None:
        self.changed = True
        super().__delitem__(key)

    def update(self, *args, **kwargs) -> None:
        self.changed = True
        super().update(*args, **kwargs)

    def pop(self, *args):
        self.changed = True
        return super().pop(*args)

    def setdefault(self, key, default=None):
        self.changed = True
        return super().setdefault(key, default)


class StageStats:
    """A stage's counters, latency histograms and own figures (``extra``).

    With a ``status`` writer (the stage's record in the run's status block, ``rt.status``)
    the histograms count in place in shared memory and :meth:`publish` writes the counters
    there, on every frame: that is the stage's live status, read by the supervisor (and
    through it the control plane, the TUI and the exporter). Its alerts and events go over
    the record's event ring (:meth:`post_event`). The summary file (:func:`_write_summary`)
    is written once, at exit: the stage's totals for the run summary.
    """

    def __init__(self, status: rt.StatusWriter | None = None) -> None:
        self.frames_in = 0
        self.frames_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.duplicates = 0
        self.checksum_failures = 0
        self.busy_s = 0.0
        self.checkpoints = 0
        self.checkpoint_bytes = 0
        self.started = time.monotonic()
        self.budget_ms = 0.0
        self.within_budget = 0
        #: what the stage does (its record's state)
        self.state = rt.StageState.STARTING
        self.status = status
        #: per frame: from leaving the previous stage (its trace stamp) to done here
        self.latency = LatencyHistogram(status.stage_latency_hist if status is not None else None)
        #: per frame: from acquisition to done here (the end-to-end latency at the writer)
        self.e2e = LatencyHistogram(status.e2e_latency_hist if status is not None else None)
        self.extra: dict = _Figures()

    _COUNTERS = ("frames_in", "frames_out", "bytes_in", "bytes_out", "duplicates", "checksum_failures", "busy_s",
                 "checkpoints", "checkpoint_bytes", "started", "budget_ms", "within_budget")

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self._COUNTERS}
        d["wall_s"] = wall = time.monotonic() - self.started
        d["busy_fraction"] = self.busy_s / wall if wall > 0 else 0.0
        d["stage_latency_ms_p50"] = self.latency.percentile(50)
        d["stage_latency_ms_p99"] = self.latency.percentile(99)
        d["within_budget_fraction"] = self.within_budget / self.frames_in if self.frames_in and self.budget_ms else None
        d["e2e_latency_ms_p50"] = self.e2e.percentile(50)
        d["e2e_latency_ms_p99"] = self.e2e.percentile(99)
        d["stage_latency_hist"] = self.latency.sparse()
        d["e2e_latency_hist"] = self.e2e.sparse()
        d["stage_latency_sum_s"] = self.latency.sum_s
        d["e2e_latency_sum_s"] = self.e2e.sum_s
        d.update(self.extra)
        return d

    def publish(self, state: rt.StageState | None = None) -> None:
        """The counters into the status block (about 2 us; nothing without a block)."""
        if state is not None:
            self.state = state
        if self.status is None:
            return
        extra = None
        if self.extra.changed:
            self.extra.changed = False
            extra = json.dumps(self.extra, default=str).encode()
        self.status.publish(self.state, self.frames_in, self.frames_out, self.bytes_in, self.bytes_out, self.duplicates,
                            self.checksum_failures, self.checkpoints, self.checkpoint_bytes, self.within_budget,
                            self.busy_s, self.budget_ms, self.latency.sum_ns, self.e2e.sum_ns, extra)

    def post_event(self, event: dict) -> None:
        """An alert or event for the supervisor, over the record's event ring (never waits,
        never touches the disk). A message too long for one event is shortened."""
        if self.status is None:
            return
        data = json.dumps(event, default=str).encode()
        if len(data) > rt.EVENT_BYTES:
            cut = dict(event, message=str(event.get("message", ""))[: max(0, len(str(event.get("message", ""))) - (len(data) - rt.EVENT_BYTES) - 16)] + " [cut]")
            data = json.dumps(cut, default=str).encode()[: rt.EVENT_BYTES]
        self.status.post(data)


def live_figures(st: rt.StageStatus) -> dict:
    """A stage's live status as the keys of its summary (``StageStats.as_dict``), from one
    read of its record: what each stats sample carries per stage."""
    end_ns = st.updated_ns if st.state in (rt.StageState.FINISHED, rt.StageState.STOPPED) else time.monotonic_ns()
    wall = max(0.0, (end_ns - st.started_ns) / 1e9) if st.started_ns else 0.0
    d = {
        "frames_in": st.frames_in, "frames_out": st.frames_out, "bytes_in": st.bytes_in, "bytes_out": st.bytes_out,
        "duplicates": st.duplicates, "checksum_failures": st.checksum_failures, "busy_s": st.busy_s,
        "checkpoints": st.checkpoints, "checkpoint_bytes": st.checkpoint_bytes, "budget_ms": st.budget_ms,
        "within_budget": st.within_budget, "wall_s": wall, "busy_fraction": st.busy_s / wall if wall > 0 else 0.0,
        "stage_latency_ms_p50": percentile_of(st.stage_latency_hist, 50),
        "stage_latency_ms_p99": percentile_of(st.stage_latency_hist, 99),
        "within_budget_fraction": st.within_budget / st.frames_in if st.frames_in and st.budget_ms else None,
        "e2e_latency_ms_p50": percentile_of(st.e2e_latency_hist, 50),
        "e2e_latency_ms_p99": percentile_of(st.e2e_latency_hist, 99),
        "stage_latency_hist": sparse_counts(st.stage_latency_hist), "e2e_latency_hist": sparse_counts(st.e2e_latency_hist),
        "stage_latency_sum_s": st.stage_latency_sum_ns / 1e9, "e2e_latency_sum_s": st.e2e_latency_sum_ns / 1e9,
        "stage_state": st.state.name.lower(), "pid": st.pid, "incarnation": st.incarnation,
        # as in the summary file: running until it finished or stopped
        "status": {rt.StageState.FINISHED: "finished", rt.StageState.STOPPED: "stopped", rt.StageState.EMPTY: None}.get(st.state, "running"),
    }
    d.update(st.extra)
    return d


class Emitter:
    """Writes output frames: routes by tile, copies identity and trace, checksums, commits.

    ``emit`` blocks while the downstream ring is full (backpressure), checking the stop
    event so a stopping stage does not hang. While it waits it calls ``on_wait`` (the stage's
    input heartbeats: a stage held up by backpressure is waiting, not hung). With a ``watch``
    (every stage but the source) a stop while the supervisor lives is a SIGTERM to the process
    group and is ignored, as in the consume loop: the supervisor drains through the source.
    """

    def __init__(self, spec: StageSpec, producers: list[rt.Producer], stop, stats: StageStats,
                 watch: rt.ParentWatch | None = None) -> None:
        self.spec = spec
        self.producers = producers
        self.stop = stop
        self.stats = stats
        self.watch = watch
        self.on_wait = None

    def stopping(self) -> bool:
        """True when this stage must stop now. A stop while the supervisor lives (with a
        ``watch``) is a SIGTERM to the whole process group (a terminal, `timeout`,
        `kill -- -PGID`): it is cleared, and the supervisor drains the pipeline through the source."""
        if not self.stop.is_set():
            return False
        if self.watch is not None and self.watch.parent_alive():
            self.stop.clear()
            log.info("SIGTERM while the supervisor lives: draining with the pipeline")
            return False
        return True

    def emit(self, kind: int, tile: int, cycle: int, channel: int, array: np.ndarray | None, source_header=None, flags: int = 0) -> None:
        p = self.producers[self.spec.route(tile)]
        while True:
            try:
                slot = p.reserve(timeout=0.25)
                break
            except (rt.RingTimeout, rt.ConsumerGone):
                # Full downstream, or its consumer died (the supervisor restarts it; it resumes at
                # the read counter): wait, staying visibly alive.
                if self.on_wait is not None:
                    self.on_wait()
                if self.stopping():
                    raise Stopping from None
        h = slot.header
        if source_header is not None:
            h["t_mono_ns"] = source_header["t_mono_ns"]
            h["t_wall_ns"] = source_header["t_wall_ns"]
            h["run_id"] = source_header["run_id"]
            h["instrument_id"] = source_header["instrument_id"]
            h["trace_ns"] = source_header["trace_ns"]
            h["n_trace"] = source_header["n_trace"]
        h["kind"] = kind
        h["tile"] = tile
        h["cycle"] = cycle
        h["channel"] = channel
        h["flags"] = flags
        if array is None:
            h["payload_bytes"] = 0
            h["ndim"] = 0
        else:
            slot.write(np.ascontiguousarray(array), with_checksum=True)
        rt.stamp_trace(h, self.spec.stage_index)
        p.commit()
        self.stats.frames_out += 1
        self.stats.bytes_out += int(h["payload_bytes"])

    def barrier(self, epoch: int, only: int | None = None) -> None:
        """The barrier of ``epoch`` on every output ring (or on output ``only``). Lossless
        also on a ``drop_newest`` ring: it waits for a free slot instead of being dropped."""
        for i, p in enumerate(self.producers):
            if only is not None and i != only:
                continue
            while True:
                st = p.statistics()
                if st.occupancy < st.n_slots:
                    break
                if self.on_wait is not None:
                    self.on_wait()
                if self.stopping():
                    raise Stopping
                time.sleep(0.001)
            while True:
                try:
                    slot = p.reserve(timeout=0.25)
                    break
                except (rt.RingTimeout, rt.ConsumerGone):
                    if self.on_wait is not None:
                        self.on_wait()
                    if self.stopping():
                        raise Stopping from None
            h = slot.header
            h["kind"] = BARRIER_KIND
            h["tile"] = h["channel"] = 0
            h["cycle"] = epoch
            h["flags"] = 0
            h["payload_bytes"] = 0
            h["ndim"] = 0
            h["t_mono_ns"] = 0
            h["n_trace"] = 0
            p.commit()


def _install_signals(stop: threading.Event) -> None:
    def on_term(signum, frame):  # handlers only set events (see the module docstring)
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which drains


def _prepare_process(spec: StageSpec, stop: threading.Event) -> rt.ParentWatch:
    """Logging, signal handlers, exit on parent death, then the CPU plan: pinning, mlock and
    real-time priority as configured (each only warns where the system does not allow it)."""
    if spec.log_json:
        from appliance.logjson import configure_logging

        configure_logging(json=True, level=logging.INFO)
    else:
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {spec.name}: %(message)s")
    from appliance.proctitle import set_title

    set_title(spec.name, spec.run_id)  # ps: "appliance: kernel-0 RUN_ID"
    _install_signals(stop)
    watch = rt.exit_when_parent_dies(spec.parent_pid or None)
    # Unplanned (cpu.pin = false, or too few CPUs): every CPU the cgroup allows, not the
    # supervisor's own affinity, which a child inherits (systemd's CPUAffinity= puts the
    # service on the housekeeping CPUs; its stages must not all crowd onto them).
    cpus = spec.cpus or rt.allowed_cpus()
    if cpus != rt.current_affinity():
        try:
            rt.pin(cpus)
        except rt.PinError as exc:
            log.warning("not pinned: %s", exc)
    cfg = spec.config.cpu
    if cfg.mlock:
        try:
            rt.mlockall()
        except rt.MemoryLockError as exc:
            log.warning("memory not locked: %s", exc)
    from appliance.pipeline.handlers import stage_class

    if cfg.realtime and stage_class(spec.config, spec.stage).realtime:  # the stage's trait
        try:
            rt.set_realtime(10)
        except rt.RealtimeError as exc:
            log.warning("no real-time priority: %s", exc)
    return watch


def _write_summary(spec: StageSpec, stats: StageStats, status: str, handler) -> None:
    """The stage's summary file at exit (atomic): its totals for the run summary. A full
    disk removes the temp file and waits for space (``handler.until_space``)."""
    d = stats.as_dict()
    d["status"] = status
    data = json.dumps(d).encode()
    tmp = spec.summary_path.with_suffix(".tmp")

    def write() -> None:
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, spec.summary_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    handler.until_space(str(spec.summary_path), write)


def stage_main(spec: StageSpec, drain: SharedFlag | None = None, pause: SharedFlag | None = None) -> None:
    """Entry point of a stage process (``spawn`` target).

    ``drain`` and ``pause`` are the supervisor's shared flags, read by the source only. They
    are state, not signals: a source that is still starting, or that was restarted after the
    operator asked to stop or pause, sees the request the next time it looks, and no request
    can kill a process that has not installed its handlers yet.
    """
    from appliance.pipeline import handlers

    stop = threading.Event()
    watch = _prepare_process(spec, stop)
    # The source stops on its own SIGTERM or on the supervisor's drain, whichever comes first.
    source_stop = AnyFlag(stop, drain) if drain is not None else stop
    pause = pause if pause is not None else threading.Event()
    block = rt.StatusBlock.attach(spec.status_block) if spec.status_block else None
    stats = StageStats(block.writer(spec.status_index) if block is not None else None)
    stats.publish()
    handler = handlers.make_handler(spec, stats)
    ckpt = load_checkpoint(spec.checkpoint_path)
    if not isinstance(ckpt, Checkpoint):
        if ckpt is not None:
            log.warning("%s is not a checkpoint of this version: starting empty", spec.checkpoint_path)
        ckpt = None
    elif ckpt.handler is not None:
        handler.restore(ckpt.handler)
    if ckpt is not None:
        log.info("resumed from checkpoint (epoch %d)", ckpt.epoch)
    producers = [rt.Producer(name) for name in spec.outputs]
    if spec.process.is_source:  # the source's stop is a drain: it ends the stream
        emitter = Emitter(spec, producers, source_stop, stats)
    else:
        emitter = Emitter(spec, producers, stop, stats, watch=watch)
    status = "stopped"
    try:
        if spec.process.is_source:
            # The source always ends the stream, also when asked to stop early: that is
            # what lets every later stage drain what entered.
            try:
                _produce(spec, handler, emitter, source_stop, pause, stats)
            except Stopping:
                pass
            finished = True
        else:
            finished = _consume(spec, handler, emitter, stats, ckpt.runtime if ckpt is not None else RuntimeState(),
                                tracer=_last_stage_tracer(spec))
        status = "finished" if finished else "stopped"
    except Stopping:
        status = "stopped"
    finally:
        for p in producers:
            p.close(end_of_stream=status == "finished")
        _write_summary(spec, stats, status, handler)
        stats.publish(rt.StageState.FINISHED if status == "finished" else rt.StageState.STOPPED)
        if block is not None:
            stats.status = None
            stats.latency.counts = stats.latency.counts.copy()  # no view left into the mapping
            stats.e2e.counts = stats.e2e.counts.copy()
            block.close()
    log.info("%s: %d frames in, %d out", status, stats.frames_in, stats.frames_out)


def _produce(spec: StageSpec, source, out: Emitter, stop, pause, stats: StageStats) -> bool:
    """The source's loop, owned by the runtime: the source stage gives its position, its
    frames in acquisition order and what to do after each (``handlers.SourceHandler``:
    ``start``, ``frames``, ``flags``, ``sent``); the runtime pre-renders (``prerendered``),
    paces at ``source.rate_hz`` (``paced``; a real camera paces itself) with the live rate of
    ``appliance ctl set``, pauses, stamps each header, counts, publishes the live status and
    stops on ``stop``. Returns True when every frame was sent."""
    from appliance.pipeline.handlers import LiveParams

    cfg = spec.config
    start = source.start(out)
    # The rings' counters outlive a crash: the run's acquired count includes frames sent
    # before it (and their bytes: every frame of a run has the same geometry) ...
    stats.frames_in = start
    # ... but this instance's acquisition time covers only the frames it sends: the
    # summary's rate is (frames_in - frames_before_start) / acquisition_s
    stats.extra["frames_before_start"] = start
    frames = source.frames(start)
    if source.prerendered:
        frames = _prerender(spec, source, frames, start, stats)
    stats.extra["phase"] = "acquiring"
    stats.publish(rt.StageState.RUNNING)
    stats.post_event({"kind": "phase", "phase": "acquiring", "stage": spec.name})
    run_id, inst_id = spec.run_id.encode()[:32], cfg.run.instrument_id.encode()[:16]
    period = 1e9 / cfg.source.rate_hz if cfg.source.rate_hz > 0 and source.paced else 0
    next_ns = time.monotonic_ns()
    t_start = time.monotonic()
    stats.extra["t_first_frame"] = t_start  # CLOCK_MONOTONIC: comparable across processes
    live = LiveParams(stats.status)
    try:
        for index, image in enumerate(frames):
            if index < start:
                continue
            rate = live.get("source.rate_hz")
            if rate is not None and source.paced:
                period = 1e9 / rate if rate > 0 else 0
            if pause.is_set():
                log.info("acquisition paused")
                while pause.is_set() and not stop.is_set():
                    time.sleep(0.05)
                log.info("acquisition resumed")
                next_ns = time.monotonic_ns()  # the camera restarts its frame clock
            if stop.is_set():
                return False
            if period:
                delay = next_ns - time.monotonic_ns()
                if delay > 0:
                    time.sleep(delay / 1e9)
                next_ns += period
            tile, cycle, ch = source.order[index]
            hdr = np.zeros((), rt.FRAME_HEADER_DTYPE)
            rt.stamp_acquisition(hdr)
            hdr["run_id"] = run_id
            hdr["instrument_id"] = inst_id
            out.emit(rt.FrameKind.IMAGE, tile, cycle, ch, image, source_header=hdr, flags=source.flags(tile, cycle, ch))
            if not stats.bytes_in:
                stats.bytes_in = stats.frames_in * image.nbytes
            stats.frames_in += 1
            stats.bytes_in += image.nbytes
            stats.publish()  # the live status: frames acquired so far
            source.sent(index, out)
        return True
    finally:
        stats.extra["drops"] = sum(p.statistics().drops for p in out.producers)
        stats.extra["acquisition_s"] = time.monotonic() - t_start


def _prerender(spec: StageSpec, source, frames, start: int, stats: StageStats) -> list:
    """Render every frame from ``start`` before acquiring, so the rate holds; the live status
    says so (state prerendering; ``prerender_done`` of ``prerender_total``), and the
    supervisor's run state and the progress displays follow."""
    t0 = time.monotonic()
    extra = stats.extra
    extra.update(phase="prerendering", prerender_done=0, prerender_total=len(source.order) - start)
    stats.publish(rt.StageState.PRERENDERING)
    stats.post_event({"kind": "phase", "phase": "prerendering", "stage": spec.name})
    rendered = []
    for image in frames:
        rendered.append(image)
        if image is not None:
            extra["prerender_done"] += 1
            stats.publish()
    log.info("pre-rendered %d frames in %.1f s", extra["prerender_done"], time.monotonic() - t0)
    return rendered


def _last_stage_tracer(spec: StageSpec):
    """The last stage (the writer) turns what frames carry into spans (appliance.tracing):
    sampled frames with their per-stage timings, and the cycles. None when tracing is off."""
    if spec.stage != "writer":
        return None
    from appliance.tracing import make_tracer

    try:
        return make_tracer(spec.config.tracing, spec.state_dir, spec.name, spec.run_id, tiles=len(spec.config.run.tiles))
    except Exception as exc:  # diagnostics must not stop the run
        log.warning("tracing off for this stage: %s", exc)
        return None


def _consume(spec: StageSpec, handler, emitter: Emitter, stats: StageStats, restored: RuntimeState, tracer=None) -> bool:
    consumers = [rt.Consumer(name) for name in spec.inputs]
    handler.heartbeat = lambda: [c.heartbeat() for c in consumers]
    emitter.on_wait = handler.heartbeat
    verify = spec.stage in spec.config.verify_at
    release_every = max(1, min(c.geometry.n_slots for c in consumers) // 2)
    pending = [0] * len(consumers)
    active = list(range(len(consumers)))
    # Dedupe: per stream (kind, tile) the highest (cycle, channel) seen; streams are ordered.
    watermarks: dict = dict(restored.watermarks)
    epoch_done = restored.barrier
    aligned: dict[int, int] = {}  # input -> epoch of the barrier it delivered (not polled until all have)
    quarantine_dir = quarantine_dir_of(spec.run_dir)
    arrive = getattr(handler, "on_arrival", None)  # a fault drill's (faults.py); None otherwise
    from appliance.pipeline.handlers import frames_per_epoch

    def state() -> Checkpoint:
        return Checkpoint(RuntimeState(dict(watermarks), epoch_done), handler.snapshot(), epoch_done)

    def release() -> None:
        for i, n in enumerate(pending):
            # A barrier waiting for alignment is released only with its epoch's checkpoint:
            # after a crash it must be delivered again, or the alignment would wait forever.
            if n and i not in aligned:
                consumers[i].release(n)
                pending[i] = 0

    def checkpoint() -> None:
        if not any(n for i, n in enumerate(pending) if i not in aligned):
            return
        stats.checkpoints += 1
        handler.heartbeat()  # a large checkpoint takes a while: its time counts from here
        stats.checkpoint_bytes += handler.until_space(str(spec.checkpoint_path), save_checkpoint, spec.checkpoint_path, state())
        handler.heartbeat()
        release()

    def align() -> None:
        """Every active input delivered the barrier: the epoch's durable checkpoint, the
        barrier downstream (or, at the last stage, the commit), then release."""
        nonlocal epoch_done
        if not aligned or any(i not in aligned for i in active):
            return
        epoch = max(aligned.values())
        handler.on_barrier(epoch)
        epoch_done = epoch
        stats.checkpoints += 1
        handler.heartbeat()
        stats.checkpoint_bytes += handler.until_space(f"{spec.name} epoch {epoch} checkpoint", save_epoch, spec.state_dir, spec.name, epoch, state())
        handler.heartbeat()
        if spec.outputs:
            emitter.barrier(epoch)
        else:
            handler.until_space("committed.json", write_commit, spec.state_dir, epoch, epoch * frames_per_epoch(spec.config))
        aligned.clear()
        # the epoch's state is also the live one (a hard link, written once): it covers the release
        handler.until_space(str(spec.checkpoint_path), link_live, spec.state_dir, spec.name, epoch, spec.checkpoint_path)
        release()

    idle = 0.0
    stats.budget_ms = spec.config.stages[spec.stage].budget_ms
    stats.publish(rt.StageState.RUNNING)
    try:
        while active:
            if emitter.stopping():  # the supervisor died (a group SIGTERM is ignored there)
                checkpoint()
                return False
            got = False
            polled = [i for i in active if i not in aligned]
            for i in polled:
                try:
                    slot = consumers[i].acquire(timeout=0.05) if len(polled) == 1 else consumers[i].acquire_nowait()
                except rt.WouldBlock:
                    continue
                except rt.EndOfStream:
                    active.remove(i)
                    align()  # the inputs still running may all have delivered the barrier
                    continue
                except rt.ProducerGone:
                    time.sleep(0.05)  # the supervisor restarts it; it resumes at the write counter
                    continue
                got = True
                frame = Frame(slot)  # decoded once: identity as ints, header, payload in place
                h = frame.header
                if frame.kind == BARRIER_KIND:
                    pending[i] += 1
                    epoch = frame.cycle
                    if epoch > epoch_done:  # else delivered again after a restart: a duplicate
                        aligned[i] = epoch
                        align()
                    continue
                t0 = time.perf_counter()
                kind, tile, cycle, channel = key = frame.key
                stats.frames_in += 1
                stats.bytes_in += int(h["payload_bytes"])
                if arrive is not None:
                    arrive(frame)
                failed = False
                if (cycle, channel) <= watermarks.get((kind, tile), (-1, -1)):
                    stats.duplicates += 1
                elif verify and not slot.verify():
                    failed = True
                    stats.checksum_failures += 1
                    handler.until_space(f"the quarantine of {spec.name}", _quarantine, quarantine_dir, spec, slot, key)
                    stats.extra["quarantined"] = stats.extra.get("quarantined", 0) + 1
                    # The frame's place downstream: a no-call tile-cycle (or an incomplete one),
                    # never a hole that stops the run (the handler decides how; see on_quarantined).
                    handler.on_quarantined(key, slot.header.copy(), emitter)
                    watermarks[(kind, tile)] = (cycle, channel)
                else:
                    handler.on_frame(frame, emitter)
                    watermarks[(kind, tile)] = (cycle, channel)
                pending[i] += 1
                busy = time.perf_counter() - t0
                stats.busy_s += busy
                if busy * 1e3 <= stats.budget_ms:
                    stats.within_budget += 1
                now_ns = time.monotonic_ns()
                left_previous = int(h["trace_ns"][spec.stage_index - 1])
                if left_previous:
                    stats.latency.add(now_ns - left_previous)
                if h["t_mono_ns"]:
                    stats.e2e.add(now_ns - int(h["t_mono_ns"]))
                if tracer is not None:
                    try:
                        tracer.frame(h, now_ns, kind_calls=kind == rt.FrameKind.CALLS, stage_names=_TRACE_STAGES,
                                     over_budget=bool(stats.budget_ms) and busy * 1e3 > stats.budget_ms, failed=failed)
                    except Exception as exc:  # diagnostics never stop the data path: tracing off
                        log.warning("tracing off for the rest of this stage's run: %s", exc)
                        tracer, dead = None, tracer
                        dead.close()
                stats.publish()  # the live status: every frame (rt.status; about 2 us)
                # Frames are released at each epoch's checkpoint; an epoch longer than half a
                # ring (or a burst, as when the cluster template is built) is covered here.
                if sum(pending) >= release_every:
                    checkpoint()
            if not got and len(polled) > 1:
                # polled with acquire_nowait, which does not refresh the heartbeats: idle, not hung
                handler.heartbeat()
                idle = min(max(idle * 2, 50e-6), 2e-3)
                time.sleep(idle)
            elif not got and not polled:
                handler.heartbeat()
                time.sleep(0.001)
            elif got:
                idle = 0.0
        handler.finish(emitter)
        checkpoint()
        return True
    finally:
        for c in consumers:
            c.close()
        if tracer is not None:
            try:
                tracer.close()
            except Exception as exc:
                log.warning("traces not all written: %s", exc)


def quarantine_dir_of(run_dir: Path) -> Path:
    """Where a run's quarantined frames go: beside its run folder, ``<root>/.quarantine/<run id>/``,
    so the run folder holds only what its manifest lists (``RunFolder.verify()`` passes)."""
    return run_dir.parent / ".quarantine" / run_dir.name


def _quarantine(folder: Path, spec: StageSpec, slot: rt.Slot, key) -> None:
    """The frame's payload (``.npy``) and header, each atomic and fsynced (retried on a full disk)."""
    import io

    from appliance.runfolder import ensure_dir, write_atomic

    kind, tile, cycle, channel = key
    ensure_dir(folder)
    name = f"{spec.name}_kind{kind}_tile{tile}_cycle{cycle}_ch{channel}_seq{int(slot.header['seq'])}"
    buf = io.BytesIO()
    np.save(buf, slot.payload.copy())
    write_atomic(folder / f"{name}.npy", [buf.getbuffer()])
    write_atomic(folder / f"{name}.header.bin", [slot.header.tobytes()])
    log.error(
        "checksum mismatch: frame kind=%d tile=%d cycle=%d channel=%d seq=%d quarantined to %s",
        kind, tile, cycle, channel, int(slot.header["seq"]), folder / name,
    )
