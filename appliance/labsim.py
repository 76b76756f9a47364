"""A simulated lab: N instruments on this machine against one PostgreSQL ledger and one pool.

``appliance lab simulate`` answers "what happens when we add instruments". It starts:

- a PostgreSQL server of its own (``appliance.pgserver``) with a fresh database, unless
  ``--ledger`` names one (then a fresh database is not made: the ledger is used as it is);
- N instruments, each a real ``appliance serve`` process (``SIM01`` .. ``SIMnn``) with a small
  synthetic run (128 px tiles, a low frame rate). They share one data root, as instruments
  writing to one lab file system would, and submit their runs' jobs to the lab ledger
  (``offload.dispatch = false``, ``offload.scan_runs = "own"``); the driver starts a new
  run on each as soon as the last one ended, for ``--minutes``;
- one executor pool: ``appliance jobs work --no-scan`` with ``--workers`` slots, which runs
  every instrument's jobs from the ledger.

Then it waits for the jobs to finish (up to ``--drain-s``) and reports, from the ledger and
the instruments' run summaries (:func:`summarize`, pure): jobs/s per instrument and in
total, queue wait p50/p99 per class, fairness (max / min of the instruments' throughput),
frames acquired and dropped, and whether every job a run calls for was submitted exactly
once. ``--restart-ledger-at S`` restarts the PostgreSQL server S seconds in (its own server
only; with ``--ledger-down D`` it stays down D seconds first): the instruments go on
acquiring, their submissions wait in their outboxes, and are handed over once it is back. The HTML report (:func:`write_report`) plots the jobs done over
time per instrument and the waits per class.
"""

from __future__ import annotations

import ctypes
import json
import logging
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["SimSettings", "LabSimulation", "SimulationError", "expected_jobs", "format_result", "instrument_ids",
           "instrument_overrides", "parse_weight", "summarize", "worker_overrides", "write_report"]

log = logging.getLogger("appliance.labsim")

CLASSES = ("realtime", "batch", "reprocess")


class SimulationError(RuntimeError):
    """The simulation could not run (no PostgreSQL, a process that would not start)."""


@dataclass(frozen=True)
class SimSettings:
    """What ``appliance lab simulate`` runs (its options)."""

    instruments: int = 4
    minutes: float = 2.0
    workers: int = 2  #: the one pool's slots (appliance jobs work)
    tile_size: int = 128
    rate_hz: float = 4.0
    cycles: int = 8
    tiles: tuple[int, ...] = (1101,)
    drain_s: float = 180.0  #: how long to wait for the jobs after the last run
    restart_ledger_at_s: float | None = None  #: restart the private PostgreSQL server this long in
    ledger_down_s: float = 0.0  #: ... and keep it down this long first (0: pg_ctl restart)
    #: ``--weight SIM01=2``: the pool's ``offload.instrument_weights`` (instrument, weight); () = equal
    weights: tuple[tuple[str, float], ...] = ()

    def check(self) -> None:
        """Refuse settings that cannot run, naming the option."""
        if not 1 <= self.instruments <= 16:
            raise ValueError(f"--instruments {self.instruments}: allowed 1 to 16")
        if not 0 < self.minutes <= 24 * 60:
            raise ValueError(f"--minutes {self.minutes}: allowed more than 0, up to 1440")
        if not 1 <= self.workers <= 64:
            raise ValueError(f"--workers {self.workers}: allowed 1 to 64")
        if self.tile_size not in (64, 128, 256, 512):
            raise ValueError(f"--tile-size {self.tile_size}: allowed 64, 128, 256 or 512 (small runs fit many instruments)")
        if not 0 < self.rate_hz <= 1000:
            raise ValueError(f"--rate {self.rate_hz}: allowed more than 0, up to 1000 frames/s")
        if self.cycles < 4:
            raise ValueError(f"--cycles {self.cycles}: at least 4 (the cluster template is built from the first 4)")
        if self.restart_ledger_at_s is not None and not 0 < self.restart_ledger_at_s < self.minutes * 60:
            raise ValueError(f"--restart-ledger-at {self.restart_ledger_at_s}: within the simulation (0 to {self.minutes * 60:g} s)")
        if not 0 <= self.ledger_down_s <= 600 or (self.ledger_down_s and self.restart_ledger_at_s is None):
            raise ValueError(f"--ledger-down {self.ledger_down_s}: 0 to 600 s, with --restart-ledger-at")
        names = instrument_ids(self.instruments)
        for name, w in self.weights:
            if name not in names:
                raise ValueError(f"--weight {name}={w:g}: no such instrument; allowed {', '.join(names)}")
            if not 0 < w <= 1000:
                raise ValueError(f"--weight {name}={w:g}: allowed a weight more than 0, up to 1000 (1 is the default)")

    def weight(self, name: str) -> float:
        """The instrument's weight in the pool's fair share (1.0 unless --weight names it)."""
        return dict(self.weights).get(name, 1.0)


