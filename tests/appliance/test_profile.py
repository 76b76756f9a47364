"""``appliance profile`` against a real run: py-spy flame graphs and dumps, perf stat, bpftrace and
trace-cmd where this machine allows them (skipped with the kernel's reason where it does not),
the command lines built purely, and a missing tool named with its package."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from appliance import profile as prof
from appliance.cli import main

RUN_ID = f"PROF{os.getpid()}"  # unique per test process: never another session's run


class Live:
    def __init__(self, root: Path, sup, thread):
        self.root, self.sup, self.thread = root, sup, thread
        self.args = ["--run", RUN_ID, "--set", f'output.root="{root}"']

    @property
    def profiles(self) -> Path:
        return self.sup.state_dir / "profiles"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A real run kept busy by a slow kernel stage (50 ms a frame), in a thread of this process;
    stopped (drained) and removed afterwards: processes, rings and files."""
    from appliance.pipeline import Supervisor
    from tests.runs import small_run_config

    root = tmp_path_factory.mktemp("profile") / "runs"
    # One tile at 5 frames/s for 150 cycles: two minutes at most, far longer than these tests;
    # small rings ahead of the slow stage, so the drain at the end takes a second or two.
    cfg = small_run_config(root, "run.cycles=150", "run.tiles=[1101]", "source.rate_hz=5", "control.enabled=false", "offload.enabled=false",
                           "edges.raw.n_slots=4", "edges.corrected.n_slots=4")
    sup = Supervisor(cfg, run_id=RUN_ID, faults={"kernel-0": {"slow_ms": 50}})
    result: dict = {}
    thread = threading.Thread(target=lambda: result.setdefault("summary", sup.run()), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            assert thread.is_alive(), "the run ended before it could be profiled"
            try:
                _, stages = prof.find_stages(RUN_ID)
                if len(stages) == 5 and sup.state_dir.is_dir():
                    break
            except prof.ProfileError:
                pass
            assert time.monotonic() < deadline, "the run's stages did not come up in 60 s"
            time.sleep(0.2)
        yield Live(root, sup, thread)
    finally:
        sup.request_stop()
        thread.join(60)
        assert not thread.is_alive(), "the run did not drain"
        with pytest.raises(prof.ProfileError):  # no stage process is left
            prof.find_stages(RUN_ID)
        assert not [n for n in os.listdir("/dev/shm") if f".{RUN_ID}." in n]
        shutil.rmtree(root.parent, ignore_errors=True)


def _stage(name="kernel-0", pid=101, tids=(101, 102), cpus=(2,)):
    return prof.Stage(name, pid, "R1", 1.0, tids, cpus)


# -- pure: titles, command lines, scripts, plans -------------------------------------------


def test_parse_title():
    assert prof.parse_title(["appliance: kernel-0 260101_SIM01_0001_FC"]) == ("kernel-0", "260101_SIM01_0001_FC")
    assert prof.parse_title("appliance: writer-12 R1\0\0") == ("writer-12", "R1")
    assert prof.parse_title(["appliance:", "basecall-0", "R1"]) == ("basecall-0", "R1")  # split on spaces
    assert prof.parse_title(["appliance: offload-worker-2"]) is None  # no run: not a stage
    assert prof.parse_title(["appliance: offload-worker-2 R1"]) is None
    assert prof.parse_title(["python", "-m", "appliance", "run"]) is None
    assert prof.parse_title([]) is None


def test_build_command_per_tool(tmp_path):
    k, w = _stage(), _stage("writer-0", 202, (202,), (3,))
    out = tmp_path / "o"
    assert prof.build_command("py-spy-dump", [k], output=out) == ["py-spy", "dump", "--nonblocking", "--pid", "101"]
    assert prof.build_command("py-spy", [k], output=out, duration=2, fmt="speedscope") == [
        "py-spy", "record", "--nonblocking", "--pid", "101", "--duration", "2", "--rate", "100", "--format", "speedscope", "--output", str(out)]
    assert prof.build_command("py-spy", [k], output=out, duration=2, rate=250, binary="/v/bin/py-spy")[:2] == ["/v/bin/py-spy", "record"]
    assert "flamegraph" in prof.build_command("py-spy", [k], output=out)
    assert prof.build_command("perf", [k, w], output=out, duration=5) == [
        "perf", "record", "-g", "-F", "99", "-p", "101,202", "-o", str(out), "--", "sleep", "5"]
    stat = prof.build_command("perf-stat", [k], output=out, duration=1.5)
    assert stat[:2] == ["perf", "stat"] and stat[-3:] == ["--", "sleep", "1.5"] and ["-p", "101"] == stat[4:6]
    assert {"context-switches", "cpu-migrations", "page-faults"} <= set(stat[3].split(","))
    assert prof.build_command("bpftrace-runqlat", [k, w], output=out, script=tmp_path / "s.bt") == ["bpftrace", "-o", str(out), str(tmp_path / "s.bt")]
    # trace-cmd: in its own ftrace instance, and always in a private mount namespace (it mounts
    # tracefs and debugfs itself where they are not)
    private = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'exec "$@"', "sh"]
    assert prof.build_command("ftrace", [k, w], output=out, duration=3, cpus=(2, 3), instance="ap-1") == [
        *private, "trace-cmd", "record", "-B", "ap-1", "-e", "sched:sched_switch", "-M", "c", "-o", str(out), "sleep", "3"]
    assert prof.build_command("ftrace-reset", [k], output=out, instance="ap-1") == [*private, "trace-cmd", "reset", "-B", "ap-1", "-d"]
    wrapped = prof.build_command("ftrace", [k], output=out, cpus=(1,), mount_tracefs=True)
    assert wrapped[:4] == private[:4] and wrapped[6] == '[ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing || exit 1; exec "$@"'
    assert wrapped[8:] == prof.build_command("ftrace", [k], output=out, cpus=(1,))[8:]
    bt = prof.build_command("bpftrace-offcpu", [k], output=out, script=tmp_path / "s.bt", mount_tracefs=True)
    assert bt[:4] == private[:4] and "mount -t tracefs" in bt[6] and bt[8:] == ["bpftrace", "-o", str(out), str(tmp_path / "s.bt")]
    assert prof.build_command("perf", [k], output=out, mount_tracefs=True)[0] == "perf"  # perf needs no tracefs
    with pytest.raises(ValueError, match="one process"):
        prof.build_command("py-spy", [k, w], output=out)
    with pytest.raises(ValueError, match="svg or speedscope"):
        prof.build_command("py-spy", [k], output=out, fmt="png")
    with pytest.raises(ValueError, match="CPUs"):
        prof.build_command("ftrace", [k], output=out)
    assert prof.cpu_mask([0]) == "1" and prof.cpu_mask([1, 3]) == "a" and prof.cpu_mask(range(8, 16)) == "ff00"


