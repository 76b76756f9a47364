"""``appliance profile``: profile a running appliance with the standard tools, without stopping it.

The stages are found by their process titles (``appliance: kernel-0 RUN_ID``, see
:mod:`appliance.proctitle`), so no control plane is needed and a hung supervisor is no
obstacle. Each tool runs as its own process, all of them at once over the same window:

========== ======================= =====================================================
tool       package                 what it records
========== ======================= =====================================================
py-spy     PyPI ``py-spy``         ``--dump`` stacks now; ``--py-spy`` a flame graph (SVG, speedscope)
perf       Debian ``linux-perf``   ``--perf`` CPU samples with call graphs (``perf record -g``)
perf stat  Debian ``linux-perf``   ``--perf-stat`` context switches, migrations, page faults
bpftrace   Debian ``bpftrace``     ``--bpftrace NAME`` the scripts shipped in appliance/profiling
trace-cmd  Debian ``trace-cmd``    ``--ftrace`` ``sched_switch`` on the isolated cores
========== ======================= =====================================================

A tool that is missing, or that the kernel refuses, is reported by name with the package or
the capability it needs (:func:`preflight`, :func:`explain_failure`); the other tools still run.
What each tool wrote goes to ``STATE_ROOT/RUN_ID/profiles/<timestamp>-<tool>-<stage>.<ext>``
with one line per profile in ``index.jsonl`` there (:data:`INDEX_NAME`): the run report lists
them and ``appliance incident`` bundles the folder.

The command lines are built by pure functions (:func:`build_command`, :func:`render_bpftrace`),
unit-tested without the tools; :func:`take_profiles` runs them. See docs/root-cause.md.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

__all__ = [
    "BPFTRACE_SCRIPTS", "INDEX_NAME", "TOOLS", "Job", "ProfileError", "Stage", "Tool",
    "build_command", "cpu_mask", "exit_status", "explain_failure", "find_stages", "ftrace_cpus", "parse_perf_stat", "parse_title",
    "plan_jobs", "preflight", "profiles_dir", "read_index", "render_bpftrace", "ring_mappings", "script_text", "select_stages",
    "take_profiles", "tool_of", "tracefs_mounted",
]

INDEX_NAME = "index.jsonl"
#: exit statuses of ``appliance profile`` (its --help lists them)
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3
#: the tracefs mount points tools look in (tracepoints' formats, ftrace's control files)
TRACEFS = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
#: the bpftrace scripts shipped in appliance/profiling, by the name --bpftrace takes
BPFTRACE_SCRIPTS = {
    "runqlat": "scheduling latency of the stages' threads: wakeup or preemption to running, per stage",
    "offcpu": "off-CPU time per stage, blocked vs preempted, and the kernel stacks they block in",
    "ringfaults": "page faults per stage, and those on the ring segments (/dev/shm/appliance.*) per ring",
    "biolat": "block I/O latency by issuing task, and the writer's write/fsync latency (default stage: writer)",
}

_TITLE = re.compile(r"^appliance: ([A-Za-z][\w]*-\d+) (\S+)\s*$")


class ProfileError(Exception):
    """Nothing to profile (no running run, no such stage, no state folder); the message says why."""


@dataclass(frozen=True)
class Tool:
    """An external tool: its executable, where it comes from, and what it needs."""

    name: str
    binary: str
    package: str
    needs: str


TOOLS: dict[str, Tool] = {
    "py-spy": Tool("py-spy", "py-spy", "PyPI py-spy (a dependency of the appliance: pip install py-spy)",
                   "ptrace of the stage processes: root, or CAP_SYS_PTRACE (setcap cap_sys_ptrace+ep $(command -v py-spy)); "
                   "with the Yama LSM also kernel.yama.ptrace_scope <= 1 for a process of the same user"),
    "perf": Tool("perf", "perf", "Debian linux-perf (apt-get install linux-perf)",
                 "perf_event_open on other processes: root, or CAP_PERFMON (Linux 5.8+), or kernel.perf_event_paranoid <= 1 "
                 "(sysctl -w kernel.perf_event_paranoid=1) for processes of the same user"),
    "bpftrace": Tool("bpftrace", "bpftrace", "Debian bpftrace (apt-get install bpftrace)",
                     "root (CAP_BPF + CAP_PERFMON + CAP_SYS_RESOURCE), a kernel with BPF and BTF, and tracefs mounted "
                     "(mount -t tracefs nodev /sys/kernel/tracing, or --mount-tracefs)"),
    "trace-cmd": Tool("trace-cmd", "trace-cmd", "Debian trace-cmd (apt-get install trace-cmd)",
                      "root (CAP_SYS_ADMIN), a tracefs it can mount or write (it mounts one itself, in a private mount namespace) "
                      "and a kernel that lets ftrace be switched (/proc/sys/kernel/ftrace_enabled writable)"),
}
#: profile kind -> the tool it runs
KIND_TOOL = {"py-spy-dump": "py-spy", "py-spy": "py-spy", "perf": "perf", "perf-stat": "perf", "ftrace": "trace-cmd", "ftrace-reset": "trace-cmd"}
#: counted by --perf-stat: software events, so they count in a VM without a PMU too
PERF_STAT_EVENTS = ("context-switches", "cpu-migrations", "page-faults", "minor-faults", "major-faults", "task-clock")


def tool_of(kind: str) -> Tool:
    return TOOLS["bpftrace" if kind.startswith("bpftrace-") else KIND_TOOL[kind]]


# -- finding the stages ----------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One running stage process."""

    name: str  #: ``kernel-0``
    pid: int
    run_id: str
    started: float = 0.0  #: the process's create time (epoch s)
    tids: tuple[int, ...] = ()  #: its threads when it was found
    cpus: tuple[int, ...] = ()  #: the CPUs it is pinned to


