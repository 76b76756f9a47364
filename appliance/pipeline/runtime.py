"""The stage process: attach to rings, run a handler over frames, checkpoint, release, emit.

``stage_main(spec)`` is the ``spawn`` target for every stage. The loop acquires frames from
the stage's input rings, verifies checksums where configured (a mismatch is counted, logged
with the frame's identity and quarantined), hands each frame to the stage's handler, and
releases input frames only after a checkpoint that covers them (see ``_checkpoint``). When
every input has reached end of stream it calls ``handler.finish`` and closes its outputs,
which propagates end of stream downstream: that is how a stop drains.

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
from appliance.pipeline._checkpoint import load_checkpoint, save_checkpoint
from appliance.pipeline._flags import AnyFlag, SharedFlag
from appliance.pipeline._histogram import LatencyHistogram
from appliance.pipeline._spec import StageSpec, frame_key

__all__ = ["stage_main", "Emitter", "StageStats"]

log = logging.getLogger("appliance.stage")
LIVE_REPORT_S = 1.0  #: how often a stage rewrites its summary file while running (read by the supervisor)


class Stopping(Exception):
    """The stage was asked to stop while it waited to emit."""


class StageStats:
    """Counters and a latency sample the stage writes to its summary file at exit."""

    def __init__(self) -> None:
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
        #: per frame: from leaving the previous stage (its trace stamp) to done here
        self.latency = LatencyHistogram()
        #: per frame: from acquisition to done here (the end-to-end latency at the writer)
        self.e2e = LatencyHistogram()
        self.extra: dict = {}

    def as_dict(self) -> dict:
        d = {k: v for k, v in vars(self).items() if k not in ("extra", "latency", "e2e")}
        d["wall_s"] = wall = time.monotonic() - self.started
        d["busy_fraction"] = self.busy_s / wall if wall > 0 else 0.0
        d["stage_latency_ms_p50"] = self.latency.percentile(50)
        d["stage_latency_ms_p99"] = self.latency.percentile(99)
        d["within_budget_fraction"] = self.within_budget / self.frames_in if self.frames_in and self.budget_ms else None
        d["e2e_latency_ms_p50"] = self.e2e.percentile(50)
        d["e2e_latency_ms_p99"] = self.e2e.percentile(99)
        d["stage_latency_hist"] = self.latency.sparse()
        d["e2e_latency_hist"] = self.e2e.sparse()
        d.update(self.extra)
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
    if cfg.realtime and spec.stage in ("source", "writer"):
        try:
            rt.set_realtime(10)
        except rt.RealtimeError as exc:
            log.warning("no real-time priority: %s", exc)
    return watch


def _write_summary(spec: StageSpec, stats: StageStats, status: str) -> None:
    d = stats.as_dict()
    d["status"] = status
    tmp = spec.summary_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(d))
    os.replace(tmp, spec.summary_path)


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
    stats = StageStats()
    handler = handlers.make_handler(spec, stats)
    state = load_checkpoint(spec.checkpoint_path)
    if state is not None:
        handler.restore(state)
        log.info("resumed from checkpoint")
    producers = [rt.Producer(name) for name in spec.outputs]
    if spec.stage == "source":  # the source's stop is a drain: it ends the stream
        emitter = Emitter(spec, producers, source_stop, stats)
    else:
        emitter = Emitter(spec, producers, stop, stats, watch=watch)
    status = "stopped"
    try:
        if spec.stage == "source":
            # The source always ends the stream, also when asked to stop early: that is
            # what lets every later stage drain what entered.
            try:
                handler.run(emitter, source_stop, pause)
            except Stopping:
                pass
            finished = True
        else:
            finished = _consume(spec, handler, emitter, stats)
        status = "finished" if finished else "stopped"
    except Stopping:
        status = "stopped"
    finally:
        for p in producers:
            p.close(end_of_stream=status == "finished")
        _write_summary(spec, stats, status)
    log.info("%s: %d frames in, %d out", status, stats.frames_in, stats.frames_out)


def _consume(spec: StageSpec, handler, emitter: Emitter, stats: StageStats) -> bool:
    consumers = [rt.Consumer(name) for name in spec.inputs]
    handler.heartbeat = lambda: [c.heartbeat() for c in consumers]
    emitter.on_wait = handler.heartbeat
    verify = spec.stage in spec.config.verify_at
    release_every = max(1, min(c.geometry.n_slots for c in consumers) // 2)
    pending = [0] * len(consumers)
    active = list(range(len(consumers)))
    seen: set = handler.seen
    fault = spec.fault
    quarantine_dir = spec.run_dir / "Quarantine"

    def checkpoint() -> None:
        if not any(pending):
            return
        stats.checkpoints += 1
        stats.checkpoint_bytes += save_checkpoint(spec.checkpoint_path, handler.state())
        for i, n in enumerate(pending):
            if n:
                consumers[i].release(n)
                pending[i] = 0

    idle = 0.0
    next_report = 0.0
    stats.budget_ms = spec.config.stages[spec.stage].budget_ms
    try:
        while active:
            if emitter.stopping():  # the supervisor died (a group SIGTERM is ignored there)
                checkpoint()
                return False
            got = False
            for i in list(active):
                try:
                    slot = consumers[i].acquire(timeout=0.05) if len(active) == 1 else consumers[i].acquire_nowait()
                except rt.WouldBlock:
                    continue
                except rt.EndOfStream:
                    active.remove(i)
                    continue
                except rt.ProducerGone:
                    time.sleep(0.05)  # the supervisor restarts it; it resumes at the write counter
                    continue
                got = True
                t0 = time.perf_counter()
                h = slot.header
                key = frame_key(h)
                stats.frames_in += 1
                stats.bytes_in += int(h["payload_bytes"])
                if fault.get("corrupt_frame") == stats.frames_in:
                    slot.data[0] ^= 0xFF  # test hook: a bit flip in shared memory
                if key in seen:
                    stats.duplicates += 1
                elif verify and not slot.verify():
                    stats.checksum_failures += 1
                    _quarantine(quarantine_dir, spec, slot, key)
                    seen.add(key)
                else:
                    handler.on_frame(slot, emitter)
                    seen.add(key)
                pending[i] += 1
                if fault.get("slow_ms"):
                    time.sleep(fault["slow_ms"] / 1e3)
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
                if time.monotonic() >= next_report:
                    next_report = time.monotonic() + LIVE_REPORT_S
                    _write_summary(spec, stats, "running")
                if fault.get("kill_after") == stats.frames_in:
                    os.kill(os.getpid(), signal.SIGKILL)  # test hook: crash mid-run
                if sum(pending) >= release_every:
                    checkpoint()
            if not got and len(active) > 1:
                # polled with acquire_nowait, which does not refresh the heartbeats: idle, not hung
                handler.heartbeat()
                idle = min(max(idle * 2, 50e-6), 2e-3)
                time.sleep(idle)
            elif got:
                idle = 0.0
        handler.finish(emitter)
        checkpoint()
        return True
    finally:
        for c in consumers:
            c.close()


def _quarantine(folder: Path, spec: StageSpec, slot: rt.Slot, key) -> None:
    kind, tile, cycle, channel = key
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{spec.name}_kind{kind}_tile{tile}_cycle{cycle}_ch{channel}_seq{int(slot.header['seq'])}"
    np.save(folder / f"{name}.npy", slot.payload.copy())
    (folder / f"{name}.header.bin").write_bytes(slot.header.tobytes())
    log.error(
        "checksum mismatch: frame kind=%d tile=%d cycle=%d channel=%d seq=%d quarantined to %s",
        kind, tile, cycle, channel, int(slot.header["seq"]), folder / name,
    )
