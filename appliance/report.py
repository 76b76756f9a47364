"""The run report: one self-contained HTML page with the plots and tables of a run.

``write_report(run_dir)`` reads the run folder (intensities, pass filter, base calls), the
run's state folder (``summary.json``, the ``stats.jsonl`` time series, ``alerts.jsonl``) and
writes ``ROOT/.state/RUN_ID/report.html``: outside the run folder, whose manifest is final.
Plots are matplotlib PNGs embedded as base64, drawn on the Agg canvas directly (no pyplot,
so no global backend state). Whatever a run did not record (no stats for an old run, no run
folder for a passthrough run, no ground truth for a camera run) is said in its section
instead of failing the report. See docs/report.md.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from appliance.schema import EDGES, PIPELINE, StatsSample, ring_samples, stage_samples

__all__ = ["ReportError", "default_state_dir", "load_stats", "write_report", "REPORT_NAME"]

REPORT_NAME = "report.html"
CHANNELS = ("A", "C", "G", "T")
#: ring occupancy the issue's alert rule calls high (drawn on the occupancy plot)
OCCUPANCY_ALERT = 0.75
#: throughput is averaged over this trailing window: stages work a cycle at a time
RATE_WINDOW_S = 2.0
#: the events table shows at most this many (the latest)
MAX_EVENT_ROWS = 2000
#: edges whose items are camera frames; the others carry one record per tile-cycle
_FRAME_EDGES = ("raw", "corrected")
_CHANNEL_COLORS = {"A": "tab:green", "C": "tab:blue", "G": "black", "T": "tab:red"}


class ReportError(Exception):
    """The report cannot be written; the message names the problem and the fix."""


def default_state_dir(run_dir: Path) -> Path:
    """Where ``appliance run`` keeps a run's state by default: ``ROOT/.state/RUN_ID``."""
    run_dir = Path(run_dir)
    return run_dir.parent / ".state" / run_dir.name


def load_stats(path: Path) -> list[dict]:
    """The samples of a ``stats.jsonl`` time series, oldest first ([] when there is none).

    A line cut short by a crash mid-write is skipped, not an error: the rest is still useful.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    samples = []
    for line in text.splitlines():
        try:
            s = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(s, dict) and isinstance(s.get("t"), (int, float)):
            samples.append(s)
    samples.sort(key=lambda s: s["t"])
    return samples


# -- gathering -----------------------------------------------------------------------------


@dataclass
class _Run:
    run_dir: Path
    state_dir: Path
    run_id: str
    summary: dict | None
    stats: list[dict]
    folder: Any = None  # RunFolder, or None when there is no RunInfo.xml (passthrough run)
    folder_problem: str = ""
    config: Any = None
    notes: list[str] = field(default_factory=list)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path} is not valid JSON ({exc}); remove it or rerun the run") from None


def _events(run: _Run) -> list[dict]:
    if run.summary is not None:
        return list(run.summary.get("events") or [])
    # No summary (the supervisor died): the stages' own alerts are still on disk.
    events = []
    try:
        lines = (run.state_dir / "alerts.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(ev, dict):
            events.append(ev)
    return events


# -- figures -------------------------------------------------------------------------------


def _figure(height: float = 3.2, nrows: int = 1, sharex: bool = False):
    # Figure + FigureCanvasAgg directly: the Agg backend explicitly, and no pyplot state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=sharex, squeeze=False)[:, 0]
    return fig, list(axes)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.canvas.print_png(buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _edge_totals(sample: dict, key: str) -> dict[str, float]:
    """Sum one ring counter (written, read, drops, occupancy) over the replicas of each edge."""
    out: dict[str, float] = {}
    for r in ring_samples(sample):
        out[r.edge] = out.get(r.edge, 0) + getattr(r, key)
    return out


def _kinds(stats: list[dict]) -> dict[str, str]:
    """Process name -> its stage, and ring key -> its edge, as the samples say (appliance.schema)."""
    out: dict[str, str] = {}
    for s in stats:
        out.update({st.name: st.stage for st in stage_samples(s)})
        out.update({r.key: r.edge for r in ring_samples(s)})
    return out


def _windowed_rate(t: np.ndarray, count: np.ndarray, window: float | None = None) -> np.ndarray:
    """Rate of a counter at each sample after the first, over the trailing ``window`` seconds."""
    window = RATE_WINDOW_S if window is None else window
    start = np.searchsorted(t, t - window, side="left")
    start = np.minimum(start, np.arange(len(t)) - 1)[1:]  # at least one sample back
    end = np.arange(1, len(t))
    span = t[end] - t[start]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(span > 0, (count[end] - count[start]) / span, np.nan)


def _restart_times(stats: list[dict], t0: float) -> list[tuple[float, str]]:
    """(time, stage) whenever a stage's restart count went up between two samples."""
    seen: dict[str, int] = {}
    out = []
    for s in stats:
        for stage, st in (s.get("stages") or {}).items():
            n = int(st.get("restarts", 0))
            if n > seen.get(stage, 0):
                out.append((s["t"] - t0, stage))
            seen[stage] = max(n, seen.get(stage, 0))
    return out


def _time_label(stats: list[dict]) -> str:
    """The time axis of the time-series plots: seconds since the first sample, whose local
    clock time (and zone) it names, so a point can be matched with the events table."""
    t0 = float(stats[0]["t"])
    return f"seconds since the first sample ({_dt.datetime.fromtimestamp(t0).astimezone():%Y-%m-%d} {_clock(t0)})"


def _prerendering(sample: dict) -> bool:
    """True for a sample taken before the camera's first frame: nothing acquired yet while
    the source renders its frames ahead (state acquiring or prerendering, or a sample that
    says ``prerender``). Such a sample's zeros are not a stall. The camera rings count too:
    ``frames_acquired`` is the source's live count, whose first report (sent with its first
    frame) still says 0, so a frame on a ``raw`` ring ends the period even when it is 0."""
    if sample.get("frames_acquired"):
        return False
    if _edge_totals(sample, "written").get("raw", 0) + _edge_totals(sample, "drops").get("raw", 0):
        return False
    return sample.get("state") in ("acquiring", "prerendering") or bool(sample.get("prerender"))