def test_shipped_bpftrace_scripts_render():
    k, w = _stage(), _stage("writer-0", 202, (202, 203), (3,))
    rings = {101: [(0x7F0000001000, 0x7F0000002000, "appliance.9.R1.corrected.0.0")], 202: []}
    for name in prof.BPFTRACE_SCRIPTS:
        text = prof.script_text(name)  # package data: appliance/profiling/NAME.bt
        assert "{{WATCH}}" in text and "{{DURATION}}" in text
        out = prof.render_bpftrace(name, [k, w], duration=2.4, rings=rings)
        assert "{{" not in out
        for tid, stage in ((101, "kernel-0"), (102, "kernel-0"), (202, "writer-0"), (203, "writer-0")):
            assert f'@stage[{tid}] = "{stage}";' in out
        assert "interval:s:2 { exit(); }" in out
    ring = prof.render_bpftrace("ringfaults", [k, w], duration=1, rings=rings)
    assert 'if (pid == 101 && $a >= 0x7f0000001000 && $a < 0x7f0000002000) { @ring_faults["kernel-0", "corrected.0.0"] = count(); }' in ring
    assert "no ring segments mapped" in prof.render_bpftrace("ringfaults", [w], duration=1, rings=rings)
    with pytest.raises(KeyError, match="runqlat"):
        prof.script_text("nosuch")


