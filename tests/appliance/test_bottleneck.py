"""Bottleneck attribution: the pure verdict over loads and pressures, PSI over an interval,
and a real run with a throttled writer named as its bottleneck."""

from __future__ import annotations


import pytest

from appliance.bottleneck import (
    PSI, LiveBottleneck, PressureMeter, StageLoad, attribute, loads_from_stats, psi_between, read_pressure, run_bottleneck,
)


def _chain(**busy) -> list[StageLoad]:
    """A chain whose rings fill ahead of ``full_at`` (the stage given ``in_fill``)."""
    kinds = ["source", "preprocess", "kernel", "basecall", "writer"]
    return [StageLoad(f"{k}-0", k, busy.get(k, 0.1), busy.get(k + "_in", 0.0), busy.get(k + "_out", 0.0)) for k in kinds]


def test_a_camera_paced_run_names_the_camera():
    b = attribute(_chain(kernel=0.4), PSI(cpu=0.05, io=0.01, memory=0.0))
    assert b.stage == "source-0" and b.resource == "camera rate"
    assert b.text == "source-0: the camera's rate limits the run, every stage keeps up; the busiest stage, kernel-0, is 40% busy"


def test_a_slow_writer_on_a_busy_disk_is_bound_by_disk():
    loads = _chain(writer=0.95, writer_in=0.9, basecall_in=0.8, basecall_out=0.9, kernel_out=0.8)
    b = attribute(loads, PSI(cpu=0.1, io=0.4, memory=0.0))
    assert (b.stage, b.resource) == ("writer-0", "disk")
    assert b.text == "writer-0 bound by disk (95% busy, input rings full 90% of the time, I/O pressure 40%)"
    # the same writer without I/O pressure: its own writes (a slow file system, fsyncs)
    assert attribute(loads, PSI(io=0.01)).resource == "disk writes"


def test_a_throttled_kernel_upstream_of_idle_stages_is_named_not_its_neighbours():
    loads = _chain(kernel=0.97, kernel_in=0.95, preprocess_out=0.95, preprocess_in=0.9, source_out=0.9,
                   preprocess=0.3, basecall=0.1)
    b = attribute(loads, PSI(cpu=0.05))
    assert (b.stage, b.resource) == ("kernel-0", "its own compute")
    assert attribute(loads, PSI(cpu=0.05), gpu_kernel=True).resource == "GPU"
    # CPU contention from other processes is named before the stage's own work
    assert attribute(loads, PSI(cpu=0.6)).text == "kernel-0 bound by CPU (contention) (97% busy, input rings full 95% of the time, CPU pressure 60%)"
    assert attribute(loads, PSI(cpu=0.6, memory=0.3)).resource == "memory"


def test_loads_from_stats_samples_map_rings_to_their_stages():
    def sample(t: float, occ_calls: int, writer_in: int, writer_busy: float) -> dict:
        return {
            "t": t,
            "rings": {"raw.0.0": {"occupancy": 2, "n_slots": 64}, "corrected.0.0": {"occupancy": 0, "n_slots": 64},
                      "intensities.0.0": {"occupancy": 1, "n_slots": 16}, "calls.0.0": {"occupancy": occ_calls, "n_slots": 16}},
            "stages": {"source-0": {"busy_fraction": 0.2}, "preprocess-0": {"busy_fraction": 0.1},
                       "kernel-0": {"busy_fraction": 0.3}, "basecall-0": {"busy_fraction": 0.4},
                       "writer-0": {"busy_fraction": writer_busy, "frames_in": writer_in}},
        }
    # 10 s of pre-render (nothing at the writer, calls empty), then 10 s with the writer always
    # busy: its cumulative busy fraction goes from 0 at t=10 to 0.5 at t=20.
    samples = [sample(t, 0, 0, 0.0) for t in range(0, 10)] + [sample(t, 16, t - 9, (t - 10) / t) for t in range(10, 21)]
    loads = {ld.name: ld for ld in loads_from_stats(samples)}
    # over the flowing window only (from the sample before the writer's first frame): 10 of 11 s
    assert loads["writer-0"].busy == pytest.approx(10 / 11)
    assert loads["writer-0"].input_fill == pytest.approx(11 / 12)  # full in every flowing sample but one
    assert loads["basecall-0"].output_fill == pytest.approx(11 / 12)
    assert loads["preprocess-0"].input_fill == 0.0 and loads["writer-0"].output_fill == 0.0
    assert attribute(loads.values()).stage == "writer-0"
    assert loads_from_stats([]) == []


