"""Run configuration: TOML with embedded defaults, validated once at load.

``load_config(path, overrides)`` merges ``appliance/defaults.toml``, the optional run config
file and ``section.key=value`` overrides, then builds frozen dataclasses. Every problem is a
:class:`ConfigError` that names the key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from appliance.configfile import ConfigError, read_toml  # noqa: F401  (re-exported: callers import them from appliance.config)
# the pipeline's shape: the stages in order, and edge name -> (producer stage, consumer stage),
# "source" being the camera; re-exported from the schema, which the readers of samples share
from appliance.schema import EDGES, STAGES

__all__ = [
    "ConfigError",
    "RunConfig",
    "RunSection",
    "SourceSection",
    "SyntheticSection",
    "GenICamSection",
    "StageSection",
    "EdgeSection",
    "CpuSection",
    "OutputSection",
    "SupervisorSection",
    "MetricsSection",
    "load_config",
    "default_config",
    "EDGES",
    "STAGES",
]



def _err(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config key {key} = {value!r} is invalid: allowed {allowed}")


@dataclass(frozen=True)
class RunSection:
    name: str = "SIM"
    instrument_id: str = "SIM01"
    flowcell: str = "FC0001"
    tiles: tuple[int, ...] = (1101, 1102)
    cycles: int = 26
    seed: int = 1

    def validate(self, key: str) -> None:
        for k in ("name", "instrument_id", "flowcell"):
            v = getattr(self, k)
            if not v or not all(ch.isalnum() or ch in "-" for ch in v) or len(v) > 16:
                raise _err(f"{key}.{k}", v, "1-16 letters, digits or '-'")
        if not self.tiles or len(set(self.tiles)) != len(self.tiles) or not all(isinstance(t, int) and 1 <= t <= 99999 for t in self.tiles):
            raise _err(f"{key}.tiles", list(self.tiles), "a non-empty list of distinct tile numbers 1..99999 (e.g. [1101, 1102])")
        if not isinstance(self.cycles, int) or not 1 <= self.cycles <= 1000:
            raise _err(f"{key}.cycles", self.cycles, "an integer 1..1000")


@dataclass(frozen=True)
class SyntheticSection:
    tile_size: int = 512
    layout: str = "patterned"
    density: float = 0.005
    psf_sigma: float = 1.2
    phasing: float = 0.002
    prephasing: float = 0.001
    brightness: float = 2000.0
    unique_frames: int = 0

    def validate(self, key: str) -> None:
        if not isinstance(self.unique_frames, int) or self.unique_frames < 0:
            raise _err(f"{key}.unique_frames", self.unique_frames, "0 (render every frame) or N >= 1 (render N, then repeat them)")
        if self.tile_size not in (64, 128, 256, 512, 1024, 2048, 4096, 5120):
            raise _err(f"{key}.tile_size", self.tile_size, "64, 128, 256, 512, 1024, 2048, 4096 or 5120")
        if self.layout not in ("patterned", "random"):
            raise _err(f"{key}.layout", self.layout, "patterned or random")
        if not 0.0005 <= self.density <= 0.05:
            raise _err(f"{key}.density", self.density, "0.0005 to 0.05 clusters/px^2")
        if not 0.5 <= self.psf_sigma <= 3.0:
            raise _err(f"{key}.psf_sigma", self.psf_sigma, "0.5 to 3.0 px")
        if not isinstance(self.brightness, (int, float)) or not 50.0 <= self.brightness <= 100000.0:
            raise _err(f"{key}.brightness", self.brightness, "50 to 100000 e- (a cluster's median flux per cycle and channel)")
        for k in ("phasing", "prephasing"):
            if not 0 <= getattr(self, k) <= 0.05:
                raise _err(f"{key}.{k}", getattr(self, k), "0 to 0.05 per cycle")


@dataclass(frozen=True)
class GenICamSection:
    """A GenICam camera through harvesters (see docs/genicam.md); 0 / "" keep the camera's own setting."""

    cti: str = ""
    serial: str = ""
    pixel_format: str = "Mono16"
    width: int = 0
    height: int = 0
    exposure_us: float = 0.0
    frame_rate_hz: float = 0.0
    num_buffers: int = 16
    timeout_s: float = 5.0

    def validate(self, key: str) -> None:
        if self.pixel_format not in ("Mono8", "Mono10", "Mono12", "Mono14", "Mono16"):
            raise _err(f"{key}.pixel_format", self.pixel_format, "Mono8, Mono10, Mono12, Mono14 or Mono16")
        for k in ("width", "height"):
            if not 0 <= getattr(self, k) <= 16384:
                raise _err(f"{key}.{k}", getattr(self, k), "0 (the camera's) to 16384 px")
        if not 1 <= self.num_buffers <= 1024:
            raise _err(f"{key}.num_buffers", self.num_buffers, "1 to 1024")
        if not 0 < self.timeout_s <= 600:
            raise _err(f"{key}.timeout_s", self.timeout_s, "more than 0 and at most 600 seconds")
        if not 0 <= self.exposure_us <= 1e8:
            raise _err(f"{key}.exposure_us", self.exposure_us, "0 (the camera's) to 100000000 microseconds")
        if not 0 <= self.frame_rate_hz <= 100_000:
            raise _err(f"{key}.frame_rate_hz", self.frame_rate_hz, "0 (source.rate_hz, else the camera's) to 100000 frames/s")


