"""The pipeline end to end with real processes and rings: scored against ground truth,
byte-identical output after SIGKILL of each stage, checksum quarantine, backpressure."""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from pathlib import Path

import pytest

from tests.runs import small_run_config
from appliance.pipeline import Supervisor, format_summary
from appliance.runfolder import RunCompletion, RunFolder, read_completion

RUN_ID = "E2E"


def config(root: Path, *extra: str):
    # Lossless and unthrottled so that runs are comparable frame for frame.
    return small_run_config(root, *extra)


def start_in_thread(sup: Supervisor) -> tuple[threading.Thread, dict]:
    """Run ``sup`` in a thread; its summary lands in the returned dict."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(sup.run()))
    thread.start()
    return thread, result


def wait_until(condition, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def digest(run_dir: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` mounted at ``path`` (a disk to fill); skips where that is not
    permitted, and is unmounted on the way out."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as the data root")
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount tmpfs here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    root = tmp_path_factory.mktemp("baseline")
    summary = Supervisor(config(root), run_id=RUN_ID).run()
    return summary, digest(root / RUN_ID)


def test_undisturbed_run_matches_ground_truth(baseline):
    summary, files = baseline
    assert summary["frames_acquired"] == 2 * 26 * 4 and summary["frames_dropped"] == 0
    assert summary["checksum_failures"] == 0 and not summary["restarts"]
    acc = summary["accuracy"]
    assert acc["error_rate"] <= 0.01, acc
    assert acc["recall"] >= 0.75 and acc["matched_fraction"] >= 0.95, acc
    assert summary["data_reduction"] > 5
    folder = RunFolder(Path(summary["output"]))
    assert folder.is_complete and folder.verify() == []
    assert any(name.endswith(".bcl") for name in files)
    assert read_completion(folder.path) == RunCompletion(RUN_ID, "CompletedAsPlanned", 26, 26)
    assert summary["completion"] == {"status": "CompletedAsPlanned", "cycles_completed": 26, "cycles_planned": 26}


def test_live_counters_only_grow_and_end_at_the_summarys_totals(baseline):
    """The stages publish their counters into the run's status block on every frame; the
    supervisor's samples (stats.jsonl, what the control plane, the TUI and the exporter see)
    read them there: they never go back, and the last sample holds each stage's final count
    (the writer's included), not the count at its last release of half a ring."""
    import json

    summary, _ = baseline
    state_dir = Path(summary["output"]).parent / ".state" / RUN_ID
    samples = [json.loads(line) for line in (state_dir / "stats.jsonl").read_text().splitlines()]
    assert len(samples) >= 5
    for name, totals in summary["stages"].items():
        for key in ("frames_in", "frames_out", "checkpoints"):
            series = [int(s["stages"][name].get(key) or 0) for s in samples]
            assert series == sorted(series), (name, key, series)
        assert samples[-1]["stages"][name]["frames_in"] == totals["frames_in"], name
        assert samples[-1]["stages"][name]["frames_out"] == totals["frames_out"], name
    assert not (state_dir / "live_params.json").exists()


@pytest.mark.parametrize(
    "stage, after",
    [("source-0", 90), ("preprocess-0", 100), ("kernel-0", 120), ("basecall-0", 30), ("writer-0", 60)],
)
def test_sigkill_of_a_stage_mid_run_gives_byte_identical_output(tmp_path, baseline, stage, after):
    summary = Supervisor(config(tmp_path), run_id=RUN_ID, faults={stage: {"kill_after": after}}).run()
    assert summary["restarts"] == {stage: 1}
    assert summary["frames_dropped"] == 0
    # counted across the restart: the rings' counters outlive the crashed process
    assert summary["frames_acquired"] == 208 and summary["raw_bytes"] == baseline[0]["raw_bytes"]
    assert digest(tmp_path / RUN_ID) == baseline[1]


def test_corrupt_frame_is_quarantined_counted_and_the_run_completes(tmp_path):
    cfg = config(tmp_path, 'integrity.verify_at=["preprocess", "writer"]')
    summary = Supervisor(cfg, run_id=RUN_ID, faults={"preprocess-0": {"corrupt_frame": 50}}).run()
    assert summary["checksum_failures"] == 1
    assert any(e.get("rule") == "checksum_failures" and e["kind"] == "alert" for e in summary["events"])
    quarantined = list((tmp_path / ".quarantine" / RUN_ID).glob("*.npy"))
    assert len(quarantined) == 1 and "preprocess-0_kind0" in quarantined[0].name
    # The lost frame makes its tile-cycle incomplete (no-calls), accounted, never silent.
    assert summary["incomplete_cycles"] == 1
    assert RunFolder(tmp_path / RUN_ID).is_complete


def test_slow_writer_backpressures_without_loss(tmp_path):
    cfg = config(tmp_path, "edges.calls.n_slots=4", "edges.intensities.n_slots=4")
    summary = Supervisor(cfg, run_id=RUN_ID, faults={"writer-0": {"slow_ms": 20}}).run()
    assert summary["frames_dropped"] == 0 and summary["incomplete_cycles"] == 0
    assert RunFolder(tmp_path / RUN_ID).is_complete
    assert summary["accuracy"]["error_rate"] <= 0.01


@pytest.mark.rt
def test_full_disk_pauses_the_run_alerts_and_resumes(tmp_path):
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (7 << 20))  # leaves ~1 MiB: less than the run writes
        cfg = config(disk, f'output.state_root="{tmp_path / "state"}"')
        sup = Supervisor(cfg, run_id=RUN_ID)
        thread, result = start_in_thread(sup)
        deadline = time.monotonic() + 120
        while not any(e.get("rule") == "disk_full" and e["kind"] == "alert" for e in sup.events):
            assert thread.is_alive() and time.monotonic() < deadline, "no disk-full alert"
            time.sleep(0.2)
        assert not list(disk.rglob("*.tmp*")), "a partial file was left behind"
        filler.unlink()  # the operator frees space: the run resumes
        thread.join(120)
        assert not thread.is_alive()
        assert result["frames_dropped"] == 0 and result["incomplete_cycles"] == 0
        assert RunFolder(disk / RUN_ID).verify() == []
        assert result["accuracy"]["error_rate"] <= 0.01