def _prerender_count(stats: list[dict]) -> int:
    """How many samples at the start of the run are pre-render samples (0 when none)."""
    n = 0
    while n < len(stats) and _prerendering(stats[n]):
        n += 1
    return n


def _shade_prerender(run: _Run, axes) -> float | None:
    """Shade the pre-render period, labelled, on time-series axes; its end in seconds since
    the first sample (at the first sample that saw a frame acquired), None when there is none."""
    n = _prerender_count(run.stats)
    if not n:
        return None
    end = float(run.stats[min(n, len(run.stats) - 1)]["t"] - run.stats[0]["t"])
    for ax in axes:
        ax.axvspan(0.0, end, color="0.85", lw=0, zorder=0, label="pre-render")
    return end


def _prerender_note(end: float | None) -> str:
    return "" if end is None else f" The grey band is the pre-render period (the first {end:.1f} s: no frame acquired yet)."


def _throughput_plot(run: _Run):
    """The throughput figure (two panels: camera frames, tile-cycle records), and the end of
    the pre-render period (None when there is none). Rates start at the last pre-render
    sample: before the first frame nothing flows, and seconds of zeros are not a stall."""
    stats = run.stats
    t = np.array([s["t"] for s in stats], dtype=float)
    t0 = t[0]
    first = max(_prerender_count(stats) - 1, 0)  # windows reach back no further than this
    tr_, x = t[first:], t[first + 1:] - t0
    fig, (ax_f, ax_r) = _figure(5.0, 2, sharex=True)
    prerender = _shade_prerender(run, (ax_f, ax_r))
    acquired = np.array([s.get("frames_acquired", 0) for s in stats[first:]], dtype=float)
    ax_f.plot(x, _windowed_rate(tr_, acquired), label="acquired (camera)", color="tab:gray", lw=2)
    edges = sorted({e for s in stats for e in _edge_totals(s, "read")}, key=lambda e: list(EDGES).index(e) if e in EDGES else 99)
    for edge in edges:
        read = np.array([_edge_totals(s, "read").get(edge, 0) for s in stats[first:]], dtype=float)
        ax = ax_f if edge in _FRAME_EDGES else ax_r
        ax.plot(x, _windowed_rate(tr_, read), label=f"{edge} -> {EDGES[edge][1] if edge in EDGES else '?'}")
    for tr, stage in _restart_times(stats, t0):
        for ax in (ax_f, ax_r):
            ax.axvline(tr, color="tab:red", ls=":", lw=1)
        ax_f.annotate(f"restart {stage}", (tr, 0), xytext=(3, 3), textcoords="offset points", color="tab:red", fontsize=8)
    ax_f.set_xlim(0, max(float(t[-1] - t0), 1e-3))
    ax_f.set_ylabel("camera frames/s")
    ax_r.set_ylabel("tile-cycle records/s")
    ax_r.set_xlabel(_time_label(stats))
    for ax in (ax_f, ax_r):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="upper right")
    return fig, prerender


def _throughput_section(run: _Run) -> str:
    stats = run.stats
    if len(stats) < 2:
        return _no_stats(run, "throughput over time")
    fig, prerender = _throughput_plot(run)
    period = float(np.median(np.diff([s["t"] for s in stats])))
    cap = (
        f"Items consumed per second on each ring, averaged over the trailing {RATE_WINDOW_S:.0f} s, "
        f"from {len(stats)} samples of the rings' counters (one every {period:.1f} s); stages work "
        "a cycle at a time, so shorter windows mostly show that rhythm. The top panel counts camera frames (one per channel per tile "
        "per cycle); the bottom panel counts the per-tile-cycle records after cluster extraction. "
        "Dotted red lines mark stage restarts." + _prerender_note(prerender)
    )
    return _figure_html("Throughput over time", fig, cap, "throughput") + _busy_figure(run)


def _busy_intervals(stats: list[dict]) -> tuple[dict[str, list[list[tuple[float, float, float]]]], bool]:
    """Per stage, the share of each interval between two of its live reports that it spent
    busy: segments (one per stage process) of (start, end, fraction), in seconds since the
    first sample; and whether wall times had to be estimated.

    A stage's ``busy_fraction`` is cumulative (busy_s / wall_s since its process started):
    plotted as is it flattens out as the run goes and hides a stage that turned into the
    bottleneck late. The interval's own figure is (busy_s delta) / (wall_s delta): exact
    where the samples carry ``busy_s`` and ``wall_s``; busy_s is ``busy_fraction * wall_s``
    where they carry only those; with ``busy_fraction`` alone (the samples of a run from
    before the supervisor sampled busy_s and wall_s) wall_s is estimated as the time since
    the process started, half-way between the two samples around its (re)start. A stage
    reports about once a second and the samples come twice as often: a sample repeating the
    previous report is no new interval. A restart starts a new segment; no interval spans it.
    """
    out: dict[str, list[list[tuple[float, float, float]]]] = {}
    estimated = False
    if not stats:
        return out, estimated
    t = [float(s["t"]) for s in stats]
    half = 0.5 * float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    names = {n for s in stats for n, st in (s.get("stages") or {}).items() if st.get("busy_fraction") is not None or st.get("busy_s") is not None}
    kinds = _kinds(stats)
    for name in sorted(names, key=lambda n: _stage_sort_key(kinds, n)):
        segments: list[list[tuple[float, float, float]]] = []
        prev = None  # (t, busy_s, wall_s) of this process's last report
        last = None  # the last report seen, to skip a sample that repeats it
        restarts, started = 0, t[0] - half
        for i, s in enumerate(stats):
            st = (s.get("stages") or {}).get(name) or {}
            n = int(st.get("restarts") or 0)
            if n > restarts:  # a new process, counting from zero
                restarts, prev, started = n, None, (t[i - 1] + t[i]) / 2 if i else t[i] - half
            busy, wall, frac = st.get("busy_s"), st.get("wall_s"), st.get("busy_fraction")
            report = (busy, wall, frac, st.get("frames_in"))
            if report == last or (busy is None and frac is None):
                continue
            last = report
            if wall is None:
                estimated = True
                wall = t[i] - started
            wall = float(wall)
            busy = float(busy) if busy is not None else float(frac) * wall
            if prev is not None and wall < prev[2]:  # wall time went back: a new process
                prev = None
            if prev is None:
                prev = (t[i] - wall, 0.0, 0.0)
                segments.append([])
            if wall > prev[2]:
                f = min(max((busy - prev[1]) / (wall - prev[2]), 0.0), 1.0)
                segments[-1].append((prev[0] - t[0], t[i] - t[0], f))
            prev = (t[i], busy, wall)
        out[name] = [seg for seg in segments if seg]
    return out, estimated


