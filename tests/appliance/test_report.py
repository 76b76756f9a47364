"""The run report, written from a real small run of the pipeline (with one stage restart)."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import io
import json
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from appliance import report
from appliance.cli import main
from appliance.pipeline import Supervisor
from appliance.report import ReportError, load_stats, write_report
from appliance.runfolder import RunFolder
from tests.runs import small_run_config

RUN_ID = "REPORT"
ALL_FIGURES = {"throughput", "occupancy", "latency", "latency-time", "intensity", "errors", "pf"}
STATS_FIGURES = {"throughput", "occupancy", "latency-time"}
#: drawn when the stats samples carry the stages' live busy fraction
BUSY = "busy"


def config(root: Path, *extra: str):
    return small_run_config(root, *extra)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cfg = config(root)
    # A killed stage gives the report a restart and an alert to show; the output is unchanged.
    sup = Supervisor(cfg, run_id=RUN_ID, faults={"basecall-0": {"kill_after": 30}})
    summary = sup.run()
    # What `appliance run` does with the summary.
    (sup.state_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return cfg, sup.run_dir, sup.state_dir, summary


class _Page(HTMLParser):
    """Collects the figures (id -> img src), the tables (id -> rows of cell text) and warnings."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.figures: dict[str, str] = {}
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self.missing: list[str] = []
        self._figure = self._table = self._row = self._cell = None
        self._in_missing = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self._figure = a["id"].removeprefix("fig-")
        elif tag == "img":
            self.images.append(a["src"])
            if self._figure:
                self.figures[self._figure] = a["src"]
        elif tag == "table":
            self._table = self.tables.setdefault(a["id"], [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "p" and a.get("class") == "missing":
            self._in_missing = True
            self.missing.append("")

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        elif tag == "table":
            self._table = None
        elif tag == "tr" and self._row is not None:
            self._table.append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None:
            self._row.append("".join(self._cell))
            self._cell = None
        elif tag == "p":
            self._in_missing = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_missing:
            self.missing[-1] += data


def check_png(src: str) -> None:
    """A real, non-blank PNG: signature, size, and pixels that are not all one colour."""
    from matplotlib.image import imread

    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1024
    pixels = imread(io.BytesIO(data), format="png")
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert np.ptp(pixels[..., :3]) > 0.5  # something was drawn on the white canvas


def per_cycle_rows(page: _Page) -> tuple[list[list[str]], list[str]]:
    header, *rows = page.tables["per-cycle-error"]
    assert header == ["cycle", "bases called", "no-calls", "errors", "error %"]
    return rows[:-1], rows[-1]


def test_report_of_a_real_run_has_every_plot_drawn(run):
    cfg, run_dir, state_dir, summary = run
    assert summary["restarts"] == {"basecall-0": 1}
    path = write_report(run_dir)
    assert path == state_dir / "report.html"
    assert RunFolder(run_dir).verify() == []  # nothing was added inside the run folder
    page = _Page(path.read_text())
    stats = load_stats(state_dir / "stats.jsonl")
    busy = any(st.get("busy_fraction") is not None for s in stats for st in s["stages"].values())
    assert set(page.figures) == ALL_FIGURES | ({BUSY} if busy else set()), page.missing
    assert len(page.images) == len(page.figures)  # every image is in a figure, all inline
    for src in page.images:
        check_png(src)
    assert page.missing == []
    assert "drops" not in page.figures and "No ring dropped a frame" in path.read_text()
    # One occupancy row per ring the supervisor sampled.
    sampled = {name for s in stats for name in s["rings"]}
    assert {row[0] for row in page.tables["rings"][1:]} == sampled
    assert {name.split(".")[0] for name in sampled} == {"raw", "corrected", "intensities", "calls"}
    # %PF per tile agrees with the run folder's filter files.
    folder = RunFolder(run_dir)
    pf = {row[0]: row for row in page.tables["pf"][1:]}
    for tile in cfg.run.tiles:
        f = folder.read_filter(tile)
        assert pf[str(tile)][1:] == [str(f.size), str(int(f.sum())), f"{100 * f.mean():.1f}"]


def test_report_shows_the_restart_and_every_event(run):
    _cfg, run_dir, _state_dir, summary = run
    page = _Page(write_report(run_dir).read_text())
    integrity = dict(page.tables["integrity"])
    assert integrity["stage restarts"] == "basecall-0 x1"
    assert integrity["checksum failures (frames quarantined)"] == "0"
    events = page.tables["events"][1:]
    assert len(events) == len(summary["events"])
    assert [r[3] for r in events] == [e["message"] for e in summary["events"]]
    assert any("basecall-0 crashed" in r[3] for r in events)
    # the overview names what limited the run, as the summary does
    overview = dict(page.tables["overview"])
    assert summary.get("bottleneck") and overview["bottleneck"] == summary["bottleneck"]["text"]


def test_per_cycle_error_table_matches_the_summary(run):
    cfg, run_dir, _state_dir, summary = run
    page = _Page(write_report(run_dir).read_text())
    rows, total = per_cycle_rows(page)
    assert [int(r[0]) for r in rows] == list(range(1, cfg.run.cycles + 1))
    errors = sum(int(r[3]) for r in rows)
    called = sum(int(r[1]) for r in rows)
    acc = summary["accuracy"]
    assert called == acc["bases_called"] and sum(int(r[2]) for r in rows) == acc["no_calls"]
    assert errors / called == pytest.approx(acc["error_rate"])
    assert float(total[4]) == pytest.approx(100 * acc["error_rate"], abs=0.0005)
    for r in rows:
        assert float(r[4]) == pytest.approx(100 * int(r[3]) / int(r[1]), abs=0.0005)


def test_per_cycle_errors_are_rescored_from_the_config_when_the_summary_lacks_them(run, tmp_path):
    cfg, run_dir, _state_dir, summary = run
    expected = per_cycle_rows(_Page(write_report(run_dir).read_text()))
    older = copy.deepcopy(summary)
    del older["accuracy"]["per_cycle"]  # a summary written before per-cycle scoring
    without = _Page(write_report(run_dir, out=tmp_path / "a.html", summary=older).read_text())
    assert "errors" not in without.figures
    assert any("cycle by cycle" in m for m in without.missing)
    rescored = _Page(write_report(run_dir, out=tmp_path / "b.html", summary=older, config=cfg).read_text())
    assert per_cycle_rows(rescored) == expected
    check_png(rescored.figures["errors"])
    # The wrong config (another tile size) regenerates another truth: refused, not plotted.
    wrong = config(run_dir.parent, "source.synthetic.tile_size=128")
    refused = _Page(write_report(run_dir, out=tmp_path / "c.html", summary=older, config=wrong).read_text())
    assert "errors" not in refused.figures
    assert any("does not reproduce" in m for m in refused.missing)


def test_a_run_without_stats_still_gets_a_report(run, tmp_path):
    _cfg, run_dir, state_dir, _summary = run
    bare = tmp_path / "state"
    bare.mkdir()
    shutil.copy(state_dir / "summary.json", bare / "summary.json")
    path = write_report(run_dir, state_dir=bare)
    assert path == bare / "report.html"
    page = _Page(path.read_text())
    assert set(page.figures) == ALL_FIGURES - STATS_FIGURES
    assert "No ring dropped" not in path.read_text()  # no samples: nothing claimed either way
    for src in page.images:
        check_png(src)
    assert sum("No stats recorded" in m for m in page.missing) == len(STATS_FIGURES)


def test_a_run_that_drops_frames_shows_the_drops_and_alerts(tmp_path):
    # A lossy 8-slot camera ring in front of a slowed preprocess stage: the camera overruns it,
    # the run loses most frames and cannot complete. The report must still tell the story.
    cfg = config(tmp_path, 'edges.raw.policy="drop_newest"', "edges.raw.n_slots=8", "source.prerender=true")  # a camera faster than the stage
    sup = Supervisor(cfg, run_id=RUN_ID, faults={"preprocess-0": {"slow_ms": 20}})
    summary = sup.run()
    assert summary["frames_dropped"] > 0 and summary["run_complete"] is False
    page = _Page(write_report(sup.run_dir, summary=summary).read_text())
    assert {"throughput", "occupancy", "drops", "latency"} <= set(page.figures)
    for src in page.images:
        check_png(src)
    integrity = dict(page.tables["integrity"])
    assert integrity["frames dropped at the camera"] == str(summary["frames_dropped"])
    alerts = {(r[1], r[2]): r for r in page.tables["alerts"][1:]}
    assert ("frames_dropped", "raw.0.0") in alerts
    assert any("run folder is incomplete" in m for m in page.missing)


def test_stats_reader_skips_a_line_cut_short(run, tmp_path):
    _cfg, _run_dir, state_dir, _summary = run
    lines = (state_dir / "stats.jsonl").read_text().splitlines()
    assert len(lines) >= 2
    cut = tmp_path / "stats.jsonl"
    cut.write_text("\n".join(lines) + "\n" + lines[-1][: len(lines[-1]) // 2])
    samples = load_stats(cut)
    assert len(samples) == len(lines)
    assert samples == sorted(samples, key=lambda s: s["t"])
    assert load_stats(tmp_path / "absent.jsonl") == []


def test_nothing_to_report_is_a_clear_error(tmp_path):
    with pytest.raises(ReportError, match="no such run folder"):
        write_report(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="nothing to report"):
        write_report(tmp_path / "empty")


def test_cli_writes_the_report(run, tmp_path, capsys):
    _cfg, run_dir, _state_dir, _summary = run
    out = tmp_path / "sub" / "r.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert ALL_FIGURES <= set(_Page(out.read_text()).figures)
    assert main(["report", str(tmp_path / "absent")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["report", str(run_dir), "--set", "run.cycles=zero"]) == 2
    assert "run.cycles" in capsys.readouterr().err


# -- synthetic stats samples: the figures' numbers, checked on the matplotlib figures ------

T0 = 1_700_000_000.0  # the first sample's epoch time
PERIOD = 0.5  # the supervisor samples at 2 Hz


def sample(k: int, frames: int, stages: dict | None = None, **extra) -> dict:
    """Sample ``k`` (at T0 + k * PERIOD) of a run that has acquired ``frames`` so far."""
    return {
        "t": T0 + k * PERIOD, "state": "acquiring", "frames_acquired": frames,
        "rings": {"raw.0.0": {"read": frames, "written": frames, "drops": 0, "occupancy": 0, "n_slots": 8}},
        "stages": stages or {}, **extra,
    }


def synthetic_run(tmp_path: Path, samples: list[dict]):
    return report._Run(run_dir=tmp_path, state_dir=tmp_path, run_id="SYNTH", summary=None, stats=samples)


def prerender_bands(ax) -> list[tuple[float, float]]:
    return [(p.get_x(), p.get_x() + p.get_width()) for p in ax.patches if p.get_label() == "pre-render"]


def test_prerender_is_shaded_and_not_drawn_as_zeros(tmp_path):
    # Four samples (2 s) with nothing acquired while the source pre-renders, then 80 frames/s.
    samples = [sample(k, 0) for k in range(4)] + [sample(k, 40 * (k - 3)) for k in range(4, 12)]
    assert report._prerender_count(samples) == 4
    fig, end = report._throughput_plot(synthetic_run(tmp_path, samples))
    assert end == pytest.approx(4 * PERIOD)
    ax_f, ax_r = fig.axes
    for ax in (ax_f, ax_r):
        assert prerender_bands(ax) == [(0.0, pytest.approx(end))]
        assert "pre-render" in ax.get_legend_handles_labels()[1]
    drawn = [line for line in ax_f.lines if len(line.get_xdata())]
    assert drawn
    for line in drawn:  # no point inside the band: the first rate is at its end, and not zero
        x, y = np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float)
        assert x.min() == pytest.approx(end)
        assert np.all(np.isfinite(y)) and y.min() == pytest.approx(80.0)
    # A sample saying prerender counts too; one that acquired a frame ends the period.
    assert report._prerender_count([sample(0, 0, state="starting", prerender=True), sample(1, 4, prerender=True)]) == 1
    assert report._prerender_count([sample(0, 3), sample(1, 0)]) == 0
    # The source's first live report still says 0 acquired with frames already on the camera
    # ring (as in the real run's samples): the ring's counters end the period.
    early = sample(1, 0, rings={"raw.0.0": {"read": 0, "written": 12, "drops": 0, "occupancy": 12, "n_slots": 64}})
    assert report._prerender_count([sample(0, 0), early, sample(2, 55)]) == 1
    fig, end = report._throughput_plot(synthetic_run(tmp_path, samples[4:]))
    assert end is None and all(prerender_bands(ax) == [] for ax in fig.axes)


def exact(wall: float, busy: float, restarts: int = 0) -> dict:
    return {"wall_s": wall, "busy_s": busy, "busy_fraction": busy / wall, "restarts": restarts}


def test_busy_is_per_interval_not_cumulative(tmp_path):
    # kernel-0 (since T0 - 1 s) works 10% of the time until T0 + 2 s, then 90%: cumulative,
    # that is 53% at the end. basecall-0 works 20%, is restarted between two samples
    # (T0 + 2.75 s) and then works 50%.
    samples = []
    for k in range(12):
        t = k * PERIOD
        wall = t + 1.0
        busy = 0.1 * min(wall, 3.0) + 0.9 * max(wall - 3.0, 0.0)
        basecall = exact(t + 1.0, 0.2 * (t + 1.0)) if k < 6 else exact(t - 2.75, 0.5 * (t - 2.75), restarts=1)
        samples.append(sample(k, 10 * k + 10, {"kernel-0": exact(wall, busy), "basecall-0": basecall}))
    assert samples[-1]["stages"]["kernel-0"]["busy_fraction"] == pytest.approx(3.45 / 6.5)
    series, estimated = report._busy_intervals(samples)
    assert not estimated
    (kernel,) = series["kernel-0"]
    assert kernel[0] == (pytest.approx(-1.0), 0.0, pytest.approx(0.1))
    assert [(end, f) for _start, end, f in kernel] == [(pytest.approx(k * PERIOD), pytest.approx(0.1 if k <= 4 else 0.9)) for k in range(12)]
    before, after = series["basecall-0"]  # the restart: two segments, no interval spans it
    assert [f for *_, f in before] == [pytest.approx(0.2)] * 6
    assert [f for *_, f in after] == [pytest.approx(0.5)] * 6
    assert after[0][0] == pytest.approx(2.75) and before[-1][1] == pytest.approx(5 * PERIOD)
    fig, estimated, _end = report._busy_plot(synthetic_run(tmp_path, samples))
    (ax,) = fig.axes
    line = next(line for line in ax.lines if line.get_label() == "kernel-0")
    y = np.asarray(line.get_ydata(), float)
    assert y[np.isfinite(y)][-1] == pytest.approx(90.0)  # the last interval, not the 53% average


def test_busy_per_interval_from_the_cumulative_fraction_alone(tmp_path):
    # What the supervisor's samples carry today: busy_fraction only, refreshed every second
    # (every other sample repeats the last report). preprocess-0 started half a period before
    # the first sample, worked 20% until T0 + 2 s and 80% after.
    samples = []
    frac = None
    for k in range(10):
        t = k * PERIOD
        if k % 2 == 0:
            wall = t + PERIOD / 2
            frac = (0.2 * min(t, 2.0) + 0.8 * max(t - 2.0, 0.0) + 0.2 * PERIOD / 2) / wall
        samples.append(sample(k, 10 * k + 10, {"preprocess-0": {"busy_fraction": frac, "restarts": 0, "frames_in": 10 * (k // 2)}}))
    series, estimated = report._busy_intervals(samples)
    assert estimated
    (seg,) = series["preprocess-0"]
    assert [s[:2] for s in seg] == [(pytest.approx(-0.25), 0.0), (0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    assert [f for *_, f in seg] == [pytest.approx(v) for v in (0.2, 0.2, 0.2, 0.8, 0.8)]


def test_latency_over_time_is_plotted_per_sample(tmp_path):
    p50 = [None, None, 3.0, 4.0, 4.0, 5.0]
    samples = [
        sample(k, 0 if k < 2 else 10 * k, {
            "kernel-0": {"stage_latency_ms_p50": p50[k], "stage_latency_ms_p99": p50[k] and 10 * p50[k]},
            "writer-0": {"e2e_latency_ms_p50": p50[k] and 50 * p50[k], "e2e_latency_ms_p99": p50[k] and 100 * p50[k]},
        }, e2e_latency_budget_ms=2000.0)
        for k in range(6)
    ]
    fig, end = report._latency_plot(synthetic_run(tmp_path, samples))
    assert end == pytest.approx(2 * PERIOD)
    ax_s, ax_e = fig.axes
    lines = {line.get_label(): np.asarray(line.get_ydata(), float) for ax in fig.axes for line in ax.lines}
    want = np.array([np.nan if v is None else v for v in p50], float)
    np.testing.assert_array_equal(lines["kernel-0 p50"], want)
    np.testing.assert_array_equal(lines["kernel-0 p99"], 10 * want)
    np.testing.assert_array_equal(lines["writer-0 e2e p50"], 50 * want)
    np.testing.assert_array_equal(lines["writer-0 e2e p99"], 100 * want)
    assert "e2e p99 budget 2000 ms" in lines
    assert all(prerender_bands(ax) for ax in (ax_s, ax_e))
    assert report._latency_plot(synthetic_run(tmp_path, [sample(k, k) for k in range(3)])) == (None, None)


# -- the real run, altered: a NaN intensity, a budget alert, the local clock ----------------


def test_intensity_means_skip_a_nan_cluster(run, tmp_path):
    cfg, run_dir, state_dir, _summary = run
    copy_dir = tmp_path / RUN_ID
    shutil.copytree(run_dir, copy_dir)
    folder = RunFolder(copy_dir)
    tiles = list(cfg.run.tiles)

    def rewrite(tile: int, cycle: int, change) -> None:
        a = folder.read_intensities(tile, cycle).copy()
        assert np.isfinite(a).all()
        change(a)
        path = copy_dir / folder.layout.intensities(tile, cycle)
        path.chmod(0o644)  # the run folder's files may be read-only once final
        np.save(path, a)

    rewrite(tiles[0], 1, lambda a: a.__setitem__((0, 0), np.nan))  # one cluster out of frame
    for tile in tiles:  # cycle 2: channel C all NaN, a gap
        rewrite(tile, 2, lambda a: a.__setitem__((slice(None), 1), np.nan))
    page = _Page(write_report(copy_dir, state_dir=state_dir, out=tmp_path / "r.html").read_text())
    header, *rows = page.tables["intensity"]
    assert header == ["cycle", "A", "C", "G", "T"]
    assert [int(r[0]) for r in rows] == list(range(1, cfg.run.cycles + 1))
    pooled = np.concatenate([folder.read_intensities(t, 1) for t in tiles]).astype(np.float64)
    assert np.isnan(pooled.mean(axis=0)[0])  # what the plain mean made of cycle 1, channel A
    a_mean = float(rows[0][1])
    assert np.isfinite(a_mean) and a_mean == pytest.approx(np.nanmean(pooled[:, 0]), rel=1e-3)
    assert rows[1][2] == "-"  # cycle 2, channel C: no finite value, a gap
    assert all(np.isfinite(float(rows[1][k])) for k in (1, 3, 4))
    check_png(page.figures["intensity"])


def budget_rows(page: _Page) -> dict[str, str]:
    header, *rows = page.tables["stages"]
    col = header.index("budget")
    return {r[0]: r[col] for r in rows}


def test_budget_column_agrees_with_an_alert_still_active(run, tmp_path):
    cfg, run_dir, _state_dir, summary = run
    quiet = copy.deepcopy(summary)
    quiet["events"] = [e for e in quiet["events"] if "budget" not in e.get("rule", "")]
    for name in ("kernel-0", "basecall-0"):
        quiet["stages"][name]["busy_s"] = 0.0  # well within budget on average
    before = budget_rows(_Page(write_report(run_dir, out=tmp_path / "a.html", summary=quiet, config=cfg).read_text()))
    assert before["kernel-0"] == "ok" and before["basecall-0"] == "ok"
    alerted = copy.deepcopy(quiet)
    t = alerted["events"][-1]["t"]
    raised = {"kind": "alert", "rule": "stage_over_budget", "severity": "warning", "first_seen": t}
    alerted["events"] += [
        {**raised, "t": t, "subject": "kernel-0", "message": "stage kernel-0: only 60% of frames within its 250.0 ms budget"},
        {**raised, "t": t, "subject": "basecall-0", "message": "stage basecall-0: only 90% of frames within its 100.0 ms budget"},
        {"t": t + 1, "kind": "event", "rule": "stage_over_budget", "subject": "basecall-0", "message": "cleared", "cleared": t + 1},
    ]
    after = budget_rows(_Page(write_report(run_dir, out=tmp_path / "b.html", summary=alerted, config=cfg).read_text()))
    assert after["kernel-0"] == "over (stage_over_budget active at the end)"
    assert after["basecall-0"] == "ok"  # its alert cleared


@pytest.fixture
def zone(monkeypatch):
    """The host's local zone set to XYZ, three hours east of UTC (a POSIX TZ: no tzdata)."""
    monkeypatch.setenv("TZ", "XYZ-03")
    time.tzset()
    yield "XYZ", dt.timezone(dt.timedelta(hours=3))
    monkeypatch.undo()
    time.tzset()


def test_times_are_local_clock_times_with_the_zone(run, tmp_path, zone):
    _cfg, run_dir, _state_dir, summary = run
    name, tz = zone
    alerted = copy.deepcopy(summary)
    t = float(alerted["events"][-1]["t"]) + 0.25
    alerted["events"] += [
        {"t": t, "kind": "alert", "rule": "ring_high", "subject": "raw.0.0", "severity": "warning", "message": "raw.0.0 80% full", "first_seen": t},
        {"t": t + 1.5, "kind": "event", "rule": "ring_high", "subject": "raw.0.0", "message": "cleared: raw.0.0 80% full", "cleared": t + 1.5},
    ]
    text = write_report(run_dir, out=tmp_path / "r.html", summary=alerted).read_text()
    page = _Page(text)

    def clock(t: float) -> str:
        return dt.datetime.fromtimestamp(t, tz).strftime("%H:%M:%S.%f")[:-3] + f" {name}"

    header, *events = page.tables["events"]
    assert header[0] == "local time"
    assert [r[0] for r in events] == [clock(float(e["t"])) for e in alerted["events"]]
    header, *alerts = page.tables["alerts"]
    assert header[3:5] == ["first seen (local time)", "cleared (local time)"]
    row = next(r for r in alerts if r[1] == "ring_high")
    assert row[3:5] == [clock(t), clock(t + 1.5)]
    assert "UTC" not in re.sub(r'src="data:[^"]*"', "", text)  # base64 images may spell anything