def parse_title(cmdline: list[str] | str) -> tuple[str, str] | None:
    """``(stage, run_id)`` of a stage process's title ``appliance: kernel-0 RUN_ID``, else None.

    Processes titled without a run (``appliance: offload-worker-2``) are not stages.
    """
    text = cmdline if isinstance(cmdline, str) else " ".join(cmdline)
    m = _TITLE.match(text.replace("\0", " ").strip())
    if not m or m.group(1).startswith("offload"):
        return None
    return m.group(1), m.group(2)


def find_stages(run_id: str | None = None) -> tuple[str, list[Stage]]:
    """The stage processes of run ``run_id`` (default: the run started last of those running),
    as ``(run_id, stages)`` sorted by name; :class:`ProfileError` when there are none."""
    import psutil

    found: dict[str, list[Stage]] = {}
    for proc in psutil.process_iter(["pid", "cmdline", "create_time"]):
        try:
            parsed = parse_title(proc.info["cmdline"] or [])
            if parsed is None or proc.status() == psutil.STATUS_ZOMBIE:
                continue
            name, rid = parsed
            try:
                tids = tuple(sorted(t.id for t in proc.threads()))
                cpus = tuple(sorted(proc.cpu_affinity()))
            except psutil.AccessDenied:
                tids, cpus = (proc.pid,), ()
            found.setdefault(rid, []).append(Stage(name, proc.pid, rid, proc.info["create_time"] or 0.0, tids, cpus))
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
    if run_id is None:
        if not found:
            raise ProfileError("no running appliance found: no process is titled 'appliance: STAGE-N RUN_ID' "
                               "(start one with appliance run or appliance ctl start; ps -eo pid,args | grep 'appliance:')")
        # the latest run: the one whose stages started last
        run_id = max(found, key=lambda r: min(s.started for s in found[r]))
    elif run_id not in found:
        others = ", ".join(sorted(found)) or "none"
        raise ProfileError(f"run {run_id} is not running (running: {others})")
    return run_id, sorted(found[run_id], key=_stage_key)


def _stage_key(s: Stage):
    from appliance.schema import PIPELINE
    from appliance.topology import Process

    try:
        p = Process.from_name(s.name)
    except ValueError:  # a title of no stage of ours: after them, by name
        return (len(PIPELINE), s.name, 0)
    return (PIPELINE.index(p.stage), p.stage, p.replica)


def _is_stage(s: Stage, stage: str) -> bool:
    from appliance.topology import Process

    try:
        return Process.from_name(s.name).stage == stage
    except ValueError:
        return False