def test_plan_jobs_layout_and_unavailable_tools(tmp_path):
    stages = [_stage("source-0", 1, (1,)), _stage("kernel-0", 2, (2,)), _stage("writer-0", 3, (3,))]
    kinds = ["py-spy", "perf-stat", "perf", "bpftrace-biolat", "bpftrace-runqlat", "ftrace"]
    binaries = {"py-spy": "/v/py-spy", "perf": "/usr/bin/perf", "bpftrace": None, "bpftrace:why": "bpftrace is not installed: install Debian bpftrace",
                "trace-cmd": "/usr/bin/trace-cmd"}
    jobs = prof.plan_jobs(kinds, stages, stages, tmp_path, stamp="20260101T000000Z", duration=2, cpus=(2, 3), binaries=binaries)
    names = [(j.kind, j.stage, j.path.name) for j in jobs]
    assert names == [
        ("py-spy", "source-0", "20260101T000000Z-py-spy-source-0.svg"),
        ("py-spy", "kernel-0", "20260101T000000Z-py-spy-kernel-0.svg"),
        ("py-spy", "writer-0", "20260101T000000Z-py-spy-writer-0.svg"),
        ("perf-stat", "source-0", "20260101T000000Z-perf-stat-source-0.txt"),
        ("perf-stat", "kernel-0", "20260101T000000Z-perf-stat-kernel-0.txt"),
        ("perf-stat", "writer-0", "20260101T000000Z-perf-stat-writer-0.txt"),
        ("perf", "all", "20260101T000000Z-perf-all.perf.data"),
        ("bpftrace-biolat", "writer-0", "20260101T000000Z-bpftrace-biolat-writer-0.txt"),  # the writer by default
        ("bpftrace-runqlat", "all", "20260101T000000Z-bpftrace-runqlat-all.txt"),
        ("ftrace", "all", "20260101T000000Z-ftrace-all.dat"),
    ]
    assert all(j.path.parent == tmp_path for j in jobs)
    assert jobs[0].command[0] == "/v/py-spy" and jobs[6].command[:2] == ["/usr/bin/perf", "record"]
    assert [j.unavailable for j in jobs if j.kind.startswith("bpftrace")] == ["bpftrace is not installed: install Debian bpftrace"] * 2
    assert all(not j.command for j in jobs if j.unavailable)
    assert jobs[-1].command[jobs[-1].command.index("-M") + 1] == "c"
    instance = jobs[-1].command[jobs[-1].command.index("-B") + 1]
    assert instance.startswith("appliance-profile-") and jobs[-1].cleanup[-5:] == ["/usr/bin/trace-cmd", "reset", "-B", instance, "-d"]
    # two stages (kernel, writer) given: one perf for both, labelled by them; speedscope
    two = prof.plan_jobs(["perf", "py-spy"], stages[1:], stages, tmp_path, stamp="S", fmt="speedscope", binaries=binaries)
    assert [j.path.name for j in two] == ["S-perf-kernel-0+writer-0.perf.data", "S-py-spy-kernel-0.speedscope.json", "S-py-spy-writer-0.speedscope.json"]
    # two processes of one name: told apart by pid
    dup = [_stage("kernel-0", 7, (7,)), _stage("kernel-0", 8, (8,))]
    assert [j.stage for j in prof.plan_jobs(["py-spy-dump"], dup, dup, tmp_path, stamp="S", binaries=binaries)] == ["kernel-0-pid7", "kernel-0-pid8"]
    # ftrace with no CPU to record: said, not run
    (ft,) = prof.plan_jobs(["ftrace"], stages, stages, tmp_path, stamp="S", binaries=binaries)
    assert "--cpus" in ft.unavailable and not ft.command
    assert prof.ftrace_cpus(stages, frozenset({5, 4})) == (4, 5)
    assert prof.ftrace_cpus([_stage(cpus=(1, 2)), _stage(cpus=(2, 3))], frozenset()) == (1, 2, 3)


