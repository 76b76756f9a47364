"""The run report, written from a real small run of the pipeline (with one stage restart)."""

from __future__ import annotations

import base64
import copy
import io
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from appliance.cli import main
from appliance.pipeline import Supervisor
from appliance.report import ReportError, load_stats, write_report
from appliance.runfolder import RunFolder
from tests.runs import small_run_config

RUN_ID = "REPORT"
ALL_FIGURES = {"throughput", "occupancy", "latency", "intensity", "errors", "pf"}
STATS_FIGURES = {"throughput", "occupancy"}
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