def _busy_plot(run: _Run):
    """The per-interval busy figure, whether wall times were estimated, and the pre-render
    end; (None, False, None) when no sample carries a stage's busy time."""
    stats = run.stats
    series, estimated = _busy_intervals(stats)
    series = {n: v for n, v in series.items() if v}
    if not series:
        return None, False, None
    fig, (ax,) = _figure(3.0)
    prerender = _shade_prerender(run, (ax,))
    for name, segments in series.items():
        x, y = [], []
        for seg in segments:  # a step per interval; NaN between processes (a gap)
            for start, end, f in seg:
                x += [start, end]
                y += [100.0 * f, 100.0 * f]
            x.append(np.nan)
            y.append(np.nan)
        ax.plot(x, y, label=name)
    ax.set_ylim(0, 105)
    ax.set_xlim(0, max(float(stats[-1]["t"] - stats[0]["t"]), 1e-3))  # the same time axis as the throughput plot
    ax.set_ylabel("busy, % of each interval")
    ax.set_xlabel(_time_label(stats))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    return fig, estimated, prerender


def _busy_figure(run: _Run) -> str:
    """Each stage's busy share per interval, where the samples carry its busy time."""
    fig, estimated, prerender = _busy_plot(run)
    if fig is None:
        return ""
    cap = (
        "The share of each interval between a stage's live reports (about 1 s) that the stage "
        "process spent working rather than waiting on its rings: busy time gained over wall "
        "time passed, not the average since the stage started. A stage near 100% is the "
        "bottleneck; its input ring fills. Gaps are restarts."
        + (" The samples carry only the cumulative busy fraction, so each stage's wall time is "
           "estimated from the samples' clock (to within half a sample period)." if estimated else "")
        + _prerender_note(prerender)
    )
    return _figure_html("Stage busy per interval", fig, cap, "busy")


def _stage_sort_key(kinds: dict[str, str], name: str):
    stage = kinds.get(name, "")
    return (PIPELINE.index(stage) if stage in PIPELINE else 99, name)


def _occupancy_section(run: _Run) -> str:
    stats = run.stats
    if not stats:
        return _no_stats(run, "ring occupancy over time")
    t0 = stats[0]["t"]
    x = np.array([s["t"] - t0 for s in stats])
    kinds = _kinds(stats)
    names = sorted({n for s in stats for n in (s.get("rings") or {})}, key=lambda n: _ring_sort_key(kinds, n))
    fig, (ax,) = _figure(3.4)
    prerender = _shade_prerender(run, (ax,))
    rows = []
    for name in names:
        occ, drops, written, n_slots = [], 0, 0, 0
        for s in stats:
            r = (s.get("rings") or {}).get(name)
            if r is None:
                occ.append(np.nan)
                continue
            n_slots = max(int(r.get("n_slots", 0)), 1)
            occ.append(100.0 * r.get("occupancy", 0) / n_slots)
            drops, written = int(r.get("drops", 0)), int(r.get("written", 0))
        occ_a = np.array(occ, dtype=float)
        ax.plot(x, occ_a, label=name, drawstyle="steps-post")
        peak = float(np.nanmax(occ_a)) if np.isfinite(occ_a).any() else float("nan")
        above = float(np.mean(occ_a[np.isfinite(occ_a)] > 100 * OCCUPANCY_ALERT)) if np.isfinite(occ_a).any() else 0.0
        rows.append((name, n_slots, f"{peak:.0f}%", f"{above * 100:.0f}%", written, drops))
    ax.axhline(100 * OCCUPANCY_ALERT, color="tab:red", ls="--", lw=1, label=f"{OCCUPANCY_ALERT:.0%} (alert level)")
    ax.set_ylim(0, 105)
    ax.set_ylabel("occupancy, % of slots")
    ax.set_xlabel(_time_label(stats))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right", ncol=2)
    cap = (
        "Slots in use on each ring (edge.producer-replica.consumer-replica) as sampled. A ring that "
        "stays full means the stage that reads it is the bottleneck; the pipeline upstream then "
        "waits (block policy) or drops (drop_newest, the camera edge)." + _prerender_note(prerender)
    )
    table = _table(
        ("ring", "slots", "peak sampled", "samples above alert level", "items written", "drops"),
        rows,
        "rings",
    )
    return _figure_html("Ring occupancy over time", fig, cap, "occupancy") + table + _drops_figure(run, names)


def _drops_figure(run: _Run, names: list[str]) -> str:
    """Cumulative drops per ring over time, drawn only when a ring dropped anything."""
    stats = run.stats
    series = {n: np.array([((s.get("rings") or {}).get(n) or {}).get("drops", np.nan) for s in stats], dtype=float) for n in names}
    series = {n: v for n, v in series.items() if np.nanmax(v, initial=0) > 0}
    if not series:
        return f"<p>No ring dropped a frame in any of the {len(stats)} samples.</p>"
    t0 = stats[0]["t"]
    x = np.array([s["t"] - t0 for s in stats])
    fig, (ax,) = _figure(2.8)
    prerender = _shade_prerender(run, (ax,))
    for n, v in series.items():
        ax.plot(x, v, label=n, drawstyle="steps-post", color="tab:red" if len(series) == 1 else None)
    ax.set_ylabel("frames dropped (cumulative)")
    ax.set_xlabel(_time_label(stats))
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    cap = (
        "Frames each ring refused because it was full (drop_newest policy, normally only the camera "
        "edge): data the run never saw. The tile-cycles they belonged to are incomplete (no-calls)."
        + _prerender_note(prerender)
    )
    return _figure_html("Drops over time", fig, cap, "drops")