def test_explain_failure_names_the_capability():
    status, msg = prof.explain_failure("py-spy", 1, "Error: Permission Denied: Try running again with elevated permissions")
    assert status == "unavailable" and "CAP_SYS_PTRACE" in msg and "Permission Denied" in msg
    status, msg = prof.explain_failure("perf-stat", 255, "Error:\nAccess to performance monitoring and observability operations is limited.\n"
                                                        "Consider adjusting /proc/sys/kernel/perf_event_paranoid setting")
    assert status == "unavailable" and "perf_event_paranoid" in msg and "CAP_PERFMON" in msg
    status, msg = prof.explain_failure("bpftrace-runqlat", 1, "stdin:1:1-30: ERROR: tracepoint not found: sched:sched_switch")
    assert status == "unavailable" and "tracefs" in msg
    status, msg = prof.explain_failure("ftrace", 1, "trace-cmd: Operation not permitted\n  Can't enable ftrace")
    assert status == "unavailable" and "ftrace_enabled" in msg and "Can't enable ftrace" in msg
    status, msg = prof.explain_failure("py-spy", 1, "Error: Failed to find python version from target process")
    assert status == "failed" and msg.startswith("py-spy: ")
    assert prof.exit_status([{"status": "ok"}, {"status": "unavailable"}]) == 3
    assert prof.exit_status([{"status": "failed"}, {"status": "unavailable"}]) == 1
    assert prof.exit_status([{"status": "ok"}]) == 0
    assert prof.parse_perf_stat("   1,234      context-switches   #  1 K/sec\n  <not counted>  page-faults\n  12.5 msec task-clock  # 0.1 CPUs\n") == {
        "context-switches": 1234.0, "task-clock": 12.5}


def test_report_lists_profiles(tmp_path):
    from appliance.report import write_report

    run_dir, state = tmp_path / "R1", tmp_path / ".state" / "R1"
    run_dir.mkdir()
    (state / "profiles").mkdir(parents=True)
    (state / "summary.json").write_text(json.dumps({"run_id": "R1"}))
    html = write_report(run_dir, state).read_text()
    assert "Profiles taken" in html and "no index.jsonl entries" in html
    entry = {"tool": "py-spy", "stage": "kernel-0", "pid": 42, "file": "20260101T000000Z-py-spy-kernel-0.svg", "started": "2026-01-01T00:00:00.000Z",
             "duration": 2.1, "exit_status": 0, "command": "py-spy record --pid 42"}
    (state / "profiles" / "index.jsonl").write_text(json.dumps(entry) + "\n{cut")
    html = write_report(run_dir, state).read_text()
    assert "20260101T000000Z-py-spy-kernel-0.svg" in html and "1 profile(s)" in html
    (state / "profiles" / "index.jsonl").unlink()
    (state / "profiles").rmdir()
    assert "Profiles taken" not in write_report(run_dir, state).read_text()  # no folder, no section


# -- against the real run ------------------------------------------------------------------


def test_py_spy_flame_graph_of_a_running_stage(live, capsys):
    rc = main(["profile", "--py-spy", "--duration", "2", "--stage", "kernel-0", "--json", *live.args])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0, out
    (entry,) = out["profiles"]
    svg = Path(entry["path"])
    assert svg.parent == live.profiles and svg.suffix == ".svg" and svg.name.endswith("-py-spy-kernel-0.svg")
    text = svg.read_text()
    assert "<svg" in text and "_consume" in text, text[:300]  # the stage's own loop is in the graph
    index = prof.read_index(live.profiles)
    mine = [e for e in index if e["file"] == svg.name]
    assert len(mine) == 1
    e = mine[0]
    assert e["tool"] == "py-spy" and e["stage"] == "kernel-0" and e["exit_status"] == 0 and e["run_id"] == RUN_ID
    _, stages = prof.find_stages(RUN_ID)
    assert e["pid"] == next(s.pid for s in stages if s.name == "kernel-0")
    assert e["duration"] >= 1.5 and "py-spy record" in e["command"] and e["started"].endswith("Z")


def test_dump_prints_every_thread_stack(live, capsys):
    assert main(["profile", "--dump", "--stage", "kernel", *live.args]) == 0
    out = capsys.readouterr().out
    assert "appliance: kernel-0" in out and "Thread" in out and "stage_main" in out
    assert "-py-spy-dump-kernel-0.txt" in out


def test_perf_stat_counts_context_switches(live, capsys):
    if shutil.which("perf") is None:
        pytest.skip("perf is not installed (Debian linux-perf; scripts/system-deps installs it)")
    rc = main(["profile", "--perf-stat", "--duration", "1", "--stage", "kernel-0", "--json", *live.args])
    out = json.loads(capsys.readouterr().out)
    if rc == 3:
        pytest.skip(f"the kernel refuses perf here: {out['profiles'][0]['message'] if out['profiles'] else out['not_taken'][0]['message']}")
    assert rc == 0, out
    (entry,) = out["profiles"]
    assert entry["counts"]["context-switches"] > 0  # the slow stage sleeps 50 ms a frame
    assert "context-switches" in Path(entry["path"]).read_text()