def select_stages(stages: list[Stage], wanted: list[str] | None) -> list[Stage]:
    """The stages named in ``wanted`` (``kernel-0``, or ``kernel`` for every replica); all of
    them when ``wanted`` is empty. :class:`ProfileError` naming the running ones otherwise."""
    if not wanted:
        return list(stages)
    out = []
    for w in wanted:
        hit = [s for s in stages if s.name == w or _is_stage(s, w)]
        if not hit:
            raise ProfileError(f"no stage {w!r} in run {stages[0].run_id if stages else '?'} (running: {', '.join(s.name for s in stages)})")
        out += [s for s in hit if s not in out]
    return out


def ring_mappings(pid: int, run_id: str | None = None) -> list[tuple[int, int, str]]:
    """``(start, end, ring)`` of every ring segment (``/dev/shm/appliance.*``, or a hugetlbfs
    file of that name) mapped into process ``pid``, from ``/proc/PID/maps``."""
    out = []
    try:
        lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) < 6:
            continue
        name = os.path.basename(parts[5].strip().removesuffix(" (deleted)"))
        if not name.startswith("appliance.") or (run_id and f".{run_id}." not in name):
            continue
        lo, hi = (int(x, 16) for x in parts[0].split("-"))
        out.append((lo, hi, name))
    return out


def _ring_label(name: str) -> str:
    """``raw.0.0`` of ``appliance.PID.RUN.raw.0.0``."""
    return ".".join(name.split(".")[-3:])


# -- building the command lines (pure) -----------------------------------------------------


def cpu_mask(cpus) -> str:
    """A hex CPU mask (``trace-cmd -M``) of a set of CPU numbers: {1, 3} -> ``a``."""
    mask = 0
    for c in cpus:
        mask |= 1 << int(c)
    return format(mask, "x")


def render_bpftrace(script: str, targets: list[Stage], *, duration: float, rings: dict[int, list[tuple[int, int, str]]] | None = None,
                    text: str | None = None) -> str:
    """The shipped script ``script`` (appliance/profiling/SCRIPT.bt) with its placeholders filled:
    ``{{WATCH}}`` names every thread of ``targets`` (``@stage[TID] = "kernel-0";``), ``{{DURATION}}``
    the seconds it runs, ``{{RING_CHECKS}}`` (ringfaults) one address-range test per ring
    mapping of each target (``rings``: pid -> :func:`ring_mappings`). ``text`` replaces the
    shipped file (tests)."""
    if text is None:
        text = script_text(script)
    watch = "\n".join(f'    @stage[{tid}] = "{s.name}";' for s in targets for tid in (s.tids or (s.pid,)))
    checks = []
    for s in targets:
        for lo, hi, name in (rings or {}).get(s.pid, []):
            checks.append(f'    if (pid == {s.pid} && $a >= {lo:#x} && $a < {hi:#x}) {{ @ring_faults["{s.name}", "{_ring_label(name)}"] = count(); }}')
    return (text.replace("{{WATCH}}", watch or "    // no threads to watch")
            .replace("{{DURATION}}", str(max(1, round(duration))))
            .replace("{{RING_CHECKS}}", "\n".join(checks) or "    // no ring segments mapped"))


def script_text(script: str) -> str:
    """The text of a shipped bpftrace script; KeyError naming the scripts for an unknown one."""
    if script not in BPFTRACE_SCRIPTS:
        raise KeyError(f"no bpftrace script {script!r} (shipped: {', '.join(BPFTRACE_SCRIPTS)})")
    return resources.files("appliance.profiling").joinpath(f"{script}.bt").read_text()


