"""``appliance profile``: profile a running appliance with py-spy, perf, bpftrace and trace-cmd."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HELP = "profile a running appliance without stopping it: py-spy flame graphs, perf, bpftrace, ftrace"
DESCRIPTION = """\
Profile the stages of a running appliance with the standard tools, without stopping or
slowing it noticeably. The stages are found by their process titles (ps shows
"appliance: kernel-0 RUN_ID"): the run started last, or --run RUN_ID; every stage, or
--stage NAME (kernel-0, or kernel for every replica; repeatable). The tools asked for run
at once over the same window of --duration seconds:

  --dump           py-spy dump: every thread's Python stack, now (the default tool)
  --py-spy         py-spy record: a flame graph (--format svg, or speedscope for speedscope.app)
  --perf           perf record -g: CPU samples with call graphs (perf report -i FILE)
  --perf-stat      perf stat: context switches, CPU migrations, page faults per stage
  --bpftrace NAME  a shipped bpftrace script (repeatable, or all):
                     runqlat     scheduling latency of the stages' threads (pinned stages: us)
                     offcpu      off-CPU time, blocked vs preempted, and where they block
                     ringfaults  page faults, and those on the ring segments (/dev/shm/appliance.*)
                     biolat      block I/O latency, and the writer's write/fsync latency
  --ftrace         trace-cmd record of sched_switch on the isolated cores (trace-cmd report -i FILE)

Each tool is optional. One that is not installed, or that the kernel refuses, is named with
the package to install (py-spy: PyPI py-spy; perf: Debian linux-perf; bpftrace, trace-cmd:
Debian packages of those names) or the capability it needs (CAP_SYS_PTRACE for py-spy,
kernel.perf_event_paranoid or CAP_PERFMON for perf, root and a mounted tracefs for bpftrace,
root and a kernel that lets ftrace be switched for trace-cmd), and the other tools still run.
--mount-tracefs mounts tracefs for bpftrace in a private mount namespace where the host has
none mounted (root). trace-cmd always runs in one, in its own ftrace instance: it mounts
tracefs and debugfs by itself, and those mounts stay its own.

The profiles are kept beside the run, in STATE_ROOT/RUN_ID/profiles/ (STATE_ROOT is
output.state_root, by default ROOT/.state), as TIMESTAMP-TOOL-STAGE.EXT, with one line per
profile in index.jsonl there (tool, stage, pid, path, started, duration, command, exit
status). The run report lists them; appliance incident bundles them. --config/--set are the
run's, to find that folder (or give --state-dir).

Which profile for which alert (docs/runbook.md, docs/root-cause.md):
  stage_over_budget    --py-spy --stage STAGE  (where its time goes), --bpftrace runqlat (waiting for a CPU?)
  ring_full            --py-spy on the stage after the ring, --bpftrace offcpu --stage STAGE
  heartbeat / hung     --dump --stage STAGE    (where it is stuck), --bpftrace offcpu
  latency spikes       --perf-stat, --bpftrace ringfaults, --ftrace

examples:
  appliance profile                                   # py-spy dump of every stage of the latest run
  appliance profile --py-spy --duration 30 --stage kernel-0
  appliance profile --py-spy --format speedscope --stage writer
  appliance profile --py-spy --idle --stage basecall-0   # where it waits, too (ring_full)
  appliance profile --perf --perf-stat --duration 10
  sudo appliance profile --bpftrace runqlat --bpftrace ringfaults --duration 20
  sudo appliance profile --bpftrace all --mount-tracefs
  sudo appliance profile --ftrace --duration 5 --cpus 2-7
  appliance profile --run 260101_SIM01_0001_FC --dump --json   # the index entries written