@dataclass(frozen=True)
class SourceSection:
    kind: str = "synthetic"
    rate_hz: float = 100.0
    prerender: bool = True
    replay_path: str = ""
    synthetic: SyntheticSection = field(default_factory=SyntheticSection)
    genicam: GenICamSection = field(default_factory=GenICamSection)

    def validate(self, key: str) -> None:
        if self.kind not in ("synthetic", "replay", "genicam"):
            raise _err(f"{key}.kind", self.kind, "synthetic, replay or genicam")
        if not 0 <= self.rate_hz <= 100_000:
            raise _err(f"{key}.rate_hz", self.rate_hz, "0 (unthrottled) to 100000 frames/s")
        if self.kind == "replay" and not self.replay_path:
            raise _err(f"{key}.replay_path", self.replay_path, "a folder of recorded frames when kind = replay")


@dataclass(frozen=True)
class StageSection:
    replicas: int = 1
    budget_ms: float = 100.0
    backend: str = "auto"
    mode: str = "disk"
    algorithm: str = "chain"
    #: "module:Class": one's own stage class instead of the built-in (appliance/pipeline/stage.py)
    handler: str = ""

    def validate(self, key: str) -> None:
        if not isinstance(self.handler, str) or self.handler and (self.handler.count(":") != 1 or not all(self.handler.split(":"))):
            raise _err(f"{key}.handler", self.handler, '"" (the built-in stage) or "module:Class" (a subclass of appliance.pipeline.handlers.Handler)')
        if not isinstance(self.replicas, int) or not 1 <= self.replicas <= 64:
            raise _err(f"{key}.replicas", self.replicas, "an integer 1..64")
        if not self.budget_ms > 0:
            raise _err(f"{key}.budget_ms", self.budget_ms, "a positive number of milliseconds")
        if self.backend not in ("auto", "numpy", "cupy"):
            raise _err(f"{key}.backend", self.backend, "auto, numpy or cupy")
        if self.mode not in ("disk", "null"):
            raise _err(f"{key}.mode", self.mode, "disk or null")
        if self.algorithm not in ("chain", "passthrough"):
            raise _err(f"{key}.algorithm", self.algorithm, "chain or passthrough")


@dataclass(frozen=True)
class EdgeSection:
    n_slots: int = 16
    policy: str = "block"
    wait: str = "sleep"

    def validate(self, key: str) -> None:
        from rt import POLICIES, WAIT_STRATEGIES

        n = self.n_slots
        if not isinstance(n, int) or n < 2 or n & (n - 1) or n > 65536:
            raise _err(f"{key}.n_slots", n, "a power of two from 2 to 65536")
        if self.policy not in POLICIES:
            raise _err(f"{key}.policy", self.policy, " or ".join(POLICIES))
        if self.wait not in WAIT_STRATEGIES:
            raise _err(f"{key}.wait", self.wait, ", ".join(WAIT_STRATEGIES))


