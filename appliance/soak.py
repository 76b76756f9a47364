"""The soak harness: run the pipeline for hours and measure what grows.

A multi-day run fails by slow growth more often than by a crash: memory that creeps, file
descriptors or threads that leak, checkpoints that get bigger every cycle, shared-memory
segments left behind, a disk that fills. ``appliance soak`` runs the real pipeline (``appliance
run`` as a child process, in its own session) for a given time, either as one long run of many
cycles or as back-to-back runs, and samples every process of it at a fixed interval:

- per process (by its role: supervisor, source-0, kernel-0, ...): RSS, open fds, threads;
- ``/dev/shm``: the bytes of the appliance's segments;
- the state folder: the checkpoints' total size; the data root's disk use;
- the run's own time series (``stats.jsonl``): end-to-end latency p50/p99, frames.

The decision is pure (:func:`slopes`, :func:`verdict`): a least-squares slope per hour of every
series after a warm-up, compared with thresholds, plus the frames lost. The report is one HTML
page with a plot per quantity and the table of slopes (:func:`write_report`).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable

__all__ = [
    "SoakThresholds",
    "SoakResult",
    "Sample",
    "run_soak",
    "slopes",
    "verdict",
    "write_report",
]

#: what the gauges of one process are called in the samples and the report
PROCESS_GAUGES = ("rss_mb", "fds", "threads")


@dataclass(frozen=True)
class SoakThresholds:
    """The largest growth per hour that still passes (after the warm-up)."""

    rss_mb_per_h: float = 5.0
    fds_per_h: float = 1.0
    threads_per_h: float = 1.0
    shm_mb_per_h: float = 1.0
    checkpoint_mb_per_h: float = 1.0
    warmup_fraction: float = 0.2  # the first part of the samples is start-up, not growth


@dataclass(frozen=True)
class Sample:
    """One look at the running appliance, ``t`` seconds after the soak started."""

    t: float
    processes: dict[str, dict[str, float]]  # role -> {"rss_mb", "fds", "threads"}
    shm_mb: float
    checkpoint_mb: float
    disk_used_mb: float
    e2e_p50_ms: float | None = None
    e2e_p99_ms: float | None = None
    #: False once the soak has asked its long run to drain: the run's end (drain, summary,
    #: report) is not growth, and the slopes leave it out
    acquiring: bool = True


@dataclass
class SoakResult:
    ok: bool
    reasons: list[str]
    hours: float
    mode: str
    runs: int
    frames_acquired: int
    frames_lost: int
    checkpoint_bytes_written: int
    slopes: dict[str, float]
    samples: list[Sample] = field(default_factory=list)
    summaries: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["samples"] = [asdict(s) for s in self.samples]
        d["checkpoint_bytes_per_frame"] = (
            self.checkpoint_bytes_written / self.frames_acquired if self.frames_acquired else None
        )
        return d


# ------------------------------------------------------------------ the pure decision


def _slope_per_hour(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per hour; 0 for fewer than 3 points."""
    pts = [(t, v) for t, v in points if v is not None and math.isfinite(v)]
    if len(pts) < 3:
        return 0.0
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mv = sum(v for _, v in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    if var == 0:
        return 0.0
    cov = sum((t - mt) * (v - mv) for t, v in pts)
    return cov / var * 3600.0


def series(samples: list[Sample]) -> dict[str, list[tuple[float, float]]]:
    """Every quantity of the samples as a named (t, value) series."""
    out: dict[str, list[tuple[float, float]]] = {}
    for s in samples:
        for role, gauges in s.processes.items():
            for g in PROCESS_GAUGES:
                if g in gauges:
                    out.setdefault(f"{role}.{g}", []).append((s.t, gauges[g]))
        for name in ("shm_mb", "checkpoint_mb", "disk_used_mb", "e2e_p50_ms", "e2e_p99_ms"):
            v = getattr(s, name)
            if v is not None:
                out.setdefault(name, []).append((s.t, v))
    return out


def slopes(samples: list[Sample], warmup_fraction: float = 0.2) -> dict[str, float]:
    """Slope per hour of every series, over the samples after the warm-up and before the
    long run was asked to drain (its end phase: the summary and the report, not growth)."""
    samples = [s for s in samples if s.acquiring]
    if not samples:
        return {}
    t_end = samples[-1].t
    start = samples[0].t + warmup_fraction * (t_end - samples[0].t)
    kept = [s for s in samples if s.t >= start]
    return {name: _slope_per_hour(pts) for name, pts in series(kept).items()}


def verdict(slope: dict[str, float], thresholds: SoakThresholds, frames_lost: int,
            failures: Iterable[str] = ()) -> tuple[bool, list[str]]:
    """Pass or fail, with every reason: a slope over its threshold, a lost frame, a failed run."""
    limits = {
        "rss_mb": thresholds.rss_mb_per_h, "fds": thresholds.fds_per_h, "threads": thresholds.threads_per_h,
        "shm_mb": thresholds.shm_mb_per_h, "checkpoint_mb": thresholds.checkpoint_mb_per_h,
    }
    reasons = list(failures)
    if frames_lost:
        reasons.append(f"{frames_lost} frame(s) lost (acquired but not written, or dropped)")
    for name, value in sorted(slope.items()):
        gauge = name.rsplit(".", 1)[-1]
        limit = limits.get(gauge)
        if limit is not None and value > limit:
            reasons.append(f"{name} grows {value:.2f}/h (limit {limit:g}/h)")
    return not reasons, reasons


# ------------------------------------------------------------------ sampling (I/O)


def _role(proc) -> str:
    """The stage a process runs, from its title (``appliance: kernel-0 RUN``) or command line."""
    try:
        cmd = proc.cmdline()
    except Exception:  # noqa: BLE001 - a process that just exited
        return f"pid{proc.pid}"
    text = " ".join(cmd)
    if text.startswith("appliance: "):
        parts = text.split()
        return parts[1] if len(parts) > 1 else text
    if "multiprocessing" in text and ("spawn" in text or "resource_tracker" in text):
        kind = "resource_tracker" if "resource_tracker" in text else "worker"
        return f"{kind}-{proc.pid}"  # without a title, a process is known by its pid only
    return "supervisor" if "appliance" in text else f"pid{proc.pid}"


def _shm_mb() -> float:
    total = 0
    try:
        for entry in os.scandir("/dev/shm"):
            if "appliance" in entry.name or entry.name.startswith("sem.appliance"):
                try:
                    total += entry.stat().st_size
                except OSError:
                    pass
    except FileNotFoundError:
        return 0.0
    return total / 1e6


def _tree_mb(path: Path, suffix: str | None = None) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            if suffix is None or name.endswith(suffix):
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except OSError:
                    pass
    return total / 1e6


def _latest_latency(state_root: Path) -> tuple[float | None, float | None]:
    """p50/p99 end-to-end latency from the newest line of the newest run's stats.jsonl."""
    newest = None
    for path in state_root.glob("*/stats.jsonl"):
        if newest is None or path.stat().st_mtime > newest.stat().st_mtime:
            newest = path
    if newest is None:
        return None, None
    try:
        with open(newest, "rb") as f:
            f.seek(max(0, newest.stat().st_size - 65536))
            lines = f.read().splitlines()
    except OSError:
        return None, None
    for line in reversed(lines):
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        from appliance.schema import stage_samples

        writer = next((s.name for s in stage_samples(doc) if s.stage == "writer"), None)
        entry = (doc.get("stages") or {}).get(writer) or {}
        return entry.get("e2e_latency_ms_p50"), doc.get("e2e_latency_ms_p99")
    return None, None


def take_sample(root_pid: int, t: float, data_root: Path, state_root: Path) -> Sample:
    import psutil

    procs: dict[str, dict[str, float]] = {}
    try:
        top = psutil.Process(root_pid)
        members = [top, *top.children(recursive=True)]
    except psutil.NoSuchProcess:
        members = []
    for p in members:
        try:
            with p.oneshot():
                g = {"rss_mb": p.memory_info().rss / 1e6, "fds": float(p.num_fds()), "threads": float(p.num_threads())}
            role = "supervisor" if p.pid == root_pid else _role(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        procs[role] = g
    p50, p99 = _latest_latency(state_root)
    return Sample(
        t=t, processes=procs, shm_mb=_shm_mb(), checkpoint_mb=_tree_mb(state_root, ".ckpt"),
        disk_used_mb=_tree_mb(data_root), e2e_p50_ms=p50, e2e_p99_ms=p99,
    )


# ------------------------------------------------------------------ the runner


PROFILES = {
    # the full chain at 512 px: every stage computes
    "chain": ["source.synthetic.tile_size=512", "source.rate_hz=20"],
    # the generation-1 data path: 2048 px at 100 frames/s, frames passed through
    # (the writer discards: at 0.84 GB/s an hour of raw frames is 3 TB, more than the data disk)
    "gen1": ["source.synthetic.tile_size=2048", "source.rate_hz=100", 'stages.kernel.algorithm="passthrough"',
             "source.synthetic.unique_frames=8", 'stages.writer.mode="null"'],
}
#: a long run's cycles at most: the config's limit, which a real run stays under (the base
#: caller's phasing matrix is cycles x cycles); a longer soak takes more tiles instead, as a
#: larger flow cell would
LONG_RUN_CYCLES = 1000
#: the synthetic chain's frames repeat after this many cycles of every tile in a long run (the
#: source keeps them in memory; rendering every frame of an hour would need tens of GB)
UNIQUE_CYCLES = 8


def tile_numbers(n: int) -> list[int]:
    """``n`` distinct tile numbers in Illumina's LSTT form: 1101..1199, then 1201.., ..."""
    if not 1 <= n <= 891:
        raise ValueError(f"{n} tiles: a soak's long run takes 1..891")
    return [1000 + 100 * (i // 99 + 1) + i % 99 + 1 for i in range(n)]


def long_run_overrides(seconds: float, profile: str, overrides: list[str]) -> list[str]:
    """The overrides that make one run outlast ``seconds``: cycles up to LONG_RUN_CYCLES, and
    as many tiles (2 or more) as the frames of the soak then need; for the chain, frames
    that repeat after UNIQUE_CYCLES cycles (unless ``overrides`` sets unique_frames)."""
    frames = seconds * _frames_per_second(profile, overrides) + 64  # a margin: drained at the end, not run out
    tiles = max(2, -(-int(frames) // (4 * LONG_RUN_CYCLES)))
    cycles = max(8, -(-int(frames) // (4 * tiles)) + 2)
    out = [f"run.cycles={cycles}", f"run.tiles={tile_numbers(tiles)}"]
    if profile == "chain" and not any(o.split("=", 1)[0].strip() == "source.synthetic.unique_frames" for o in overrides):
        out.append(f"source.synthetic.unique_frames={4 * tiles * min(cycles, UNIQUE_CYCLES)}")
    return out


def _frames_per_second(profile: str, overrides: list[str]) -> float:
    rate = 20.0 if profile == "chain" else 100.0
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "source.rate_hz":
            try:
                rate = float(value)
            except ValueError:
                pass
    return rate


def run_soak(
    hours: float,
    root: Path,
    *,
    profile: str = "chain",
    mode: str = "long",
    interval_s: float = 10.0,
    overrides: list[str] | None = None,
    thresholds: SoakThresholds | None = None,
    progress=lambda msg: None,
) -> SoakResult:
    """Soak the pipeline for ``hours`` under ``root`` (data and state) and judge it.

    ``mode="long"``: one run whose cycles outlast the soak, drained (SIGINT) at the end.
    ``mode="runs"``: back-to-back default-length runs until the time is up."""
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r}: expected one of {', '.join(PROFILES)}")
    if mode not in ("long", "runs"):
        raise ValueError(f"mode {mode!r}: expected long or runs")
    thresholds = thresholds or SoakThresholds()
    overrides = [*PROFILES[profile], *(overrides or [])]
    root = Path(root).resolve()
    data_root, state_root = root / "runs", root / "runs" / ".state"
    data_root.mkdir(parents=True, exist_ok=True)
    seconds = hours * 3600.0
    if mode == "long":  # one run that outlasts the soak, drained at its end
        overrides += long_run_overrides(seconds, profile, overrides)
    t0 = time.monotonic()
    samples: list[Sample] = []
    summaries: list[dict] = []
    failures: list[str] = []
    n = 0
    while True:
        n += 1
        summary_path = root / f"summary-{n:04d}.json"
        args = [sys.executable, "-m", "appliance", "run", "--no-offload", "--run-id", f"SOAK{n:04d}",
                "--json", str(summary_path), "--set", f'output.root="{data_root}"', "--set", "control.enabled=false"]
        for item in overrides:
            args += ["--set", item]
        progress(f"run {n}: {' '.join(args[3:])}")
        # the run's log to a file, not a pipe: an hour of log lines would fill a pipe nobody
        # reads until the end, and the run would block on its next line
        log_path = root / f"run-{n:04d}.log"
        log_file = open(log_path, "w")
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log_file, text=True, start_new_session=True)
        try:
            stopped = False
            next_sample = time.monotonic()
            while proc.poll() is None:
                now = time.monotonic()
                if now >= next_sample:
                    sample = take_sample(proc.pid, now - t0, data_root, state_root)
                    samples.append(replace(sample, acquiring=False) if stopped else sample)
                    next_sample = now + interval_s
                if mode == "long" and not stopped and now - t0 >= seconds:
                    proc.send_signal(signal.SIGINT)  # drain: every frame that entered is written
                    stopped = True
                time.sleep(min(1.0, interval_s))
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
            log_file.close()
        err = log_path.read_text(errors="replace")[-4000:]
        if proc.returncode != 0:
            failures.append(f"run {n} exited {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else 'no message'}")
        if summary_path.exists():
            summaries.append(json.loads(summary_path.read_text()))
        if mode == "long" or time.monotonic() - t0 >= seconds or proc.returncode != 0:
            break
    acquired = sum(int(s.get("frames_acquired") or 0) for s in summaries)
    # a drained stop writes every frame that entered, so what is lost is what the camera dropped
    lost = sum(int(s.get("frames_dropped") or 0) for s in summaries)
    ckpt_bytes = sum(int(st.get("checkpoint_bytes") or 0) for s in summaries for st in (s.get("stages") or {}).values()
                     if isinstance(st, dict))
    slope = slopes(samples, thresholds.warmup_fraction)
    ok, reasons = verdict(slope, thresholds, lost, failures)
    return SoakResult(ok=ok, reasons=reasons, hours=(time.monotonic() - t0) / 3600.0, mode=f"{profile}/{mode}",
                      runs=n, frames_acquired=acquired, frames_lost=lost, checkpoint_bytes_written=ckpt_bytes,
                      slopes=slope, samples=samples, summaries=summaries)


# ------------------------------------------------------------------ the report


def _plot(name: str, pts_by_label: dict[str, list[tuple[float, float]]], unit: str) -> str:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 2.6), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    for label, pts in sorted(pts_by_label.items()):
        if pts:
            ax.plot([t / 60 for t, _ in pts], [v for _, v in pts], label=label, lw=1.2)
    ax.set_xlabel("minutes")
    ax.set_ylabel(unit)
    ax.set_title(name, fontsize=10)
    if len(pts_by_label) > 1:
        ax.legend(fontsize=7, loc="upper left", ncol=3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,{data}"></figure>'


def write_report(result: SoakResult, folder: Path) -> Path:
    """``folder/soak.html`` and ``folder/soak.json``: plots, slopes, the verdict."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "soak.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    ser = series(result.samples)
    parts = [
        "<!doctype html><meta charset=utf-8><title>appliance soak</title>",
        "<style>body{font:14px sans-serif;margin:2em}td,th{padding:2px 8px;text-align:left}"
        ".bad{color:#b00}.ok{color:#070}</style>",
        f"<h1>Soak: {html.escape(result.mode)}, {result.hours:.2f} h, {result.runs} run(s)</h1>",
        f"<p class={'ok' if result.ok else 'bad'}><b>{'PASS' if result.ok else 'FAIL'}</b></p>",
    ]
    if result.reasons:
        parts.append("<ul>" + "".join(f"<li class=bad>{html.escape(r)}</li>" for r in result.reasons) + "</ul>")
    per_frame = result.checkpoint_bytes_written / result.frames_acquired if result.frames_acquired else float("nan")
    parts.append(
        f"<p>frames acquired {result.frames_acquired}, lost {result.frames_lost}; checkpoint writes "
        f"{result.checkpoint_bytes_written / 1e6:.1f} MB ({per_frame:.0f} B per frame)</p>"
    )
    for gauge, unit in (("rss_mb", "RSS MB"), ("fds", "open fds"), ("threads", "threads")):
        parts.append(_plot(f"per process: {gauge}", {k.rsplit('.', 1)[0]: v for k, v in ser.items() if k.endswith("." + gauge)}, unit))
    for name, unit in (("shm_mb", "/dev/shm MB"), ("checkpoint_mb", "checkpoints MB"), ("disk_used_mb", "data root MB")):
        parts.append(_plot(name, {name: ser.get(name, [])}, unit))
    parts.append(_plot("end-to-end latency", {"p50": ser.get("e2e_p50_ms", []), "p99": ser.get("e2e_p99_ms", [])}, "ms"))
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.3f}</td></tr>" for k, v in sorted(result.slopes.items()))
    parts.append(f"<h2>Slopes per hour (after the warm-up)</h2><table><tr><th>series</th><th>per hour</th></tr>{rows}</table>")
    path = folder / "soak.html"
    path.write_text("\n".join(parts))
    return path
