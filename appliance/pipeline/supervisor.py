"""The supervisor: plans CPUs and rings, spawns the stages, restarts crashed ones, drains.

Its decisions are a pure state machine (:class:`~appliance.pipeline.core.SupervisorCore`:
events in, instructions out, with the run's :class:`~appliance.pipeline.core.RunState`),
tested without processes. :class:`Supervisor` is the shell around it: it turns what it sees
(process exits, heartbeats, the source's reports, the operator's commands, full disks) into
events and carries out the instructions (spawn, kill, flags, events, alerts, give up).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import logging
import multiprocessing as mp
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import rt
from appliance.config import EDGES, RunConfig
from appliance.topology import Link, Topology
from appliance.pipeline._flags import SharedFlag
from appliance.pipeline._spec import StageSpec
from appliance.pipeline.histogram import LatencyHistogram
from appliance.pipeline.runtime import live_figures
from appliance.schema import PIPELINE, SCHEMA_VERSION
from appliance.pipeline.core import (
    DiskFreed, DiskFull, Done, Fail, Finish, GiveUp, HeartbeatStale, Kill, PauseRequested, ProcessExited, Publish, RaiseAlert,
    Refuse, Restart, RestartPolicy, Retire, ResumeRequested, SetDrain, SetPause, SourcePhase, Spawn, Started,
    StopRequested, SupervisorCore, Tick,
)

__all__ = ["Supervisor", "hang_timeout_s", "RestartPolicy", "Restart", "GiveUp", "Done", "SupervisorError", "plan_cpus", "ring_budget", "CpuPlan"]

log = logging.getLogger("appliance.supervisor")
_ORDER = PIPELINE
RUNNING_MARKER = "RUNNING.json"  #: in a run's state folder while its supervisor lives
INTERRUPTED_MARKER = "INTERRUPTED.json"  #: what RUNNING.json becomes once that supervisor is found dead
#: parameters that may change during a run (``appliance ctl set KEY VALUE``), with their ranges
LIVE_KEYS = {
    "source.rate_hz": (0.0, 100_000.0),
    "alerts.ring_occupancy": (0.01, 1.0),
    "alerts.ring_occupancy_for_s": (0.0, 3600.0),
    "alerts.disk_free_fraction": (0.0, 0.99),
    "alerts.heartbeat_stale_s": (0.0, 3600.0),
    "alerts.budget_within": (0.0, 1.0),
}
STATS_PERIOD_S = 0.5  #: the run's time series (stats.jsonl) is sampled at 2 Hz
#: per-stage figures the stages report live (every second) and each sample carries
_LIVE_KEYS = ("frames_in", "frames_out", "checkpoints", "checkpoint_bytes", "stage_state", "busy_fraction", "stage_latency_ms_p50", "stage_latency_ms_p99", "budget_ms", "within_budget_fraction", "checksum_failures", "duplicates", "e2e_latency_ms_p50", "e2e_latency_ms_p99", "gpu_memory_used_bytes", "gpu_memory_total_bytes", "stage_latency_hist", "e2e_latency_hist", "stage_latency_sum_s", "e2e_latency_sum_s", "busy_s", "wall_s")


def _host_stats(root: Path) -> dict:
    import psutil

    mem = psutil.virtual_memory()
    try:
        disk = psutil.disk_usage(str(root))
        disk_free, disk_total = disk.free, disk.total
    except OSError:
        disk_free = disk_total = None
    return {"memory_available": mem.available, "memory_total": mem.total, "disk_free": disk_free, "disk_total": disk_total, "cpu_percent": psutil.cpu_percent(None)}


class SupervisorError(RuntimeError):
    """The run cannot keep its promise (a stage keeps crashing, rings do not fit, ...)."""


def hang_timeout_s(config: RunConfig, stage: str) -> float:
    """How stale a stage's heartbeat may get before it is taken for hung and restarted.

    Sized so that a hung stage is restarted before the rings ahead of it fill: those rings
    hold ``sum(n_slots)`` frames, which a camera at ``source.rate_hz`` fills in
    ``sum(n_slots) / rate_hz`` seconds; the timeout is half of that (the other half is the
    restart), at least ``supervisor.hang_min_s`` (a frame may legitimately take seconds, as
    when the kernel builds a tile's cluster template on a loaded host), at most
    ``supervisor.heartbeat_timeout_s``. An unpaced source (``rate_hz = 0``) waits for a full
    ring, so the ceiling applies. A slot after the kernel stands for more than one camera
    frame: with the chain, one intensities frame per tile-cycle (4 camera frames) and two
    frames per tile-cycle on the calls ring (the intensities and the calls), so those rings
    hold 4x and 2x their slots in camera frames. (Defaults: 64 + 64 slots ahead of the kernel
    at 20 frames/s fill in 6.4 s: 5 s, the floor; the base caller's 64 + 64 + 4 x 64 in
    19.2 s: 9.6 s; preprocess: 5 s, its 64 slots fill in 3.2 s, so a camera at the default
    rate drops frames when preprocess hangs: give the first ring more slots.)
    """
    ceiling = config.supervisor.heartbeat_timeout_s
    rate = config.source.rate_hz
    if rate <= 0 or stage == PIPELINE[0]:  # the camera: nothing ahead of it
        return ceiling
    chain = config.stages["kernel"].algorithm == "chain"
    per_slot = {"intensities": 4.0, "calls": 2.0} if chain else {}  # camera frames a slot stands for
    ahead, at = 0.0, PIPELINE[0]
    for edge, (src, dst) in EDGES.items():  # edges in pipeline order
        if src == at and at != stage:
            ahead += config.edges[edge].n_slots * per_slot.get(edge, 1.0)
            at = dst
    return min(ceiling, max(config.supervisor.hang_min_s, ahead / rate / 2))  # the ceiling wins


# -- CPU plan and memory budget ------------------------------------------------------------


@dataclass(frozen=True)
class CpuPlan:
    housekeeping: frozenset[int]
    assignments: dict[str, frozenset[int] | None]
    warnings: tuple[str, ...]


def plan_cpus(
    topology: rt.Topology,
    housekeeping: frozenset[int],
    names: list[str],
    pin: bool = True,
    *,
    gpu_node: int | None = None,
    nic_node: int | None = None,
    numa: dict[str, str | None] | None = None,
) -> CpuPlan:
    """Give each process its own CPU outside the housekeeping set, isolated CPUs first, and
    NUMA-local where it matters: ``numa`` maps a process to its stage's trait (``"gpu"``: on
    the GPU's node, the kernel; ``"nic"``: on the camera NIC's node, the source and
    preprocess; None or absent: anywhere).

    With fewer free CPUs than processes the plan degrades with a warning: no pinning, the
    kernel scheduler spreads the stages over every online CPU.
    """
    online = frozenset(topology.online_cpus)
    hk = housekeeping & online
    warnings = []
    if housekeeping - online:
        warnings.append(f"housekeeping CPUs {rt.format_cpulist(housekeeping - online)} are not online; ignored")
    free = sorted(online - hk, key=lambda c: (c not in topology.isolated_cpus, c))
    if not pin:
        return CpuPlan(hk, {n: None for n in names}, tuple(warnings))
    if len(free) < len(names):
        warnings.append(
            f"{len(names)} stage processes but only {len(free)} CPUs outside housekeeping "
            f"({rt.format_cpulist(hk) or 'none'}) on this {len(online)}-CPU machine: not pinning; "
            f"stages share all CPUs (throughput and latency will vary)"
        )
        return CpuPlan(hk, {n: None for n in names}, tuple(warnings))
    node_cpus = {n.id: n.cpus for n in topology.nodes}

    def wants(name: str) -> frozenset[int]:
        node = {"gpu": gpu_node, "nic": nic_node}.get((numa or {}).get(name) or "")
        return node_cpus.get(node, frozenset()) if node is not None else frozenset()

    assignments: dict[str, frozenset[int] | None] = {}
    # NUMA-picky processes choose first, so the others do not take their node's CPUs.
    for name in sorted(names, key=lambda n: not wants(n)):
        local = [c for c in free if c in wants(name)]
        if wants(name) and not local:
            warnings.append(f"{name}: no free CPU on its NUMA node; placed on a remote node")
        cpu = (local or free)[0]
        free.remove(cpu)
        assignments[name] = frozenset({cpu})
    return CpuPlan(hk, {n: assignments[n] for n in names}, tuple(warnings))


def with_camera_geometry(config: RunConfig) -> RunConfig:
    """``config`` with ``source.genicam.width``/``height`` filled in from the camera when they
    are 0 (the camera's own size): the rings' slots must be sized for the real frames, or the
    first frame of a camera larger than the synthetic tile would not fit. Opens the camera
    briefly (the source opens it again); SupervisorError when it cannot."""
    g = config.source.genicam
    if config.source.kind != "genicam" or (g.width and g.height):
        return config
    from appliance.genicam import GenICamCamera, GenICamError

    try:
        with GenICamCamera(g.cti or None, g.serial or None, g.pixel_format, g.width or None, g.height or None) as cam:
            info = cam.info()
    except GenICamError as exc:
        raise SupervisorError(f"camera: {exc}") from None
    log.info("camera frames are %d x %d px (source.genicam.width/height = 0: the camera's size)", info.width, info.height)
    genicam = dataclasses.replace(g, width=info.width, height=info.height)
    return dataclasses.replace(config, source=dataclasses.replace(config.source, genicam=genicam))


def payload_bytes(config: RunConfig) -> dict[str, int]:
    """Largest payload per edge: images for raw/corrected, a cluster bound for the rest."""
    side = config.source.synthetic.tile_size
    image = side * side * 2
    if config.source.kind == "genicam":
        g = config.source.genicam
        image = max(image, g.width * g.height * 2)
    if config.stages["kernel"].algorithm == "passthrough":
        return {"raw": image, "corrected": image, "intensities": image, "calls": image}
    max_clusters = side * side // 9  # clusters closer than 3 px are not resolvable
    per_cluster = max_clusters * 4 * 4
    return {"raw": image, "corrected": image, "intensities": per_cluster, "calls": per_cluster}


def ring_budget(config: RunConfig, n_rings: dict[str, int]) -> int:
    """Total bytes the rings need (headers and control blocks included)."""
    total = 0
    for edge, size in payload_bytes(config).items():
        slot = -(-(256 + size) // 4096) * 4096
        total += n_rings[edge] * (4096 + config.edges[edge].n_slots * slot)
    return total


def _check_budget(need: int, hugepages: str) -> None:
    import psutil

    st = os.statvfs("/dev/shm")
    shm_free = st.f_bavail * st.f_frsize
    avail = psutil.virtual_memory().available
    if hugepages == "none" and need > shm_free:
        raise SupervisorError(
            f"the rings need {need / 2**20:.0f} MiB of shared memory but /dev/shm has {shm_free / 2**20:.0f} MiB free: "
            f"lower edges.*.n_slots or the tile size, or enlarge /dev/shm (mount -o remount,size=... /dev/shm)"
        )
    if need > 0.8 * avail:
        raise SupervisorError(
            f"the rings need {need / 2**20:.0f} MiB but only {avail / 2**20:.0f} MiB of memory is available "
            f"(at most 80% may go to rings): lower edges.*.n_slots or the tile size"
        )


# -- the supervisor -------------------------------------------------------------------------


def new_run_id(config: RunConfig, root: Path) -> str:
    """Illumina-style run id: YYMMDD_INSTRUMENT_NNNN_FLOWCELL, NNNN one more than the highest
    run number of this instrument under the data root or the state root.

    The highest, not a count: once an old run folder is deleted (tiering, an operator), a
    count would hand out the number of a run that still exists, and the new run would be
    written into its folder as if resuming it.
    """
    import re

    day = _dt.datetime.now(_dt.timezone.utc).strftime("%y%m%d")
    inst = config.run.instrument_id
    pattern = re.compile(rf"^\d{{6}}_{re.escape(inst)}_(\d{{4,}})_")
    state_root = Path(config.output.state_root) if config.output.state_root else root / ".state"
    numbers = [int(m.group(1)) for d in (root, state_root) if d.is_dir() for p in d.iterdir()
               if p.is_dir() and (m := pattern.match(p.name))]
    return f"{day}_{inst}_{max(numbers, default=0) + 1:04d}_{config.run.flowcell}"


INVOCATION = "invocation.json"  #: in a run's state folder: the config file and overrides a resume uses again


@dataclass(frozen=True)
class Invocation:
    """How a run was started: its config file (None: the embedded defaults) and every
    ``section.key=value`` override, in order. A resume loads the same config from them."""

    config: str | None
    overrides: tuple[str, ...]


def record_invocation(state_dir: Path, config: Path | str | None, overrides) -> None:
    """Write ``invocation.json`` for a new run (a resume keeps the first run's)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    doc = {"config": str(Path(config).resolve()) if config else None, "overrides": list(overrides)}
    tmp = state_dir / (INVOCATION + ".tmp")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, state_dir / INVOCATION)


def read_invocation(state_dir: Path) -> Invocation | None:
    """The run's recorded invocation, or None (none recorded, or unreadable)."""
    try:
        doc = json.loads((state_dir / INVOCATION).read_text())
        return Invocation(doc.get("config"), tuple(str(o) for o in doc.get("overrides", [])))
    except (OSError, ValueError, AttributeError, TypeError):
        return None


def mark_interrupted_runs(state_root: Path) -> list[str]:
    """Runs under ``state_root`` whose supervisor died (power cut, OOM kill): each RUNNING.json
    whose process is gone becomes INTERRUPTED.json. Returns every interrupted run's id (those
    marked before too), the most recently started first."""
    import psutil

    for marker in Path(state_root).glob(f"*/{RUNNING_MARKER}"):
        try:
            doc = json.loads(marker.read_text())
        except (OSError, ValueError):
            doc = {}
        pid, started = doc.get("pid", 0), doc.get("create_time")
        try:
            alive = psutil.Process(pid).create_time() == started
        except (psutil.Error, ValueError, TypeError):
            alive = False
        if not alive:
            os.replace(marker, marker.with_name(INTERRUPTED_MARKER))
    found = []
    for marker in Path(state_root).glob(f"*/{INTERRUPTED_MARKER}"):
        try:
            found.append((marker.stat().st_mtime, marker.parent.name))
        except FileNotFoundError:
            continue
    return [run_id for _, run_id in sorted(found, reverse=True)]


class Supervisor:
    """Runs one instrument run: ``run()`` returns the summary dict or raises SupervisorError."""

    def __init__(self, config: RunConfig, *, run_id: str | None = None, faults: dict[str, dict] | None = None, notifier=None, log_json: bool = False,
                 resume: bool = False) -> None:
        self.config = config
        #: resume an interrupted run (``run_id`` names it): every stage restores the last
        #: committed epoch and the source re-emits after it (docs/architecture.md)
        self.resuming = resume
        self.resume_plan = None
        self.log_json = log_json
        self.root = Path(config.output.root).resolve()
        self.run_id = run_id or new_run_id(config, self.root)
        self.run_dir = self.root / self.run_id
        state_root = Path(config.output.state_root).resolve() if config.output.state_root else self.root / ".state"
        self.state_dir = state_root / self.run_id
        self._recorder_dir = state_root / "recorder"
        self.recorder = None
        self.faults = faults or {}
        self.notifier = notifier
        self.stop_requested = threading.Event()
        self.events: list[dict] = []
        self._ctx = mp.get_context("spawn")
        #: the run's processes and rings (appliance.topology): every name comes from it
        self.topology = Topology.from_config(config)
        self._rings: list[rt.Ring] = []
        self._ring_info: dict[str, Link] = {}  # shared-memory name -> the ring's link
        #: the stages' live status and events (rt.status; one record per stage process)
        self._status: rt.StatusBlock | None = None
        self._event_cursors: dict[int, int] = {}
        self._unsaved_events: list[bytes] = []  # stage events a full disk kept out of alerts.jsonl
        self._procs: dict[str, mp.Process] = {}
        self._specs: dict[str, StageSpec] = {}
        self.policy = RestartPolicy(config.supervisor.max_restarts, config.supervisor.backoff_s)
        # The source reads these (shared, so a restarted source inherits a stop or a pause).
        self._drain = SharedFlag(self._ctx)
        self._pause = SharedFlag(self._ctx)
        #: the run's decisions and state (appliance.pipeline.core); the control plane's
        #: thread and the watch loop both feed it, under the lock
        self.core = SupervisorCore(self.policy)
        self._core_lock = threading.RLock()
        self._live: dict = {}
        from appliance.alerts import AlertManager

        self.alerts = AlertManager(config.alerts)
        from appliance.bottleneck import LiveBottleneck

        #: what limits the run now (every sample carries it: `ctl status`, the TUI)
        self._bottleneck = LiveBottleneck(period_s=STATS_PERIOD_S, gpu_kernel=config.stages["kernel"].backend == "cupy")
        self.latest_stats: dict = {}
        #: called with (topic, body) for every stats sample and event: the control plane's PUB
        self.publish = None

    # -- planning --------------------------------------------------------------------------
    def _ring_name(self, link: Link) -> str:
        return f"appliance.{os.getpid()}.{self.run_id}.{link.key}"

    def _plan(self) -> list[StageSpec]:
        cfg = self.config
        from appliance.pipeline.handlers import stage_class
        from appliance.pipeline.stage import StageClassError

        top = self.topology
        try:  # each stage's class, built-in or named by stages.<stage>.handler, and its traits
            classes = {stage: stage_class(cfg, stage) for stage in _ORDER}
        except StageClassError as exc:
            raise SupervisorError(str(exc)) from None
        for stage, cls in classes.items():
            if top.replicas(stage) > 1 and not cls.replicable:
                raise SupervisorError(f"stages.{stage}.replicas = {top.replicas(stage)}: {cls.__name__} runs as one process only; set 1")
        names = list(top.names)
        topo = rt.read_topology()
        gpus = [n for n in rt.gpu_numa_nodes().values() if n is not None]
        nic_node = rt.net_interface_numa_node(cfg.cpu.camera_nic) if cfg.cpu.camera_nic else None
        cpus = plan_cpus(
            topo, frozenset(rt.parse_cpulist(cfg.cpu.housekeeping)), names, cfg.cpu.pin,
            gpu_node=gpus[0] if gpus else None, nic_node=nic_node,
            numa={p.name: classes[p.stage].numa for p in top.processes},
        )
        for w in cpus.warnings:
            self._event("warning", f"cpu plan: {w}")
        specs = []
        status = f"appliance.{os.getpid()}.{self.run_id}.status"
        for proc in top.processes:
            specs.append(
                StageSpec(
                    stage=proc.stage, replica=proc.replica, config=cfg,
                    inputs=tuple(self._ring_name(link) for link in top.inputs(proc)),
                    outputs=tuple(self._ring_name(link) for link in top.outputs(proc)),
                    run_id=self.run_id, run_dir=self.run_dir, state_dir=self.state_dir,
                    cpus=cpus.assignments[proc.name], parent_pid=os.getpid(), stage_index=_ORDER.index(proc.stage),
                    fault=self.faults.get(proc.name, {}), log_json=self.log_json,
                    status_block=status, status_index=len(specs),
                )
            )
        return specs

    def _create_rings(self) -> None:
        cfg = self.config
        n_rings = {e: len(self.topology.links_of(e)) for e in EDGES}
        need = ring_budget(cfg, n_rings)
        _check_budget(need, cfg.hugepages)
        sizes = payload_bytes(cfg)
        for link in self.topology.links:
            e = cfg.edges[link.edge]
            ring = rt.Ring.create(self._ring_name(link), payload_bytes=sizes[link.edge], n_slots=e.n_slots,
                                  policy=e.policy, wait=e.wait, hugepages=cfg.hugepages)
            self._rings.append(ring)
            self._ring_info[ring.name] = link  # what each sample says of it (appliance.schema)
        log.info("rings: %d, %.1f MiB", len(self._rings), need / 2**20)
        specs = list(self._specs.values())
        self._status = rt.StatusBlock.create(specs[0].status_block, len(specs), hist_bins=LatencyHistogram.BUCKETS)
        if self._live:  # set before the stages started (the control plane is up first)
            self._status.set_params(self._live)

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, spec: StageSpec) -> None:
        from appliance.pipeline.runtime import stage_main

        if spec.name in self._procs:  # a restart: injected faults fire once
            spec = dataclasses.replace(spec, fault={})
        args = (spec, self._drain, self._pause) if spec.process.is_source else (spec,)
        proc = self._ctx.Process(target=stage_main, args=args, name=spec.name, daemon=False)
        proc.start()
        self._procs[spec.name] = proc

    def _live_of(self, name: str) -> dict:
        """A stage's live status: one read of its record in the status block ({} before the
        block exists)."""
        if self._status is None:
            return {}
        return live_figures(self._status.read(self._specs[name].status_index))

    def _summary_of(self, name: str) -> dict:
        try:
            return json.loads(self._specs[name].summary_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _event(self, kind: str, message: str, *, logged: bool = False, **fields) -> None:
        """Record an event or alert: the run's events, the flight recorder, the control
        plane's PUB, systemd STATUS, and the log (unless a stage ``logged`` it already)."""
        if not logged and kind in ("alert", "error", "warning"):
            # alert/stage as fields: the journal's ALERT=/STAGE= (appliance.logjson)
            tags = {"alert": fields.get("rule") or kind, **({"stage": fields["stage"]} if "stage" in fields else {})}
            log.log(logging.ERROR if kind == "error" else logging.WARNING, "%s", message, extra=tags)
        ev = {"t": time.time(), "kind": kind, "message": message, **fields}
        self.events.append(ev)
        # not STATUS=: that line says the run's state (appliance.progress, every 5 s); the
        # alert reaches the journal with ALERT= (the log call above)
        # a cleared alert goes out on `alert` too (docs/control-protocol.md), as kind "event"
        topic = "alert" if kind in ("alert", "error") or "cleared" in fields else "event"
        if self.recorder is not None:
            self.recorder.record(topic, ev)
        if self.publish is not None:
            self.publish(topic, ev)

    def request_stop(self) -> None:
        """Drain: stop acquisition; every frame that entered is processed and written. (Only
        sets an event, so a signal handler may call it; the watch loop tells the core.)"""
        self.stop_requested.set()

    @property
    def state(self) -> str:
        """The run's state: a :class:`~appliance.pipeline.core.RunState` value (starting,
        prerendering, acquiring, paused, draining, done, stopped_early, failed)."""
        return self.core.state.value

    def pause(self) -> bool:
        """Pause acquisition (the camera stops; frames in the pipeline are still processed).
        False when the run is not acquiring (draining, or over)."""
        return not self._refusal(PauseRequested())

    def resume(self) -> bool:
        """Resume a paused acquisition. False when it is not paused by the operator (a pause
        for a full disk ends by itself when space is freed)."""
        return not self._refusal(ResumeRequested())

    def _refusal(self, event) -> str | None:
        """Hand ``event`` to the core; the reason it was refused, or None."""
        refused = [i.reason for i in self._handle(event) if isinstance(i, Refuse)]
        return refused[0] if refused else None

    def _handle(self, event) -> list:
        """Feed one event to the core, record it (but ticks) in the flight recorder, and
        carry out its instructions. Returns them (a ``Refuse`` says why nothing happened)."""
        with self._core_lock:
            instructions = self.core.handle(event)
            if self.recorder is not None and not isinstance(event, Tick):
                self.recorder.record("supervisor", {"t": time.time(), "event": type(event).__name__, **dataclasses.asdict(event),
                                                    "state": self.core.state.value})
            for ins in instructions:
                self._execute(ins)
        return instructions

    def _execute(self, ins) -> None:
        """Carry out one instruction of the core."""
        if isinstance(ins, Spawn):
            self._spawn(self._specs[ins.name])
        elif isinstance(ins, Kill):
            proc = self._procs.get(ins.name)
            if proc is not None and proc.pid == ins.pid:
                proc.kill()
        elif isinstance(ins, Retire):
            self._procs.pop(ins.name, None)
        elif isinstance(ins, SetDrain):
            self._drain.set()  # the source ends the stream; the rest drains
        elif isinstance(ins, SetPause):
            (self._pause.set if ins.on else self._pause.clear)()
        elif isinstance(ins, Publish):
            self._event(ins.kind, ins.message, **dict(ins.fields))
        elif isinstance(ins, RaiseAlert):
            self._event("alert", ins.message, **dict(ins.fields))
        elif isinstance(ins, Fail):
            raise SupervisorError(ins.reason)
        # Refuse and Finish are answers to the caller: nothing to do here

    def set_live(self, key: str, value) -> dict:
        """Change a parameter that is safe to change mid-run (``LIVE_KEYS``)."""
        from appliance.control import CommandError

        if key not in LIVE_KEYS:
            raise CommandError("not_live", f"{key!r} cannot change during a run; live parameters: {', '.join(LIVE_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not LIVE_KEYS[key][0] <= value <= LIVE_KEYS[key][1]:
            lo, hi = LIVE_KEYS[key]
            raise CommandError("bad_value", f"{key} = {value!r}: allowed a number from {lo} to {hi}")
        self._live[key] = float(value)
        section, field = key.split(".", 1)
        if key.startswith("alerts."):
            self.alerts.rules = dataclasses.replace(self.alerts.rules, **{field: float(value)})
        # status.config shows the value now in force
        sect = getattr(self.config, section, None)
        if sect is not None and dataclasses.is_dataclass(sect) and hasattr(sect, field):
            self.config = dataclasses.replace(self.config, **{section: dataclasses.replace(sect, **{field: float(value)})})
        if self._status is not None:  # the stages read it from the status block (handlers.LiveParams)
            self._status.set_params(self._live)
        self._event("event", f"live parameter {key} set to {value}")
        return dict(self._live)

    def run(self) -> dict:
        from appliance.pipeline.summary import summarize

        cfg = self.config
        if getattr(cfg.storage, "enabled", False):  # refuse a new run past the critical watermark
            from appliance.storage import StorageThrottled, admission_check

            try:
                admission_check(cfg)
            except StorageThrottled as exc:
                raise SupervisorError(str(exc)) from exc
        # Ring slots are sized from the frame geometry: a camera left at its own size (0) is asked.
        self.config = cfg = with_camera_geometry(cfg)
        # A live camera's position when the run died is on the dead supervisor's raw rings:
        # read before they are cleaned up.
        self._acquired = self._acquired_before_crash() if self.resuming and cfg.source.kind == "genicam" else 0
        for name in rt.clean_dead_rings():
            log.warning("removed stale ring %s of a dead previous instance", name)
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.resuming:  # a resume checks it is the same (see _check_same_config)
            (self.state_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
        from appliance.recorder import FlightRecorder

        self.recorder = FlightRecorder(self._recorder_dir, max_bytes=cfg.recorder.max_mb << 20, segment_bytes=min(8 << 20, cfg.recorder.max_mb << 18))
        try:
            specs = self._plan()
        except BaseException:
            self.recorder.close()
            raise
        self._specs = {s.name: s for s in specs}
        try:
            self._mark_interrupted_runs()
            self._prepare_state()
        except BaseException:
            self.recorder.close()
            raise
        t0 = time.monotonic()
        server = exporter = None
        from appliance.tracing import make_tracer

        try:  # the run is a trace (appliance.tracing); diagnostics never stop a run
            tracer = make_tracer(cfg.tracing, self.state_dir, "supervisor", self.run_id)
        except Exception as exc:
            log.warning("tracing off for this run: %s", exc)
            tracer = None
        if tracer is not None:
            tracer.start_run({"instrument": cfg.run.instrument_id, "cycles": cfg.run.cycles, "tiles": len(cfg.run.tiles),
                              "resumed": self.resuming})
        try:  # from here on, whatever fails is undone in the finally (recorder, sockets, rings)
            server = self._start_control() if cfg.control.enabled else None
            if cfg.metrics.port:
                from appliance.metrics import MetricsExporter

                exporter = MetricsExporter(lambda: (self.latest_stats, list(self.events)), cfg.metrics.port, cfg.metrics.address,
                                           instrument=cfg.run.instrument_id).start()
                log.info("metrics on http://%s:%d/metrics", cfg.metrics.address, exporter.port)
            self._create_rings()
            # consumers first, so the source finds them attached
            self._handle(Started(tuple(s.name for s in reversed(specs)), self.topology.source.name))
            if self.notifier is not None:
                self.notifier.ready(status=f"run {self.run_id}: acquiring")
            from appliance.bottleneck import PressureMeter

            pressure = PressureMeter()  # the host's stall shares over the run, for the bottleneck line
            self._watch()
        except BaseException as exc:
            self._terminate_all()
            self._write_completion(error=str(exc) or type(exc).__name__)
            if tracer is not None:
                tracer.end_run({"run.state": self.state, "error": str(exc) or type(exc).__name__})
            raise
        finally:
            if tracer is not None:
                tracer.end_run({"run.state": self.state, "frames.acquired": self.latest_stats.get("frames_acquired")})
                tracer.close()
            if exporter is not None:
                exporter.stop()
            if server is not None:
                self._stop_control(server)
            self.recorder.close()
            for ring in self._rings:
                ring.close()
                ring.unlink()
            self._rings = []
            if self._status is not None:
                self._status.close()
                self._status.unlink()
                self._status = None
        wall = time.monotonic() - t0
        # Checkpoints exist to survive a crash mid-run; a finished run no longer needs them.
        from appliance.pipeline._checkpoint import COMMIT_FILE

        for ckpt in self.state_dir.glob("*.ckpt"):
            ckpt.unlink()
        (self.state_dir / COMMIT_FILE).unlink(missing_ok=True)
        (self.state_dir / RUNNING_MARKER).unlink(missing_ok=True)
        (self.state_dir / INTERRUPTED_MARKER).unlink(missing_ok=True)
        summaries = {name: {"stage": spec.stage, "replica": spec.replica, **self._summary_of(name)} for name, spec in self._specs.items()}
        summary = summarize(cfg, self.run_id, self.run_dir, summaries, wall, self.events, dict(self.policy.restarts))
        if self.resume_plan is not None:
            plan = self.resume_plan
            summary["resume"] = {"epoch": plan.epoch, "source_index": plan.source_index, "lost_frames": plan.lost_frames, "reason": plan.reason}
        from appliance.bottleneck import run_bottleneck

        verdict = run_bottleneck(self.state_dir / "stats.jsonl", pressure.psi(), gpu_kernel=cfg.stages["kernel"].backend == "cupy")
        if verdict is not None:
            summary["bottleneck"] = verdict.to_dict()
        completion = self._write_completion(run_complete=bool(summary["run_complete"]))
        if completion is not None:
            summary["completion"] = {"status": completion.status, "cycles_completed": completion.cycles_completed,
                                     "cycles_planned": completion.cycles_planned}
        return summary

    def _write_completion(self, *, run_complete: bool = False, error: str | None = None):
        """RunCompletionStatus.xml in the run folder (when there is one: a passthrough run or
        a run that failed before its writer started has none): how the run ended."""
        from appliance.runfolder import RunCompletion, completion_status, cycles_completed, write_completion
        from appliance.runfolder.completion import FAILED
        from appliance.runfolder.layout import RUNINFO

        if not (self.run_dir / RUNINFO).is_file():
            return None
        planned = self.config.run.cycles
        status = completion_status(run_complete=run_complete, stop_requested=self.stop_requested.is_set(), error=error)
        if status == FAILED and not error:
            error = "the source ended before the last cycle (a replay or camera stream shorter than run.cycles)"
        completion = RunCompletion(self.run_id, status, planned if run_complete else cycles_completed(self.run_dir, planned), planned, error or "")
        try:
            write_completion(self.run_dir, completion)
        except OSError as exc:  # a full disk: the run's outcome is still in its summary and log
            log.warning("%s not written: %s", self.run_dir / "RunCompletionStatus.xml", exc)
            return None
        return completion

    # -- crash consistency: marking and resuming interrupted runs ----------------------------
    def _mark_interrupted_runs(self) -> None:
        """A run whose supervisor died (power cut, OOM kill) is never left unmarked: its
        RUNNING.json (pid, start time) becomes INTERRUPTED.json, with a warning naming the
        resume command. Then this run's own RUNNING.json is written."""
        import psutil

        for run_id in mark_interrupted_runs(self.state_dir.parent):
            if run_id != self.run_id:
                self._event("warning", f"run {run_id} was interrupted (its supervisor died): resume it with "
                                       f"`appliance run --resume {self.root / run_id}`", run=run_id)
        if self.resuming:
            if not (self.state_dir / INTERRUPTED_MARKER).exists():
                raise SupervisorError(f"{self.run_dir} is not an interrupted run (no {INTERRUPTED_MARKER} in {self.state_dir}): nothing to resume")
            self._check_same_config()
        elif (self.state_dir / INTERRUPTED_MARKER).exists():
            raise SupervisorError(f"run {self.run_id} was interrupted and is not finished: resume it with "
                                  f"`appliance run --resume {self.run_dir}`, or choose a new --run-id")
        me = psutil.Process()
        marker = self.state_dir / RUNNING_MARKER
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": me.pid, "create_time": me.create_time(), "run_id": self.run_id}))
        os.replace(tmp, marker)

    def _check_same_config(self) -> None:
        """A resume runs the interrupted run's config (config.json in its state folder)."""
        path = self.state_dir / "config.json"
        try:
            then = json.loads(path.read_text())
        except (OSError, ValueError):
            raise SupervisorError(f"cannot resume {self.run_id}: its config {path} is missing or unreadable") from None
        now = json.loads(json.dumps(self.config.to_dict(), default=str))

        def flat(d, pre=""):
            for k, v in d.items():
                if isinstance(v, dict) and v:
                    yield from flat(v, f"{pre}{k}.")
                else:
                    yield f"{pre}{k}", v

        a, b = dict(flat(then)), dict(flat(now))
        diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k != "output.root")
        if diff:
            raise SupervisorError(f"cannot resume {self.run_id} with another config (differs: {', '.join(diff[:8])}): "
                                  f"pass the same --config and --set as the interrupted run (see {path})")

    def _prepare_state(self) -> None:
        """A new run starts with no checkpoint; a resume restores the last committed epoch:
        each stage's epoch checkpoint becomes its live one, later ones are removed, and the
        source goes on after the epoch (or, for a camera, after what it acquired: lost)."""
        from appliance.pipeline._checkpoint import (
            Checkpoint, RuntimeState, epoch_path, epochs_on_disk, plan_resume, prune_epochs, read_commit, save_checkpoint,
        )
        from appliance.pipeline.handlers import SourceState, frames_per_epoch

        sd = self.state_dir
        if not self.resuming:
            for ckpt in sd.glob("*.ckpt"):
                ckpt.unlink()
            return
        reacquirable = self.config.source.kind != "genicam"
        acquired = 0 if reacquirable else self._acquired
        names = list(self._specs)
        plan = plan_resume(read_commit(sd), epochs_on_disk(sd), names, frames_per_epoch(self.config),
                           reacquirable=reacquirable, acquired_before=acquired)
        self.resume_plan = plan
        for name, spec in self._specs.items():
            live = spec.checkpoint_path
            if name in plan.restore:
                src = epoch_path(sd, name, plan.restore[name])
                tmp = live.with_name(live.name + ".tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, live)
            else:
                live.unlink(missing_ok=True)
            for e in epochs_on_disk(sd).get(name, []):
                if e > plan.epoch:
                    epoch_path(sd, name, e).unlink()
            prune_epochs(sd, name)
        source = self._specs[self.topology.source.name]
        if plan.source_index != plan.epoch * frames_per_epoch(self.config) or source.name not in plan.restore:
            state = SourceState(next_index=plan.source_index, epoch=plan.epoch)
            save_checkpoint(source.checkpoint_path, Checkpoint(RuntimeState(), state, plan.epoch))
        msg = f"resuming run {self.run_id} at epoch {plan.epoch}: the source goes on from frame {plan.source_index} ({plan.reason})"
        self._event("event", msg)
        if plan.lost_frames:
            self._event("alert", f"{plan.lost_frames} frames acquired before the crash cannot be had again (a live camera): "
                                 f"their tile-cycles are written as incomplete (no-calls)", lost_frames=plan.lost_frames)

    def _acquired_before_crash(self) -> int:
        """How far a live camera had got when the run died: the source's last barrier plus
        the frames on the dead supervisor's raw rings since (they outlive a process crash;
        after a reboot they are gone and the count falls back to the last barrier)."""
        from appliance.pipeline._checkpoint import Checkpoint, load_checkpoint

        ckpt = load_checkpoint(self.state_dir / f"{self.topology.source.name}.ckpt")  # before the specs exist
        st = ckpt.handler if isinstance(ckpt, Checkpoint) else None
        if st is None:
            return 0
        total = st.next_index
        for ring_name, then in zip(st.rings, st.counts):
            try:
                info = rt.inspect(ring_name)
            except (rt.RingError, OSError):
                continue
            total += max(0, info.written + info.drops - then)
        return total

    def _watch(self) -> None:
        """The shell's loop: turn what it sees into the core's events until the run ends."""
        stop_sent = False
        next_sample = 0.0
        hb_timeouts = {name: hang_timeout_s(self.config, spec.stage) for name, spec in self._specs.items()}
        while True:
            if self.stop_requested.is_set() and not stop_sent:
                stop_sent = True
                self._handle(StopRequested())
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + STATS_PERIOD_S
                self._sample_stats()
            self._read_events()  # camera drops are the frames_dropped alert rule's
            self._handle(Tick(now))
            for name, proc in list(self._procs.items()):
                if self.core.waiting_to_restart(name):
                    continue
                if proc.is_alive():
                    age = self._heartbeat_age(name)
                    # once per hung pid: it may live on a moment after the kill
                    if age is not None and age > hb_timeouts[name] and self.core.hang_killed.get(name) != proc.pid:
                        self._handle(HeartbeatStale(name, proc.pid, age, hb_timeouts[name]))
                    continue
                proc.join()
                summary = self._summary_of(name)
                complete = None
                if self._specs[name].process.is_source:
                    planned = len(self.config.run.tiles) * self.config.run.cycles * 4
                    complete = int(summary.get("frames_in") or 0) >= planned
                for ins in self._handle(ProcessExited(name, proc.exitcode, summary.get("status") == "finished", now, complete)):
                    if isinstance(ins, Finish):
                        self._read_events()
                        self._sample_stats()
                        return
            if self.notifier is not None:
                self.notifier.watchdog_if_due()  # only from this loop: a hung loop stops the pings
            time.sleep(0.05)

    def _read_events(self) -> None:
        """Take the events (alerts) the stages posted on their event rings since the last
        read: each becomes a run event, and is appended to ``alerts.jsonl`` (the stages'
        alerts of a run whose supervisor dies before its summary: the report reads them)."""
        if self._status is None:
            return
        for index in range(self._status.n_records):
            events, self._event_cursors[index], lost = self._status.events(index, self._event_cursors.get(index, 0))
            if lost:
                name = next(n for n, sp in self._specs.items() if sp.status_index == index)
                self._event("warning", f"{lost} event(s) of {name} were overwritten before they were read", stage=name)
            for data in events:
                try:
                    ev = json.loads(data)
                except ValueError:
                    continue
                if ev.get("kind") == "phase":
                    # the source began pre-rendering or acquiring: the run state follows at once,
                    # and a sample says so now (a short pre-render falls between two samples)
                    if ev.get("phase") != self.core.source_phase.value:
                        self._handle(SourcePhase(str(ev.get("phase"))))
                        self._sample_stats()
                    continue
                self._unsaved_events.append(data + b"\n")
                rule, state, who = ev.get("rule"), ev.get("state"), ev.get("stage", "?")
                self._event(ev.pop("kind", "alert"), ev.pop("message", ""), logged=True, **ev)
                if rule == "disk_full":
                    # While anyone waits for space, acquisition is paused (the camera stops, as an
                    # operator's pause would), so a full disk costs time, not frames (the core).
                    self._handle(DiskFull(who, ev.get("path", "")) if state != "cleared" else DiskFreed(who))
        while self._unsaved_events and _append_whole(self.state_dir / "alerts.jsonl", self._unsaved_events[0]):
            self._unsaved_events.pop(0)
        del self._unsaved_events[:-1000]  # a disk full for long: the newest thousand wait

    def _sample_stats(self) -> None:
        """Append one sample of ring and stage state to stats.jsonl (the run's time series)."""
        rings = {}
        frames = 0
        for ring in self._rings:
            st = ring.statistics()
            link = self._ring_info[ring.name]
            rings[link.key] = {"edge": link.edge, "producer": link.producer.name, "consumer": link.consumer.name,
                "occupancy": st.occupancy, "n_slots": st.n_slots, "written": st.written, "read": st.read,
                "drops": st.drops, "peak_occupancy": st.peak_occupancy, "full_waits": st.full_waits,
                "empty_waits": st.empty_waits, "consumer_alive": st.consumer_alive,
                "consumer_heartbeat_age_s": st.consumer_heartbeat_age_s,
            }
            if link.producer.is_source:
                frames += st.written + st.drops
        stages = {}
        prerender = None
        source = writer = None  # their entries: the run's acquired count, the end-to-end latency
        for name, spec in self._specs.items():
            live = self._live_of(name)
            if spec.process.is_source and live.get("status") == "running" and live.get("phase") in ("prerendering", "acquiring"):
                # the source reports what it does: the run state follows (starting ->
                # prerendering -> acquiring), with the pre-render's progress; the core (and
                # the recorder) hear of a change, not of every sample
                if live["phase"] != self.core.source_phase.value:
                    self._handle(SourcePhase(live["phase"]))
                if live["phase"] == "prerendering":
                    prerender = {"done": int(live.get("prerender_done") or 0), "total": int(live.get("prerender_total") or 0)}
            stages[name] = {
                "stage": spec.stage, "replica": spec.replica,  # appliance.schema: readers never parse the name
                "alive": name in self._procs and self._procs[name].is_alive(),
                # None while it runs; 0 when it finished normally (appliance_stage_state)
                "exitcode": self._procs[name].exitcode if name in self._procs else None,
                "restarts": self.policy.restarts.get(name, 0),
                **{k: live.get(k) for k in _LIVE_KEYS},
            }
            if spec.process.is_source:
                source = stages[name]
            elif spec.process.is_last:
                writer = stages[name]
        # Acquired frames: the source's own count (the run summary's), not the raw rings'
        # entries, which also hold the epoch barriers; the rings only until it first reports.
        if source is not None and source.get("frames_in") is not None:
            frames = int(source["frames_in"])
        cfg = self.config
        host = _host_stats(self.root)
        writer = writer or {}
        sample = {
            "schema": SCHEMA_VERSION, "t": time.time(), "run_id": self.run_id, "state": self.state, "frames_acquired": frames, "host": host,
            "frames_planned": len(cfg.run.tiles) * cfg.run.cycles * 4, "tiles": list(cfg.run.tiles),
            "cycles": cfg.run.cycles, "rings": rings, "stages": stages,
            "e2e_latency_ms_p99": writer.get("e2e_latency_ms_p99"),
            "e2e_latency_budget_ms": cfg.supervisor.e2e_latency_p99_ms,
        }
        if prerender is not None:
            sample["prerender"] = prerender
        verdict = self._bottleneck.update(sample, time.monotonic())
        if verdict is not None and self.core.state.value in ("acquiring", "paused", "draining"):
            sample["bottleneck"] = verdict.to_dict()
        for change in self.alerts.update(sample, time.time()):
            a = change.alert
            if change.action == "raised":
                self._event("alert", a.message, rule=a.rule, subject=a.subject, severity=a.severity, first_seen=a.first_seen)
            else:
                self._event("event", f"cleared: {a.message}", rule=a.rule, subject=a.subject, cleared=a.cleared)
        sample["alerts"] = [{"rule": a.rule, "subject": a.subject, "severity": a.severity, "message": a.message, "first_seen": a.first_seen} for a in self.alerts.active.values()]
        self.latest_stats = sample
        self._append_stats(json.dumps(sample) + "\n")
        self.recorder.record("stats", sample)
        if self.publish is not None:
            self.publish("stats", sample)

    def _append_stats(self, line: str) -> None:
        """One line onto stats.jsonl, whole or not at all: a full disk raises ``disk_full``
        (acquisition pauses) and skips the sample; the next sample that fits clears it."""
        path = self.state_dir / "stats.jsonl"
        from appliance.pipeline._diskfull import is_full

        try:
            _append_whole(path, line.encode(), raise_full=True)
        except OSError as exc:
            if not is_full(exc):
                raise
            return self._stats_full(path, exc)
        if "supervisor" in self.core.paused_by:
            self._event("event", f"space freed: {path} written again; samples taken while the disk was full are not in it", rule="disk_full")
            self._handle(DiskFreed("supervisor"))

    def _stats_full(self, path: Path, exc: OSError) -> None:
        if "supervisor" not in self.core.paused_by:
            self._event("alert", f"disk full writing {path}: the run is paused until space is freed ({exc})", rule="disk_full", path=str(path))
            self._handle(DiskFull("supervisor", str(path)))

    # -- the control plane ------------------------------------------------------------------
    def control_commands(self) -> dict:
        """The control-plane commands of this run: status, stop, pause, resume, events, set."""
        from appliance.control import Arg, Command, CommandError

        def status(args):
            return {**self.latest_stats, "run_id": self.run_id, "state": self.state, "config": self.config.to_dict()}

        def stop(args):
            self.request_stop()
            return {"stopping": True, "run_id": self.run_id}

        def pause(args):
            why = self._refusal(PauseRequested())
            if why:
                raise CommandError("not_running", f"run {self.run_id}: {why}")
            return {"paused": True}

        def resume(args):
            why = self._refusal(ResumeRequested())
            if why:
                raise CommandError("not_running", f"run {self.run_id}: {why}")
            return {"paused": False}

        def events(args):
            last = args.get("last", 50)  # >= 0: Arg(min=0) refuses negatives with bad_args
            return self.events[-last:] if last > 0 else []

        return {
            "status": Command(status, "the latest stats sample, the run's state and its config"),
            "stop": Command(stop, "drain: stop acquisition; every frame that entered is written"),
            "pause": Command(pause, "pause acquisition (frames in the pipeline are still processed)", (),
                             {"not_running": "the run is not acquiring (paused, draining or done)"}),
            "resume": Command(resume, "resume a paused acquisition", (), {"not_running": "the run is not paused (draining or done)"}),
            "events": Command(events, "the most recent events and alerts", (Arg("last", "int", help="how many (default 50; 0: none)", min=0),)),
            "set": Command(lambda a: self.set_live(a["key"], a["value"]), f"change a live parameter ({', '.join(LIVE_KEYS)})",
                           (Arg("key", "str", True, "the live parameter: " + ", ".join(LIVE_KEYS)),
                            Arg("value", "float", True, "its new value, a number: " + "; ".join(f"{k} {lo:g} to {hi:g}" for k, (lo, hi) in LIVE_KEYS.items()))),
                           {"not_live": "the key cannot change during a run", "bad_value": "the value is outside the key's range"}),
        }

    def _start_control(self):
        """Serve this run's commands over ZeroMQ and publish stats, events, logs."""
        server = start_control_server(self.config.control, self.control_commands())
        self.publish = server.publish
        self._log_handler = attach_log_publisher(server)
        return server

    def _stop_control(self, server) -> None:
        logging.getLogger("appliance").removeHandler(self._log_handler)
        self.publish = None
        server.stop()


    def _heartbeat_age(self, name: str) -> float | None:
        """Age of the freshest heartbeat of this process's input ring ends (None when it has
        no input rings): a stage refreshes them all together, while working or waiting."""
        spec = self._specs[name]
        ages = []
        for ring_name in spec.inputs:
            try:
                st = rt.inspect(ring_name)
            except rt.RingError:
                continue
            if st.consumer_heartbeat_age_s is not None and st.consumer_pid == self._procs[name].pid:
                ages.append(st.consumer_heartbeat_age_s)
        return min(ages) if ages else None

    def _terminate_all(self, timeout: float = 10.0) -> None:
        for proc in self._procs.values():
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in self._procs.values():
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join()

    def cleanup_state(self) -> None:
        """Remove checkpoints and stage summaries of a finished run."""
        shutil.rmtree(self.state_dir, ignore_errors=True)


def _append_whole(path: Path, data: bytes, *, raise_full: bool = False) -> bool:
    """Append ``data`` (one or more whole lines) to ``path`` with one O_APPEND write, whole
    or not at all: a full disk cuts the file back to its length before. False on a full
    disk (or the OSError, with ``raise_full``); other errors raise."""
    from appliance.pipeline._diskfull import is_full

    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        if not is_full(exc) or raise_full:
            raise
        return False
    try:
        size = os.fstat(fd).st_size
        try:
            n = os.write(fd, data)
        except OSError as exc:
            if not is_full(exc):
                raise
            n, err = -1, exc
        if n != len(data):
            os.ftruncate(fd, size)
            if raise_full:
                raise err if n < 0 else OSError(28, "short write", str(path))
            return False
    finally:
        os.close(fd)
    return True


def start_control_server(c, handlers: dict):
    """Start a ControlServer for the ``[control]`` config section ``c`` with ``handlers``;
    SupervisorError naming the problem when it cannot: another appliance holds the socket
    directory, the directory is unusable (shared, someone else's, path too long), a bad TCP
    endpoint, missing CURVE keys, a port in use."""
    import zmq

    from appliance.control import ControlServer, ControlServerError
    from appliance.control.paths import default_socket_dir

    if not c.enabled:
        raise SupervisorError("control plane: control.enabled = false, so no control sockets are served; "
                              "appliance serve is driven only through them: set control.enabled = true, or use appliance run")
    try:
        server = ControlServer(
            handlers=handlers,
            run_dir_for_sockets=Path(c.socket_dir) if c.socket_dir else default_socket_dir(),
            tcp=c.tcp or None,
            curve_dir=Path(c.curve_dir) if c.curve_dir else None,
            pub_max_hz=c.pub_max_hz,
        )
        server.start()
    except (ControlServerError, OSError, zmq.ZMQError) as exc:  # OSError: SocketDirError among others
        raise SupervisorError(f"control plane: {exc}") from None
    return server


def attach_log_publisher(server) -> logging.Handler:
    """Publish the appliance's log records on the server's ``log`` topic."""
    from appliance.control import PublishingLogHandler

    handler = PublishingLogHandler(server)
    logging.getLogger("appliance").addHandler(handler)
    return handler