def parse_weight(text: str) -> tuple[str, float]:
    """``--weight SIM01=2`` -> ("SIM01", 2.0)."""
    name, sep, w = text.partition("=")
    try:
        if sep:
            return name.strip(), float(w)
    except ValueError:
        pass
    raise ValueError(f"--weight {text}: give INSTRUMENT=WEIGHT, e.g. --weight SIM01=2")


def instrument_ids(n: int) -> list[str]:
    return [f"SIM{i:02d}" for i in range(1, n + 1)]


def instrument_overrides(s: SimSettings, name: str, lab_root: Path, work: Path, ledger: str) -> list[str]:
    """The ``--set`` overrides of instrument ``name``'s ``appliance serve``: the shared data
    root, its own state root (its flight recorder) and control socket, submit-only offload to
    the lab ledger, and the small synthetic run."""
    tiles = ", ".join(str(t) for t in s.tiles)
    return [
        f'run.instrument_id="{name}"', f"run.cycles={s.cycles}", f"run.tiles=[{tiles}]",
        f'output.root="{lab_root}"', f'output.state_root="{work / "state" / name}"',
        f'control.socket_dir="{work / "sock" / name}"',
        f"source.synthetic.tile_size={s.tile_size}", f"source.rate_hz={s.rate_hz:g}", "source.prerender=false",
        f'offload.ledger="{ledger}"', "offload.dispatch=false", 'offload.scan_runs="own"', "offload.poll_s=1.0",
        "storage.enabled=false", "metrics.port=0",
    ]


def worker_overrides(s: SimSettings, lab_root: Path, ledger: str) -> list[str]:
    """The one pool's ``appliance jobs work`` overrides."""
    reserved = 1 if s.workers > 1 else 0
    weights = [f"offload.instrument_weights={{{', '.join(f'{n} = {w!r}' for n, w in s.weights)}}}"] if s.weights else []
    return [f'output.root="{lab_root}"', f'offload.ledger="{ledger}"', f"offload.workers={s.workers}",
            f"offload.reserved_realtime={reserved}", "storage.enabled=false", *weights]


# -- the figures (pure) ---------------------------------------------------------------------------


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def expected_jobs(run: Mapping[str, Any]) -> dict[tuple[str, int | None], int]:
    """The jobs a run calls for, ``{(kind, cycle): 1}``: a cycle-qc per complete cycle, and a
    fastq and an align-qc once the run is complete (``run``: ``{"cycles_complete", "run_complete"}``)."""
    out: dict[tuple[str, int | None], int] = {("cycle-qc", c): 1 for c in range(1, int(run.get("cycles_complete") or 0) + 1)}
    if run.get("run_complete"):
        out[("fastq", None)] = 1
        out[("align-qc", None)] = 1
    return out