def build_command(kind: str, targets: list[Stage], *, output: Path, duration: float = 10.0, fmt: str = "svg", rate: int = 0,
                  cpus=(), script: Path | None = None, binary: str | None = None, mount_tracefs: bool = False, idle: bool = False,
                  instance: str = "appliance") -> list[str]:
    """The command line of one profile: ``kind`` (py-spy-dump, py-spy, perf, perf-stat,
    bpftrace-NAME, ftrace) of ``targets`` (one stage for py-spy and perf stat), writing
    ``output`` (except py-spy-dump, whose stacks are its stdout). ``rate`` 0 takes each tool's
    default rate (py-spy 100 Hz, perf 99 Hz); ``cpus`` are the CPUs ftrace records;
    ``script`` the rendered bpftrace script; ``binary`` the executable's path (default its
    name); ``mount_tracefs`` runs bpftrace in a private mount namespace that mounts tracefs
    where it is not mounted (the host's mounts are left alone; trace-cmd always runs in one,
    as it mounts tracefs and debugfs itself); ``idle`` makes py-spy sample waiting
    threads too (where a stage waits, not only where it computes); ``instance`` is the ftrace
    instance trace-cmd records in (``-B``: the host's top-level tracing settings are left
    alone). Pure: nothing is run or read."""
    exe = binary or tool_of(kind).binary
    pids = ",".join(str(s.pid) for s in targets)
    secs = f"{duration:g}"
    if kind in ("py-spy-dump", "py-spy", "perf-stat") and len(targets) != 1:
        raise ValueError(f"{kind} profiles one process at a time ({len(targets)} given)")
    if kind == "py-spy-dump":
        # --nonblocking: read the stacks without pausing the process (a stage never stalls)
        cmd = [exe, "dump", "--nonblocking", "--pid", pids]
    elif kind == "py-spy":
        fmts = {"svg": "flamegraph", "speedscope": "speedscope"}
        if fmt not in fmts:
            raise ValueError(f"format {fmt!r}: svg or speedscope")
        cmd = [exe, "record", "--nonblocking", "--pid", pids, "--duration", str(max(1, round(duration))), "--rate", str(rate or 100),
               "--format", fmts[fmt], "--output", str(output), *(["--idle"] if idle else [])]
    elif kind == "perf":
        cmd = [exe, "record", "-g", "-F", str(rate or 99), "-p", pids, "-o", str(output), "--", "sleep", secs]
    elif kind == "perf-stat":
        cmd = [exe, "stat", "-e", ",".join(PERF_STAT_EVENTS), "-p", pids, "-o", str(output), "--", "sleep", secs]
    elif kind.startswith("bpftrace-"):
        if script is None:
            raise ValueError("bpftrace needs the rendered script's path")
        cmd = [exe, "-o", str(output), str(script)]
    elif kind == "ftrace":
        if not cpus:
            raise ValueError("ftrace needs the CPUs to record")
        cmd = [exe, "record", "-B", instance, "-e", "sched:sched_switch", "-M", cpu_mask(cpus), "-o", str(output), "sleep", secs]
    elif kind == "ftrace-reset":  # after a failed record: remove the instance it may have left
        cmd = [exe, "reset", "-B", instance, "-d"]
    else:
        raise ValueError(f"unknown profile kind {kind!r}")
    # trace-cmd mounts tracefs and debugfs itself where they are not mounted: always in a private
    # mount namespace, so those mounts are its own and the host's are left as they were
    if kind.startswith("ftrace") or (mount_tracefs and kind.startswith("bpftrace-")):
        mount = f"[ -d {TRACEFS[0]}/events ] || mount -t tracefs nodev {TRACEFS[0]} || exit 1; " if mount_tracefs else ""
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount + 'exec "$@"', "sh", *cmd]
    return cmd


# -- what a tool needs ---------------------------------------------------------------------


def tracefs_mounted() -> bool:
    return any((p / "events").is_dir() for p in TRACEFS)


def find_binary(tool: Tool) -> str | None:
    """The tool's executable on PATH; py-spy also beside this Python (a venv not on PATH)."""
    found = shutil.which(tool.binary)
    if found is None and tool.name == "py-spy":
        beside = Path(sys.executable).parent / tool.binary
        if beside.is_file() and os.access(beside, os.X_OK):
            found = str(beside)
    return found


def preflight(kind: str, *, mount_tracefs: bool = False) -> tuple[str | None, str | None]:
    """``(executable, None)`` when ``kind`` can be tried, else ``(None, why)``: the tool is not
    installed (naming its package), or it needs what this host does not give (tracefs, root)."""
    tool = tool_of(kind)
    exe = find_binary(tool)
    if exe is None:
        return None, f"{tool.name} is not installed (not on PATH): install {tool.package}"
    if tool.name in ("bpftrace", "trace-cmd"):
        if os.geteuid() != 0:
            return None, f"{tool.name} needs {tool.needs}; this is uid {os.geteuid()}: run appliance profile as root (sudo)"
        if tool.name == "trace-cmd" and shutil.which("unshare") is None:
            return None, "trace-cmd runs in a private mount namespace (it mounts tracefs and debugfs itself): install Debian util-linux (unshare)"
        # trace-cmd mounts tracefs itself (in its private mount namespace: build_command)
        if tool.name == "bpftrace" and not tracefs_mounted():
            if not mount_tracefs:
                return None, (f"{tool.name} needs tracefs, which is not mounted (no {TRACEFS[0]}/events): "
                              f"mount -t tracefs nodev {TRACEFS[0]} (or add it to /etc/fstab), or pass --mount-tracefs "
                              "to mount it for the tools only, in a private mount namespace")
            if shutil.which("unshare") is None:
                return None, "--mount-tracefs needs unshare: install Debian util-linux"
    if tool.name == "perf" and os.geteuid() != 0:
        paranoid = _read_int("/proc/sys/kernel/perf_event_paranoid")
        if paranoid is not None and paranoid > 1 and not _has_cap(38):  # CAP_PERFMON
            return None, (f"perf: kernel.perf_event_paranoid is {paranoid}, which lets an unprivileged user profile only its own "
                          f"commands; needs {tool.needs}")
    return exe, None


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _has_cap(bit: int) -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> bit & 1)
    except (OSError, ValueError):
        pass
    return False