@pytest.mark.rt
def test_full_disk_in_passthrough_pauses_longer_than_the_heartbeat_timeout_without_loss(tmp_path):
    """Raw capture (passthrough) on a disk that fills mid-frame: the writer pauses (no crash,
    no short write leaving a hole), the stages held up by backpressure stay alive far past
    the heartbeat timeout, and once space is freed frames.bin is byte-identical to an
    undisturbed capture."""
    # small rings: while the writer waits, every stage upstream blocks in emit (backpressure)
    extra = ('stages.kernel.algorithm="passthrough"', "run.cycles=6", "supervisor.heartbeat_timeout_s=2",
             *(f"edges.{e}.n_slots=4" for e in ("raw", "corrected", "intensities", "calls")))
    ref = Supervisor(config(tmp_path / "ref", *extra), run_id=RUN_ID).run()
    assert ref["frames_acquired"] == 48
    want = (tmp_path / "ref" / RUN_ID / "Raw" / "frames.bin").read_bytes()
    with small_tmpfs(tmp_path / "disk", "8m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * ((7 << 20) + 5000))  # ~1 MiB left (the capture is 6 MiB), ending mid-frame
        sup = Supervisor(config(disk, *extra, f'output.state_root="{tmp_path / "state"}"'), run_id=RUN_ID)
        thread, result = start_in_thread(sup)
        deadline = time.monotonic() + 120
        while not any(e.get("rule") == "disk_full" and e["kind"] == "alert" for e in sup.events):
            assert thread.is_alive() and time.monotonic() < deadline, "no disk-full alert"
            time.sleep(0.2)
        time.sleep(6)  # three heartbeat timeouts with every stage held up by backpressure
        filler.unlink()
        thread.join(120)
        assert not thread.is_alive()
        assert result["restarts"] == {}, "stages waiting on backpressure were taken for hung"
        assert result["frames_acquired"] == 48 and result["frames_dropped"] == 0
        assert (disk / RUN_ID / "Raw" / "frames.bin").read_bytes() == want


def test_a_process_group_sigterm_under_backpressure_drains_without_restarts(tmp_path):
    """`timeout` or a terminal sends SIGTERM to every stage: the source ends the stream (a
    drain) and the others, even those blocked on a full ring, keep going: nothing restarts."""
    import os
    import signal

    cfg = config(tmp_path, 'stages.kernel.algorithm="passthrough"', "run.cycles=6",
                 *(f"edges.{e}.n_slots=4" for e in ("raw", "corrected", "intensities", "calls")))
    # a writer slower than a ring wait (0.25 s): every stage upstream waits in emit
    sup = Supervisor(cfg, run_id=RUN_ID, faults={"writer-0": {"slow_ms": 400}})
    thread, result = start_in_thread(sup)
    try:
        wait_until(lambda: sup.latest_stats.get("frames_acquired", 0) >= 16, what="the rings to fill")
        time.sleep(1.0)
        for proc in list(sup._procs.values()):
            os.kill(proc.pid, signal.SIGTERM)
    finally:
        thread.join(120)
    assert not thread.is_alive()
    assert result["restarts"] == {}, "a stage took the group's SIGTERM for a stop"
    assert 16 <= result["frames_acquired"] < 48 and result["frames_dropped"] == 0
    frames = (tmp_path / RUN_ID / "Raw" / "frames.bin").stat().st_size // (256 * 256 * 2)
    assert frames == result["frames_acquired"]  # every frame that entered was written


def test_stages_split_by_tile_over_replicas(tmp_path, baseline):
    cfg = config(tmp_path, "stages.kernel.replicas=2", "stages.basecall.replicas=2", "stages.preprocess.replicas=2")
    summary = Supervisor(cfg, run_id=RUN_ID).run()
    assert summary["frames_dropped"] == 0 and not summary["restarts"]
    assert {"kernel-0", "kernel-1", "basecall-1", "preprocess-1"} <= set(summary["stages"])
    assert summary["stages"]["kernel-0"]["frames_in"] == summary["stages"]["kernel-1"]["frames_in"] == 104
    # The same output, whichever process handled which tile.
    assert digest(tmp_path / RUN_ID) == baseline[1]


def test_raw_frames_kept_for_every_nth_tile(tmp_path):
    cfg = config(tmp_path, "output.keep_raw_every=2", "run.tiles=[1101, 1102, 1103]", "run.cycles=26")
    Supervisor(cfg, run_id=RUN_ID).run()
    kept = {p.name.split("_")[1] for p in (tmp_path / RUN_ID / "Raw").glob("*.npy")}
    assert kept == {"1101", "1103"}  # tiles 0 and 2 of the run
    assert len(list((tmp_path / RUN_ID / "Raw").glob("*.npy"))) == 2 * 26 * 4


def test_genicam_camera_through_the_data_path(tmp_path):
    pytest.importorskip("harvesters", reason="optional GenICam packages not installed; pip install -e '.[genicam]'")
    import numpy as np

    cfg = config(
        tmp_path, 'source.kind="genicam"', 'stages.kernel.algorithm="passthrough"', 'source.genicam.pixel_format="Mono8"',
        "source.genicam.width=256", "source.genicam.height=256", "source.rate_hz=50", "run.cycles=3",
    )
    summary = Supervisor(cfg, run_id=RUN_ID).run()
    assert summary["frames_acquired"] == 2 * 3 * 4 and summary["frames_dropped"] == 0
    frames = np.fromfile(tmp_path / RUN_ID / "Raw" / "frames.bin", np.uint16).reshape(-1, 256, 256)
    assert len(frames) == 24 and frames.max() <= 255 and frames.std() > 0


def test_genicam_camera_at_its_own_size_gets_rings_that_fit(tmp_path):
    """width/height left at 0 (the camera's size, larger than the synthetic tile): the
    supervisor asks the camera and sizes the ring slots for its frames."""
    import json

    cfg = config(tmp_path, 'source.kind="genicam"', 'stages.kernel.algorithm="passthrough"',
                 'source.genicam.pixel_format="Mono8"', "source.rate_hz=50", "run.cycles=3")
    assert cfg.source.genicam.width == 0 and cfg.source.genicam.height == 0
    summary = Supervisor(cfg, run_id=RUN_ID).run()
    assert summary["restarts"] == {} and summary["frames_acquired"] == 24 and summary["frames_dropped"] == 0
    g = json.loads((tmp_path / ".state" / RUN_ID / "config.json").read_text())["source"]["genicam"]
    assert g["width"] * g["height"] > 256 * 256  # bigger than the tile the slots were sized from
    assert (tmp_path / RUN_ID / "Raw" / "frames.bin").stat().st_size == 24 * g["width"] * g["height"] * 2


def test_replay_of_recorded_frames_gives_the_same_base_calls(tmp_path, baseline):
    recorded = tmp_path / "recorded"
    Supervisor(config(recorded, "output.keep_raw_every=1"), run_id=RUN_ID).run()
    replay = tmp_path / "replay"
    cfg = config(replay, 'source.kind="replay"', f'source.replay_path="{recorded / RUN_ID}"')
    summary = Supervisor(cfg, run_id=RUN_ID).run()
    assert summary["frames_acquired"] == 208 and summary["frames_dropped"] == 0
    bcl = {k: v for k, v in baseline[1].items() if k.endswith((".bcl", ".locs", ".filter"))}
    assert bcl and {k: v for k, v in digest(replay / RUN_ID).items() if k in bcl} == bcl


def test_pause_and_resume_acquisition(tmp_path, baseline):
    cfg = config(tmp_path, "source.rate_hz=40")
    sup = Supervisor(cfg, run_id=RUN_ID)
    thread, result = start_in_thread(sup)
    try:
        wait_until(lambda: sup.latest_stats.get("frames_acquired", 0) >= 40, what="40 frames")
        assert sup.pause() and sup.state == "paused"
        time.sleep(1.0)  # in-flight frames settle
        before = sup.latest_stats["frames_acquired"]
        time.sleep(1.5)
        assert sup.latest_stats["frames_acquired"] == before  # the camera is paused
        assert sup.resume() and sup.state == "acquiring"
    finally:
        thread.join(120)
    assert result["frames_acquired"] == 208 and result["frames_dropped"] == 0
    assert sup.state == "done"
    assert digest(tmp_path / RUN_ID) == baseline[1]  # a pause changes nothing in the output


def test_pause_and_stop_while_the_source_starts_are_kept(tmp_path):
    """Pause and stop are shared state, not signals: requests that reach a source still
    starting up (or waiting for a restart) neither kill it nor get lost."""
    cfg = config(tmp_path, "source.rate_hz=10")
    sup = Supervisor(cfg, run_id=RUN_ID)
    thread, result = start_in_thread(sup)
    try:
        wait_until(lambda: "source-0" in sup._procs, what="the source process")
        assert sup.pause() and sup.state == "paused"  # before the source has its handlers
        sup.request_stop()
    finally:
        thread.join(120)
    assert not thread.is_alive(), "the stop was lost: the run went on"
    assert result["restarts"] == {}  # nothing was killed by an early request
    assert result["frames_acquired"] < 208 and result["frames_dropped"] == 0
    assert sup.state == "stopped_early"


def test_a_stop_reaches_a_source_restarted_after_it(tmp_path):
    """A source that crashes and restarts after the operator asked to stop ends the stream
    at once instead of acquiring the whole run."""
    cfg = config(tmp_path, "source.rate_hz=10")
    sup = Supervisor(cfg, run_id=RUN_ID, faults={"source-0": {"kill_after": 20}})
    thread, result = start_in_thread(sup)
    try:
        wait_until(lambda: sup.policy.restarts.get("source-0"), what="the source's crash")
        sup.request_stop()
    finally:
        thread.join(120)
    assert not thread.is_alive(), "the stop was lost: the run went on"
    assert result["restarts"] == {"source-0": 1}
    assert 20 <= result["frames_acquired"] < 208 and result["frames_dropped"] == 0
    # the folder says how the run ended and how far it got, for tools that watch run folders
    done = read_completion(tmp_path / RUN_ID)
    assert done.status == "StoppedByUser" and done.cycles_planned == 26 and done.error == ""
    assert done.cycles_completed == len(RunFolder(tmp_path / RUN_ID).manifest().complete_cycles) < 26
    assert "RunCompletionStatus.xml: StoppedByUser" in format_summary(result)


def test_a_run_stopped_after_its_template_is_not_marked_complete(tmp_path):
    """Stopped once the kernel has its cluster template (cycle 12 of 26): the cycles never
    acquired are not written as no-calls; the folder says how far it got and is not complete."""
    cfg = config(tmp_path, "source.rate_hz=40")
    sup = Supervisor(cfg, run_id=RUN_ID)
    thread, result = start_in_thread(sup)
    try:
        wait_until(lambda: sup.latest_stats.get("frames_acquired", 0) >= 2 * 4 * 12, what="12 cycles")
        sup.request_stop()
    finally:
        thread.join(120)
    assert sup.state == "stopped_early" and result["frames_dropped"] == 0
    acquired_cycles = result["frames_acquired"] // 8
    done = read_completion(tmp_path / RUN_ID)
    assert done.status == "StoppedByUser" and 12 <= done.cycles_completed <= acquired_cycles < 26
    assert done.cycles_completed == len(RunFolder(tmp_path / RUN_ID).manifest().complete_cycles)
    assert not (tmp_path / RUN_ID / "CopyComplete.txt").exists() and result["run_complete"] is False


def test_live_rate_change_and_refused_keys(tmp_path, baseline):
    from appliance.control import CommandError

    cfg = config(tmp_path, "source.rate_hz=10")
    sup = Supervisor(cfg, run_id=RUN_ID)
    thread, result = start_in_thread(sup)
    try:
        wait_until(lambda: sup.latest_stats.get("frames_acquired", 0) >= 10, what="10 frames")
        with pytest.raises(CommandError, match="cannot change during a run"):
            sup.set_live("run.cycles", 5)
        with pytest.raises(CommandError, match="allowed a number"):
            sup.set_live("source.rate_hz", -1)
        assert sup.set_live("source.rate_hz", 0)["source.rate_hz"] == 0.0  # unthrottled from now on
    finally:
        thread.join(60)
    assert not thread.is_alive()
    # at 10 frames/s the 208 frames would take 21 s; unthrottled they come at once
    assert result["acquisition_s"] < 15
    assert digest(tmp_path / RUN_ID) == baseline[1]
