"""The supervisor: plans CPUs and rings, spawns the stages, restarts crashed ones, drains.

The restart decisions are a pure state machine (:class:`RestartPolicy`: exits in, actions
out), tested without processes. :class:`Supervisor` does the process work around it.
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
from dataclasses import dataclass, field
from pathlib import Path

import rt
from appliance.config import EDGES, STAGES, RunConfig
from appliance.pipeline._flags import SharedFlag
from appliance.pipeline._spec import StageSpec

__all__ = ["Supervisor", "RestartPolicy", "Restart", "GiveUp", "Done", "SupervisorError", "plan_cpus", "ring_budget", "CpuPlan"]

log = logging.getLogger("appliance.supervisor")
_ORDER = ("source", *STAGES)
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
_LIVE_KEYS = ("frames_in", "frames_out", "busy_fraction", "stage_latency_ms_p50", "stage_latency_ms_p99", "budget_ms", "within_budget_fraction", "checksum_failures", "duplicates", "e2e_latency_ms_p50", "e2e_latency_ms_p99", "gpu_memory_used_bytes", "gpu_memory_total_bytes", "stage_latency_hist", "e2e_latency_hist")


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


# -- the pure restart state machine -------------------------------------------------------


@dataclass(frozen=True)
class Restart:
    name: str
    delay_s: float
    attempt: int


@dataclass(frozen=True)
class GiveUp:
    name: str
    reason: str


@dataclass(frozen=True)
class Done:
    name: str


@dataclass
class RestartPolicy:
    """Bounded restarts with exponential backoff, per process.

    ``on_exit(name, exitcode, finished)`` returns Done (finished cleanly), Restart (after a
    delay: ``backoff_s * 2**(attempt-1)``) or GiveUp (more than ``max_restarts`` crashes).
    """

    max_restarts: int
    backoff_s: float
    restarts: dict[str, int] = field(default_factory=dict)

    def on_exit(self, name: str, exitcode: int | None, finished: bool) -> Restart | GiveUp | Done:
        if exitcode == 0 and finished:
            return Done(name)
        n = self.restarts.get(name, 0) + 1
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit status {exitcode}"
        if n > self.max_restarts:
            return GiveUp(name, f"stage {name} crashed {n} times (last: {how}); max_restarts = {self.max_restarts}")
        self.restarts[name] = n
        return Restart(name, self.backoff_s * 2 ** (n - 1), n)


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
) -> CpuPlan:
    """Give each process its own CPU outside the housekeeping set, isolated CPUs first, and
    NUMA-local where it matters: kernel stages on the GPU's node, the source and preprocess
    stages on the camera NIC's node.

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
        stage = name.rsplit("-", 1)[0]
        if stage == "kernel" and gpu_node is not None:
            return node_cpus.get(gpu_node, frozenset())
        if stage in ("source", "preprocess") and nic_node is not None:
            return node_cpus.get(nic_node, frozenset())
        return frozenset()

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