#: (tool, pattern in its stderr) -> what the kernel refused; a match makes the profile "unavailable"
_REFUSALS = [
    ("py-spy", r"Permission denied|Operation not permitted|EPERM|ptrace", "the kernel refused ptrace of the stage"),
    ("perf", r"perf_event_paranoid|Access to performance monitoring|Permission denied|Operation not permitted|No permission",
     "the kernel refused perf_event_open"),
    ("perf", r"not supported|<not supported>|No such device", "the kernel or the VM does not support the events"),
    ("bpftrace", r"tracepoint not found|Could not read symbols|tracefs|debugfs", "the kernel's tracepoints are not visible (is tracefs mounted?)"),
    ("bpftrace", r"Operation not permitted|Permission denied|EPERM|lockdown|Unknown error -1: Failed to load|BPF_PROG_LOAD",
     "the kernel refused to load or attach the BPF program"),
    ("bpftrace", r"BTF|kernel headers", "the kernel has no BTF or headers for bpftrace"),
    ("trace-cmd", r"Operation not permitted|Permission denied|Can't enable ftrace|Can't disable ftrace|tracefs|debugfs",
     "the kernel refused ftrace (writing /proc/sys/kernel/ftrace_enabled or tracefs control files)"),
]


def explain_failure(kind: str, returncode: int, stderr: str) -> tuple[str, str]:
    """``(status, message)`` of a tool that exited ``returncode``: ``unavailable`` where the
    kernel refused it (the message names the capability or setting it needs, and the tool's
    own words), ``failed`` otherwise (a stage that exited, a bad argument)."""
    tool = tool_of(kind)
    said = " / ".join(ln.strip() for ln in stderr.strip().splitlines()[-4:] if ln.strip()) or f"exit status {returncode}"
    if returncode < 0:
        said = f"killed by signal {-returncode}" + (f" ({said})" if stderr.strip() else "")
    for name, pattern, what in _REFUSALS:
        if name == tool.name and re.search(pattern, stderr, re.IGNORECASE):
            return "unavailable", f"{tool.name}: {what}: {said}. It needs {tool.needs}"
    if tool.name == "trace-cmd" and returncode < 0:
        return "unavailable", f"{tool.name} crashed ({said}); the kernel likely refuses ftrace's control files. It needs {tool.needs}"
    return "failed", f"{tool.name}: {said}"


# -- planning and running ------------------------------------------------------------------


@dataclass
class Job:
    """One profile to take: a command, the stage(s) it looks at, where its output goes."""

    kind: str
    stage: str  #: a stage name, or "all"
    targets: list[Stage]
    path: Path  #: the profile's file
    command: list[str] = field(default_factory=list)
    script: Path | None = None  #: the rendered bpftrace script (kept beside the profile)
    script_body: str = ""
    stdout_is_output: bool = False  #: py-spy dump: its stdout is the profile
    cleanup: list[str] = field(default_factory=list)  #: run when the command fails (trace-cmd's instance)
    unavailable: str = ""  #: why the tool cannot run here (then no command runs)


_EXT = {"py-spy-dump": "txt", "perf": "perf.data", "perf-stat": "txt", "ftrace": "dat"}