def summarize(jobs: Iterable[Mapping[str, Any]], runs: Mapping[str, list[Mapping[str, Any]]], *, t0: float, t1: float,
              settings: SimSettings | None = None, now: float | None = None) -> dict:
    """The simulation's result from the ledger's jobs (``Job.to_dict()``s) and each
    instrument's runs (``{"run_id", "frames_acquired", "frames_dropped", "run_complete",
    "cycles_complete"}``), over the window ``t0..t1`` (wall clock) in which runs were started.

    Throughput counts the jobs of each instrument that succeeded by the end of the drain (all
    of them, when the pool kept up) over the window plus the drain it took. Waits are
    ``started_at - created_at`` per class, of every job that started. Each instrument's share
    is its part of the jobs done; fairness is max / min of the instruments' throughput per unit
    of weight (``settings.weights``, 1.0 each by default: 1.0 is fair; None with an instrument
    that did nothing)."""
    jobs = list(jobs)
    names = sorted(runs)
    end = max([float(j["finished_at"]) for j in jobs if j.get("finished_at")] + [t1])
    span = max(1e-9, end - t0)
    per: dict[str, dict] = {}
    for name in names:
        mine = [j for j in jobs if j.get("instrument_id") == name]
        done = [j for j in mine if j["state"] == "succeeded"]
        rs = list(runs[name])
        per[name] = {
            "runs": len(rs), "runs_complete": sum(1 for r in rs if r.get("run_complete")),
            "frames_acquired": sum(int(r.get("frames_acquired") or 0) for r in rs),
            "frames_dropped": sum(int(r.get("frames_dropped") or 0) for r in rs),
            "jobs": len(mine), "jobs_succeeded": len(done),
            "jobs_not_done": sum(1 for j in mine if j["state"] not in ("succeeded", "held", "cancelled")),
            "jobs_held": sum(1 for j in mine if j["state"] == "held"),
            "jobs_per_s": len(done) / span,
            "weight": settings.weight(name) if settings is not None else 1.0,
        }
    waits: dict[str, list[float]] = {c: [] for c in CLASSES}
    for j in jobs:
        if j.get("started_at") and j.get("priority") in waits:
            waits[j["priority"]].append(max(0.0, float(j["started_at"]) - float(j["created_at"])))
    total_done = sum(p["jobs_succeeded"] for p in per.values())
    for p in per.values():
        p["share"] = p["jobs_succeeded"] / total_done if total_done else None
    rates = [p["jobs_per_s"] / p["weight"] for p in per.values()]
    fairness = (max(rates) / min(rates)) if rates and min(rates) > 0 else None
    # exactly once: every job a run calls for is in the ledger once (idempotency keys), none missing
    have: dict[tuple, int] = {}
    for j in jobs:
        params = j.get("params") or {}
        key = (params.get("run"), j["kind"], params.get("cycle"))
        have[key] = have.get(key, 0) + 1
    missing = []
    for name in names:
        for r in runs[name]:
            for (kind, cycle), n in expected_jobs(r).items():
                got = have.get((r["run_id"], kind, cycle), 0)
                if got < n:
                    missing.append(f"{r['run_id']} {kind}" + (f" cycle {cycle}" if cycle else ""))
    duplicated = [f"{run} {kind}" + (f" cycle {cycle}" if cycle else "") for (run, kind, cycle), n in have.items() if n > 1]
    return {
        "settings": asdict(settings) if settings is not None else None,
        "window_s": round(t1 - t0, 3), "span_s": round(span, 3),
        "instruments": per,
        "total": {"jobs": len(jobs), "jobs_succeeded": total_done, "jobs_per_s": total_done / span,
                  "frames_dropped": sum(p["frames_dropped"] for p in per.values())},
        "wait_s": {c: {"n": len(w), "p50": _pct(w, 50), "p99": _pct(w, 99)} for c, w in waits.items()},
        "fairness": fairness,
        "exactly_once": {"ok": not missing and not duplicated, "missing": missing[:20], "duplicated": duplicated[:20],
                         "n_missing": len(missing), "n_duplicated": len(duplicated)},
        "completions": {name: sorted(round(float(j["finished_at"]) - t0, 3) for j in jobs
                                     if j.get("instrument_id") == name and j["state"] == "succeeded" and j.get("finished_at"))
                        for name in names},
    }