def _ring_sort_key(kinds: dict[str, str], name: str):
    edge = kinds.get(name, "")
    return (list(EDGES).index(edge) if edge in EDGES else 99, name)


def _no_stats(run: _Run, what: str) -> str:
    return (
        f'<p class="missing">No stats recorded for {html.escape(what)}: '
        f"{html.escape(str(run.state_dir / 'stats.jsonl'))} is missing or has fewer than two samples "
        "(runs before the supervisor sampled its rings, or a run that ended within a second).</p>"
    )


def _ms(v) -> float:
    """A sampled latency in ms for a log axis: NaN where none was measured yet."""
    return float(v) if isinstance(v, (int, float)) and v > 0 else np.nan


def _latency_plot(run: _Run):
    """Latency over the run: each stage's p50 and p99 (top) and the end-to-end p50 and p99 at
    the writer (bottom), one point per sample; and the pre-render end. None when no sample
    carries a latency (a run from before the stages reported them live)."""
    stats = run.stats
    kinds = _kinds(stats)
    names = sorted({n for s in stats for n, st in (s.get("stages") or {}).items()
                    if st.get("stage_latency_ms_p50") is not None or st.get("stage_latency_ms_p99") is not None},
                   key=lambda n: _stage_sort_key(kinds, n))
    writers = sorted({n for s in stats for n, st in (s.get("stages") or {}).items()
                      if kinds.get(n) == "writer" and st.get("e2e_latency_ms_p99") is not None}, key=lambda n: _stage_sort_key(kinds, n))
    run_p99 = any(s.get("e2e_latency_ms_p99") is not None for s in stats)
    if not names and not writers and not run_p99:
        return None, None
    t0 = stats[0]["t"]
    x = np.array([s["t"] - t0 for s in stats], dtype=float)
    fig, (ax_s, ax_e) = _figure(5.0, 2, sharex=True)
    prerender = _shade_prerender(run, (ax_s, ax_e))

    def series(name: str, key: str) -> np.ndarray:
        return np.array([_ms(((s.get("stages") or {}).get(name) or {}).get(key)) for s in stats])

    for k, name in enumerate(names):
        ax_s.plot(x, series(name, "stage_latency_ms_p50"), color=f"C{k % 10}", label=f"{name} p50")
        ax_s.plot(x, series(name, "stage_latency_ms_p99"), color=f"C{k % 10}", ls="--", label=f"{name} p99")
    for name in writers:
        ax_e.plot(x, series(name, "e2e_latency_ms_p50"), color="tab:purple", label=f"{name} e2e p50")
        ax_e.plot(x, series(name, "e2e_latency_ms_p99"), color="tab:purple", ls="--", label=f"{name} e2e p99")
    if not writers and run_p99:  # only the run's own p99 (the alert rule's input)
        ax_e.plot(x, [_ms(s.get("e2e_latency_ms_p99")) for s in stats], color="tab:purple", ls="--", label="e2e p99")
    budget = next((s.get("e2e_latency_budget_ms") for s in reversed(stats) if s.get("e2e_latency_budget_ms")), None)
    if budget:
        ax_e.axhline(float(budget), color="tab:red", ls=":", lw=1, label=f"e2e p99 budget {float(budget):.0f} ms")
    ax_s.set_ylabel("stage latency, ms")
    ax_e.set_ylabel("end-to-end, ms")
    ax_e.set_xlabel(_time_label(stats))
    ax_s.set_xlim(0, max(float(x[-1]), 1e-3))
    for ax in (ax_s, ax_e):
        if any(np.isfinite(line.get_ydata()).any() for line in ax.lines):
            ax.set_yscale("log")  # milliseconds to seconds: the tail stays readable
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left", ncol=3)
    return fig, prerender


def _latency_time_figure(run: _Run) -> str:
    if len(run.stats) < 2:
        return _no_stats(run, "latency over time")
    fig, prerender = _latency_plot(run)
    if fig is None:
        return ""
    cap = (
        "Latency percentiles as the stages reported them live, one point per sample: each "
        "stage's own time per item (from leaving the previous stage to done here; p50 solid, "
        "p99 dashed) and, below, the end-to-end latency at the writer (acquisition to the run "
        "folder) with its p99 budget. Each point is the percentile over the stage process's "
        "items so far (it starts over at a restart), so a rise shows when the tail grew."
        + _prerender_note(prerender)
    )
    return _figure_html("Latency over time", fig, cap, "latency-time")


def _latency_section(run: _Run) -> str:
    """The run's latency percentiles and stage table (summary), then latency over time (stats)."""
    return _latency_summary(run) + _latency_time_figure(run)