class Supervisor:
    """Runs one instrument run: ``run()`` returns the summary dict or raises SupervisorError."""

    def __init__(self, config: RunConfig, *, run_id: str | None = None, faults: dict[str, dict] | None = None, notifier=None, log_json: bool = False) -> None:
        self.config = config
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
        self._rings: list[rt.Ring] = []
        self._procs: dict[str, mp.Process] = {}
        self._specs: dict[str, StageSpec] = {}
        self.policy = RestartPolicy(config.supervisor.max_restarts, config.supervisor.backoff_s)
        # The source reads these (shared, so a restarted source inherits a stop or a pause).
        self._drain = SharedFlag(self._ctx)
        self._pause = SharedFlag(self._ctx)
        self._done = False
        self._live: dict = {}
        from appliance.alerts import AlertManager

        self.alerts = AlertManager(config.alerts)
        self.latest_stats: dict = {}
        #: called with (topic, body) for every stats sample and event: the control plane's PUB
        self.publish = None

    # -- planning --------------------------------------------------------------------------
    def _replicas(self, stage: str) -> int:
        return 1 if stage == "source" else self.config.stages[stage].replicas

    def _ring_name(self, edge: str, i: int, j: int) -> str:
        return f"appliance.{os.getpid()}.{self.run_id}.{edge}.{i}.{j}"

    def _plan(self) -> list[StageSpec]:
        cfg = self.config
        names = [f"{s}-{r}" for s in _ORDER for r in range(self._replicas(s))]
        topo = rt.read_topology()
        gpus = [n for n in rt.gpu_numa_nodes().values() if n is not None]
        nic_node = rt.net_interface_numa_node(cfg.cpu.camera_nic) if cfg.cpu.camera_nic else None
        cpus = plan_cpus(
            topo, frozenset(rt.parse_cpulist(cfg.cpu.housekeeping)), names, cfg.cpu.pin,
            gpu_node=gpus[0] if gpus else None, nic_node=nic_node,
        )
        for w in cpus.warnings:
            self._event("warning", f"cpu plan: {w}")
        specs = []
        for index, stage in enumerate(_ORDER):
            for r in range(self._replicas(stage)):
                inputs, outputs = [], []
                for edge, (src, dst) in EDGES.items():
                    if dst == stage:
                        inputs += [self._ring_name(edge, i, r) for i in range(self._replicas(src))]
                    if src == stage:
                        outputs += [self._ring_name(edge, r, j) for j in range(self._replicas(dst))]
                name = f"{stage}-{r}"
                specs.append(
                    StageSpec(
                        stage=stage, replica=r, inputs=tuple(inputs), outputs=tuple(outputs), config=cfg,
                        run_id=self.run_id, run_dir=self.run_dir, state_dir=self.state_dir,
                        cpus=cpus.assignments[name], parent_pid=os.getpid(), stage_index=index,
                        fault=self.faults.get(name, {}), log_json=self.log_json,
                    )
                )
        return specs

    def _create_rings(self) -> None:
        cfg = self.config
        n_rings = {e: self._replicas(s) * self._replicas(d) for e, (s, d) in EDGES.items()}
        need = ring_budget(cfg, n_rings)
        _check_budget(need, cfg.hugepages)
        sizes = payload_bytes(cfg)
        for edge, (src, dst) in EDGES.items():
            e = cfg.edges[edge]
            for i in range(self._replicas(src)):
                for j in range(self._replicas(dst)):
                    self._rings.append(
                        rt.Ring.create(self._ring_name(edge, i, j), payload_bytes=sizes[edge], n_slots=e.n_slots,
                                       policy=e.policy, wait=e.wait, hugepages=cfg.hugepages)
                    )
        log.info("rings: %d, %.1f MiB", len(self._rings), need / 2**20)

    # -- processes ---------------------------------------------------------------------------
    def _spawn(self, spec: StageSpec) -> None:
        from appliance.pipeline.runtime import stage_main

        if spec.name in self._procs:  # a restart: injected faults fire once
            spec = dataclasses.replace(spec, fault={})
        args = (spec, self._drain, self._pause) if spec.stage == "source" else (spec,)
        proc = self._ctx.Process(target=stage_main, args=args, name=spec.name, daemon=False)
        proc.start()
        self._procs[spec.name] = proc

    def _summary_of(self, name: str) -> dict:
        try:
            return json.loads(self._specs[name].summary_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _event(self, kind: str, message: str, *, logged: bool = False, **fields) -> None:
        """Record an event or alert: the run's events, the flight recorder, the control
        plane's PUB, systemd STATUS, and the log (unless a stage ``logged`` it already)."""
        if not logged and kind in ("alert", "error", "warning"):
            log.log(logging.ERROR if kind == "error" else logging.WARNING, "%s", message)
        ev = {"t": time.time(), "kind": kind, "message": message, **fields}
        self.events.append(ev)
        if self.notifier is not None:
            self.notifier.status(message[:200])
        topic = "alert" if kind in ("alert", "error") else "event"
        if self.recorder is not None:
            self.recorder.record(topic, ev)
        if self.publish is not None:
            self.publish(topic, ev)

    def request_stop(self) -> None:
        """Drain: stop acquisition; every frame that entered is processed and written."""
        self.stop_requested.set()

    @property
    def state(self) -> str:
        """acquiring, paused, draining or done."""
        if self._done:
            return "done"
        if self.stop_requested.is_set():
            return "draining"
        return "paused" if self._pause.is_set() else "acquiring"

    def pause(self) -> bool:
        """Pause acquisition (the camera stops; frames in the pipeline are still processed)."""
        return self._set_paused(True)

    def resume(self) -> bool:
        return self._set_paused(False)

    def set_live(self, key: str, value) -> dict:
        """Change a parameter that is safe to change mid-run (``LIVE_KEYS``)."""
        from appliance.control import CommandError

        if key not in LIVE_KEYS:
            raise CommandError("not_live", f"{key!r} cannot change during a run; live parameters: {', '.join(LIVE_KEYS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not LIVE_KEYS[key][0] <= value <= LIVE_KEYS[key][1]:
            lo, hi = LIVE_KEYS[key]
            raise CommandError("bad_value", f"{key} = {value!r}: allowed a number from {lo} to {hi}")
        from appliance.pipeline.handlers import LIVE_PARAMS

        self._live[key] = float(value)
        if key.startswith("alerts."):
            self.alerts.rules = dataclasses.replace(self.alerts.rules, **{key.split(".", 1)[1]: float(value)})
        path = self.state_dir / LIVE_PARAMS
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._live))
        os.replace(tmp, path)
        self._event("event", f"live parameter {key} set to {value}")
        return dict(self._live)

    def _set_paused(self, paused: bool) -> bool:
        if self.stop_requested.is_set() or self._done:
            return False
        if paused:
            self._pause.set()
        else:
            self._pause.clear()
        self._event("event", "acquisition paused" if paused else "acquisition resumed")
        return True

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
        for name in rt.clean_dead_rings():
            log.warning("removed stale ring %s of a dead previous instance", name)
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))
        from appliance.recorder import FlightRecorder

        self.recorder = FlightRecorder(self._recorder_dir, max_bytes=cfg.recorder.max_mb << 20, segment_bytes=min(8 << 20, cfg.recorder.max_mb << 18))
        try:
            specs = self._plan()
        except BaseException:
            self.recorder.close()
            raise
        self._specs = {s.name: s for s in specs}
        t0 = time.monotonic()
        server = exporter = None
        try:  # from here on, whatever fails is undone in the finally (recorder, sockets, rings)
            server = self._start_control() if cfg.control.enabled else None
            if cfg.metrics.port:
                from appliance.metrics import MetricsExporter

                exporter = MetricsExporter(lambda: (self.latest_stats, list(self.events)), cfg.metrics.port, cfg.metrics.address).start()
                log.info("metrics on http://%s:%d/metrics", cfg.metrics.address, exporter.port)
            self._create_rings()
            for spec in reversed(specs):  # consumers first, so the source finds them attached
                self._spawn(spec)
            if self.notifier is not None:
                self.notifier.ready(status=f"run {self.run_id}: acquiring")
            self._watch()
        except BaseException:
            self._terminate_all()
            raise
        finally:
            if exporter is not None:
                exporter.stop()
            if server is not None:
                self._stop_control(server)
            self.recorder.close()
            for ring in self._rings:
                ring.close()
                ring.unlink()
            self._rings = []
        wall = time.monotonic() - t0
        # Checkpoints exist to survive a crash mid-run; a finished run no longer needs them.
        for ckpt in self.state_dir.glob("*.ckpt"):
            ckpt.unlink()
        summaries = {name: self._summary_of(name) for name in self._specs}
        return summarize(cfg, self.run_id, self.run_dir, summaries, wall, self.events, dict(self.policy.restarts))

    def _watch(self) -> None:
        pending_restarts: dict[str, float] = {}
        drain_sent = False
        next_alert_read = 0.0
        alerts_offset = 0
        next_sample = 0.0
        hb_timeout = self.config.supervisor.heartbeat_timeout_s
        while True:
            if self.stop_requested.is_set() and not drain_sent:
                drain_sent = True
                self._event("stopping", "drain requested: stopping acquisition")
                self._drain.set()  # the source ends the stream; the rest drains
            now = time.monotonic()
            if now >= next_sample:
                next_sample = now + STATS_PERIOD_S
                self._sample_stats()
            if now >= next_alert_read:  # camera drops are the frames_dropped alert rule's
                next_alert_read = now + 1.0
                alerts_offset = self._read_alerts(alerts_offset)
            for name, proc in list(self._procs.items()):
                if name in pending_restarts:
                    if now >= pending_restarts[name]:
                        del pending_restarts[name]
                        self._spawn(self._specs[name])
                    continue
                if proc.is_alive():
                    age = self._heartbeat_age(name)
                    if age is not None and age > hb_timeout:
                        self._event("alert", f"stage {name} heartbeat stale ({age:.0f} s): restarting", stage=name)
                        proc.kill()
                    continue
                proc.join()
                finished = self._summary_of(name).get("status") == "finished"
                action = self.policy.on_exit(name, proc.exitcode, finished)
                if isinstance(action, Done):
                    del self._procs[name]
                elif isinstance(action, Restart):
                    self._event("alert", f"stage {name} crashed (exit {proc.exitcode}); restart {action.attempt} in {action.delay_s:.1f} s", stage=name)
                    pending_restarts[name] = now + action.delay_s
                else:
                    self._event("error", action.reason, stage=name)
                    raise SupervisorError(action.reason + ": the run is incomplete; see the stage's log above")
            if not self._procs:
                self._read_alerts(alerts_offset)
                self._done = True
                self._sample_stats()
                return
            if self.notifier is not None:
                self.notifier.watchdog_if_due()  # only from this loop: a hung loop stops the pings
            time.sleep(0.05)

    def _read_alerts(self, offset: int) -> int:
        """Collect alerts the stages appended to alerts.jsonl since ``offset``."""
        path = self.state_dir / "alerts.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return offset
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            self._event(ev.pop("kind", "alert"), ev.pop("message", ""), logged=True, **ev)
        return offset + end

    def _sample_stats(self) -> None:
        """Append one sample of ring and stage state to stats.jsonl (the run's time series)."""
        rings = {}
        frames = 0
        for ring in self._rings:
            st = ring.statistics()
            edge = ring.name.split(f"{self.run_id}.", 1)[1]
            rings[edge] = {
                "occupancy": st.occupancy, "n_slots": st.n_slots, "written": st.written, "read": st.read,
                "drops": st.drops, "peak_occupancy": st.peak_occupancy, "full_waits": st.full_waits,
                "empty_waits": st.empty_waits, "consumer_alive": st.consumer_alive,
                "consumer_heartbeat_age_s": st.consumer_heartbeat_age_s,
            }
            if edge.startswith("raw."):
                frames += st.written + st.drops
        stages = {}
        for name in self._specs:
            live = self._summary_of(name)
            stages[name] = {
                "alive": name in self._procs and self._procs[name].is_alive(),
                "restarts": self.policy.restarts.get(name, 0),
                **{k: live.get(k) for k in _LIVE_KEYS},
            }
        cfg = self.config
        host = _host_stats(self.root)
        writer = stages.get("writer-0", {})
        sample = {
            "t": time.time(), "run_id": self.run_id, "state": self.state, "frames_acquired": frames, "host": host,
            "frames_planned": len(cfg.run.tiles) * cfg.run.cycles * 4, "tiles": list(cfg.run.tiles),
            "cycles": cfg.run.cycles, "rings": rings, "stages": stages,
            "e2e_latency_ms_p99": writer.get("e2e_latency_ms_p99"),
            "e2e_latency_budget_ms": cfg.supervisor.e2e_latency_p99_ms,
        }
        for change in self.alerts.update(sample, time.time()):
            a = change.alert
            if change.action == "raised":
                self._event("alert", a.message, rule=a.rule, subject=a.subject, severity=a.severity, first_seen=a.first_seen)
            else:
                self._event("event", f"cleared: {a.message}", rule=a.rule, subject=a.subject, cleared=a.cleared)
        sample["alerts"] = [{"rule": a.rule, "subject": a.subject, "severity": a.severity, "message": a.message, "first_seen": a.first_seen} for a in self.alerts.active.values()]
        self.latest_stats = sample
        with open(self.state_dir / "stats.jsonl", "a") as f:
            f.write(json.dumps(sample) + "\n")
        self.recorder.record("stats", sample)
        if self.publish is not None:
            self.publish("stats", sample)

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
            if not self.pause():
                raise CommandError("not_running", f"run {self.run_id} is {self.state}: only an acquiring run can be paused")
            return {"paused": True}

        def resume(args):
            if not self.resume():
                raise CommandError("not_running", f"run {self.run_id} is {self.state}: nothing to resume")
            return {"paused": False}

        def events(args):
            last = args.get("last", 50)  # >= 0: Arg(min=0) refuses negatives with bad_args
            return self.events[-last:] if last > 0 else []

        return {
            "status": Command(status, "the latest stats sample, the run's state and its config"),
            "stop": Command(stop, "drain: stop acquisition; every frame that entered is written"),
            "pause": Command(pause, "pause acquisition (frames in the pipeline are still processed)"),
            "resume": Command(resume, "resume a paused acquisition"),
            "events": Command(events, "the most recent events and alerts", (Arg("last", "int", help="how many (default 50; 0: none)", min=0),)),
            "set": Command(lambda a: self.set_live(a["key"], a["value"]), f"change a live parameter ({', '.join(LIVE_KEYS)})",
                           (Arg("key", "str", True, "the live parameter"), Arg("value", "any", True, "its new value (a number)"))),
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


def start_control_server(c, handlers: dict):
    """Start a ControlServer for the ``[control]`` config section ``c`` with ``handlers``;
    SupervisorError naming the problem when it cannot: another appliance holds the socket
    directory, the directory is unusable (shared, someone else's, path too long), a bad TCP
    endpoint, missing CURVE keys, a port in use."""
    import zmq

    from appliance.control import ControlServer, ControlServerError
    from appliance.control.paths import default_socket_dir

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