def format_result(r: Mapping[str, Any]) -> str:
    """The result as the operator reads it: one row per instrument, the totals, the waits."""
    lines = [f"{'INSTRUMENT':<10} {'RUNS':>5} {'FRAMES':>7} {'DROPS':>5} {'JOBS':>5} {'DONE':>5} {'JOBS/S':>7} "
             f"{'WEIGHT':>6} {'SHARE':>6}"]
    for name, p in r["instruments"].items():
        share = f"{p['share']:>6.1%}" if p.get("share") is not None else f"{'-':>6}"
        lines.append(f"{name:<10} {p['runs']:>5} {p['frames_acquired']:>7} {p['frames_dropped']:>5} {p['jobs']:>5} "
                     f"{p['jobs_succeeded']:>5} {p['jobs_per_s']:>7.3f} {p.get('weight', 1.0):>6g} {share}")
    t = r["total"]
    lines.append(f"{'total':<10} {'':>5} {'':>7} {t['frames_dropped']:>5} {t['jobs']:>5} {t['jobs_succeeded']:>5} {t['jobs_per_s']:>7.3f}")
    fair = r.get("fairness")
    weighted = any(p.get("weight", 1.0) != 1.0 for p in r["instruments"].values())
    label = "fairness (max/min jobs/s per unit of weight)" if weighted else "fairness (max/min jobs/s)"
    lines.append(f"{label}: {fair:.2f}" if fair is not None else "fairness: n/a (an instrument finished no job)")
    for c, w in r["wait_s"].items():
        if w["n"]:
            lines.append(f"queue wait {c:<9} p50 {w['p50']:.2f} s  p99 {w['p99']:.2f} s  ({w['n']} jobs)")
    once = r["exactly_once"]
    lines.append("every job submitted exactly once" if once["ok"] else
                 f"NOT exactly once: {once['n_missing']} missing ({', '.join(once['missing'][:3])}), "
                 f"{once['n_duplicated']} duplicated ({', '.join(once['duplicated'][:3])})")
    if r.get("ledger_restarted_at_s") is not None:
        lines.append(f"the ledger's server was restarted {r['ledger_restarted_at_s']:.0f} s in")
    lines.append(f"window {r['window_s']:.0f} s of runs, {r['span_s']:.0f} s until the last job ended")
    return "\n".join(lines)