def _latency_summary(run: _Run) -> str:
    s = run.summary or {}
    pct = [(label, s.get(key)) for label, key in (("p50", "latency_ms_p50"), ("p99", "latency_ms_p99"), ("p99.9", "latency_ms_p999"))]
    stages = s.get("stages") or {}
    kinds = {st.name: st.stage for st in stage_samples(s)}
    busy = []
    for name, st in stages.items():
        n = st.get("frames_in") or 0
        if n and st.get("busy_s") is not None:
            busy.append((name, 1000.0 * float(st["busy_s"]) / n))
    if all(v is None for _, v in pct) and not busy:
        return '<p class="missing">No latency recorded: the run has no summary.json (it did not end normally).</p>'
    fig, (ax,) = _figure(2.4)
    if any(v is not None for _, v in pct):
        labels = [p for p, v in pct if v is not None]
        vals = [float(v) for _, v in pct if v is not None]
        bars = ax.barh(labels, vals, color="tab:purple")
        ax.bar_label(bars, fmt="%.1f ms", fontsize=8, padding=3)
        ax.set_xlabel("end-to-end latency, ms (acquisition -> written to the run folder)")
        ax.invert_yaxis()
        ax.set_xlim(0, max(vals) * 1.25 or 1)
    ax.grid(alpha=0.3, axis="x")
    cap = (
        "End-to-end latency percentiles, measured per frame at the writer from the acquisition "
        "timestamp in the frame header to the write into the run folder. The run records these "
        "percentiles, not the full distribution, so this is a percentile chart rather than a "
        "histogram: the gap between p50 and p99.9 is the tail an operator should watch."
    )
    budgets = {}
    if run.config is not None:
        budgets = {name: st.budget_ms for name, st in run.config.stages.items()}
    per_item = dict(busy)
    # A budget alert (stage_over_budget: too few items within budget_ms) still active at the
    # end outranks the mean per item: the column must not say ok while the alert says over.
    over_alerts = {a["subject"]: a["rule"] for a in _alerts(run, _events(run)) if a["cleared"] is None and "budget" in a["rule"]}
    rows = []
    for name, st in stages.items():
        per = per_item.get(name)
        budget = budgets.get(kinds.get(name, ""))  # kernel-0 -> stages.kernel.budget_ms
        kept = "-" if per is None or budget is None else ("over" if per > budget else "ok")
        if name in over_alerts:
            kept = f"over ({over_alerts[name]} active at the end)"
        rows.append(
            (
                name,
                st.get("frames_in", ""),
                st.get("frames_out", ""),
                _fmt(st.get("busy_s"), ".2f"),
                _fmt(per, ".2f"),
                _fmt(budget, ".0f"),
                kept,
                _fmt(st.get("wall_s"), ".1f"),
                st.get("checksum_failures", 0),
                st.get("duplicates", 0),
            )
        )
    table = _table(
        ("stage", "items in", "items out", "busy s", "busy ms per item in", "budget ms", "budget", "wall s", "checksum failures", "duplicates"),
        rows,
        "stages",
    )
    note = "" if budgets else '<p class="note">Per-stage budgets need the run config (pass <code>--config/--set</code> as given to <code>appliance run</code>).</p>'
    return _figure_html("Latency", fig, cap, "latency") + "<h3>Stages</h3>" + table + note