@dataclass(frozen=True)
class CpuSection:
    housekeeping: str = "0"
    camera_nic: str = ""
    pin: bool = True
    mlock: bool = False
    realtime: bool = False

    def validate(self, key: str) -> None:
        from rt import parse_cpulist

        try:
            parse_cpulist(self.housekeeping)
        except ValueError as exc:
            raise _err(f"{key}.housekeeping", self.housekeeping, f"a Linux CPU list such as \"0\" or \"0-1,8\" ({exc})") from None


@dataclass(frozen=True)
class OutputSection:
    root: str = "runs"
    keep_raw_every: int = 0
    state_root: str = ""

    def validate(self, key: str) -> None:
        if not isinstance(self.keep_raw_every, int) or self.keep_raw_every < 0:
            raise _err(f"{key}.keep_raw_every", self.keep_raw_every, "0 (never) or N >= 1 (every Nth tile)")


@dataclass(frozen=True)
class MetricsSection:
    port: int = 0
    address: str = "127.0.0.1"

    def validate(self, key: str) -> None:
        if not isinstance(self.port, int) or not (self.port == 0 or 1024 <= self.port <= 65535):
            raise _err(f"{key}.port", self.port, "0 (no exporter) or a TCP port 1024..65535")


@dataclass(frozen=True)
class ControlSection:
    enabled: bool = True
    socket_dir: str = ""
    tcp: str = ""
    curve_dir: str = ""
    pub_max_hz: float = 10.0

    def validate(self, key: str) -> None:
        if self.tcp and not self.tcp.startswith("tcp://"):
            raise _err(f"{key}.tcp", self.tcp, 'tcp://HOST:PORT, or "" for local ipc:// sockets only')
        if self.tcp and not self.curve_dir:
            raise _err(f"{key}.curve_dir", self.curve_dir, "a folder of CURVE keys whenever control.tcp is set (docs/control-protocol.md): TCP is never unauthenticated")
        if not 0.1 <= self.pub_max_hz <= 100:
            raise _err(f"{key}.pub_max_hz", self.pub_max_hz, "0.1 to 100")


@dataclass(frozen=True)
class RecorderSection:
    max_mb: int = 256

    def validate(self, key: str) -> None:
        if not isinstance(self.max_mb, int) or not 1 <= self.max_mb <= 1 << 20:
            raise _err(f"{key}.max_mb", self.max_mb, "1 to 1048576 MiB")


@dataclass(frozen=True)
class TracingSection:
    """``[tracing]``: OpenTelemetry traces of the run (appliance/tracing.py, docs/root-cause.md)."""

    enabled: bool = True
    #: share of frames whose per-stage timings become spans (a frame with a checksum failure,
    #: an incomplete cycle or an over-budget stage is always kept)
    frame_sample: float = 0.01
    #: OTLP/HTTP endpoint ("http://collector:4318/v1/traces"); "" = files in the run's state folder
    otlp_endpoint: str = ""

    def validate(self, key: str) -> None:
        if not isinstance(self.enabled, bool):
            raise _err(f"{key}.enabled", self.enabled, "true or false")
        if isinstance(self.frame_sample, bool) or not isinstance(self.frame_sample, (int, float)) or not 0 <= self.frame_sample <= 1:
            raise _err(f"{key}.frame_sample", self.frame_sample, "a number 0..1 (the share of frames traced)")
        if not isinstance(self.otlp_endpoint, str) or (self.otlp_endpoint and not self.otlp_endpoint.startswith(("http://", "https://"))):
            raise _err(f"{key}.otlp_endpoint", self.otlp_endpoint, '"" (files in the state folder) or an http(s):// OTLP endpoint')