def write_report(r: Mapping[str, Any], folder: Path) -> Path:
    """``folder/index.html`` with the result table and two plots (jobs done over time per
    instrument; queue wait p50/p99 per class), and ``result.json``. Returns the HTML path."""
    import html

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    for name, ts in r["completions"].items():
        ax.step([0.0, *ts], list(range(len(ts) + 1)), where="post", label=name)
    ax.set_xlabel("seconds since the first run started")
    ax.set_ylabel("jobs done")
    ax.set_title("jobs done per instrument")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    fig.savefig(folder / "jobs.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 3))
    classes = [c for c, w in r["wait_s"].items() if w["n"]]
    xs = range(len(classes))
    ax.bar([x - 0.2 for x in xs], [r["wait_s"][c]["p50"] for c in classes], width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], [r["wait_s"][c]["p99"] for c in classes], width=0.4, label="p99")
    ax.set_xticks(list(xs), classes)
    ax.set_ylabel("queue wait (s)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(folder / "waits.png", dpi=100)
    plt.close(fig)
    (folder / "result.json").write_text(json.dumps(r, indent=1, default=str))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Simulated lab</title>
<style>body{{font-family:sans-serif;margin:2em}} pre{{background:#f4f4f4;padding:1em}}</style></head><body>
<h1>Simulated lab: {len(r['instruments'])} instruments, one ledger, one pool</h1>
<pre>{html.escape(format_result(r))}</pre>
<h2>Jobs done over time</h2><img src="jobs.png" alt="jobs done per instrument">
<h2>Queue wait per class</h2><img src="waits.png" alt="queue wait per class">
<p>Settings: <code>{html.escape(json.dumps(r.get('settings')))}</code>. The figures are in result.json.</p>
</body></html>"""
    (folder / "index.html").write_text(page)
    return folder / "index.html"


# -- the shell ------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """preexec_fn: the child gets SIGTERM when the simulation dies (no orphaned instruments)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


class LabSimulation:
    """Runs one simulation (see the module docstring): ``run() -> dict`` (the result of
    :func:`summarize` plus what happened), always stopping what it started."""

    def __init__(self, settings: SimSettings, *, ledger: str | None = None, workdir: Path | None = None,
                 keep: bool = False, config: Path | None = None, overrides: Iterable[str] = ()) -> None:
        settings.check()
        self.s = settings
        self.ledger_given = ledger
        self.keep = keep
        self.config = config
        self.overrides = list(overrides)  #: the caller's --set, for every process (the simulation's own come after)
        self.work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="labsim-"))
        self.lab_root = self.work / "lab"
        self.server = None
        self.db: str | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarted_at: float | None = None

    # -- processes --------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        logf = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - the child owns it
        try:
            proc = subprocess.Popen([sys.executable, "-m", "appliance", *argv], stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, cwd=self.work)
        finally:
            logf.close()
        self.procs[name] = proc
        return proc

    def _log_tail(self, name: str) -> str:
        try:
            return (self.work / f"{name}.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def _ledger(self) -> str:
        if self.ledger_given:
            return self.ledger_given
        from appliance.pgserver import PgUnavailable, start_private_server

        try:
            self.server = start_private_server("pg-labsim-")
        except PgUnavailable as exc:
            raise SimulationError(f"no PostgreSQL for the lab ledger: {exc}; or pass --ledger postgresql://... "
                                  "naming a server you run") from None
        self.db = f"labsim_{uuid.uuid4().hex[:8]}"
        self.server.sql(f'CREATE DATABASE "{self.db}"')
        return self.server.dsn(self.db)

    def _wait_for_socket(self, name: str, deadline: float) -> None:
        from appliance.control import ControlClient, ControlError

        while True:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise SimulationError(f"instrument {name} exited with status {proc.returncode} at start:\n{self._log_tail(name)}")
            try:
                with ControlClient(self.work / "sock" / name, timeout_s=1.0) as c:
                    c.request("status")
                return
            except (ControlError, OSError):
                if time.monotonic() > deadline:
                    raise SimulationError(f"instrument {name} did not answer on its control socket within 120 s:\n"
                                          f"{self._log_tail(name)}") from None
                time.sleep(0.3)

    # -- the run ----------------------------------------------------------------------------------
    def run(self, progress=None) -> dict:
        """Start everything, drive the runs for the window, drain the jobs, summarize."""
        say = progress or (lambda msg: None)
        try:
            return self._run(say)
        finally:
            self.close()

    def _run(self, say) -> dict:
        from appliance.control import ControlClient, ControlError
        from appliance.offload import Ledger

        s = self.s
        self.work.mkdir(parents=True, exist_ok=True)
        self.lab_root.mkdir(parents=True, exist_ok=True)
        dsn = self._ledger()
        names = instrument_ids(s.instruments)
        base = (["--config", str(self.config)] if self.config else []) + sum((["--set", o] for o in self.overrides), [])
        say(f"lab ledger {dsn if self.ledger_given else 'a private PostgreSQL server'}; {s.instruments} instruments; "
            f"one pool of {s.workers} workers; {s.minutes:g} min; work folder {self.work}")
        self._spawn("pool", ["jobs", "work", "--no-scan", "--root", str(self.lab_root), "--ledger", dsn, *base,
                             *sum((["--set", o] for o in worker_overrides(s, self.lab_root, dsn)), [])])
        for name in names:
            (self.work / "sock" / name).mkdir(parents=True, exist_ok=True)
            self._spawn(name, ["serve", *base, *sum((["--set", o] for o in instrument_overrides(s, name, self.lab_root, self.work, dsn)), [])])
        deadline = time.monotonic() + 120
        for name in names:
            self._wait_for_socket(name, deadline)
        clients = {n: ControlClient(self.work / "sock" / n, timeout_s=5.0) for n in names}
        runs: dict[str, list[dict]] = {n: [] for n in names}
        running: dict[str, str | None] = {n: None for n in names}
        try:
            t0_wall = time.time()
            t0 = time.monotonic()
            end = t0 + s.minutes * 60
            say(f"running for {s.minutes:g} min ...")
            down_until: float | None = None
            while True:
                now = time.monotonic()
                if s.restart_ledger_at_s is not None and self.restarted_at is None and now - t0 >= s.restart_ledger_at_s:
                    if self.server is not None and s.ledger_down_s:
                        say(f"stopping the ledger's PostgreSQL server for {s.ledger_down_s:g} s (pg_ctl stop -m fast)")
                        self.server.stop()
                        down_until = now + s.ledger_down_s
                    elif self.server is not None:
                        say("restarting the ledger's PostgreSQL server (pg_ctl restart -m fast)")
                        self.server.restart()
                    self.restarted_at = now - t0
                if down_until is not None and now >= down_until:
                    say("starting the ledger's PostgreSQL server again")
                    self.server.start()
                    down_until = None
                busy = False
                for n, c in clients.items():
                    if self.procs[n].poll() is not None:
                        raise SimulationError(f"instrument {n} exited with status {self.procs[n].returncode}:\n{self._log_tail(n)}")
                    st = c.request("status")
                    if st.get("state") != "idle":
                        busy = True
                        continue
                    last = st.get("last_summary") or {}
                    if running[n] is not None:
                        if last.get("run_id") != running[n]:
                            busy = True  # the run ends; its summary is not in yet
                            continue
                        runs[n].append(self._run_record(last))
                        running[n] = None
                    if now < end:
                        try:
                            running[n] = c.request("start", set=[]).get("run_id")
                            busy = True
                        except ControlError as exc:
                            raise SimulationError(f"instrument {n} refused to start a run: {exc}") from None
                if now >= end and not busy and down_until is None:
                    break
                time.sleep(0.5)
            t1_wall = time.time()
            say(f"runs done: {sum(len(r) for r in runs.values())}; waiting up to {s.drain_s:g} s for their jobs ...")
            # the instruments' outboxes empty and their last scans submit the runs' final jobs
            deadline = time.monotonic() + s.drain_s
            with Ledger(dsn) as ledger:
                while True:
                    jobs = [j.to_dict() for j in ledger.jobs(limit=10**6)]
                    pending = [j for j in jobs if j["state"] not in ("succeeded", "held", "cancelled")]
                    expected = sum(sum(expected_jobs(r).values()) for rs in runs.values() for r in rs)
                    if (not pending and len(jobs) >= expected) or time.monotonic() > deadline:
                        break
                    time.sleep(1.0)
        finally:
            for c in clients.values():
                c.close()
        result = summarize(jobs, runs, t0=t0_wall, t1=t1_wall, settings=s)
        result["ledger_restarted_at_s"] = self.restarted_at
        result["drained"] = not pending
        result["work"] = str(self.work)
        return result

    def _run_record(self, last: Mapping[str, Any]) -> dict:
        """What the driver keeps of one run: its summary's brief and its complete cycles (the
        cycle manifests in its run folder)."""
        from appliance.runfolder.layout import Layout

        run_id = str(last.get("run_id"))
        cycles = sum(1 for c in range(1, self.s.cycles + 1) if (self.lab_root / run_id / Layout.cycle_manifest(c)).is_file())
        return {"run_id": run_id, "frames_acquired": last.get("frames_acquired"), "frames_dropped": last.get("frames_dropped"),
                "run_complete": bool(last.get("run_complete")), "cycles_complete": cycles}

    def close(self) -> None:
        """Stop the instruments (SIGTERM: they drain), then the pool, then the server; remove
        the work folder (unless ``keep``). Idempotent."""
        order = [n for n in self.procs if n != "pool"] + (["pool"] if "pool" in self.procs else [])
        for name in order:
            p = self.procs[name]
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name in order:
            p = self.procs[name]
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        self.procs.clear()
        if self.server is not None:
            try:
                if self.db and self.server.running():
                    self.server.drop_database(self.db)
                if self.server.running():
                    self.server.stop()
            finally:
                shutil.rmtree(self.server.folder, ignore_errors=True)
                self.server = None
        if not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)