def _intensity_section(run: _Run) -> str:
    if run.folder is None:
        return f'<p class="missing">No per-cycle intensities: {html.escape(run.folder_problem)}</p>'
    from appliance.runfolder import RunFolderError

    info = run.folder.info
    cycles = np.arange(1, info.n_cycles + 1)
    means = np.full((info.n_cycles, len(CHANNELS)), np.nan)
    missing = nan_values = 0
    for c in cycles:
        # NaN-aware (the finite values' sum over their count: np.nanmean over every cluster
        # of the cycle, tiles pooled): a cluster out of frame has NaN intensities, and one
        # must not blank the cycle's point. A channel with no finite value stays NaN: a gap.
        total, n = np.zeros(len(CHANNELS)), np.zeros(len(CHANNELS))
        for tile in info.tiles:
            try:
                a = run.folder.read_intensities(tile, int(c))
            except RunFolderError:
                missing += 1
                continue
            if a.ndim == 2 and a.shape[0]:
                a = a[:, : len(CHANNELS)].astype(np.float64)
                finite = np.isfinite(a)
                total += np.where(finite, a, 0.0).sum(axis=0)
                n += finite.sum(axis=0)
                nan_values += int(a.size - finite.sum())
        means[c - 1] = np.where(n > 0, total / np.maximum(n, 1), np.nan)
    if not np.isfinite(means).any():
        return '<p class="missing">No intensities were written for this run: it stopped, or lost its frames, before any cycle was extracted.</p>'
    fig, (ax,) = _figure(3.2)
    for k, ch in enumerate(CHANNELS):
        ax.plot(cycles, means[:, k], marker="o", ms=3, label=ch, color=_CHANNEL_COLORS[ch])
    ax.set_xlabel("cycle")
    ax.set_ylabel("mean intensity (extracted, a.u.)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=4, loc="upper right")
    cap = (
        f"Mean extracted intensity per channel over every detected cluster of the {len(info.tiles)} "
        "tile(s), cycle by cycle (before crosstalk and phasing correction). A steady decline is "
        "the expected signal decay; a sudden drop in one channel points at focus, fluidics or "
        "that channel's illumination."
        + (f" {missing} tile-cycle file(s) were not written and are left out." if missing else "")
        + (f" {nan_values} intensity value(s) were not a number (a cluster out of frame) and are "
           "left out of the means; a cycle and channel with none left is a gap." if nan_values else "")
    )
    rows = [(int(c), *(_fmt(v, ".4g") if np.isfinite(v) else "-" for v in means[c - 1])) for c in cycles]
    table = _table(("cycle", *CHANNELS), rows, "intensity")
    return _figure_html("Intensity by channel", fig, cap, "intensity") + table


def _per_cycle_errors(run: _Run) -> tuple[list[dict] | None, str]:
    """Per-cycle base-call errors against the synthetic truth, and where they came from."""
    acc = (run.summary or {}).get("accuracy") or {}
    if acc.get("per_cycle"):
        return acc["per_cycle"], "the run summary"
    if (run.summary or {}).get("run_complete") is False or (run.folder is not None and not run.folder.is_complete):
        return None, "no score against ground truth: the run folder is incomplete (the run was stopped or lost frames)"
    cfg = run.config
    if cfg is None:
        if acc:
            return None, ("the run summary scores the run overall only; pass the run config "
                          "(<code>--config/--set</code> as given to <code>appliance run</code>) to score it cycle by cycle")
        return None, "no ground truth: not a synthetic run, or the run config is unknown (pass <code>--config/--set</code> as given to <code>appliance run</code>)"
    if cfg.source.kind != "synthetic":
        return None, "no ground truth: the run came from a camera, not the synthetic instrument"
    if run.folder is None:
        return None, "no score against ground truth: there is no run folder"
    from appliance.pipeline.summary import score_against_truth

    scored = score_against_truth(cfg, run.run_dir)
    differ = [k for k in ("clusters_truth", "bases_called") if k in acc and acc[k] != scored[k]]
    if differ:
        # Another config regenerates another truth: its per-cycle numbers would be fiction.
        return None, (
            "the run config given does not reproduce the run summary's score ("
            + ", ".join(f"{k} {scored[k]} here, {acc[k]} in the summary" for k in differ)
            + "): pass the config the run was started with"
        )
    return scored["per_cycle"], "ground truth regenerated from the run config"


def _error_section(run: _Run) -> str:
    per_cycle, source = _per_cycle_errors(run)
    if not per_cycle:
        return f'<p class="missing">No per-cycle error rate: {source}.</p>'
    cycles = np.array([p["cycle"] for p in per_cycle])
    rate = np.array([100.0 * p["error_rate"] for p in per_cycle])
    errors = sum(int(p["errors"]) for p in per_cycle)
    called = sum(int(p["bases_called"]) for p in per_cycle)
    overall = 100.0 * errors / max(called, 1)
    fig, (ax,) = _figure(3.0)
    ax.bar(cycles, rate, color="tab:orange", label="per cycle")
    ax.axhline(overall, color="black", ls="--", lw=1, label=f"whole run {overall:.2f}%")
    ax.set_xlabel("cycle")
    ax.set_ylabel("base-call error, %")
    ax.set_ylim(0, max(float(rate.max()), overall, 0.1) * 1.2)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left")
    cap = (
        "Base-call errors of pass-filter clusters matched to the synthetic ground truth (within "
        f"1.5 px), cycle by cycle, from {source}. No-calls are not errors; they are counted apart. "
        "Phasing makes errors creep up towards the last cycles; a spike at one cycle points at "
        "that cycle's images (registration, focus, a lost frame)."
    )
    rows = [
        (p["cycle"], p["bases_called"], p["no_calls"], p["errors"], f"{100.0 * p['error_rate']:.3f}")
        for p in per_cycle
    ]
    rows.append(("all", called, sum(int(p["no_calls"]) for p in per_cycle), errors, f"{overall:.3f}"))
    table = _table(("cycle", "bases called", "no-calls", "errors", "error %"), rows, "per-cycle-error")
    return _figure_html("Error rate against ground truth", fig, cap, "errors") + table


def _pf_section(run: _Run) -> str:
    if run.folder is None:
        return f'<p class="missing">No pass-filter data: {html.escape(run.folder_problem)}</p>'
    from appliance.runfolder import RunFolderError

    tiles, pf, n = [], [], []
    for tile in run.folder.info.tiles:
        try:
            f = run.folder.read_filter(tile)
        except RunFolderError:
            continue
        tiles.append(str(tile))
        n.append(int(f.size))
        pf.append(100.0 * float(f.mean()) if f.size else 0.0)
    if not tiles:
        return '<p class="missing">No pass-filter files were written (the run stopped before its template was built).</p>'
    fig, (ax,) = _figure(2.2 + 0.25 * min(len(tiles), 40))
    bars = ax.barh(tiles, pf, color="tab:cyan")
    ax.bar_label(bars, labels=[f"{p:.1f}% of {k}" for p, k in zip(pf, n)], fontsize=8, padding=3)
    ax.set_xlim(0, 118)
    ax.set_xlabel("clusters passing filter (chastity), %")
    ax.set_ylabel("tile")
    ax.invert_yaxis()
    ax.grid(alpha=0.3, axis="x")
    total = sum(p * k for p, k in zip(pf, n)) / max(sum(n), 1)
    cap = f"Share of detected clusters that pass the chastity filter, per tile; {total:.1f}% of {sum(n)} clusters overall."
    rows = [(t, k, round(p * k / 100), f"{p:.1f}") for t, k, p in zip(tiles, n, pf)]
    return _figure_html("%PF per tile", fig, cap, "pf") + _table(("tile", "clusters", "pass filter", "%PF"), rows, "pf")


def _drops_restarts_section(run: _Run) -> str:
    s = run.summary or {}
    restarts = dict(s.get("restarts") or {})
    if not restarts and run.stats:
        restarts = {k: v["restarts"] for k, v in (run.stats[-1].get("stages") or {}).items() if v.get("restarts")}
    drops = s.get("frames_dropped")
    if drops is None and run.stats:
        drops = int(sum(_edge_totals(run.stats[-1], "drops").values()))
    ring_drops = _edge_totals(run.stats[-1], "drops") if run.stats else {}
    rows = [
        ("frames dropped at the camera", _fmt(drops, "d") if drops is not None else "unknown"),
        ("drops per edge (last sample)", ", ".join(f"{e} {int(v)}" for e, v in ring_drops.items()) or "-"),
        ("checksum failures (frames quarantined)", s.get("checksum_failures", "unknown")),
        ("duplicate frames dropped (replays after restarts)", s.get("duplicates_dropped", "unknown")),
        ("tile-cycles incomplete", s.get("incomplete_cycles", "unknown")),
        ("stage restarts", ", ".join(f"{k} x{v}" for k, v in restarts.items()) or "none"),
    ]
    return _table(("", ""), rows, "integrity", header=False)


def _alerts(run: _Run, events: list[dict]) -> list[dict]:
    """One entry per alert (rule, subject): severity, first seen, cleared, from the events
    the supervisor's alert rules logged, else from the alerts active in the stats samples."""
    alerts: dict[tuple, dict] = {}
    for ev in events:
        if "rule" not in ev:
            continue
        key = (ev["rule"], ev.get("subject", ""))
        a = alerts.setdefault(key, {"rule": key[0], "subject": key[1], "severity": "", "first_seen": None, "cleared": None, "message": "", "raised": 0})
        if ev.get("cleared") is not None:
            a["cleared"] = float(ev["cleared"])
            continue
        a["raised"] += 1
        a["severity"] = ev.get("severity", a["severity"])
        a["message"] = ev.get("message", a["message"])
        first = ev.get("first_seen", ev.get("t"))
        if first is not None and (a["first_seen"] is None or float(first) < a["first_seen"]):
            a["first_seen"] = float(first)
        if a["cleared"] is not None and first is not None and float(first) > a["cleared"]:
            a["cleared"] = None  # raised again after it cleared
    if alerts or not run.stats:
        return list(alerts.values())
    active_last = set()
    for s in run.stats:
        active = set()
        for al in StatsSample.from_dict(s).alerts:
            key = (al.rule, al.subject)
            active.add(key)
            first = al.first_seen if al.first_seen is not None else s["t"]
            a = alerts.setdefault(key, {"rule": al.rule, "subject": al.subject, "severity": al.severity, "first_seen": first, "cleared": None, "message": al.message, "raised": 1})
            a["cleared"] = None
        for key in active_last - active:
            alerts[key]["cleared"] = s["t"]
        active_last = active
    return list(alerts.values())


def _clock(t: float | None) -> str:
    """An epoch time as the host's local clock read it, with the zone's name
    (``14:02:07.415 CET``): what an operator compares with the lab's clocks and logs."""
    if t is None:
        return "-"
    local = _dt.datetime.fromtimestamp(float(t)).astimezone()
    return local.strftime("%H:%M:%S.%f")[:-3] + local.strftime(" %Z")


def _events_section(run: _Run) -> str:
    events = _events(run)
    alerts = _alerts(run, events)
    if not events and not alerts:
        return "<p>No events or alerts were recorded.</p>"
    table = ""
    if alerts:
        rows = [
            (a["severity"], a["rule"], a["subject"], _clock(a["first_seen"]), _clock(a["cleared"]) if a["cleared"] is not None else "still active at the end", a["message"])
            for a in sorted(alerts, key=lambda a: a["first_seen"] or 0)
        ]
        table = "<h3>Alerts</h3>" + _table(("severity", "rule", "subject", "first seen (local time)", "cleared (local time)", "message"), rows, "alerts", row_class=lambda r: f"sev-{r[0]}")
    if not events:
        return table
    table += "<h3>Events</h3>"
    t0 = run.stats[0]["t"] if run.stats else min(float(e.get("t", 0)) for e in events)
    n_alerts = sum(1 for e in events if e.get("kind") in ("alert", "error"))
    head = f"<p>{len(events)} event(s), {n_alerts} alert(s) or error(s).</p>"
    if len(events) > MAX_EVENT_ROWS:  # a days-long run: keep the page loadable
        head += f'<p class="note">The first {len(events) - MAX_EVENT_ROWS} events are left out; summary.json has them all.</p>'
        events = events[-MAX_EVENT_ROWS:]
    rows = []
    for ev in events:
        t = float(ev.get("t", 0))
        extra = {k: v for k, v in ev.items() if k not in ("t", "kind", "message")}
        rows.append(
            (
                _clock(t),
                f"{t - t0:+.1f}",
                ev.get("kind", ""),
                ev.get("message", ""),
                ", ".join(f"{k}={v}" for k, v in extra.items()),
            )
        )
    return table + head + _table(("local time", "s", "kind", "message", "details"), rows, "events", row_class=lambda r: f"kind-{r[2]}")


def _profiles_section(run: _Run) -> str:
    from appliance.profile import read_index

    entries = read_index(run.state_dir / "profiles")
    if not entries:
        return "<p>The profiles folder has no index.jsonl entries.</p>"
    rows = [(e.get("started", ""), e.get("tool", ""), e.get("stage", ""), ", ".join(map(str, e["pid"])) if isinstance(e.get("pid"), list) else e.get("pid", ""),
             _fmt(e.get("duration")), e.get("exit_status", ""), e.get("file") or "-", e.get("message") or "") for e in entries]
    return (f"<p>{len(entries)} profile(s) in <code>{html.escape(str(run.state_dir / 'profiles'))}</code> (appliance profile; docs/root-cause.md).</p>"
            + _table(("started (UTC)", "tool", "stage", "pid", "s", "exit status", "file", "message"), rows, "profiles"))


# -- HTML ----------------------------------------------------------------------------------


def _fmt(v, spec: str = ".1f") -> str:
    if v is None:
        return "-"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _table(headers, rows, ident: str, header: bool = True, row_class=None) -> str:
    out = [f'<table id="{ident}">']
    if header:
        out.append("<thead><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in headers) + "</tr></thead>")
    out.append("<tbody>")
    for r in rows:
        cls = f' class="{html.escape(row_class(r))}"' if row_class else ""
        out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _figure_html(title: str, fig, caption: str, ident: str) -> str:
    return f'<figure id="fig-{ident}">{_img(fig, title)}<figcaption>{caption}</figcaption></figure>'


def _overview(run: _Run) -> str:
    s = run.summary
    if s is None:
        return (
            '<p class="missing">No summary.json in '
            f"{html.escape(str(run.state_dir))}: the run did not end normally (or its state was "
            "cleaned); what follows comes from the run folder and the stats alone.</p>"
        )
    acc = s.get("accuracy") or {}
    complete = s.get("run_complete")
    rows = [
        ("output", s.get("output", str(run.run_dir))),
        ("run folder", {True: "complete", False: "incomplete (stopped before every cycle was written)", None: "raw frames only (passthrough)"}.get(complete, str(complete))),
        ("frames acquired / dropped", f"{s.get('frames_acquired', '-')} / {s.get('frames_dropped', '-')}"),
        ("acquisition", f"{_fmt(s.get('acquisition_s'))} s at {_fmt(s.get('frames_per_s'))} frames/s ({_fmt((s.get('gb_per_s') or 0) * 1000)} MB/s)"),
        ("pipeline sustained", f"{_fmt(s.get('pipeline_frames_per_s'))} frames/s, first frame acquired to last written"),
        ("latency p50 / p99 / p99.9", f"{_fmt(s.get('latency_ms_p50'))} / {_fmt(s.get('latency_ms_p99'))} / {_fmt(s.get('latency_ms_p999'))} ms"),
        ("checksum failures", s.get("checksum_failures", "-")),
        ("restarts", sum((s.get("restarts") or {}).values())),
        ("data reduction", f"{_fmt(s.get('data_reduction'))}x"),
        ("wall time", f"{_fmt(s.get('wall_s'))} s"),
        ("bottleneck", _bottleneck_text(run)),
    ]
    if acc:
        rows += [
            ("base-call error (ground truth)", f"{100 * acc.get('error_rate', 0):.3f}% over {acc.get('bases_called', '-')} bases, {acc.get('no_calls', '-')} no-calls"),
            ("clusters detected / truth", f"{acc.get('clusters_detected', '-')} / {acc.get('clusters_truth', '-')} (recall {100 * acc.get('recall', 0):.1f}%)"),
            ("pass filter", f"{100 * acc.get('pass_filter_fraction', 0):.1f}%"),
        ]
    return _table(("", ""), rows, "overview", header=False)


def _bottleneck_text(run: _Run) -> str:
    """What limited the run: the summary's verdict (judged at the end with the host's PSI), or
    judged now from stats.jsonl without PSI (a run that did not end normally)."""
    b = (run.summary or {}).get("bottleneck")
    if isinstance(b, dict) and b.get("text"):
        return str(b["text"])
    from appliance.bottleneck import run_bottleneck

    verdict = run_bottleneck(run.state_dir / "stats.jsonl")
    return f"{verdict.text} (judged from stats.jsonl, without the host's pressure figures)" if verdict else "-"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:62rem;margin:1.5rem auto;padding:0 1rem;color:#222}
h1{font-size:1.5rem;margin-bottom:.2rem} h2{font-size:1.2rem;border-bottom:1px solid #ccc;margin-top:2rem}
h3{font-size:1rem} .sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:.5rem 0;font-size:.85rem} td,th{border:1px solid #ddd;padding:.15rem .5rem;text-align:left}
th{background:#f3f3f3} figure{margin:.5rem 0} figure img{max-width:100%;height:auto} figcaption{font-size:.85rem;color:#444}
.missing{color:#8a5a00;background:#fff6e0;padding:.4rem .6rem;border-left:3px solid #e0a000}
.note{font-size:.85rem;color:#444} .notes p{color:#a00}
tr.kind-alert td,tr.kind-error td,tr.sev-critical td{background:#fde8e8} tr.kind-warning td,tr.sev-warning td{background:#fff6e0}
code{background:#f3f3f3;padding:0 .2rem}
"""


def _html(run: _Run) -> str:
    from appliance._version import __version__

    sections = [
        ("Overview", _overview(run)),
        ("Throughput", _throughput_section(run)),
        ("Rings", _occupancy_section(run)),
        ("Latency and stages", _latency_section(run)),
        ("Intensity by channel", _intensity_section(run)),
        ("Error rate", _error_section(run)),
        ("Pass filter", _pf_section(run)),
        ("Drops, restarts and integrity", _drops_restarts_section(run)),
        ("Events and alerts", _events_section(run)),
    ]
    if (run.state_dir / "profiles").is_dir():  # taken by `appliance profile` while the run ran
        sections.append(("Profiles taken", _profiles_section(run)))
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in run.notes)
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")  # the host's local time
    body = "".join(f"<section><h2>{html.escape(title)}</h2>{content}</section>" for title, content in sections)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>Run report {html.escape(run.run_id)}</title><style>{_CSS}</style></head><body>"
        f"<h1>Run report: {html.escape(run.run_id)}</h1>"
        f'<p class="sub">run folder {html.escape(str(run.run_dir))}; state {html.escape(str(run.state_dir))}; '
        f"written {now} by appliance {html.escape(__version__)}</p>"
        + (f'<div class="notes">{notes}</div>' if notes else "")
        + body
        + "</body></html>\n"
    )


def write_report(
    run_dir: Path,
    state_dir: Path | None = None,
    out: Path | None = None,
    *,
    config=None,
    summary: dict | None = None,
) -> Path:
    """Write the run's HTML report and return its path.

    ``state_dir`` defaults to ``ROOT/.state/RUN_ID`` and ``out`` to ``state_dir/report.html``.
    ``summary`` (the dict ``Supervisor.run()`` returns) and ``config`` (the run's
    ``RunConfig``) are optional: the summary is otherwise read from ``state_dir/summary.json``;
    the config adds per-stage budgets, and per-cycle scoring for a summary that lacks it.
    Raises :class:`ReportError` when there is nothing to report on.
    """
    from appliance.runfolder import RunFolder, RunFolderError

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such run folder; pass ROOT/RUN_ID as written by `appliance run`")
    state_dir = Path(state_dir) if state_dir is not None else default_state_dir(run_dir)
    if summary is None:
        summary = _read_json(state_dir / "summary.json")
    run = _Run(
        run_dir=run_dir,
        state_dir=state_dir,
        run_id=(summary or {}).get("run_id") or run_dir.name,
        summary=summary,
        stats=load_stats(state_dir / "stats.jsonl"),
        config=config,
    )
    try:
        run.folder = RunFolder(run_dir)
        run.folder.info  # noqa: B018 - parse RunInfo.xml now, so a broken one is reported once
    except RunFolderError as exc:
        run.folder, run.folder_problem = None, str(exc)
    except ValueError as exc:  # RunInfo.xml that parses but does not validate
        run.folder, run.folder_problem = None, f"{run_dir / 'RunInfo.xml'}: {exc}"
    if run.folder is None and summary is None and not run.stats:
        raise ReportError(
            f"{run_dir}: nothing to report: no RunInfo.xml ({run.folder_problem}) and no "
            f"summary.json or stats.jsonl in {state_dir}; pass the run folder ROOT/RUN_ID "
            "(and --state-dir where output.state_root was set)"
        )
    text = _html(run)
    out = Path(out) if out is not None else state_dir / REPORT_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)  # a reader never sees half a report
    return out