def test_pressure_over_an_interval_from_proc_pressure(tmp_path):
    pressure = tmp_path / "proc" / "pressure"
    pressure.mkdir(parents=True)

    def write(cpu: int, io: int) -> None:
        (pressure / "cpu").write_text(f"some avg10=1.00 avg60=1.00 avg300=1.00 total={cpu}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
        (pressure / "io").write_text(f"some avg10=0.00 avg60=0.00 avg300=0.00 total={io}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")

    now = [100.0]
    write(1_000_000, 0)
    meter = PressureMeter(tmp_path, clock=lambda: now[0])
    now[0] += 10.0
    write(3_500_000, 4_000_000)  # 2.5 s of CPU stall and 4 s of I/O stall in 10 s
    psi = meter.psi()
    assert psi.cpu == pytest.approx(0.25) and psi.io == pytest.approx(0.4)
    assert psi.memory is None  # no memory file: the kernel has no PSI for it
    assert read_pressure(tmp_path / "nowhere") == {"cpu": None, "io": None, "memory": None}


def test_a_throttled_writer_is_named_as_the_bottleneck_of_a_real_run(tmp_path):
    from appliance.pipeline import Supervisor
    from appliance.report import load_stats
    from tests.runs import small_run_config

    cfg = small_run_config(tmp_path, "run.cycles=10", "edges.calls.n_slots=4", "edges.intensities.n_slots=4")
    sup = Supervisor(cfg, run_id="BN", faults={"writer-0": {"slow_ms": 200}})
    summary = sup.run()
    assert summary["frames_dropped"] == 0
    samples = load_stats(sup.state_dir / "stats.jsonl")
    assert samples, "the run recorded no stats"
    b = attribute(loads_from_stats(samples), PSI())
    loads = loads_from_stats(samples)
    assert b.stage == "writer-0", [ld for ld in loads]
    # the run's summary says the same, from the end of its stats.jsonl, in one line
    assert summary["bottleneck"]["stage"] == "writer-0" and summary["bottleneck"]["text"].startswith("writer-0")
    from appliance.pipeline import format_summary

    assert f"bottleneck: {summary['bottleneck']['text']}" in format_summary(summary)
    # judged over only the tail of a long run's file: the same stage
    tail = run_bottleneck(sup.state_dir / "stats.jsonl", PSI(), tail_bytes=(sup.state_dir / "stats.jsonl").stat().st_size // 2)
    assert tail is not None and tail.stage == "writer-0"


def test_run_bottleneck_without_samples_is_none(tmp_path):
    assert run_bottleneck(tmp_path / "stats.jsonl") is None
    (tmp_path / "stats.jsonl").write_text('{"t": 1.0}\n{"t": 1.5, "half')
    assert run_bottleneck(tmp_path / "stats.jsonl") is None  # a cut line, no stages: nothing to judge


def test_the_live_verdict_follows_the_last_window_not_the_whole_run(tmp_path):
    """LiveBottleneck judges the last window_s of samples: a writer that was the bottleneck
    early on and then keeps up is no longer named; judged every every_s, bounded memory."""
    (tmp_path / "proc" / "pressure").mkdir(parents=True)  # a host without PSI figures changing

    def sample(t: float, calls_full: bool, writer_busy: float) -> dict:
        return {
            "t": t,
            "rings": {"raw.0.0": {"occupancy": 0, "n_slots": 64}, "corrected.0.0": {"occupancy": 0, "n_slots": 64},
                      "intensities.0.0": {"occupancy": 0, "n_slots": 16}, "calls.0.0": {"occupancy": 16 if calls_full else 0, "n_slots": 16}},
            "stages": {"source-0": {"busy_fraction": 0.05}, "preprocess-0": {"busy_fraction": 0.05},
                       "kernel-0": {"busy_fraction": 0.1}, "basecall-0": {"busy_fraction": 0.1},
                       "writer-0": {"busy_fraction": writer_busy, "frames_in": 10}},
        }
    live = LiveBottleneck(window_s=10.0, every_s=2.0, period_s=0.5, root=tmp_path)
    verdicts = []
    t = 0.0
    while t < 20.0:  # 20 s with the writer busy all the time and its input ring full
        verdicts.append(live.update(sample(t, True, 1.0), now=t))
        t += 0.5
    assert verdicts[-1] is not None and verdicts[-1].stage == "writer-0"
    # then 20 s in which it keeps up: cumulative busy falls from 1.0 towards 0.5, idle in between
    while t < 40.0:
        verdicts.append(live.update(sample(t, False, 20.0 / t), now=t))
        t += 0.5
    assert verdicts[-1].stage == "source-0", verdicts[-1]
    assert len(live._samples) <= 21 and len(live._marks) <= 6  # bounded by the window


def test_psi_between_two_readings():
    psi = psi_between({"cpu": 1_000_000, "io": 0, "memory": None}, {"cpu": 1_500_000, "io": 4_000_000, "memory": 5}, 2.0)
    assert psi == PSI(cpu=0.25, io=1.0, memory=None)
    assert psi_between({}, {}, 0.0) == PSI()