Exit status: 0 every profile was taken; 1 a tool failed (a stage exited, a bad argument);
2 nothing to profile (no running run, no such stage or state folder) or a bad configuration;
3 a tool asked for is not installed or not permitted here (the others were taken).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    from appliance.profile import BPFTRACE_SCRIPTS

    tools = parser.add_argument_group("tools (default --dump)")
    tools.add_argument("--dump", action="store_true", help="py-spy dump: every thread's Python stack, now")
    tools.add_argument("--py-spy", dest="py_spy", action="store_true", help="py-spy record: a flame graph over --duration")
    tools.add_argument("--perf", action="store_true", help="perf record -g: CPU samples with call graphs")
    tools.add_argument("--perf-stat", dest="perf_stat", action="store_true", help="perf stat: context switches, migrations, page faults")
    tools.add_argument("--bpftrace", action="append", default=[], metavar="NAME", choices=[*BPFTRACE_SCRIPTS, "all"],
                       help=f"a shipped bpftrace script: {', '.join(BPFTRACE_SCRIPTS)}, or all (repeatable)")
    tools.add_argument("--ftrace", action="store_true", help="trace-cmd record of sched_switch on the isolated cores")
    parser.add_argument("--run", dest="run_id", metavar="RUN_ID", help="the run to profile (default: the one started last)")
    parser.add_argument("--stage", dest="stages", action="append", default=[], metavar="NAME",
                        help="a stage (kernel-0) or all replicas of one (kernel); repeatable; default every stage")
    parser.add_argument("--duration", type=float, default=10.0, metavar="S", help="seconds to record (default 10)")
    parser.add_argument("--format", dest="fmt", choices=("svg", "speedscope"), default="svg", help="py-spy's flame graph format (default svg)")
    parser.add_argument("--idle", action="store_true", help="py-spy: sample waiting threads too (where a stage waits, e.g. on a full ring)")
    parser.add_argument("--rate", type=int, default=0, metavar="HZ", help="samples per second (default py-spy 100, perf 99)")
    parser.add_argument("--cpus", metavar="LIST", help="the CPUs --ftrace records (default the isolated CPUs, else the stages' CPUs)")
    parser.add_argument("--mount-tracefs", dest="mount_tracefs", action="store_true",
                        help="where tracefs is not mounted, mount it for bpftrace in a private mount namespace (root)")
    parser.add_argument("--state-dir", type=Path, help="the run's state folder (default STATE_ROOT/RUN_ID of the config)")
    parser.add_argument("--config", type=Path, help="the run config (TOML) the run was started with")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a config override the run was started with (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the index entries written, as JSON")


def _kinds(args: argparse.Namespace) -> list[str]:
    from appliance.profile import BPFTRACE_SCRIPTS

    kinds = []
    if args.dump:
        kinds.append("py-spy-dump")
    if args.py_spy:
        kinds.append("py-spy")
    if args.perf:
        kinds.append("perf")
    if args.perf_stat:
        kinds.append("perf-stat")
    scripts = list(BPFTRACE_SCRIPTS) if "all" in args.bpftrace else args.bpftrace
    kinds += [f"bpftrace-{s}" for s in dict.fromkeys(scripts)]
    if args.ftrace:
        kinds.append("ftrace")
    return kinds or ["py-spy-dump"]


def run(args: argparse.Namespace) -> int:
    import time

    from appliance import profile as prof
    from appliance.config import ConfigError, load_config

    if not args.duration > 0:
        print("appliance profile: --duration must be more than 0 seconds", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"appliance profile: {exc}", file=sys.stderr)
        return 2
    cpus: tuple[int, ...] = ()
    if args.cpus:
        import rt

        try:
            cpus = tuple(sorted(rt.parse_cpulist(args.cpus)))
        except ValueError as exc:
            print(f"appliance profile: --cpus {args.cpus}: {exc}", file=sys.stderr)
            return 2
    try:
        run_id, all_stages = prof.find_stages(args.run_id)
        stages = prof.select_stages(all_stages, args.stages)
    except prof.ProfileError as exc:
        print(f"appliance profile: {exc}", file=sys.stderr)
        return 2
    if args.state_dir is not None:
        state_dir = Path(args.state_dir)
    else:
        state_dir = prof.profiles_dir(cfg, run_id).parent
    if not state_dir.is_dir():
        print(f"appliance profile: run {run_id} is running, but its state folder {state_dir} does not exist: pass the run's "
              "--config/--set (output.root, output.state_root), or --state-dir", file=sys.stderr)
        return 2
    out_dir = state_dir / "profiles"
    kinds = _kinds(args)
    binaries: dict = {}
    for kind in kinds:
        tool = prof.tool_of(kind)
        if tool.name in binaries:
            continue
        exe, why = prof.preflight(kind, mount_tracefs=args.mount_tracefs)
        binaries[tool.name] = exe
        if why:
            binaries[tool.name + ":why"] = why
    if "ftrace" in kinds and not cpus:
        import rt

        cpus = prof.ftrace_cpus(stages, rt.read_topology().isolated_cpus)
    rings = {s.pid: prof.ring_mappings(s.pid, run_id) for s in stages} if "bpftrace-ringfaults" in kinds else None
    base = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    stamp, n = base, 1
    while True:  # a second profile within the same second: 20261203T131500Z.2-...
        jobs = prof.plan_jobs(kinds, stages, all_stages, out_dir, stamp=stamp, duration=args.duration, fmt=args.fmt, rate=args.rate,
                              cpus=cpus, stage_given=bool(args.stages), mount_tracefs=args.mount_tracefs, binaries=binaries, rings=rings,
                              idle=args.idle)
        if not any(j.path.exists() or (j.script is not None and j.script.exists()) for j in jobs):
            break
        n += 1
        stamp = f"{base}.{n}"
    if not args.json:
        timed = any(k != "py-spy-dump" for k in kinds)
        print(f"profiling run {run_id}: {', '.join(s.name for s in stages)} with {', '.join(kinds)}"
              + (f" for {args.duration:g} s" if timed else "") + f" -> {out_dir}", file=sys.stderr)
    entries = prof.take_profiles(jobs, out_dir, run_id=run_id, duration=args.duration)
    status = prof.exit_status(entries)
    if args.json:
        written = [e for e in entries if e["exit_status"] is not None]
        refused = [{"tool": e["tool"], "stage": e["stage"], "message": e["message"]} for e in entries if e["exit_status"] is None]
        print(json.dumps({"run_id": run_id, "folder": str(out_dir), "profiles": written, "not_taken": refused, "exit_status": status},
                         indent=2, default=str))
    else:
        _print_human(entries, out_dir)
    return status


def _print_human(entries: list[dict], out_dir: Path) -> None:
    hints = {"perf": "perf report -i {path}", "ftrace": "trace-cmd report -i {path}"}
    said = set()
    for e in entries:
        who = f"{e['tool']} {e['stage']}" + (f" (pid {e['pid']})" if isinstance(e["pid"], int) else "")
        if e["status"] != "ok":
            if e["message"] not in said:  # one line per reason, not one per stage
                print(f"{'unavailable' if e['status'] == 'unavailable' else 'failed'}: {who}: {e['message']}", file=sys.stderr)
                said.add(e["message"])
            continue
        path = Path(e["path"])
        if e["tool"] in ("py-spy-dump", "perf-stat") or e["tool"].startswith("bpftrace-"):
            print(f"== {who}: {path}")
            print(path.read_text(errors="replace").rstrip())
            print()
            continue
        size = path.stat().st_size
        hint = hints.get(e["tool"], "").format(path=path)
        print(f"{who}: {path} ({size / 1024:.0f} KiB, {e['duration']:.1f} s)" + (f"; view: {hint}" if hint else ""))
    print(f"index: {out_dir / 'index.jsonl'}", file=sys.stderr)