def _tracing_args() -> list[str]:
    if os.geteuid() != 0:
        pytest.skip("bpftrace and trace-cmd need root")
    if prof.tracefs_mounted():
        return []
    if shutil.which("unshare") is None:
        pytest.skip("tracefs is not mounted and unshare (util-linux) is missing to mount a private one")
    return ["--mount-tracefs"]


def test_bpftrace_scripts_on_the_run(live, capsys):
    if shutil.which("bpftrace") is None:
        pytest.skip("bpftrace is not installed (Debian bpftrace; scripts/system-deps installs it)")
    extra = _tracing_args()
    rc = main(["profile", "--bpftrace", "runqlat", "--bpftrace", "ringfaults", "--duration", "1", "--json", *extra, *live.args])
    out = json.loads(capsys.readouterr().out)
    if rc == 3:
        pytest.skip("the kernel refuses bpftrace here: " + "; ".join(e["message"] for e in out["profiles"] + out["not_taken"] if e["message"]))
    assert rc == 0, out
    by_tool = {e["tool"]: e for e in out["profiles"]}
    runq = Path(by_tool["bpftrace-runqlat"]["path"]).read_text()
    assert "@runq_latency_us[kernel-0]" in runq, runq[:500]
    faults = Path(by_tool["bpftrace-ringfaults"]["path"]).read_text()
    assert "ringfaults:" in faults
    script = live.profiles / by_tool["bpftrace-ringfaults"]["script"]
    # rendered with the run's ring mappings, and kept beside its output
    assert "@ring_faults[" in script.read_text() and "{{" not in script.read_text()


def test_ftrace_sched_switch_or_the_kernels_reason(live, capsys):
    if shutil.which("trace-cmd") is None:
        pytest.skip("trace-cmd is not installed (Debian trace-cmd; scripts/system-deps installs it)")
    extra = _tracing_args()
    rc = main(["profile", "--ftrace", "--duration", "1", "--json", *extra, *live.args])
    out = json.loads(capsys.readouterr().out)
    if rc == 3:
        msgs = [e["message"] for e in out["profiles"] + out["not_taken"]]
        assert all("trace-cmd" in m for m in msgs), msgs  # named, with what it needs
        pytest.skip("the kernel refuses trace-cmd here: " + "; ".join(msgs))
    assert rc == 0, out
    (entry,) = out["profiles"]
    assert entry["path"].endswith(".dat") and Path(entry["path"]).stat().st_size > 0


def test_missing_tools_are_named_and_the_others_still_run(live, capsys, monkeypatch, tmp_path):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no perf, bpftrace, trace-cmd; py-spy is found beside this Python
    rc = main(["profile", "--perf-stat", "--bpftrace", "runqlat", "--ftrace", "--dump", "--stage", "kernel-0", *live.args])
    cap = capsys.readouterr()
    assert "perf is not installed (not on PATH): install Debian linux-perf" in cap.err
    assert "bpftrace is not installed (not on PATH): install Debian bpftrace" in cap.err
    assert "trace-cmd is not installed (not on PATH): install Debian trace-cmd" in cap.err
    py_spy_beside = (Path(sys.executable).parent / "py-spy").is_file()
    if py_spy_beside:
        assert "stage_main" in cap.out  # the dump was taken all the same
    else:
        assert "py-spy is not installed (not on PATH): install PyPI py-spy" in cap.err
    assert rc == 3


def test_nothing_to_profile_exits_2(live, capsys, tmp_path):
    assert main(["profile", "--run", "NOSUCHRUN", "--set", f'output.root="{tmp_path}"']) == 2
    assert "run NOSUCHRUN is not running" in capsys.readouterr().err
    assert main(["profile", "--stage", "nosuch-0", *live.args]) == 2
    assert "no stage 'nosuch-0'" in capsys.readouterr().err
    assert main(["profile", "--run", RUN_ID, "--set", f'output.root="{tmp_path}"']) == 2  # the wrong root: no state folder
    assert "state folder" in capsys.readouterr().err