@dataclass(frozen=True)
class SupervisorSection:
    max_restarts: int = 3
    backoff_s: float = 0.5
    heartbeat_timeout_s: float = 30.0
    hang_min_s: float = 5.0
    sysconfig_profile: str = ""
    strict: bool = False
    e2e_latency_p99_ms: float = 0.0

    def validate(self, key: str) -> None:
        if not isinstance(self.max_restarts, int) or not 0 <= self.max_restarts <= 100:
            raise _err(f"{key}.max_restarts", self.max_restarts, "an integer 0..100")
        if not 0 <= self.backoff_s <= 60:
            raise _err(f"{key}.backoff_s", self.backoff_s, "0 to 60 seconds")
        if not 1 <= self.heartbeat_timeout_s <= 3600:
            raise _err(f"{key}.heartbeat_timeout_s", self.heartbeat_timeout_s, "1 to 3600 seconds")
        if not 1 <= self.hang_min_s <= 3600:
            raise _err(f"{key}.hang_min_s", self.hang_min_s, "1 to 3600 seconds (above heartbeat_timeout_s, the ceiling wins)")
        if not 0 <= self.e2e_latency_p99_ms <= 3_600_000:
            raise _err(f"{key}.e2e_latency_p99_ms", self.e2e_latency_p99_ms, "0 (no budget) to 3600000 ms")
        if self.strict and not self.sysconfig_profile:
            raise _err(f"{key}.strict", self.strict, "false unless supervisor.sysconfig_profile names a profile")


@dataclass(frozen=True)
class RunConfig:
    """The whole run configuration (see ``appliance/defaults.toml`` for every key)."""

    run: RunSection
    source: SourceSection
    stages: dict[str, StageSection]
    edges: dict[str, EdgeSection]
    hugepages: str
    cpu: CpuSection
    output: OutputSection
    verify_at: tuple[str, ...]
    supervisor: SupervisorSection
    metrics: MetricsSection = field(default_factory=MetricsSection)
    alerts: object = None  #: appliance.alerts.AlertRules
    recorder: RecorderSection = field(default_factory=RecorderSection)
    tracing: TracingSection = field(default_factory=TracingSection)
    control: ControlSection = field(default_factory=ControlSection)
    storage: object = None  #: appliance.storage.StorageSection
    offload: object = None  #: appliance.offload.OffloadConfig
    lab: object = None  #: appliance.lab.LabSection

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _defaults() -> dict:
    return tomllib.loads(resources.files("appliance").joinpath("defaults.toml").read_text())


def _merge(base: dict, over: dict, prefix: str = "") -> dict:
    out = dict(base)
    for k, v in over.items():
        key = f"{prefix}{k}"
        if k not in base:
            raise ConfigError(f"unknown config key {key}; known keys here: {', '.join(sorted(base))}")
        if isinstance(base[k], dict):
            if not isinstance(v, dict):
                raise _err(key, v, f"a table with keys {', '.join(sorted(base[k]))}")
            out[k] = _merge(base[k], v, key + ".")
        else:
            out[k] = v
    return out


def _coerce(value: str) -> Any:
    """Parse the value of a ``--set key=value`` override as TOML, else keep it as a string."""
    try:
        return tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return value