def _label(targets: list[Stage], all_stages: list[Stage]) -> str:
    if len(targets) == 1:
        s = targets[0]
        # two processes of one name (a restarted stage whose old process lingers): tell them apart
        return s.name if sum(o.name == s.name for o in all_stages) == 1 else f"{s.name}-pid{s.pid}"
    if len(targets) == len(all_stages):
        return "all"
    return "+".join(s.name for s in targets)


def plan_jobs(kinds: list[str], stages: list[Stage], all_stages: list[Stage], out_dir: Path, *, stamp: str, duration: float = 10.0,
              fmt: str = "svg", rate: int = 0, cpus=(), stage_given: bool = False, mount_tracefs: bool = False,
              binaries: dict[str, str | None] | None = None, rings: dict | None = None, idle: bool = False) -> list[Job]:
    """The jobs for the profile ``kinds`` of ``stages``: py-spy and perf stat one per stage, the
    others one for all of them (bpftrace's biolat looks at the writer unless stages were
    given). ``binaries`` maps a tool's name to its executable, or None with ``unavailable``
    set from ``preflight``'s reasons (``binaries[name + ':why']``). Pure: it reads no process
    and runs nothing (the bpftrace scripts are rendered here and written when the job runs)."""
    binaries = binaries or {}
    jobs: list[Job] = []

    def path_for(kind: str, label: str, ext: str) -> Path:
        return out_dir / f"{stamp}-{kind}-{label}.{ext}"

    for kind in kinds:
        tool = tool_of(kind)
        exe, why = binaries.get(tool.name, tool.binary), binaries.get(tool.name + ":why", "")
        per_stage = kind in ("py-spy-dump", "py-spy", "perf-stat")
        groups = [[s] for s in stages] if per_stage else [stages]
        if kind == "bpftrace-biolat" and not stage_given:
            writers = [s for s in all_stages if s.name.startswith("writer-")]
            groups = [writers or stages]
        if kind == "ftrace":
            groups = [stages]
        for group in groups:
            label = _label(group, all_stages)
            if kind == "py-spy":
                ext = "svg" if fmt == "svg" else "speedscope.json"
            elif kind.startswith("bpftrace-"):
                ext = "txt"
            else:
                ext = _EXT[kind]
            job = Job(kind, label, group, path_for(kind, label, ext), stdout_is_output=kind == "py-spy-dump")
            if why or exe is None:
                job.unavailable = why or f"{tool.name} is not installed: install {tool.package}"
                jobs.append(job)
                continue
            if kind.startswith("bpftrace-"):
                job.script = path_for(kind, label, "bt")
                job.script_body = render_bpftrace(kind.removeprefix("bpftrace-"), group, duration=duration, rings=rings)
            if kind == "ftrace" and not cpus:
                job.unavailable = "ftrace: no CPUs to record: the host isolates none and the stages are not pinned; pass --cpus LIST"
                jobs.append(job)
                continue
            instance = f"appliance-profile-{os.getpid()}"
            job.command = build_command(kind, group, output=job.path, duration=duration, fmt=fmt, rate=rate, cpus=cpus,
                                        script=job.script, binary=exe, mount_tracefs=mount_tracefs, idle=idle, instance=instance)
            if kind == "ftrace":
                job.cleanup = build_command("ftrace-reset", group, output=job.path, binary=exe, mount_tracefs=mount_tracefs, instance=instance)
            jobs.append(job)
    return jobs


def profiles_dir(cfg, run_id: str) -> Path:
    """``STATE_ROOT/RUN_ID/profiles`` of the config ``cfg`` (state_root defaults to ROOT/.state)."""
    root = Path(cfg.output.root).resolve()
    state_root = Path(cfg.output.state_root).resolve() if cfg.output.state_root else root / ".state"
    return state_root / run_id / "profiles"


def read_index(folder: Path) -> list[dict]:
    """The entries of ``folder/index.jsonl``, oldest first ([] when there is none); a line cut
    short is skipped."""
    try:
        lines = (Path(folder) / INDEX_NAME).read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_perf_stat(text: str) -> dict[str, float]:
    """The counts of ``perf stat``'s text output: {"context-switches": 836, ...}."""
    counts = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d.,]+)\s+(?:msec\s+)?([a-z][\w:-]*)", line)
        if m and m.group(2) in PERF_STAT_EVENTS:
            try:
                counts[m.group(2)] = float(m.group(1).replace(",", ""))
            except ValueError:
                continue
    return counts


