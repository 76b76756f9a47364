"""The soak harness: its pure decision over sample series, and a short real soak."""

from __future__ import annotations

import json

import pytest

from appliance.soak import Sample, SoakThresholds, run_soak, slopes, verdict, write_report


def _samples(rss_per_h: float, hours: float = 1.0, n: int = 61, fds: float = 20.0) -> list[Sample]:
    out = []
    for i in range(n):
        t = hours * 3600 * i / (n - 1)
        out.append(Sample(t=t, processes={"kernel-0": {"rss_mb": 100 + rss_per_h * t / 3600, "fds": fds, "threads": 4.0}},
                          shm_mb=50.0, checkpoint_mb=0.2, disk_used_mb=10 * i, e2e_p99_ms=30.0))
    return out


def test_slopes_are_per_hour_after_the_warmup():
    s = slopes(_samples(12.0))
    assert s["kernel-0.rss_mb"] == pytest.approx(12.0)
    assert s["kernel-0.fds"] == 0.0 and s["shm_mb"] == 0.0
    assert s["disk_used_mb"] == pytest.approx(600.0)  # reported, but the disk may grow: no limit
    # a start-up jump inside the warm-up does not count as growth
    samples = _samples(0.0)
    for early in samples[:5]:
        early.processes["kernel-0"]["rss_mb"] = 10.0
    assert slopes(samples, warmup_fraction=0.2)["kernel-0.rss_mb"] == pytest.approx(0.0)
    assert slopes(samples, warmup_fraction=0.0)["kernel-0.rss_mb"] > 10


def test_verdict_names_every_reason():
    ok, reasons = verdict(slopes(_samples(3.0)), SoakThresholds(), frames_lost=0)
    assert ok and reasons == []
    ok, reasons = verdict(slopes(_samples(8.0)), SoakThresholds(), frames_lost=2, failures=["run 1 exited 1: boom"])
    assert not ok
    assert reasons[0] == "run 1 exited 1: boom"
    assert "2 frame(s) lost" in reasons[1]
    assert any(r.startswith("kernel-0.rss_mb grows 8.00/h (limit 5/h)") for r in reasons)
    assert verdict({}, SoakThresholds(), 0) == (True, [])


def test_a_short_real_soak_samples_every_process_and_writes_its_report(tmp_path):
    result = run_soak(
        0.0025, tmp_path / "soak", profile="gen1", interval_s=1.0,
        overrides=["source.synthetic.tile_size=256", "source.rate_hz=40"],
        thresholds=SoakThresholds(rss_mb_per_h=1e9, fds_per_h=1e9, threads_per_h=1e9, shm_mb_per_h=1e9, checkpoint_mb_per_h=1e9),
    )
    assert result.runs == 1 and result.frames_acquired > 0 and result.frames_lost == 0, result.reasons
    assert result.ok, result.reasons  # with limits nothing real can pass, it passes
    assert len(result.samples) >= 5
    roles = set().union(*(s.processes for s in result.samples))
    assert "supervisor" in roles and len(roles) >= 5  # the supervisor and its stage processes
    assert any(s.shm_mb > 0 for s in result.samples)  # the rings, while they exist
    report = write_report(result, tmp_path / "report")
    assert report.read_text().count("<img") == 7
    doc = json.loads((tmp_path / "report" / "soak.json").read_text())
    assert doc["frames_acquired"] == result.frames_acquired and doc["samples"]
    # the soak leaves no process behind: the run drained and exited
    assert result.summaries and result.summaries[0]["frames_dropped"] == 0


def test_unknown_profile_or_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="profile 'gen3'"):
        run_soak(0.01, tmp_path, profile="gen3")
    with pytest.raises(ValueError, match="mode 'forever'"):
        run_soak(0.01, tmp_path, mode="forever")


def test_a_long_soak_takes_more_tiles_not_more_cycles_than_a_run_may_have():
    from appliance.config import load_config
    from appliance.soak import LONG_RUN_CYCLES, PROFILES, long_run_overrides, tile_numbers

    for profile, rate in (("chain", 20), ("gen1", 100)):
        extra = long_run_overrides(3600, profile, list(PROFILES[profile]))
        cfg = load_config(overrides=[*PROFILES[profile], *extra])  # a config that loads
        assert cfg.run.cycles <= LONG_RUN_CYCLES and len(cfg.run.tiles) > 2
        assert len(cfg.run.tiles) * cfg.run.cycles * 4 >= 3600 * rate  # it outlasts the hour
    # the chain's frames repeat after a few cycles of every tile (a bounded pool), gen1's after 8
    chain = load_config(overrides=[*PROFILES["chain"], *long_run_overrides(3600, "chain", list(PROFILES["chain"]))])
    assert chain.source.synthetic.unique_frames == 4 * len(chain.run.tiles) * 8
    # a short soak keeps the default two tiles
    assert long_run_overrides(60, "chain", [])[:2] == ["run.cycles=160", "run.tiles=[1101, 1102]"]
    assert tile_numbers(100)[98:] == [1199, 1201]
    with pytest.raises(ValueError):
        tile_numbers(0)


def test_the_slopes_leave_out_the_long_runs_end():
    """After the soak asks its long run to drain, the run writes its summary and report (more
    memory for a while): not growth. Those samples are kept for the plots, not the slopes."""
    import dataclasses

    from appliance.soak import slopes

    flat = [dataclasses.replace(s, processes={"supervisor": {"rss_mb": 75.0, "fds": 20.0, "threads": 4.0}}) for s in _samples(0.0)]
    end = [dataclasses.replace(s, t=3600 + 60 * (i + 1), processes={"supervisor": {"rss_mb": 400.0, "fds": 20.0, "threads": 4.0}},
                               acquiring=False) for i, s in enumerate(flat[:3])]
    assert abs(slopes(flat + end)["supervisor.rss_mb"]) < 1e-6
    assert slopes(flat + [dataclasses.replace(e, acquiring=True) for e in end])["supervisor.rss_mb"] > 5