def _build(cls, data: dict, key: str):
    hints = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        f = hints[k]
        want = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
        if want.startswith("tuple"):
            if not isinstance(v, list):
                raise _err(f"{key}.{k}", v, "a list")
            v = tuple(v)
        elif want == "float":
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise _err(f"{key}.{k}", v, "a number")
            v = float(v)
        elif want == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise _err(f"{key}.{k}", v, "an integer")
        elif want == "bool":
            if not isinstance(v, bool):
                raise _err(f"{key}.{k}", v, "true or false")
        elif want == "str":
            if not isinstance(v, str):
                raise _err(f"{key}.{k}", v, "a string")
        kwargs[k] = v
    obj = cls(**kwargs)
    obj.validate(key)
    return obj


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Defaults, then the TOML file at ``path``, then ``section.key=value`` overrides."""
    data = _defaults()
    if path is not None:
        data = _merge(data, read_toml(Path(path), "run config"))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: write section.key=value (e.g. run.cycles=50)")
        dotted, value = item.split("=", 1)
        parts = dotted.strip().split(".")
        patch: dict = {}
        cur = patch
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = _coerce(value.strip())
        data = _merge(data, patch)
    return _from_dict(data)


def default_config() -> RunConfig:
    return load_config()


def _from_dict(d: dict) -> RunConfig:
    src = dict(d["source"])
    synthetic = _build(SyntheticSection, src.pop("synthetic"), "source.synthetic")
    genicam = _build(GenICamSection, src.pop("genicam"), "source.genicam")
    source = _build(SourceSection, src, "source")
    source = dataclasses.replace(source, synthetic=synthetic, genicam=genicam)
    stages = {}
    for name in STAGES:
        stages[name] = _build(StageSection, d["stages"][name], f"stages.{name}")
    if stages["writer"].replicas != 1:
        raise _err("stages.writer.replicas", stages["writer"].replicas, "1 (one writer owns the run folder)")
    edges_raw = dict(d["edges"])
    hugepages = edges_raw.pop("hugepages")
    if hugepages not in ("none", "auto", "2M", "1G"):
        raise _err("edges.hugepages", hugepages, "none, auto, 2M or 1G")
    edges = {name: _build(EdgeSection, edges_raw[name], f"edges.{name}") for name in EDGES}
    if source.kind != "synthetic" and stages["kernel"].algorithm == "chain" and source.kind == "genicam":
        raise _err("stages.kernel.algorithm", "chain", "passthrough with source.kind = genicam until the chain is calibrated for a real camera (dark, flat, PSF)")
    run = _build(RunSection, d["run"], "run")
    if stages["kernel"].algorithm == "chain":
        from kernels.chain import ChainConfig

        need = ChainConfig().template_cycles  # the cluster template is built from the first cycles
        if run.cycles < need:
            raise _err("run.cycles", run.cycles, f"at least {need} with stages.kernel.algorithm = \"chain\" (its cluster template "
                       f"is built from the first {need} cycles; fewer give no clusters), or the passthrough algorithm")
    verify_at = d["integrity"]["verify_at"]
    if not isinstance(verify_at, list) or any(v not in STAGES for v in verify_at):
        raise _err("integrity.verify_at", verify_at, f"a list of stage names from {', '.join(STAGES)}")
    return RunConfig(
        run=run,
        source=source,
        stages=stages,
        edges=edges,
        hugepages=hugepages,
        cpu=_build(CpuSection, d["cpu"], "cpu"),
        output=_build(OutputSection, d["output"], "output"),
        verify_at=tuple(verify_at),
        supervisor=_build(SupervisorSection, d["supervisor"], "supervisor"),
        metrics=_build(MetricsSection, d["metrics"], "metrics"),
        alerts=_alerts(d["alerts"]),
        recorder=_build(RecorderSection, d["recorder"], "recorder"),
        tracing=_build(TracingSection, d["tracing"], "tracing"),
        control=_build(ControlSection, d["control"], "control"),
        storage=_storage(d["storage"]),
        offload=_offload(d["offload"]),
        lab=_lab(d["lab"]),
    )


def _storage(d: dict):
    from appliance.storage.policy import storage_section

    return storage_section(d)


def _lab(d: dict):
    from appliance.lab import lab_section

    return lab_section(d)


def _offload(d: dict):
    from appliance.offload.config import load_offload

    return load_offload(d)


def _alerts(d: dict):
    from appliance.alerts import AlertRules

    for k, v in d.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise _err(f"alerts.{k}", v, "a number >= 0")
    if not 0 < d["ring_occupancy"] <= 1:
        raise _err("alerts.ring_occupancy", d["ring_occupancy"], "a fraction in (0, 1]")
    if not 0 <= d["disk_free_fraction"] < 1 or not 0 <= d["budget_within"] <= 1:
        raise _err("alerts.disk_free_fraction/budget_within", (d["disk_free_fraction"], d["budget_within"]), "fractions in [0, 1)")
    return AlertRules(**{k: float(v) for k, v in d.items()})