def take_profiles(jobs: list[Job], out_dir: Path, *, run_id: str, duration: float, grace_s: float = 60.0) -> list[dict]:
    """Run the ``jobs`` all at once, wait for them (``duration`` + ``grace_s`` at most, then
    they are killed), and append one ``index.jsonl`` line per profile started to ``out_dir``.
    Returns every job's entry, the ones that could not start included (``status`` ok, failed
    or unavailable; those are not indexed: they wrote nothing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    running = []
    entries = []
    for job in jobs:
        entry = {
            "run_id": run_id, "tool": job.kind, "stage": job.stage,
            "pid": job.targets[0].pid if len(job.targets) == 1 else [s.pid for s in job.targets],
            "path": str(job.path), "file": job.path.name, "started": _now_iso(), "duration": 0.0,
            "command": shlex.join(job.command), "exit_status": None, "status": "unavailable", "message": job.unavailable,
        }
        entries.append(entry)
        if job.unavailable:
            entry["path"] = entry["file"] = None
            continue
        if job.script is not None:
            job.script.write_text(job.script_body)
            entry["script"] = job.script.name
        stdout = open(job.path, "wb") if job.stdout_is_output else subprocess.DEVNULL
        errf = open(job.path.with_name(job.path.name + ".stderr"), "w+b")
        try:
            proc = subprocess.Popen(job.command, stdout=stdout, stderr=errf, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            entry.update(status="unavailable", message=f"{tool_of(job.kind).name}: cannot start {job.command[0]}: {exc}", path=None, file=None)
            errf.close()
            Path(errf.name).unlink(missing_ok=True)
            continue
        finally:
            if stdout is not subprocess.DEVNULL:
                stdout.close()
        running.append((job, entry, proc, errf, time.monotonic()))
    deadline = time.monotonic() + duration + grace_s
    ended: dict[int, float] = {}  # each tool's own end, so its duration is its own
    while len(ended) < len(running):
        for i, (_, entry, proc, _, _) in enumerate(running):
            if i in ended:
                continue
            if proc.poll() is not None:
                ended[i] = time.monotonic()
            elif time.monotonic() > deadline:
                _kill(proc)
                ended[i] = time.monotonic()
                entry["message"] = f"still running {duration + grace_s:g} s after it started: killed"
        time.sleep(0.02)
    for i, (job, entry, proc, errf, t0) in enumerate(running):
        rc = proc.wait()
        entry["duration"] = round(ended[i] - t0, 3)
        entry["exit_status"] = rc
        errf.seek(0)
        stderr = errf.read().decode(errors="replace")
        errf.close()
        Path(errf.name).unlink(missing_ok=True)
        has_output = job.path.is_file() and job.path.stat().st_size > 0
        if rc == 0 and has_output:
            entry["status"], entry["message"] = "ok", ""
        else:
            status, message = explain_failure(job.kind, rc, stderr or ("" if rc else "exited 0 but wrote nothing"))
            entry["status"], entry["message"] = status, entry["message"] or message
            if not has_output:
                job.path.unlink(missing_ok=True)
                entry["path"] = entry["file"] = None
            if job.cleanup:
                try:
                    subprocess.run(job.cleanup, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    pass
        if entry["status"] == "ok" and job.kind == "perf-stat":
            entry["counts"] = parse_perf_stat(job.path.read_text(errors="replace"))
    with open(out_dir / INDEX_NAME, "a") as index:
        for entry in entries:
            if entry["exit_status"] is not None:
                index.write(json.dumps(entry, default=str) + "\n")
    return entries


def _kill(proc: subprocess.Popen) -> None:
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            continue


def exit_status(entries: list[dict]) -> int:
    """0 every profile taken, 1 some failed, else 3 some tool missing or refused."""
    statuses = {e["status"] for e in entries}
    if "failed" in statuses:
        return EXIT_FAILED
    if "unavailable" in statuses:
        return EXIT_UNAVAILABLE
    return EXIT_OK


def ftrace_cpus(stages: list[Stage], topology_isolated=None) -> tuple[int, ...]:
    """The CPUs ftrace records: the host's isolated CPUs, else the CPUs the stages are pinned to."""
    if topology_isolated:
        return tuple(sorted(topology_isolated))
    pinned = set()
    for s in stages:
        pinned |= set(s.cpus)
    return tuple(sorted(pinned))
