"""What each stage does with a frame. Each handler keeps what must survive a crash in one
small frozen dataclass, returned by ``snapshot()`` and taken back by ``restore()`` (see
``appliance/pipeline/_checkpoint.py`` and docs/architecture.md); the runtime pickles it into
the stage's checkpoints. Dedupe is the runtime's (a watermark per stream), latency lives in
the stage's histograms only.

Frames flow as: IMAGE (source, preprocess) -> POSITIONS + INTENSITIES (kernel) -> the same
plus CALLS and FILTER (basecall) -> run folder (writer).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import rt
from rt import FrameFlags, FrameKind
from appliance.pipeline._spec import StageSpec
from appliance.simparams import synthetic_params

__all__ = [
    "make_handler", "stage_class", "synthetic_params", "frame_order", "frames_per_epoch",
    "SourceState", "PreprocessState", "ChainFile", "KernelState", "BasecallState", "WriterState",
]

log = logging.getLogger("appliance.stage")
N_CHANNELS = 4
NO_CALL = 4  #: the base code of a no-call (appliance.runfolder.NO_CALL)


def frame_order(config) -> list[tuple[int, int, int]]:
    """Acquisition order of a run: every channel of every tile of cycle 1, then cycle 2, ..."""
    return [(tile, cycle, ch) for cycle in range(1, config.run.cycles + 1) for tile in config.run.tiles for ch in range(N_CHANNELS)]


def frames_per_epoch(config) -> int:
    """An epoch is one cycle: every channel of every tile (the source's barrier follows it)."""
    return len(config.run.tiles) * N_CHANNELS


# -- what each handler keeps across a crash (checkpointed; nothing else is) -----------------


@dataclass(frozen=True)
class SourceState:
    """The source's restart position: ``next_index`` in acquisition order as of the last
    barrier, and the counters of the rings it then wrote (``rings`` names them: after a total
    loss the rings are new, and the counters no longer apply)."""

    next_index: int = 0
    epoch: int = 0
    rings: tuple = ()
    counts: tuple = ()


@dataclass(frozen=True)
class PreprocessState:
    saturated: int = 0
    kept: int = 0


@dataclass(frozen=True)
class ChainFile:
    """A tile's image chain once its cluster template is built: from then on the chain does
    not change (each cycle only reads it), so it is written once, fsynced, beside the
    checkpoints (``kernel-R.tileT.chain.ckpt``) and the checkpoints name the file instead of
    carrying the chain (about 4.4 MB per 512 px tile) in every write."""

    name: str


@dataclass(frozen=True)
class TemplateCycles:
    """A tile's image chain while its cluster template is being built: the raw frames of each
    template cycle so far, each written once (fsynced) to its own file beside the checkpoints
    (``kernel-R.tileT.cCCCC.held.ckpt``) when the cycle is complete. A restore builds the
    chain again by pushing them in order: the same frames through the same arithmetic, the
    same chain. The checkpoints name the files instead of carrying the chain (its frames and
    their spectra grow to about 24 MB a 512 px tile by the template cycle; with 19 tiles and
    three checkpoints a cycle that was 4 GB written in the first 20 s of a run, and the
    kernel, stalled behind it, made the camera drop frames at the template cycle)."""

    files: tuple = ()  #: ((cycle, file name), ...) in cycle order


@dataclass(frozen=True)
class KernelState:
    """Per tile: the :class:`TemplateCycles` while its template is being built, or the
    :class:`ChainFile` its chain was written to once built; the partial stack of the
    cycle being assembled, results not yet emitted (bounded by the chain's lag), the next
    cycle to emit. Its size is that of the tiles still building their template and of one
    partial cycle, not the run's."""

    chains: dict = field(default_factory=dict)
    stacks: dict = field(default_factory=dict)
    positions_sent: frozenset = frozenset()
    next_cycle: dict = field(default_factory=dict)
    results: dict = field(default_factory=dict)
    incomplete: frozenset = frozenset()
    headers: dict = field(default_factory=dict)
    #: the last cycle the camera acquired whole (its barrier came): later ones were never
    #: acquired (a stop, or a stream shorter than the run) and are not stood in for
    last_cycle: int = 0


@dataclass(frozen=True)
class BasecallState:
    """Per tile: the streaming base caller as a ``_rowlog.CallerLog`` (its state without its
    work rows, and the tile's row log that holds them: appended once per push, so a
    checkpoint is about 0.1 MB a tile, not its whole window), whether the filter was sent,
    the last header."""

    callers: dict = field(default_factory=dict)
    filter_sent: frozenset = frozenset()
    last_header: dict = field(default_factory=dict)


@dataclass(frozen=True)
class WriterState:
    """Cycles complete through ``completed_through`` (they complete in order); the tiles
    written of the cycles after it; the raw files' lengths (passthrough runs); ``interop``:
    the cycles appended to the InterOp files and those files' lengths (a few ints)."""

    completed_through: int = 0
    cycle_tiles: dict = field(default_factory=dict)
    raw_bytes: int = 0
    raw_frames: int = 0
    interop: tuple = (0, ())


class Handler:
    """Base of every stage (the contract: ``appliance/pipeline/stage.py``): alerts, the full-
    disk wait, and the snapshot/restore contract (stateless stages keep nothing). Traits:"""

    #: real-time scheduling (``cpu.realtime``): the camera and the writer, which face hardware
    realtime: bool = False
    #: the NUMA node its CPUs should be on: "gpu", "nic" (the camera's) or None
    numa: str | None = None
    #: may run as several replicas, each taking a share of the tiles
    replicable: bool = True

    def __init__(self, spec: StageSpec, stats) -> None:
        self.spec = spec
        self.stats = stats
        self.heartbeat = lambda: None  # the runtime sets it: refreshes the stage's ring heartbeats

    def alert(self, message: str, **fields) -> None:
        """Raise an alert: logged here, and sent to the supervisor over the stage's event
        ring in the run's status block (never waits, never touches the disk: an alert about
        a full disk gets through)."""
        (log.warning if fields.get("kind") == "event" else log.error)("%s", message)
        self.stats.post_event({"t": time.time(), "kind": "alert", "stage": self.spec.name, "message": message, **fields})

    def on_quarantined(self, key: tuple[int, int, int, int], header, out) -> None:
        """A frame failed its checksum and was quarantined (``key``: kind, tile, cycle,
        channel). The default leaves the gap to the next stage that can see it: a lost image
        channel makes the kernel emit its tile-cycle as incomplete (no-calls)."""

    def until_space(self, what: str, write, *args, cleanup=None):
        """``write(*args)``, paused and retried while the disk is full (``_diskfull``)."""
        from appliance.pipeline._diskfull import UntilSpace

        return UntilSpace(self.alert, self.heartbeat, self.stats)(what, write, *args, cleanup=cleanup)

    def snapshot(self):
        """What must survive a crash, as a small frozen dataclass (None: nothing)."""
        return None

    def restore(self, state) -> None:
        """Take back what :meth:`snapshot` returned."""

    def on_frame(self, frame, out) -> None:  # pragma: no cover - abstract
        """One input frame (``stage.Frame``: identity as ints, header, ``array()`` in place)."""
        raise NotImplementedError

    def on_barrier(self, epoch: int) -> None:
        """Every frame before the barrier of ``epoch`` was handled: make its effects durable."""

    def finish(self, out) -> None:
        pass


class LiveParams:
    """Parameters changed during a run (``appliance ctl set``): the supervisor writes them
    into the run's status block; a stage reads them again only when their sequence number
    changed (one 8-byte read per call). Without a block (a unit test) there are none."""

    def __init__(self, status: rt.StatusWriter | None) -> None:
        self.status = status
        self._values: dict = {}
        self._seq = 0

    def get(self, key: str):
        if self.status is not None and self.status.params_seq() != self._seq:
            try:
                self._seq, self._values = self.status.params()
            except rt.WouldBlock:  # being written this instant: the next frame reads it
                pass
        return self._values.get(key)


class SourceHandler(Handler):
    """The synthetic camera (or a replay of recorded frames) at a fixed frame rate.

    Like a real camera it does not slow down when the pipeline is full: with the first ring's
    policy ``drop_newest`` a frame that finds no slot is dropped and counted. Frames are
    rendered before acquisition starts (``source.prerender``) so the rate holds.
    """

    realtime, numa, replicable = True, "nic", False

    def __init__(self, spec: StageSpec, stats) -> None:
        super().__init__(spec, stats)
        self.order = frame_order(spec.config)
        self.state = SourceState()

    def snapshot(self) -> SourceState:
        return self.state

    def restore(self, state: SourceState) -> None:
        self.state = state

    def _start_position(self, out) -> int:
        """Where to go on: the last barrier's position plus the frames committed or dropped
        on this instance's rings since. A barrier not sent on a ring when the previous
        instance died (its count is one short) is sent now."""
        st = self.state
        counts = [p.statistics().written + p.statistics().drops for p in out.producers]
        if st.rings != tuple(self.spec.outputs):
            return st.next_index + sum(counts)  # fresh rings: first start, or a resume
        since = 0
        for i, (now, then) in enumerate(zip(counts, st.counts)):
            if now == then - 1:
                out.barrier(st.epoch, only=i)
                now += 1
            since += now - then
        return st.next_index + since

    def _barrier(self, out, epoch: int, next_index: int) -> None:
        """End of epoch ``epoch``: the durable epoch checkpoint, the live one (counting the
        barrier as sent), then the barrier on every output ring."""
        from appliance.pipeline._checkpoint import Checkpoint, RuntimeState, save_checkpoint, save_epoch

        at_epoch = SourceState(next_index=next_index, epoch=epoch)
        # A full disk waits here (disk_full; the supervisor pauses acquisition) instead of
        # crashing the camera process: the frames of the epoch are already on the rings.
        self.until_space(f"{self.spec.name} epoch {epoch} checkpoint", save_epoch, self.spec.state_dir, self.spec.name, epoch,
                         Checkpoint(RuntimeState(), at_epoch, epoch))
        counts = tuple(p.statistics().written + p.statistics().drops + 1 for p in out.producers)
        self.state = SourceState(next_index, epoch, tuple(self.spec.outputs), counts)
        self.stats.checkpoints += 1
        self.stats.checkpoint_bytes += self.until_space(str(self.spec.checkpoint_path), save_checkpoint, self.spec.checkpoint_path,
                                                        Checkpoint(RuntimeState(), self.state, epoch))
        out.barrier(epoch)

    def _frames(self, start: int = 0):
        cfg = self.spec.config
        if cfg.source.kind == "genicam":
            from appliance.genicam import GenICamCamera

            g = cfg.source.genicam
            with GenICamCamera(
                g.cti or None, g.serial or None, g.pixel_format, g.width or None, g.height or None,
                g.exposure_us or None, frame_rate_hz=g.frame_rate_hz or cfg.source.rate_hz or None,
                num_buffers=g.num_buffers,
            ) as cam:
                log.info("camera: %s", cam.info())
                # A live camera: frames before `start` were acquired by the previous instance.
                yield from ([None] * start)
                yield from cam.frames(len(self.order) - start, timeout_s=g.timeout_s)
            return
        if cfg.source.kind == "replay":
            root = Path(cfg.source.replay_path)
            for i, (tile, cycle, ch) in enumerate(self.order):
                if i < start:  # sent by the instance before this one
                    yield None
                    continue
                path = root / "Raw" / f"s_{tile}_c{cycle}_ch{ch}.npy"
                if not path.exists():
                    path = root / f"s_{tile}_c{cycle}_ch{ch}.npy"
                yield np.load(path)
            return
        from kernels.synthetic import SyntheticInstrument

        inst = SyntheticInstrument(synthetic_params(cfg), seed=cfg.run.seed)
        unique = cfg.source.synthetic.unique_frames
        if unique:
            pool = [inst.render(tile=t, cycle=c, channel=ch) for t, c, ch in self.order[:unique]]
            for i in range(len(self.order)):
                yield pool[i % unique]
            return
        for i, (tile, cycle, ch) in enumerate(self.order):
            # frames before `start` were sent by the instance before this one: not rendered again
            yield None if i < start else inst.render(tile=tile, cycle=cycle, channel=ch)

    # -- what the runtime's source loop asks of it (runtime._produce) ----------------------------
    @property
    def paced(self) -> bool:
        """Whether the runtime paces the frames at ``source.rate_hz``: a real camera paces itself."""
        return self.spec.config.source.kind != "genicam"

    @property
    def prerendered(self) -> bool:
        """Whether every frame is rendered before acquisition starts, so the rate holds."""
        return self.spec.config.source.prerender and self.spec.config.source.kind != "genicam"

    def start(self, out) -> int:
        """The position to go on from (0 for a new run): frames already committed or dropped
        are not sent again; a barrier the previous instance died before sending is sent now."""
        start = self._start_position(out)
        per_epoch = frames_per_epoch(self.spec.config)
        if start and start % per_epoch == 0 and start // per_epoch > self.state.epoch:
            self._barrier(out, start // per_epoch, start)  # died between a cycle's last frame and its barrier
        return start

    def frames(self, start: int):
        """The camera's frames in acquisition order (``self.order``); None for those before ``start``."""
        return self._frames(start)

    def flags(self, tile: int, cycle: int, channel: int) -> int:
        f = FrameFlags.SYNTHETIC if self.spec.config.source.kind == "synthetic" else FrameFlags.NONE
        if channel == N_CHANNELS - 1:
            f |= FrameFlags.END_OF_CYCLE
        return int(f)

    def sent(self, index: int, out) -> None:
        """Frame ``index`` is on its ring: at the end of an epoch (a cycle), the source's
        checkpoint of its position and the barrier on every ring."""
        per_epoch = frames_per_epoch(self.spec.config)
        if (index + 1) % per_epoch == 0:
            self._barrier(out, (index + 1) // per_epoch, index + 1)


class PreprocessHandler(Handler):
    """Checks each raw frame (checksum where configured, saturation), keeps the raw frames of
    every Nth tile for audit, and passes the frame on."""

    numa = "nic"  # beside the camera's NIC: it reads every frame the camera wrote

    def __init__(self, spec: StageSpec, stats) -> None:
        super().__init__(spec, stats)
        self.saturated = 0
        self.kept = 0
        self._mask: np.ndarray | None = None  # the saturation test's buffer, reused: no per-frame allocation

    def snapshot(self) -> PreprocessState:
        return PreprocessState(self.saturated, self.kept)

    def restore(self, state: PreprocessState) -> None:
        self.saturated, self.kept = state.saturated, state.kept

    def on_frame(self, frame, out) -> None:
        h = frame.header
        tile, cycle, ch = frame.tile, frame.cycle, frame.channel
        image = frame.array()
        if self._mask is None or self._mask.shape != image.shape:
            self._mask = np.empty(image.shape, bool)
        np.equal(image, np.iinfo(image.dtype).max if image.dtype.kind == "u" else 65535, out=self._mask)
        self.saturated += int(np.count_nonzero(self._mask))
        every = self.spec.config.output.keep_raw_every
        if every and self.spec.config.run.tiles.index(tile) % every == 0:
            path = self.spec.run_dir / "Raw" / f"s_{tile}_c{cycle}_ch{ch}.npy"
            self.until_space(str(path), _save_npy_durably, path, image)
            self.kept += 1
        out.emit(FrameKind.IMAGE, tile, cycle, ch, image, source_header=h, flags=frame.flags)
        self.stats.extra.update(saturated_pixels=self.saturated, raw_frames_kept=self.kept)


def _save_npy_durably(path: Path, image: np.ndarray) -> None:
    """An audit copy of a raw frame, as ``.npy``: atomic and fsynced, its temp file removed
    when the disk is full (then retried), so no partial copy is ever left behind."""
    import io

    from appliance.runfolder import ensure_dir, write_atomic

    buf = io.BytesIO()
    np.save(buf, image)
    ensure_dir(path.parent)
    write_atomic(path, [buf.getbuffer()], buf.getbuffer().nbytes)


class KernelHandler(Handler):
    """The per-tile image chain: four channel frames of a cycle in, cluster positions (once)
    and per-cycle intensities out, always in cycle order.

    A cycle that lost a frame at the camera (drop_newest on the first ring) cannot be
    extracted: once a later cycle of the tile arrives (or the run ends) it is emitted as
    NaN intensities flagged INCOMPLETE (no-calls downstream), so every cycle of every tile
    reaches the run folder and the loss is visible, never silent.
    """

    numa = "gpu"

    def __init__(self, spec: StageSpec, stats) -> None:
        super().__init__(spec, stats)
        self.chains: dict = {}
        self.stacks: dict = {}
        self.positions_sent: set = set()
        self.next_cycle: dict[int, int] = {}  # per tile: next cycle to emit
        self.results: dict[tuple[int, int], np.ndarray] = {}
        self.incomplete: set = set()
        self.headers: dict[int, np.ndarray] = {}
        self.spilled: set = set()  #: tiles whose built chain is in its ChainFile
        self.held: dict[int, tuple] = {}  #: per tile building its template: its TemplateCycles files
        self.last_cycle = 0  #: the last cycle acquired whole (the barrier of its epoch came)

    def _chain_file(self, tile: int) -> str:
        return f"{self.spec.name}.tile{tile}.chain.ckpt"

    def _spill(self, tile: int) -> None:
        """Write tile ``tile``'s built chain to its file (atomic, fsynced; once): every later
        checkpoint names the file. Written before any checkpoint that names it."""
        from appliance.pipeline._checkpoint import save_checkpoint

        path = self.spec.state_dir / self._chain_file(tile)
        self.stats.checkpoint_bytes += self.until_space(str(path), lambda: save_checkpoint(path, self.chains[tile], durable=True))
        self.spilled.add(tile)

    def _hold(self, tile: int, cycle: int, stack: np.ndarray) -> None:
        """Write a template cycle's raw frames of ``tile`` to their file (atomic, fsynced;
        once): the checkpoints name it (:class:`TemplateCycles`) until the chain is built."""
        from appliance.pipeline._checkpoint import save_checkpoint

        name = f"{self.spec.name}.tile{tile}.c{cycle:04d}.held.ckpt"
        path = self.spec.state_dir / name
        self.stats.checkpoint_bytes += self.until_space(str(path), lambda: save_checkpoint(path, stack, durable=True))
        self.held[tile] = (*self.held.get(tile, ()), (cycle, name))

    def snapshot(self) -> KernelState:
        chains = {}
        for t, c in self.chains.items():
            if t in self.spilled:
                chains[t] = ChainFile(self._chain_file(t))
            elif t in self.held:
                chains[t] = TemplateCycles(self.held[t])
            else:  # restored from a checkpoint that carried the chain whole (before TemplateCycles)
                chains[t] = c
        return KernelState(chains, dict(self.stacks), frozenset(self.positions_sent), dict(self.next_cycle),
                           dict(self.results), frozenset(self.incomplete), dict(self.headers), self.last_cycle)

    def restore(self, state: KernelState) -> None:
        from appliance.pipeline._checkpoint import load_checkpoint

        chains = {}
        for t, c in state.chains.items():
            if isinstance(c, TemplateCycles):
                chain = self._chain(t)  # a new chain, given the template cycles again
                for cycle, name in c.files:
                    stack = load_checkpoint(self.spec.state_dir / name)
                    if stack is None:
                        raise RuntimeError(f"{self.spec.state_dir / name} (tile {t}'s template cycle {cycle}, named by the "
                                           "checkpoint) is missing: the run cannot resume from this checkpoint; start a new run")
                    if chain.push(cycle, chain.xp.asarray(stack)):
                        raise RuntimeError(f"tile {t}: the template cycles named by the checkpoint built the template "
                                           "(a checkpoint names them only before): the checkpoint is inconsistent")
                self.held[t] = tuple(c.files)
                c = chain
            elif isinstance(c, ChainFile):
                c = load_checkpoint(self.spec.state_dir / c.name)
                if c is None:
                    raise RuntimeError(f"{self.spec.state_dir / state.chains[t].name} (tile {t}'s image chain, named by the "
                                       "checkpoint) is missing: the run cannot resume from this checkpoint; start a new run")
                self.spilled.add(t)
            chains[t] = c
        self.chains, self.stacks = chains, dict(state.stacks)
        self.positions_sent, self.next_cycle = set(state.positions_sent), dict(state.next_cycle)
        self.results, self.incomplete, self.headers = dict(state.results), set(state.incomplete), dict(state.headers)
        self.last_cycle = getattr(state, "last_cycle", 0)

    def _chain(self, tile: int):
        if tile not in self.chains:
            from appliance.analysis.algorithms import build_chain, run_algorithm
            from kernels.backend import get_backend

            backend = get_backend(self.spec.config.stages["kernel"].backend)
            # The registry's production algorithm, pinned for the run (its parameters over the
            # config's psf_sigma and the camera's dark level: see pipeline_settings).
            alg, settings = run_algorithm(self.spec.run_dir.parent, self.spec.state_dir, self.spec.config)
            self.stats.extra["algorithm"] = alg.key
            self.chains[tile] = build_chain(alg, settings, backend.xp)
        return self.chains[tile]

    def _mark_incomplete_before(self, tile: int, cycle: int) -> None:
        for key in [k for k in self.stacks if k[0] == tile and k[1] < cycle]:
            del self.stacks[key]
            self.incomplete.add(key)
            log.warning("tile %d cycle %d lost frames at the camera: emitted as an incomplete cycle", *key)

    def _flush(self, tile: int, out) -> None:
        chain = self.chains.get(tile)
        if chain is None or not chain.ready:
            return
        from kernels.backend import to_host

        h = self.headers[tile]
        if tile not in self.positions_sent:
            out.emit(FrameKind.POSITIONS, tile, 0, 0, to_host(chain.positions).astype(np.float32), source_header=h)
            self.positions_sent.add(tile)
        c = self.next_cycle.get(tile, 1)
        while (tile, c) in self.results or (tile, c) in self.incomplete:
            if (tile, c) in self.results:
                out.emit(FrameKind.INTENSITIES, tile, c, 0, self.results.pop((tile, c)), source_header=h)
            else:
                # NaN intensities: the base caller makes them no-calls (and chastity failures)
                lost = np.full((len(chain.positions), N_CHANNELS), np.nan, np.float32)
                out.emit(FrameKind.INTENSITIES, tile, c, 0, lost, source_header=h, flags=int(FrameFlags.INCOMPLETE))
                self.incomplete.discard((tile, c))  # emitted: nothing of it is kept
                self.stats.extra["incomplete_cycles"] = self.stats.extra.get("incomplete_cycles", 0) + 1
            c += 1
        self.next_cycle[tile] = c

    def on_frame(self, frame, out) -> None:
        h = frame.header
        tile, cycle, ch = frame.tile, frame.cycle, frame.channel
        self.headers[tile] = h.copy()
        self._mark_incomplete_before(tile, cycle)
        image = frame.array()
        stack, have = self.stacks.get((tile, cycle), (None, 0))
        if stack is None:
            stack = np.empty((N_CHANNELS, *image.shape), image.dtype)
        stack[ch] = image
        have |= 1 << ch
        if have != (1 << N_CHANNELS) - 1:
            self.stacks[(tile, cycle)] = (stack, have)
            return
        self.stacks.pop((tile, cycle), None)
        from kernels.backend import to_host

        chain = self._chain(tile)
        # The one host-to-device copy per cycle (a no-op on the NumPy backend), and back.
        for r in chain.push(cycle, chain.xp.asarray(stack)):
            self.results[(tile, r.cycle)] = to_host(r.intensities).astype(np.float32)
        if chain.ready and tile not in self.spilled:
            self._spill(tile)
            self.held.pop(tile, None)  # the files stay until the run ends: older epochs name them
        elif not chain.ready:
            self._hold(tile, cycle, stack)
        if chain.xp.__name__ == "cupy":  # GPU use, reported live with the stage's stats
            pool = chain.xp.get_default_memory_pool()
            free, total = chain.xp.cuda.runtime.memGetInfo()
            self.stats.extra.update(gpu_pool_used_bytes=int(pool.used_bytes()), gpu_memory_used_bytes=int(total - free), gpu_memory_total_bytes=int(total))
        self._flush(tile, out)

    def on_barrier(self, epoch: int) -> None:
        # an epoch is a cycle: every frame of it was sent (or dropped at the camera)
        self.last_cycle = max(self.last_cycle, epoch)

    def finish(self, out) -> None:
        n = self.spec.config.run.cycles
        for tile in self.spec.config.run.tiles:
            if self.spec.route(tile) != self.spec.replica and tile not in self.chains:
                continue
            # a cycle the camera acquired whole but of which frames of this tile were lost
            self._mark_incomplete_before(tile, min(n, self.last_cycle) + 1)
            # A cycle the camera acquired whole whose frames of this tile were all lost is
            # stood in for (no-calls); a cycle never acquired (the run stopped before it) is
            # not: the run folder stays incomplete and says how far it got.
            for c in range(self.next_cycle.get(tile, 1), min(n, self.last_cycle) + 1):
                if (tile, c) not in self.results:
                    self.incomplete.add((tile, c))
            self._flush(tile, out)
            chain = self.chains.get(tile)
            if chain is None or not chain.ready:
                log.error("tile %d: too few complete cycles to build the cluster template; no output for this tile", tile)


class PassthroughHandler(Handler):
    """Forwards every frame unchanged (``stages.kernel.algorithm = "passthrough"``): measures
    the data path alone, or carries a real camera's frames to disk before the chain is
    calibrated for it."""

    def on_frame(self, frame, out) -> None:
        out.emit(frame.kind, frame.tile, frame.cycle, frame.channel, frame.array(), source_header=frame.header, flags=frame.flags)


class BasecallHandler(Handler):
    """Streaming base calling per tile; forwards positions and intensities to the writer."""

    def __init__(self, spec: StageSpec, stats) -> None:
        super().__init__(spec, stats)
        self.callers: dict = {}
        self.filter_sent: set = set()
        self.last_header: dict = {}
        self.logs: dict = {}  #: per tile: its open row log (appliance.pipeline._rowlog)

    def _stem(self, tile: int) -> str:
        return f"{self.spec.name}.tile{tile}"

    def _log_rows(self, tile: int) -> None:
        """The rows the last push added to the tile's caller, appended to its row log; every
        COMPACT_EVERY appends a new generation with the live rows only."""
        from appliance.pipeline._rowlog import COMPACT_EVERY, RowLog

        caller = self.callers[tile]
        log = self.logs.get(tile)
        if log is None:
            log = self.logs[tile] = RowLog(self.spec.state_dir, self._stem(tile))
        if log.appends >= COMPACT_EVERY:
            self.stats.checkpoint_bytes += self.until_space(str(log.path), log.start_generation, caller.rows_since({}))
            log.remove_unnamed(self._named_logs())
            return
        rows = caller.rows_since(log.marks)
        if rows:
            self.stats.checkpoint_bytes += self.until_space(str(log.path), log.append, rows)

    def _named_logs(self) -> set[str]:
        """The row logs the kept checkpoints of this stage name (the live one and every epoch
        kept): an older generation of a log is removed only when none names it."""
        from appliance.pipeline._checkpoint import load_checkpoint
        from appliance.pipeline._rowlog import CallerLog

        named = set()
        for p in self.spec.state_dir.glob(f"{self.spec.name}*.ckpt"):
            if p.name.endswith(".rows.ckpt"):
                continue
            try:
                ckpt = load_checkpoint(p)
            except Exception:  # noqa: BLE001 - a torn or foreign file: keep every log
                return {q.name for q in self.spec.state_dir.glob("*.rows.ckpt")}
            st = getattr(ckpt, "handler", ckpt)  # a Checkpoint, or a bare BasecallState
            for c in getattr(st, "callers", {}).values():
                if isinstance(c, CallerLog):
                    named.add(c.log)
        return named

    def snapshot(self) -> BasecallState:
        from appliance.pipeline._rowlog import CallerLog

        callers = {t: CallerLog(c.state_without_rows(), self.logs[t].name, self.logs[t].length) for t, c in self.callers.items()}
        return BasecallState(callers, frozenset(self.filter_sent), dict(self.last_header))

    def restore(self, state: BasecallState) -> None:
        from appliance.pipeline._rowlog import CallerLog, RowLog
        from kernels.basecall import StreamingBasecaller

        callers = {}
        for t, c in state.callers.items():
            if isinstance(c, CallerLog):
                self.logs[t], rows = RowLog.restored(self.spec.state_dir, self._stem(t), c)
                try:
                    c = StreamingBasecaller.from_rows(c.state, rows)
                except ValueError as exc:
                    raise RuntimeError(f"{self.logs[t].path}: {exc}: the run cannot resume from this checkpoint; start a new run") from None
            callers[t] = c
        self.callers, self.filter_sent, self.last_header = callers, set(state.filter_sent), dict(state.last_header)
        for t in self.callers:
            if t not in self.logs:  # a checkpoint that carried the caller whole (before row logs)
                self._log_rows(t)

    def _emit_calls(self, tile: int, calls, out, h) -> None:
        for c in calls:
            # Quality 0 is the caller's no-call (no valid intensity: out of view, or an
            # incomplete cycle's NaN intensities): written as a no-call (BCL byte 0).
            quals = np.asarray(c.qualities, np.uint8)
            bases = np.asarray(c.called_bases(NO_CALL), np.uint8)
            self.stats.extra["no_calls"] = self.stats.extra.get("no_calls", 0) + int(np.count_nonzero(quals == 0))
            out.emit(FrameKind.CALLS, tile, c.cycle, 0, np.stack([bases, quals]), source_header=h)
        caller = self.callers[tile]
        if caller.pass_filter is not None and tile not in self.filter_sent:
            out.emit(FrameKind.FILTER, tile, 0, 0, np.asarray(caller.pass_filter, np.uint8), source_header=h)
            self.filter_sent.add(tile)

    def on_frame(self, frame, out) -> None:
        from kernels.basecall import StreamingBasecaller

        h = frame.header
        kind, tile = frame.kind, frame.tile
        if kind == FrameKind.POSITIONS:
            pos = frame.array()
            from appliance.analysis.algorithms import run_algorithm

            alg, _settings = run_algorithm(self.spec.run_dir.parent, self.spec.state_dir, self.spec.config)
            self.stats.extra["algorithm"] = alg.key
            self.callers[tile] = StreamingBasecaller(len(pos), expected_cycles=self.spec.config.run.cycles, **alg.basecall_kwargs())
            self._log_rows(tile)  # opens the tile's log (no rows yet)
            out.emit(FrameKind.POSITIONS, tile, 0, 0, pos, source_header=h)
            return
        intens = frame.array()
        out.emit(FrameKind.INTENSITIES, tile, frame.cycle, 0, intens, source_header=h, flags=frame.flags)
        self.last_header[tile] = h.copy()
        self._emit_calls(tile, self.callers[tile].push(np.array(intens)), out, h)
        self._log_rows(tile)

    def on_quarantined(self, key, header, out) -> None:
        """Corrupt intensities: the tile-cycle goes on as NaN intensities flagged INCOMPLETE
        (the caller makes them no-calls), so the run completes with the loss visible."""
        kind, tile, cycle, _ch = key
        if kind != FrameKind.INTENSITIES or tile not in self.callers:
            log.error("quarantined frame kind=%d tile=%d cycle=%d: nothing stands in for it here", kind, tile, cycle)
            return
        lost = np.full((self.callers[tile].n_clusters, N_CHANNELS), np.nan, np.float32)
        out.emit(FrameKind.INTENSITIES, tile, cycle, 0, lost, source_header=header, flags=int(FrameFlags.INCOMPLETE))
        self.last_header[tile] = header
        self.stats.extra["incomplete_cycles"] = self.stats.extra.get("incomplete_cycles", 0) + 1
        self._emit_calls(tile, self.callers[tile].push(lost), out, header)
        self._log_rows(tile)

    def finish(self, out) -> None:
        for tile, caller in self.callers.items():
            self._emit_calls(tile, caller.finish(), out, self.last_header[tile])
            self._log_rows(tile)


class WriterHandler(Handler):
    """Writes the run folder (or discards, in null mode) and measures end-to-end latency."""

    realtime, replicable = True, False  # one writer owns the run folder

    def __init__(self, spec: StageSpec, stats) -> None:
        super().__init__(spec, stats)
        self.completed_through = 0  # cycles complete in order: every tile's calls arrive in cycle order
        self.cycle_tiles: dict[int, set] = {}  # only the cycles after completed_through
        self.null = spec.config.stages["writer"].mode == "null"
        self._writer = None
        self._raw_fd = self._hdr_fd = None
        self.raw_bytes = 0
        self.raw_frames = 0
        self.interop = (0, ())  # the InterOp files' state until the run folder's writer is open

    def snapshot(self) -> WriterState:
        io = self._writer.interop_state() if self._writer is not None else self.interop
        return WriterState(self.completed_through, {c: frozenset(t) for c, t in self.cycle_tiles.items()}, self.raw_bytes, self.raw_frames, io)

    def restore(self, state: WriterState) -> None:
        self.completed_through = state.completed_through
        self.cycle_tiles = {c: set(t) for c, t in state.cycle_tiles.items()}
        self.raw_bytes, self.raw_frames = state.raw_bytes, state.raw_frames
        self.interop = tuple(getattr(state, "interop", (0, ())))
        if self._writer is not None:  # cut the InterOp files back to the checkpoint's lengths
            self._writer.resume_interop(*self.interop)
        if self._raw_fd is not None:  # reopened (and cut back to raw_bytes) on the next frame
            import os

            os.close(self._raw_fd)
            os.close(self._hdr_fd)
        self._raw_fd = self._hdr_fd = None

    def on_barrier(self, epoch: int) -> None:
        # The run folder's files are fsynced as they are written; the raw and InterOp files here.
        if self._raw_fd is not None:
            import os

            os.fsync(self._raw_fd)
            os.fsync(self._hdr_fd)
        if self._writer is not None:
            self._writer.sync_interop()

    @property
    def writer(self):
        if self._writer is None:
            from appliance.runfolder import RunFolderWriter

            w = RunFolderWriter(self.spec.run_dir.parent, run_info(self.spec), interop=interop_options(self.spec.config))
            # InterOp appends go on from the checkpoint's lengths (a fresh start: from nothing)
            w.resume_interop(*self.interop)
            self._writer = w
        return self._writer

    def on_frame(self, frame, out) -> None:
        kind, tile, cycle = frame.kind, frame.tile, frame.cycle
        self.stats.extra["t_last_frame"] = time.monotonic()
        if self.null:
            return
        if kind == FrameKind.IMAGE:
            self._retry(self._append_raw, frame)
            return
        data = frame.array()
        w = self.writer
        if kind == FrameKind.POSITIONS:
            self._retry(w.write_locs, tile, data)
        elif kind == FrameKind.INTENSITIES:
            if frame.flags & FrameFlags.INCOMPLETE:
                # the kernel (frames lost at the camera) or the base caller (a quarantined
                # frame) stood in for this tile-cycle: the manifest says so
                w.note_no_calls(tile, cycle, "incomplete upstream: frames lost at the camera, or a frame quarantined "
                                             "before the base caller; written as no-calls")
            self._retry(w.write_intensities, tile, cycle, data)
        elif kind == FrameKind.FILTER:
            self._retry(w.write_filter, tile, data.astype(bool))
        elif kind == FrameKind.CALLS:
            self._retry(w.write_bcl, tile, cycle, data[0], data[1])
            self._cycle_done(tile, cycle)

    def on_quarantined(self, key, header, out) -> None:
        """A corrupt frame at the run folder: its tile-cycle is written as no-calls (calls) or
        NaN intensities, the reason in the cycle's manifest, and the cycle completes as usual."""
        if self.null:
            return
        kind, tile, cycle, ch = key
        w = self.writer
        reason = f"frame kind={kind} tile={tile} cycle={cycle} channel={ch} failed its checksum at {self.spec.name}; quarantined"
        if kind == FrameKind.CALLS:
            self._retry(w.write_no_calls, tile, cycle, reason)
            self.stats.extra["incomplete_cycles"] = self.stats.extra.get("incomplete_cycles", 0) + 1
            self._cycle_done(tile, cycle)
        elif kind == FrameKind.INTENSITIES and w.clusters(tile) is not None:
            self._retry(w.write_intensities, tile, cycle, np.full((w.clusters(tile), N_CHANNELS), np.nan, np.float32))
        else:
            log.error("quarantined %s: the run folder cannot stand in for it", reason)

    def _cycle_done(self, tile: int, cycle: int) -> None:
        if cycle <= self.completed_through:
            return
        self.cycle_tiles.setdefault(cycle, set()).add(tile)
        while len(self.cycle_tiles.get(self.completed_through + 1, ())) == len(self.spec.config.run.tiles):
            self._retry(self.writer.complete_cycle, self.completed_through + 1)
            del self.cycle_tiles[self.completed_through + 1]
            self.completed_through += 1

    def _append_raw(self, frame) -> None:
        """Passthrough runs: append the frame to Raw/frames.bin (sequential, fsynced every
        64 frames and at the end) and its header to Raw/headers.bin."""
        import os

        if getattr(self, "_raw_fd", None) is None:
            raw = self.spec.run_dir / "Raw"
            raw.mkdir(parents=True, exist_ok=True)
            # Resume after a restart at the size the checkpoint recorded (a frame written after
            # it is written again, byte for byte).
            self._raw_fd = os.open(raw / "frames.bin", os.O_WRONLY | os.O_CREAT, 0o644)
            self._hdr_fd = os.open(raw / "headers.bin", os.O_WRONLY | os.O_CREAT, 0o644)
            os.ftruncate(self._raw_fd, self.raw_bytes)
            os.ftruncate(self._hdr_fd, self.raw_frames * 256)
        from appliance.runfolder import pwrite_all

        payload = frame.payload
        path = self.spec.run_dir / "Raw" / "frames.bin"
        try:
            pwrite_all(self._raw_fd, payload, self.raw_bytes)
            path = path.with_name("headers.bin")
            pwrite_all(self._hdr_fd, frame.header.tobytes(), self.raw_frames * 256)
        except OSError as exc:
            import errno

            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                from appliance.runfolder import full_error

                # nothing is counted: the retry rewrites this frame at the same offsets
                raise full_error(path, payload.nbytes, exc) from exc
            raise
        self.raw_bytes += payload.nbytes
        self.raw_frames += 1
        if self.raw_frames % 64 == 0:
            os.fsync(self._raw_fd)
            os.fsync(self._hdr_fd)

    def _retry(self, write, *args) -> None:
        """Write; on a full disk raise the ``disk_full`` alert and pause (retrying) until space
        is freed (``until_space``).

        While the writer waits, the rings fill and upstream stages wait in turn, and the
        supervisor pauses acquisition: a full disk is a pause, never a partial file.
        """
        self.until_space(f"the run folder ({getattr(write, '__name__', 'write')})", write, *args)

    def finish(self, out) -> None:
        # End to end (acquisition to here) from the stage's histogram, the one latency record.
        if self.stats.e2e.total:
            e2e = self.stats.e2e
            self.stats.extra.update(latency_ms_p50=e2e.percentile(50), latency_ms_p99=e2e.percentile(99), latency_ms_p999=e2e.percentile(99.9))
        if self.null:
            return
        cfg = self.spec.config
        if self._raw_fd is not None:
            import os

            os.fsync(self._raw_fd)
            os.fsync(self._hdr_fd)
        if cfg.stages["kernel"].algorithm == "passthrough":
            return  # raw frames only: no run folder to complete
        if cfg.source.kind == "synthetic":
            from kernels.synthetic import SyntheticInstrument

            inst = SyntheticInstrument(synthetic_params(cfg), seed=cfg.run.seed)
            fasta = self.spec.state_dir / "reference.fa"
            self.until_space(str(fasta), inst.write_reference_fasta, fasta, cleanup=lambda: fasta.unlink(missing_ok=True))
            self._retry(self.writer.write_reference, fasta)
        missing = list(range(self.completed_through + 1, cfg.run.cycles + 1))
        if missing:
            # Stopped before every tile had clusters (too few cycles for a template): the
            # folder stays without completion markers, so offload and tiering leave it alone.
            self.alert(f"run ended with {len(missing)} of {cfg.run.cycles} cycles incomplete; the run folder is left incomplete (no completion markers)")
            return
        self._retry(self.writer.complete)


def interop_options(cfg):
    """The run folder's InterOp settings (None for passthrough runs: raw frames only). The tile
    size is the synthetic tile's, or the camera's configured width and height; synthetic
    runs score their calls against the ground truth (ErrorMetricsOut.bin)."""
    from appliance.runfolder import InterOpOptions

    if cfg.stages["kernel"].algorithm == "passthrough":
        return None
    size = cfg.source.synthetic.tile_size
    g = cfg.source.genicam
    tile_px = (g.width or size, g.height or size) if cfg.source.kind == "genicam" else (size, size)
    truth = _SyntheticTruth(cfg) if cfg.source.kind == "synthetic" else None
    try:
        from importlib.metadata import version

        app_version = version("flowcell-appliance")
    except Exception:  # noqa: BLE001 - not installed as a package: no version to name
        app_version = ""
    return InterOpOptions(tile_px=tile_px, truth=truth, version=app_version)


class _SyntheticTruth:
    """``(tile, locs) -> (sequences, matched)``: the true bases of the detected clusters, as
    the run summary scores them (``appliance.pipeline.summary.score_against_truth``): a
    cluster is matched to a true one within ``MATCH_RADIUS_PX``, in the reference frame or
    cycle 1's, whichever matches more."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self._inst = None

    def __call__(self, tile: int, locs):
        from appliance.pipeline.summary import match_truth
        from kernels.synthetic import SyntheticInstrument

        if self._inst is None:
            self._inst = SyntheticInstrument(synthetic_params(self.cfg), seed=self.cfg.run.seed)
        truth = self._inst.truth(tile)
        ok, idx = match_truth(truth, locs)
        seqs = np.zeros((len(locs), truth.sequences.shape[1]), np.uint8)
        seqs[ok] = truth.sequences[idx[ok]]
        return seqs, ok


def run_info(spec: StageSpec):
    from appliance.runfolder import RunInfo

    cfg = spec.config
    return RunInfo(
        run_id=spec.run_id,
        instrument=cfg.run.instrument_id,
        flowcell=cfg.run.flowcell,
        lane=1,
        tiles=tuple(cfg.run.tiles),
        n_cycles=cfg.run.cycles,
        reads=((cfg.run.cycles, False),),
    )


_HANDLERS = {
    "source": SourceHandler,
    "preprocess": PreprocessHandler,
    "kernel": KernelHandler,
    "basecall": BasecallHandler,
    "writer": WriterHandler,
}


def stage_class(config, stage: str) -> type:
    """The class that runs ``stage``: ``stages.<stage>.handler`` ("module:Class") when set,
    the pass-through for the kernel and base caller of a passthrough run, else the built-in."""
    from appliance.pipeline.stage import load_stage_class

    section = config.stages.get(stage)
    if section is not None and section.handler:
        return load_stage_class(section.handler, Handler, f"stages.{stage}.handler")
    if stage in ("kernel", "basecall") and config.stages["kernel"].algorithm == "passthrough":
        return PassthroughHandler
    return _HANDLERS[stage]


def make_handler(spec: StageSpec, stats) -> Handler:
    """The stage of ``spec``, wrapped in its fault drills when it has any (``faults.py``)."""
    handler = stage_class(spec.config, spec.stage)(spec, stats)
    if spec.fault:
        from appliance.pipeline.faults import FaultInjector

        return FaultInjector(handler, spec.fault)
    return handler
