"""Faults pause, they do not kill: a full data disk with the default state root, a corrupt
frame at each check point, a hung stage; and the process titles. Real processes and rings."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from appliance.pipeline import Supervisor
from appliance.runfolder import RunFolder
from tests.appliance.pipeline.test_pipeline_e2e import digest, small_tmpfs, start_in_thread
from tests.runs import small_run_config

RUN_ID = "FAULTS"


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    root = tmp_path_factory.mktemp("undisturbed")
    summary = Supervisor(small_run_config(root), run_id=RUN_ID).run()
    return summary, digest(root / RUN_ID)


def _disk_full_raised(sup: Supervisor) -> bool:
    return any(e.get("rule") == "disk_full" and e["kind"] == "alert" for e in sup.events)


@pytest.mark.rt
def test_full_data_disk_with_the_default_state_root_pauses_and_resumes_byte_identical(tmp_path, undisturbed):
    with small_tmpfs(tmp_path / "disk", "256m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (255 << 20))  # ~1 MiB left: less than the run and its state need
        sup = Supervisor(small_run_config(disk), run_id=RUN_ID)  # state under disk/.state (the default)
        assert sup.state_dir.is_relative_to(disk)
        thread, result = start_in_thread(sup)
        deadline = time.monotonic() + 180
        while not _disk_full_raised(sup):
            assert thread.is_alive() and time.monotonic() < deadline, "no disk_full alert"
            time.sleep(0.2)
        time.sleep(3)  # a while full: stages wait, acquisition is paused, nothing crashes
        assert sup.state == "paused"
        assert not [p for p in disk.rglob("*") if ".tmp" in p.name], "a partial file was left behind"
        filler.unlink()  # the operator frees space: the run resumes
        thread.join(150)
        assert not thread.is_alive()
        assert result["restarts"] == {}, "a full disk crashed a stage"
        assert result["frames_dropped"] == 0 and result["incomplete_cycles"] == 0
        assert any(e.get("rule") == "disk_full" and "resumed" in e["message"] for e in result["events"])
        assert RunFolder(disk / RUN_ID).verify() == []
        assert digest(disk / RUN_ID) == undisturbed[1]
        assert not [p for p in disk.rglob("*") if ".tmp" in p.name]


@pytest.mark.parametrize("stage, frame", [("preprocess-0", 50), ("kernel-0", 50), ("basecall-0", 30), ("writer-0", 100)])
def test_a_corrupt_frame_at_each_check_point_is_quarantined_and_the_run_completes(tmp_path, stage, frame):
    """The default ``integrity.verify_at`` checks every stage; one bit flip in shared memory
    is quarantined beside the run folder, counted, and its tile-cycle becomes no-calls: the
    run completes (no crash loop), and the completed run folder verifies."""
    import json

    from rt import FrameKind

    summary = Supervisor(small_run_config(tmp_path), run_id=RUN_ID, faults={stage: {"corrupt_frame": frame}}).run()
    assert summary["checksum_failures"] == 1 and summary["quarantined_frames"] == 1
    assert summary["restarts"] == {}
    quarantined = list((tmp_path / ".quarantine" / RUN_ID).glob("*.npy"))
    assert len(quarantined) == 1 and quarantined[0].name.startswith(stage)
    assert not (tmp_path / RUN_ID / "Quarantine").exists()
    folder = RunFolder(tmp_path / RUN_ID)
    assert folder.is_complete and folder.verify() == []
    kind = int(quarantined[0].name.split("_kind")[1].split("_")[0])
    if kind in (FrameKind.IMAGE, FrameKind.INTENSITIES, FrameKind.CALLS):
        assert summary["incomplete_cycles"] == 1
        tile = int(quarantined[0].name.split("_tile")[1].split("_")[0])
        cycle = int(quarantined[0].name.split("_cycle")[1].split("_")[0])
        bases, quals = folder.read_bcl(tile, cycle)
        assert (bases == 4).all() and (quals == 0).all(), "the lost tile-cycle is not all no-calls"
        # the cycle's manifest names the tile and why (a final manifest tells downstream jobs)
        manifests = [json.loads(p.read_text()) for p in (tmp_path / RUN_ID).rglob("*.json") if "no_calls" in p.read_text()]
        assert [(m["cycle"], [n["tile"] for n in m["no_calls"]]) for m in manifests] == [(cycle, [tile])]
        reason = manifests[0]["no_calls"][0]["reason"]
        assert ("checksum" in reason) if kind == FrameKind.CALLS else ("incomplete upstream" in reason), reason


def test_hang_timeout_is_derived_from_the_rings_ahead_and_the_frame_rate():
    from appliance.config import load_config
    from appliance.pipeline import hang_timeout_s

    cfg = load_config()  # defaults: 20 frames/s, raw 64 + corrected 64 slots ahead of the kernel
    fill_s = (cfg.edges["raw"].n_slots + cfg.edges["corrected"].n_slots) / cfg.source.rate_hz
    floor = cfg.supervisor.hang_min_s
    assert hang_timeout_s(cfg, "kernel") == pytest.approx(max(floor, fill_s / 2))
    assert hang_timeout_s(cfg, "kernel") < fill_s < cfg.supervisor.heartbeat_timeout_s
    deep = load_config(overrides=["edges.raw.n_slots=256", "edges.corrected.n_slots=256"])
    deep_fill = 512 / deep.source.rate_hz
    assert hang_timeout_s(deep, "kernel") == pytest.approx(deep_fill / 2) and deep_fill / 2 > floor
    assert hang_timeout_s(deep, "preprocess") == pytest.approx(max(floor, 256 / deep.source.rate_hz / 2))
    # after the kernel a slot is a tile-cycle (4 camera frames), on the calls ring half of one
    slots = {e: cfg.edges[e].n_slots for e in ("raw", "corrected", "intensities", "calls")}
    want = (slots["raw"] + slots["corrected"] + 4 * slots["intensities"]) / cfg.source.rate_hz / 2
    assert hang_timeout_s(cfg, "basecall") == pytest.approx(min(cfg.supervisor.heartbeat_timeout_s, want)) and want > floor
    want += 2 * slots["calls"] / cfg.source.rate_hz / 2
    assert hang_timeout_s(cfg, "writer") == pytest.approx(min(cfg.supervisor.heartbeat_timeout_s, want))
    passthrough = load_config(overrides=['stages.kernel.algorithm="passthrough"'])
    assert hang_timeout_s(passthrough, "writer") == pytest.approx(min(cfg.supervisor.heartbeat_timeout_s, sum(slots.values()) / 20 / 2))
    slow = load_config(overrides=["source.rate_hz=0"])  # unpaced: nothing is lost by waiting
    assert hang_timeout_s(slow, "kernel") == slow.supervisor.heartbeat_timeout_s
    huge = load_config(overrides=["source.rate_hz=0.5"])
    assert hang_timeout_s(huge, "kernel") == huge.supervisor.heartbeat_timeout_s  # capped


def test_a_hung_stage_is_restarted_before_the_rings_ahead_of_it_fill(tmp_path):
    # 10 frames/s into 64 + 64 slots: full in 12.8 s; the hung kernel is killed after 6.4 s
    extra = ("source.rate_hz=10", "run.cycles=12")
    summary = Supervisor(small_run_config(tmp_path, *extra), run_id=RUN_ID, faults={"kernel-0": {"hang_after": 30}}).run()
    assert summary["restarts"] == {"kernel-0": 1}
    hang = [e for e in summary["events"] if e.get("rule") == "hang"]
    assert len(hang) == 1 and "hang timeout 6.4 s" in hang[0]["message"]
    assert summary["frames_dropped"] == 0 and summary["incomplete_cycles"] == 0
    assert RunFolder(tmp_path / RUN_ID).verify() == []


def test_every_stage_process_has_a_title(tmp_path):
    """ps shows `appliance: kernel-0 RUN_ID`, not five identical multiprocessing spawn lines."""
    import psutil

    sup = Supervisor(small_run_config(tmp_path), run_id=RUN_ID)
    thread, result = start_in_thread(sup)
    try:
        deadline = time.monotonic() + 120
        titles: set[str] = set()
        want = {f"appliance: {s}-0 {RUN_ID}" for s in ("source", "preprocess", "kernel", "basecall", "writer")}
        while not want <= titles:
            assert thread.is_alive() and time.monotonic() < deadline, f"titles seen: {sorted(titles)}"
            for child in psutil.Process().children(recursive=True):
                try:
                    titles.add(" ".join(child.cmdline()).strip())
                except psutil.NoSuchProcess:
                    pass
            time.sleep(0.2)
    finally:
        sup.request_stop()
        thread.join(120)
    assert not thread.is_alive()


def test_summary_rate_after_a_source_restart_and_n_a_without_scored_bases(tmp_path):
    from appliance.pipeline import format_summary, summarize

    cfg = small_run_config(tmp_path)
    # the restarted source sent 100 of the 208 frames in 5 s; 108 came from the first instance
    stages = {"source-0": {"frames_in": 208, "frames_before_start": 108, "acquisition_s": 5.0, "bytes_in": 208 * 1000},
              "writer-0": {}, "basecall-0": {"no_calls": 7}}
    s = summarize(cfg, RUN_ID, tmp_path / RUN_ID, stages, 30.0, [], {"source-0": 1})
    assert s["frames_acquired"] == 208 and s["frames_per_s"] == pytest.approx(100 / 5.0)
    assert s["no_calls"] == 7
    s["accuracy"] = {"bases_called": 0, "error_rate": 0.0, "clusters_detected": 0, "clusters_truth": 10, "recall": 0.0,
                     "pass_filter_fraction": 0.0}
    text = format_summary(s)
    assert "error n/a (no scored bases)" in text and "pass filter n/a" in text and "0.00%" not in text
    assert "7 cluster-cycles without a valid intensity" in text


def test_clusters_without_a_valid_intensity_are_no_calls_in_the_bcls_and_counted(undisturbed):
    """The base caller gives a cluster with no valid intensity quality 0: the .bcl byte is 0
    (N), not the argmax base at Q2, and the summary counts exactly those."""
    summary, _files = undisturbed
    folder = RunFolder(Path(summary["output"]))
    zero_bytes = sum(path.read_bytes()[4:].count(0) for path in Path(summary["output"]).rglob("*.bcl"))
    assert zero_bytes == summary["no_calls"]
    assert folder.verify() == []


def test_flight_recorder_on_a_full_disk_keeps_whole_lines_and_catches_up(tmp_path):
    import json

    from appliance.recorder import FlightRecorder, read_records

    with small_tmpfs(tmp_path / "disk", "256k") as disk:
        filler = disk / "filler"
        import os

        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk to the last byte
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        rec = FlightRecorder(disk / "rec", max_bytes=64 << 10, segment_bytes=32 << 10)
        try:
            for i in range(20):
                rec.record("event", {"t": float(i), "i": i, "pad": "x" * 100})
            for seg in (disk / "rec").glob("*.jsonl"):  # nothing torn
                for line in seg.read_bytes().splitlines():
                    json.loads(line)
            assert len(list(read_records(disk / "rec"))) < 20, "the disk was not full: nothing was tested"
            filler.unlink()
            rec.record("event", {"t": 20.0, "i": 20})
        finally:
            rec.close()
        got = [r["body"]["i"] for r in read_records(disk / "rec")]
        assert got == list(range(21)), "records kept while the disk was full were lost or reordered"
